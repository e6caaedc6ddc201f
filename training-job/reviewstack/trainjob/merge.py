"""reviewstack-merge: a LoRA adapter folder merged onto its base model, ready for the generation engine.

    reviewstack-merge models/smollm2-135m-reviewer-lora --out out/reviewer    # base: the embedded model
    reviewstack-merge ADAPTER --base /models/base --out DIR

A shipped adapter is ~10 MB where its merged model is ~270 MB, so the repository carries the adapter and
this merges it where it is used. The adapter folder's card (`reviewstack.common.adapter_card`) says what
the adapter needs beside its weights: the Position Interpolation factor it was trained with (the merged
config carries it, as a run's own merged/ does).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer


def merge(
    adapter: Annotated[Path, typer.Argument(help="adapter folder (adapter_config.json + weights)")],
    out: Annotated[Path, typer.Option(help="folder to write the merged model into")],
    base: Annotated[
        Path | None, typer.Option(help="base model folder (default: the embedded SmolLM2-135M-Instruct)")
    ] = None,
) -> None:
    """Merge ADAPTER onto its base with the adapter's PI factor; print the merged folder."""
    import torch

    from reviewstack.common.adapter_card import ADAPTER_CARD, AdapterCard
    from reviewstack.trainjob.checkpoint import merge_model

    card = AdapterCard.read(adapter)
    if base is None:
        from reviewstack.common.embedded_model import materialise_embedded_model

        base = materialise_embedded_model()
    done = out / ADAPTER_CARD  # written last
    if (
        done.is_file()
        and (out / "config.json").is_file()
        and json.loads(done.read_text()) == card.model_dump(mode="json")
    ):
        print(out)  # merged before from the same adapter
        return
    out.mkdir(parents=True, exist_ok=True)
    merge_model(base, adapter, out, card.position_interpolation, torch.float32)
    card.write(out)  # written last: the folder is complete
    print(out)


def main() -> None:
    from reviewstack.common.errors import ReviewStackError

    try:
        typer.run(merge)
    except ReviewStackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()

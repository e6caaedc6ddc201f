"""reviewstack-train: run one fine-tuning job.

Run book:
    reviewstack-train training-job/configs/llama3-8b-lora-12k.yaml run_id=my-run dataset=… output=…
    torchrun --nproc-per-node 8 -m reviewstack.trainjob SPEC …        # several GPUs (DeepSpeed ZeRO-3)
    reviewstack-train s3://bucket/runs/my-run/spec.json               # what the Kubernetes Job runs

SPEC is a YAML/JSON file or a store URI; `key=value` arguments override it (dotted keys reach into
nested settings: `lora.r=8`; values are YAML scalars). Store credentials come from `REVIEWSTACK_S3_*`.

Exit status: 0 done; 2 the spec or its inputs are wrong (retrying cannot help: a Kubernetes Job fails at
once); 143 stopped by SIGTERM after saving a checkpoint; anything else a crash worth retrying — a
restarted run with the same run id resumes from its latest complete checkpoint.
"""

from __future__ import annotations

import json
import os
import sys

from reviewstack.common.errors import ReviewStackError
from reviewstack.common.logging import configure_logging, get_logger
from reviewstack.common.runspec import TrainSpec, load_train_spec
from reviewstack.common.settings import LoggingSettings, StoreSettings

log = get_logger(__name__)
BAD_INPUT, PREEMPTED = 2, 143


def _record_failure(spec: TrainSpec, message: str) -> None:
    """Put the reason of a refused run into status.json: on Kubernetes nobody reads the pod's log."""
    from datetime import UTC, datetime

    from reviewstack.common.store import open_store

    status = {
        "state": "failed",
        "step": 0,
        "message": message,
        "updated_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    try:
        open_store(spec.output, StoreSettings()).put_bytes(
            f"runs/{spec.run_id}/status.json", json.dumps(status, indent=2).encode()
        )
    except ReviewStackError as exc:  # the output itself may be what is wrong
        log.warning("could not record the failure in the store", error=str(exc))


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    logging_settings = LoggingSettings()
    configure_logging(logging_settings.log_level, logging_settings.log_format)
    if not args or args[0] in ("-h", "--help"):
        print(__doc__)
        raise SystemExit(0 if args else BAD_INPUT)
    from reviewstack.trainjob.recipe import FineTuneRecipe, Preempted

    try:
        spec = load_train_spec(args[0], args[1:], StoreSettings())
    except ReviewStackError as exc:  # a spec that does not validate names no run to record it in
        log.error("invalid training spec", problems=str(exc))
        raise SystemExit(BAD_INPUT) from None
    try:
        summary = FineTuneRecipe(spec).run()
    except Preempted as exc:
        log.warning(str(exc))
        raise SystemExit(PREEMPTED) from None
    except ReviewStackError as exc:
        log.error("cannot train", error=str(exc))
        _record_failure(spec, str(exc))
        raise SystemExit(BAD_INPUT) from None
    if os.environ.get("RANK", "0") == "0":  # one summary per run, not one per process
        log.info("training finished", **{k: v for k, v in summary.items() if v is not None})
        print(json.dumps(summary))


if __name__ == "__main__":
    main()

"""Checks made before anything is launched, so a bad run fails in seconds with a message to act on
instead of after a pod was scheduled, an image pulled and a model loaded.

What is checked here is what the controller can see: the dataset is a published one, the output is
writable, and the hardware asked for exists. What only the job can see (a base model without a
tokenizer, prompts longer than the context) the job checks itself and reports with exit status 2.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from reviewstack.common.datasets import open_dataset_store
from reviewstack.common.errors import FailedPrecondition, InvalidArgument
from reviewstack.common.runspec import TrainSpec
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import open_store

_NVIDIA_DEVICE = re.compile(r"^nvidia\d+$")


def check_dataset(uri: str, settings: StoreSettings) -> dict[str, Any]:
    """The manifest of the published dataset at `uri`; NotFound (naming the URI) when there is none."""
    _, manifest = open_dataset_store(uri, settings)
    train = int(manifest.get("counts", {}).get("train", 0) or 0)
    if train <= 0:
        raise FailedPrecondition(f"dataset {uri} has no training records; rebuild it with a train share > 0")
    return manifest


def check_output(uri: str, settings: StoreSettings) -> None:
    """Fail now, not at the first checkpoint, when the run's output store cannot be written."""
    open_store(uri, settings).check_writable()


def visible_gpus() -> int:
    """NVIDIA GPUs a process started here would see: device files, narrowed by CUDA_VISIBLE_DEVICES.

    Counting /dev/nvidiaN instead of asking torch keeps the controller free of a CUDA runtime, and
    answers in microseconds.
    """
    try:
        devices = sum(1 for name in os.listdir("/dev") if _NVIDIA_DEVICE.match(name))
    except OSError:
        devices = 0
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return devices
    ids = [v for v in visible.split(",") if v.strip()]
    if not ids or ids[0].strip() == "-1":
        return 0
    return min(devices, len(ids))


def check_local_hardware(spec: TrainSpec, gpus_requested: int, gpus_available: int, nodes: int) -> None:
    """A local run asks for no more than this machine has: one node, and GPUs that exist."""
    if nodes != 1:
        raise InvalidArgument(
            f"the local launcher runs on this one machine; {nodes} nodes need the kubernetes launcher"
        )
    if spec.device == "cuda" and gpus_available == 0:
        raise FailedPrecondition(
            "the spec asks for device=cuda but this machine has no GPU the local launcher can use "
            "(no /dev/nvidiaN, or CUDA_VISIBLE_DEVICES hides them); set device=auto or cpu, or submit "
            "the run to a Training server with the kubernetes launcher"
        )
    if gpus_requested > gpus_available:
        raise FailedPrecondition(
            f"the run asks for {gpus_requested} GPUs but this machine offers {gpus_available}; "
            "ask for fewer (--gpus) or set REVIEWSTACK_LOCAL_GPUS if the count is wrong"
        )
    if spec.device == "cpu" and gpus_requested > 0:
        raise InvalidArgument(f"the spec says device=cpu but the run asks for {gpus_requested} GPUs")


def check_cluster_run(spec: TrainSpec, gpus_per_node: int, nodes: int = 1) -> None:
    """A Kubernetes run reads and writes through S3 (a path on the controller is invisible to a pod),
    gets the GPUs its spec needs, and does not start several processes for what runs as one."""
    for name, value in (("dataset", spec.dataset), ("output", spec.output)):
        if not value.startswith("s3://"):
            raise InvalidArgument(
                f"{name} {value!r} is not an s3:// URI: a Kubernetes pod cannot see the controller's "
                "files; publish it to the cluster's store"
            )
    if spec.device == "cuda" and gpus_per_node == 0:
        raise FailedPrecondition("the spec asks for device=cuda but the run asks for 0 GPUs per node")
    if spec.device == "cpu" and gpus_per_node > 0:
        raise InvalidArgument(f"the spec says device=cpu but the run asks for {gpus_per_node} GPUs per node")
    processes = max(gpus_per_node, 1) * nodes
    one_process = (
        "layout=single" if spec.layout == "single" else "method=qlora" if spec.method == "qlora" else
        "lora.trainable_tokens" if spec.lora.trainable_tokens else None
    )  # fmt: skip
    if processes > 1 and one_process:
        raise FailedPrecondition(
            f"{one_process} runs as one process but the run asks for {processes} GPUs: ask for one GPU "
            "and one node, or use layout=auto with method=lora"
        )


def local_path_of(uri: str) -> Path | None:
    """The filesystem path of a local store URI (plain path or file://), None for s3://."""
    if uri.startswith("s3://"):
        return None
    from urllib.parse import unquote, urlsplit

    return Path(unquote(urlsplit(uri).path)) if uri.startswith("file://") else Path(uri)

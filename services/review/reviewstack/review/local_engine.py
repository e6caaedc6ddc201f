"""The embedded generation engine as a child process, for a `reviewstack review` run on one machine.

The child listens on loopback with a bearer token made for the run (`REVIEWSTACK_AUTH_TOKEN`, replacing
any token or token file the caller's environment names): another local user cannot drive it while it runs,
and a token meant for a deployment's engine never reaches this one.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import tempfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from rich.console import Console

from reviewstack.common.child_process import ChildProcess, find_program, free_port, http_ready
from reviewstack.common.errors import FailedPrecondition, Unavailable
from reviewstack.common.prompt import MAX_RESPONSE_LENGTH

READY_TIMEOUT_S = 600.0


def model_context(model: Path) -> int:
    """Tokens the model can attend to: `max_position_embeddings`. A model merged by a review-stack run
    with Position Interpolation records the extended context there (original × factor, next to the
    linear RoPE factor: trainjob/rope.py), so the factor is not applied a second time; a config that
    kept its original length under linear scaling is read conservatively, as that length."""
    config = json.loads((model / "config.json").read_text())
    return int(config.get("max_position_embeddings", 8192))


def budget(model: Path) -> tuple[int, int]:
    """(prompt tokens, new tokens) a request to this model may use: the method's 1,150 new tokens, or a
    quarter of the context for models too small for that."""
    total = model_context(model)
    new = min(MAX_RESPONSE_LENGTH, total // 4)
    return total - new, new


@asynccontextmanager
async def embedded_engine(
    model: Path | None, console: Console, slots: int = 4
) -> AsyncIterator[tuple[str, Path, str]]:
    """Start `reviewstack-generation` on `model` (default: the embedded SmolLM2, unpacked on first use)
    on a free loopback port; yield (URL, model, bearer token) once it is healthy; stop it on exit."""
    from reviewstack.common.embedded_model import materialise_embedded_model

    if model is None:
        with console.status("unpacking the embedded model (first use only)…"):
            model = await asyncio.to_thread(materialise_embedded_model)
    if not (model / "config.json").is_file():
        raise FailedPrecondition(f"{model} is not a model directory (no config.json)")
    prompt, new = budget(model)
    port = free_port()
    command = [
        find_program("reviewstack-generation", "install reviewstack-generation beside the CLI"),
        *("--model", str(model), "--host", "127.0.0.1", "--port", str(port)),
        *("--max-total-tokens", str(prompt + new), "--max-input-tokens", str(prompt)),
        *("--max-batch-size", str(slots)),
    ]
    token = secrets.token_urlsafe(32)
    env = {k: v for k, v in os.environ.items() if k != "REVIEWSTACK_AUTH_TOKEN_FILE"}
    env["REVIEWSTACK_AUTH_TOKEN"] = token
    logs = Path(tempfile.mkdtemp(prefix="reviewstack-engine-"))
    engine = ChildProcess("the generation engine", command, logs / "engine.log", env)
    url = f"http://127.0.0.1:{port}"
    keep_log = False
    try:
        with console.status(f"starting the generation engine on {model.name}…"):
            try:
                await asyncio.to_thread(engine.wait_ready, http_ready(url), READY_TIMEOUT_S, 0.5)
            except Unavailable:
                keep_log = True  # the message names it
                raise
        yield url, model, token
    finally:
        engine.terminate()
        await asyncio.to_thread(engine.wait, 30)
        if not keep_log:
            shutil.rmtree(logs, ignore_errors=True)

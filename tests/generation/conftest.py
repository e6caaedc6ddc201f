"""Without a GPU the Triton decode kernels run under Triton's interpreter; it must be on before they are
defined. The engine's "auto" choice never takes the interpreter, so only tests that ask for it use it.

Hypothesis keeps what it learns (example database off in these tests, but its constants cache) inside
pytest's cache folder, which git ignores, instead of a `.hypothesis/` folder in the work tree."""

import asyncio
import os
from pathlib import Path

import torch
from hypothesis.configuration import set_hypothesis_home_dir

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

# after the interpreter setting: the engine's runner may load the Triton kernels
from reviewstack.generation.engine import EndEvent, Engine, ErrorEvent, Request

set_hypothesis_home_dir(Path(__file__).resolve().parents[2] / ".pytest_cache" / "hypothesis")


def generate_together(engine: Engine, requests: list[Request]) -> list[list[int]]:
    """Submit every request to a running engine at once; the token ids each one wrote, in order."""

    async def run(request: Request) -> list[int]:
        handle = engine.submit(request, asyncio.get_running_loop())
        while True:
            event = await handle.events.get()
            assert not isinstance(event, ErrorEvent), event.message
            if isinstance(event, EndEvent):
                return [t.id for t in event.finished.tokens]

    async def together() -> list[list[int]]:
        return await asyncio.gather(*(run(r) for r in requests))

    return asyncio.run(together())

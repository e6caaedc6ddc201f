"""The demo's services as processes on loopback ports, and the numbered stages it prints."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from reviewstack.common.child_process import ChildProcess, find_program, free_port, grpc_ready, http_ready

console = Console()


def program(name: str) -> str:
    """A console script of this environment (the venv's bin/ first, then PATH)."""
    return find_program(name, "run `make install` (it installs every service)")


class Stack:
    """The services' processes: started on free loopback ports, logged to files, stopped on exit."""

    def __init__(self, work: Path, store: Path, token: str) -> None:
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.token = token
        self._children: dict[str, ChildProcess] = {}

    def start(self, executable: str, env: dict[str, str], name: str | None = None) -> int:
        """Start `executable` on a free loopback port (its settings come from the environment); the port.
        `name` (default: the executable's) names its log and its failures: two engines keep theirs apart."""
        port = free_port()
        name = name or executable
        settings = {
            "REVIEWSTACK_HOST": "127.0.0.1",
            "REVIEWSTACK_PORT": str(port),
            "REVIEWSTACK_STORE": str(self.store),
            "REVIEWSTACK_AUTH_TOKEN": self.token,
            "REVIEWSTACK_LOG_FORMAT": "json",
        }
        self._children[name] = ChildProcess(
            name,
            [program(executable)],
            self.logs / f"{name}.log",
            {**os.environ, **settings, **env},
            own_session=True,  # a Ctrl-C in the terminal reaches the demo, which stops them in order
        )
        return port

    def serve(self, name: str, model: Path, lineage: str, max_prompt: int, max_new: int, slots: int) -> str:
        """`model` on the embedded engine behind a Review service of its own; the Review service's
        address. `lineage` is what its reviews name as their model (a store key, not a local path)."""
        prompt = max_prompt + 32  # the engine may tokenize the text a little longer
        engine = {
            "REVIEWSTACK_MODEL": str(model),
            "REVIEWSTACK_MAX_INPUT_TOKENS": str(prompt),
            "REVIEWSTACK_MAX_TOTAL_TOKENS": str(prompt + max_new),
            "REVIEWSTACK_MAX_BATCH_SIZE": str(slots),  # the static KV cache: this many slots of that length
        }
        backend = self.wait_http(
            f"{name}-engine", self.start("reviewstack-generation", engine, f"{name}-engine")
        )
        review = {
            "REVIEWSTACK_BACKEND_URL": backend,
            "REVIEWSTACK_BACKEND_AUTH_TOKEN": self.token,  # the engine checks it too
            "REVIEWSTACK_TOKENIZER": str(model),
            "REVIEWSTACK_SERVED_MODEL": lineage,
            "REVIEWSTACK_MAX_PROMPT_LENGTH": str(max_prompt),
            "REVIEWSTACK_MAX_NEW_TOKENS": str(max_new),
        }
        address = self.wait_grpc(f"{name}-review", self.start("reviewstack-review", review, f"{name}-review"))
        console.print(f"{name}: engine {backend} · review service {address}")
        return address

    def wait_grpc(self, name: str, port: int, timeout: float = 180.0) -> str:
        """`name` (its start name) serving gRPC health on `port`; its address."""
        target = f"127.0.0.1:{port}"
        self._children[name].wait_ready(grpc_ready(target, self.token), timeout)
        return target

    def wait_http(self, name: str, port: int, timeout: float = 300.0, path: str = "/health") -> str:
        """`name` (its start name) answering `path` on `port`; its URL."""
        url = f"http://127.0.0.1:{port}"
        self._children[name].wait_ready(http_ready(url, path), timeout, interval_s=1.0)
        return url

    def check_alive(self) -> None:
        """Unavailable, naming the child and its log, when one of the services has exited."""
        for child in self._children.values():
            child.check_alive()

    def stop(self) -> None:
        """SIGTERM to all (the last started first), then wait for each: they drain side by side."""
        children = list(reversed(self._children.values()))
        for child in children:
            child.terminate()
        for child in children:
            child.wait(timeout_s=20)


class Stages:
    """Numbered stage headers with the time each took, so a long run shows where it is."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.number = 0
        self.started = time.monotonic()
        self.timings: list[tuple[str, float]] = []

    @contextmanager
    def stage(self, title: str) -> Iterator[None]:
        self.number += 1
        console.rule(f"[bold]{self.number}/{self.total} · {title}")
        began = time.monotonic()
        yield
        took = time.monotonic() - began
        self.timings.append((title, took))
        console.print(f"[dim]{title}: {took:.0f} s (total {time.monotonic() - self.started:.0f} s)[/]")

"""The demo's services as processes on loopback ports, and the numbered stages it prints."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from reviewstack.common import errors
from reviewstack.common.grpc.client import make_channel, wait_until_serving

console = Console()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def program(name: str) -> str:
    """A console script of this environment (the venv's bin/ first, then PATH)."""
    beside = Path(sys.executable).parent / name
    found = str(beside) if beside.exists() else shutil.which(name)
    if found is None:
        raise errors.FailedPrecondition(
            f"{name} is not installed in this environment: run `make install` (it installs every service)"
        )
    return found


class Stack:
    """The services' processes: started on free loopback ports, logged to files, stopped on exit."""

    def __init__(self, work: Path, store: Path, token: str) -> None:
        self.logs = work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.store = store
        self.token = token
        self._processes: list[tuple[str, subprocess.Popen]] = []

    def start(self, executable: str, env: dict[str, str], name: str | None = None) -> int:
        """Start `executable` on a free loopback port (its settings come from the environment); the port.
        `name` (default: the executable's) names its log and its failures: two engines keep theirs apart."""
        port = _free_port()
        name = name or executable
        log = (self.logs / f"{name}.log").open("ab")
        settings = {
            "REVIEWSTACK_HOST": "127.0.0.1",
            "REVIEWSTACK_PORT": str(port),
            "REVIEWSTACK_STORE": str(self.store),
            "REVIEWSTACK_AUTH_TOKEN": self.token,
            "REVIEWSTACK_LOG_FORMAT": "json",
        }
        process = subprocess.Popen(
            [program(executable)],
            env={**os.environ, **settings, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a Ctrl-C in the terminal reaches the demo, which stops them in order
        )
        self._processes.append((name, process))
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

    def wait_grpc(self, program: str, port: int, timeout: float = 180.0) -> str:
        """`program` (its start name) serving gRPC health on `port`; its address."""
        target = f"127.0.0.1:{port}"
        self._check_alive(program)
        with make_channel(target, self.token) as channel:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    wait_until_serving(channel, timeout=5.0)
                    return target
                except errors.Unavailable:
                    self._check_alive(program)
                    if time.monotonic() > deadline:
                        raise self._failed(program, f"not serving after {timeout:.0f} s") from None

    def wait_http(self, program: str, port: int, timeout: float = 300.0) -> str:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + timeout
        while True:
            self._check_alive(program)
            try:
                with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                    if response.status == 200:
                        return url
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise self._failed(program, f"not healthy after {timeout:.0f} s")
            time.sleep(1.0)

    def _check_alive(self, program: str) -> None:
        for name, process in self._processes:
            if name == program and process.poll() is not None:
                raise self._failed(program, f"exited with status {process.returncode}")

    def _failed(self, program: str, what: str) -> errors.Unavailable:
        log = self.logs / f"{program}.log"
        tail = log.read_text(errors="replace").splitlines()[-5:] if log.exists() else []
        return errors.Unavailable(f"{program} {what}; its log is {log}:\n" + "\n".join(tail))

    def stop(self) -> None:
        for _, process in reversed(self._processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for _, process in reversed(self._processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


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

"""A server run as a child process: started with its output in a log, waited for until it answers its
health check, stopped with SIGTERM (then SIGKILL).

The demo's services, `reviewstack review`'s local engine and the tests' servers all start this way, so a
child that dies while starting is reported the same everywhere: its name, its exit status, the error it
died of (not its stack frames) and where its full log is.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path

from reviewstack.common.errors import FailedPrecondition, Unavailable

Probe = Callable[[], bool]


def find_program(name: str, install_hint: str) -> str:
    """The console script `name` of this Python's environment (its bin/ first), else the one on PATH (a
    `pip install --target` puts no script beside the interpreter)."""
    found = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if found is None:
        raise FailedPrecondition(f"{name} is not installed in this environment: {install_hint}")
    return found


def free_port() -> int:
    """A loopback port nobody listens on now (the child binds it a moment later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ready(url: str, path: str = "/health") -> Probe:
    """A probe: `url` + `path` answers 200 (the engine's /health, the web page's /healthz)."""

    def probe() -> bool:
        try:
            with urllib.request.urlopen(f"{url}{path}", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    return probe


def grpc_ready(target: str, token: str | None = None, service: str = "") -> Probe:
    """A probe: grpc.health.v1 says `service` ("" = the server as a whole) is SERVING at `target`."""
    from reviewstack.common.grpc.client import make_channel, wait_until_serving

    def probe() -> bool:
        with make_channel(target, token) as channel:
            try:
                wait_until_serving(channel, timeout=2.0, service=service)
                return True
            except Unavailable:
                return False

    return probe


def last_error(log: Path, limit: int = 1500) -> str:
    """What a process died of: its last exception without the stack frames, else its log's last lines."""
    lines = log.read_text(errors="replace").splitlines() if log.exists() else []
    starts = [i for i, line in enumerate(lines) if line.startswith("Traceback (most recent call last)")]
    if starts:  # frames are indented; the exception and its message are not
        lines = [line for line in lines[starts[-1] + 1 :] if line and not line[0].isspace()]
    else:
        lines = lines[-5:]
    text = "\n".join(line for line in lines if line.strip())
    return text[-limit:] or "(it wrote nothing)"


class ChildProcess:
    """One child: `command` with `env`, its stdout and stderr appended to `log`.

    `own_session` puts it in a process group of its own, so a Ctrl-C in the terminal reaches only the
    parent, which then stops its children in order."""

    def __init__(
        self,
        name: str,
        command: list[str],
        log: Path,
        env: Mapping[str, str] | None = None,
        *,
        own_session: bool = False,
    ) -> None:
        self.name, self.log = name, log
        with open(log, "ab") as out:
            self.process = subprocess.Popen(
                command,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                start_new_session=own_session,
            )

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> None:
        """Unavailable, with what it died of, if the child has exited."""
        if not self.running:
            raise Unavailable(
                f"{self.name} exited with status {self.process.returncode}: {last_error(self.log)}\n"
                f"(its log: {self.log})"
            )

    def wait_ready(self, ready: Probe, timeout_s: float, interval_s: float = 0.2) -> None:
        """Return once `ready()` holds; Unavailable if the child exits first or `timeout_s` passes."""
        deadline = time.monotonic() + timeout_s
        while True:
            self.check_alive()
            if ready():
                return
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"{self.name} was not ready within {timeout_s:.0f} s: {last_error(self.log)}\n"
                    f"(its log: {self.log})"
                )
            time.sleep(interval_s)

    def terminate(self) -> None:
        """Ask it to stop (SIGTERM: servers drain their requests first); `wait` for it."""
        if self.running:
            self.process.terminate()

    def wait(self, timeout_s: float = 30.0) -> int:
        """Its exit status, killing it if it has not exited within `timeout_s` (negative: by a signal)."""
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM, then SIGKILL after `timeout_s`; its exit status."""
        self.terminate()
        return self.wait(timeout_s)


__all__ = ["ChildProcess", "find_program", "free_port", "grpc_ready", "http_ready", "last_error"]

"""The `reviewstack` verbs an experiment is made of, each run as its own process: the same commands a
user types, so an experiment does nothing a user could not repeat by hand, and a crash in one step
(an engine running out of memory) fails that step, not the runner.

With a server named (`--server training=HOST:PORT`), the verb talks to that service instead of working
here; the artifacts land in the same store either way.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reviewstack.common.errors import FailedPrecondition, InvalidArgument

SERVICES = ("dataprep", "training", "evaluation")


def parse_servers(values: Sequence[str]) -> dict[str, str]:
    """`service=HOST:PORT` options → {service: target}; unknown services are refused."""
    servers = {}
    for value in values:
        service, sep, target = value.partition("=")
        if not sep or service not in SERVICES or not target:
            raise InvalidArgument(
                f"--server {value!r}: use SERVICE=HOST:PORT with SERVICE one of {', '.join(SERVICES)} "
                "(reviews are written here by the embedded engine on each system's model)"
            )
        servers[service] = target
    return servers


@dataclass
class Verbs:
    """Runs `reviewstack …` commands with the experiment's store, servers and log folder."""

    store: str
    logs: Path
    servers: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)

    def run(self, step: str, args: Sequence[str], module: str = "reviewstack.common.cli") -> str:
        """Run one verb (or another of the project's programs, by `module`); its progress and messages
        go to logs/<step>.log, its standard output (a `--json` result) is returned. A failure raises
        with the log's last lines."""
        self.logs.mkdir(parents=True, exist_ok=True)
        log = self.logs / f"{step.replace(':', '-')}.log"
        command = [sys.executable, "-m", module, *args]
        env = {
            **os.environ,
            "REVIEWSTACK_STORE": self.store,
            "REVIEWSTACK_LOCAL_LOG_DIR": str(self.logs / "runs"),  # the local launcher's job logs
            "COLUMNS": "160",
            **self.env,
        }
        with log.open("a") as sink:
            sink.write(f"$ reviewstack {' '.join(args)}\n")
            sink.flush()
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=sink, env=env, text=True)
            output, _ = process.communicate()
        if process.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-12:])
            raise FailedPrecondition(
                f"step {step} failed: `reviewstack {' '.join(args[:2])}` exited with {process.returncode}; "
                f"its log is {log}:\n{tail}"
            )
        return output

    def run_json(self, step: str, args: Sequence[str]) -> dict:
        output = self.run(step, [*args, "--json"])
        try:
            return json.loads(output)
        except json.JSONDecodeError:
            raise FailedPrecondition(
                f"step {step}: `reviewstack {' '.join(args[:2])} --json` printed no JSON result: "
                f"{output[-500:]!r}"
            ) from None

    def server(self, service: str) -> list[str]:
        return ["--server", self.servers[service]] if service in self.servers else []

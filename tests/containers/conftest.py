"""The container test's plumbing: a Docker engine (started here when none answers), the images (built by
images/build.sh, from its build cache when nothing changed), and a stack of containers on a network of
its own that is removed, whatever happens, at the end.

When the stack test is selected with other tests, it runs last and its images start building as soon as
the session is collected, beside the rest of the suite: a cold build is minutes of mostly one core (pip,
disk, the base's debootstrap), which the other core then spends on tests instead of waiting.

Nothing here skips: a machine that cannot run Docker fails the test with the reason (`make
container-tools` installs the engine; CI runs on a clean clone).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKER = os.environ.get("DOCKER", "/usr/bin/docker")  # Debian's client, the engine's own version
LABEL = "review-stack.e2e"  # every container and network this test makes carries it
STACK_TEST = Path(__file__).with_name("test_stack.py")
STACK_IMAGES = ["moto", "dataprep", "training", "generation-cpu", "review", "evaluation"]

Progress = Callable[[str], None]


@pytest.fixture(scope="session")
def progress(request: pytest.FixtureRequest) -> Progress:
    """Print a line to the terminal as the test goes, past pytest's output capture."""
    reporter = request.config.pluginmanager.getplugin("terminalreporter")
    capture = request.config.pluginmanager.getplugin("capturemanager")
    started = time.monotonic()

    def say(message: str) -> None:
        line = f"[containers +{time.monotonic() - started:5.0f}s] {message}"
        if reporter is None or capture is None:
            print(line, flush=True)
            return
        with capture.global_and_fixture_disabled():
            reporter.ensure_newline()
            reporter.write_line(line)

    return say


def docker(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the docker client; a failure raises with its output."""
    result = subprocess.run([DOCKER, *args], capture_output=True, text=True, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)} exited {result.returncode}:\n{result.stderr}")
    return result


@dataclass
class _Engine:
    """The Docker engine this session uses: whether it was started here, or why it could not be."""

    started_here: bool = False
    problem: str | None = None
    ready: bool = False


_ENGINE = _Engine()
_EARLY_BUILD: tuple[subprocess.Popen[str], Path, float] | None = None  # process, log, started at


def _ensure_engine() -> _Engine:
    """Answer, or start one with images/dockerd.sh (once a session); the outcome is remembered."""
    if _ENGINE.ready or _ENGINE.problem:
        return _ENGINE
    if not Path(DOCKER).is_file() or shutil.which("dockerd", path="/usr/sbin:/usr/bin") is None:
        _ENGINE.problem = (
            f"the container test needs Docker's engine and client ({DOCKER}, dockerd): run "
            "`images/install-tools.sh` (make container-tools)"
        )
        return _ENGINE
    script = REPO / "images" / "dockerd.sh"
    if subprocess.run([script, "status"], capture_output=True).returncode != 0:
        result = subprocess.run([script, "start"], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            _ENGINE.problem = f"cannot start a Docker engine:\n{result.stderr}"
            return _ENGINE
        _ENGINE.started_here = True
    _ENGINE.ready = True
    return _ENGINE


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected what will not run
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the stack test last and start building its images now, when other tests run first."""
    global _EARLY_BUILD
    stack = [item for item in items if item.path == STACK_TEST]
    if not stack or len(stack) == len(items) or config.option.collectonly:
        return
    items[:] = [item for item in items if item.path != STACK_TEST] + stack
    if _ensure_engine().problem:
        return  # the stack test fails with it
    log = REPO / ".cache" / "images" / "early-build.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(REPO / "images" / "build.sh"), *STACK_IMAGES],
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "DOCKER": DOCKER},
            start_new_session=True,  # pytest's Ctrl-C is not the build's
        )
    _EARLY_BUILD = (process, log, time.monotonic())


def pytest_unconfigure(config: pytest.Config) -> None:
    """A session that ends before the stack test (a failure with -x, Ctrl-C) stops the early build."""
    if _EARLY_BUILD is not None and _EARLY_BUILD[0].poll() is None:
        _EARLY_BUILD[0].terminate()
        _EARLY_BUILD[0].wait(60)
    if _ENGINE.started_here:
        subprocess.run([REPO / "images" / "dockerd.sh", "stop"], capture_output=True, timeout=120)


@pytest.fixture(scope="session")
def docker_engine(progress: Progress) -> None:
    """A Docker engine that answers: the running one, or one started by images/dockerd.sh (and stopped
    again when the session ends, if it was started here)."""
    if not _ENGINE.ready and not _ENGINE.problem:
        progress("starting dockerd if none answers (images/dockerd.sh start)")
    engine = _ensure_engine()
    if engine.problem:
        pytest.fail(engine.problem)


def build_images(names: list[str], progress: Progress) -> None:
    """images/build.sh NAME…, its progress lines passed on; fails the test with the log's end. Images
    the session began building early are waited for, and only what that build did not cover is built."""
    started = time.monotonic()
    lines: list[str] = []
    if _EARLY_BUILD is not None and set(names) <= set(STACK_IMAGES):
        process, log, began = _EARLY_BUILD
        progress(f"waiting for the images this session began building {started - began:.0f} s ago")
        code = process.wait()
        lines = log.read_text().splitlines()
        for line in lines:
            progress(line)
        if code != 0:
            pytest.fail("images/build.sh failed:\n" + "\n".join(lines[-60:]))
        progress(f"images ready {time.monotonic() - started:.0f} s after the test asked for them")
        return
    proc = subprocess.Popen(
        [str(REPO / "images" / "build.sh"), *names],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "DOCKER": DOCKER},
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line.rstrip())
        progress(line.rstrip())
    if proc.wait() != 0:
        pytest.fail("images/build.sh failed:\n" + "\n".join(lines[-60:]))
    progress(f"images ready in {time.monotonic() - started:.0f} s")


@dataclass
class Container:
    name: str
    ports: dict[int, int] = field(default_factory=dict)  # container port → 127.0.0.1 port

    def logs(self, tail: int = 80) -> str:
        result = docker("logs", "--tail", str(tail), self.name, check=False)
        return result.stdout + result.stderr

    def running(self) -> bool:
        state = docker("inspect", "-f", "{{.State.Running}}", self.name, check=False).stdout.strip()
        return state == "true"


class Stack:
    """Containers on one user-defined network, each reachable there by its alias; published ports bind
    127.0.0.1 only. `close()` removes every container and the network (by label, so a container whose
    start failed half-way goes too)."""

    def __init__(self, progress: Progress) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.network = f"rs-e2e-{self.id}"
        self.progress = progress
        self.containers: dict[str, Container] = {}
        docker("network", "create", "--label", f"{LABEL}={self.id}", self.network)

    def run(
        self,
        alias: str,
        image: str,
        *args: str,
        env: dict[str, str] | None = None,
        ports: tuple[int, ...] = (),
        volumes: tuple[str, ...] = (),
    ) -> Container:
        name = f"rs-e2e-{self.id}-{alias}"
        command = ["run", "--detach", "--name", name, "--label", f"{LABEL}={self.id}"]
        command += ["--network", self.network, "--network-alias", alias]
        for port in ports:
            command += ["--publish", f"127.0.0.1::{port}"]
        for volume in volumes:
            command += ["--volume", volume]
        for key, value in (env or {}).items():
            command += ["--env", f"{key}={value}"]
        docker(*command, image, *args)
        container = Container(name)
        for port in ports:
            mapping = docker("port", name, f"{port}/tcp").stdout.split()[0]  # 127.0.0.1:NNNNN
            host, _, host_port = mapping.rpartition(":")
            assert host == "127.0.0.1", f"{name} published {port} on {mapping}, not on loopback only"
            container.ports[port] = int(host_port)
        self.containers[alias] = container
        self.progress(f"started {alias} ({image})")
        return container

    def logs(self) -> str:
        return "\n".join(f"----- {alias} -----\n{c.logs()}" for alias, c in self.containers.items())

    def close(self) -> None:
        remove_labelled(f"{LABEL}={self.id}")


def remove_labelled(label: str) -> None:
    """Remove the containers and networks carrying `label` (key or key=value)."""
    ids = docker("ps", "-aq", "--filter", f"label={label}", check=False).stdout.split()
    if ids:
        docker("rm", "--force", "--volumes", *ids, check=False, timeout=120)
    networks = docker("network", "ls", "-q", "--filter", f"label={label}", check=False).stdout.split()
    if networks:
        docker("network", "rm", *networks, check=False)


@pytest.fixture
def stack(docker_engine: None, progress: Progress, request: pytest.FixtureRequest) -> Iterator[Stack]:
    remove_labelled(LABEL)  # what a killed earlier run of this test left behind
    stack = Stack(progress)
    try:
        yield stack
    finally:
        failed = getattr(request.node, "rep_call", None)
        if failed is not None and failed.failed:
            progress("the test failed; the containers' last log lines:\n" + stack.logs())
        stack.close()
        leftovers = docker("ps", "-aq", "--filter", f"label={LABEL}={stack.id}", check=False).stdout.split()
        assert not leftovers, f"containers left behind: {leftovers}"
        progress("containers and network removed")


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Keep each phase's report on the item, so the stack fixture knows whether the test failed."""
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


def wait_for(what: str, ready: Callable[[], bool], container: Container, timeout: float) -> None:
    """Poll `ready` until it holds; fail early, with the container's log, when the container exits."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if ready():
                return
        if not container.running():
            pytest.fail(f"{container.name} exited while waiting for {what}:\n{container.logs()}")
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not ready after {timeout:.0f} s:\n{container.logs()}")
        time.sleep(1)


def parse_json_output(stdout: str) -> dict:
    """The JSON document a CLI printed with --json (rich's print_json)."""
    return json.loads(stdout[stdout.index("{") :])

"""Shared fixtures: a real S3 protocol server (moto_server) on loopback, and stores over it or a temp dir."""

from __future__ import annotations

import contextlib
import http.client
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from reviewstack.common.child_process import ChildProcess, free_port, grpc_ready, http_ready
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import ArtifactStore, open_store

from . import assets


@dataclass(frozen=True)
class S3Server:
    """How to reach a test S3 server; `settings()`/`env()` configure a store for it in- or out-of-process."""

    endpoint: str  # host:port
    access_key: str = "testing"
    secret_key: str = "testing"
    region: str = "us-east-1"

    def settings(self, **overrides: object) -> StoreSettings:
        fields: dict[str, object] = {
            "s3_endpoint": self.endpoint,
            "s3_access_key": self.access_key,
            "s3_secret_key": self.secret_key,
            "s3_region": self.region,
            "s3_create_bucket": True,
        }
        return StoreSettings(**{**fields, **overrides})

    def env(self) -> dict[str, str]:
        s = self.settings()
        return {
            "REVIEWSTACK_S3_ENDPOINT": s.s3_endpoint,
            "REVIEWSTACK_S3_ACCESS_KEY": self.access_key,
            "REVIEWSTACK_S3_SECRET_KEY": self.secret_key,
            "REVIEWSTACK_S3_REGION": s.s3_region,
            "REVIEWSTACK_S3_CREATE_BUCKET": "true",
        }


@contextlib.contextmanager
def run_moto_server(log_dir: Path, extra_env: dict[str, str] | None = None) -> Iterator[S3Server]:
    """Start `moto_server` on a free loopback port, wait until it answers HTTP, stop it afterwards."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "moto.server"]
    log_path = log_dir / f"moto-{port}.log"
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    env.update(extra_env or {})
    moto = ChildProcess("moto_server", [*cmd, "-H", "127.0.0.1", "-p", str(port)], log_path, env)
    try:
        moto.wait_ready(http_answers(port, "/moto-api/"), 30, interval_s=0.1)
        yield S3Server(endpoint=f"127.0.0.1:{port}")
    finally:
        moto.stop(timeout_s=10)


def http_answers(port: int, path: str) -> Callable[[], bool]:
    """A probe: `path` on the loopback `port` answers HTTP at all (moto has no /health)."""

    def probe() -> bool:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
            connection.request("GET", path)
            connection.getresponse().read()
            connection.close()
            return True
        except OSError:
            return False

    return probe


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """One real S3 protocol server for the whole test session."""
    with run_moto_server(tmp_path_factory.mktemp("moto")) as server:
        yield server


@pytest.fixture
def start_s3_server(tmp_path: Path) -> Iterator[Callable[..., S3Server]]:
    """Start extra, private S3 servers (e.g. with auth enforced through `extra_env`) for one test."""
    with contextlib.ExitStack() as stack:
        yield lambda extra_env=None: stack.enter_context(run_moto_server(tmp_path, extra_env))


@pytest.fixture
def s3_store(s3_server: S3Server) -> ArtifactStore:
    """A store on a fresh bucket (created on first use), under a prefix so prefix handling is exercised."""
    return open_store(f"s3://test-{uuid.uuid4().hex[:16]}/store", s3_server.settings())


@pytest.fixture
def local_store(tmp_path: Path) -> ArtifactStore:
    return open_store(str(tmp_path / "store"))


def pytest_configure(config: pytest.Config) -> None:
    """Derived models (the embedded SmolLM2, the matcher's static model) come from the test asset cache."""
    assets.use_cached_models()


@pytest.fixture(scope="session", autouse=True)
def _quiet_logs() -> None:
    """Servers started in-process log through structlog; keep test output to warnings and errors."""
    from reviewstack.common.logging import configure_logging

    configure_logging("WARNING", "console")


@contextlib.contextmanager
def service_process(
    entry_point: str, service: str, env: dict[str, str], log: Path, ready_timeout_s: float = 120
) -> Iterator[str]:
    """Run a review-stack server (`.venv/bin/<entry_point>`) on a free loopback port; yield its target
    once grpc.health.v1 says `service` is SERVING; on exit SIGTERM it and require a clean drain (0)."""
    port = free_port()
    command = [str(Path(sys.executable).with_name(entry_point)), "--host", "127.0.0.1", "--port", str(port)]
    server = ChildProcess(entry_point, command, log, env)
    target = f"127.0.0.1:{port}"
    try:
        server.wait_ready(grpc_ready(target, service=service), ready_timeout_s)
        yield target
    finally:
        assert server.stop(timeout_s=90) == 0, "SIGTERM must drain and exit 0:\n" + log.read_text()


@dataclass
class EngineChild:
    """A running `reviewstack-generation` process and its base URL."""

    url: str
    child: ChildProcess
    port: int

    @property
    def process(self) -> subprocess.Popen:
        return self.child.process


def start_engine(
    model: Path,
    log: Path,
    *flags: str,
    port: int | None = None,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 120,
) -> EngineChild:
    """Start the generation engine on loopback (`port`, or a free one) and return once /health answers
    200; the caller stops it (`stop_engine`). `env` replaces the environment (tokens, limits)."""
    port = port or free_port()
    command = [str(Path(sys.executable).with_name("reviewstack-generation")), "--model", str(model)]
    command += ["--host", "127.0.0.1", "--port", str(port), *flags]
    engine = ChildProcess("the generation engine", command, log, env)
    url = f"http://127.0.0.1:{port}"
    try:
        engine.wait_ready(http_ready(url), ready_timeout_s)
    except Exception:
        engine.stop(timeout_s=5)
        raise
    return EngineChild(url, engine, port)


def stop_engine(child: EngineChild, log: Path) -> None:
    """SIGTERM, and require a clean exit (0); a process already killed on purpose is only reaped."""
    if not child.child.running:
        return
    assert child.child.stop(timeout_s=60) == 0, "SIGTERM must stop the engine cleanly:\n" + log.read_text()


@contextlib.contextmanager
def engine_process(
    model: Path, log: Path, *flags: str, ready_timeout_s: float = 120, env: dict[str, str] | None = None
) -> Iterator[str]:
    """Run the generation engine (`reviewstack-generation`) on a free loopback port; yield its base URL
    once /health answers 200; on exit SIGTERM it and require a clean exit (0)."""
    child = start_engine(model, log, *flags, env=env, ready_timeout_s=ready_timeout_s)
    try:
        yield child.url
    finally:
        stop_engine(child, log)


# The limits of the engine shared (`refuser_engine`) by the HTTP-level tests of the engine, its chat API,
# the LLM-judge matcher and the review service and CLI: 600 input tokens, 1024 in all, 4 slots, 6 requests
# in flight. tests/generation/test_server.py asserts each of them; change them together.
SHARED_ENGINE_FLAGS = (
    *("--max-input-tokens", "600", "--max-total-tokens", "1024"),
    *("--max-batch-size", "4", "--max-concurrent-requests", "6"),
)


@pytest.fixture(scope="session")
def refuser_engine(refuser_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One generation engine on `refuser_model` with SHARED_ENGINE_FLAGS for the whole session: started by
    the first test that asks for it, stopped (and required to exit cleanly) at the end. Engines with other
    limits stay module-scoped where they are needed."""
    log = tmp_path_factory.mktemp("refuser-engine") / "engine.log"
    with engine_process(refuser_model, log, *SHARED_ENGINE_FLAGS) as url:
        yield url


@pytest.fixture(scope="session")
def refuser_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny Llama trained to write 7-aspect reviews that mostly refuse (tests/refuser.py), built once per
    recipe and versions into the test asset cache (tests/assets.py): minutes saved on every later run."""
    import shutil

    from . import refuser

    cached = assets.refuser_model_dir()
    if not (cached / "tokenizer_config.json").is_file():
        built = refuser.make_refuser(tmp_path_factory.mktemp("refuser"))
        staging = cached.with_name(f".{cached.name}.partial-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(built, staging)
        try:
            staging.rename(cached)  # whole or not at all; a process that built it first wins
        except OSError:
            shutil.rmtree(staging, ignore_errors=True)
    return cached

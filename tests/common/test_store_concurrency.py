"""Several real processes publishing one store prefix at once, writers killed mid-commit, and the S3
server going away mid-publish: a manifest never lists a missing or foreign file, on a directory and on a
real S3 protocol server (moto_server)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from reviewstack.common.store import ArtifactStore, LocalStore
from reviewstack.common.store.base import STAGING_DIR
from reviewstack.common.store.s3 import S3Store

from ..conftest import S3Server, free_port
from .store_worker import check_published, dataset_files

WORKER = Path(__file__).with_name("store_worker.py")
PROXY = Path(__file__).with_name("tcp_proxy.py")
RACERS = 4


@dataclass
class Backend:
    """A store as this test process sees it, and how a child process opens the same one."""

    store: ArtifactStore
    uri: str
    env: dict[str, str]
    log_dir: Path

    @property
    def is_s3(self) -> bool:
        return isinstance(self.store, S3Store)


class Child:
    """A process whose stdout lines are read as they come (so a test can act at a given point)."""

    def __init__(self, command: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with open(log, "ab") as err:
            self.proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, env=env)
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(self.proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[bytes]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.put(line.decode().rstrip("\n"))
        self.lines.put(None)

    def _next(self, deadline: float) -> str | None:
        try:
            return self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(f"process {self.proc.pid} said nothing in time:\n{self.log.read_text()}")

    def wait_for(self, expected: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (line := self._next(deadline)) != expected:
            if line is None:
                pytest.fail(f"process exited ({self.proc.wait()}) before {expected}:\n{self.log.read_text()}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


class Worker(Child):
    """tests/common/store_worker.py in a process of its own."""

    def __init__(self, backend: Backend, *args: str, env: dict[str, str] | None = None) -> None:
        log = backend.log_dir / f"worker-{uuid.uuid4().hex[:8]}.log"
        super().__init__([sys.executable, str(WORKER), *args], log, env or backend.env)

    def result(self, timeout: float = 60) -> dict[str, Any]:
        """The JSON line a worker prints last; fails on a traceback (an error no user could act on)."""
        deadline, last = time.monotonic() + timeout, None
        while (line := self._next(deadline)) is not None:
            last = line
        code = self.proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        assert code in (0, 3) and last is not None, f"exit {code}:\n{self.log.read_text()}"
        return json.loads(last)


class Proxy(Child):
    """tests/common/tcp_proxy.py: a network between client and S3 server that a test can cut."""

    def __init__(self, target_port: int, log_dir: Path, port: int | None = None) -> None:
        self.port = port or free_port()
        command = [sys.executable, str(PROXY), str(self.port), str(target_port)]
        super().__init__(command, log_dir / f"proxy-{self.port}.log")
        self.wait_for("LISTENING", 30)

    def wait_uploaded(self, mib: int, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while (line := self._next(deadline)) != f"UP {mib}":
            assert line is not None, self.log.read_text()


@pytest.fixture
def workers() -> Iterator[list[Child]]:
    """Every process a test starts is killed at its end, passed or failed."""
    started: list[Child] = []
    yield started
    for worker in started:
        worker.kill()


def start(workers: list[Child], backend: Backend, *args: str, env: dict[str, str] | None = None) -> Worker:
    worker = Worker(backend, *args, env=env)
    workers.append(worker)
    return worker


def s3_backend(request: pytest.FixtureRequest, tmp_path: Path, **options: Any) -> Backend:
    server = request.getfixturevalue("s3_server")
    uri = f"s3://race-{uuid.uuid4().hex[:12]}/store"
    store = S3Store(uri[5:].split("/")[0], "store", server.settings(), **options)
    return Backend(store, uri, {**os.environ, **server.env()}, tmp_path)


@pytest.fixture(params=["local", "s3"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "s3":
        return s3_backend(request, tmp_path)
    store = LocalStore(tmp_path / "store")
    return Backend(store, store.uri, dict(os.environ), tmp_path)


@contextlib.contextmanager
def polling_reader(workers: list[Child], backend: Backend, *prefixes: str) -> Iterator[dict[str, Any]]:
    """A reader process checking, as fast as it can, every manifest it finds; its summary on exit."""
    stop = backend.log_dir / f"stop-{uuid.uuid4().hex[:8]}"
    reader = start(workers, backend, "read", backend.uri, str(stop), *prefixes)
    summary: dict[str, Any] = {}
    try:
        yield summary
    finally:
        stop.touch()
        summary.update(reader.result())


def staged(store: ArtifactStore) -> list[str]:
    return [k for k, _ in store._iter_internal(STAGING_DIR)]


def keys(store: ArtifactStore, prefix: str) -> list[str]:
    return [k[len(prefix) + 1 :] for k in store.keys(prefix)]


def assert_published_exactly(store: ArtifactStore, prefix: str, tag: str, big: int = 0) -> None:
    """The manifest lists exactly the files of writer `tag`, each stored with the listed hash."""
    expected = dataset_files(tag, big)
    manifest = store.read_manifest(prefix)
    assert manifest["writer"] == tag
    assert set(manifest["files"]) == set(expected)
    assert sorted(keys(store, prefix)) == sorted([*expected, "manifest.json"])  # no stray, no foreign file
    assert check_published(store, prefix) == []
    for name, data in expected.items():
        assert store.get_bytes(f"{prefix}/{name}") == data


def racers(workers: list[Child], backend: Backend, prefix: str, tags: list[str], big: int) -> list[Child]:
    at = str(time.time() + 2.5)  # all start together, once every interpreter is up
    return [
        start(
            workers, backend, "publish", backend.uri, prefix, "--content", t, "--big", str(big), "--start", at
        )
        for t in tags
    ]


# ---- concurrent publishers -------------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_identical_publishers_one_publishes_the_others_keep_it(
    backend: Backend, workers: list[Child]
) -> None:
    """Four processes publish the same files at the same instant (two replicas given the same build):
    one writes the version, the others find it identical and keep it; nothing of anyone is lost."""
    prefix, big = "datasets/same/v1", 3 << 20
    with polling_reader(workers, backend, prefix) as seen:
        results = [w.result() for w in racers(workers, backend, prefix, ["same"] * RACERS, big)]
    outcomes = [r["outcome"] for r in results]
    assert sorted(outcomes) == ["published"] + ["reused"] * (RACERS - 1), results
    manifest_sha = backend.store.stat(f"{prefix}/manifest.json").sha256
    assert {r["manifest_sha256"] for r in results} == {manifest_sha}  # all report the one manifest
    assert_published_exactly(backend.store, prefix, "same", big)
    assert staged(backend.store) == []  # every writer cleaned its staging area
    assert seen["violations"] == [] and seen["checks"] > 0 and seen["published_seen"] > 0, seen


@pytest.mark.timeout(120)
def test_different_publishers_exactly_one_wins(backend: Backend, workers: list[Child]) -> None:
    """Four processes publish different files under one prefix: exactly one wins, the others get
    AlreadyExists, and the manifest lists the winner's files only, with the winner's hashes."""
    prefix, big = "datasets/race/v1", 3 << 20
    tags = [f"w{n}" for n in range(RACERS)]
    with polling_reader(workers, backend, prefix) as seen:
        results = [w.result() for w in racers(workers, backend, prefix, tags, big)]
    outcomes = [r["outcome"] for r in results]
    assert sorted(outcomes) == ["exists"] * (RACERS - 1) + ["published"], results
    winner = tags[outcomes.index("published")]
    assert backend.store.read_manifest(prefix)["writer"] == winner
    assert_published_exactly(backend.store, prefix, winner, big)
    for r in results:
        if r["outcome"] == "exists":
            # raced at commit ("published by another writer meanwhile"), or came after it ("already")
            assert prefix in r["message"] and "version" in r["message"] and "overwrite=True" in r["message"]
    assert staged(backend.store) == []
    assert seen["violations"] == [] and seen["checks"] > 0, seen


# ---- writers that die or stall ---------------------------------------------------------------------------
@pytest.mark.timeout(120)
def test_writer_killed_mid_commit_then_another_publishes(backend: Backend, workers: list[Child]) -> None:
    """SIGKILL a writer that holds the claim and has moved one file into place: nothing is published,
    its claim is broken (at once on a directory, once stale on S3), and the next writer publishes its
    own files only."""
    prefix, ttl = "datasets/killed/v1", ["--claim-ttl-s", "2"]
    with polling_reader(workers, backend, prefix) as seen:
        a = start(
            workers,
            backend,
            *ttl,
            "publish",
            backend.uri,
            prefix,
            "--content",
            "a",
            "--pause-after-moves",
            "1",
        )
        a.wait_for("MOVED")
        a.kill()
        assert len(keys(backend.store, prefix)) == 1  # a stray of the dead writer, and no manifest
        assert not backend.store.is_published(prefix) and backend.store.list_published("datasets") == []
        assert backend.store._claim_holder(prefix)["pid"] == a.proc.pid  # type: ignore[index]
        b = start(workers, backend, *ttl, "publish", backend.uri, prefix, "--content", "b")
        assert b.result()["outcome"] == "published"
    assert_published_exactly(backend.store, prefix, "b")
    if backend.is_s3:
        assert backend.store._claim_holder(prefix) is None  # released by its new holder
        assert "took over a stale claim" in b.log.read_text()
    assert seen["violations"] == [] and seen["checks"] > 0, seen


@pytest.mark.timeout(120)
def test_waiting_for_a_live_holder_is_bounded(backend: Backend, workers: list[Child]) -> None:
    """A writer that finds the claim held by a live writer waits at most its wait_s, then gives up with
    Unavailable naming the holder; nothing of it is published."""
    prefix = "datasets/busy/v1"
    a = start(workers, backend, "publish", backend.uri, prefix, "--content", "a", "--pause-after-moves", "1")
    a.wait_for("MOVED")
    began = time.monotonic()
    b = start(workers, backend, "publish", backend.uri, prefix, "--content", "b", "--wait-s", "1")
    result = b.result()
    assert time.monotonic() - began < 15
    assert result["outcome"] == "error" and result["type"] == "Unavailable", result
    assert f"pid {a.proc.pid}" in result["message"] and "retry later" in result["message"]
    assert not backend.store.is_published(prefix)
    assert len({k.split("/")[2] for k in staged(backend.store)}) == 1  # the waiter dropped its staging


@pytest.mark.timeout(120)
def test_s3_claim_of_a_slow_live_writer_is_not_broken(
    request: pytest.FixtureRequest, tmp_path: Path, workers: list[Child]
) -> None:
    """A holder that stalls for twice the claim TTL keeps its claim by refreshing it: a second writer
    waits instead of breaking in, and gets AlreadyExists once the first has published."""
    backend = s3_backend(request, tmp_path)
    prefix, ttl = "datasets/slow/v1", ["--claim-ttl-s", "1.5"]
    a = start(
        workers,
        backend,
        *ttl,
        "publish",
        backend.uri,
        prefix,
        "--content",
        "a",
        "--pause-after-moves",
        "1",
        "--pause-s",
        "4",
    )
    a.wait_for("MOVED")
    b = start(workers, backend, *ttl, "publish", backend.uri, prefix, "--content", "b")
    assert a.result()["outcome"] == "published"
    assert b.result()["outcome"] == "exists"
    assert "took over" not in b.log.read_text()
    assert_published_exactly(backend.store, prefix, "a")


@pytest.mark.timeout(120)
def test_staging_of_dead_writers_is_collected(backend: Backend, workers: list[Child]) -> None:
    """A writer killed before its commit leaves only a staging area; once older than the staging TTL
    the next publication that starts deletes it, and leaves a live writer's staging alone."""
    a = start(
        workers,
        backend,
        "publish",
        backend.uri,
        "datasets/dead/v1",
        "--content",
        "a",
        "--pause-before-commit",
        "600",
    )
    a.wait_for("STAGED")
    a.kill()
    dead = {k.split("/")[2] for k in staged(backend.store)}
    assert len(dead) == 1
    backend.store.staging_ttl_s = 1.0
    with backend.store.publish("datasets/live/v1") as live:
        live.put_bytes("train.jsonl", b"live")
        time.sleep(1.2)
        live.put_bytes("val.jsonl", b"live")  # written within the TTL: this area is alive
        backend.store._gc_due = 0.0
        with backend.store.publish("datasets/other/v1") as other:
            other.put_bytes("x.jsonl", b"x")
        assert {k.split("/")[2] for k in staged(backend.store)} == {live.writer_id}
    assert backend.store.read_manifest("datasets/live/v1")["files"].keys() == {"train.jsonl", "val.jsonl"}
    assert backend.store.list_published("datasets") == ["datasets/live/v1", "datasets/other/v1"]
    assert staged(backend.store) == []


@pytest.mark.timeout(120)
def test_participants_in_other_processes_write_into_a_publication(
    backend: Backend, workers: list[Child]
) -> None:
    """The ZeRO-3 pattern: other processes write their shards into the owner's staging area with the
    owner's writer id; the owner adopts them by name; only adopted files are published."""
    prefix = "runs/r/checkpoints/step-2"
    with backend.store.publish(prefix, overwrite=True) as pub:
        pub.put_bytes("rank0.pt", b"rank 0")
        shards = ["zero/rank1.pt", "rng-rank1.pt", "unadopted.pt"]
        result = start(workers, backend, "participate", backend.uri, prefix, pub.writer_id, *shards).result()
        assert result["outcome"] == "written", result
        assert keys(backend.store, prefix) == []
        for name in shards[:2]:
            assert pub.adopt(name).sha256 == result["refs"][f"{prefix}/{name}"]
    assert set(backend.store.read_manifest(prefix)["files"]) == {"rank0.pt", *shards[:2]}
    assert sorted(keys(backend.store, prefix)) == sorted(["manifest.json", "rank0.pt", *shards[:2]])
    assert check_published(backend.store, prefix) == [] and staged(backend.store) == []


# ---- the S3 server goes away ------------------------------------------------------------------------------
FAST_FAILING = ["--connect-timeout", "1", "--read-timeout", "3", "--retries", "1", "--claim-ttl-s", "2"]


def assert_clean_outage(result: dict[str, Any], endpoint: str) -> None:
    """Failed as a user can act on: Unavailable, naming the endpoint and the setting that points at it."""
    assert result["outcome"] == "error" and result["type"] == "Unavailable", result
    assert endpoint in result["message"] and "REVIEWSTACK_S3_ENDPOINT" in result["message"], result


@pytest.mark.timeout(120)
def test_s3_network_cut_mid_upload_and_mid_commit(
    request: pytest.FixtureRequest, tmp_path: Path, workers: list[Child]
) -> None:
    """The network to a server that keeps its state goes down (a TCP proxy killed) in the middle of an
    upload, and later while a writer holds the claim with one file moved: each writer fails promptly
    with Unavailable, nothing half-written is ever visible, and once the network is back the same
    prefixes publish (the second by taking over the dead writer's claim)."""
    backend = s3_backend(request, tmp_path)  # this process reaches the server directly
    server_port = int(backend.store.endpoint.rsplit(":", 1)[1])  # type: ignore[attr-defined]
    proxy = Proxy(server_port, tmp_path)
    workers.append(proxy)
    env = {**backend.env, "REVIEWSTACK_S3_ENDPOINT": f"127.0.0.1:{proxy.port}"}
    first, second, big = "datasets/cut/v1", "datasets/cut/v2", 40 << 20
    with polling_reader(workers, backend, first, second) as seen:
        a = start(
            workers,
            backend,
            *FAST_FAILING,
            "publish",
            backend.uri,
            first,
            "--content",
            "a",
            "--big",
            str(big),
            env=env,
        )
        proxy.wait_uploaded(30)  # the 40 MiB file is on its way
        cut = time.monotonic()
        proxy.kill()
        assert_clean_outage(a.result(), f"127.0.0.1:{proxy.port}")
        assert time.monotonic() - cut < 15
        assert keys(backend.store, first) == [] and not backend.store.is_published(first)

        proxy = Proxy(server_port, tmp_path, port=proxy.port)  # the network is back
        workers.append(proxy)
        again = start(
            workers,
            backend,
            *FAST_FAILING,
            "publish",
            backend.uri,
            first,
            "--content",
            "a",
            "--big",
            str(big),
            env=env,
        )
        assert again.result()["outcome"] == "published"

        c = start(
            workers,
            backend,
            *FAST_FAILING,
            "publish",
            backend.uri,
            second,
            "--content",
            "c",
            "--pause-after-moves",
            "1",
            "--pause-s",
            "2",
            env=env,
        )
        c.wait_for("MOVED")
        proxy.kill()
        assert_clean_outage(c.result(), f"127.0.0.1:{proxy.port}")
        assert len(keys(backend.store, second)) == 1 and not backend.store.is_published(second)

        proxy = Proxy(server_port, tmp_path, port=proxy.port)
        workers.append(proxy)
        d = start(workers, backend, *FAST_FAILING, "publish", backend.uri, second, "--content", "d", env=env)
        assert d.result()["outcome"] == "published"
        assert "took over a stale claim" in d.log.read_text()
    assert_published_exactly(backend.store, first, "a", big)
    assert_published_exactly(backend.store, second, "d")
    assert seen["violations"] == [] and seen["published_seen"] > 0, seen


@pytest.mark.timeout(120)
def test_s3_server_killed_mid_publish_fails_promptly(tmp_path: Path, workers: list[Child]) -> None:
    """moto_server itself dies (SIGKILL) while a writer uploads: the writer ends within seconds with
    Unavailable and a message naming the endpoint, neither hanging nor dying on a bare traceback."""
    port = free_port()
    exe = Path(sys.executable).with_name("moto_server")
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing"}
    moto = Child([str(exe), "-H", "127.0.0.1", "-p", str(port)], tmp_path / "moto.log", env)
    workers.append(moto)
    server = S3Server(endpoint=f"127.0.0.1:{port}")
    uri = f"s3://dying-{uuid.uuid4().hex[:12]}/store"
    backend = Backend(
        S3Store(uri[5:].split("/")[0], "store", server.settings()),
        uri,
        {**os.environ, **server.env()},
        tmp_path,
    )
    deadline = time.monotonic() + 30
    while True:  # until the server answers
        with contextlib.suppress(Exception):
            backend.store.check_writable()
            break
        assert time.monotonic() < deadline and moto.proc.poll() is None, (tmp_path / "moto.log").read_text()
        time.sleep(0.2)
    a = start(
        workers,
        backend,
        *FAST_FAILING,
        "publish",
        uri,
        "datasets/x/v1",
        "--content",
        "a",
        "--big",
        str(40 << 20),
    )
    a.wait_for("WROTE only-a.jsonl")
    time.sleep(0.3)  # into the upload of the big file
    killed = time.monotonic()
    moto.kill()
    assert_clean_outage(a.result(), server.endpoint)
    assert time.monotonic() - killed < 15

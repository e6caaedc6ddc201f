"""The artifact store, against a real directory and a real S3 protocol server (moto_server via minio)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from reviewstack.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
)
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import ArtifactStore, LocalStore, open_store
from reviewstack.common.store.base import STAGING_DIR
from reviewstack.common.store.s3 import S3Store


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ArtifactStore:
    return request.getfixturevalue(f"{request.param}_store")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def spy(
    monkeypatch: pytest.MonkeyPatch, store: ArtifactStore, name: str, calls: list[str], tag: str = ""
) -> None:
    """Record the key of every call of `store.<name>` (in order) and then do the call."""
    original = getattr(store, name)

    def recording(key: str, *args: object, **kwargs: object) -> object:
        calls.append(tag + key)
        return original(key, *args, **kwargs)

    monkeypatch.setattr(store, name, recording)


def keys(store: ArtifactStore, prefix: str = "", recursive: bool = True) -> list[str]:
    return [r.key for r in store.list(prefix, recursive=recursive)]


# ---- objects ---------------------------------------------------------------------------------------------
def test_put_get_bytes_roundtrip(store: ArtifactStore) -> None:
    data = b"hello \x00 world\n" * 100
    ref = store.put_bytes("reviews/sys-a/paper-1.json", data)
    assert ref.key == "reviews/sys-a/paper-1.json"
    assert ref.uri == store.uri_for(ref.key) == f"{store.uri}/reviews/sys-a/paper-1.json"
    assert (ref.sha256, ref.size) == (sha(data), len(data))
    assert store.get_bytes(ref.key) == data
    assert store.stat(ref.key) == ref
    assert store.exists(ref.key) and not store.exists("reviews/sys-a/paper-2.json")
    store.put_bytes(ref.key, b"v2")  # overwrite replaces content and hash
    assert store.get_bytes(ref.key) == b"v2" and store.stat(ref.key).sha256 == sha(b"v2")


def test_store_uris(store: ArtifactStore, tmp_path: Path) -> None:
    if isinstance(store, LocalStore):
        assert store.uri == f"file://{tmp_path}/store"
        assert open_store(store.uri).uri == store.uri  # file:// URIs round-trip
    else:
        assert store.uri.startswith("s3://test-") and store.uri.endswith("/store")


def test_put_file_and_download(store: ArtifactStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(300_000))
    ref = store.put_file("runs/r1/spec.json", src)
    assert (ref.sha256, ref.size) == (sha(src.read_bytes()), src.stat().st_size)
    dest = tmp_path / "out" / "nested" / "spec.json"
    got = store.download("runs/r1/spec.json", dest)
    assert dest.read_bytes() == src.read_bytes()
    assert got == ref
    assert [p.name for p in dest.parent.iterdir()] == ["spec.json"]  # no temp file left beside it


def test_streaming_writer_big_object(store: ArtifactStore) -> None:
    size = 17 * (1 << 20) + 12_345  # > 16 MiB: several multipart parts on S3
    digest = hashlib.sha256()
    chunk = os.urandom(1 << 20)
    with store.writer("runs/r1/merged/model.safetensors") as w:
        written = 0
        while written < size:
            piece = chunk[: min(len(chunk), size - written)]
            w.write(piece)
            digest.update(piece)
            written += len(piece)
        assert not store.exists("runs/r1/merged/model.safetensors")  # not visible before the block ends
    assert w.ref is not None and (w.ref.sha256, w.ref.size) == (digest.hexdigest(), size)
    assert store.stat(w.ref.key) == w.ref
    if isinstance(store, S3Store):  # a multipart upload's ETag is "<md5 of md5s>-<parts>"
        etag = store.client.stat_object(store.bucket, f"{store.prefix}/{w.ref.key}").etag
        assert "-" in etag, etag
    back, n = hashlib.sha256(), 0
    with store.open(w.ref.key) as f:
        while piece := f.read(1 << 20):
            back.update(piece)
            n += len(piece)
    assert (back.hexdigest(), n) == (digest.hexdigest(), size)


def test_writer_exception_leaves_nothing(store: ArtifactStore) -> None:
    store.put_bytes("a/kept.txt", b"old")
    for key in ("a/new.txt", "a/kept.txt"):
        with pytest.raises(RuntimeError, match="boom"), store.writer(key) as w:
            w.write(b"partial")
            raise RuntimeError("boom")
    assert not store.exists("a/new.txt")
    assert store.get_bytes("a/kept.txt") == b"old"
    assert keys(store) == ["a/kept.txt"]


def test_listing_and_deleting(store: ArtifactStore) -> None:
    for key in ("a/1", "a/2", "a/b/3", "a/b/c/4", "a-x/5", "ab", "z"):
        store.put_bytes(key, key.encode())
    store.check_writable()  # its probe must not show up anywhere
    assert keys(store) == ["a-x/5", "a/1", "a/2", "a/b/3", "a/b/c/4", "ab", "z"]
    assert keys(store, "a") == ["a/1", "a/2", "a/b/3", "a/b/c/4"]  # folder semantics: not 'ab', 'a-x'
    assert keys(store, "a/", recursive=False) == ["a/1", "a/2"]
    assert keys(store, "", recursive=False) == ["ab", "z"]
    assert keys(store, "missing") == []
    assert store.list_dirs("") == ["a", "a-x"]
    assert store.list_dirs("a") == ["a/b"] and store.list_dirs("a/b/c") == []
    refs = {r.key: r for r in store.list("a/b")}
    assert refs["a/b/3"].sha256 == sha(b"a/b/3") and refs["a/b/3"].size == 5
    store.delete("a/1")
    store.delete("a/1")  # deleting what is gone is not an error
    assert not store.exists("a/1")
    assert store.delete_prefix("a/b") == 2
    assert keys(store, "a") == ["a/2"]
    assert store.list_dirs("a") == []  # an emptied folder is gone, as in S3
    with pytest.raises(InvalidArgument):
        store.delete_prefix("")


BAD_KEYS = ["", "/abs/key", "a//b", "../x", "a/../b", "a/./b", "a/", "a\\b", ".reviewstack/x"]


def test_bad_keys_rejected(store: ArtifactStore) -> None:
    for key in BAD_KEYS:
        for call in (
            lambda k: store.put_bytes(k, b"x"),
            store.get_bytes,
            store.stat,
            store.exists,
            store.delete,
            store.uri_for,
            lambda k: store.writer(k).__enter__(),
        ):
            with pytest.raises(InvalidArgument):
                call(key)
    with pytest.raises(InvalidArgument):
        store.list("/abs")
    assert keys(store) == []


def test_missing_key_errors(store: ArtifactStore, tmp_path: Path) -> None:
    key = "datasets/none/train.jsonl"
    for call in (
        store.get_bytes,
        store.stat,
        lambda k: store.download(k, tmp_path / "x"),
        lambda k: store.open(k).__enter__(),
    ):
        with pytest.raises(NotFound, match=re.escape(store.uri_for(key))):
            call(key)
    assert not (tmp_path / "x").exists()


def test_foreign_object_gets_hashed(store: ArtifactStore) -> None:
    data = b"written by another tool\n"
    if isinstance(store, LocalStore):
        (store.root / "imports").mkdir(parents=True)
        (store.root / "imports" / "f.txt").write_bytes(data)
    else:
        import io

        store.check_writable()  # creates the test bucket
        store.client.put_object(store.bucket, f"{store.prefix}/imports/f.txt", io.BytesIO(data), len(data))
    assert store.stat("imports/f.txt").sha256 == sha(data)
    assert [r.sha256 for r in store.list("imports")] == [sha(data)]
    assert store.get_bytes("imports/f.txt") == data


def test_concurrent_writers(store: ArtifactStore) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(5):
                with store.writer(f"c/t{i}/obj{j}") as w:
                    w.write(f"{i}-{j}".encode() * 1000)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    refs = list(store.list("c"))
    assert len(refs) == 40
    assert all(r.sha256 == sha(store.get_bytes(r.key)) for r in refs)


def test_exclusive_put_creates_once(store: ArtifactStore) -> None:
    ref = store.put_bytes("runs/r1/spec.json", b'{"a": 1}', exclusive=True)
    assert (ref.sha256, ref.size) == (sha(b'{"a": 1}'), 8)
    assert store.stat("runs/r1/spec.json") == ref
    with pytest.raises(AlreadyExists, match=re.escape(store.uri_for("runs/r1/spec.json"))):
        store.put_bytes("runs/r1/spec.json", b'{"a": 2}', exclusive=True)
    assert store.get_bytes("runs/r1/spec.json") == b'{"a": 1}'  # the loser changed nothing
    store.delete("runs/r1/spec.json")
    assert store.put_bytes("runs/r1/spec.json", b"again", exclusive=True).sha256 == sha(b"again")
    with pytest.raises(InvalidArgument):
        store.put_bytes(".reviewstack/x", b"x", exclusive=True)
    assert keys(store) == ["runs/r1/spec.json"]


def test_exclusive_put_local_refuses_folders(local_store: LocalStore) -> None:
    local_store.put_bytes("a/b/c", b"c")
    with pytest.raises(InvalidArgument, match="folder"):
        local_store.put_bytes("a/b", b"x", exclusive=True)
    with pytest.raises(InvalidArgument, match="parent"):
        local_store.put_bytes("a/b/c/d", b"x", exclusive=True)
    assert list((local_store.root / ".reviewstack" / "tmp").iterdir()) == []  # no temp file left


EXCLUSIVE_RACER = """
import os, sys, time
from reviewstack.common.errors import AlreadyExists
from reviewstack.common.store import open_store
store = open_store(sys.argv[1])
store.check_writable()
start = float(sys.argv[3])
time.sleep(max(0.0, start - time.time()))  # every racer fires at the same instant
for i in range(int(sys.argv[4])):
    try:
        store.put_bytes(f"race/{i}", sys.argv[2].encode(), exclusive=True)
        print(f"won {i}", flush=True)
    except AlreadyExists:
        print(f"lost {i}", flush=True)
"""


def store_env(store: ArtifactStore, request: pytest.FixtureRequest) -> dict[str, str]:
    """The environment a child process needs to open the same store by its URI."""
    env = dict(os.environ)
    if isinstance(store, S3Store):
        env.update(request.getfixturevalue("s3_server").env())
    return env


def test_exclusive_put_race_between_processes(store: ArtifactStore, request: pytest.FixtureRequest) -> None:
    """Processes race for the same keys at the same instant: each key has exactly one winner, and the
    object holds that winner's bytes."""
    racers, rounds = 4, 10
    start = time.time() + 3
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", EXCLUSIVE_RACER, store.uri, f"writer-{n}", str(start), str(rounds)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=store_env(store, request),
        )
        for n in range(racers)
    ]
    outputs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err.decode() for _, err in outputs]
    for i in range(rounds):
        winners = [n for n, (out, _) in enumerate(outputs) if f"won {i}\n".encode() in out]
        assert len(winners) == 1, (i, winners)
        assert store.get_bytes(f"race/{i}") == f"writer-{winners[0]}".encode()


# ---- publication -----------------------------------------------------------------------------------------
def test_publication_writes_manifest_last(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    spy(monkeypatch, store, "put_bytes", order)
    original_move = store._move

    def recording_move(src: str, dest: str, ref: object) -> object:
        order.append(dest)  # a staged file moved into place
        return original_move(src, dest, ref)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_move", recording_move)
    src = tmp_path / "val.jsonl"
    src.write_bytes(b'{"v": 1}\n' * 10)
    before = datetime.now().astimezone()
    with store.publish("datasets/x/v1") as pub:
        pub.put_bytes("train.jsonl", b'{"t": 1}\n' * 50)
        pub.put_file("val.jsonl", src)
        with pub.writer("test/part-0.jsonl") as w:
            w.write(b'{"x": 1}\n')
        assert w.ref is not None and w.ref.key == "datasets/x/v1/test/part-0.jsonl"
        pub.manifest["counts"] = {"train": 50, "val": 10, "test": 1}
        assert not store.is_published("datasets/x/v1")
        assert keys(store, "datasets") == []  # staged out of sight until the commit
        with pytest.raises(NotFound, match="not published"):
            store.read_manifest("datasets/x/v1")
    first_manifest_write = order.index("datasets/x/v1/manifest.json")
    assert set(order[first_manifest_write:]) == {"datasets/x/v1/manifest.json"}  # nothing after it
    assert {k.rsplit("/", 1)[-1] for k in order[:first_manifest_write]} == {
        "train.jsonl",
        "val.jsonl",
        "part-0.jsonl",
    }
    assert pub.manifest_ref is not None and pub.manifest_ref == store.stat("datasets/x/v1/manifest.json")
    manifest = store.read_manifest("datasets/x/v1")
    assert manifest["counts"] == {"train": 50, "val": 10, "test": 1}
    assert set(manifest["files"]) == {"train.jsonl", "val.jsonl", "test/part-0.jsonl"}
    for name, entry in manifest["files"].items():
        ref = store.stat(f"datasets/x/v1/{name}")
        assert entry == {"sha256": ref.sha256, "size": ref.size}
        assert entry["sha256"] == sha(store.get_bytes(ref.key))
    published = datetime.fromisoformat(manifest["published_at"])
    assert published.utcoffset() == timedelta(0) and published >= before - timedelta(seconds=1)
    assert store.is_published("datasets/x/v1")
    assert store.list_published("datasets") == ["datasets/x/v1"] == store.list_published()
    assert store.list_published("runs") == []


def test_directory_round_trip_through_a_publication(store: ArtifactStore, tmp_path: Path) -> None:
    source = tmp_path / "model"
    (source / "sub").mkdir(parents=True)
    (source / "config.json").write_text("{}")
    (source / "sub" / "weights.bin").write_bytes(os.urandom(1000))
    with store.publish("runs/r/merged") as pub:
        refs = pub.put_dir(source, under="model")
    assert sorted(r.key for r in refs) == [
        "runs/r/merged/model/config.json",
        "runs/r/merged/model/sub/weights.bin",
    ]
    assert set(store.read_manifest("runs/r/merged")["files"]) == {
        "model/config.json",
        "model/sub/weights.bin",
    }
    copied = tmp_path / "copy"
    store.download_dir("runs/r/merged/model", copied)
    assert (copied / "sub" / "weights.bin").read_bytes() == (source / "sub" / "weights.bin").read_bytes()
    with pytest.raises(NotFound):
        store.download_dir("runs/none", tmp_path / "none")


def test_publication_exception_leaves_nothing(store: ArtifactStore) -> None:
    with pytest.raises(ValueError, match="bad row"), store.publish("datasets/y/v1") as pub:
        pub.put_bytes("train.jsonl", b"a")
        with pub.writer("val.jsonl") as w:
            w.write(b"b")
        raise ValueError("bad row")
    assert keys(store, "datasets") == []
    assert not store.is_published("datasets/y/v1")
    with pytest.raises(NotFound):
        store.read_manifest("datasets/y/v1")


def staged(store: ArtifactStore) -> list[str]:
    """Every object in the staging areas of publications (internal, never listed)."""
    return [k for k, _ in store._iter_internal(STAGING_DIR)]


def test_publication_adopts_files_participants_wrote(store: ArtifactStore) -> None:
    """Another process (a second training rank) writes its shard into the owner's staging area through
    a participant handle; the owner lists it in the manifest, refuses it twice, and a rollback removes it."""
    prefix = "runs/r/checkpoints/step-1"
    with store.publish(prefix) as pub:
        pub.put_bytes("rank0.pt", b"zero")
        rank1 = store.join_publication(prefix, pub.writer_id)
        assert rank1.put_bytes("rank1.pt", b"one").key == f"{prefix}/rank1.pt"
        rank1.put_bytes("never-adopted.pt", b"x")
        assert keys(store, "runs") == []  # nothing visible before the commit
        ref = pub.adopt("rank1.pt")
        assert (ref.key, ref.sha256) == (f"{prefix}/rank1.pt", sha(b"one"))
        for name in ("rank1.pt", "rank0.pt"):
            with pytest.raises(FailedPrecondition, match="already part"):
                pub.adopt(name)
    files = store.read_manifest(prefix)["files"]
    assert files == {
        "rank0.pt": {"sha256": sha(b"zero"), "size": 4},
        "rank1.pt": {"sha256": sha(b"one"), "size": 3},
    }
    assert keys(store, prefix) == [f"{prefix}/{n}" for n in ("manifest.json", "rank0.pt", "rank1.pt")]
    assert staged(store) == []  # what was not adopted went with the staging area
    with pytest.raises(NotFound, match="join_publication"), store.publish("runs/r/checkpoints/step-2") as pub:
        pub.adopt("never-uploaded.pt")
    with pytest.raises(RuntimeError), store.publish("runs/r/checkpoints/step-3") as pub:
        store.join_publication("runs/r/checkpoints/step-3", pub.writer_id).put_bytes("rank1.pt", b"one")
        pub.adopt("rank1.pt")
        raise RuntimeError("rank 0 failed")
    assert keys(store, "runs/r/checkpoints/step-3") == [] and staged(store) == []
    for bad in ("../x", "ABC", ""):
        with pytest.raises(InvalidArgument, match="writer_id"):
            store.join_publication(prefix, bad)


def test_publication_rejects_reserved_names(store: ArtifactStore) -> None:
    with pytest.raises(InvalidArgument), store.publish("d/v1") as pub:
        pub.put_bytes("manifest.json", b"{}")
    with pytest.raises(InvalidArgument, match="files"), store.publish("d/v1") as pub:
        pub.put_bytes("a", b"a")
        pub.manifest["files"] = []
    assert keys(store) == []


def test_already_exists_then_overwrite(store: ArtifactStore, monkeypatch: pytest.MonkeyPatch) -> None:
    with store.publish("datasets/z/v1") as pub:
        pub.put_bytes("a.jsonl", b"a")
        pub.put_bytes("b.jsonl", b"b")
    with pytest.raises(AlreadyExists, match="overwrite=True"), store.publish("datasets/z/v1"):
        pass
    assert store.get_bytes("datasets/z/v1/a.jsonl") == b"a" and store.is_published("datasets/z/v1")

    events: list[str] = []
    spy(monkeypatch, store, "_delete", events, tag="delete:")
    original_many, original_move = store._delete_many, store._move
    monkeypatch.setattr(
        store, "_delete_many", lambda ks: (events.extend(f"delete:{k}" for k in ks), original_many(ks))
    )
    monkeypatch.setattr(
        store, "_move", lambda s, d, r: (events.append(f"move:{d}"), original_move(s, d, r))[1]
    )
    with store.publish("datasets/z/v1", overwrite=True) as pub:
        pub.put_bytes("c.jsonl", b"c")
        # the old version stays whole and readable while the new one is written
        assert store.read_manifest("datasets/z/v1")["files"].keys() == {"a.jsonl", "b.jsonl"}
        assert store.get_bytes("datasets/z/v1/a.jsonl") == b"a"
    # at commit the old manifest goes first, then the old objects, then the new ones move in
    final = [
        e for e in dict.fromkeys(events) if not e.startswith("delete:.reviewstack")
    ]  # local deletes 1 by 1
    assert final == [
        "delete:datasets/z/v1/manifest.json",
        "delete:datasets/z/v1/a.jsonl",
        "delete:datasets/z/v1/b.jsonl",
        "move:datasets/z/v1/c.jsonl",
    ]
    assert keys(store, "datasets/z/v1") == ["datasets/z/v1/c.jsonl", "datasets/z/v1/manifest.json"]
    assert set(store.read_manifest("datasets/z/v1")["files"]) == {"c.jsonl"}


def test_publishing_the_same_files_again_keeps_the_first(store: ArtifactStore) -> None:
    """Publishing is idempotent for identical files (a retried or duplicated build): the version already
    there is kept and reported; other files under the same prefix are refused, and change nothing."""
    with store.publish("datasets/s/v1") as first:
        first.put_bytes("train.jsonl", b"t")
        first.manifest["run"] = 1
    with store.publish("datasets/s/v1") as again:
        again.put_bytes("train.jsonl", b"t")
        again.manifest["run"] = 2
    assert again.reused and not first.reused and again.manifest_ref == first.manifest_ref
    assert store.read_manifest("datasets/s/v1")["run"] == 1
    refused = r"1 differ, e\.g\. 'train\.jsonl'.*overwrite=True"
    with pytest.raises(AlreadyExists, match=refused), store.publish("datasets/s/v1") as other:
        other.put_bytes("train.jsonl", b"other")
    assert store.get_bytes("datasets/s/v1/train.jsonl") == b"t" and staged(store) == []
    assert keys(store, "datasets") == ["datasets/s/v1/manifest.json", "datasets/s/v1/train.jsonl"]


def test_leftovers_cleaned_and_nested_publications_protected(store: ArtifactStore) -> None:
    store.put_bytes("datasets/l/v1/stale.jsonl", b"stale")  # an unfinished writer's leftover
    with store.publish("datasets/l/v1") as pub:
        pub.put_bytes("train.jsonl", b"t")
    assert keys(store, "datasets/l/v1") == ["datasets/l/v1/manifest.json", "datasets/l/v1/train.jsonl"]

    with store.publish("runs/r1/checkpoints/step-100") as pub:
        pub.put_bytes("adapter.bin", b"w")
    store.put_bytes("runs/r1/metrics.jsonl", b"{}")
    with pytest.raises(FailedPrecondition, match="overwrite=True"), store.publish("runs/r1"):
        pass
    assert store.is_published("runs/r1/checkpoints/step-100")
    with store.publish("runs/r1", overwrite=True) as pub:
        pub.put_bytes("spec.json", b"{}")
    assert store.list_published("runs") == ["runs/r1"]


KILLED_WRITER = """
import sys, time
from reviewstack.common.store import open_store
store = open_store(sys.argv[1])
with store.publish("datasets/killed/v1") as pub:
    pub.put_bytes("train.jsonl", b"t" * 1000)
    pub.put_bytes("val.jsonl", b"v" * 100)
    with pub.writer("test.jsonl") as w:
        w.write(b"x" * 100_000)
        print("READY", flush=True)
        time.sleep(120)
"""


def test_killed_writer_leaves_nothing_complete(store: ArtifactStore, request: pytest.FixtureRequest) -> None:
    env = dict(os.environ)
    if isinstance(store, S3Store):
        env.update(request.getfixturevalue("s3_server").env())
    with store.publish("datasets/ok/v1") as pub:
        pub.put_bytes("train.jsonl", b"ok")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, store.uri],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 30)
        line = proc.stdout.readline() if ready else b""  # type: ignore[union-attr]
        assert line == b"READY\n", proc.stderr.read() if proc.poll() is not None else "no READY in 30 s"  # type: ignore[union-attr]
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()  # type: ignore[union-attr]
    assert proc.returncode == -signal.SIGKILL
    prefix = "datasets/killed/v1"
    # the finished files wait in the writer's staging area, the half-streamed one is nowhere, and nothing
    # of it is under the prefix, let alone something that says "complete"
    assert sorted(k.rsplit("/", 1)[-1] for k in staged(store)) == ["train.jsonl", "val.jsonl"]
    assert keys(store, "datasets/killed/v1") == []
    assert not store.is_published("datasets/killed/v1")
    with pytest.raises(NotFound, match="not published"):
        store.read_manifest("datasets/killed/v1")
    assert store.list_published("datasets") == ["datasets/ok/v1"]

    with store.publish("datasets/killed/v1") as pub:
        pub.put_bytes("new.jsonl", b"new")
    assert keys(store, "datasets/killed/v1") == [f"{prefix}/{n}" for n in ("manifest.json", "new.jsonl")]
    assert set(store.read_manifest("datasets/killed/v1")["files"]) == {"new.jsonl"}
    assert store.list_published("datasets") == ["datasets/killed/v1", "datasets/ok/v1"]


# ---- backend-specific errors ----------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_s3_unreachable_endpoint_is_unavailable_fast() -> None:
    with socket.socket() as s:  # a loopback port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = open_store("s3://bucket/p", StoreSettings(s3_endpoint=f"127.0.0.1:{port}"))
    start = time.monotonic()
    for call in (lambda: store.get_bytes("k"), store.check_writable, lambda: list(store.list())):
        with pytest.raises(Unavailable, match=rf"127\.0\.0\.1:{port}.*REVIEWSTACK_S3_ENDPOINT"):
            call()
    assert time.monotonic() - start < 15


def test_s3_missing_bucket(s3_server) -> None:  # type: ignore[no-untyped-def]
    store = open_store("s3://no-such-bucket-here", s3_server.settings(s3_create_bucket=False))
    with pytest.raises(NotFound, match="REVIEWSTACK_S3_CREATE_BUCKET=true"):
        store.exists("k")
    with pytest.raises(NotFound, match="no-such-bucket-here"):
        store.check_writable()


def test_s3_bad_credentials_permission_denied(start_s3_server: Callable) -> None:  # type: ignore[type-arg]
    server = start_s3_server({"INITIAL_NO_AUTH_ACTION_COUNT": "0"})  # this one checks credentials
    store = open_store("s3://locked", server.settings(s3_access_key="nobody", s3_secret_key="wrong"))
    for call in (store.check_writable, lambda: store.put_bytes("k", b"x"), lambda: store.get_bytes("k")):
        with pytest.raises(PermissionDenied, match="REVIEWSTACK_S3_ACCESS_KEY"):
            call()


def test_s3_published_objects_keep_hash_and_type(s3_store: S3Store) -> None:
    """A commit moves staged objects by server-side copy: the copy keeps the sha256 record (no rehash on
    the next stat) and its content type."""
    files = {"spec.json": b'{"a": 1}', "weights.bin": os.urandom(6 << 20)}  # the second in multipart parts
    with s3_store.publish("runs/m/merged") as pub:
        for name, data in files.items():
            pub.put_bytes(name, data)
    for name, data in files.items():
        info = s3_store.client.stat_object(s3_store.bucket, f"{s3_store.prefix}/runs/m/merged/{name}")
        assert info.metadata.get("x-amz-meta-sha256") == sha(data)
        assert info.content_type == (
            "application/json" if name.endswith(".json") else "application/octet-stream"
        )
    assert staged(s3_store) == []


def test_s3_settings_errors() -> None:
    with pytest.raises(InvalidArgument, match="REVIEWSTACK_S3_ENDPOINT"):
        open_store("s3://bucket", StoreSettings(s3_endpoint=""))
    with pytest.raises(InvalidArgument, match="REVIEWSTACK_S3_ENDPOINT"):
        open_store("s3://bucket", StoreSettings(s3_endpoint="minio:9000/path"))
    secure = open_store("s3://bucket/a/b/", StoreSettings(s3_endpoint="https://minio:9000"))
    assert isinstance(secure, S3Store) and secure.secure and secure.endpoint == "minio:9000"
    assert secure.uri == "s3://bucket/a/b" and secure.uri_for("k") == "s3://bucket/a/b/k"


def test_open_store_uris(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert open_store("rel/store").uri == f"file://{tmp_path}/rel/store"
    assert open_store(f"file://{tmp_path}/s").uri == f"file://{tmp_path}/s"
    for bad in ("", "gs://bucket", "s3://Bad_Bucket", "s3://b", "file://host/x", "s3://bucket/a/../b"):
        with pytest.raises(InvalidArgument):
            open_store(bad, StoreSettings(s3_endpoint="127.0.0.1:1"))


def test_local_unwritable_root(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    store = open_store(str(tmp_path / "file" / "store"))
    with pytest.raises(FailedPrecondition, match="REVIEWSTACK_STORE"):
        store.check_writable()
    with pytest.raises(FailedPrecondition):
        store.put_bytes("k", b"x")
    if os.geteuid() != 0:  # root ignores permission bits
        (tmp_path / "ro").mkdir(mode=0o500)
        with pytest.raises(FailedPrecondition):
            open_store(str(tmp_path / "ro")).check_writable()


def test_local_corruption_detected(local_store: LocalStore) -> None:
    local_store.put_bytes("d/f.bin", b"A" * 100)
    path = local_store.root / "d" / "f.bin"
    st = path.stat()
    with open(path, "r+b") as f:  # same inode, same size, same mtime: only the content differs
        f.write(b"B")
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(FailedPrecondition, match="does not match its recorded sha256"):
        local_store.get_bytes("d/f.bin")


def test_local_layout_hides_internals(local_store: LocalStore) -> None:
    local_store.put_bytes("x/y.txt", b"y")
    assert sorted(p.name for p in local_store.root.iterdir()) == [".reviewstack", "x"]
    sidecar = json.loads((local_store.root / ".reviewstack" / "meta" / "x" / "y.txt.json").read_text())
    assert sidecar["sha256"] == sha(b"y")
    assert keys(local_store) == ["x/y.txt"] and local_store.list_dirs() == ["x"]

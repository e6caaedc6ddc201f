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


# ---- publication -----------------------------------------------------------------------------------------
def test_publication_writes_manifest_last(
    store: ArtifactStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    order: list[str] = []
    for name in ("put_bytes", "put_file", "writer"):
        spy(monkeypatch, store, name, order)
    src = tmp_path / "val.jsonl"
    src.write_bytes(b'{"v": 1}\n' * 10)
    before = datetime.now().astimezone()
    with store.publish("datasets/x/v1") as pub:
        pub.put_bytes("train.jsonl", b'{"t": 1}\n' * 50)
        pub.put_file("val.jsonl", src)
        with pub.writer("test/part-0.jsonl") as w:
            w.write(b'{"x": 1}\n')
        pub.manifest["counts"] = {"train": 50, "val": 10, "test": 1}
        assert not store.is_published("datasets/x/v1")
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


def test_publication_adopts_files_other_writers_uploaded(store: ArtifactStore) -> None:
    """Another process (a second training rank) uploads its shard itself; the publication lists it in the
    manifest, refuses it twice, and removes it on rollback."""
    with store.publish("runs/r/checkpoints/step-1") as pub:
        pub.put_bytes("rank0.pt", b"zero")
        store.put_bytes("runs/r/checkpoints/step-1/rank1.pt", b"one")  # the other rank's own upload
        ref = pub.adopt("rank1.pt")
        assert ref.sha256 == hashlib.sha256(b"one").hexdigest()
        with pytest.raises(FailedPrecondition, match="already part"):
            pub.adopt("rank1.pt")
    files = store.read_manifest("runs/r/checkpoints/step-1")["files"]
    assert files["rank1.pt"] == {"sha256": hashlib.sha256(b"one").hexdigest(), "size": 3}
    with pytest.raises(NotFound), store.publish("runs/r/checkpoints/step-2") as pub:
        pub.adopt("never-uploaded.pt")
    with pytest.raises(RuntimeError), store.publish("runs/r/checkpoints/step-3") as pub:
        store.put_bytes("runs/r/checkpoints/step-3/rank1.pt", b"one")
        pub.adopt("rank1.pt")
        raise RuntimeError("rank 0 failed")
    assert keys(store, "runs/r/checkpoints/step-3") == []


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

    deletes: list[str] = []
    for name in ("delete", "delete_prefix"):
        spy(monkeypatch, store, name, deletes, tag=f"{name}:")
    with store.publish("datasets/z/v1", overwrite=True) as pub:
        # the old version is gone, manifest first, before anything new is written
        assert deletes[0] == "delete:datasets/z/v1/manifest.json"
        assert keys(store, "datasets/z/v1") == []
        pub.put_bytes("c.jsonl", b"c")
    assert keys(store, "datasets/z/v1") == ["datasets/z/v1/c.jsonl", "datasets/z/v1/manifest.json"]
    assert set(store.read_manifest("datasets/z/v1")["files"]) == {"c.jsonl"}


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
    # the finished files are there, the half-streamed one is not, and nothing says "complete"
    assert keys(store, "datasets/killed/v1") == [f"{prefix}/{n}" for n in ("train.jsonl", "val.jsonl")]
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

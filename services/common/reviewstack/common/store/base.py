"""The artifact store interface, key rules, and manifest-last publication shared by every backend.

Backends implement a handful of primitives on already-validated keys (`_begin_write`, `_open_object`,
`_stat`, `_exists`, `_iter_keys`, `_list_dirs`, `_delete`); everything a caller touches — validation,
hashing, verification on read, publication — lives here once, so the local directory and S3 behave the
same and tests of one hold for the other.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import hashlib
import json
import os
import tempfile
import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

from reviewstack.common.artifacts import ArtifactRef
from reviewstack.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from reviewstack.common.logging import get_logger

log = get_logger(__name__)

MANIFEST_NAME = "manifest.json"
# First key segment reserved for store internals (temp files, hash sidecars, write probes). Callers can't
# use it, and listings never show it, so internals can never be mistaken for artifacts.
INTERNAL_DIR = ".reviewstack"
CHUNK_SIZE = 1 << 20
_RESERVED_MANIFEST_FIELDS = ("files", "published_at")


def check_key(key: str, *, what: str = "key") -> str:
    """Return `key` if it is a safe relative '/'-separated key, else raise InvalidArgument.

    The same key must mean the same object on a filesystem and in S3, so anything a filesystem would
    interpret (absolute paths, '..', '.', empty segments, backslashes) is refused instead of normalized.
    """
    if not isinstance(key, str) or not key:
        raise InvalidArgument(f"{what} must be a non-empty string, got {key!r}")
    if key.startswith("/"):
        raise InvalidArgument(f"{what} {key!r} is absolute; store keys are relative, e.g. 'datasets/x/v1'")
    if "\\" in key or "\x00" in key:
        raise InvalidArgument(f"{what} {key!r} contains a backslash or NUL; use '/' to separate segments")
    parts = key.split("/")
    for part in parts:
        if part in ("", ".", ".."):
            raise InvalidArgument(
                f"{what} {key!r} has an empty, '.' or '..' segment; write it as plain 'a/b/c' segments"
            )
    if parts[0] == INTERNAL_DIR:
        raise InvalidArgument(f"{what} {key!r} starts with {INTERNAL_DIR!r}, which the store reserves")
    return key


def check_prefix(prefix: str) -> str:
    """Validate a folder prefix: '' means the store root; one trailing '/' is tolerated."""
    if prefix == "":
        return ""
    if isinstance(prefix, str) and prefix.endswith("/") and len(prefix) > 1:
        prefix = prefix[:-1]
    return check_key(prefix, what="prefix")


def join_key(prefix: str, name: str) -> str:
    """`prefix/name`, or `name` at the root."""
    return f"{prefix}/{name}" if prefix else name


def is_internal(rel_key: str) -> bool:
    """Whether a key found by listing belongs to the store's own machinery."""
    return rel_key.split("/", 1)[0] == INTERNAL_DIR


def hash_stream(stream: BinaryIO) -> tuple[str, int]:
    """sha256 and size of a stream, read in chunks so big objects never sit in memory."""
    digest = hashlib.sha256()
    size = 0
    while chunk := stream.read(CHUNK_SIZE):
        digest.update(chunk)
        size += len(chunk)
    return digest.hexdigest(), size


class ObjectWriter:
    """File-like sink of a streaming write; hashes as it goes so the hash never needs a second read.

    `ref` is set once the object has been committed (clean exit of `store.writer(...)`).
    """

    def __init__(self, sink: BinaryIO) -> None:
        self._sink = sink
        self._digest = hashlib.sha256()
        self.size = 0
        self.ref: ArtifactRef | None = None

    def write(self, data: bytes | bytearray | memoryview) -> int:
        """Append bytes; returns how many were written (like a file)."""
        if self.ref is not None:
            raise ValueError("write() after the object was committed")
        view = memoryview(data).cast("B")
        self._sink.write(view)
        self._digest.update(view)
        self.size += view.nbytes
        return view.nbytes

    def writelines(self, lines: Iterator[bytes] | builtins.list[bytes]) -> None:
        for line in lines:
            self.write(line)

    def tell(self) -> int:
        return self.size

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        """Nothing to do: the object only becomes visible when the `with` block exits cleanly."""

    @property
    def sha256(self) -> str:
        return self._digest.hexdigest()


class PendingObject(abc.ABC):
    """A write in progress: bytes go to `file`; `commit` makes them the object, `abort` forgets them."""

    file: BinaryIO

    @abc.abstractmethod
    def commit(self, sha256: str, size: int) -> ArtifactRef: ...

    @abc.abstractmethod
    def abort(self) -> None: ...


class ArtifactStore(abc.ABC):
    """One interface over a local directory and an S3 bucket (see `open_store`).

    Prefixes have folder semantics: `list("a")` covers `a/...`, never `ab`. Every object carries a
    sha256 recorded at write time; reads verify it so a corrupted or foreign-modified object fails loudly
    instead of silently feeding a training run.
    """

    uri: str

    # ---- backend primitives (keys already validated) -------------------------------------------------
    @abc.abstractmethod
    def _uri(self, key: str) -> str: ...

    @abc.abstractmethod
    def _begin_write(self, key: str) -> PendingObject: ...

    @abc.abstractmethod
    def _open_object(self, key: str) -> contextlib.AbstractContextManager[tuple[BinaryIO, str | None]]:
        """Open for reading; yields (stream, sha256 recorded for exactly this content, or None)."""

    @abc.abstractmethod
    def _stat(self, key: str) -> ArtifactRef: ...

    @abc.abstractmethod
    def _exists(self, key: str) -> bool: ...

    @abc.abstractmethod
    def _iter_keys(self, prefix: str, recursive: bool) -> Iterator[str]:
        """Keys under `prefix/` (all of them, or only direct children), sorted, internals excluded."""

    @abc.abstractmethod
    def _list_dirs(self, prefix: str) -> builtins.list[str]: ...

    @abc.abstractmethod
    def _delete(self, key: str) -> None: ...

    def _delete_many(self, keys: builtins.list[str]) -> None:
        for key in keys:
            self._delete(key)

    # ---- writing --------------------------------------------------------------------------------------
    def uri_for(self, key: str) -> str:
        """Full URI of `key` (it need not exist), as recorded in manifests and ArtifactRefs."""
        return self._uri(check_key(key))

    @contextlib.contextmanager
    def writer(self, key: str) -> Iterator[ObjectWriter]:
        """Streaming write: the object appears atomically on clean exit; on exception nothing appears."""
        key = check_key(key)
        with self._writer(key) as w:
            yield w

    @contextlib.contextmanager
    def _writer(self, key: str) -> Iterator[ObjectWriter]:
        pending = self._begin_write(key)
        w = ObjectWriter(pending.file)
        try:
            yield w
            w.ref = pending.commit(w.sha256, w.size)
        except BaseException:
            pending.abort()
            raise

    def put_bytes(self, key: str, data: bytes) -> ArtifactRef:
        with self.writer(key) as w:
            w.write(data)
        assert w.ref is not None
        return w.ref

    def put_file(self, key: str, path: str | os.PathLike[str]) -> ArtifactRef:
        with open(path, "rb") as src, self.writer(key) as w:
            while chunk := src.read(CHUNK_SIZE):
                w.write(chunk)
        assert w.ref is not None
        return w.ref

    # ---- reading --------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def open(self, key: str) -> Iterator[BinaryIO]:
        """Streaming read; the stream (an S3 connection, a file) is released on exit.

        Unlike get_bytes/download this does not verify the hash: the caller consumes the bytes.
        """
        with self._open_object(check_key(key)) as (stream, _recorded):
            yield stream

    def get_bytes(self, key: str) -> bytes:
        key = check_key(key)
        with self._open_object(key) as (stream, recorded):
            data = stream.read()
        self._verify(key, recorded, hashlib.sha256(data).hexdigest())
        return data

    def download(self, key: str, path: str | os.PathLike[str]) -> ArtifactRef:
        """Copy an object to a local file, atomically (temp file + rename) and verified against its hash."""
        key = check_key(key)
        dest = Path(path)
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as exc:
            raise FailedPrecondition(f"cannot write the download target {dest}: {exc}") from exc
        try:
            with os.fdopen(fd, "wb") as out, self._open_object(key) as (stream, recorded):
                digest, size = hashlib.sha256(), 0
                while chunk := stream.read(CHUNK_SIZE):
                    out.write(chunk)
                    digest.update(chunk)
                    size += len(chunk)
                out.flush()
                os.fsync(out.fileno())
            self._verify(key, recorded, digest.hexdigest())
            os.replace(tmp, dest)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        return ArtifactRef(key=key, uri=self._uri(key), sha256=digest.hexdigest(), size=size)

    def download_dir(self, prefix: str, directory: str | os.PathLike[str]) -> list[ArtifactRef]:
        """Copy every object under `prefix/` into `directory`, keeping relative paths (a model or a
        checkpoint folder, for libraries that only read local files)."""
        prefix = check_prefix(prefix)
        refs = []
        for key in self._iter_keys(prefix, True):
            relative = key[len(prefix) + 1 :] if prefix else key
            refs.append(self.download(key, Path(directory) / relative))
        if not refs:
            raise NotFound(f"{self._uri(prefix)} holds no object")
        return refs

    def _verify(self, key: str, recorded: str | None, actual: str) -> None:
        if recorded is not None and recorded != actual:
            raise FailedPrecondition(
                f"{self._uri(key)} does not match its recorded sha256 (recorded {recorded}, read {actual}):"
                " it is corrupt or was changed outside the store; write it again"
            )

    def stat(self, key: str) -> ArtifactRef:
        """Key, URI, sha256 and size; NotFound if missing. A missing recorded hash is computed."""
        return self._stat(check_key(key))

    def exists(self, key: str) -> bool:
        return self._exists(check_key(key))

    def list(self, prefix: str = "", recursive: bool = True) -> Iterator[ArtifactRef]:
        """Objects under `prefix/` sorted by key; non-recursive yields only those directly under it."""
        return self._refs(self._iter_keys(check_prefix(prefix), recursive))  # a bad prefix raises here

    def keys(self, prefix: str = "", recursive: bool = True) -> Iterator[str]:
        """Keys under `prefix/`, sorted, without touching the objects (`list` stats each one; reading
        someone else's folder this way never writes hash records into it)."""
        return self._iter_keys(check_prefix(prefix), recursive)

    def _refs(self, keys: Iterator[str]) -> Iterator[ArtifactRef]:
        for key in keys:
            try:
                yield self._stat(key)
            except NotFound:  # deleted between listing and stat: it is simply gone
                continue

    def list_dirs(self, prefix: str = "") -> builtins.list[str]:
        """Immediate sub-folders of `prefix`, as full keys (e.g. 'datasets/x'), sorted."""
        return self._list_dirs(check_prefix(prefix))

    # ---- deleting -------------------------------------------------------------------------------------
    def delete(self, key: str) -> None:
        """Delete one object; deleting a missing key is not an error (as in S3)."""
        self._delete(check_key(key))

    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix/`; returns how many. The root ('') is refused on purpose."""
        prefix = check_prefix(prefix)
        if not prefix:
            raise InvalidArgument("delete_prefix('') would empty the whole store; name a prefix")
        keys = builtins.list(self._iter_keys(prefix, True))
        self._delete_many(keys)
        return len(keys)

    def check_writable(self) -> None:
        """Write and delete a small hidden object, so a caller fails before doing any real work."""
        key = f"{INTERNAL_DIR}/probe-{uuid.uuid4().hex}"
        with self._writer(key) as w:
            w.write(b"probe\n")
        self._delete(key)

    # ---- publication ----------------------------------------------------------------------------------
    def publish(self, prefix: str, *, overwrite: bool = False) -> Publication:
        """Start a manifest-last publication; use it as a context manager (see Publication)."""
        prefix = check_prefix(prefix)
        if not prefix:
            raise InvalidArgument("publish() needs a prefix such as 'datasets/<name>/<version>'")
        return Publication(self, prefix, overwrite=overwrite)

    def read_manifest(self, prefix: str) -> dict[str, Any]:
        prefix = check_prefix(prefix)
        try:
            data = self.get_bytes(join_key(prefix, MANIFEST_NAME))
        except NotFound:
            raise NotFound(
                f"{self._uri(prefix) if prefix else self.uri} is not published (no {MANIFEST_NAME}): it was"
                " never written or its writer did not finish; publish it again"
            ) from None
        where = self._uri(join_key(prefix, MANIFEST_NAME))
        try:
            manifest = json.loads(data)
        except ValueError as exc:
            raise FailedPrecondition(f"{where} is not JSON ({exc}); publish the prefix again") from exc
        if not isinstance(manifest, dict):
            raise FailedPrecondition(f"{where} is not a JSON object; publish the prefix again")
        return manifest

    def is_published(self, prefix: str) -> bool:
        return self._exists(join_key(check_prefix(prefix), MANIFEST_NAME))

    def list_published(self, prefix: str = "") -> builtins.list[str]:
        """Prefixes under `prefix` (any depth, `prefix` itself included) that hold a manifest.json."""
        suffix = "/" + MANIFEST_NAME
        return [k[: -len(suffix)] for k in self._iter_keys(check_prefix(prefix), True) if k.endswith(suffix)]


class Publication:
    """Write a set of objects under a prefix that becomes visible all at once, by its manifest.

    Readers treat a prefix without `manifest.json` as nonexistent, and the manifest is written last, so a
    writer that dies at any point (even SIGKILL) leaves nothing that looks complete. Leftovers of such a
    writer are removed when the prefix is next published.
    """

    def __init__(self, store: ArtifactStore, prefix: str, *, overwrite: bool = False) -> None:
        self.store = store
        self.prefix = prefix
        self.overwrite = overwrite
        self.manifest: dict[str, Any] = {}
        self.files: dict[str, ArtifactRef] = {}
        self.manifest_ref: ArtifactRef | None = None
        self._lock = threading.Lock()
        self._active = False

    @property
    def manifest_key(self) -> str:
        return join_key(self.prefix, MANIFEST_NAME)

    def __enter__(self) -> Publication:
        self._prepare()
        self._active = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._active = False
        if exc_type is None:
            try:
                self._commit()
            except BaseException:
                self._rollback()
                raise
        else:
            self._rollback()

    def _prepare(self) -> None:
        store, uri = self.store, self.store.uri_for(self.prefix)
        if store.exists(self.manifest_key):
            if not self.overwrite:
                raise AlreadyExists(
                    f"{uri} is already published; pass overwrite=True to replace it, or publish under a"
                    " new version prefix"
                )
            # The manifest goes first: from here on readers see no old version, never a mix of old and new.
            store.delete(self.manifest_key)
            removed = store.delete_prefix(self.prefix)
            log.info("publication replaced", uri=uri, removed_objects=removed)
            return
        keys = builtins.list(store._iter_keys(self.prefix, True))
        if not keys:
            return
        nested = [k for k in keys if k.endswith("/" + MANIFEST_NAME)]
        if nested and not self.overwrite:
            raise FailedPrecondition(
                f"{uri} is not published but holds published sub-prefixes ({nested[0]} ...); pass"
                " overwrite=True to delete them too, or publish under another prefix"
            )
        store._delete_many(keys)
        log.warning("removed leftovers of an unfinished publication", uri=uri, removed_objects=len(keys))

    def _key(self, name: str) -> str:
        if not self._active:
            raise FailedPrecondition("use the publication inside `with store.publish(...) as pub:`")
        name = check_key(name, what="file name")
        if name == MANIFEST_NAME:
            raise InvalidArgument(f"{MANIFEST_NAME!r} is written by the publication itself; use pub.manifest")
        return join_key(self.prefix, name)

    def _record(self, name: str, ref: ArtifactRef) -> ArtifactRef:
        with self._lock:
            self.files[name] = ref
        return ref

    def put_bytes(self, name: str, data: bytes) -> ArtifactRef:
        return self._record(name, self.store.put_bytes(self._key(name), data))

    def put_file(self, name: str, path: str | os.PathLike[str]) -> ArtifactRef:
        return self._record(name, self.store.put_file(self._key(name), path))

    def put_dir(self, directory: str | os.PathLike[str], under: str = "") -> list[ArtifactRef]:
        """Upload every file below a local directory (e.g. what `save_pretrained` wrote), keeping its
        relative paths, optionally under a sub-folder of the publication."""
        root = Path(directory)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return [
            self.put_file(
                join_key(under, p.relative_to(root).as_posix()) if under else p.relative_to(root).as_posix(),
                p,
            )
            for p in files
        ]

    def adopt(self, name: str) -> ArtifactRef:
        """Record a file that another process uploaded under this prefix (another rank's checkpoint
        shard, say), so that the manifest lists it and a rollback removes it."""
        key = self._key(name)
        with self._lock:
            if name in self.files:
                raise FailedPrecondition(f"{self.store.uri_for(key)} is already part of this publication")
        return self._record(name, self.store.stat(key))

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[ObjectWriter]:
        with self.store.writer(self._key(name)) as w:
            yield w
        assert w.ref is not None
        self._record(name, w.ref)

    def _commit(self) -> None:
        clash = [f for f in _RESERVED_MANIFEST_FIELDS if f in self.manifest]
        if clash:
            raise InvalidArgument(f"manifest fields {clash} are filled in by the publication; rename yours")
        with self._lock:
            files = {n: {"sha256": r.sha256, "size": r.size} for n, r in sorted(self.files.items())}
        doc = {**self.manifest, "files": files, "published_at": datetime.now(UTC).isoformat()}
        try:
            data = json.dumps(doc, indent=2, ensure_ascii=False).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            where = self.store.uri_for(self.prefix)
            raise InvalidArgument(f"the manifest of {where} holds a value JSON cannot store: {exc}") from exc
        self.manifest_ref = self.store.put_bytes(self.manifest_key, data)

    def _rollback(self) -> None:
        with self._lock:
            keys = [join_key(self.prefix, n) for n in self.files]
            self.files.clear()
        try:
            self.store._delete_many(keys)
        except Exception as exc:  # never hide the error that made us roll back
            log.warning("rollback left objects behind", uri=self.store.uri_for(self.prefix), error=str(exc))

"""The artifact store interface, key rules, and manifest-last publication shared by every backend.

Backends implement a handful of primitives on already-validated keys (`_begin_write`, `_open_object`,
`_stat`, `_exists`, `_iter_keys`, `_list_dirs`, `_delete`, `_put_exclusive`, `_move`, `_iter_internal`,
`_try_claim`); everything a caller touches — validation, hashing, verification on read, publication —
lives here once, so the local directory and S3 behave the same and tests of one hold for the other.

Publication protocol (`store.publish(prefix)`), safe with any number of writers of one prefix:

1. Each publication has a random writer id and writes its files into its own staging area,
   `.reviewstack/staging/<writer>/<name>` (internal: never listed, refused as a user key). Nothing
   under `prefix/` changes while it writes. Other processes (training ranks) write into the same area
   through `store.join_publication(prefix, writer_id)`; the owner `adopt`s their files by name.
2. At commit it takes the prefix's claim `.reviewstack/claims/<sha256(prefix)>`: on a directory an
   exclusive `flock` on that file, which the kernel drops when the holder dies; on S3 an object created
   with `If-None-Match: *`, which the holder refreshes (`If-Match` on its ETag) every `claim_ttl_s / 4`
   and which another writer may take over (`If-Match` on the stale ETag, so only one can) once the
   server's clock says it is older than `claim_ttl_s`. A writer that finds the claim held waits, up to
   `wait_s` (then Unavailable).
3. Holding the claim, it reads the manifest. Present and not `overwrite`: identical files (names and
   sha256) mean this very version is published already (by a writer racing this one, or before it),
   which is kept (`pub.reused`); anything else is AlreadyExists. With `overwrite` the old manifest is
   deleted first, then the old objects. Whatever else is under the prefix without a manifest is a dead
   writer's and is deleted. Then each staged object is moved into place (rename of file and hash
   record; S3 server-side copy keeping its sha256, then delete), the manifest is created with an
   exclusive write, the claim is released and the staging area deleted.
4. Staging areas with nothing written for `staging_ttl_s` belong to dead writers; any publication that
   starts collects them.

A writer that dies (SIGKILL, lost node) at any point leaves no manifest listing a missing or foreign file:
- while writing (step 1) or waiting (2): only its staging area, collected later;
- holding the claim, before its first move or delete: nothing under the prefix changed; the claim is
  free at once (directory) or after `claim_ttl_s` (S3);
- after deleting an old manifest (`overwrite`), or during the moves: the prefix is unpublished and holds
  strays, which the next holder deletes before moving its own files in;
- after its manifest: the version is published and complete; a stale claim and staging remain and are
  dealt with as above.
A holder cut off from S3 for longer than the TTL cannot know whether its claim was taken over: it stops
(Unavailable) before moving anything else once its last refresh is older than half the TTL, and its
manifest is an exclusive create, so of two writers that both believed they held the claim only one
publishes.
"""

from __future__ import annotations

import abc
import builtins
import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import threading
import time
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
    ReviewStackError,
    Unavailable,
)
from reviewstack.common.logging import get_logger

log = get_logger(__name__)

MANIFEST_NAME = "manifest.json"
# First key segment reserved for store internals (temp files, hash sidecars, write probes). Callers can't
# use it, and listings never show it, so internals can never be mistaken for artifacts.
INTERNAL_DIR = ".reviewstack"
STAGING_DIR = f"{INTERNAL_DIR}/staging"  # <writer id>/<file name>: files of publications not yet committed
CLAIMS_DIR = f"{INTERNAL_DIR}/claims"  # one per prefix being (or once) committed
_WRITER_ID = re.compile(r"[0-9a-f]{32}")
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
    # The publication protocol's timing (module docstring); backends take them as constructor arguments.
    claim_ttl_s: float = 120.0  # S3: a claim not refreshed for this long belongs to a dead writer
    claim_wait_s: float = 600.0  # how long a commit waits while another writer commits the same prefix
    staging_ttl_s: float = 24 * 3600.0  # a staging area not written for this long belongs to a dead writer
    _gc_due: float = 0.0

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

    @abc.abstractmethod
    def _put_exclusive(self, key: str, data: bytes) -> ArtifactRef:
        """Create `key` holding `data` only if no object is there, atomically; else raise AlreadyExists."""

    @abc.abstractmethod
    def _move(self, src: str, dest: str, ref: ArtifactRef) -> ArtifactRef:
        """Put the object at `src` (whose hash and size `ref` gives) at `dest`, replacing what is there,
        keep its recorded hash, and remove `src`; NotFound if `src` is gone."""

    @abc.abstractmethod
    def _iter_internal(self, prefix: str) -> Iterator[tuple[str, float]]:
        """(key, modification time as epoch seconds) of every object under an internal `prefix/`."""

    @abc.abstractmethod
    def _try_claim(self, prefix: str, holder: dict[str, Any]) -> PrefixClaim | None:
        """Take the exclusive claim on `prefix` for `holder` (its `writer` id is unique), breaking a stale
        one where the backend needs that; None while another live writer holds it."""

    @abc.abstractmethod
    def _claim_holder(self, prefix: str) -> dict[str, Any] | None:
        """Who holds (or last held) the claim on `prefix`, for messages; None if unknown."""

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

    def put_bytes(self, key: str, data: bytes, *, exclusive: bool = False) -> ArtifactRef:
        """Write a whole object from memory; it replaces what was at `key`.

        `exclusive=True` creates it only if nothing is at `key` yet, as one atomic step of the backend
        (no check-then-write window): of several writers racing for one key exactly one succeeds and the
        others get AlreadyExists. Records that must never be silently replaced (a run's spec, a
        manifest) are written this way. On S3 a request resent after its reply was lost can find its own
        first attempt there: where that matters, compare what is stored with what was sent.
        """
        key = check_key(key)
        if exclusive:
            return self._put_exclusive(key, bytes(data))
        return self._put_bytes(key, data)

    def put_file(self, key: str, path: str | os.PathLike[str]) -> ArtifactRef:
        return self._put_file(check_key(key), path)

    def _put_bytes(self, key: str, data: bytes) -> ArtifactRef:
        with self._writer(key) as w:
            w.write(data)
        assert w.ref is not None
        return w.ref

    def _put_file(self, key: str, path: str | os.PathLike[str]) -> ArtifactRef:
        with open(path, "rb") as src, self._writer(key) as w:
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
    def publish(self, prefix: str, *, overwrite: bool = False, wait_s: float | None = None) -> Publication:
        """Start a manifest-last publication; use it as a context manager (see Publication).

        `wait_s` bounds how long its commit waits while another writer commits the same prefix (default
        `claim_wait_s`); past it the commit fails with Unavailable and publishes nothing.
        """
        prefix = check_prefix(prefix)
        if not prefix:
            raise InvalidArgument("publish() needs a prefix such as 'datasets/<name>/<version>'")
        wait = self.claim_wait_s if wait_s is None else wait_s
        return Publication(self, prefix, overwrite=overwrite, wait_s=wait)

    def join_publication(self, prefix: str, writer_id: str) -> PublicationParticipant:
        """Write into another process's open publication of `prefix`, named by its `writer_id` (the other
        ranks of a sharded checkpoint): the files become part of it when its owner `adopt`s them."""
        prefix = check_prefix(prefix)
        if not prefix:
            raise InvalidArgument("join_publication() needs the prefix the owner publishes")
        return PublicationParticipant(self, prefix, writer_id)

    def _collect_garbage(self) -> None:
        """Delete the staging areas of writers that died: nothing written to them for `staging_ttl_s`.

        Best effort, and at most once a minute per store object: failing only leaves garbage behind.
        """
        now = time.monotonic()
        if now < self._gc_due:
            return
        self._gc_due = now + min(60.0, self.staging_ttl_s / 4)
        try:
            newest: dict[str, float] = {}
            by_writer: dict[str, builtins.list[str]] = {}
            for key, mtime in self._iter_internal(STAGING_DIR):
                writer = key.split("/")[2]
                newest[writer] = max(newest.get(writer, 0.0), mtime)
                by_writer.setdefault(writer, []).append(key)
            cutoff = time.time() - self.staging_ttl_s
            dead = [w for w, t in newest.items() if t < cutoff]
            self._delete_many([k for w in dead for k in by_writer[w]])
        except (ReviewStackError, OSError) as exc:
            log.warning("staging areas of dead writers not collected", store=self.uri, error=str(exc))
            return
        if dead:
            log.info("collected staging areas of dead writers", store=self.uri, writers=len(dead))

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


def claim_key(prefix: str) -> str:
    """The internal key of the claim on `prefix`: a hash, so that claims of nested prefixes never nest."""
    return f"{CLAIMS_DIR}/{hashlib.sha256(prefix.encode()).hexdigest()[:40]}"


def describe_holder(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "writer unknown"
    return (
        f"writer {holder.get('writer', '?')}, pid {holder.get('pid', '?')} on {holder.get('host', '?')},"
        f" since {holder.get('since', '?')}"
    )


class PrefixClaim(abc.ABC):
    """The exclusive right to change one published prefix, held by one writer at a time."""

    @abc.abstractmethod
    def check(self) -> None:
        """Raise if the claim can no longer be relied on: nothing more may then be moved into place."""

    @abc.abstractmethod
    def release(self) -> None:
        """Give the claim up; best effort (a claim left behind only delays the next writer)."""


class _StagedWriter:
    """Writes files of a publication into its writer's staging area (shared by owner and participants)."""

    def __init__(self, store: ArtifactStore, prefix: str, writer_id: str) -> None:
        if not _WRITER_ID.fullmatch(writer_id):
            raise InvalidArgument(f"{writer_id!r} is not a publication's writer_id (32 hex digits)")
        self.store = store
        self.prefix = prefix
        self.writer_id = writer_id
        self.staging = f"{STAGING_DIR}/{writer_id}"

    def _staged(self, name: str) -> str:
        name = check_key(name, what="file name")
        if name == MANIFEST_NAME:
            raise InvalidArgument(f"{MANIFEST_NAME!r} is written by the publication itself; use pub.manifest")
        return f"{self.staging}/{name}"

    def _written(self, name: str, ref: ArtifactRef) -> ArtifactRef:
        """The ref a caller gets: the key and URI the file will have once published."""
        key = join_key(self.prefix, name)
        return ArtifactRef(key=key, uri=self.store._uri(key), sha256=ref.sha256, size=ref.size)

    def put_bytes(self, name: str, data: bytes) -> ArtifactRef:
        return self._written(name, self.store._put_bytes(self._staged(name), data))

    def put_file(self, name: str, path: str | os.PathLike[str]) -> ArtifactRef:
        return self._written(name, self.store._put_file(self._staged(name), path))

    def put_dir(self, directory: str | os.PathLike[str], under: str = "") -> list[ArtifactRef]:
        """Upload every file below a local directory (e.g. what `save_pretrained` wrote), keeping its
        relative paths, optionally under a sub-folder of the publication."""
        root = Path(directory)
        files = sorted(p for p in root.rglob("*") if p.is_file())
        return [self.put_file(join_key(under, p.relative_to(root).as_posix()), p) for p in files]

    @contextlib.contextmanager
    def writer(self, name: str) -> Iterator[ObjectWriter]:
        with self.store._writer(self._staged(name)) as w:
            yield w
        assert w.ref is not None
        w.ref = self._written(name, w.ref)


class PublicationParticipant(_StagedWriter):
    """Another process's share of an open publication (`store.join_publication(prefix, pub.writer_id)`).

    What it writes lands in the owner's staging area, invisible to readers, and becomes part of the
    publication only when the owner `adopt`s it by name; the owner's commit or rollback disposes of it.
    """


class Publication(_StagedWriter):
    """Write a set of objects under a prefix that becomes visible all at once, by its manifest.

    Files go to this writer's own staging area; the commit moves them into place under an exclusive
    claim on the prefix and writes the manifest last (see the module docstring for the protocol and
    what a crash at each point leaves). After a clean exit `manifest_ref` is the published manifest;
    `reused` is True when another writer had published the identical files first and those were kept.
    """

    def __init__(self, store: ArtifactStore, prefix: str, *, overwrite: bool = False, wait_s: float) -> None:
        super().__init__(store, prefix, uuid.uuid4().hex)
        self.overwrite = overwrite
        self.wait_s = wait_s
        self.manifest: dict[str, Any] = {}
        self.files: dict[str, ArtifactRef] = {}
        self.manifest_ref: ArtifactRef | None = None
        self.reused = False
        self._placed: builtins.list[str] = []
        self._lock = threading.Lock()
        self._active = False

    @property
    def uri(self) -> str:
        return self.store._uri(self.prefix)

    @property
    def manifest_key(self) -> str:
        return join_key(self.prefix, MANIFEST_NAME)

    def __enter__(self) -> Publication:
        self.store._collect_garbage()
        self._precheck()
        self._active = True
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._active = False
        try:
            if exc_type is None:
                self._commit()
        except BaseException:
            with self._lock:
                self.files.clear()
            raise
        finally:
            self._drop_staging()

    def _precheck(self) -> None:
        """Fail before any work for what the commit would refuse anyway (it checks again, under the
        claim). A prefix already published is no reason to stop: the same files are fine to publish
        again (the existing version is kept), and other files are refused at commit."""
        if not self.overwrite and not self.store._exists(self.manifest_key):
            self._refuse_nested(builtins.list(self.store._iter_keys(self.prefix, True)))

    def _refuse_nested(self, keys: builtins.list[str]) -> None:
        nested = [k for k in keys if k.endswith("/" + MANIFEST_NAME)]
        if nested:
            raise FailedPrecondition(
                f"{self.uri} is not published but holds published sub-prefixes ({nested[0]} ...); pass"
                " overwrite=True to delete them too, or publish under another prefix"
            )

    def _staged(self, name: str) -> str:
        if not self._active:
            raise FailedPrecondition("use the publication inside `with store.publish(...) as pub:`")
        return super()._staged(name)

    def _written(self, name: str, ref: ArtifactRef) -> ArtifactRef:
        ref = super()._written(name, ref)
        with self._lock:
            self.files[name] = ref
        return ref

    def adopt(self, name: str) -> ArtifactRef:
        """Make a file that a participant (`store.join_publication(prefix, pub.writer_id)`, say another
        training rank) wrote part of this publication; a name is adopted or written only once."""
        staged = self._staged(name)
        try:
            ref = self.store._stat(staged)
        except NotFound:
            raise NotFound(
                f"{name!r} was never written into the publication of {self.uri} (writer {self.writer_id});"
                " a participant writes it through store.join_publication(prefix, writer_id) before the"
                " owner adopts it"
            ) from None
        ref = super()._written(name, ref)
        with self._lock:
            if name in self.files:
                raise FailedPrecondition(f"{ref.uri} is already part of this publication")
            self.files[name] = ref
        return ref

    # ---- commit ---------------------------------------------------------------------------------------
    def _manifest_bytes(self) -> bytes:
        clash = [f for f in _RESERVED_MANIFEST_FIELDS if f in self.manifest]
        if clash:
            raise InvalidArgument(f"manifest fields {clash} are filled in by the publication; rename yours")
        with self._lock:
            files = {n: {"sha256": r.sha256, "size": r.size} for n, r in sorted(self.files.items())}
        doc = {**self.manifest, "files": files, "published_at": datetime.now(UTC).isoformat()}
        try:
            return json.dumps(doc, indent=2, ensure_ascii=False).encode() + b"\n"
        except (TypeError, ValueError) as exc:
            raise InvalidArgument(
                f"the manifest of {self.uri} holds a value JSON cannot store: {exc}"
            ) from exc

    def _commit(self) -> None:
        data = self._manifest_bytes()  # a bad manifest fails before anything is claimed or moved
        claim = self._acquire()
        try:
            self._commit_claimed(claim, data)
        except BaseException:
            self._remove_placed()
            raise
        finally:
            claim.release()

    def _acquire(self) -> PrefixClaim:
        """Take the prefix's claim, waiting (up to `wait_s`) while another live writer holds it."""
        holder = {
            "writer": self.writer_id,
            "prefix": self.prefix,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        deadline, delay = time.monotonic() + self.wait_s, 0.02
        while (claim := self.store._try_claim(self.prefix, holder)) is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise Unavailable(
                    f"{self.uri} is being published by another writer"
                    f" ({describe_holder(self.store._claim_holder(self.prefix))}) that did not finish within"
                    f" {self.wait_s:g} s; nothing of this writer's was published: retry later, or publish"
                    " under another version"
                )
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 0.5)
        return claim

    def _commit_claimed(self, claim: PrefixClaim, data: bytes) -> None:
        existing = self._existing_manifest()
        if existing is not None and not self.overwrite:
            self._take_existing(existing)
            return
        if existing is not None:  # the manifest goes first: readers never see a mix of old and new
            self.store._delete(self.manifest_key)
        strays = builtins.list(self.store._iter_keys(self.prefix, True))
        if existing is None and not self.overwrite:
            self._refuse_nested(strays)
        strays.sort(key=lambda k: not k.endswith("/" + MANIFEST_NAME))  # nested manifests first, too
        self.store._delete_many(strays)
        if strays and existing is None:
            log.warning("removed leftovers of an unfinished publication", uri=self.uri, removed=len(strays))
        with self._lock:
            files = dict(self.files)
        for name, ref in sorted(files.items()):
            claim.check()
            self._place(name, ref)
        claim.check()
        self._write_manifest(data)

    def _existing_manifest(self) -> dict[str, Any] | None:
        try:
            return self.store.read_manifest(self.prefix)
        except NotFound:
            return None
        except FailedPrecondition:  # unreadable (not JSON, hash mismatch): a leftover like any other
            return None

    def _take_existing(self, existing: dict[str, Any]) -> None:
        """Another writer published first: keep its version if it holds exactly our files, else refuse."""
        listed = existing.get("files")
        theirs = {
            n: (e.get("sha256"), e.get("size", 0)) if isinstance(e, dict) else (None, 0)
            for n, e in (listed.items() if isinstance(listed, dict) else [])
        }
        with self._lock:
            ours = {n: r.sha256 for n, r in self.files.items()}
        if {n: sha for n, (sha, _) in theirs.items()} != ours:
            differ = sorted(set(theirs) ^ set(ours)) or sorted(n for n in ours if theirs[n][0] != ours[n])
            raise AlreadyExists(
                f"{self.uri} is already published, with other files ({len(differ)} differ, e.g."
                f" {differ[0]!r}); nothing of this writer's was published: pass overwrite=True to replace"
                " it, or publish under a new version prefix"
            )
        self.reused = True
        self.manifest_ref = self.store._stat(self.manifest_key)
        with self._lock:
            self.files = {n: self._final(n, sha, size) for n, (sha, size) in theirs.items()}
        log.info("an identical publication by another writer was already there; keeping it", uri=self.uri)

    def _final(self, name: str, sha256: str, size: int) -> ArtifactRef:
        key = join_key(self.prefix, name)
        return ArtifactRef(key=key, uri=self.store._uri(key), sha256=sha256, size=size)

    def _place(self, name: str, ref: ArtifactRef) -> None:
        final = join_key(self.prefix, name)
        try:
            self.store._move(f"{self.staging}/{name}", final, ref)
        except NotFound:
            raise FailedPrecondition(
                f"the staged copy of {name!r} for {self.uri} is gone (a staging area left idle for"
                f" {self.store.staging_ttl_s:g} s is collected as garbage); nothing was published: publish"
                " again"
            ) from None
        self._placed.append(final)

    def _write_manifest(self, data: bytes) -> None:
        try:
            self.manifest_ref = self.store.put_bytes(self.manifest_key, data, exclusive=True)
        except AlreadyExists:
            if self.store.get_bytes(self.manifest_key) == data:  # our own write, answered after a retry
                self.manifest_ref = self.store._stat(self.manifest_key)
                return
            raise FailedPrecondition(
                f"another writer published {self.uri} while this one held the claim on it: the claim outlived"
                f" its {self.store.claim_ttl_s:g} s TTL because this process stalled or lost the store; read"
                " what was published, or publish under another version"
            ) from None

    def _remove_placed(self) -> None:
        """After a failed commit, take back what was moved into place (invisible without a manifest)."""
        try:
            self.store._delete_many(self._placed)
        except Exception as exc:  # never hide the error that failed the commit; the next writer cleans up
            log.warning("a failed commit left objects behind", uri=self.uri, error=str(exc))

    def _drop_staging(self) -> None:
        try:
            self.store._delete_many([k for k, _ in self.store._iter_internal(self.staging)])
        except Exception as exc:  # garbage only: collected once it is older than staging_ttl_s
            log.warning("staging area left behind", uri=self.uri, writer=self.writer_id, error=str(exc))

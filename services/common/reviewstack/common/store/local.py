"""The embedded backend: a plain directory, laid out exactly like the bucket (key = relative path).

Writes go to a temp file under `<root>/.reviewstack/tmp` (same filesystem, so `os.replace` is atomic),
are fsynced, then renamed into place: a reader sees the old object or the new one, never half of one.
Hashes live in sidecars `<root>/.reviewstack/meta/<key>.json` stamped with the inode, size and mtime of
the file they describe; a sidecar that does not match (file replaced by another tool, crash between
rename and sidecar) is ignored and the hash recomputed, so a stale sidecar can never lie.
Publications stage their files in `<root>/.reviewstack/staging/<writer>/` and commit under an `flock` on
`<root>/.reviewstack/claims/<hash of the prefix>` (see base.py).
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import fcntl
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import quote

from reviewstack.common.artifacts import ArtifactRef
from reviewstack.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from reviewstack.common.logging import get_logger
from reviewstack.common.store.base import (
    INTERNAL_DIR,
    ArtifactStore,
    PendingObject,
    PrefixClaim,
    check_key,
    claim_key,
    hash_stream,
)

log = get_logger(__name__)
_REPLACE_ATTEMPTS = 5  # a concurrent delete may prune the parent folder between mkdir and rename


class _LocalPending(PendingObject):
    def __init__(self, store: LocalStore, key: str) -> None:
        self._store, self._key = store, key
        tmp_dir = store._tmp_dir()
        try:
            fd, self._tmp = tempfile.mkstemp(prefix="w-", dir=tmp_dir)
        except OSError as exc:
            raise store._unwritable(exc, tmp_dir) from exc
        self.file = os.fdopen(fd, "wb")

    def commit(self, sha256: str, size: int) -> ArtifactRef:
        store, key = self._store, self._key
        try:
            self.file.flush()
            os.fsync(self.file.fileno())
            os.fchmod(self.file.fileno(), 0o644)  # mkstemp makes 0600; artifacts are ordinary files
            st = os.fstat(self.file.fileno())
            self.file.close()
            store._replace_into(self._tmp, store._path(key), key)
        except BaseException:
            self.abort()
            raise
        store._write_sidecar(key, sha256, st)
        return ArtifactRef(key=key, uri=store._uri(key), sha256=sha256, size=size)

    def abort(self) -> None:
        self.file.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._tmp)


class _LocalClaim(PrefixClaim):
    """An exclusive `flock` on the prefix's claim file: the kernel drops it when the holder's process
    dies, however it dies, so a dead writer never blocks the next one and no TTL is needed."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def check(self) -> None:
        if self._fd is None:
            raise FailedPrecondition("the claim was already released")

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the only descriptor of the open file drops the lock
            self._fd = None


class LocalStore(ArtifactStore):
    """Artifacts in a local directory (created on first write)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        claim_wait_s: float = ArtifactStore.claim_wait_s,
        staging_ttl_s: float = ArtifactStore.staging_ttl_s,
    ) -> None:
        self.claim_wait_s, self.staging_ttl_s = claim_wait_s, staging_ttl_s
        self.root = Path(os.path.abspath(os.path.expanduser(root)))
        self.uri = "file://" + quote(str(self.root))
        self._internal = self.root / INTERNAL_DIR

    def _uri(self, key: str) -> str:
        return f"{self.uri}/{quote(key)}"

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*key.split("/"))

    def _sidecar(self, key: str) -> Path:
        path = self._internal.joinpath("meta", *key.split("/"))
        return path.with_name(path.name + ".json")

    def _unwritable(self, exc: OSError, what: Path) -> FailedPrecondition:
        return FailedPrecondition(
            f"cannot write {what} in the artifact store {self.uri}: {exc.strerror or exc}; make the directory"
            " writable or point REVIEWSTACK_STORE at another location"
        )

    def _tmp_dir(self) -> Path:
        tmp = self._internal / "tmp"
        try:
            tmp.mkdir(parents=True, exist_ok=True)
            if not os.access(tmp, os.W_OK | os.X_OK):
                raise PermissionError(errno.EACCES, "permission denied", str(tmp))
        except OSError as exc:
            raise self._unwritable(exc, tmp) from exc
        return tmp

    def _replace_into(self, src: str, dest: Path, key: str, *, exclusive: bool = False) -> None:
        """Rename `src` over `dest`, or with `exclusive` hard-link it there, which fails if anything is
        at `dest` (the kernel checks and creates in one step: two racing writers cannot both win)."""
        for attempt in range(_REPLACE_ATTEMPTS):
            try:
                dest.parent.mkdir(parents=True, exist_ok=True)
                if exclusive:
                    os.link(src, dest)
                else:
                    os.replace(src, dest)
                return
            except FileExistsError as exc:
                if exclusive and exc.filename2 is not None and not dest.is_dir():  # from link: dest exists
                    raise AlreadyExists(
                        f"{self._uri(key)} already exists: another writer created it first; read it, or"
                        " write under another key"
                    ) from None
                raise _not_a_folder(key, exc) from exc
            except NotADirectoryError as exc:
                raise _not_a_folder(key, exc) from exc
            except IsADirectoryError as exc:
                raise _not_a_folder(key, exc) from exc
            except FileNotFoundError:  # a concurrent delete pruned a parent between mkdir and rename
                if attempt == _REPLACE_ATTEMPTS - 1:
                    raise
            except OSError as exc:
                raise self._unwritable(exc, dest) from exc

    def _write_sidecar(self, key: str, sha256: str, st: os.stat_result) -> None:
        """Best effort: without a sidecar the hash is recomputed on stat, so a failure only costs time."""
        record = {"sha256": sha256, "size": st.st_size, "ino": st.st_ino, "mtime_ns": st.st_mtime_ns}
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix="m-", dir=self._tmp_dir())
            with os.fdopen(fd, "w") as f:
                json.dump(record, f)
            self._replace_into(tmp, self._sidecar(key), key)
        except Exception as exc:
            log.debug("hash sidecar not written", key=key, error=str(exc))
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)

    def _recorded_hash(self, key: str, st: os.stat_result) -> str | None:
        try:
            record = json.loads(self._sidecar(key).read_text())
            if (record["size"], record["ino"], record["mtime_ns"]) == (st.st_size, st.st_ino, st.st_mtime_ns):
                return str(record["sha256"])
        except (OSError, ValueError, KeyError, TypeError):
            pass
        return None

    def _begin_write(self, key: str) -> PendingObject:
        return _LocalPending(self, key)

    def _put_exclusive(self, key: str, data: bytes) -> ArtifactRef:
        """Write a complete temp file, then hard-link it into place: readers never see a partial object,
        and `link` refuses an existing name atomically (unlike a check followed by a rename)."""
        tmp_dir = self._tmp_dir()
        try:
            fd, tmp = tempfile.mkstemp(prefix="x-", dir=tmp_dir)
        except OSError as exc:
            raise self._unwritable(exc, tmp_dir) from exc
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
                os.fchmod(f.fileno(), 0o644)
                st = os.fstat(f.fileno())
            self._replace_into(tmp, self._path(key), key, exclusive=True)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        sha256 = hashlib.sha256(data).hexdigest()
        self._write_sidecar(key, sha256, st)
        return ArtifactRef(key=key, uri=self._uri(key), sha256=sha256, size=len(data))

    @contextlib.contextmanager
    def _open_object(self, key: str) -> Iterator[tuple[BinaryIO, str | None]]:
        try:
            f = open(self._path(key), "rb")  # noqa: SIM115 - closed below, after the caller is done
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            raise NotFound(f"{self._uri(key)} does not exist") from None
        except PermissionError as exc:
            raise PermissionDenied(f"cannot read {self._uri(key)}: {exc.strerror}") from exc
        with f:
            yield f, self._recorded_hash(key, os.fstat(f.fileno()))

    def _stat(self, key: str) -> ArtifactRef:
        with self._open_object(key) as (f, recorded):
            st = os.fstat(f.fileno())
            if recorded is None:  # written by something else: hash this very inode, cache it for next time
                recorded, _ = hash_stream(f)
                self._write_sidecar(key, recorded, st)
        return ArtifactRef(key=key, uri=self._uri(key), sha256=recorded, size=st.st_size)

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _walk_keys(self, base: Path, rel: str) -> Iterator[str]:
        for dirpath, dirnames, filenames in os.walk(base):
            if Path(dirpath) == self.root and INTERNAL_DIR in dirnames:
                dirnames.remove(INTERNAL_DIR)
            sub = os.path.relpath(dirpath, base).replace(os.sep, "/")
            for name in filenames:
                key = "/".join(p for p in (rel, "" if sub == "." else sub, name) if p)
                if os.path.isfile(os.path.join(dirpath, name)) and _valid(key):
                    yield key

    def _iter_keys(self, prefix: str, recursive: bool) -> Iterator[str]:
        base = self._path(prefix) if prefix else self.root
        if recursive:
            yield from sorted(self._walk_keys(base, prefix))
            return
        try:
            entries = builtins.list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return
        keys = [f"{prefix}/{e.name}" if prefix else e.name for e in entries if e.is_file()]
        yield from sorted(k for k in keys if _valid(k))

    def _list_dirs(self, prefix: str) -> builtins.list[str]:
        base = self._path(prefix) if prefix else self.root
        try:
            entries = builtins.list(os.scandir(base))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for e in entries:
            key = f"{prefix}/{e.name}" if prefix else e.name
            # a folder that holds no object (left behind by another tool) is not a folder in S3 either
            if e.is_dir() and _valid(key) and next(self._walk_keys(Path(e.path), key), None) is not None:
                found.append(key)
        return sorted(found)

    def _move(self, src: str, dest: str, ref: ArtifactRef) -> ArtifactRef:
        """Rename the file, then its hash record: a rename keeps the inode, size and mtime the record is
        stamped with, so it stays valid (and without it the hash is only recomputed)."""
        src_path = self._path(src)
        if not src_path.is_file():
            raise NotFound(f"{self._uri(src)} does not exist")
        try:
            self._replace_into(str(src_path), self._path(dest), dest)
        except FileNotFoundError:
            raise NotFound(f"{self._uri(src)} does not exist") from None
        with contextlib.suppress(OSError):
            sidecar = self._sidecar(dest)
            sidecar.parent.mkdir(parents=True, exist_ok=True)
            os.replace(self._sidecar(src), sidecar)
        self._prune(src_path.parent, self.root)
        self._prune(self._sidecar(src).parent, self._internal / "meta")
        return ArtifactRef(key=dest, uri=self._uri(dest), sha256=ref.sha256, size=ref.size)

    def _iter_internal(self, prefix: str) -> Iterator[tuple[str, float]]:
        for dirpath, _dirnames, filenames in os.walk(self._path(prefix)):
            for name in filenames:
                path = os.path.join(dirpath, name)
                with contextlib.suppress(FileNotFoundError):
                    yield os.path.relpath(path, self.root).replace(os.sep, "/"), os.lstat(path).st_mtime

    def _claim_path(self, prefix: str) -> Path:
        return self._path(claim_key(prefix))

    def _try_claim(self, prefix: str, holder: dict[str, Any]) -> PrefixClaim | None:
        """Lock files are never deleted: a writer blocked on a deleted file's lock would hold a lock that
        nobody else sees."""
        path = self._claim_path(prefix)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise self._unwritable(exc, path) from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        except OSError as exc:
            os.close(fd)
            raise FailedPrecondition(
                f"cannot lock {path} in the artifact store {self.uri}: {exc.strerror or exc}; the store's"
                " filesystem must support flock (a local disk, or NFSv4): point REVIEWSTACK_STORE there"
            ) from exc
        claim = _LocalClaim(fd)
        try:  # who holds it, for the message of a writer that gives up waiting
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
        except OSError as exc:
            claim.release()
            raise self._unwritable(exc, path) from exc
        return claim

    def _claim_holder(self, prefix: str) -> dict[str, Any] | None:
        try:
            holder = json.loads(self._claim_path(prefix).read_bytes())
        except (OSError, ValueError):
            return None
        return holder if isinstance(holder, dict) else None

    def _delete(self, key: str) -> None:
        path = self._path(key)
        try:
            os.unlink(path)
        except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
            pass
        except OSError as exc:
            raise self._unwritable(exc, path) from exc
        with contextlib.suppress(OSError):
            os.unlink(self._sidecar(key))
        self._prune(path.parent, self.root)
        self._prune(self._sidecar(key).parent, self._internal / "meta")

    @staticmethod
    def _prune(folder: Path, stop: Path) -> None:
        """Remove now-empty parent folders so a deleted prefix no longer shows up in list_dirs."""
        while folder != stop and stop in folder.parents:
            try:
                folder.rmdir()
            except OSError:
                return
            folder = folder.parent


def _not_a_folder(key: str, exc: OSError) -> InvalidArgument:
    if isinstance(exc, IsADirectoryError) or (exc.filename2 is not None and Path(exc.filename2).is_dir()):
        return InvalidArgument(f"cannot write {key!r}: it is a folder holding other objects")
    where = exc.filename
    return InvalidArgument(f"cannot write {key!r}: a parent of it is an object, not a folder ({where})")


def _valid(key: str) -> bool:
    """Files with names no key can have (created by other tools) are skipped rather than crash listings."""
    try:
        check_key(key)
    except InvalidArgument:
        return False
    return True

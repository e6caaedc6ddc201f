"""Where a request may point a server: inside the store its operator configured, nowhere else.

A server holds credentials (the S3 keys, the pod's filesystem) that its callers do not. A request field
that names a location (a dataset folder, an output, a system's reviews, a paper artifact) is therefore
resolved against the configured store — plus read-only roots the operator listed for raw inputs — and
refused with PERMISSION_DENIED when it names anything else: another bucket, a path elsewhere on the
server, a symlink that leads out. The CLI without `--server` never goes through here: a person on their
own machine may point it anywhere.

    scope = StoreScope(open_store(settings.store, settings))
    key = scope.key("datasets/x/v1", what="dataset")               # 'datasets/x/v1'
    uri = scope.location("s3://bucket/store/reviews/a", what="system")   # a URI inside the store

A reference is a key of the store (`datasets/x/v1`), or a URI / path that lies inside it (`s3://bucket/
prefix/datasets/x/v1`, `file:///srv/store/...`, `/srv/store/...`, `./store/...`). A plain relative
reference is always a key: the server's working directory means nothing to a caller.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import unquote, urlsplit

from reviewstack.common.errors import InvalidArgument, PermissionDenied
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store import open_store
from reviewstack.common.store.base import ArtifactStore, check_prefix
from reviewstack.common.store.local import LocalStore

_PATH_STARTS = ("/", "./", "../", "~")


def _is_path(ref: str) -> bool:
    return ref in (".", "..") or ref.startswith(_PATH_STARTS)


class StoreScope:
    """The store a server writes and reads, and the extra read-only roots it may read raw inputs from."""

    def __init__(self, store: ArtifactStore, readable: Sequence[ArtifactStore] = ()) -> None:
        self.store = store
        self.readable = list(readable)

    @classmethod
    def configured(cls, settings: StoreSettings, read_only_roots: Sequence[str] = ()) -> StoreScope:
        """A server's scope: its store, and the read-only roots its operator listed (reached, for
        s3:// ones, with the store's credentials)."""
        return cls(open_store(settings.store, settings), [open_store(r, settings) for r in read_only_roots])

    @property
    def uris(self) -> list[str]:
        return [self.store.uri, *(r.uri for r in self.readable)]

    def key(self, ref: str, *, what: str, write: bool = False) -> str:
        """The key in the configured store that `ref` names ('' = the store's root); `write` only words
        the refusal (the store itself is both read and written)."""
        key = self._key_in(self.store, ref, what)
        if key is None:
            raise self._outside(ref, what, write=write)
        return key

    def location(self, ref: str, *, what: str, write: bool = False) -> str:
        """The URI of the place `ref` names, inside the configured store or (when only read) one of the
        read-only roots; PermissionDenied for anywhere else."""
        for store in [self.store] if write else [self.store, *self.readable]:
            key = self._key_in(store, ref, what)
            if key is not None:
                return store.uri_for(key) if key else store.uri
        raise self._outside(ref, what, write=write)

    def _outside(self, ref: str, what: str, *, write: bool) -> PermissionDenied:
        allowed = self.store.uri if write else ", ".join(self.uris)
        return PermissionDenied(
            f"{what} {ref!r} is outside what this service may {'write' if write else 'read'} ({allowed}): "
            f"name a key inside its store, e.g. 'datasets/<name>/<version>', or a URI under {self.store.uri}"
        )

    @staticmethod
    def _key_in(store: ArtifactStore, ref: str, what: str) -> str | None:
        """`ref` as a key of `store`, or None when it points somewhere else."""
        if not isinstance(ref, str) or not ref.strip():
            raise InvalidArgument(
                f"{what} is empty: name a key of the store, e.g. 'datasets/<name>/<version>'"
            )
        ref = ref.strip()
        if "\x00" in ref:
            raise InvalidArgument(f"{what} {ref!r} contains a NUL byte")
        if "://" in ref:
            parts = urlsplit(ref)
            if parts.query or parts.fragment:
                raise InvalidArgument(f"{what} {ref!r} must not carry '?' or '#' parts")
            if parts.scheme == "s3":
                return _s3_key(store, parts.netloc, unquote(parts.path))
            if parts.scheme == "file":
                if parts.netloc not in ("", "localhost"):
                    return None
                return _local_key(store, unquote(parts.path))
            return None  # http://…, gs://…: never a location of this store
        if _is_path(ref):
            return _local_key(store, os.path.expanduser(ref))
        key = check_prefix(ref)  # a relative key: refuse '..', '.', absolute parts, the internal folder
        if isinstance(store, LocalStore) and not _resolves_inside(store.root / key, store.root):
            return None  # a symlink inside the store that leads out of it
        return key


def _s3_key(store: ArtifactStore, bucket: str, path: str) -> str | None:
    if getattr(store, "bucket", None) != bucket:
        return None
    prefix: str = getattr(store, "prefix", "")
    path = path.strip("/")
    if prefix:
        if path == prefix:
            return ""
        if not path.startswith(prefix + "/"):
            return None
        path = path[len(prefix) + 1 :]
    return check_prefix(path) if path else ""


def _local_key(store: ArtifactStore, path: str) -> str | None:
    if not isinstance(store, LocalStore):
        return None
    resolved = Path(os.path.realpath(path))
    root = Path(os.path.realpath(store.root))
    if resolved == root:
        return ""
    if root not in resolved.parents:
        return None
    return check_prefix(resolved.relative_to(root).as_posix())


def _resolves_inside(path: Path, root: Path) -> bool:
    resolved, real_root = Path(os.path.realpath(path)), Path(os.path.realpath(root))
    return resolved == real_root or real_root in resolved.parents


def for_server(ref: str) -> str:
    """What a CLI sends a server for a location its user typed: an existing local path as an absolute
    one (a server on the same machine, the demo's, reads it if it lies in what the server may read),
    keys and URIs as they are. The server, not the client, decides whether it may go there."""
    if not ref or "://" in ref:
        return ref
    path = Path(ref).expanduser()
    return str(path.resolve()) if path.exists() else ref

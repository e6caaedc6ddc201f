"""The artifact store: one interface over a local directory (embedded default) and an S3 bucket.

store = open_store(settings.store, settings)
with store.publish("datasets/x/v1") as pub:
    pub.put_bytes("train.jsonl", data)
    pub.manifest["counts"] = {"train": 100}
store.read_manifest("datasets/x/v1")   # NotFound until the manifest (written last) exists

Several writers may publish one prefix at once (two replicas, a CLI and a server): one publishes, the
others keep its version when their files are identical and get AlreadyExists otherwise (base.py).
"""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

from reviewstack.common.errors import InvalidArgument
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store.base import (
    INTERNAL_DIR,
    MANIFEST_NAME,
    ArtifactStore,
    ObjectWriter,
    Publication,
    PublicationParticipant,
    check_key,
    check_prefix,
)
from reviewstack.common.store.local import LocalStore

__all__ = [
    "INTERNAL_DIR",
    "MANIFEST_NAME",
    "ArtifactStore",
    "LocalStore",
    "ObjectWriter",
    "Publication",
    "PublicationParticipant",
    "check_key",
    "check_prefix",
    "open_store",
]

_BUCKET = re.compile(r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")


def open_store(uri: str, settings: StoreSettings | None = None) -> ArtifactStore:
    """Open the store at `uri`: a directory path, `file:///abs/dir`, or `s3://bucket[/prefix]`.

    Nothing is contacted or created here (a service can start and report a bad store through its health
    check); call `check_writable()` to fail fast before real work.
    """
    if not isinstance(uri, str) or not uri.strip():
        raise InvalidArgument("the store URI is empty: set REVIEWSTACK_STORE to a directory or s3://bucket")
    uri = uri.strip()
    settings = settings if settings is not None else StoreSettings()
    publication = {"claim_wait_s": settings.store_claim_wait_s, "staging_ttl_s": settings.store_staging_ttl_s}
    if "://" not in uri:
        return LocalStore(uri, **publication)
    parts = urlsplit(uri)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise InvalidArgument(f"store URI {uri!r} must be file:///absolute/path")
        return LocalStore(unquote(parts.path), **publication)
    if parts.scheme == "s3":
        if not _BUCKET.match(parts.netloc) or ".." in parts.netloc:
            raise InvalidArgument(
                f"{parts.netloc!r} in {uri!r} is not a valid bucket name (3-63 of a-z, 0-9, '.', '-')"
            )
        if parts.query or parts.fragment:
            raise InvalidArgument(f"store URI {uri!r} must not carry '?' or '#' parts")
        prefix = check_prefix(parts.path.strip("/"))
        from reviewstack.common.store.s3 import S3Store  # minio only where S3 is used

        return S3Store(parts.netloc, prefix, settings, claim_ttl_s=settings.store_claim_ttl_s, **publication)
    raise InvalidArgument(
        f"unsupported store URI {uri!r}: use a directory path, file:///dir, or s3://bucket[/prefix]"
    )

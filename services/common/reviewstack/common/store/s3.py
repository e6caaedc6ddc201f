"""The cluster backend: one S3 bucket (MinIO in the cluster) through the `minio` client.

A streaming write is spooled to a local temp file while it is hashed, then uploaded with its length and
the hash as user metadata (`x-amz-meta-sha256`): the hash must be known when the upload starts, and a
known length lets the client stream big objects in multipart parts instead of holding them in memory.
S3 makes an object visible only when its upload completes, which gives the same all-or-nothing write
as the local rename. Every client error is translated into an error that says what to fix.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import io
import mimetypes
import os
import tempfile
import threading
from collections.abc import Iterator
from typing import BinaryIO
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error

from reviewstack.common.artifacts import ArtifactRef
from reviewstack.common.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ReviewStackError,
    Unavailable,
)
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store.base import (
    ArtifactStore,
    PendingObject,
    check_key,
    hash_stream,
    is_internal,
)

SHA256_META = "x-amz-meta-sha256"
_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "ResourceNotFound", "NoSuchVersion"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem"}
_BUSY = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}
_CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)


def parse_endpoint(endpoint: str, secure: bool) -> tuple[str, bool]:
    """'host:port' (TLS from `secure`) or 'http(s)://host:port' (TLS from the scheme) -> (host:port, tls)."""
    endpoint = endpoint.strip()
    if not endpoint:
        raise InvalidArgument(
            "an s3:// store needs an endpoint: set REVIEWSTACK_S3_ENDPOINT (e.g. minio:9000)"
        )
    if "://" in endpoint:
        parts = urlsplit(endpoint)
        if parts.scheme not in ("http", "https") or not parts.netloc or parts.path not in ("", "/"):
            raise InvalidArgument(
                f"REVIEWSTACK_S3_ENDPOINT={endpoint!r} is not host:port or http(s)://host:port (no path)"
            )
        return parts.netloc, parts.scheme == "https"
    if "/" in endpoint:
        raise InvalidArgument(f"REVIEWSTACK_S3_ENDPOINT={endpoint!r} must be host:port, without a path")
    return endpoint, secure


class _S3Pending(PendingObject):
    def __init__(self, store: S3Store, key: str) -> None:
        self._store, self._key = store, key
        self.file = tempfile.TemporaryFile(prefix="reviewstack-spool-")  # noqa: SIM115 - closed in commit/abort

    def commit(self, sha256: str, size: int) -> ArtifactRef:
        try:
            self.file.flush()
            self.file.seek(0)
            return self._store._put(self._key, self.file, size, sha256)
        finally:
            self.file.close()

    def abort(self) -> None:
        self.file.close()


class _VerifyingReader:
    """Hashes what the upload reads, to catch a file rewritten between hashing and uploading."""

    def __init__(self, f: BinaryIO) -> None:
        self._f, self.digest = f, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        data = self._f.read(size)
        self.digest.update(data)
        return data


class S3Store(ArtifactStore):
    """Artifacts under `s3://bucket/prefix`; the bucket is checked (or created) on first use."""

    def __init__(
        self,
        bucket: str,
        prefix: str,
        settings: StoreSettings,
        *,
        connect_timeout: float = 5.0,
        read_timeout: float = 120.0,
        retries: int = 3,
    ) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.endpoint, self.secure = parse_endpoint(settings.s3_endpoint, settings.s3_secure)
        self.uri = f"s3://{bucket}/{self.prefix}" if self.prefix else f"s3://{bucket}"
        self._create_bucket = settings.s3_create_bucket
        self._region = settings.s3_region or None
        # minio's default pool waits 5 minutes per attempt and retries 5 times: an endpoint typo would hang
        # a service for half an hour before saying anything. Fail in seconds instead.
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=connect_timeout, read=read_timeout),
            maxsize=16,
            cert_reqs="CERT_REQUIRED",
            ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
            retries=urllib3.Retry(total=retries, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]),
        )
        secret = settings.s3_secret_key.get_secret_value() if settings.s3_secret_key else None
        access = settings.s3_access_key.get_secret_value() if settings.s3_access_key else None
        if access and secret is None:
            raise InvalidArgument("REVIEWSTACK_S3_ACCESS_KEY is set but REVIEWSTACK_S3_SECRET_KEY is not")
        self.client = Minio(
            self.endpoint,
            access_key=access,
            secret_key=secret,
            secure=self.secure,
            region=self._region,
            http_client=http,
        )
        self._bucket_ready = False
        self._lock = threading.Lock()

    # ---- naming and errors ----------------------------------------------------------------------------
    def _name(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self._name(key)}"

    @property
    def _where(self) -> str:
        return f"{'https' if self.secure else 'http'}://{self.endpoint}"

    def _error_for_code(self, code: str | None, message: str | None, uri: str) -> ReviewStackError:
        """Translate an S3 error code into an error that names the object or bucket and what to fix."""
        where = self._where
        if code == "NoSuchBucket":
            return NotFound(
                f"bucket {self.bucket!r} does not exist at {where}: create it (e.g. `mc mb`) or set"
                " REVIEWSTACK_S3_CREATE_BUCKET=true"
            )
        if code in _NOT_FOUND:
            return NotFound(f"{uri} does not exist")
        if code in _BAD_CREDENTIALS:
            return PermissionDenied(
                f"{where} rejected the credentials ({code}) for {uri}: check REVIEWSTACK_S3_ACCESS_KEY"
                " and REVIEWSTACK_S3_SECRET_KEY"
            )
        if code in _DENIED:
            return PermissionDenied(
                f"access to {uri} denied by {where} ({code}): check REVIEWSTACK_S3_ACCESS_KEY and"
                f" REVIEWSTACK_S3_SECRET_KEY, and that this key may use bucket {self.bucket!r}"
            )
        if code in _BUSY:
            return Unavailable(f"{where} could not serve {uri} ({code}); retry later")
        return ReviewStackError(f"S3 error on {uri}: {code}: {message}")

    def _error(self, exc: Exception, uri: str) -> ReviewStackError:
        if isinstance(exc, S3Error):
            return self._error_for_code(exc.code, exc.message, uri)
        detail = exc.reason if isinstance(exc, urllib3.exceptions.MaxRetryError) else exc
        return Unavailable(
            f"cannot reach the S3 endpoint {self._where} ({type(exc).__name__}: {detail}); check that it is"
            " up and that REVIEWSTACK_S3_ENDPOINT / REVIEWSTACK_S3_SECURE point at it"
        )

    @contextlib.contextmanager
    def _errors(self, uri: str) -> Iterator[None]:
        try:
            yield
        except (MinioException, *_CONNECTION_ERRORS) as exc:
            raise self._error(exc, uri) from exc

    def _ready(self) -> None:
        """Check the bucket once per store, so a missing bucket is reported as such, not as missing keys."""
        if self._bucket_ready:
            return
        with self._lock:
            if self._bucket_ready:
                return
            with self._errors(f"s3://{self.bucket}"):
                if not self.client.bucket_exists(self.bucket):
                    if not self._create_bucket:
                        raise self._error_for_code("NoSuchBucket", None, "")
                    try:
                        self.client.make_bucket(self.bucket, location=self._region)
                    except S3Error as exc:  # a concurrent creator won the race: fine
                        if exc.code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                            raise
            self._bucket_ready = True

    # ---- primitives -----------------------------------------------------------------------------------
    def _put(self, key: str, data: BinaryIO | io.BytesIO, size: int, sha256: str) -> ArtifactRef:
        self._ready()
        content_type = mimetypes.guess_type(key)[0] or "application/octet-stream"
        with self._errors(self._uri(key)):
            self.client.put_object(
                self.bucket,
                self._name(key),
                data,
                size,
                content_type=content_type,
                metadata={SHA256_META: sha256},
            )
        return ArtifactRef(key=key, uri=self._uri(key), sha256=sha256, size=size)

    def _begin_write(self, key: str) -> PendingObject:
        return _S3Pending(self, key)

    def put_bytes(self, key: str, data: bytes) -> ArtifactRef:
        """Upload straight from memory: the bytes are already there, a spool file would only cost a copy."""
        data = bytes(data)
        return self._put(check_key(key), io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest())

    def put_file(self, key: str, path: str | os.PathLike[str]) -> ArtifactRef:
        """Hash the file, then upload it from disk (no spool copy); fail if it changed in between."""
        key = check_key(key)
        with open(path, "rb") as f:
            sha256, size = hash_stream(f)
            f.seek(0)
            reader = _VerifyingReader(f)
            ref = self._put(key, reader, size, sha256)  # type: ignore[arg-type]
        if reader.digest.hexdigest() != sha256:
            self._delete(key)
            raise FailedPrecondition(f"{path} changed while it was uploaded to {ref.uri}; upload it again")
        return ref

    @contextlib.contextmanager
    def _open_object(self, key: str) -> Iterator[tuple[BinaryIO, str | None]]:
        self._ready()
        with self._errors(self._uri(key)):
            response = self.client.get_object(self.bucket, self._name(key))
        try:
            with self._errors(self._uri(key)):
                yield response, response.headers.get(SHA256_META)  # type: ignore[misc]
        finally:
            response.close()
            response.release_conn()

    def _stat(self, key: str) -> ArtifactRef:
        self._ready()
        with self._errors(self._uri(key)):
            info = self.client.stat_object(self.bucket, self._name(key))
        sha256 = info.metadata.get(SHA256_META) if info.metadata else None
        if not sha256:  # uploaded by another tool: hash its content rather than fail
            with self._open_object(key) as (stream, _):
                sha256, _size = hash_stream(stream)
        return ArtifactRef(key=key, uri=self._uri(key), sha256=sha256, size=info.size or 0)

    def _exists(self, key: str) -> bool:
        self._ready()  # outside the try: a missing bucket must not read as a missing key
        try:
            with self._errors(self._uri(key)):
                self.client.stat_object(self.bucket, self._name(key))
        except NotFound:
            return False
        return True

    def _list(self, prefix: str, recursive: bool) -> Iterator[tuple[str, bool]]:
        """(relative name, is_dir) under `prefix/`, skipping store internals and folder markers."""
        self._ready()
        root = f"{self.prefix}/" if self.prefix else ""
        listed = f"{root}{prefix}/" if prefix else root
        with self._errors(self._uri(prefix) if prefix else self.uri):
            for obj in self.client.list_objects(self.bucket, prefix=listed, recursive=recursive):
                rel = (obj.object_name or "")[len(root) :]
                if obj.is_dir:
                    if not is_internal(rel):
                        yield rel.rstrip("/"), True
                elif rel and not rel.endswith("/") and not is_internal(rel):
                    yield rel, False

    def _iter_keys(self, prefix: str, recursive: bool) -> Iterator[str]:
        # S3 lists in UTF-8 byte order, which is also Python's str order: both backends sort alike.
        return (name for name, is_dir in self._list(prefix, recursive) if not is_dir)

    def _list_dirs(self, prefix: str) -> builtins.list[str]:
        return sorted(name for name, is_dir in self._list(prefix, False) if is_dir)

    def _delete(self, key: str) -> None:
        self._ready()
        with self._errors(self._uri(key)):
            self.client.remove_object(self.bucket, self._name(key))

    def _delete_many(self, keys: builtins.list[str]) -> None:
        if not keys:
            return
        self._ready()
        with self._errors(self.uri):
            failed = builtins.list(
                self.client.remove_objects(self.bucket, (DeleteObject(self._name(k)) for k in keys))
            )
        if failed:
            raise self._error_for_code(failed[0].code, failed[0].message, self._uri(failed[0].name))

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
import json
import mimetypes
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, BinaryIO
from urllib.parse import urlsplit

import certifi
import urllib3
from minio import Minio
from minio.commonconfig import REPLACE, CopySource
from minio.deleteobjects import DeleteObject
from minio.error import MinioException, S3Error

from reviewstack.common.artifacts import ArtifactRef
from reviewstack.common.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ReviewStackError,
    Unavailable,
)
from reviewstack.common.logging import get_logger
from reviewstack.common.settings import StoreSettings
from reviewstack.common.store.base import (
    ArtifactStore,
    PendingObject,
    PrefixClaim,
    claim_key,
    describe_holder,
    hash_stream,
    is_internal,
)

log = get_logger(__name__)

SHA256_META = "x-amz-meta-sha256"
_NOT_FOUND = {"NoSuchKey", "NoSuchObject", "ResourceNotFound", "NoSuchVersion"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
_DENIED = {"AccessDenied", "AllAccessDisabled", "AccountProblem"}
_BUSY = {"SlowDown", "ServiceUnavailable", "InternalError", "RequestTimeout"}
_CONNECTION_ERRORS = (urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
_MAX_SINGLE_PUT = 5 << 30  # S3's limit for one PutObject / CopyObject
_CONFLICT_RETRIES = 3


def _content_type(key: str) -> str:
    return mimetypes.guess_type(key)[0] or "application/octet-stream"


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
        claim_ttl_s: float = ArtifactStore.claim_ttl_s,
        claim_wait_s: float = ArtifactStore.claim_wait_s,
        staging_ttl_s: float = ArtifactStore.staging_ttl_s,
    ) -> None:
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.claim_ttl_s, self.claim_wait_s, self.staging_ttl_s = claim_ttl_s, claim_wait_s, staging_ttl_s
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
        content_type = _content_type(key)
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

    def _put_bytes(self, key: str, data: bytes) -> ArtifactRef:
        """Upload straight from memory: the bytes are already there, a spool file would only cost a copy."""
        data = bytes(data)
        return self._put(key, io.BytesIO(data), len(data), hashlib.sha256(data).hexdigest())

    def _put_exclusive(self, key: str, data: bytes) -> ArtifactRef:
        """PutObject with `If-None-Match: *`: the server creates the object only if the key is free, in
        the same step (S3, MinIO), and answers 412 PreconditionFailed otherwise. minio's public
        put_object cannot send that header; its `_put_object` (one PUT of the whole body) can."""
        if len(data) > _MAX_SINGLE_PUT:
            raise InvalidArgument(f"an exclusive write of {self._uri(key)} must be at most 5 GiB")
        self._ready()
        sha256 = hashlib.sha256(data).hexdigest()
        headers = {"Content-Type": _content_type(key), SHA256_META: sha256, "If-None-Match": "*"}
        self._conditional(key, data, headers)
        return ArtifactRef(key=key, uri=self._uri(key), sha256=sha256, size=len(data))

    def _conditional(self, key: str, data: bytes, headers: dict[str, str]) -> str:
        """One conditional PUT; returns the new ETag. A failed condition is AlreadyExists; S3's 409
        ConditionalRequestConflict (a concurrent conditional write in flight) is retried briefly."""
        uri = self._uri(key)
        for attempt in range(_CONFLICT_RETRIES):
            try:
                with self._errors(uri):
                    return self.client._put_object(self.bucket, self._name(key), data, headers).etag
            except ReviewStackError as exc:
                code = getattr(exc.__cause__, "code", None)
                if code == "PreconditionFailed":
                    raise AlreadyExists(
                        f"{uri} already exists: another writer created it first; read it, or write under"
                        " another key"
                    ) from None
                if code != "ConditionalRequestConflict" or attempt == _CONFLICT_RETRIES - 1:
                    raise
            time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def _put_file(self, key: str, path: str | os.PathLike[str]) -> ArtifactRef:
        """Hash the file, then upload it from disk (no spool copy); fail if it changed in between."""
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

    def _move(self, src: str, dest: str, ref: ArtifactRef) -> ArtifactRef:
        """Server-side copy, then delete the source: no byte travels through this process. The copy gets
        the source's sha256 as metadata; above 5 GiB minio's copy_object composes it from ranged part
        copies (multipart), which takes metadata the same way."""
        self._ready()
        metadata = {SHA256_META: ref.sha256, "Content-Type": _content_type(dest)}
        with self._errors(self._uri(src)):
            self.client.copy_object(
                self.bucket,
                self._name(dest),
                CopySource(self.bucket, self._name(src)),
                metadata=metadata,
                metadata_directive=REPLACE,
            )
        self._delete(src)
        return ArtifactRef(key=dest, uri=self._uri(dest), sha256=ref.sha256, size=ref.size)

    def _iter_internal(self, prefix: str) -> Iterator[tuple[str, float]]:
        self._ready()
        root = f"{self.prefix}/" if self.prefix else ""
        with self._errors(self._uri(prefix)):
            for obj in self.client.list_objects(self.bucket, prefix=self._name(prefix) + "/", recursive=True):
                modified = obj.last_modified.timestamp() if obj.last_modified else time.time()
                yield (obj.object_name or "")[len(root) :], modified

    # ---- claims ---------------------------------------------------------------------------------------
    def _try_claim(self, prefix: str, holder: dict[str, Any]) -> PrefixClaim | None:
        """Create the claim object if absent; else take it over if the server says it is stale."""
        self._ready()
        key, body = claim_key(prefix), json.dumps(holder).encode()
        try:
            return _S3Claim(self, key, holder, self._conditional(key, body, _claim_headers("*", None)))
        except AlreadyExists:
            pass
        state = self._claim_state(key)
        if state is None:  # released in between: the caller tries again
            return None
        current, etag, age = state
        if current.get("writer") == holder["writer"]:  # our create, whose reply was lost and retried
            return _S3Claim(self, key, holder, etag)
        if age < self.claim_ttl_s:
            return None
        try:  # only one of several writers breaking the same stale claim can match its ETag
            new_etag = self._conditional(key, body, _claim_headers(None, etag))
        except (AlreadyExists, NotFound):
            return None
        log.warning(
            "took over a stale claim", prefix=prefix, previous=describe_holder(current), age_s=round(age)
        )
        return _S3Claim(self, key, holder, new_etag)

    def _claim_state(self, key: str) -> tuple[dict[str, Any], str, float] | None:
        """(holder, ETag, age in seconds by the server's own clock) of a claim object, None if absent."""
        try:
            with self._errors(self._uri(key)):
                response = self.client.get_object(self.bucket, self._name(key))
                try:
                    body, headers = response.read(), response.headers
                finally:
                    response.close()
                    response.release_conn()
        except NotFound:
            return None
        try:
            holder = json.loads(body)
        except ValueError:
            holder = {}
        holder = holder if isinstance(holder, dict) else {}
        etag = (headers.get("ETag") or "").strip('"')
        if not headers.get("Last-Modified"):  # never seen; judged fresh rather than broken on a guess
            return holder, etag, 0.0
        modified = parsedate_to_datetime(headers["Last-Modified"])
        now = parsedate_to_datetime(headers["Date"]) if headers.get("Date") else datetime.now(UTC)
        return holder, etag, (now - modified).total_seconds()

    def _claim_holder(self, prefix: str) -> dict[str, Any] | None:
        try:
            state = self._claim_state(claim_key(prefix))
        except ReviewStackError:
            return None
        return state[0] if state else None

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


def _claim_headers(if_none_match: str | None, if_match: str | None) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if if_none_match:
        headers["If-None-Match"] = if_none_match
    if if_match:
        headers["If-Match"] = f'"{if_match}"'
    return headers


class _S3Claim(PrefixClaim):
    """A claim object this writer created or took over; a heartbeat thread keeps it fresh.

    Each refresh is a conditional PUT on the ETag this writer last wrote, so a refresh fails, and the
    claim is known lost, as soon as another writer has taken it over.
    """

    def __init__(self, store: S3Store, key: str, holder: dict[str, Any], etag: str) -> None:
        self._store, self._key, self._holder, self._etag = store, key, holder, etag
        self._lock = threading.Lock()
        self._refreshed = time.monotonic()
        self._lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="store-claim-heartbeat", daemon=True)
        self._thread.start()

    @property
    def _where(self) -> str:
        return self._store._uri(self._holder["prefix"])

    def _beat(self) -> None:
        while not self._stop.wait(self._store.claim_ttl_s / 4):
            try:
                self._refresh()
            except ReviewStackError as exc:
                log.warning("claim not refreshed", uri=self._where, error=str(exc))
                if self._lost:
                    return

    def _refresh(self) -> None:
        with self._lock:  # one conditional PUT at a time: each needs the ETag the previous one returned
            if self._lost:
                return
            body = json.dumps({**self._holder, "refreshed_at": datetime.now(UTC).isoformat()}).encode()
            try:
                etag = self._store._conditional(self._key, body, _claim_headers(None, self._etag))
            except (AlreadyExists, NotFound):
                self._lost = True
                raise FailedPrecondition(
                    f"the claim on {self._where} was taken over by another writer"
                ) from None
            self._etag, self._refreshed = etag, time.monotonic()

    def check(self) -> None:
        if not self._lost and time.monotonic() - self._refreshed > self._store.claim_ttl_s / 2:
            try:
                self._refresh()
            except Unavailable as exc:
                raise Unavailable(
                    f"lost the S3 endpoint while holding the claim on {self._where}, which other writers may"
                    f" take over after {self._store.claim_ttl_s:g} s; nothing was published: publish again"
                    f" once the store is reachable ({exc})"
                ) from exc
        if self._lost:
            raise FailedPrecondition(
                f"the claim on {self._where} was taken over by another writer after this one had not"
                f" refreshed it for {self._store.claim_ttl_s:g} s (a stall or a lost connection); nothing"
                " was published by this writer: read what the other one published, or publish again"
            )

    def release(self) -> None:
        self._stop.set()
        self._thread.join()
        if self._lost:
            return
        try:  # conditional on our ETag: never delete a claim another writer has taken over
            with self._store._errors(self._store._uri(self._key)):
                self._store.client._execute(
                    "DELETE",
                    self._store.bucket,
                    self._store._name(self._key),
                    headers={"If-Match": f'"{self._etag}"'},
                )
        except ReviewStackError as exc:
            log.warning(
                "claim not released; other writers take it over once it is stale",
                uri=self._where,
                ttl_s=self._store.claim_ttl_s,
                error=str(exc),
            )

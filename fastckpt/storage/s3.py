"""``s3://bucket/key`` names: the storage interface over an S3-compatible
object store (boto3 underneath, imported on first use), plus what an
object store has and a file system has not -- conditional writes
(``If-None-Match: *`` for a new object, ``If-Match: ETag`` to replace the
one that was read) and ranged reads.

An object store has no directories and no rename: a "directory" is a key
prefix ending in ``/``, ``listdir`` lists the names directly under it,
``replace``/``rename``/``link`` are server-side copies (the source is
deleted after a rename), and a copy is never atomic with a delete.

Errors are ``OSError``s, as the local implementation's are, so the layers
above map them the same way: a missing key is ``FileNotFoundError``,
refused credentials ``PermissionError``, a lost condition
:class:`~fastckpt.errors.ConflictError` (also a ``FileExistsError``); transient failures
(connection resets, 500/503 SlowDown, timeouts) are retried by the client
with backoff before they become an error.

Endpoint and credentials come as the ecosystem passes them
(``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_REGION``, profiles), or as ``storage_options`` (boto3 client
arguments: ``endpoint_url``, ``aws_access_key_id``, ``region_name``...;
``config``: botocore ``Config`` arguments, e.g. ``{"retries": {"max_attempts": 3}}``;
by default 8 attempts in botocore's standard retry mode).
"""

from __future__ import annotations

import errno
import threading
from typing import Any, Dict, List, Optional, Tuple

from fastckpt.errors import ConflictError

__all__ = ["S3Storage", "split_url", "SCHEME", "default_s3"]

SCHEME = "s3://"
_RETRIES = {"mode": "standard", "max_attempts": 8}


def split_url(url: str) -> Tuple[str, str]:
    """``("bucket", "key")`` of ``s3://bucket/key`` (the key may be empty)."""
    if not url.startswith(SCHEME):
        raise ValueError(f"not an s3:// URL: {url!r}")
    bucket, _, key = url[len(SCHEME):].partition("/")
    if not bucket:
        raise ValueError(f"no bucket in {url!r}")
    return bucket, key


def _as_os_error(e: Exception, url: str) -> OSError:
    """A botocore error as the ``OSError`` a file system would raise."""
    response = getattr(e, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    text = f"{url}: {code or type(e).__name__} {response.get('Error', {}).get('Message', '') or e}".strip()
    if code in ("NoSuchKey", "404", "NotFound", "NoSuchBucket") or status == 404:
        return FileNotFoundError(errno.ENOENT, text, url)
    if code in ("PreconditionFailed", "ConditionalRequestConflict") or status in (409, 412):
        return ConflictError(errno.EEXIST, text, url)
    if code in ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403") or status == 403:
        return PermissionError(errno.EACCES, text, url)
    if code in ("QuotaExceeded", "EntityTooLarge") or status == 507:
        return OSError(errno.ENOSPC, text, url)
    return OSError(errno.EIO, text, url)


class S3Storage:
    """The storage interface for ``s3://`` names, over one boto3 client
    (thread-safe; created on first use)."""

    def __init__(self, **storage_options: Any) -> None:
        self._options = dict(storage_options)
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def client(self) -> Any:
        """The boto3 S3 client (endpoint and credentials from the
        environment unless ``storage_options`` gave them)."""
        if self._client is None:
            with self._lock:
                if self._client is None:
                    import boto3
                    from botocore.config import Config

                    options = dict(self._options)
                    config = Config(**{"retries": dict(_RETRIES), "max_pool_connections": 32,
                                       **options.pop("config", {})})
                    self._client = boto3.session.Session().client("s3", config=config, **options)
        return self._client

    def _call(self, url: str, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.client, method)(**kwargs)
        except Exception as e:
            if type(e).__module__.startswith(("botocore", "boto3", "urllib3")):
                raise _as_os_error(e, url) from e
            raise

    # ---- what is there ------------------------------------------------------------------
    def head(self, url: str) -> Optional[Dict[str, Any]]:
        """The object's metadata (``ContentLength``, ``ETag``,
        ``LastModified``), or None when there is no such object."""
        bucket, key = split_url(url)
        try:
            return self._call(url, "head_object", Bucket=bucket, Key=key)  # type: ignore[no-any-return]
        except FileNotFoundError:
            return None

    def exists(self, path: str) -> bool:
        """True if an object, or any object under the prefix ``path/``, exists."""
        return self.is_file(path) or self.is_dir(path)

    def present(self, path: str) -> bool:
        """As :meth:`exists` (an object store has no symlinks)."""
        return self.exists(path)

    def is_file(self, path: str) -> bool:
        """True if the object ``path`` exists."""
        return bool(split_url(path)[1]) and self.head(path) is not None

    def is_dir(self, path: str) -> bool:
        """True if some object's key starts with ``path/`` (a bucket root: the bucket exists)."""
        bucket, key = split_url(path)
        prefix = key.rstrip("/") + "/" if key else ""
        out = self._call(path, "list_objects_v2", Bucket=bucket, Prefix=prefix, MaxKeys=1)
        return bool(out.get("KeyCount", 0)) or not key

    def listdir(self, directory: str) -> List[str]:
        """The names directly under ``directory/`` (objects and "subdirectories")."""
        bucket, key = split_url(directory)
        prefix = key.rstrip("/") + "/" if key else ""
        names: List[str] = []
        token: Dict[str, str] = {}
        while True:
            out = self._call(directory, "list_objects_v2", Bucket=bucket, Prefix=prefix, Delimiter="/", **token)
            names += [o["Key"][len(prefix):] for o in out.get("Contents", [])]
            names += [p["Prefix"][len(prefix):].rstrip("/") for p in out.get("CommonPrefixes", [])]
            if not out.get("IsTruncated"):
                return [n for n in names if n]
            token = {"ContinuationToken": out["NextContinuationToken"]}

    def size(self, path: str) -> int:
        """The object's size in bytes."""
        meta = self.head(path)
        if meta is None:
            raise FileNotFoundError(errno.ENOENT, f"{path}: no such object", path)
        return int(meta["ContentLength"])

    def mtime(self, path: str) -> float:
        """The object's last-modified time (seconds since the epoch)."""
        meta = self.head(path)
        if meta is None:
            raise FileNotFoundError(errno.ENOENT, f"{path}: no such object", path)
        return float(meta["LastModified"].timestamp())

    def etag(self, path: str) -> Optional[str]:
        """The object's ETag (what a conditional replace names), or None."""
        meta = self.head(path)
        return None if meta is None else str(meta["ETag"])

    def identity(self, path: str) -> Optional[Tuple[int, int, int]]:
        """What tells one object under a name from another that replaced it:
        a hash of its ETag with its size and time (None: nothing there)."""
        meta = self.head(path)
        if meta is None:
            return None
        return (hash(str(meta["ETag"])), int(meta["ContentLength"]),
                int(meta["LastModified"].timestamp() * 1e9))

    # ---- reading ------------------------------------------------------------------------
    def read_bytes(self, path: str) -> bytes:
        """The whole object."""
        bucket, key = split_url(path)
        return self._call(path, "get_object", Bucket=bucket, Key=key)["Body"].read()  # type: ignore[no-any-return]

    def read_with_etag(self, path: str) -> Tuple[bytes, str]:
        """The whole object and the ETag of exactly those bytes."""
        bucket, key = split_url(path)
        out = self._call(path, "get_object", Bucket=bucket, Key=key)
        return out["Body"].read(), str(out["ETag"])

    def read_range(self, path: str, offset: int, size: int) -> bytes:
        """``size`` bytes of the object from ``offset`` (one ranged GET)."""
        if size <= 0:
            return b""
        bucket, key = split_url(path)
        out = self._call(path, "get_object", Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + size - 1}")
        data = out["Body"].read()
        if len(data) != size:
            raise OSError(errno.EIO, f"{path}: asked for {size} bytes at {offset}, got {len(data)} "
                                     "(the object is shorter)", path)
        return data  # type: ignore[no-any-return]

    # ---- writing ------------------------------------------------------------------------
    def put(self, path: str, data: bytes, *, if_match: Optional[str] = None, if_new: bool = False) -> str:
        """Write the object ``path`` whole; returns its new ETag. ``if_new``:
        only if no object has the name; ``if_match``: only if the object is
        still the one with that ETag. A lost condition is
        :class:`ConflictError` and writes nothing."""
        bucket, key = split_url(path)
        condition: Dict[str, str] = {}
        if if_new:
            condition["IfNoneMatch"] = "*"
        if if_match is not None:
            condition["IfMatch"] = if_match
        out = self._call(path, "put_object", Bucket=bucket, Key=key, Body=data, **condition)
        return str(out["ETag"])

    def delete(self, path: str) -> None:
        """Delete the object (``FileNotFoundError`` if there is none, as locally)."""
        if self.head(path) is None:
            raise FileNotFoundError(errno.ENOENT, f"{path}: no such object", path)
        self.delete_quietly(path)

    def delete_quietly(self, path: str) -> None:
        """Delete the object if it is there."""
        bucket, key = split_url(path)
        self._call(path, "delete_object", Bucket=bucket, Key=key)

    def copy(self, src: str, dst: str) -> None:
        """A server-side copy of ``src`` as ``dst`` (no byte crosses the network)."""
        sb, sk = split_url(src)
        db, dk = split_url(dst)
        try:
            self.client.copy({"Bucket": sb, "Key": sk}, db, dk)  # multipart beyond 5 GB
        except Exception as e:
            if type(e).__module__.startswith(("botocore", "boto3", "s3transfer")):
                raise _as_os_error(e, src) from e
            raise

    def link(self, src: str, dst: str) -> None:
        """A second name for ``src``'s bytes: an object store's link is a server-side copy."""
        self.copy(src, dst)

    def replace(self, src: str, dst: str) -> None:
        """``dst`` becomes ``src``'s bytes, then ``src`` goes (two requests, not atomic)."""
        self.copy(src, dst)
        self.delete_quietly(src)

    def rename(self, src: str, dst: str) -> None:
        """As :meth:`replace`."""
        self.replace(src, dst)

    def real_path(self, path: str) -> str:
        """The URL itself (an object store has no links to resolve)."""
        return path


_DEFAULT: Optional[S3Storage] = None
_DEFAULT_LOCK = threading.Lock()


def default_s3() -> S3Storage:
    """The process's :class:`S3Storage` configured from the environment."""
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = S3Storage()
        return _DEFAULT

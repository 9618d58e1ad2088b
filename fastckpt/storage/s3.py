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
by default 8 attempts in botocore's standard retry mode), plus fastckpt's
own ``part_bytes`` (16 MiB: one uploaded part, one ranged GET) and
``parts_in_flight`` (8): a save or restore holds at most
``(parts_in_flight + 1) * part_bytes`` of buffers beyond the state itself.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import hashlib
import threading
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Iterator, List, Mapping, Optional, Tuple

from fastckpt.errors import ConflictError, InvalidArgumentError

__all__ = ["S3Storage", "ObjectInfo", "split_url", "SCHEME", "default_s3", "configure", "using_storage", "PART_BYTES",
           "PARTS_IN_FLIGHT"]

SCHEME = "s3://"
_RETRIES = {"mode": "standard", "max_attempts": 8}
PART_BYTES = 16 << 20  # one part of a multipart upload, one ranged GET: the unit of memory in flight
PARTS_IN_FLIGHT = 8  # parts uploaded (or ranges fetched) at once


@dataclass(frozen=True)
class ObjectInfo:
    """One object of a listing: its URL, size, ETag and last-modified time."""

    url: str
    size: int
    etag: str
    mtime: float


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
        return PermissionError(errno.EACCES, f"{text}: access denied (check the credentials: AWS_ACCESS_KEY_ID/"
                                             "AWS_SECRET_ACCESS_KEY, AWS_PROFILE or configure_s3(), and the bucket's "
                                             "policy)", url)
    if code in ("QuotaExceeded", "EntityTooLarge") or status == 507:
        return OSError(errno.ENOSPC, text, url)
    return OSError(errno.EIO, text, url)


def _no_continue_for_empty_bodies(params: Dict[str, Any], **kwargs: Any) -> None:
    """No ``Expect: 100-continue`` on an empty body: servers answer such a
    request at once, and botocore then reads that answer as the next
    request's (here: a 60 s stall and a retry after every empty object)."""
    from botocore.utils import determine_content_length

    body = params.get("body")
    if "Expect" in params.get("headers", {}) and body is not None and determine_content_length(body) == 0:
        del params["headers"]["Expect"]


class S3Storage:
    """The storage interface for ``s3://`` names, over one boto3 client
    (thread-safe; created on first use)."""

    def __init__(self, **storage_options: Any) -> None:
        options = dict(storage_options)
        self.part_bytes = int(options.pop("part_bytes", PART_BYTES))
        self.parts_in_flight = int(options.pop("parts_in_flight", PARTS_IN_FLIGHT))
        if not 5 << 20 <= self.part_bytes <= 5 << 30 or not 1 <= self.parts_in_flight <= 256:
            raise InvalidArgumentError(f"part_bytes must be 5 MiB..5 GiB and parts_in_flight 1..256, got "
                                       f"{self.part_bytes} and {self.parts_in_flight}")
        self._options = options
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
                    session = boto3.session.Session(profile_name=options.pop("profile_name", None))
                    client = session.client("s3", config=config, **options)
                    # (after botocore's own handler at this level, which adds the header)
                    client.meta.events.register_last("before-call.s3", _no_continue_for_empty_bodies)
                    self._client = client
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
        digest = int.from_bytes(hashlib.sha1(str(meta["ETag"]).encode()).digest()[:8], "little")  # stable across processes
        return (digest, int(meta["ContentLength"]), int(meta["LastModified"].timestamp() * 1e9))

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
        """Delete the object: one request. (Unlike a local delete, a missing
        object is no error: S3 does not say whether there was one, and
        asking first would cost a request and still race.)"""
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
            self._call(dst, "copy_object", Bucket=db, Key=dk, CopySource={"Bucket": sb, "Key": sk})
            return
        except OSError as e:
            if e.errno != errno.EIO:  # (an object over 5 GB needs a multipart copy: below)
                raise
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

    # ---- what object stores add: listings with metadata, streams, ranges into memory --------
    def list_objects(self, prefix: str) -> List[ObjectInfo]:
        """Every object whose URL starts with ``prefix`` (any depth)."""
        bucket, key = split_url(prefix)
        found: List[ObjectInfo] = []
        token: Dict[str, str] = {}
        while True:
            out = self._call(prefix, "list_objects_v2", Bucket=bucket, Prefix=key, **token)
            found += [ObjectInfo(f"{SCHEME}{bucket}/{o['Key']}", int(o["Size"]), str(o["ETag"]),
                                 float(o["LastModified"].timestamp())) for o in out.get("Contents", [])]
            if not out.get("IsTruncated"):
                return found
            token = {"ContinuationToken": out["NextContinuationToken"]}

    def read_into(self, path: str, offset: int, view: memoryview, etag: Optional[str] = None) -> None:
        """Fill ``view`` with the object's bytes from ``offset`` (one ranged
        GET, streamed into the memory given: no copy). ``etag``: only from
        that version of the object (another under the name:
        :class:`ConflictError`). A short object is ``OSError(EIO)``."""
        size = view.nbytes
        if size <= 0:
            return
        bucket, key = split_url(path)
        condition = {"IfMatch": etag} if etag is not None else {}
        out = self._call(path, "get_object", Bucket=bucket, Key=key, Range=f"bytes={offset}-{offset + size - 1}",
                         **condition)
        body = out["Body"]
        at = 0
        try:
            while at < size:
                try:
                    got = body.readinto(view[at:])
                except Exception as e:  # a connection dropped mid-body: the caller may fetch it again
                    raise OSError(errno.EIO, f"{path}: reading bytes {offset + at}.. failed: {e}", path) from e
                if not got:
                    raise OSError(errno.EIO, f"{path}: asked for {size} bytes at {offset}, got {at} "
                                             "(the object is shorter)", path)
                at += got
        finally:
            body.close()

    def read_segments(self, path: str, segments: List[Tuple[int, memoryview]], etag: Optional[str] = None) -> None:
        """Fill each ``(offset, view)`` of ``segments`` (in offset order, not
        overlapping) from one ranged GET spanning them all, streamed into
        the views; the bytes between them are read and dropped (small gaps:
        one request instead of many). Errors as :meth:`read_into`."""
        if len(segments) == 1:
            self.read_into(path, segments[0][0], segments[0][1], etag)
            return
        first, end = segments[0][0], segments[-1][0] + segments[-1][1].nbytes
        bucket, key = split_url(path)
        condition = {"IfMatch": etag} if etag is not None else {}
        out = self._call(path, "get_object", Bucket=bucket, Key=key, Range=f"bytes={first}-{end - 1}", **condition)
        body = out["Body"]
        scratch = memoryview(bytearray(1 << 16))
        at = first
        try:
            for offset, view in segments:
                for target, n in ((None, offset - at), (view, view.nbytes)):
                    got_total = 0
                    while got_total < n:
                        dest = target[got_total:] if target is not None else scratch[:min(len(scratch), n - got_total)]
                        try:
                            got = body.readinto(dest)
                        except Exception as e:
                            raise OSError(errno.EIO, f"{path}: reading bytes {at + got_total}.. failed: {e}", path) from e
                        if not got:
                            raise OSError(errno.EIO, f"{path}: the object ends at {at + got_total}, before {end}", path)
                        got_total += got
                    at += n
        finally:
            body.close()

    def put_stream(self, path: str, pieces: Iterable[Any], total: int, *, part_bytes: Optional[int] = None,
                   in_flight: Optional[int] = None) -> str:
        """Write the object ``path`` from ``pieces`` (buffers whose bytes, in
        order, are the object's ``total`` bytes): one request when it fits
        a part, else a multipart upload of ``part_bytes`` parts, ``in_flight``
        of them at once from a pool of ``in_flight + 1`` reused buffers --
        the memory a stream of any size holds. The object appears whole or
        not at all (an upload that fails is aborted). Returns its ETag.
        (Defaults: the storage's ``part_bytes`` and ``parts_in_flight``.)"""
        part_bytes = self.part_bytes if part_bytes is None else part_bytes
        in_flight = self.parts_in_flight if in_flight is None else in_flight
        if total <= part_bytes:
            data = bytearray(total)
            stream = _Stream(pieces)
            got = stream.fill(memoryview(data))
            if got != total or stream.more():
                raise OSError(errno.EIO, f"{path}: the stream held other than the {total} bytes announced "
                                         f"({got}{'+' if got == total else ''})", path)
            return self.put(path, bytes(data))
        bucket, key = split_url(path)
        upload_id = self._call(path, "create_multipart_upload", Bucket=bucket, Key=key)["UploadId"]
        try:
            parts = self._upload_parts(path, bucket, key, upload_id, _Stream(pieces), total, part_bytes, in_flight)
            out = self._call(path, "complete_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id,
                             MultipartUpload={"Parts": parts})
            return str(out["ETag"])
        except BaseException:
            try:
                self._call(path, "abort_multipart_upload", Bucket=bucket, Key=key, UploadId=upload_id)
            except Exception:
                pass  # left for the store's lifecycle rules or `fastckpt gc`
            raise

    def _upload_parts(self, path: str, bucket: str, key: str, upload_id: str, stream: "_Stream", total: int,
                      part_bytes: int, in_flight: int) -> List[Dict[str, Any]]:
        free = [bytearray(part_bytes) for _ in range(in_flight + 1)]
        running: Dict[Future, Tuple[int, bytearray]] = {}
        etags: Dict[int, str] = {}
        sent = 0

        def send(number: int, data: Any) -> str:
            out = self._call(path, "upload_part", Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                             Body=data)
            return str(out["ETag"])

        def reap(block: bool) -> None:
            if not running:
                return
            done, _ = wait(list(running), return_when=FIRST_EXCEPTION, timeout=None if block else 0)
            for f in done:
                number, buf = running.pop(f)
                etags[number] = f.result()  # raises the part's error
                free.append(buf)

        with ThreadPoolExecutor(max_workers=in_flight, thread_name_prefix="fastckpt-upload") as pool:
            try:
                number = 0
                while sent < total:
                    while not free:
                        reap(True)
                    buf = free.pop()
                    n = stream.fill(memoryview(buf)[:min(part_bytes, total - sent)])
                    if n == 0:
                        break
                    number += 1
                    sent += n
                    running[pool.submit(send, number, buf if n == part_bytes else bytes(buf[:n]))] = (number, buf)
                    reap(False)
                while running:
                    reap(True)
            except BaseException:
                for f in running:
                    f.cancel()
                raise
        if sent != total or stream.more():
            raise OSError(errno.EIO, f"{path}: the stream held other than the {total} bytes announced", path)
        return [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]

    def abort_uploads(self, prefix: str, older_than: float) -> int:
        """Abort the unfinished multipart uploads of keys under ``prefix``
        begun before the time ``older_than``; returns how many."""
        bucket, key = split_url(prefix)
        count = 0
        token: Dict[str, str] = {}
        while True:
            out = self._call(prefix, "list_multipart_uploads", Bucket=bucket, Prefix=key, **token)
            for u in out.get("Uploads", []):
                if u["Initiated"].timestamp() < older_than:
                    try:
                        self._call(prefix, "abort_multipart_upload", Bucket=bucket, Key=u["Key"],
                                   UploadId=u["UploadId"])
                        count += 1
                    except FileNotFoundError:
                        pass
            if not out.get("IsTruncated"):
                return count
            token = {"KeyMarker": out.get("NextKeyMarker", ""), "UploadIdMarker": out.get("NextUploadIdMarker", "")}


class _Stream:
    """Buffers read in order, cut to fill destinations of any size."""

    def __init__(self, pieces: Iterable[Any]) -> None:
        self._pieces = iter(pieces)
        self._rest: Optional[memoryview] = None

    def fill(self, dest: memoryview) -> int:
        """Copy the next bytes into ``dest`` until it is full or the pieces
        end (a piece that does not fit is split); returns the bytes copied."""
        at, size = 0, dest.nbytes
        while at < size:
            if self._rest is None:
                piece = next(self._pieces, None)
                if piece is None:
                    break
                self._rest = memoryview(piece).cast("B")
            n = min(self._rest.nbytes, size - at)
            dest[at:at + n] = self._rest[:n]
            at += n
            self._rest = self._rest[n:] if n < self._rest.nbytes else None
        return at

    def more(self) -> bool:
        """True if any non-empty piece is left."""
        while self._rest is None or not self._rest.nbytes:
            piece = next(self._pieces, None)
            if piece is None:
                return False
            self._rest = memoryview(piece).cast("B")
        return True


_DEFAULT: Optional[S3Storage] = None
_DEFAULT_LOCK = threading.Lock()
_CURRENT: "contextvars.ContextVar[Optional[S3Storage]]" = contextvars.ContextVar("fastckpt_s3", default=None)
_BY_OPTIONS: Dict[str, S3Storage] = {}


def default_s3() -> S3Storage:
    """The :class:`S3Storage` for ``s3://`` names here: the one a call's
    ``storage_options=`` chose (:func:`using_storage`), else the process's,
    configured from the environment (``AWS_ENDPOINT_URL``,
    ``AWS_ACCESS_KEY_ID``...) or by :func:`configure`."""
    current = _CURRENT.get()
    if current is not None:
        return current
    global _DEFAULT
    with _DEFAULT_LOCK:
        if _DEFAULT is None:
            _DEFAULT = S3Storage()
        return _DEFAULT


@contextlib.contextmanager
def using_storage(storage_options: Optional[Mapping[str, Any]]) -> Iterator[None]:
    """Within: ``s3://`` names use a storage made from ``storage_options``
    (one per distinct set of options, kept for the process), as
    :func:`configure` takes them; None or empty: no change."""
    if not storage_options:
        yield
        return
    if not isinstance(storage_options, Mapping):
        raise InvalidArgumentError(f"storage_options must be a dict, got {type(storage_options).__name__}")
    key = repr(sorted((str(k), repr(v)) for k, v in storage_options.items()))
    with _DEFAULT_LOCK:
        storage = _BY_OPTIONS.get(key)
    if storage is None:
        storage = _checked(dict(storage_options))
        with _DEFAULT_LOCK:
            storage = _BY_OPTIONS.setdefault(key, storage)
    token = _CURRENT.set(storage)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def _checked(storage_options: Dict[str, Any]) -> S3Storage:
    """A storage made from the options, its client made now (no request is
    sent), so that a bad argument fails here, not at the first save."""
    try:
        storage = S3Storage(**storage_options)
        storage.client
    except TypeError as e:
        raise InvalidArgumentError(f"storage options: {e}") from None
    except Exception as e:
        if type(e).__module__.startswith(("botocore", "boto3")):
            raise InvalidArgumentError(f"storage options: {e}") from None
        raise
    return storage


def configure(**storage_options: Any) -> None:
    """Use these boto3 client arguments (``endpoint_url``,
    ``aws_access_key_id``, ``aws_secret_access_key``, ``region_name``,
    ``profile_name``..., ``config``: botocore ``Config`` arguments) for every
    ``s3://`` name from now on; no arguments: back to the environment's."""
    global _DEFAULT
    storage = _checked(dict(storage_options))
    with _DEFAULT_LOCK:
        _DEFAULT = storage

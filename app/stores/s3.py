"""The S3 store: objects in a bucket under a prefix, on AWS S3 or anything that speaks its API
(SeaweedFS, MinIO, Ceph RGW, GCS's XML API), through boto3.

Writes are atomic the way S3 makes them: an object appears whole when its PUT (or the completion of its
multipart upload) succeeds, and an aborted multipart upload leaves nothing listed. A writer sends parts of
``part_bytes`` from a small pool of threads while the caller keeps writing, with at most ``IN_FLIGHT`` parts
in memory: an upload of any size holds a few parts, never the file. The sha256 is computed as the bytes pass.
"""

from __future__ import annotations

import hashlib
import threading
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any, BinaryIO, cast
from urllib.parse import quote

from botocore.exceptions import ClientError

from app.store import CHUNK_BYTES, ObjectInfo, ObjectMissing, StoredObject, chunks_of, validate_key

IN_FLIGHT = 4  # parts uploading at once, and the most a writer holds in memory (with the one it fills)
DELETE_BATCH = 1000  # DeleteObjects takes at most 1000 keys


def _missing(error: Exception) -> bool:
    if not isinstance(error, ClientError):
        return False
    code = str(error.response.get("Error", {}).get("Code", ""))
    return code in {"404", "NoSuchKey", "NotFound"}


def _store_time(answer: dict[str, Any]) -> datetime:
    """The time an answer of the store was sent (its Date header), else this host's."""
    sent = answer.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        when = parsedate_to_datetime(sent)
    except (TypeError, ValueError):
        return datetime.now(UTC)
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


class _S3Writer:
    """An object being written: one PUT when it is small, a multipart upload otherwise."""

    def __init__(self, store: S3ArtifactStore, key: str) -> None:
        self._store = store
        self._key = key
        self._name = store.object_name(key)
        self._buffer = bytearray()
        self._hash = hashlib.sha256()
        self._size = 0
        self._upload_id: str | None = None
        self._parts: list[Future[dict[str, Any]]] = []
        self._slots = threading.BoundedSemaphore(IN_FLIGHT)
        self._pool: ThreadPoolExecutor | None = None
        self._done = False

    @property
    def size(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        self._hash.update(chunk)
        self._size += len(chunk)
        self._buffer += chunk
        while len(self._buffer) >= self._store.part_bytes:
            part = bytes(self._buffer[: self._store.part_bytes])
            del self._buffer[: self._store.part_bytes]
            self._send_part(part)

    def _send_part(self, body: bytes) -> None:
        client, bucket = self._store.client, self._store.bucket
        if self._upload_id is None:
            self._upload_id = client.create_multipart_upload(Bucket=bucket, Key=self._name)["UploadId"]
            self._pool = ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="s3-part")
        for part in self._parts:  # a part that failed fails the write now, not at commit
            if part.done() and part.exception() is not None:
                part.result()
        self._slots.acquire()  # back-pressure: the caller waits while IN_FLIGHT parts are on the wire
        number = len(self._parts) + 1
        assert self._pool is not None
        self._parts.append(self._pool.submit(self._upload_part, number, body))

    def _upload_part(self, number: int, body: bytes) -> dict[str, Any]:
        try:
            answer = self._store.client.upload_part(
                Bucket=self._store.bucket, Key=self._name, UploadId=self._upload_id, PartNumber=number, Body=body
            )
            return {"PartNumber": number, "ETag": answer["ETag"]}
        finally:
            self._slots.release()

    def commit(self) -> StoredObject:
        client, bucket = self._store.client, self._store.bucket
        try:
            if self._upload_id is None:
                client.put_object(Bucket=bucket, Key=self._name, Body=bytes(self._buffer))
            else:
                if self._buffer:
                    self._send_part(bytes(self._buffer))
                parts = [part.result() for part in self._parts]
                client.complete_multipart_upload(
                    Bucket=bucket, Key=self._name, UploadId=self._upload_id, MultipartUpload={"Parts": parts}
                )
        except BaseException:
            self.abort()
            raise
        self._buffer = bytearray()
        self._close_pool()
        self._done = True
        return StoredObject(self._key, self._size, self._hash.hexdigest())

    def abort(self) -> None:
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        self._close_pool()
        if self._upload_id is not None:
            self._store.client.abort_multipart_upload(
                Bucket=self._store.bucket, Key=self._name, UploadId=self._upload_id
            )

    def _close_pool(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> _S3Writer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.abort()  # after commit this does nothing


class S3ArtifactStore:
    """Objects under ``s3://bucket/prefix/``. ``client`` is a boto3 S3 client (``s3_client`` builds one)."""

    def __init__(self, client: Any, bucket: str, prefix: str = "", *, part_bytes: int = 8 << 20) -> None:
        if part_bytes < 5 << 20:
            raise ValueError("S3 multipart parts are at least 5 MiB")
        self.client = client
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_bytes = part_bytes

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def object_name(self, key: str) -> str:
        validate_key(key)
        return f"{self.prefix}/{key}" if self.prefix else key

    def writer(self, key: str) -> _S3Writer:
        return _S3Writer(self, key)

    def put(self, key: str, stream: BinaryIO | Iterable[bytes]) -> StoredObject:
        with self.writer(key) as writer:
            for chunk in chunks_of(stream):
                writer.write(chunk)
            return writer.commit()

    def put_file(self, key: str, path: Path) -> StoredObject:
        with path.open("rb") as file:
            return self.put(key, file)

    def open(self, key: str) -> BinaryIO:
        try:
            answer = self.client.get_object(Bucket=self.bucket, Key=self.object_name(key))
        except Exception as error:
            if _missing(error):
                raise ObjectMissing(key) from None
            raise
        return cast(BinaryIO, answer["Body"])  # botocore's StreamingBody: read(n), close, a context manager

    def read_range(self, key: str, start: int, length: int) -> Iterator[bytes]:
        """``length`` bytes from ``start``: one streamed GET for a small range; for a large one, GETs of
        ``part_bytes`` ranges from a small pool, ``IN_FLIGHT`` ahead of the one being sent (the way boto3's
        own downloads reach the store's throughput), yielded in order; memory holds at most those parts."""
        if length <= 0:
            return
        if length <= self.part_bytes:
            yield from self._stream_range(key, start, length)
            return
        ranges = [
            (offset, min(self.part_bytes, start + length - offset))
            for offset in range(start, start + length, self.part_bytes)
        ]
        with ThreadPoolExecutor(IN_FLIGHT, thread_name_prefix="s3-range") as pool:
            pending: deque[Future[bytes]] = deque()
            try:
                for offset, size in ranges:
                    pending.append(pool.submit(self._get_range, key, offset, size))
                    if len(pending) > IN_FLIGHT:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for future in pending:  # the client went away: fetch nothing more
                    future.cancel()

    def _get_range(self, key: str, start: int, length: int) -> bytes:
        """A part, read whole in one call (into one buffer: no chunks to join)."""
        body = self._ranged_body(key, start, length)
        try:
            return cast(bytes, body.read())
        finally:
            body.close()

    def _stream_range(self, key: str, start: int, length: int) -> Iterator[bytes]:
        body = self._ranged_body(key, start, length)
        try:
            yield from body.iter_chunks(CHUNK_BYTES)
        finally:
            body.close()

    def _ranged_body(self, key: str, start: int, length: int) -> Any:
        try:
            answer = self.client.get_object(
                Bucket=self.bucket, Key=self.object_name(key), Range=f"bytes={start}-{start + length - 1}"
            )
        except Exception as error:
            if _missing(error):
                raise ObjectMissing(key) from None
            raise
        return answer["Body"]

    def stat(self, key: str) -> ObjectInfo | None:
        try:
            answer = self.client.head_object(Bucket=self.bucket, Key=self.object_name(key))
        except Exception as error:
            if _missing(error):
                return None
            raise
        return ObjectInfo(key, int(answer["ContentLength"]), answer["LastModified"].timestamp())

    def delete(self, key: str) -> bool:
        existed = self.stat(key) is not None  # S3 answers a DELETE of nothing as a success
        if existed:
            self.client.delete_object(Bucket=self.bucket, Key=self.object_name(key))
        return existed

    def delete_prefix(self, prefix: str) -> None:
        """Delete every object under ``prefix/``."""
        folder = self.object_name(prefix) + "/"
        batch: list[dict[str, str]] = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=folder):
            for item in page.get("Contents", []):
                batch.append({"Key": item["Key"]})
                if len(batch) == DELETE_BATCH:
                    self._delete_batch(batch)
                    batch = []
        if batch:
            self._delete_batch(batch)

    def _delete_batch(self, batch: list[dict[str, str]]) -> None:
        answer = self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        errors = answer.get("Errors") or []
        if errors:
            raise OSError(f"the store did not delete {len(errors)} object(s), first {errors[0]}")

    def move(self, source: str, target: str) -> None:
        """Copy ``source`` to ``target`` inside the store (server side; multipart past 5 GiB), then delete it."""
        copy_source = {"Bucket": self.bucket, "Key": self.object_name(source)}
        self.client.copy(copy_source, self.bucket, self.object_name(target))
        self.client.delete_object(Bucket=self.bucket, Key=self.object_name(source))

    def local_path(self, key: str) -> None:
        return None

    def presigned_url(self, key: str, *, filename: str, expires_seconds: int) -> str:
        params = {
            "Bucket": self.bucket,
            "Key": self.object_name(key),
            "ResponseContentDisposition": f"attachment; filename*=UTF-8''{quote(filename)}",
        }
        return str(self.client.generate_presigned_url("get_object", Params=params, ExpiresIn=expires_seconds))

    def abort_abandoned_writes(self, older_than: timedelta) -> list[str]:
        """Abort the multipart uploads under the store's prefix (the whole bucket without one) begun more
        than ``older_than`` ago: a process killed mid-upload leaves its upload open, its parts invisible to
        every listing but stored, and billed, until it is aborted. The keys they were to become. The age is
        reckoned by the store's own clock (its answer's Date) against the upload's start."""
        folder = f"{self.prefix}/" if self.prefix else ""
        aborted = []
        pages = self.client.get_paginator("list_multipart_uploads").paginate(Bucket=self.bucket, Prefix=folder)
        for page in pages:
            cutoff = _store_time(page) - older_than
            for upload in page.get("Uploads", []):
                if upload["Initiated"] > cutoff:
                    continue
                try:
                    self.client.abort_multipart_upload(
                        Bucket=self.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                    )
                except ClientError as error:  # another process aborted (or completed) it meanwhile
                    if error.response.get("Error", {}).get("Code") != "NoSuchUpload":
                        raise
                aborted.append(str(upload["Key"]).removeprefix(folder))
        return sorted(aborted)

    def check(self) -> None:
        """Raise unless the bucket answers (readiness)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except Exception as error:
            raise OSError(f"{self.url}: {error}") from error

    def create_bucket(self) -> bool:
        """Create the bucket; False when it is there already (then no CreateBucket right is needed)."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return False
        except ClientError as error:
            if not _missing(error) and error.response.get("Error", {}).get("Code") != "NoSuchBucket":
                raise
        region = self.client.meta.region_name
        outside_us_east_1 = region not in (None, "us-east-1")  # where AWS wants no location
        where = {"CreateBucketConfiguration": {"LocationConstraint": region}} if outside_us_east_1 else {}
        try:
            self.client.create_bucket(Bucket=self.bucket, **where)
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                return False
            raise
        return True

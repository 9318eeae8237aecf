"""A download that survives a broken connection and proves what it wrote.

Bytes go to ``<dest>.part``. After a break the next request asks for the rest, ``Range: bytes=<size>-``
with ``If-Range: "<sha256>"`` (the server's ETag): a 206 continues the file, a 200 means the server's file
changed and the part starts over. At the end the part's sha256 must be the one the server sent
(``X-Content-SHA256``) and the one the caller expected, if it named one; otherwise the part is deleted
and ``ChecksumMismatch`` raised. Only a verified file is renamed to ``dest``.

Given the expected sha256 (an artifact list shows it), a part left by an earlier, interrupted run
resumes too: the If-Range makes that safe, and the final check makes it certain.

A server with ``FT_DOWNLOAD_REDIRECT`` answers 302 to a presigned URL of its object store: the download
follows it (without the API key), takes the sha256 from the API's answer and the ETag to resume with from
the store's.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Callable
from pathlib import Path
from typing import IO

import httpx

from app.client.config import Reconnects, Retry
from app.client.errors import ApiError, ChecksumMismatch, ClientError
from app.client.models import Download

CHUNK_BYTES = 1 << 20
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")
_UNSATISFIED_RANGE = re.compile(r"^bytes \*/(\d+)$")

ProgressCallback = Callable[[int, int | None], None]  # (bytes written so far, total bytes if known)


class PartialDownload:
    """The state of one download: the part file, how much of it is written and hashed, what to ask next."""

    def __init__(self, dest: Path, retry: Retry, sha256: str | None = None) -> None:
        self.dest = dest
        self.part = dest.with_name(dest.name + ".part")
        self.expected = sha256.lower() if sha256 else None
        self.etag = f'"{self.expected}"' if self.expected else None
        self.announced: str | None = None  # the sha256 the server sent with the file
        self.total: int | None = None
        self.offset = 0
        self.resumed = 0
        self.reconnects = Reconnects(retry, f"the download of {dest.name}")
        self._hash = hashlib.sha256()
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        if self.part.exists() and self.expected:
            self._hash_existing_part()  # an earlier run's bytes, resumable under the same ETag
        else:
            self._restart()

    def _hash_existing_part(self) -> None:
        with self.part.open("rb") as file:
            while chunk := file.read(CHUNK_BYTES):
                self._hash.update(chunk)
                self.offset += len(chunk)

    def _restart(self) -> None:
        self.part.unlink(missing_ok=True)  # written again from the first byte (``open`` creates it)
        self.offset = 0
        self._hash = hashlib.sha256()

    @property
    def complete(self) -> bool:
        return self.total is not None and self.offset == self.total

    def headers(self) -> dict[str, str]:
        headers = {"Accept-Encoding": "identity", "Accept": "*/*"}  # byte ranges of the file itself
        if self.offset > 0 and self.etag:
            headers["Range"] = f"bytes={self.offset}-"
            headers["If-Range"] = self.etag
        return headers

    def begin(self, response: httpx.Response) -> bool:
        """Take a response's status and headers: True when its body is to be written; False when there
        is nothing to read (the part already holds the whole file, or it must start over)."""
        status = response.status_code
        if status == 416:
            return self._unsatisfiable(response.headers.get("content-range", ""))
        if status >= 400:
            raise ApiError.from_response(response)
        api = response.history[0] if response.history else response  # the API's 302, when it redirected
        self.announced = (api.headers.get("x-content-sha256") or "").lower() or _etag_sha(api)
        self.etag = response.headers.get("etag") or self.etag  # the If-Range the answering server knows
        if status == 206:
            match = _CONTENT_RANGE.match(response.headers.get("content-range", ""))
            if match is None or int(match.group(1)) != self.offset:
                self._restart()  # not the range asked for: ask for the whole file
                return False
            self.total = int(match.group(3))
            self.resumed += 1 if self.offset else 0
            return True
        if status != 200:
            raise ClientError(f"unexpected {status} for a download of {response.request.url}")
        if self.offset:
            self._restart()  # the whole file came back: the part was of another version
        length = response.headers.get("content-length")
        self.total = int(length) if length is not None and length.isdigit() else None
        return True

    def _unsatisfiable(self, content_range: str) -> bool:
        match = _UNSATISFIED_RANGE.match(content_range)
        if match is not None and int(match.group(1)) == self.offset:
            self.total = self.offset  # the part is the whole file, from an earlier run: check it and finish
            self.announced = self.expected
        else:
            self._restart()
        return False

    def open(self) -> IO[bytes]:
        return self.part.open("ab")

    def write(self, file: IO[bytes], chunk: bytes) -> None:
        file.write(chunk)
        self._hash.update(chunk)
        self.offset += len(chunk)
        self.reconnects.progressed()

    def body_ended(self) -> None:
        """The server sent its whole body: a file without a Content-Length is complete now."""
        if self.total is None:
            self.total = self.offset

    def finish(self) -> Download:
        """Check the sha256 and move the part into place; delete it and raise on a mismatch."""
        actual = self._hash.hexdigest()
        for expected in {self.announced, self.expected} - {None}:
            if expected != actual:
                with contextlib.suppress(FileNotFoundError):
                    self.part.unlink()
                raise ChecksumMismatch(str(self.dest), str(expected), actual)
        self.part.replace(self.dest)
        return Download(path=self.dest, bytes=self.offset, sha256=actual, resumed=self.resumed)


def download_target(dest: str | Path, default_name: str) -> Path:
    """``dest``, or ``default_name`` inside it when it is a folder."""
    path = Path(dest)
    return path / default_name if path.is_dir() else path


def _etag_sha(response: httpx.Response) -> str | None:
    etag = response.headers.get("etag", "").strip().removeprefix("W/").strip('"').lower()
    return etag if re.fullmatch(r"[0-9a-f]{64}", etag) else None

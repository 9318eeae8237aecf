"""A multipart upload streamed into the artifact store, never held whole in memory.

``python-multipart``'s streaming parser reads the request body chunk by chunk as the server receives
it; the file part's bytes go to the store's writer (which hashes them as it writes) in blocks of at most
``FLUSH_BYTES``, from a thread, so the event loop never waits on the disk. The size limit is enforced as
bytes arrive: past it, reading stops, the partial file is deleted, and the answer is a 413.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio.to_thread
from fastapi import Request
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from app.errors import PayloadTooLarge, ServiceError, Unprocessable, UnsupportedMediaType
from app.store import ArtifactStore, ObjectWriter, StoredObject

FLUSH_BYTES = 1 << 20
FIELD_MAX_BYTES = 1024  # the `name` field and any other small field
FIELDS_MAX_BYTES = 64 * 1024  # all non-file parts together
MULTIPART_SLACK_BYTES = 1 << 20  # boundaries and part headers around the file, for the Content-Length check

UPLOAD_REQUEST_BODY: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "title": "DatasetUpload",
                    "required": ["file"],
                    "properties": {
                        "file": {
                            "type": "string",
                            "format": "binary",
                            "description": "A .zip, .tar or .tar.gz/.tgz/.tar.xz in ImageFolder layout: "
                            "train/<class>/<image> (with optional val/ and test/) or <class>/<image>.",
                        },
                        "name": {"type": "string", "maxLength": 200, "description": "Default: the file's name."},
                    },
                }
            }
        },
    }
}


@dataclass
class Upload:
    stored: StoredObject
    filename: str
    name: str | None
    fields: dict[str, str] = field(default_factory=dict)  # the other small text fields (purpose...)


@dataclass
class _Part:
    form_field: str | None = None
    filename: str | None = None
    header_field: bytearray = field(default_factory=bytearray)
    header_value: bytearray = field(default_factory=bytearray)
    headers: dict[str, bytes] = field(default_factory=dict)


class _UploadReader:
    def __init__(self, store: ArtifactStore, key_for: Callable[[str], str], max_bytes: int) -> None:
        self.store = store
        self.key_for = key_for
        self.max_bytes = max_bytes
        self.part = _Part()
        self.writer: ObjectWriter | None = None
        self.filename: str | None = None
        self.file_bytes = 0
        self.pending = bytearray()  # file bytes not yet handed to the writer: at most FLUSH_BYTES + one chunk
        self.fields: dict[str, bytearray] = {}
        self.field_bytes = 0
        self.in_file = False
        self.ended = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda data, start, end: self.part.header_field.extend(data[start:end]),
            "on_header_value": lambda data, start, end: self.part.header_value.extend(data[start:end]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self.part = _Part()

    def _header_end(self) -> None:
        self.part.headers[self.part.header_field.decode("latin-1").lower()] = bytes(self.part.header_value)
        self.part.header_field.clear()
        self.part.header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self.part.headers.get("content-disposition", b""))
        self.part.form_field = options.get(b"name", b"").decode("utf-8", "replace")
        raw_filename = options.get(b"filename")
        self.part.filename = raw_filename.decode("utf-8", "replace") if raw_filename is not None else None
        if self.part.form_field != "file":
            return
        if self.writer is not None:
            raise Unprocessable("send one archive per upload (the multipart body has two 'file' parts)", param="file")
        self.filename = (self.part.filename or "upload").strip() or "upload"
        self.writer = self.store.writer(self.key_for(self.filename))
        self.in_file = True

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        size = end - start
        if self.in_file:
            self.file_bytes += size
            if self.file_bytes > self.max_bytes:
                raise _too_large(self.max_bytes)
            self.pending.extend(data[start:end])
            return
        self.field_bytes += size
        value = self.fields.setdefault(self.part.form_field or "", bytearray())
        if len(value) + size > FIELD_MAX_BYTES or self.field_bytes > FIELDS_MAX_BYTES:
            raise Unprocessable(f"form field {self.part.form_field!r} is too long", param=self.part.form_field or None)
        value.extend(data[start:end])

    def _part_end(self) -> None:
        self.in_file = False

    def _end(self) -> None:
        self.ended = True

    async def flush(self, force: bool = False) -> None:
        if self.writer is not None and self.pending and (force or len(self.pending) >= FLUSH_BYTES):
            block = bytes(self.pending)
            self.pending.clear()
            await anyio.to_thread.run_sync(self.writer.write, block)

    def name_field(self) -> str | None:
        raw = self.fields.get("name")
        if raw is None:
            return None
        try:
            name = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            raise Unprocessable("the name field is not UTF-8 text", param="name") from None
        if len(name) > 200:
            raise Unprocessable("name: at most 200 characters", param="name")
        return name or None

    def text_fields(self) -> dict[str, str]:
        return {name: raw.decode("utf-8", "replace") for name, raw in self.fields.items() if name != "name"}


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the archive is larger than this server accepts ({max_bytes} bytes; FT_MAX_UPLOAD_BYTES)", param="file"
    )


def _boundary(request: Request) -> bytes:
    content_type, options = parse_options_header(request.headers.get("content-type"))
    if content_type != b"multipart/form-data" or not options.get(b"boundary"):
        raise UnsupportedMediaType(
            "upload the archive as multipart/form-data with a 'file' field (curl -F file=@data.zip)"
        )
    return options[b"boundary"]


def _check_declared_length(request: Request, max_bytes: int) -> None:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes + MULTIPART_SLACK_BYTES:
        raise _too_large(max_bytes)  # refused before reading a byte


async def receive_upload(
    request: Request, store: ArtifactStore, key_for: Callable[[str], str], max_bytes: int
) -> Upload:
    """Stream the request's multipart body: the ``file`` part into the store (under ``key_for(filename)``),
    the small ``name`` field into memory. Anything wrong deletes what was written."""
    boundary = _boundary(request)
    _check_declared_length(request, max_bytes)
    reader = _UploadReader(store, key_for, max_bytes)
    try:
        parser = MultipartParser(boundary, reader.callbacks())  # type: ignore[arg-type]
        async for chunk in request.stream():
            parser.write(chunk)
            await reader.flush()
        parser.finalize()
        if not reader.ended:
            raise ServiceError("the multipart body ended before its closing boundary", code="invalid_multipart")
        if reader.writer is None or reader.filename is None:
            raise Unprocessable(
                "the upload has no 'file' part: send the archive as the form field 'file'", param="file"
            )
        if reader.file_bytes == 0:
            raise Unprocessable("the uploaded file is empty", param="file")
        name = reader.name_field()
        await reader.flush(force=True)
        stored = await anyio.to_thread.run_sync(reader.writer.commit)
    except FormParserError as error:
        await _abort(reader)
        raise ServiceError(f"malformed multipart body: {error}", code="invalid_multipart") from None
    except BaseException:
        await _abort(reader)
        raise
    return Upload(stored=stored, filename=reader.filename, name=name, fields=reader.text_fields())


async def _abort(reader: _UploadReader) -> None:
    if reader.writer is not None:
        await anyio.to_thread.run_sync(reader.writer.abort)

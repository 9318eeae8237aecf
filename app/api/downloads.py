"""Downloads of a job's artifacts: ``GET /v1/jobs/{id}/artifacts/{name}`` and ``GET /v1/jobs/{id}/weights``.

The file streams from the store in chunks (memory stays flat whatever its size), with its
``Content-Length``, an ``ETag`` of its sha256, and single HTTP ranges (206) so that a broken download
resumes where it stopped. ``If-None-Match`` answers 304; an ``If-Range`` that does not match sends the
whole file. With ``FT_DOWNLOAD_REDIRECT=true`` and an object store, the answer is instead a 302 to a
short-lived presigned URL of the object (the same headers say its size and sha256), and the bytes never pass
through the API; the Python client and the CLI follow it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Path, Request, Response
from fastapi.responses import StreamingResponse
from starlette.concurrency import iterate_in_threadpool

from app.api.deps import CallerDep, SessionDep, SettingsDep, StoreDep
from app.api.errors import error_responses
from app.db.models import Artifact
from app.errors import NotFound
from app.repositories import job_records
from app.services import jobs
from app.settings import Settings
from app.store import ArtifactStore
from training import artifacts

router = APIRouter(prefix="/v1/jobs", tags=["downloads"])

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")
SEND_BYTES = 1 << 20  # the most one ASGI message (one write to the socket) carries

DOWNLOAD_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"description": "The whole file", "content": {"application/octet-stream": {}}},
    206: {"description": "The requested byte range", "content": {"application/octet-stream": {}}},
    302: {"description": "FT_DOWNLOAD_REDIRECT: the file is at the presigned URL in Location"},
    304: {"description": "Not modified (If-None-Match matched the ETag)"},
    416: {"description": "The range is outside the file"},
    **error_responses(404),
}


def parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end inclusive) of a single ``bytes=`` range; None for no usable range (send it all);
    "unsatisfiable" for a range outside the file."""
    if not header:
        return None
    match = _RANGE.match(header.strip())
    if match is None:
        return None  # several ranges, or another unit: RFC 9110 lets a server send the whole file
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # the last N bytes
        length = int(last)
        if length == 0:
            return "unsatisfiable"
        return max(size - length, 0), size - 1
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        return "unsatisfiable"
    return start, end


def _redirect(store: ArtifactStore, settings: Settings, artifact: Artifact, filename: str) -> str | None:
    if not settings.download_redirect:
        return None
    return store.presigned_url(artifact.store_key, filename=filename, expires_seconds=settings.download_url_seconds)


def file_response(
    request: Request, store: ArtifactStore, settings: Settings, artifact: Artifact, filename: str
) -> Response:
    etag = f'"{artifact.sha256}"'
    size = artifact.bytes
    headers = {
        "ETag": etag,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{filename}"',
        "X-Content-SHA256": artifact.sha256,
    }
    if etag in {tag.strip() for tag in request.headers.get("if-none-match", "").split(",")}:
        return Response(status_code=304, headers=headers)
    location = _redirect(store, settings, artifact, filename)
    if location is not None:  # Range and If-Range go along with the client to the store
        headers["Content-Length"] = "0"
        headers["Cache-Control"] = "no-store"  # the URL expires
        return Response(status_code=302, headers={**headers, "Location": location})
    wanted = parse_range(request.headers.get("range"), size)
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != etag:
        wanted = None  # the client's partial copy is of another file: send the whole new one
    if wanted == "unsatisfiable":
        return Response(status_code=416, headers={**headers, "Content-Range": f"bytes */{size}"})
    start, end = wanted if isinstance(wanted, tuple) else (0, size - 1)
    length = end - start + 1 if size else 0
    headers["Content-Length"] = str(length)
    status = 200
    if isinstance(wanted, tuple):
        status = 206
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
    if request.method == "HEAD":
        return Response(status_code=status, headers=headers)
    body = _in_slices(store.read_range(artifact.store_key, start, length))
    return StreamingResponse(body, status_code=status, headers=headers, media_type="application/octet-stream")


async def _in_slices(blocks: Iterator[bytes]) -> AsyncIterator[memoryview]:
    """The store's blocks (a part of an S3 object, 8 MiB, or a MiB of a file) read in a worker thread, one
    thread hop a block, and sent in slices of SEND_BYTES without copying them: a whole part in one write
    would be copied into the socket transport's buffer, and what the socket did not take at once copied
    again. A client gone mid-download closes the store's reader in a thread too (an S3 reader waits there
    for the parts it was fetching), never on the event loop."""
    try:
        async for block in iterate_in_threadpool(blocks):
            view = memoryview(block)
            for offset in range(0, len(view), SEND_BYTES):
                yield view[offset : offset + SEND_BYTES]
    finally:
        close = getattr(blocks, "close", None)
        if close is not None:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(close)


def _artifact(session: SessionDep, project_id: str, job_id: str, name: str) -> Artifact:
    job = jobs.get_job(session, project_id, job_id)
    artifact = job_records.artifact(session, job.id, name)
    if artifact is None:
        raise NotFound(f"job {job_id} has no artifact {name!r}", param="name")
    return artifact


@router.get(
    "/{job_id}/artifacts/{name}",
    summary="Download one of a job's artifacts",
    responses=DOWNLOAD_RESPONSES,
    response_class=Response,
)
def download_artifact(
    job_id: Annotated[str, Path(max_length=64)],
    name: Annotated[str, Path(max_length=200)],
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
) -> Response:
    """The file, resumable with Range requests; its ETag is its sha256."""
    return file_response(request, store, settings, _artifact(session, caller.project_id, job_id, name), name)


@router.get(
    "/{job_id}/weights",
    summary="Download a job's fine-tuned weights (safetensors)",
    responses=DOWNLOAD_RESPONSES,
    response_class=Response,
)
def download_weights(
    job_id: Annotated[str, Path(max_length=64)],
    request: Request,
    caller: CallerDep,
    session: SessionDep,
    store: StoreDep,
    settings: SettingsDep,
) -> Response:
    """The final weights of a succeeded job (``model.safetensors``); see its model card, ``model.json``."""
    artifact = _artifact(session, caller.project_id, job_id, artifacts.WEIGHTS)
    return file_response(request, store, settings, artifact, f"{job_id}.safetensors")


# HEAD answers the same headers without the body (a client sizing a download); left out of the schema.
router.add_api_route("/{job_id}/artifacts/{name}", download_artifact, methods=["HEAD"], include_in_schema=False)
router.add_api_route("/{job_id}/weights", download_weights, methods=["HEAD"], include_in_schema=False)

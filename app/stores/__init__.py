"""The artifact store the settings name: ``FT_STORE_URL`` is ``file:///path`` (a folder, the embedded
default) or ``s3://bucket/prefix`` (an S3-compatible object store, through boto3).

boto3, botocore and ``app.stores.s3`` are imported inside the functions that need them: boto3 takes about a
second to import, and the embedded mode (a folder store) and the CLI never need it."""

from __future__ import annotations

import functools
import logging
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from app.settings import Settings
from app.store import ArtifactStore, LocalArtifactStore
from app.stores.cache import FetchCache

log = logging.getLogger(__name__)

_SESSION_LOCK = threading.Lock()
ABANDONED_CHECK_SECONDS = 3600.0  # how often a process looks for abandoned writes
_abandoned_checked: dict[str, float] = {}  # store URL -> time.monotonic() of this process's last look
_ABANDONED_LOCK = threading.Lock()


class StoreUrlError(ValueError):
    """FT_STORE_URL names no store this service knows."""


def store_for(settings: Settings) -> ArtifactStore:
    url = settings.store_location
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost") or not parts.path.startswith("/"):
            raise StoreUrlError(f"FT_STORE_URL={url!r}: a folder is file:///absolute/path")
        return LocalArtifactStore(Path(unquote(parts.path)))
    if parts.scheme == "s3":
        if not parts.netloc:
            raise StoreUrlError(f"FT_STORE_URL={url!r}: name the bucket, s3://bucket/prefix")
        from app.stores.s3 import S3ArtifactStore

        prefix = parts.path.strip("/")
        return S3ArtifactStore(s3_client(settings), parts.netloc, prefix, part_bytes=settings.s3_part_bytes)
    raise StoreUrlError(f"FT_STORE_URL={url!r}: use file:///path or s3://bucket/prefix")


def s3_client(settings: Settings) -> Any:
    """A boto3 S3 client from the settings; whatever they leave unset, boto3 takes from AWS's own
    environment variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ENDPOINT_URL,
    AWS_PROFILE) and its credential chain."""
    from botocore.config import Config

    secret = settings.s3_secret_access_key.get_secret_value() if settings.s3_secret_access_key else None
    config = Config(
        signature_version="s3v4",
        retries={"mode": "standard", "max_attempts": 5},
        max_pool_connections=32,
        # path-style URLs (http://host:8333/bucket/key) for a gateway named by its endpoint; AWS picks its own
        s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto"},
    )
    with _SESSION_LOCK:  # a boto3 session is not thread-safe; its clients are
        return _boto3_session().client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret,
            config=config,
        )


def _boto3_session() -> Any:
    """A fresh boto3 session (credentials resolved anew) sharing one loader of the S3 service model per
    process: loading it takes half a second, and every store built from settings would pay it again."""
    import boto3
    import botocore.session

    core = botocore.session.get_session()
    core.register_component("data_loader", _shared_loader())
    return boto3.session.Session(botocore_session=core)


@functools.cache
def _shared_loader() -> Any:
    import botocore.loaders

    return botocore.loaders.create_loader()


def cache_for(settings: Settings) -> FetchCache:
    """This host's cache of objects fetched from a remote store."""
    return FetchCache(settings.cache_path, settings.cache_max_bytes)


def create_bucket(settings: Settings, *, wait_seconds: float = 60.0) -> bool:
    """Create the store's bucket (its folder, for file://), retrying while the store does not answer or
    is not ready yet (a gateway starting beside this one-shot). True when it was created, False when it
    was there."""
    found = store_for(settings)
    if isinstance(found, LocalArtifactStore):
        existed = found.root.is_dir()
        found.check()
        return not existed
    from app.stores.s3 import S3ArtifactStore

    assert isinstance(found, S3ArtifactStore)
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            return found.create_bucket()
        except Exception as error:
            if time.monotonic() >= deadline:
                raise OSError(f"{found.url}: cannot create the bucket: {error}") from error
            time.sleep(1.0)


def abort_abandoned_writes_when_due(store: ArtifactStore, settings: Settings) -> threading.Thread | None:
    """Undo the store's writes that a killed process left unfinished for ``FT_ABANDONED_WRITE_HOURS`` (open
    multipart uploads on S3, temporary files in a folder), at most once an hour per process (the periodic
    sweep calls this every few seconds), in a thread of its own: a slow or absent store never holds up the
    sweep. Any number of processes may do it at once (an upload aborted twice is no harm). The thread
    started, None when it is not time yet."""
    now = time.monotonic()
    with _ABANDONED_LOCK:
        last = _abandoned_checked.get(store.url)
        if last is not None and now - last < ABANDONED_CHECK_SECONDS:
            return None
        _abandoned_checked[store.url] = now
    older_than = timedelta(hours=settings.abandoned_write_hours)
    thread = threading.Thread(
        target=_abort_abandoned, args=(store, older_than), name="store-abandoned-writes", daemon=True
    )
    thread.start()
    return thread


def _abort_abandoned(store: ArtifactStore, older_than: timedelta) -> None:
    try:
        undone = store.abort_abandoned_writes(older_than)
    except Exception:  # housekeeping: logged, and tried again in an hour
        log.warning("%s: could not look for abandoned writes (next look in an hour)", store.url, exc_info=True)
        return
    if undone:
        log.info("%s: undid %d write(s) abandoned for over %s: %s", store.url, len(undone), older_than, undone)

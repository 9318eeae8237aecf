"""Data set queries. Every read for a client is scoped to its project; deleted sets are invisible."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import exists, func, select, update
from sqlalchemy.orm import Session

from app.db.models import Dataset
from app.repositories.pagination import keyset_page
from app.statuses import DatasetStatus


def get(
    session: Session, project_id: str, dataset_id: str, *, for_update: bool = False, for_share: bool = False
) -> Dataset | None:
    """``for_update`` (deletion) waits for and blocks every other lock of the row; ``for_share`` (job creation)
    only for and against deletion: job creations on one data set run side by side, a deletion between them."""
    query = select(Dataset).where(
        Dataset.id == dataset_id, Dataset.project_id == project_id, Dataset.deleted_at.is_(None)
    )
    if for_update or for_share:
        query = query.with_for_update(read=not for_update)  # deletion and job creation serialize on this row
    return session.scalar(query)


def get_any(session: Session, dataset_id: str) -> Dataset | None:
    """A data set by id alone: for the worker, which acts for every project."""
    return session.get(Dataset, dataset_id)


def page(
    session: Session, project_id: str, *, status: DatasetStatus | None, after: str | None, limit: int
) -> tuple[list[Dataset], bool]:
    query = select(Dataset).where(Dataset.project_id == project_id, Dataset.deleted_at.is_(None))
    if status is not None:
        query = query.where(Dataset.status == status)
    return keyset_page(session, query, Dataset.id, after=after, limit=limit)


def add(session: Session, dataset: Dataset) -> None:
    session.add(dataset)
    session.flush()


def archive_holder(session: Session, sha256: str, size: int) -> Dataset | None:
    """A data set, not deleted, whose archive has these bytes; its row locked until the transaction ends
    (a delete of it waits, then sees whoever shares its archive)."""
    query = (
        select(Dataset)
        .where(Dataset.sha256 == sha256, Dataset.bytes == size, Dataset.deleted_at.is_(None))
        .order_by(Dataset.id)
        .limit(1)
        .with_for_update()
    )
    return session.scalar(query)


def archive_in_use(session: Session, store_key: str, *, besides: str) -> bool:
    """Whether a data set other than ``besides``, not deleted, reads the archive at ``store_key``."""
    query = select(exists().where(Dataset.store_key == store_key, Dataset.id != besides, Dataset.deleted_at.is_(None)))
    return bool(session.scalar(query))


def finish_validation(session: Session, dataset_id: str, **values: object) -> bool:
    """validating -> ready or failed, once: a compare-and-set, so a redelivered task changes nothing."""
    result = session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.status == DatasetStatus.VALIDATING)
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def validation_sent_before(session: Session, before: datetime) -> list[str]:
    """Data sets still validating whose task was last sent before ``before`` (or never recorded)."""
    sent = func.coalesce(Dataset.validation_sent_at, Dataset.created_at)
    query = select(Dataset.id).where(
        Dataset.status == DatasetStatus.VALIDATING, Dataset.deleted_at.is_(None), sent < before
    )
    return list(session.scalars(query.order_by(Dataset.id)))


def mark_validation_sent(session: Session, dataset_ids: list[str], when: datetime) -> None:
    session.execute(
        update(Dataset)
        .where(Dataset.id.in_(dataset_ids))
        .values(validation_sent_at=when)
        .execution_options(synchronize_session=False)
    )


def start_validation_attempt(session: Session, dataset_id: str) -> int | None:
    """Count one more validation attempt on a validating data set; its attempts now, or None when it is
    not validating."""
    result = session.execute(
        update(Dataset)
        .where(Dataset.id == dataset_id, Dataset.status == DatasetStatus.VALIDATING)
        .values(validation_attempts=Dataset.validation_attempts + 1)
        .returning(Dataset.validation_attempts)
        .execution_options(synchronize_session=False)
    )
    return result.scalar_one_or_none()

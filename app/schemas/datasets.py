"""Data sets as the API shows them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import BaseModel, Field

from app.clock import unix_seconds
from app.schemas.common import ListPage
from app.statuses import DatasetStatus

if TYPE_CHECKING:  # the schemas import without SQLAlchemy: the client uses them too
    from app.db.models import Dataset as DatasetRow


class DatasetError(BaseModel):
    code: str = Field(description="dataset_invalid (layout, classes, unsafe archive) or dataset_unreadable.")
    message: str
    reasons: list[str] = Field(description="One line per problem, naming the file or folder to fix.")


class Dataset(BaseModel):
    id: str
    object: Literal["dataset"] = "dataset"
    name: str
    status: DatasetStatus
    filename: str = Field(description="The uploaded archive's file name.")
    bytes: int = Field(description="Size of the uploaded archive.")
    sha256: str = Field(description="Of the uploaded archive.")
    class_names: list[str] | None = Field(None, description="In label order; set once ready.")
    counts: dict[str, dict[str, int]] | None = Field(
        None, description="Images per split (train, val, test) and class; set once ready."
    )
    num_images: int | None = None
    skipped_files: list[str] | None = Field(None, description="Files that are not images, left out.")
    error: DatasetError | None = Field(None, description="Why validation failed.")
    created_at: int = Field(description="Unix seconds.")
    validated_at: int | None = None

    @classmethod
    def from_row(cls, row: DatasetRow) -> Dataset:
        error = None
        if row.error_code is not None:
            error = DatasetError(code=row.error_code, message=row.error_message or "", reasons=row.error_reasons or [])
        return cls(
            id=row.id,
            name=row.name,
            status=DatasetStatus(row.status),
            filename=row.filename,
            bytes=row.bytes,
            sha256=row.sha256,
            class_names=row.class_names,
            counts=row.counts,
            num_images=row.num_images,
            skipped_files=row.skipped_files,
            error=error,
            created_at=unix_seconds(row.created_at),
            validated_at=unix_seconds(row.validated_at) if row.validated_at else None,
        )


class DatasetList(ListPage[Dataset]):
    pass


class ClassThumbnails(BaseModel):
    name: str = Field(description="A class, in label order.")
    images: list[str] = Field(description="PNG data URLs of its first few training images.")


class DatasetThumbnails(BaseModel):
    object: Literal["dataset.thumbnails"] = "dataset.thumbnails"
    dataset_id: str
    pixels: int = Field(description="The longer side of a thumbnail at most.")
    classes: list[ClassThumbnails]

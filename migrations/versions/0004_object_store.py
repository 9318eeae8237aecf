"""Data set archives are stored once by content: an index finds the archive of an upload's sha256.

Revision ID: 0004
Revises: 0007
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.create_index(batch.f("ix_datasets_sha256"), ["sha256"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index(batch.f("ix_datasets_sha256"))

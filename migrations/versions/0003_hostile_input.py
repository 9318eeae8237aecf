"""Data sets record their validation attempts and when their validation task was last sent, so that a
validation that keeps dying ends ``failed`` and a lost task is re-sent once per interval, not every sweep.
API keys may expire.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("validation_attempts", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("validation_sent_at", sa.DateTime(timezone=True), nullable=True))
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("expires_at")
    with op.batch_alter_table("datasets") as batch:
        batch.drop_column("validation_sent_at")
        batch.drop_column("validation_attempts")

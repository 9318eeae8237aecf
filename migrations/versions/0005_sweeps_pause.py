"""Jobs can be paused: the statuses ``pausing`` (a running job checkpoints at its next step) and ``paused``.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled")
AFTER = (*BEFORE, "pausing", "paused")


def _status_check(statuses: tuple[str, ...]) -> str:
    return f"status IN ({', '.join(repr(s) for s in statuses)})"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint("status", _status_check(AFTER))


def downgrade() -> None:
    # A paused job cannot be told apart from one that never started: it goes back to queued.
    op.execute("UPDATE jobs SET status = 'queued', owner = NULL, lease_expires_at = NULL WHERE status = 'paused'")
    op.execute("UPDATE jobs SET status = 'running' WHERE status = 'pausing'")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint("status", _status_check(BEFORE))

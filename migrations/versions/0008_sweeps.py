"""Sweeps: the ``sweeps`` table, ``jobs.sweep_id`` and ``jobs.sweep_trial``, the job status ``pruned``, and
(on PostgreSQL) the ``optuna`` schema that Optuna's own tables live in, apart from the service's.

Optuna's RDB storage creates its tables and an ``alembic_version`` table of its own: in the schema
``optuna`` on PostgreSQL (its connections set ``search_path`` to it), in a SQLite file beside the service's
database in the embedded mode (``app.sweeps.study.storage_url``). Neither touches the service's tables.

Revision ID: 0008
Revises: 0006
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BEFORE = ("queued", "running", "cancelling", "succeeded", "failed", "cancelled", "pausing", "paused")
AFTER = (*BEFORE, "pruned")
OPTUNA_SCHEMA = "optuna"


def _status_check(statuses: tuple[str, ...]) -> str:
    return f"status IN ({', '.join(repr(s) for s in statuses)})"


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("project_id", sa.String(length=40), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=True),
        sa.Column("base_spec", sa.JSON(), nullable=False),
        sa.Column("space", sa.JSON(), nullable=False),
        sa.Column("algorithm", sa.String(length=16), nullable=False),
        sa.Column("objective", sa.JSON(), nullable=False),
        sa.Column("max_trials", sa.Integer(), nullable=False),
        sa.Column("max_parallel", sa.Integer(), nullable=False),
        sa.Column("early_stopping", sa.JSON(), nullable=True),
        sa.Column("seed", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(_status_check(("running", "succeeded", "cancelled")), name=op.f("ck_sweeps_status")),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_sweeps_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
    )
    op.create_index(op.f("ix_sweeps_project_id_id"), "sweeps", ["project_id", "id"])
    op.create_index(op.f("ix_sweeps_status"), "sweeps", ["status"])
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("sweep_id", sa.String(length=40), nullable=True))
        batch.add_column(sa.Column("sweep_trial", sa.Integer(), nullable=True))
        batch.create_foreign_key(op.f("fk_jobs_sweep_id_sweeps"), "sweeps", ["sweep_id"], ["id"], ondelete="SET NULL")
        batch.create_index(op.f("ix_jobs_sweep_id_status"), ["sweep_id", "status"])
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint("status", _status_check(AFTER))
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"CREATE SCHEMA IF NOT EXISTS {OPTUNA_SCHEMA}")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP SCHEMA IF EXISTS {OPTUNA_SCHEMA} CASCADE")
    # A pruned trial stopped early on purpose: the closest older status is cancelled.
    op.execute("UPDATE jobs SET status = 'cancelled' WHERE status = 'pruned'")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_constraint(op.f("ck_jobs_status"), type_="check")
        batch.create_check_constraint("status", _status_check(BEFORE))
        batch.drop_index(op.f("ix_jobs_sweep_id_status"))
        batch.drop_constraint(op.f("fk_jobs_sweep_id_sweeps"), type_="foreignkey")
        batch.drop_column("sweep_trial")
        batch.drop_column("sweep_id")
    op.drop_index(op.f("ix_sweeps_status"), table_name="sweeps")
    op.drop_index(op.f("ix_sweeps_project_id_id"), table_name="sweeps")
    op.drop_table("sweeps")

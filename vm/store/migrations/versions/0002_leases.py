"""Leases: who may write a run, until when; runs found by status for the queue."""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("owner", sa.String(255), nullable=False),
        sa.Column("expires_at", sa.Double(), nullable=False),
    )
    op.create_index("runs_status", "runs", ["status", "created_at"])

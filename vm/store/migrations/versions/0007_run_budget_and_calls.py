"""A run's budget over its life, and the call its executor has started: ``runs.spent_s`` keeps the
execution seconds of failed steps a resume drops (``max_seconds`` counts a run's whole life);
``leases.calling`` names the call its holder started (a cancel says when one was under way)."""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"


def upgrade() -> None:
    op.add_column("runs", sa.Column("spent_s", sa.Double()))
    op.add_column("leases", sa.Column("calling", sa.String(255)))

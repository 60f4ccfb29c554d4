"""When each step started (seconds since the epoch): a run's timeline shows steps that ran at the same time."""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"


def upgrade() -> None:
    op.add_column("steps", sa.Column("started_at", sa.Double()))

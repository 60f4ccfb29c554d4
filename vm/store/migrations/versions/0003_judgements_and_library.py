"""Judgements and marks on runs; the plan library."""

import sqlalchemy as sa
from alembic import op

from vm.store.dialects import long_text

revision = "0003"
down_revision = "0002"


def _long() -> sa.types.TypeEngine:
    return long_text()


def upgrade() -> None:
    op.add_column("runs", sa.Column("judgement", _long()))
    op.add_column("runs", sa.Column("score", sa.Double()))
    op.add_column("runs", sa.Column("best_of", sa.String(32)))
    op.create_table(
        "plan_library",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("run_id", sa.String(32)),
        sa.Column("goal", _long(), nullable=False),
        sa.Column("goal_key", _long(), nullable=False),
        sa.Column("metadata", _long()),
        sa.Column("language", sa.String(64)),
        sa.Column("label", _long()),
        sa.Column("tools", _long(), nullable=False),
        sa.Column("plan", _long(), nullable=False),
        sa.Column("reasoning", _long()),
        sa.Column("final_answer", _long()),
        sa.Column("score", sa.Double()),
        sa.Column("embedding", sa.LargeBinary()),
    )
    op.create_index("plan_library_goal", "plan_library", ["goal_key"], mysql_length=255)

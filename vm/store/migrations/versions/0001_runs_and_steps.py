"""Runs and their steps (the schema of stores version 3, before migrations were versioned here)."""

import sqlalchemy as sa
from alembic import op

from vm.store.dialects import long_text

revision = "0001"
down_revision = None


def _long():
    return long_text()


def upgrade() -> None:
    op.create_table(
        "runs",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.Column("updated_at", sa.Double(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("goal", _long()),
        sa.Column("metadata", _long()),
        sa.Column("plan", _long(), nullable=False),
        sa.Column("variables", _long(), nullable=False),
        sa.Column("parent_id", sa.String(32), sa.ForeignKey("runs.id")),
        sa.Column("fork_seq", sa.BigInteger),
        sa.Column("final_answer", _long()),
        sa.Column("error", _long()),
        sa.Column("owner", sa.String(255)),
        sa.Column("steps", sa.Integer, nullable=False, server_default="0"),
        sa.Column("limits", _long()),
        sa.Column("planning", _long()),
        sa.Column("pending", _long()),
        sa.Column("approve_tools", _long()),
    )
    op.create_index("runs_parent", "runs", ["parent_id"])
    op.create_table(
        "steps",
        sa.Column("run_id", sa.String(32), sa.ForeignKey("runs.id"), primary_key=True),
        sa.Column("idx", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("seq_no", sa.BigInteger, nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("tool", sa.String(255)),
        sa.Column("inputs", _long()),
        sa.Column("outputs", _long()),
        sa.Column("result", _long()),
        sa.Column("llm_calls", _long()),
        sa.Column("next_seq", sa.BigInteger),
        sa.Column("duration_s", sa.Double()),
        sa.Column("error", _long()),
    )

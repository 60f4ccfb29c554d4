"""Namespaces: every run and plan-library entry belongs to one (``default`` for those made
before); ``namespaces`` holds the row a quota's admission locks; ``usage`` counts each
namespace's tokens per day."""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"


def upgrade() -> None:
    op.add_column("runs", sa.Column("namespace", sa.String(64), nullable=False, server_default="default"))
    op.create_index("runs_namespace", "runs", ["namespace", "status", "created_at"])
    op.add_column("plan_library", sa.Column("namespace", sa.String(64), nullable=False, server_default="default"))
    op.create_table("namespaces", sa.Column("name", sa.String(64), primary_key=True))
    op.create_table(
        "usage",
        sa.Column("namespace", sa.String(64), primary_key=True),
        sa.Column("day", sa.String(10), primary_key=True),
        sa.Column("tokens", sa.BigInteger, nullable=False, server_default="0"),
    )

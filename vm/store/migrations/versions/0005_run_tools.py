"""Where a run's tools came from (plugin files with their hashes, MCP servers), so that resuming,
forking, approving or replaying it live takes the same tools."""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.add_column("runs", sa.Column("tools", sa.Text().with_variant(mysql.LONGTEXT(), "mysql", "mariadb")))

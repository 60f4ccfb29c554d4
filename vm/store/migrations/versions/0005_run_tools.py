"""Where a run's tools came from (plugin files with their hashes, MCP servers), so that resuming,
forking, approving or replaying it live takes the same tools."""

import sqlalchemy as sa
from alembic import op

from vm.store.dialects import long_text

revision = "0005"
down_revision = "0004"


def upgrade() -> None:
    op.add_column("runs", sa.Column("tools", long_text()))

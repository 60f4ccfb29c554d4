"""Notes on steps: what happened while a step ran that its outcome does not show."""

import sqlalchemy as sa
from alembic import op

from vm.store.dialects import long_text

revision = "0004"
down_revision = "0003"


def upgrade() -> None:
    op.add_column("steps", sa.Column("notes", long_text()))

"""Each item's known object region

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 23:40:00

- items.region: the object's box [x0, y0, x1, y1] in pixels of the file, read from the
  registered folder's regions.json (engine.regions); NULL where it is not known. The simulated
  expert's wrong-region votes and the counterexamples of explanatory feedback read it (issue 25).
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("region", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("items", "region")

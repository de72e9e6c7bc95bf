"""Pool labels registered as a uniform random sample

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 02:30:00

- items.sampled_at_random: the pool image's registered label came with a request that says its
  labeled images are a uniform random sample of the pool (`labels_random`). The audit's shadow
  learner trains on such labels as it does on the control slice's (issue 22): a project that
  starts from a random sample has a random learning curve from its first round.
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("sampled_at_random", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    op.drop_column("items", "sampled_at_random")

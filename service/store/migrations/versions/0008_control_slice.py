"""The random control slice: which queue entries were drawn at random

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 23:00:00

- queue_entries.control: the entry was drawn uniformly from the candidates (config `control`,
  engine.selection.control_slice), not ranked; its `pred` is the guess of the model that chose
  the batch, made before any model trained on the image: with the item's label, the unbiased
  estimate of that model's accuracy (service.core.control). A random cold start's entries are
  control too (random labels, no guess). Entries queued before this revision are not control.
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("queue_entries", sa.Column("control", sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table("queue_entries") as batch:
        batch.drop_column("control")

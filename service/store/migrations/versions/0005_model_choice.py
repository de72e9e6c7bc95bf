"""Projects: the model settings chosen from the images, and which ones the config set

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 08:00:00

- projects.model_choice (JSON, nullable): which of the model keys (model, image_size, channels,
  pretrained, frozen_blocks) the project's config left to camloop ("auto"), and once the first
  images are registered, what was chosen from them and why (engine.model_choice). It cannot live in
  projects.config: that column holds exactly a valid ProjectConfig (strict, no unknown keys).
  Projects stored before this revision get NULL: every setting stays as their config says.
"""
from alembic import op
import sqlalchemy as sa


revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.add_column(sa.Column("model_choice", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("projects") as batch:
        batch.drop_column("model_choice")

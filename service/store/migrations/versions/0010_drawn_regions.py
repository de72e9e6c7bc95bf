"""The region an expert drew in Label Studio, per annotation

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 02:20:00

- labelstudio_annotations.region: the rectangle the expert drew on the image when ticking "the
  model looked at the wrong region", as [x0, y0, x1, y1] in pixels of the file (as items.region);
  NULL: none drawn, or none usable.
- labelstudio_annotations.region_problem: why a drawn rectangle was not used (several drawn, zero
  area, outside the image, rotated, the file unreadable); the annotation's label and vote count.
Per annotation, not in items.region: each expert's drawing stays that expert's (edited or deleted
with the annotation), and the folder's regions.json box stays as it was (issue 25).
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("labelstudio_annotations", sa.Column("region", sa.JSON(), nullable=True))
    op.add_column("labelstudio_annotations", sa.Column("region_problem", sa.Text(), nullable=True))


def downgrade() -> None:
    op.drop_column("labelstudio_annotations", "region_problem")
    op.drop_column("labelstudio_annotations", "region")

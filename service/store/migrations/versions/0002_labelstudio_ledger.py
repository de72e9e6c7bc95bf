"""Label Studio bridge tables: the annotation ledger and the project links

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 12:15:00

The bridge used to create these itself (service.labelstudio.ledger.ensure_tables, still a
safety net); a database made that way already has them, so each is created only if absent.
"""
from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    existing = set(sa.inspect(op.get_bind()).get_table_names())
    if 'labelstudio_annotations' not in existing:
        op.create_table(
            'labelstudio_annotations',
            sa.Column('annotation_id', sa.Integer(), autoincrement=False, nullable=False),
            sa.Column('ls_project_id', sa.Integer(), nullable=False),
            sa.Column('ls_task_id', sa.Integer(), nullable=False),
            sa.Column('project_id', sa.Integer(), nullable=False),
            sa.Column('item_id', sa.Integer(), nullable=False),
            sa.Column('annotator', sa.Integer(), nullable=True),
            sa.Column('label', sa.String(length=200), nullable=True),
            sa.Column('wrong_region', sa.Boolean(), nullable=False),
            sa.Column('skipped', sa.Boolean(), nullable=False),
            sa.Column('problem', sa.Text(), nullable=True),
            sa.Column('round', sa.Integer(), nullable=True),
            sa.Column('updated_at', sa.DateTime(timezone=True), nullable=True),
            sa.Column('seen_at', sa.DateTime(timezone=True), nullable=False),
            sa.PrimaryKeyConstraint('annotation_id'),
        )
        op.create_index('ix_labelstudio_annotations_ls_project_id', 'labelstudio_annotations', ['ls_project_id'])
        op.create_index('ix_labelstudio_annotations_project_id', 'labelstudio_annotations', ['project_id'])
        op.create_index('ix_labelstudio_annotations_item_id', 'labelstudio_annotations', ['item_id'])
    if 'labelstudio_projects' not in existing:
        op.create_table(
            'labelstudio_projects',
            sa.Column('project_id', sa.Integer(), autoincrement=False, nullable=False),
            sa.Column('ls_project_id', sa.Integer(), nullable=False),
            sa.Column('webhook_id', sa.Integer(), nullable=True),
            sa.Column('maximum_annotations', sa.Integer(), nullable=False),
            sa.PrimaryKeyConstraint('project_id'),
            sa.UniqueConstraint('ls_project_id'),
        )


def downgrade() -> None:
    op.drop_table('labelstudio_projects')
    op.drop_index('ix_labelstudio_annotations_item_id', table_name='labelstudio_annotations')
    op.drop_index('ix_labelstudio_annotations_project_id', table_name='labelstudio_annotations')
    op.drop_index('ix_labelstudio_annotations_ls_project_id', table_name='labelstudio_annotations')
    op.drop_table('labelstudio_annotations')

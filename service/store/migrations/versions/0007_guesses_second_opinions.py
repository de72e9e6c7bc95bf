"""The Label Studio bridge: how each guess was shown, and second opinions

Revision ID: 0007
Revises: 0006_model_versions
Create Date: 2026-12-06 16:00:00

- guess_shown: per (project, round, item) queued in Label Studio, the guess, its calibrated
  probability and how it was shown (preselected | shown | hidden; control: hidden by the random
  anchoring share). Read by the anchoring figures and to leave hidden tasks' wrong-region votes out.
- second_opinions: suspicious labels asked again (service.labelstudio.second_opinion): the
  label, cleanlab's quality, the out-of-fold probabilities (a tie-break), who voted before (not
  independent), the task and its overlap, the answer.
Both live on the ledger's MetaData (service.labelstudio.ledger.metadata); this revision creates
them for migrated databases.
"""
from alembic import op
import sqlalchemy as sa


revision = '0007'
down_revision = '0006_model_versions'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "guess_shown",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("pred", sa.String(200), nullable=True),
        sa.Column("p", sa.Float(), nullable=True),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("control", sa.Boolean(), nullable=False),
        sa.UniqueConstraint("project_id", "round", "item_id", name="uq_guess_shown_round_item"),
    )
    op.create_index("ix_guess_shown_project_id", "guess_shown", ["project_id"])
    op.create_table(
        "second_opinions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("label", sa.String(200), nullable=False),
        sa.Column("suggested", sa.String(200), nullable=True),
        sa.Column("quality", sa.Float(), nullable=True),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("pred_probs", sa.JSON(), nullable=False),
        sa.Column("exclude", sa.JSON(), nullable=False),
        sa.Column("ls_task_id", sa.Integer(), nullable=True),
        sa.Column("overlap", sa.Integer(), nullable=False),
        sa.Column("not_independent", sa.Integer(), nullable=False),
        sa.Column("answered_by", sa.Integer(), nullable=True),
        sa.Column("answer", sa.String(200), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("answered_at", sa.DateTime(timezone=True), nullable=True),
        sa.UniqueConstraint("project_id", "item_id", "round", name="uq_second_opinions_item_round"),
    )
    op.create_index("ix_second_opinions_project_id", "second_opinions", ["project_id"])
    op.create_index("ix_second_opinions_item_id", "second_opinions", ["item_id"])


def downgrade() -> None:
    op.drop_index("ix_second_opinions_item_id", "second_opinions")
    op.drop_index("ix_second_opinions_project_id", "second_opinions")
    op.drop_table("second_opinions")
    op.drop_index("ix_guess_shown_project_id", "guess_shown")
    op.drop_table("guess_shown")

"""The background-swap test's report per project and round

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 15:10:00

- swap_reports: a round's background-swap test (engine.swap_test), run by a worker job after the
  round's batch is queued (service.rounds.swap): the report as the job wrote it (per guessed
  class the follow share, its Wilson interval, suspect; the tested item ids) and the classes
  named suspect so far, class → the first round that named it (`named_in_round`). One row per
  project and round.
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "swap_reports",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("project_id", sa.Integer(), sa.ForeignKey("projects.id", ondelete="CASCADE"), nullable=False),
        sa.Column("round", sa.Integer(), nullable=False),
        sa.Column("report", sa.JSON(), nullable=False),
        sa.Column("named_in_round", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.UniqueConstraint("project_id", "round", name="uq_swap_reports_project_round"),
    )


def downgrade() -> None:
    op.drop_table("swap_reports")

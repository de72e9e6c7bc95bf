"""Jobs: worker deaths counted apart from the retries of errors; items found by path

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 12:00:00

- jobs.worker_deaths: how many times the worker running the job died (killed, out of memory,
  machine lost). Such a job is re-run without using one of the retries meant for errors in the
  job itself (CAMLOOP_JOB_RETRIES); CAMLOOP_JOB_MAX_WORKER_DEATHS bounds them apart.
- jobs.retries_left: the retries of errors the job has left, as RQ last reported it.
- items.uri gets an index: the signed-file route serves a file only if it is a registered item,
  and asks by path on every image an expert's browser loads.
"""
from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("worker_deaths", sa.Integer(), nullable=False, server_default="0"))
        batch.add_column(sa.Column("retries_left", sa.Integer(), nullable=True))
    op.create_index("ix_items_uri", "items", ["uri"])


def downgrade() -> None:
    op.drop_index("ix_items_uri", table_name="items")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("retries_left")
        batch.drop_column("worker_deaths")

"""Model versions users name, pin and roll back to; which model scored each round

Revision ID: 0006_model_versions
Revises: 0005
Create Date: 2026-12-04 09:00:00

- model_versions.version: 1, 2, 3, … per project in the order the models were trained (what
  `GET /projects/{pid}/models/{v}` names); existing rows are numbered by round.
- model_versions.pinned (+ pinned_at, pinned_by): the version that scores, pre-labels and
  predicts until unpinned; at most one per project (a partial unique index).
- rounds.scored_by_id: the model version that scored the round's pool (its own, a pinned one, or
  with keep_best_model a better earlier one). NULL for rounds scored before this revision (their
  own model did) and for cold starts.
"""
from alembic import op
import sqlalchemy as sa


revision = '0006_model_versions'
down_revision = '0005'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("version", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("pinned", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("pinned_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("pinned_by", sa.String(length=200), nullable=True))
    # Number the existing versions by round, per project (portable SQL: a correlated count).
    op.execute("UPDATE model_versions SET version = (SELECT COUNT(*) FROM model_versions AS o "
               "WHERE o.project_id = model_versions.project_id AND o.round <= model_versions.round)")
    with op.batch_alter_table("model_versions") as batch:
        batch.alter_column("version", existing_type=sa.Integer(), nullable=False)
        batch.create_unique_constraint("uq_model_versions_project_version", ["project_id", "version"])
    op.create_index("uq_model_versions_one_pinned", "model_versions", ["project_id"], unique=True,
                    sqlite_where=sa.text("pinned"), postgresql_where=sa.text("pinned"))
    with op.batch_alter_table("rounds") as batch:
        batch.add_column(sa.Column("scored_by_id", sa.Integer(), nullable=True))
        batch.create_foreign_key("fk_rounds_scored_by_id_model_versions", "model_versions", ["scored_by_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("rounds") as batch:
        batch.drop_constraint("fk_rounds_scored_by_id_model_versions", type_="foreignkey")
        batch.drop_column("scored_by_id")
    op.drop_index("uq_model_versions_one_pinned", table_name="model_versions")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_constraint("uq_model_versions_project_version", type_="unique")
        batch.drop_column("pinned_by")
        batch.drop_column("pinned_at")
        batch.drop_column("pinned")
        batch.drop_column("version")

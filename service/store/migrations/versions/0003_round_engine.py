"""Round engine: one model version per round, idempotent round starts, train-only rounds, reserves

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 08:00:00

- model_versions gets UNIQUE (project_id, round): two API replicas once both inserted the
  model version of a round. Duplicates already stored are folded into the first one (the
  rounds and labels that point at a duplicate are pointed at the kept row first).
- rounds.idempotency_key (UNIQUE per project): a retried POST .../rounds returns the same round.
- rounds.train_only: a round that trains and evaluates on every label, and queues nothing.
- queue_entries.reserve: the next-ranked images queued after a round's batch.
- projects.config: `pretrained: true` meant "the model's weights where it has them" (a ResNet
  silently started random); that is `null` now, and `true` requires weights. Stored configs
  are rewritten to keep their meaning.
"""
import json

from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    conn = op.get_bind()
    for pid, raw in conn.execute(sa.text("SELECT id, config FROM projects")).all():
        cfg = json.loads(raw) if isinstance(raw, str) else dict(raw or {})
        if cfg.get("pretrained") is True:
            cfg["pretrained"] = None
            conn.execute(sa.text("UPDATE projects SET config = :c WHERE id = :id"), {"c": json.dumps(cfg), "id": pid})
    dups = conn.execute(sa.text(
        "SELECT m.id, k.keep FROM model_versions m JOIN (SELECT project_id, round, MIN(id) AS keep "
        "FROM model_versions GROUP BY project_id, round HAVING COUNT(*) > 1) k "
        "ON m.project_id = k.project_id AND m.round = k.round WHERE m.id <> k.keep")).all()
    for dup, keep in dups:
        for table in ("rounds", "labels"):
            conn.execute(sa.text(f"UPDATE {table} SET model_version_id = :keep WHERE model_version_id = :dup"),
                         {"keep": keep, "dup": dup})
        conn.execute(sa.text("DELETE FROM model_versions WHERE id = :dup"), {"dup": dup})
    with op.batch_alter_table('model_versions') as b:
        b.create_unique_constraint('uq_model_versions_project_round', ['project_id', 'round'])
    with op.batch_alter_table('rounds') as b:
        b.add_column(sa.Column('idempotency_key', sa.String(length=200), nullable=True))
        b.add_column(sa.Column('train_only', sa.Boolean(), nullable=False, server_default=sa.false()))
        b.create_unique_constraint('uq_rounds_project_idempotency_key', ['project_id', 'idempotency_key'])
    with op.batch_alter_table('queue_entries') as b:
        b.add_column(sa.Column('reserve', sa.Boolean(), nullable=False, server_default=sa.false()))


def downgrade() -> None:
    with op.batch_alter_table('queue_entries') as b:
        b.drop_column('reserve')
    with op.batch_alter_table('rounds') as b:
        b.drop_constraint('uq_rounds_project_idempotency_key', type_='unique')
        b.drop_column('train_only')
        b.drop_column('idempotency_key')
    with op.batch_alter_table('model_versions') as b:
        b.drop_constraint('uq_model_versions_project_round', type_='unique')

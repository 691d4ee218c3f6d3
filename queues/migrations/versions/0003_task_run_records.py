"""task runs: tags, state name and state history of the engine's snapshots

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
# NOT NULL columns need a value for rows already there; the defaults go once those have it.
COLUMNS = (
    ('tags', JSON, "'[]'"),
    ('state_name', sa.String(length=40), "''"),
    ('history', JSON, "'[]'"),
)


def upgrade() -> None:
    for name, type_, default in COLUMNS:
        op.add_column('task_runs', sa.Column(name, type_, nullable=False,
                                             server_default=sa.text(default)))
    with op.batch_alter_table('task_runs') as batch:
        for name, _, _ in COLUMNS:
            batch.alter_column(name, server_default=None)


def downgrade() -> None:
    with op.batch_alter_table('task_runs') as batch:
        for name, _, _ in reversed(COLUMNS):
            batch.drop_column(name)

"""flow runs: how the run's process ended and what it used; logs read by id

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-28 14:30:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ('exit_code', sa.Integer()),
    ('exit_signal', sa.Integer()),
    ('cpu_seconds', sa.Float()),
    ('peak_rss_bytes', sa.BigInteger()),
)


def upgrade() -> None:
    for name, type_ in COLUMNS:
        op.add_column('flow_runs', sa.Column(name, type_, nullable=True))
    op.drop_index('ix_logs_flow_run_id_timestamp', table_name='logs')
    op.create_index('ix_logs_flow_run_id_id', 'logs', ['flow_run_id', 'id'])


def downgrade() -> None:
    op.drop_index('ix_logs_flow_run_id_id', table_name='logs')
    op.create_index('ix_logs_flow_run_id_timestamp', 'logs', ['flow_run_id', 'timestamp'])
    with op.batch_alter_table('flow_runs') as batch:
        for name, _ in reversed(COLUMNS):
            batch.drop_column(name)

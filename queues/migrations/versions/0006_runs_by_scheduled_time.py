"""flow runs: an index on scheduled time, for lists of runs newest first

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-19 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f('ix_flow_runs_scheduled_time'), 'flow_runs', ['scheduled_time'])


def downgrade() -> None:
    op.drop_index(op.f('ix_flow_runs_scheduled_time'), table_name='flow_runs')

"""notifications: webhook rules, their deliveries, and ended runs indexed by state and end

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-14 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ostinato.queues.tables

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
UTC_TIME = ostinato.queues.tables.UTCDateTime(timezone=True)
ENDED = sa.text('end_time IS NOT NULL')


def upgrade() -> None:
    op.create_index('ix_flow_runs_state_end_time', 'flow_runs', ['state', 'end_time'],
                    postgresql_where=ENDED, sqlite_where=ENDED)
    op.create_table('notifications',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('states', JSON, nullable=False),
    sa.Column('late_after', sa.Float(), nullable=True),
    sa.Column('deployment', sa.String(length=201), nullable=True),
    sa.Column('tag', sa.String(length=100), nullable=True),
    sa.Column('webhook', sa.Text(), nullable=False),
    sa.Column('created', UTC_TIME, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notifications'))
    )
    op.create_table('notification_deliveries',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('notification_id', sa.Uuid(), nullable=False),
    sa.Column('flow_run_id', sa.Uuid(), nullable=False),
    sa.Column('event', sa.String(length=10), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('document', JSON, nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', UTC_TIME, nullable=True),
    sa.Column('last_status_code', sa.Integer(), nullable=True),
    sa.Column('last_error', sa.Text(), nullable=True),
    sa.Column('delivered_at', UTC_TIME, nullable=True),
    sa.Column('created', UTC_TIME, nullable=False),
    sa.ForeignKeyConstraint(['flow_run_id'], ['flow_runs.id'],
                            name=op.f('fk_notification_deliveries_flow_run_id_flow_runs'),
                            ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['notification_id'], ['notifications.id'],
                            name=op.f('fk_notification_deliveries_notification_id_notifications'),
                            ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notification_deliveries')),
    sa.UniqueConstraint('notification_id', 'flow_run_id', 'event',
                        name=op.f('uq_notification_deliveries_notification_id_flow_run_id_event'))
    )
    op.create_index(op.f('ix_notification_deliveries_flow_run_id'), 'notification_deliveries',
                    ['flow_run_id'])
    op.create_index(op.f('ix_notification_deliveries_next_attempt_at'),
                    'notification_deliveries', ['next_attempt_at'])


def downgrade() -> None:
    op.drop_table('notification_deliveries')
    op.drop_table('notifications')
    op.drop_index('ix_flow_runs_state_end_time', table_name='flow_runs')

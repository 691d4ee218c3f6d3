"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-28 08:31:05.997969
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
import ostinato.queues.tables
from sqlalchemy.dialects import postgresql

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('agents',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('host', sa.String(length=255), nullable=False),
    sa.Column('queues', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('last_heartbeat', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_agents')),
    sa.UniqueConstraint('name', name=op.f('uq_agents_name'))
    )
    op.create_table('bundles',
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('content', sa.LargeBinary(), nullable=False),
    sa.Column('created', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('sha256', name=op.f('pk_bundles'))
    )
    op.create_table('concurrency_limits',
    sa.Column('tag', sa.String(length=100), nullable=False),
    sa.Column('limit', sa.Integer(), nullable=False),
    sa.Column('created', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('tag', name=op.f('pk_concurrency_limits'))
    )
    op.create_table('flows',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('created', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_flows')),
    sa.UniqueConstraint('name', name=op.f('uq_flows_name'))
    )
    op.create_table('work_queues',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('filter', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('concurrency_limit', sa.Integer(), nullable=True),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('last_polled', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('created', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_work_queues')),
    sa.UniqueConstraint('name', name=op.f('uq_work_queues_name'))
    )
    op.create_table('deployments',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('flow_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('full_name', sa.String(length=201), nullable=False),
    sa.Column('entrypoint', sa.Text(), nullable=False),
    sa.Column('bundle', sa.String(length=64), nullable=True),
    sa.Column('path', sa.Text(), nullable=True),
    sa.Column('parameters', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('parameter_schema', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('tags', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('paused', sa.Boolean(), nullable=False),
    sa.Column('overlap', sa.String(length=20), nullable=False),
    sa.Column('catchup', sa.String(length=10), nullable=False),
    sa.Column('misfire_grace', sa.Float(), nullable=False),
    sa.Column('retries', sa.Integer(), nullable=False),
    sa.Column('retry_delay', sa.Float(), nullable=False),
    sa.Column('retry_on', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('timeout', sa.Float(), nullable=True),
    sa.Column('env', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('description', sa.Text(), nullable=False),
    sa.Column('spec_hash', sa.String(length=64), nullable=False),
    sa.Column('created', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['bundle'], ['bundles.sha256'], name=op.f('fk_deployments_bundle_bundles')),
    sa.ForeignKeyConstraint(['flow_id'], ['flows.id'], name=op.f('fk_deployments_flow_id_flows'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deployments')),
    sa.UniqueConstraint('flow_id', 'name', name=op.f('uq_deployments_flow_id_name')),
    sa.UniqueConstraint('full_name', name=op.f('uq_deployments_full_name'))
    )
    op.create_table('deployment_schedules',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('deployment_id', sa.Uuid(), nullable=False),
    sa.Column('slug', sa.String(length=63), nullable=False),
    sa.Column('position', sa.Integer(), nullable=False),
    sa.Column('definition', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('scheduled_until', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('visit_at', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('created', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_deployment_schedules_deployment_id_deployments'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_deployment_schedules')),
    sa.UniqueConstraint('deployment_id', 'slug', name=op.f('uq_deployment_schedules_deployment_id_slug'))
    )
    with op.batch_alter_table('deployment_schedules', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_deployment_schedules_visit_at'), ['visit_at'], unique=False)

    op.create_table('flow_runs',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('flow_name', sa.String(length=100), nullable=False),
    sa.Column('deployment_id', sa.Uuid(), nullable=True),
    sa.Column('deployment_name', sa.String(length=201), nullable=True),
    sa.Column('schedule_slug', sa.String(length=63), nullable=True),
    sa.Column('nominal_time', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('scheduled_time', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('state_name', sa.String(length=40), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('parameters', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('tags', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('auto_scheduled', sa.Boolean(), nullable=False),
    sa.Column('work_queue', sa.String(length=100), nullable=True),
    sa.Column('agent_id', sa.Uuid(), nullable=True),
    sa.Column('agent_name', sa.String(length=200), nullable=True),
    sa.Column('lease_expires', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('fencing_token', sa.BigInteger(), nullable=False),
    sa.Column('parent_run_id', sa.Uuid(), nullable=True),
    sa.Column('start_time', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('end_time', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('updated', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['agent_id'], ['agents.id'], name=op.f('fk_flow_runs_agent_id_agents'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['deployment_id'], ['deployments.id'], name=op.f('fk_flow_runs_deployment_id_deployments'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['parent_run_id'], ['flow_runs.id'], name=op.f('fk_flow_runs_parent_run_id_flow_runs'), ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_flow_runs')),
    sa.UniqueConstraint('deployment_id', 'schedule_slug', 'nominal_time', name=op.f('uq_flow_runs_deployment_id_schedule_slug_nominal_time'))
    )
    with op.batch_alter_table('flow_runs', schema=None) as batch_op:
        batch_op.create_index('ix_flow_runs_agent_id', ['agent_id'], unique=False, postgresql_where=sa.text('agent_id IS NOT NULL'), sqlite_where=sa.text('agent_id IS NOT NULL'))
        batch_op.create_index('ix_flow_runs_deployment_id_scheduled_time', ['deployment_id', 'scheduled_time'], unique=False)
        batch_op.create_index('ix_flow_runs_lease_expires', ['lease_expires'], unique=False, postgresql_where=sa.text('lease_expires IS NOT NULL'), sqlite_where=sa.text('lease_expires IS NOT NULL'))
        batch_op.create_index('ix_flow_runs_parent_run_id', ['parent_run_id'], unique=False, postgresql_where=sa.text('parent_run_id IS NOT NULL'), sqlite_where=sa.text('parent_run_id IS NOT NULL'))
        batch_op.create_index('ix_flow_runs_state_scheduled_time', ['state', 'scheduled_time'], unique=False)

    op.create_table('flow_run_states',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('flow_run_id', sa.Uuid(), nullable=False),
    sa.Column('type', sa.String(length=12), nullable=False),
    sa.Column('name', sa.String(length=40), nullable=False),
    sa.Column('reason', sa.String(length=40), nullable=True),
    sa.Column('message', sa.Text(), nullable=True),
    sa.Column('timestamp', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.Column('actor', sa.String(length=200), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['flow_run_id'], ['flow_runs.id'], name=op.f('fk_flow_run_states_flow_run_id_flow_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_flow_run_states'))
    )
    with op.batch_alter_table('flow_run_states', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_flow_run_states_flow_run_id'), ['flow_run_id'], unique=False)

    op.create_table('logs',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('flow_run_id', sa.Uuid(), nullable=False),
    sa.Column('task_run_id', sa.Uuid(), nullable=True),
    sa.Column('level', sa.Integer(), nullable=False),
    sa.Column('logger', sa.String(length=255), nullable=False),
    sa.Column('message', sa.Text(), nullable=False),
    sa.Column('timestamp', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['flow_run_id'], ['flow_runs.id'], name=op.f('fk_logs_flow_run_id_flow_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_logs'))
    )
    with op.batch_alter_table('logs', schema=None) as batch_op:
        batch_op.create_index('ix_logs_flow_run_id_timestamp', ['flow_run_id', 'timestamp'], unique=False)

    op.create_table('task_runs',
    sa.Column('id', sa.Uuid(), nullable=False),
    sa.Column('flow_run_id', sa.Uuid(), nullable=False),
    sa.Column('name', sa.String(length=255), nullable=False),
    sa.Column('task_key', sa.String(length=255), nullable=False),
    sa.Column('state', sa.String(length=12), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('upstream', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=False),
    sa.Column('start_time', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('end_time', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=True),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('result', sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql'), nullable=True),
    sa.Column('created', ostinato.queues.tables.UTCDateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['flow_run_id'], ['flow_runs.id'], name=op.f('fk_task_runs_flow_run_id_flow_runs'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_task_runs'))
    )
    with op.batch_alter_table('task_runs', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_task_runs_flow_run_id'), ['flow_run_id'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('task_runs', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_task_runs_flow_run_id'))

    op.drop_table('task_runs')
    with op.batch_alter_table('logs', schema=None) as batch_op:
        batch_op.drop_index('ix_logs_flow_run_id_timestamp')

    op.drop_table('logs')
    with op.batch_alter_table('flow_run_states', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_flow_run_states_flow_run_id'))

    op.drop_table('flow_run_states')
    with op.batch_alter_table('flow_runs', schema=None) as batch_op:
        batch_op.drop_index('ix_flow_runs_state_scheduled_time')
        batch_op.drop_index('ix_flow_runs_parent_run_id')
        batch_op.drop_index('ix_flow_runs_lease_expires')
        batch_op.drop_index('ix_flow_runs_deployment_id_scheduled_time')
        batch_op.drop_index('ix_flow_runs_agent_id')

    op.drop_table('flow_runs')
    with op.batch_alter_table('deployment_schedules', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_deployment_schedules_visit_at'))

    op.drop_table('deployment_schedules')
    op.drop_table('deployments')
    op.drop_table('work_queues')
    op.drop_table('flows')
    op.drop_table('concurrency_limits')
    op.drop_table('bundles')
    op.drop_table('agents')

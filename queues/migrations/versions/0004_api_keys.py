"""api keys: hashed secrets with a scope, queues and an expiry

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-12 10:00:00
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import ostinato.queues.tables

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), 'postgresql')
UTC_TIME = ostinato.queues.tables.UTCDateTime(timezone=True)


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=16), nullable=False),
    sa.Column('name', sa.String(length=100), nullable=False),
    sa.Column('secret_sha256', sa.String(length=64), nullable=False),
    sa.Column('scope', sa.String(length=10), nullable=False),
    sa.Column('queues', JSON, nullable=False),
    sa.Column('expires', UTC_TIME, nullable=True),
    sa.Column('revoked', UTC_TIME, nullable=True),
    sa.Column('created', UTC_TIME, nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_api_keys'))
    )


def downgrade() -> None:
    op.drop_table('api_keys')

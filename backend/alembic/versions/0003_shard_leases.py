"""Shards carry a fencing token, a database heartbeat and their dispatch count

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-05 10:00:00.000000
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('shard', schema=None) as batch_op:
        batch_op.add_column(sa.Column('token', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('heartbeat_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column('dispatches', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('dispatched_at', sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True))
        batch_op.create_index('ix_shard_state', ['state'], unique=False)


def downgrade() -> None:
    with op.batch_alter_table('shard', schema=None) as batch_op:
        batch_op.drop_index('ix_shard_state')
        batch_op.drop_column('dispatched_at')
        batch_op.drop_column('dispatches')
        batch_op.drop_column('heartbeat_at')
        batch_op.drop_column('token')

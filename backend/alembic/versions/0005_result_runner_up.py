"""Abstained results name the selection draws' top class and runner-up

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06 10:00:00.000000
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # nullable, no default: rows stored before this revision simply do not say
    with op.batch_alter_table('resultrow', schema=None) as batch_op:
        batch_op.add_column(sa.Column('top_class', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('runner_up', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('resultrow', schema=None) as batch_op:
        batch_op.drop_column('runner_up')
        batch_op.drop_column('top_class')

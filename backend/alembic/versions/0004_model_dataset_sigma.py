"""Models record the dataset and noise level they were trained for

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05 14:20:00.000000
"""
import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('model', schema=None) as batch_op:
        batch_op.add_column(sa.Column('dataset', sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True))
        batch_op.add_column(sa.Column('sigma', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('model', schema=None) as batch_op:
        batch_op.drop_column('sigma')
        batch_op.drop_column('dataset')

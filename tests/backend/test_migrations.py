"""The Alembic revisions build the schema the models declare, and keep the rows stored before them."""

from __future__ import annotations

import sqlite3

import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import Session, SQLModel, select

import backend.models  # noqa: F401  (the tables, on SQLModel.metadata)
from backend.migrate import alembic_config, upgrade_database
from backend.models import ResultRow


def test_the_newest_revision_is_the_models_schema(tmp_path):
    url = f"sqlite:///{tmp_path / 'kavach.db'}"
    upgrade_database(url)
    with sa.create_engine(url).connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), SQLModel.metadata) == []


def test_results_stored_before_0005_read_back_without_a_runner_up(tmp_path):
    path = tmp_path / "kavach.db"
    url = f"sqlite:///{path}"
    command.upgrade(alembic_config(url), "0004")
    with sqlite3.connect(path) as connection:  # a row as 0004 stored it; plain sqlite3 enforces no foreign keys
        connection.execute(
            "INSERT INTO resultrow (id, job_id, shard_id, created_at, \"index\", label, prediction, radius, p_lower, "
            "p_upper, samples, seconds) VALUES (1, 1, 1, '2026-01-01 00:00:00.000000', 0, 3, -1, 0.0, 0.4, 0.6, 200, "
            "0.1)")
    connection.close()
    upgrade_database(url)
    with Session(sa.create_engine(url)) as session:
        row = session.exec(select(ResultRow)).one()
    assert (row.prediction, row.top_class, row.runner_up) == (-1, None, None)
    with sqlite3.connect(path) as connection:  # the downgrade copies the table, foreign keys checked
        connection.execute("DELETE FROM resultrow")
    connection.close()
    command.downgrade(alembic_config(url), "0004")
    assert {c["name"] for c in sa.inspect(sa.create_engine(url)).get_columns("resultrow")}.isdisjoint(
        {"top_class", "runner_up"})

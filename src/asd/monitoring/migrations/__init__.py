"""Alembic migrations of the monitoring store, one per schema change (``versions/``).

:func:`upgrade` runs them (``asd db upgrade --db URL``); :func:`schema_status` tells
whether a database is up to date without changing it.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

HERE = Path(__file__).resolve().parent


def alembic_config(connection: Connection | None = None) -> Config:
    """An Alembic configuration over this folder's migrations (no alembic.ini needed);
    ``connection``, when given, is the one the migrations run on."""
    config = Config()
    config.set_main_option("script_location", str(HERE))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest migration's revision id (the schema this code expects)."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the database is at; None for a database never migrated."""
    return MigrationContext.configure(connection).get_current_revision()


def upgrade(connection: Connection, revision: str = "head") -> None:
    """Run the migrations up to ``revision`` on ``connection`` (committed by the caller's
    ``engine.begin()`` block)."""
    command.upgrade(alembic_config(connection), revision)

"""Alembic's environment: migrations run on the connection :func:`asd.monitoring.migrations.upgrade`
hands over (never a URL in a file)."""

from alembic import context

from asd.monitoring.tables import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

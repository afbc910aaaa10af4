"""Alembic environment: runs on the connection the store hands over.

The store calls ``alembic.command.upgrade`` inside ``AsyncConnection.run_sync``
and passes the sync connection in ``config.attributes["connection"]``; the
async engine and the migration share one connection and one transaction.
"""

from alembic import context

from cosmic_horizons_lab.server.store.orm import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through cosmic_horizons_lab.server.store.database.Store, which supplies the connection")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()

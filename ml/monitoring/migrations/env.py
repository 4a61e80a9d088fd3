"""Alembic environment of the prediction store: the connection comes from the caller
(:func:`ml.monitoring.migrate.upgrade` puts it in ``config.attributes``), the target
metadata from :mod:`ml.monitoring.schema`. Online migrations only."""
from alembic import context

from ml.monitoring.schema import metadata

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=metadata,
                  render_as_batch=connection.dialect.name == "sqlite")
with context.begin_transaction():
    context.run_migrations()

"""Alembic's entry point for the run store: migrations run on the connection the store gives."""

from alembic import context

from vm.store.dialects import dialect_for

connection = context.config.attributes["connection"]
# A backend that cannot alter a table in place (SQLite) has its tables copied ("batch" mode).
kind = dialect_for(connection.dialect.name)
context.configure(connection=connection, render_as_batch=kind is not None and kind.alters_in_batches)
with context.begin_transaction():
    context.run_migrations()

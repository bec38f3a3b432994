"""Alembic's entry point: migrate on the connection (and transaction) the store hands in.

The store opens the transaction and, on PostgreSQL, holds an advisory lock in it, so runners
that find one new database at once create it exactly once.
"""

from alembic import context

context.configure(connection=context.config.attributes["connection"], render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()

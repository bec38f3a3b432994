"""The results store: runs, metrics, latency rows and the schema's migrations (SQLAlchemy,
Alembic), copying between stores, and the checkpoints a run's row points to.

Owns: ``database`` (the schema and every SQL statement), ``transfer`` (``mixbench db copy``),
``checkpoints``, ``migrations``.
May import: ``common``, ``models`` (a checkpoint's model). Nothing above it.
"""

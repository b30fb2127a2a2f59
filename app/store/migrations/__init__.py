"""Alembic migrations of the call store (env.py, versions/); run by `app.store.migrate`."""

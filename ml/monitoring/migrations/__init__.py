"""Alembic migrations of the prediction store (``python -m ml db upgrade``)."""

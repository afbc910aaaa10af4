"""Versioned schema migrations (Alembic), applied by the store at start-up."""

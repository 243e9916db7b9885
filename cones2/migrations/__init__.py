"""Alembic migrations of the cones2 catalogue (configured in code, see cones2.registry.database)."""

# intent_ref: platform.database
"""Postgres access: pool, tenant-scoped transactions, migrations."""

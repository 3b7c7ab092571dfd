# intent_ref: platform.skeleton
"""Blob artifacts and the audit store."""

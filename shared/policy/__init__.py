# intent_ref: platform.access-control
"""Attribute-based access control: every API action decided by Cedar policies (ADR 0011)."""

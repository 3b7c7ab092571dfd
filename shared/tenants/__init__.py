# intent_ref: platform.tenants
"""Tenants: the control plane's records of customer organisations."""

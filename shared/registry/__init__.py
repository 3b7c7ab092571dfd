# intent_ref: platform.registry
"""The intent registry's pure core: definition model, module catalog, validation, plans and diffs (DESIGN §7)."""

# intent_ref: platform.skeleton
"""The platform itself: importable and testable without any Functions runtime."""

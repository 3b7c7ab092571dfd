# intent_ref: platform.quality
"""Benchmarks: each prints its figures; none asserts a time."""

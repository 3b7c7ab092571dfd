# intent_ref: platform.quality
"""Repository tools: checks and generators run by make."""

# intent_ref: platform.quality

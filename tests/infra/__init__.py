# intent_ref: platform.estate

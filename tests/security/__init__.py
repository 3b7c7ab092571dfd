# intent_ref: platform.hardening

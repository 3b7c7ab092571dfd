# intent_ref: platform.identity
"""Who is calling: Entra ID access-token validation and the request's Principal."""

# intent_ref: platform.devhost
"""The local Azure Functions host: serves function_app.py with HTTP, Durable, Event Hubs and timers."""

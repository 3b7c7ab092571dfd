# intent_ref: platform.skeleton
"""Trigger glue: parse, authenticate, call shared/, shape the response. No logic lives here."""

from functions.eventhub_intent_requests import bp as intent_requests_bp
from functions.http_api import bp as http_api_bp
from functions.module_worker import bp as module_worker_bp
from functions.timer_audit_outbox_relay import bp as audit_outbox_relay_bp
from functions.timer_erased_tenant_blobs import bp as erased_tenant_blobs_bp
from functions.timer_event_retention import bp as event_retention_bp
from functions.timer_execution_sweeper import bp as execution_sweeper_bp
from functions.timer_idempotency_expiry import bp as idempotency_expiry_bp
from functions.timer_outbox_relay import bp as outbox_relay_bp
from functions.timer_secret_sealing import bp as secret_sealing_bp
from functions.timer_tenant_exports import bp as tenant_exports_bp
from functions.timer_webhook_delivery import bp as webhook_delivery_bp

blueprints = (
    http_api_bp,
    module_worker_bp,
    intent_requests_bp,
    outbox_relay_bp,
    execution_sweeper_bp,
    webhook_delivery_bp,
    idempotency_expiry_bp,
    audit_outbox_relay_bp,
    secret_sealing_bp,
    erased_tenant_blobs_bp,
    tenant_exports_bp,
    event_retention_bp,
)

# intent_ref: platform.audit
"""The audit trail: one record per mutation and authorization decision, behind one store interface."""

from shared.audit.factory import get_audit_store
from shared.audit.model import (
    AuditPage,
    AuditQuery,
    AuditRecord,
    AuditStore,
    Decision,
    InvalidCursorError,
)

__all__ = [
    "AuditPage",
    "AuditQuery",
    "AuditRecord",
    "AuditStore",
    "Decision",
    "InvalidCursorError",
    "get_audit_store",
]

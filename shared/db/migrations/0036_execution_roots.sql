-- intent_ref: platform.execution
-- Each child execution names the root of its tree (ADR 0014, amended 2026-12-05). Children are exempt from the
-- tenant's concurrent-execution quota (a parent must never wait on its own quota), so one root's active
-- descendants are bounded instead, and counting them must not walk the whole tree: a partial index over the
-- active ones answers the count in one scan, however many descendants have already ended. Set by the insert of a
-- child (to its parent's root, or its parent when that is a root), never updated; roots and rows written before
-- this migration keep NULL (a child's start finds its root by walking its parents, at most MAX_CHILD_DEPTH rows).
ALTER TABLE app.executions
    ADD COLUMN root_execution_id uuid,
    ADD FOREIGN KEY (tenant_id, root_execution_id) REFERENCES app.executions (tenant_id, id);
CREATE INDEX executions_tenant_root_active ON app.executions (tenant_id, root_execution_id)
    WHERE root_execution_id IS NOT NULL AND status IN ('pending', 'running', 'waiting', 'compensating');

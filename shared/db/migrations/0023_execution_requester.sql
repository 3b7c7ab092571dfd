-- intent_ref: platform.access-control
-- The authority an execution was requested with (ADR 0035): the roles the requester's token carried, and whether
-- it was an application's, when the root execution was asked for. A step that runs a child intent starts it only if
-- that requester may execute the child (a staging intent of an Executor cannot reach production through a child);
-- the decision is the same Cedar decision a direct execute gets, for the same principal. A child execution records
-- the root's authority again, so a grandchild is decided the same way. Rows written before this migration hold no
-- roles: their children are refused (fail closed), never started on nobody's authority.
ALTER TABLE app.executions
    ADD COLUMN requester_roles text[] NOT NULL DEFAULT '{}',
    ADD COLUMN requester_app_only boolean NOT NULL DEFAULT false;

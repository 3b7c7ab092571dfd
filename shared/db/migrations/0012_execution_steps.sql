-- intent_ref: platform.execution
-- What the engine records of a running execution: each step's state, each attempt, and the task-token key.

-- Event names as the execution API documents them (execution_started, step_completed, ...): one word group
-- joined by underscores, never dots (dots are the platform-events domain events' style).
ALTER TABLE app.execution_events DROP CONSTRAINT execution_events_type_check;
ALTER TABLE app.execution_events ADD CONSTRAINT execution_events_type_check
    CHECK (type ~ '^[a-z]+(_[a-z]+)+$');

ALTER TABLE app.executions
    -- A child execution (intent.run) names its parent and the step that started it.
    ADD COLUMN parent_execution_id uuid,
    ADD COLUMN parent_step_id      text CHECK (length(parent_step_id) BETWEEN 1 AND 128),
    -- A retry is a new execution that reuses the outputs of the one it retries.
    ADD COLUMN retry_of            uuid,
    -- Who may start the orchestration: set when a request claims the start, so a concurrent duplicate of an
    -- idempotent request never starts a second one (a stale claim may be taken over after a crash).
    ADD COLUMN start_claimed_at    timestamptz,
    ADD COLUMN cancel_requested_at timestamptz,
    ADD COLUMN cancel_requested_by text CHECK (length(cancel_requested_by) BETWEEN 1 AND 256),
    -- The digest of what an idempotent request asked for: the same key with another request is refused.
    ADD COLUMN request_sha256      text,
    ADD FOREIGN KEY (tenant_id, parent_execution_id) REFERENCES app.executions (tenant_id, id),
    ADD FOREIGN KEY (tenant_id, retry_of) REFERENCES app.executions (tenant_id, id);
CREATE INDEX executions_tenant_active ON app.executions (tenant_id)
    WHERE status IN ('pending', 'running', 'waiting', 'compensating');
GRANT UPDATE (start_claimed_at, cancel_requested_at, cancel_requested_by) ON app.executions TO qp_runtime;

-- One row per step of an execution, seeded pending when the execution is created: what GET shows.
CREATE TABLE app.execution_steps (
    tenant_id      uuid NOT NULL,
    execution_id   uuid NOT NULL,
    step_id        text NOT NULL CHECK (length(step_id) BETWEEN 1 AND 128),
    position       integer NOT NULL CHECK (position >= 0),
    action         text NOT NULL CHECK (length(action) BETWEEN 1 AND 128),
    state          text NOT NULL DEFAULT 'pending'
                   CHECK (state IN ('pending', 'running', 'waiting', 'retrying', 'succeeded', 'failed', 'skipped',
                                    'compensating', 'compensated', 'compensation_failed', 'cancelled')),
    attempt        integer NOT NULL DEFAULT 0 CHECK (attempt >= 0),
    max_attempts   integer NOT NULL DEFAULT 1 CHECK (max_attempts >= 1),
    output         jsonb,
    error          text,
    retry_at       timestamptz,
    -- The outputs of a retried execution's completed steps are reused, not produced again.
    reused         boolean NOT NULL DEFAULT false,
    child_execution_id uuid,
    started_at     timestamptz,
    finished_at    timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (tenant_id, execution_id, step_id),
    FOREIGN KEY (tenant_id, execution_id) REFERENCES app.executions (tenant_id, id)
);

-- One row per attempt of a step's work (phase run) or of its compensation (phase compensate). A result is
-- applied by a conditional update from 'dispatched', so however often it is delivered it is applied once.
CREATE TABLE app.step_attempts (
    tenant_id        uuid NOT NULL,
    execution_id     uuid NOT NULL,
    step_id          text NOT NULL,
    phase            text NOT NULL CHECK (phase IN ('run', 'compensate')),
    attempt          integer NOT NULL CHECK (attempt >= 1),
    action           text NOT NULL CHECK (length(action) BETWEEN 1 AND 128),
    remote           boolean NOT NULL DEFAULT false,
    state            text NOT NULL DEFAULT 'dispatched'
                     CHECK (state IN ('dispatched', 'succeeded', 'failed', 'timed_out', 'abandoned')),
    output           jsonb,
    error            text,
    retryable        boolean,
    -- A remote attempt's task token: the nonce it carries, when it expires, and when it was used (once).
    token_nonce      text UNIQUE,
    token_expires_at timestamptz,
    token_used_at    timestamptz,
    dispatched_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at      timestamptz,
    PRIMARY KEY (tenant_id, execution_id, step_id, phase, attempt),
    FOREIGN KEY (tenant_id, execution_id, step_id) REFERENCES app.execution_steps (tenant_id, execution_id, step_id)
);

SELECT app.enable_tenant_isolation('app.execution_steps');
SELECT app.enable_tenant_isolation('app.step_attempts');
GRANT SELECT, INSERT ON app.execution_steps, app.step_attempts TO qp_runtime;
GRANT UPDATE (state, attempt, max_attempts, output, error, retry_at, child_execution_id, started_at, finished_at,
              updated_at) ON app.execution_steps TO qp_runtime;
GRANT UPDATE (state, output, error, retryable, token_used_at, finished_at) ON app.step_attempts TO qp_runtime;
GRANT DELETE ON app.execution_steps, app.step_attempts TO qp_platform;
CREATE POLICY platform_erase ON app.execution_steps FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));
CREATE POLICY platform_erase ON app.step_attempts FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));

-- Each tenant's key for signing task tokens. Never configured: the platform creates it on first use, so there is
-- no secret to deploy or rotate by hand; a tenant's key signs only its own tokens and is erased with it.
CREATE TABLE app.task_token_keys (
    tenant_id   uuid PRIMARY KEY REFERENCES app.tenants (id),
    secret      bytea NOT NULL CHECK (length(secret) >= 32),
    created_at  timestamptz NOT NULL DEFAULT now()
);
SELECT app.enable_tenant_isolation('app.task_token_keys');
GRANT SELECT, INSERT ON app.task_token_keys TO qp_runtime;
GRANT DELETE ON app.task_token_keys TO qp_platform;
CREATE POLICY platform_erase ON app.task_token_keys FOR DELETE TO qp_platform
    USING (tenant_id = (SELECT app.current_tenant_id()));

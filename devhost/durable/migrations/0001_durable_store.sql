-- intent_ref: platform.devhost-durable
-- Durable Functions state of the local host, one task hub per value of task_hub. Everything an orchestration
-- needs to continue after a crash is here: committed history, messages not yet delivered, activities not yet
-- completed. An episode and an activity completion are each one transaction over these tables.

CREATE TABLE devhost_durable.instances (
    task_hub            text        NOT NULL,
    instance_id         text        NOT NULL,
    execution_id        text        NOT NULL,
    name                text        NOT NULL,
    version             text        NOT NULL DEFAULT '',
    runtime_status      text        NOT NULL CHECK (runtime_status IN (
                            'Pending', 'Running', 'Completed', 'ContinuedAsNew', 'Failed', 'Canceled',
                            'Terminated', 'Suspended')),
    input_json          text,       -- ExecutionStarted.Input, JSON text as received
    output_json         text,       -- JSON text
    custom_status_json  text,       -- JSON text
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL,
    parent_instance_id  text,
    parent_execution_id text,
    parent_name         text,
    parent_task_id      integer,
    -- Host bookkeeping of the current execution, mirrored by the SDK on every replay: the next sequence id,
    -- every action seen so far ([type, name, id, canceled]) and the retries waiting on an attempt or a timer.
    next_event_id       integer     NOT NULL DEFAULT 0,
    seen_actions        jsonb       NOT NULL DEFAULT '[]',
    retries             jsonb       NOT NULL DEFAULT '{}',
    PRIMARY KEY (task_hub, instance_id)
);
CREATE INDEX instances_created ON devhost_durable.instances (task_hub, created_at);

-- The committed history of the current execution, in order.
CREATE TABLE devhost_durable.history (
    task_hub    text    NOT NULL,
    instance_id text    NOT NULL,
    position    integer NOT NULL,
    event       jsonb   NOT NULL,
    PRIMARY KEY (task_hub, instance_id, position)
);

-- Events waiting to be delivered to an instance in its next episode: ExecutionStarted, task and
-- sub-orchestration results, raised events, and timers (invisible until they are due).
CREATE TABLE devhost_durable.inbox (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_hub     text        NOT NULL,
    instance_id  text        NOT NULL,
    execution_id text,       -- NULL: whichever execution is current (external events)
    task_id      integer,    -- the sequence id the event resolves, e.g. the TimerId (to cancel timers)
    event        jsonb       NOT NULL,
    visible_at   timestamptz NOT NULL
);
CREATE INDEX inbox_instance ON devhost_durable.inbox (task_hub, instance_id, visible_at);
CREATE INDEX inbox_due ON devhost_durable.inbox (task_hub, visible_at);

-- Activities scheduled and not yet completed. A row disappears in the transaction that records its result, so
-- a recorded activity never runs again, and one interrupted by a crash runs again (at least once, as in Azure).
CREATE TABLE devhost_durable.work_items (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_hub     text        NOT NULL,
    instance_id  text        NOT NULL,
    execution_id text        NOT NULL,
    task_id      integer     NOT NULL,
    name         text        NOT NULL,
    input        text,
    created_at   timestamptz NOT NULL,
    UNIQUE (task_hub, instance_id, execution_id, task_id)
);

-- intent_ref: platform.execution
-- At most one run of a built-in attempt at a time (ADR 0026). A work item can reach the module worker twice (a
-- re-executed dispatch publishes it again, a crash before the checkpoint redelivers it), possibly in one batch or
-- on two instances at once. Before running the module the worker claims the attempt: it names itself and leases
-- the claim for a short time, renewed while the module runs, in a short transaction of its own, so every other
-- copy sees the claim and waits (or finds the result). A holder that died stops renewing; once its lease has
-- lapsed another copy may take the claim over. The attempt's state is untouched: 'dispatched' still means "no
-- result yet", which every conditional result update relies on.

ALTER TABLE app.step_attempts
    ADD COLUMN claimed_by    text CHECK (length(claimed_by) BETWEEN 1 AND 256),
    ADD COLUMN claimed_until timestamptz,
    -- How many times the attempt was claimed: more than one means a holder's lease lapsed and it was taken over.
    ADD COLUMN claims        integer NOT NULL DEFAULT 0 CHECK (claims >= 0);

GRANT UPDATE (claimed_by, claimed_until, claims) ON app.step_attempts TO qp_runtime;

-- intent_ref: platform.execution
-- Who hands a built-in attempt's result to its orchestration (ADR 0034). The dispatch that starts a quick built-in
-- attempt may wait a moment for its result and answer it itself, which spares the orchestration an episode and the
-- worker a raised event. Exactly one of the two must deliver: the row lock of the result's own update decides.
--   NULL       nobody waits: whoever records the result raises it (as before)
--   'awaited'  a dispatch waits for it: the recorder does not raise it
--   'answered' the dispatch answered it (a re-run of that dispatch answers it again)
--   'released' the dispatch stopped waiting before there was a result: the recorder raises it
ALTER TABLE app.step_attempts
    ADD COLUMN delivery text CHECK (delivery IN ('awaited', 'answered', 'released'));

GRANT UPDATE (delivery) ON app.step_attempts TO qp_runtime;

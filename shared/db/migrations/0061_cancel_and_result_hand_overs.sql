-- intent_ref: platform.execution
-- What was handed to a run's orchestration, so that a repeat raises only what the run may not have (ADR 0027,
-- amended 2026-12-07).
--
-- A repeated cancel raised its event only while the run waited on something only that event ends; a cancel whose
-- first raise failed while only module work was out was then never raised again, and a run that learns of a cancel
-- only from its event (or whose last step's result ended it) could end succeeded over it. `cancel_raised_at` records
-- that the task hub accepted a cancel's raise (or answered that the orchestration is gone); a repeated cancel raises
-- its event while it is NULL and the run has not ended. Without a default the column costs no rewrite.
ALTER TABLE app.executions ADD COLUMN cancel_raised_at timestamptz;

GRANT UPDATE (cancel_raised_at) ON app.executions TO qp_runtime;

-- The recorder's hand-over of a remote result or an approval decision had taken the dispatch's own mark ('answered',
-- migration 0022), which a re-run dispatch takes results by: it gets a value of its own.
--   'handed_over'  whoever recorded the result raised it and the task hub accepted it: a repeat raises nothing
-- NOT VALID: every stored row meets the narrower check it replaces, so no scan under the table's lock is needed; new
-- and updated rows are checked all the same.
ALTER TABLE app.step_attempts DROP CONSTRAINT step_attempts_delivery_check;
ALTER TABLE app.step_attempts ADD CONSTRAINT step_attempts_delivery_check
    CHECK (delivery IN ('awaited', 'answered', 'released', 'handed_over')) NOT VALID;

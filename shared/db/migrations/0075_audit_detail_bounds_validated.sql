-- intent_ref: platform.audit
-- The audit tables' size CHECKs of migration 0072 are validated (ADR 0012, amended 2026-12-07).
--
-- 0072 added them NOT VALID: validating there held the ACCESS EXCLUSIVE lock its ADD CONSTRAINT took through the
-- scan of the whole trail, and every audited request waited for it. Here, in a transaction of its own, VALIDATE
-- takes only SHARE UPDATE EXCLUSIVE, which the requests' INSERTs (and the outbox's removals and set-asides) pass.

-- A record of the trail written before 0072 over the bound is kept as written (the trail is never rewritten): the
-- CHECK then stays NOT VALID, binding every record written since 0072 (no record of the trail is ever updated).
DO $$
BEGIN
    ALTER TABLE app.audit_events VALIDATE CONSTRAINT audit_events_detail_bounded;
EXCEPTION WHEN check_violation THEN
    RAISE WARNING 'app.audit_events holds records with a detail over 64 KiB, written before migration 0072: kept;'
        ' audit_events_detail_bounded binds the records written from then on and stays NOT VALID';
END
$$;

-- 0072 set aside every waiting document over the bound, and the CHECK has bound every row written since.
ALTER TABLE app.audit_outbox VALIDATE CONSTRAINT audit_outbox_document_bounded;

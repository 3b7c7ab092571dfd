-- intent_ref: platform.devhost-durable
-- The dispatcher sleeps until something is runnable instead of polling: a message for an instance or an activity
-- to run notifies the task hub's host at commit, whoever wrote it. Identical notifications of one transaction are
-- folded into one by the server, so an episode that queues many rows still wakes the host once.

CREATE FUNCTION devhost_durable.notify_dispatch() RETURNS trigger
    LANGUAGE plpgsql
    SET search_path = ''
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('devhost_durable', NEW.task_hub);
    RETURN NULL;
END
$$;

CREATE TRIGGER inbox_notify AFTER INSERT ON devhost_durable.inbox
    FOR EACH ROW EXECUTE FUNCTION devhost_durable.notify_dispatch();
CREATE TRIGGER work_items_notify AFTER INSERT ON devhost_durable.work_items
    FOR EACH ROW EXECUTE FUNCTION devhost_durable.notify_dispatch();

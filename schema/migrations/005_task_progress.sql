-- 005_task_progress: progress notes on a task (task.progress), such as text a
-- user sent to a live agent with `ccm send`, reach the bus like every change.

CREATE TRIGGER task_events_progress AFTER INSERT ON task_events
WHEN new.event_type = 'progress'
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('task.progress', 'task_events', new.id, new.task_id, new.event_data);
END;

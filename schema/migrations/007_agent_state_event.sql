-- 007_agent_state_event: an agent's change of state carries the new state
-- and where it came from, so a subscriber (the executor ending an
-- interactive agent whose turn is over, a browser) needs no read back.

DROP TRIGGER agents_event_updated;
CREATE TRIGGER agents_event_updated AFTER UPDATE ON agents
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('agents.updated', 'agents', CAST(new.id AS TEXT), new.task_id,
            json_object('id', new.id, 'task_id', new.task_id, 'status', new.status,
                        'state_source', new.state_source));
END;

-- 002_event_log: the append-only event log. Its seq is the bus sequence
-- number: the store PUBlishes each row after COMMIT, and events.since replays
-- any range (zguide's Clone pattern). Triggers append a row for every change,
-- in the transaction that makes it, so no code path can forget one.
--
-- seq has no AUTOINCREMENT: rows are never deleted (the triggers below refuse
-- it), so max(seq)+1 is already gapless and never reused.

CREATE TABLE events (
    seq       INTEGER PRIMARY KEY,
    topic     TEXT NOT NULL,
    ts        TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    entity    TEXT NOT NULL,
    entity_id TEXT,
    task_id   TEXT,
    data      TEXT NOT NULL CHECK (json_valid(data))
);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'events is append-only'); END;
CREATE TRIGGER events_no_delete BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'events is append-only'); END;

CREATE TRIGGER projects_event_insert AFTER INSERT ON projects
BEGIN
    INSERT INTO events (topic, entity, entity_id, data)
    VALUES ('project.added', 'projects', new.id,
            json_object('id', new.id, 'name', new.name, 'path', new.path,
                        'repo_url', new.repo_url, 'system_id', new.system_id));
END;
CREATE TRIGGER projects_event_update AFTER UPDATE ON projects
BEGIN
    INSERT INTO events (topic, entity, entity_id, data)
    VALUES ('project.updated', 'projects', new.id,
            json_object('id', new.id, 'name', new.name, 'path', new.path,
                        'repo_url', new.repo_url, 'system_id', new.system_id));
END;

CREATE TRIGGER tasks_event_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('task.created', 'tasks', new.id, new.id,
            json_object('status', new.status, 'priority', new.priority,
                        'task_type', new.task_type, 'project_id', new.project_id));
END;
CREATE TRIGGER tasks_event_status AFTER UPDATE OF status ON tasks
WHEN old.status IS NOT new.status
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('task.status', 'tasks', new.id, new.id,
            json_object('from', old.status, 'to', new.status, 'reason', new.status_reason,
                        'attempts', new.attempts));
END;
CREATE TRIGGER tasks_event_update AFTER UPDATE ON tasks
WHEN old.status IS new.status
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('task.updated', 'tasks', new.id, new.id, json_object('id', new.id));
END;

-- The hot path (100,000+ inserts/s): keep it to one small json_object.
CREATE TRIGGER hook_events_event_insert AFTER INSERT ON hook_events
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('hook.' || new.hook_type, 'hook_events', CAST(new.id AS TEXT), new.task_id,
            json_object('hook_event_id', new.id, 'hook_type', new.hook_type,
                        'tool_name', new.tool_name, 'file_path', new.file_path,
                        'success', CASE new.success WHEN 1 THEN json('true')
                                                    WHEN 0 THEN json('false') END,
                        'agent_id', new.agent_id, 'session_id', new.session_id));
END;

-- task_events rows are written by the store on every task transition, which
-- already logs task.status; logging them again would double the event log.

CREATE TRIGGER systems_event_inserted AFTER INSERT ON systems
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('systems.inserted', 'systems', CAST(new.id AS TEXT), NULL, json_object('id', new.id));
END;

CREATE TRIGGER systems_event_updated AFTER UPDATE ON systems
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('systems.updated', 'systems', CAST(new.id AS TEXT), NULL, json_object('id', new.id));
END;

CREATE TRIGGER contexts_event_inserted AFTER INSERT ON contexts
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('contexts.inserted', 'contexts', CAST(new.id AS TEXT), NULL, json_object('id', new.id));
END;

CREATE TRIGGER contexts_event_updated AFTER UPDATE ON contexts
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('contexts.updated', 'contexts', CAST(new.id AS TEXT), NULL, json_object('id', new.id));
END;

CREATE TRIGGER task_results_event_inserted AFTER INSERT ON task_results
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('task_results.inserted', 'task_results', CAST(new.id AS TEXT), new.task_id, json_object('id', new.id, 'task_id', new.task_id));
END;

CREATE TRIGGER task_results_event_updated AFTER UPDATE ON task_results
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('task_results.updated', 'task_results', CAST(new.id AS TEXT), new.task_id, json_object('id', new.id, 'task_id', new.task_id));
END;

CREATE TRIGGER task_worktrees_event_inserted AFTER INSERT ON task_worktrees
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('task_worktrees.inserted', 'task_worktrees', CAST(new.task_id AS TEXT), new.task_id, json_object('id', new.task_id, 'task_id', new.task_id));
END;

CREATE TRIGGER task_worktrees_event_updated AFTER UPDATE ON task_worktrees
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('task_worktrees.updated', 'task_worktrees', CAST(new.task_id AS TEXT), new.task_id, json_object('id', new.task_id, 'task_id', new.task_id));
END;

CREATE TRIGGER automation_events_event_inserted AFTER INSERT ON automation_events
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('automation_events.inserted', 'automation_events', CAST(new.id AS TEXT), new.task_id, json_object('id', new.id, 'task_id', new.task_id));
END;

CREATE TRIGGER automation_events_event_updated AFTER UPDATE ON automation_events
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('automation_events.updated', 'automation_events', CAST(new.id AS TEXT), new.task_id, json_object('id', new.id, 'task_id', new.task_id));
END;

CREATE TRIGGER supervisory_reports_event_inserted AFTER INSERT ON supervisory_reports
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('supervisory_reports.inserted', 'supervisory_reports', CAST(new.id AS TEXT), new.task_id, json_object('id', new.id, 'task_id', new.task_id));
END;

CREATE TRIGGER supervisory_reports_event_updated AFTER UPDATE ON supervisory_reports
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('supervisory_reports.updated', 'supervisory_reports', CAST(new.id AS TEXT), new.task_id, json_object('id', new.id, 'task_id', new.task_id));
END;

CREATE TRIGGER agents_event_inserted AFTER INSERT ON agents
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('agents.inserted', 'agents', CAST(new.id AS TEXT), new.task_id, json_object('id', new.id, 'task_id', new.task_id));
END;

CREATE TRIGGER agents_event_updated AFTER UPDATE ON agents
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('agents.updated', 'agents', CAST(new.id AS TEXT), new.task_id, json_object('id', new.id, 'task_id', new.task_id));
END;

CREATE TRIGGER skills_event_inserted AFTER INSERT ON skills
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('skills.inserted', 'skills', CAST(new.id AS TEXT), NULL, json_object('id', new.id));
END;

CREATE TRIGGER skills_event_updated AFTER UPDATE ON skills
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('skills.updated', 'skills', CAST(new.id AS TEXT), NULL, json_object('id', new.id));
END;

-- 020_sync: what ccm-sync needs beyond 003's queue.
--
-- * tasks.origin_system_id: the system that created a task pulled from the
--   hub (NULL: created here). The runner of such a task owns its status; its
--   creator owns the rest (services/sync/sync_push.c).
-- * The task triggers of 003 are rebuilt to carry 004's agent_profile and
--   timeout_s and origin_system_id; task_results' carry details.
-- * agents and skills leave the push scope: agents are local state, and
--   skills are pulled only (issue 7). Their unsent queue rows are dropped.
-- * sync_meta keeps ccm-sync's cursors and last success/error; sync_seen the
--   server's updated_at last applied per pulled record (last writer wins by
--   the server's clock, not by the local one).
-- * sync_queue_record makes the per-record grouping of sync.pending an index
--   walk, and sync.mark an index lookup.

ALTER TABLE tasks ADD COLUMN origin_system_id TEXT;

CREATE TABLE sync_meta (
    key        TEXT PRIMARY KEY,
    value      TEXT,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;

CREATE TABLE sync_seen (
    table_name        TEXT NOT NULL,
    record_id         TEXT NOT NULL,
    remote_updated_at TEXT NOT NULL,
    PRIMARY KEY (table_name, record_id)
) WITHOUT ROWID;

CREATE INDEX sync_queue_record ON sync_queue (table_name, record_id, id)
    WHERE synced_at IS NULL AND parked_at IS NULL;
CREATE INDEX sync_queue_parked ON sync_queue (parked_at) WHERE parked_at IS NOT NULL;

DROP TRIGGER agents_sync_insert;
DROP TRIGGER agents_sync_update;
DROP TRIGGER skills_sync_insert;
DROP TRIGGER skills_sync_update;
DELETE FROM sync_queue WHERE table_name IN ('agents', 'skills') AND synced_at IS NULL;

DROP TRIGGER tasks_sync_insert;
DROP TRIGGER tasks_sync_update;
CREATE TRIGGER tasks_sync_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('INSERT', 'tasks', new.id, json_object('id', new.id, 'project_id', new.project_id, 'system_id', new.system_id, 'parent_task_id', new.parent_task_id, 'requires_project', new.requires_project, 'requires_context_metadata', json(new.requires_context_metadata), 'task_type', new.task_type, 'status', new.status, 'status_reason', new.status_reason, 'prompt', new.prompt, 'input_data', json(new.input_data), 'metadata', json(new.metadata), 'requires_supabase', new.requires_supabase, 'priority', new.priority, 'attempts', new.attempts, 'locked_at', new.locked_at, 'locked_by', new.locked_by, 'created_at', new.created_at, 'updated_at', new.updated_at, 'started_at', new.started_at, 'completed_at', new.completed_at, 'agent_profile', new.agent_profile, 'timeout_s', new.timeout_s, 'origin_system_id', new.origin_system_id), new.priority);
END;
CREATE TRIGGER tasks_sync_update AFTER UPDATE ON tasks
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('UPDATE', 'tasks', new.id, json_object('id', new.id, 'project_id', new.project_id, 'system_id', new.system_id, 'parent_task_id', new.parent_task_id, 'requires_project', new.requires_project, 'requires_context_metadata', json(new.requires_context_metadata), 'task_type', new.task_type, 'status', new.status, 'status_reason', new.status_reason, 'prompt', new.prompt, 'input_data', json(new.input_data), 'metadata', json(new.metadata), 'requires_supabase', new.requires_supabase, 'priority', new.priority, 'attempts', new.attempts, 'locked_at', new.locked_at, 'locked_by', new.locked_by, 'created_at', new.created_at, 'updated_at', new.updated_at, 'started_at', new.started_at, 'completed_at', new.completed_at, 'agent_profile', new.agent_profile, 'timeout_s', new.timeout_s, 'origin_system_id', new.origin_system_id), new.priority);
END;

DROP TRIGGER task_results_sync_insert;
DROP TRIGGER task_results_sync_update;
CREATE TRIGGER task_results_sync_insert AFTER INSERT ON task_results
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('INSERT', 'task_results', new.id, json_object('id', new.id, 'task_id', new.task_id, 'agent_id', new.agent_id, 'status', new.status, 'output', new.output, 'files_changed', json(new.files_changed), 'exit_code', new.exit_code, 'details', json(new.details), 'created_at', new.created_at), coalesce((SELECT priority FROM tasks WHERE id = new.task_id), 'normal'));
END;
CREATE TRIGGER task_results_sync_update AFTER UPDATE ON task_results
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('UPDATE', 'task_results', new.id, json_object('id', new.id, 'task_id', new.task_id, 'agent_id', new.agent_id, 'status', new.status, 'output', new.output, 'files_changed', json(new.files_changed), 'exit_code', new.exit_code, 'details', json(new.details), 'created_at', new.created_at), coalesce((SELECT priority FROM tasks WHERE id = new.task_id), 'normal'));
END;

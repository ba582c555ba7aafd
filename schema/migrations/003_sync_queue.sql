-- 003_sync_queue: every change to a synced table queues a sync_queue row in
-- the same transaction, for ccm-sync to push to the Supabase hub.
-- hook_events, automation_events, task_worktrees, events and idempotency are
-- local-only by design and have no trigger here: they never leave the machine.

CREATE TRIGGER systems_sync_insert AFTER INSERT ON systems
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('INSERT', 'systems', CAST(new.id AS TEXT), json_object('id', new.id, 'hostname', new.hostname, 'machine_id', new.machine_id, 'system_type', new.system_type, 'tags', json(new.tags), 'status', new.status, 'capacity', new.capacity, 'created_at', new.created_at, 'last_seen', new.last_seen, 'user_id', new.user_id), 'normal');
END;

CREATE TRIGGER systems_sync_update AFTER UPDATE ON systems
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('UPDATE', 'systems', CAST(new.id AS TEXT), json_object('id', new.id, 'hostname', new.hostname, 'machine_id', new.machine_id, 'system_type', new.system_type, 'tags', json(new.tags), 'status', new.status, 'capacity', new.capacity, 'created_at', new.created_at, 'last_seen', new.last_seen, 'user_id', new.user_id), 'normal');
END;

CREATE TRIGGER projects_sync_insert AFTER INSERT ON projects
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('INSERT', 'projects', CAST(new.id AS TEXT), json_object('id', new.id, 'system_id', new.system_id, 'name', new.name, 'path', new.path, 'repo_url', new.repo_url, 'config', json(new.config), 'created_at', new.created_at, 'updated_at', new.updated_at, 'user_id', new.user_id), 'normal');
END;

CREATE TRIGGER projects_sync_update AFTER UPDATE ON projects
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('UPDATE', 'projects', CAST(new.id AS TEXT), json_object('id', new.id, 'system_id', new.system_id, 'name', new.name, 'path', new.path, 'repo_url', new.repo_url, 'config', json(new.config), 'created_at', new.created_at, 'updated_at', new.updated_at, 'user_id', new.user_id), 'normal');
END;

CREATE TRIGGER contexts_sync_insert AFTER INSERT ON contexts
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('INSERT', 'contexts', CAST(new.id AS TEXT), json_object('id', new.id, 'system_id', new.system_id, 'project_name', new.project_name, 'project_path', new.project_path, 'repo_url', new.repo_url, 'repo_branch', new.repo_branch, 'last_pulled', new.last_pulled, 'last_verified', new.last_verified, 'status', new.status, 'metadata', json(new.metadata), 'created_at', new.created_at, 'updated_at', new.updated_at), 'normal');
END;

CREATE TRIGGER contexts_sync_update AFTER UPDATE ON contexts
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('UPDATE', 'contexts', CAST(new.id AS TEXT), json_object('id', new.id, 'system_id', new.system_id, 'project_name', new.project_name, 'project_path', new.project_path, 'repo_url', new.repo_url, 'repo_branch', new.repo_branch, 'last_pulled', new.last_pulled, 'last_verified', new.last_verified, 'status', new.status, 'metadata', json(new.metadata), 'created_at', new.created_at, 'updated_at', new.updated_at), 'normal');
END;

CREATE TRIGGER tasks_sync_insert AFTER INSERT ON tasks
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('INSERT', 'tasks', CAST(new.id AS TEXT), json_object('id', new.id, 'project_id', new.project_id, 'system_id', new.system_id, 'parent_task_id', new.parent_task_id, 'requires_project', new.requires_project, 'requires_context_metadata', json(new.requires_context_metadata), 'task_type', new.task_type, 'status', new.status, 'status_reason', new.status_reason, 'prompt', new.prompt, 'input_data', json(new.input_data), 'metadata', json(new.metadata), 'requires_supabase', new.requires_supabase, 'priority', new.priority, 'attempts', new.attempts, 'locked_at', new.locked_at, 'locked_by', new.locked_by, 'created_at', new.created_at, 'updated_at', new.updated_at, 'started_at', new.started_at, 'completed_at', new.completed_at, 'created_by', new.created_by), new.priority);
END;

CREATE TRIGGER tasks_sync_update AFTER UPDATE ON tasks
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('UPDATE', 'tasks', CAST(new.id AS TEXT), json_object('id', new.id, 'project_id', new.project_id, 'system_id', new.system_id, 'parent_task_id', new.parent_task_id, 'requires_project', new.requires_project, 'requires_context_metadata', json(new.requires_context_metadata), 'task_type', new.task_type, 'status', new.status, 'status_reason', new.status_reason, 'prompt', new.prompt, 'input_data', json(new.input_data), 'metadata', json(new.metadata), 'requires_supabase', new.requires_supabase, 'priority', new.priority, 'attempts', new.attempts, 'locked_at', new.locked_at, 'locked_by', new.locked_by, 'created_at', new.created_at, 'updated_at', new.updated_at, 'started_at', new.started_at, 'completed_at', new.completed_at, 'created_by', new.created_by), new.priority);
END;

CREATE TRIGGER task_results_sync_insert AFTER INSERT ON task_results
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('INSERT', 'task_results', CAST(new.id AS TEXT), json_object('id', new.id, 'task_id', new.task_id, 'agent_id', new.agent_id, 'status', new.status, 'output', new.output, 'files_changed', json(new.files_changed), 'exit_code', new.exit_code, 'created_at', new.created_at), coalesce((SELECT priority FROM tasks WHERE id = new.task_id), 'normal'));
END;

CREATE TRIGGER task_results_sync_update AFTER UPDATE ON task_results
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('UPDATE', 'task_results', CAST(new.id AS TEXT), json_object('id', new.id, 'task_id', new.task_id, 'agent_id', new.agent_id, 'status', new.status, 'output', new.output, 'files_changed', json(new.files_changed), 'exit_code', new.exit_code, 'created_at', new.created_at), coalesce((SELECT priority FROM tasks WHERE id = new.task_id), 'normal'));
END;

CREATE TRIGGER task_events_sync_insert AFTER INSERT ON task_events
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('INSERT', 'task_events', CAST(new.id AS TEXT), json_object('id', new.id, 'task_id', new.task_id, 'event_type', new.event_type, 'event_data', json(new.event_data), 'created_at', new.created_at), coalesce((SELECT priority FROM tasks WHERE id = new.task_id), 'normal'));
END;

CREATE TRIGGER task_events_sync_update AFTER UPDATE ON task_events
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('UPDATE', 'task_events', CAST(new.id AS TEXT), json_object('id', new.id, 'task_id', new.task_id, 'event_type', new.event_type, 'event_data', json(new.event_data), 'created_at', new.created_at), coalesce((SELECT priority FROM tasks WHERE id = new.task_id), 'normal'));
END;

CREATE TRIGGER supervisory_reports_sync_insert AFTER INSERT ON supervisory_reports
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('INSERT', 'supervisory_reports', CAST(new.id AS TEXT), json_object('id', new.id, 'task_id', new.task_id, 'agent_id', new.agent_id, 'scope', new.scope, 'quality_score', new.quality_score, 'issues', json(new.issues), 'recommendations', json(new.recommendations), 'alert_level', new.alert_level, 'created_at', new.created_at), coalesce((SELECT priority FROM tasks WHERE id = new.task_id), 'normal'));
END;

CREATE TRIGGER supervisory_reports_sync_update AFTER UPDATE ON supervisory_reports
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('UPDATE', 'supervisory_reports', CAST(new.id AS TEXT), json_object('id', new.id, 'task_id', new.task_id, 'agent_id', new.agent_id, 'scope', new.scope, 'quality_score', new.quality_score, 'issues', json(new.issues), 'recommendations', json(new.recommendations), 'alert_level', new.alert_level, 'created_at', new.created_at), coalesce((SELECT priority FROM tasks WHERE id = new.task_id), 'normal'));
END;

CREATE TRIGGER agents_sync_insert AFTER INSERT ON agents
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('INSERT', 'agents', CAST(new.id AS TEXT), json_object('id', new.id, 'system_id', new.system_id, 'project_id', new.project_id, 'task_id', new.task_id, 'profile', new.profile, 'tmux_window', new.tmux_window, 'status', new.status, 'state_source', new.state_source, 'spawned_at', new.spawned_at, 'last_active', new.last_active), 'normal');
END;

CREATE TRIGGER agents_sync_update AFTER UPDATE ON agents
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('UPDATE', 'agents', CAST(new.id AS TEXT), json_object('id', new.id, 'system_id', new.system_id, 'project_id', new.project_id, 'task_id', new.task_id, 'profile', new.profile, 'tmux_window', new.tmux_window, 'status', new.status, 'state_source', new.state_source, 'spawned_at', new.spawned_at, 'last_active', new.last_active), 'normal');
END;

CREATE TRIGGER skills_sync_insert AFTER INSERT ON skills
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('INSERT', 'skills', CAST(new.id AS TEXT), json_object('id', new.id, 'name', new.name, 'version', new.version, 'content', new.content, 'file_path', new.file_path, 'created_at', new.created_at, 'updated_at', new.updated_at, 'user_id', new.user_id), 'normal');
END;

CREATE TRIGGER skills_sync_update AFTER UPDATE ON skills
BEGIN
    INSERT INTO sync_queue (operation, table_name, record_id, record_data, priority)
    VALUES ('UPDATE', 'skills', CAST(new.id AS TEXT), json_object('id', new.id, 'name', new.name, 'version', new.version, 'content', new.content, 'file_path', new.file_path, 'created_at', new.created_at, 'updated_at', new.updated_at, 'user_id', new.user_id), 'normal');
END;

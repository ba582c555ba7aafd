-- 001_core: the core tables of ccm's data architecture (seed 000), complete,
-- with a CHECK on every enum and JSON column, and foreign keys (the store runs
-- with PRAGMA foreign_keys = ON). Times are UTC ISO-8601 text with ms.

CREATE TABLE systems (
    id          TEXT PRIMARY KEY,
    hostname    TEXT NOT NULL UNIQUE,
    machine_id  TEXT NOT NULL UNIQUE,
    system_type TEXT NOT NULL DEFAULT 'developer'
                CHECK (system_type IN ('developer', 'devops', 'business')),
    tags        TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(tags)),
    status      TEXT NOT NULL DEFAULT 'online' CHECK (status IN ('online', 'offline')),
    capacity    INTEGER NOT NULL DEFAULT 4 CHECK (capacity >= 0),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_seen   TEXT,
    user_id     TEXT          -- the Supabase owner, for row-level security
);

CREATE TABLE projects (
    id         TEXT PRIMARY KEY,
    system_id  TEXT REFERENCES systems (id),
    name       TEXT NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 64),
    path       TEXT NOT NULL,
    repo_url   TEXT,
    config     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(config)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    user_id    TEXT
);
CREATE INDEX projects_system ON projects (system_id);

CREATE TABLE contexts (
    id            TEXT PRIMARY KEY,
    system_id     TEXT NOT NULL REFERENCES systems (id) ON DELETE CASCADE,
    project_name  TEXT NOT NULL,
    project_path  TEXT NOT NULL,
    repo_url      TEXT,
    repo_branch   TEXT,
    last_pulled   TEXT,
    last_verified TEXT,
    status        TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'stale', 'error')),
    metadata      TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (system_id, project_name)
);

CREATE TABLE tasks (
    id                        TEXT PRIMARY KEY,
    project_id                TEXT REFERENCES projects (id),
    system_id                 TEXT REFERENCES systems (id),       -- target system
    parent_task_id            TEXT REFERENCES tasks (id),         -- manager subtasks
    requires_project          TEXT,                               -- for context routing
    requires_context_metadata TEXT NOT NULL DEFAULT '{}'
                              CHECK (json_valid(requires_context_metadata)),
    task_type                 TEXT NOT NULL DEFAULT 'worker'
                              CHECK (task_type IN ('worker', 'supervisory', 'manager')),
    status                    TEXT NOT NULL DEFAULT 'created'
                              CHECK (status IN ('created', 'queued', 'assigned', 'executing',
                                                'complete', 'failed', 'cancelled')),
    status_reason             TEXT,
    prompt                    TEXT NOT NULL,
    input_data                TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(input_data)),
    metadata                  TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metadata)),
    requires_supabase         INTEGER NOT NULL DEFAULT 0 CHECK (requires_supabase IN (0, 1)),
    priority                  TEXT NOT NULL DEFAULT 'normal'
                              CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    attempts                  INTEGER NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    locked_at                 TEXT,                               -- assignment lock
    locked_by                 TEXT,
    created_at                TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at                TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    started_at                TEXT,
    completed_at              TEXT,
    created_by                TEXT
);
CREATE INDEX tasks_status_created ON tasks (status, created_at);
CREATE INDEX tasks_system_status ON tasks (system_id, status);
CREATE INDEX tasks_project ON tasks (project_id);

CREATE TABLE task_results (
    id            TEXT PRIMARY KEY,
    task_id       TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    agent_id      TEXT,
    status        TEXT NOT NULL
                  CHECK (status IN ('complete', 'failed', 'cancelled', 'timeout', 'crashed')),
    output        TEXT,
    files_changed TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(files_changed)),
    exit_code     INTEGER,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX task_results_task ON task_results (task_id);

CREATE TABLE task_events (
    id         TEXT PRIMARY KEY,
    task_id    TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    event_type TEXT NOT NULL
               CHECK (event_type IN ('created', 'queued', 'assigned', 'started', 'progress',
                                     'completed', 'failed', 'cancelled', 'requeued')),
    event_data TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(event_data)),
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX task_events_task ON task_events (task_id, created_at);

-- No foreign key on task_id: hooks may arrive for tasks this store never saw
-- (a hand-started agent, or a task of another machine), and must be kept.
-- hook_type is not an enum: event types unknown today are kept too.
CREATE TABLE hook_events (
    id             INTEGER PRIMARY KEY,
    uid            TEXT,          -- per-event key: a resent event is stored once
    task_id        TEXT,
    agent_id       TEXT,
    system_id      TEXT,
    session_id     TEXT,
    hook_type      TEXT NOT NULL CHECK (length(hook_type) BETWEEN 1 AND 64),
    hook_timestamp TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    event_data     TEXT NOT NULL CHECK (json_valid(event_data)),
    tool_name      TEXT,
    file_path      TEXT,
    success        INTEGER CHECK (success IS NULL OR success IN (0, 1)),
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX hook_events_task ON hook_events (task_id, id);
CREATE UNIQUE INDEX hook_events_uid ON hook_events (uid) WHERE uid IS NOT NULL;

CREATE TABLE task_worktrees (
    task_id       TEXT PRIMARY KEY REFERENCES tasks (id) ON DELETE CASCADE,
    project_id    TEXT REFERENCES projects (id),
    worktree_path TEXT NOT NULL,
    branch_name   TEXT NOT NULL,
    base_branch   TEXT,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    removed_at    TEXT,
    status        TEXT NOT NULL DEFAULT 'active'
                  CHECK (status IN ('active', 'merged', 'discarded', 'stale'))
);

CREATE TABLE automation_events (
    id         INTEGER PRIMARY KEY,
    event_id   INTEGER REFERENCES hook_events (id),
    task_id    TEXT,
    automation TEXT NOT NULL,
    action     TEXT NOT NULL,
    outcome    TEXT NOT NULL DEFAULT 'ok'
               CHECK (outcome IN ('ok', 'failed', 'denied', 'allowed', 'skipped', 'pending')),
    details    TEXT CHECK (details IS NULL OR json_valid(details)),
    timestamp  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE supervisory_reports (
    id              INTEGER PRIMARY KEY,
    task_id         TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    agent_id        TEXT,
    scope           TEXT NOT NULL DEFAULT 'task' CHECK (scope IN ('task', 'project', 'system')),
    quality_score   INTEGER CHECK (quality_score IS NULL OR quality_score BETWEEN 1 AND 10),
    issues          TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(issues)),
    recommendations TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(recommendations)),
    alert_level     TEXT NOT NULL DEFAULT 'none'
                    CHECK (alert_level IN ('none', 'info', 'warning', 'critical')),
    created_at      TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

CREATE TABLE sync_queue (
    id            INTEGER PRIMARY KEY,
    operation     TEXT NOT NULL CHECK (operation IN ('INSERT', 'UPDATE', 'DELETE')),
    table_name    TEXT NOT NULL,
    record_id     TEXT NOT NULL,
    record_data   TEXT CHECK (record_data IS NULL OR json_valid(record_data)),
    priority      TEXT NOT NULL DEFAULT 'normal'
                  CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    synced_at     TEXT,
    retry_count   INTEGER NOT NULL DEFAULT 0,
    error_message TEXT,
    parked_at     TEXT            -- a permanent failure, kept for `ccm sync status`
);
CREATE INDEX sync_queue_drain ON sync_queue (synced_at, priority, id);

CREATE TABLE agents (
    id           TEXT PRIMARY KEY,
    system_id    TEXT REFERENCES systems (id),
    project_id   TEXT REFERENCES projects (id),
    task_id      TEXT REFERENCES tasks (id),
    profile      TEXT,
    tmux_window  TEXT,
    status       TEXT NOT NULL DEFAULT 'idle'
                 CHECK (status IN ('idle', 'running', 'crashed', 'exited', 'waiting')),
    state_source TEXT,            -- hook, pane, screen: where the status came from
    spawned_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    last_active  TEXT
);

CREATE TABLE skills (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL UNIQUE,
    version    TEXT,
    content    TEXT NOT NULL,
    file_path  TEXT,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    user_id    TEXT
);

-- The store's memory of committed writes by idempotency key (local only): a
-- retried request gets its first reply back and writes nothing.
CREATE TABLE idempotency (
    key        TEXT PRIMARY KEY,
    verb       TEXT NOT NULL,
    reply      TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
) WITHOUT ROWID;

-- 008_hook_events_ingest: hook_events is the hottest write path (100,000+
-- rows/s), so each row does only the SQL work that buys something.
--
-- * No per-row event-log trigger: the store writes one events row per task
--   of each hook.add request (topic hook.added, services/store/store_hooks.c),
--   in the same transaction. Consumers read the rows themselves (hook.list).
-- * No CHECK (json_valid(event_data)): only the store writes this table, and
--   it parses every event_data with cJSON (an object) before the insert.
-- * The (task_id, id) index leaves out rows without a task (most hook events
--   of unmanaged sessions): timeline queries always name a task.
--
-- The table is rebuilt (SQLite cannot drop a CHECK otherwise); every row is
-- copied with its id, so automation_events.event_id still points at it.
-- The store runs migrations with foreign_keys off and checks them after.

DROP TRIGGER hook_events_event_insert;

CREATE TABLE hook_events_new (
    id             INTEGER PRIMARY KEY,
    uid            TEXT,          -- per-event key: a resent event is stored once
    task_id        TEXT,
    agent_id       TEXT,
    system_id      TEXT,
    session_id     TEXT,
    hook_type      TEXT NOT NULL CHECK (length(hook_type) BETWEEN 1 AND 64),
    hook_timestamp TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    event_data     TEXT NOT NULL, -- a JSON object, checked by the store
    tool_name      TEXT,
    file_path      TEXT,
    success        INTEGER CHECK (success IS NULL OR success IN (0, 1)),
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

INSERT INTO hook_events_new (id, uid, task_id, agent_id, system_id, session_id, hook_type,
                             hook_timestamp, event_data, tool_name, file_path, success, created_at)
SELECT id, uid, task_id, agent_id, system_id, session_id, hook_type,
       hook_timestamp, event_data, tool_name, file_path, success, created_at
FROM hook_events ORDER BY id;

DROP TABLE hook_events;
ALTER TABLE hook_events_new RENAME TO hook_events;

CREATE INDEX hook_events_task ON hook_events (task_id, id) WHERE task_id IS NOT NULL;
CREATE UNIQUE INDEX hook_events_uid ON hook_events (uid) WHERE uid IS NOT NULL;

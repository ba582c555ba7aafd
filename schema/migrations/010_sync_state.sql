-- 010_sync_state: the connectivity of this machine to its sync hub, one row.
-- ccm-sync sets it; the router reads it to hold requires_supabase tasks in
-- WaitConnection while sync is not connected. Every change is an event
-- (topic sync.state), so subscribers learn of it as of any other change.

CREATE TABLE sync_state (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    state      TEXT NOT NULL DEFAULT 'LocalOnly'
               CHECK (state IN ('LocalOnly', 'Online', 'Offline', 'Queuing', 'Syncing')),
    detail     TEXT,
    updated_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
INSERT INTO sync_state (id) VALUES (1);

CREATE TRIGGER sync_state_event_updated AFTER UPDATE ON sync_state
BEGIN
    INSERT INTO events (topic, entity, entity_id, data)
    VALUES ('sync.state', 'sync_state', '1',
            json_object('state', new.state, 'detail', new.detail,
                        'connected', json(CASE WHEN new.state IN ('Online', 'Syncing')
                                               THEN 'true' ELSE 'false' END),
                        'updated_at', new.updated_at));
END;

-- 030_permission_requests: a PermissionRequest hook that a policy answers
-- "ask" waits for a human. ccm-hooks parks the hook (ccm-hook keeps waiting),
-- records the request here (permission.request), and releases it once the
-- request is answered (permission.answer, e.g. from the browser's inbox) or
-- expires (permission.close). Local to this machine, like hook_events: a
-- parked hook lives on one machine and the answer must reach it there.
--
--   pending -> allowed | denied | expired     (nothing else; answered once)
--
-- delivered_at is set when the parked ccm-hook got the decision: an answer
-- that came after the agent stopped waiting is allowed/denied but never
-- delivered (the user answered in the agent's TUI instead).

CREATE TABLE permission_requests (
    id           TEXT PRIMARY KEY,             -- a UUID, made by the ingester
    owner        TEXT NOT NULL,                -- the ingester holding the hook
    task_id      TEXT,
    agent_id     TEXT,
    system_id    TEXT,
    session_id   TEXT,
    event_uid    TEXT,                         -- the PermissionRequest hook event's uid
    tool_name    TEXT,
    tool_input   TEXT CHECK (tool_input IS NULL OR json_valid(tool_input)),
    rule         TEXT,                         -- the policy rule that asked
    reason       TEXT,
    status       TEXT NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'allowed', 'denied', 'expired')),
    answer       TEXT,                         -- the answerer's reason (a deny's message)
    answered_by  TEXT,
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    expires_at   TEXT NOT NULL,
    answered_at  TEXT,
    delivered_at TEXT,
    close_reason TEXT                          -- why it expired
);
CREATE INDEX permission_requests_pending ON permission_requests (status, created_at)
    WHERE status = 'pending';
CREATE INDEX permission_requests_task ON permission_requests (task_id) WHERE task_id IS NOT NULL;

-- What every permission event carries: enough for an inbox to show and
-- answer it without reading the row back.
CREATE TRIGGER permission_requests_event_insert AFTER INSERT ON permission_requests
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('permission.requested', 'permission_requests', new.id, new.task_id,
            json_object('id', new.id, 'agent_id', new.agent_id, 'task_id', new.task_id,
                        'system_id', new.system_id, 'tool_name', new.tool_name,
                        'tool_input', json(new.tool_input), 'rule', new.rule,
                        'reason', new.reason, 'status', new.status,
                        'expires_at', new.expires_at));
END;

CREATE TRIGGER permission_requests_event_status AFTER UPDATE OF status ON permission_requests
WHEN old.status IS NOT new.status
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES (CASE new.status WHEN 'expired' THEN 'permission.expired'
                            ELSE 'permission.answered' END,
            'permission_requests', new.id, new.task_id,
            json_object('id', new.id, 'agent_id', new.agent_id, 'task_id', new.task_id,
                        'status', new.status, 'answer', new.answer,
                        'answered_by', new.answered_by, 'reason', new.close_reason));
END;

CREATE TRIGGER permission_requests_event_delivered AFTER UPDATE OF delivered_at ON permission_requests
WHEN old.delivered_at IS NULL AND new.delivered_at IS NOT NULL
BEGIN
    INSERT INTO events (topic, entity, entity_id, task_id, data)
    VALUES ('permission.delivered', 'permission_requests', new.id, new.task_id,
            json_object('id', new.id, 'agent_id', new.agent_id, 'task_id', new.task_id,
                        'status', new.status));
END;

-- 009_task_dependencies: a task runs only once every task it depends on is
-- complete (the task-focused seed's dependencies). The store refuses a
-- dependency on a missing task and any that would close a cycle.

CREATE TABLE task_dependencies (
    task_id    TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    depends_on TEXT NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    PRIMARY KEY (task_id, depends_on),
    CHECK (task_id != depends_on)
);
CREATE INDEX task_dependencies_on ON task_dependencies (depends_on);

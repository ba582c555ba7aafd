-- 004_executor: what the executor needs on a task: the agent profile to run
-- and an optional run timeout. (003's sync triggers list the task columns of
-- 001; a later migration that rebuilds them will carry these two as well.)

ALTER TABLE tasks ADD COLUMN agent_profile TEXT CHECK (agent_profile IS NULL
    OR length(agent_profile) BETWEEN 1 AND 64);
ALTER TABLE tasks ADD COLUMN timeout_s INTEGER CHECK (timeout_s IS NULL OR timeout_s > 0);

-- The executor claims queued tasks in priority order, oldest first.
CREATE INDEX tasks_queue ON tasks (status, priority, created_at);

-- Details of a run that have no column of their own, e.g. headless Claude
-- Code's session_id, num_turns, total_cost_usd and is_error.
ALTER TABLE task_results ADD COLUMN details TEXT CHECK (details IS NULL OR json_valid(details));

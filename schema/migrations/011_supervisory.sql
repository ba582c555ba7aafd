-- 011_supervisory: a supervisory task reviews a finished worker task in the
-- worker's own worktree, so it must run on the system that holds that
-- worktree: task_worktrees records it. Reports are listed per reviewed task.

ALTER TABLE task_worktrees ADD COLUMN system_id TEXT REFERENCES systems (id);
CREATE INDEX supervisory_reports_task ON supervisory_reports (task_id);
CREATE INDEX tasks_parent ON tasks (parent_task_id) WHERE parent_task_id IS NOT NULL;

-- 035_retry_at: the store keeps the retry schedule of failed tasks.
--
-- * tasks.retry_at: when a failed task that will be tried again is due back
--   in the queue (UTC, as protocol.md's times); NULL on every other task.
--   The move to failed sets it (store_retry.c says when), any other move
--   clears it. Not synced: the runner's own store owns its schedule.
-- * tasks_retry_due makes task.list's retry_due filter, which the router
--   polls each beat, an index walk over the few tasks waiting for one.
-- A task that failed before this migration keeps a NULL retry_at: it stays
-- failed (as a router restart left it before) until someone retries it.

ALTER TABLE tasks ADD COLUMN retry_at TEXT;

CREATE INDEX tasks_retry_due ON tasks (retry_at) WHERE retry_at IS NOT NULL;

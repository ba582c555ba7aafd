#!/usr/bin/env python3
"""bench/sync: how fast ccm-sync empties sync_queue into the hub.

Everything real: ccm-store and ccm-sync on a temporary CCM_HOME, PostgreSQL
15 with schema/supabase/ (fsync off, unix socket), and the test suite's
PostgREST-protocol server (tests/fake_postgrest.py) in front of it, with the
user's JWT, RLS and triggers on every row.

1. Rows/s pushed at sync.batch 1, 100 and 1,000: the queue is filled while
   ccm-sync is stopped (task.progress notes: one task_events row each),
   then ccm-sync starts and the clock runs until sync.status says nothing
   waits (every row marked synced after its 2xx). Median of BENCH_REPS.
   The limit, in the same run: the same number of rows, same columns, into
   the same table, by `psql \\copy` (one COPY, as the superuser).
2. The time to drain a 100,000-change backlog after reconnect: the rows are
   queued while the hub's server is down and ccm-sync is Offline; the clock
   runs from the server's restart to an empty queue. Next to `psql \\copy`
   of the same 100,000 rows.

Run: CCM_BIN_DIR=build /usr/bin/python3 bench/sync.py
Knobs: BENCH_ROWS (10000; a tenth at batch 1), BENCH_BACKLOG (100000),
BENCH_REPS (3).
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "integration"))
os.environ.setdefault("CCM_SOURCE_DIR", os.path.join(HERE, ".."))
os.environ.setdefault("CCM_BIN_DIR", os.path.join(HERE, "..", "build"))

import ccmtest  # noqa: E402
import synchub  # noqa: E402

ROWS = int(os.environ.get("BENCH_ROWS", "10000"))
BACKLOG = int(os.environ.get("BENCH_BACKLOG", "100000"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
SYNC_BIN = os.path.join(ccmtest.BIN_DIR, "ccm-sync")


class Machine:
    def __init__(self, hub, batch):
        self.hub = hub
        self.home = ccmtest.Home(extra_env={
            "CCM_EXECUTOR_MACHINE_ID": f"bench-{uuid.uuid4().hex[:8]}",
            "CCM_SYNC_BATCH": str(batch), "CCM_SYNC_PULL_MS": "60000",
            "CCM_SYNC_BACKOFF_BASE_MS": "50", "CCM_SYNC_BACKOFF_MAX_MS": "200",
            "CCM_STORE_SYNCHRONOUS": "normal"})
        self.home.start()
        self.sync = None
        mid = self.home.env["CCM_EXECUTOR_MACHINE_ID"]
        self.home.ok("system.register", idem=str(uuid.uuid4()), hostname=mid, machine_id=mid)
        self.task = self.home.ok("task.add", prompt="bench", idem=str(uuid.uuid4()))["task"]["id"]
        rc, out, err = self.home.run_cli(
            "sync", "login", "--url", hub.url, "--anon-key", hub.anon_key, "--email",
            "bench@example.com", "--password-stdin", input="bench-pw\n")
        assert rc == 0, err

    def queue(self, n):
        pipe = ccmtest.Pipeline(self.home.main_client, window=64)
        for start in range(0, n, 5000):
            pipe.run([("task.progress", {"task": self.task, "idem": str(uuid.uuid4()),
                                         "data": {"n": i, "text": "a progress note of a task"}})
                      for i in range(start, min(n, start + 5000))])

    def pending(self):
        return self.home.ok("sync.status")["pending"]

    def start_sync(self):
        err = open(os.path.join(self.home.path, "sync.stderr"), "ab")
        self.sync = subprocess.Popen([SYNC_BIN], env=self.home.env, stdin=subprocess.DEVNULL,
                                     stdout=err, stderr=err)
        err.close()
        self.home.children.append(self.sync)

    def wait_empty(self, timeout=600):
        deadline = time.monotonic() + timeout
        while self.pending() > 0:
            if time.monotonic() > deadline or self.sync.poll() is not None:
                raise SystemExit("ccm-sync did not drain the queue:\n"
                                 + open(os.path.join(self.home.path, "sync.stderr")).read()[-2000:])
            time.sleep(0.02)
        return time.monotonic()

    def close(self):
        problems = self.home.cleanup()
        if problems:
            print("  (cleanup: %s)" % problems[:3])


def copy_limit(hub, user_id, task_id, n):
    """Seconds for psql \\copy of n task_events rows of the same shape."""
    path = tempfile.mktemp(prefix="ccm-bench-", suffix=".csv", dir="/tmp")
    with open(path, "w") as f:
        for i in range(n):
            f.write(f'{uuid.uuid4()},{task_id},progress,"{{""n"": {i}, ""text"": ""a progress '
                    f'note of a task""}}",2026-01-01T00:00:00.000Z,{user_id}\n')
    os.chmod(path, 0o644)
    cmd = (f"\\copy public.task_events (id, task_id, event_type, event_data, created_at, user_id)"
           f" FROM '{path}' WITH (FORMAT csv)")
    start = time.monotonic()
    done = subprocess.run(["psql", "-h", hub.pg.dir, "-p", str(hub.pg.port), "-U", "postgres",
                           "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c", cmd],
                          capture_output=True)
    elapsed = time.monotonic() - start
    os.unlink(path)
    if done.returncode != 0:
        raise SystemExit(f"psql \\copy failed: {done.stderr.decode()[-500:]}")
    hub.sql("DELETE FROM task_events WHERE created_at = '2026-01-01T00:00:00Z'")
    return elapsed


def push_run(hub, batch, n):
    m = Machine(hub, batch)
    try:
        m.queue(n)
        rows = m.pending()
        start = time.monotonic()
        m.start_sync()
        end = m.wait_empty()
        return rows, end - start, m.task
    finally:
        m.close()


def main():
    hub = synchub.Hub()
    try:
        user = hub.add_user("bench@example.com", "bench-pw")
        print(f"bench/sync: ccm-sync -> fake_postgrest.py -> PostgreSQL 15; medians of {REPS}")
        copy_head = "psql \\copy rows/s"
        print(f"{'batch':>6} {'rows':>7} {'pushed rows/s':>14} {copy_head:>18} {'ratio':>7}")
        for batch in (1, 100, 1000):
            n = max(ROWS // 10, 100) if batch == 1 else ROWS
            rates, limits = [], []
            for _ in range(REPS):
                rows, seconds, task = push_run(hub, batch, n)
                rates.append(rows / seconds)
                limits.append(rows / copy_limit(hub, user, task, rows))
            rate, limit = statistics.median(rates), statistics.median(limits)
            print(f"{batch:>6} {rows:>7} {rate:>14,.0f} {limit:>18,.0f} {rate / limit:>7.3f}")

        # A backlog queued while the hub is down, drained after reconnect.
        m = Machine(hub, 500)
        try:
            m.start_sync()
            while m.pending() > 0:
                time.sleep(0.05)
            hub.stop_server()
            t0 = time.monotonic()
            m.queue(BACKLOG)
            queued = m.pending()
            fill = time.monotonic() - t0
            state = m.home.ok("sync.state")["sync"]["state"]
            start = time.monotonic()
            hub.start_server()
            end = m.wait_empty()
            limit = copy_limit(hub, user, m.task, queued)
            print(f"backlog: {queued:,} changes queued in {fill:.1f} s while {state}; drained"
                  f" {end - start:.1f} s after reconnect ({queued / (end - start):,.0f} rows/s,"
                  f" batch 500); psql \\copy of the same rows: {limit:.1f} s"
                  f" ({queued / limit:,.0f} rows/s); ratio {(end - start) / limit:.1f}x")
        finally:
            m.close()
    finally:
        hub.close()


if __name__ == "__main__":
    main()

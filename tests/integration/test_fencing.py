"""Integration tests of fencing by attempt (issue 14): a task never runs twice
at once. Real store, router and two executors, real tmux, git and ccm-agent.

Each agent appends "TASK ATTEMPT start|end TIME" to a shared file, so the test
reads what really ran and when: every attempt line is unique, and no two
attempts of one task overlap in time.
- An executor paused (SIGSTOP, like a laptop lid) past its lease: its agent is
  stopped by ccm-agent before the router gives the executor up, the task runs
  again on the other executor, and once the paused one wakes it is fenced:
  the store refuses its stale attempt's writes, and it keeps working.
- An executor killed and not restarted: the same, from the lease alone.
- A stale attempt's write is refused by the store (field "attempt").
"""

import os
import signal
import time
import uuid

import ccmtest
import test_executor as tx
from test_router import BEAT_MS, RouterTestCase


class FencingTestCase(RouterTestCase):

    def setUp(self):
        super().setUp()
        self.runs = os.path.join(self.home.path, "runs")
        open(self.runs, "w").close()

    def long_task(self, seconds, project="web"):
        line = f'echo "$CCM_TASK_ID $CCM_ATTEMPT %s $(date +%%s.%%N)" >> {self.runs}'
        return self.add(f"{line % 'start'}; sleep {seconds}; {line % 'end'}", project)

    def attempts(self):
        """{(task, attempt): {"start": t, "end": t}} from the shared file; every
        line must be unique."""
        with open(self.runs) as f:
            lines = [l.split() for l in f.read().splitlines() if l.strip()]
        seen, out = set(), {}
        for task, attempt, what, when in lines:
            key = (task, int(attempt), what)
            self.assertNotIn(key, seen, f"attempt line written twice: {key}")
            seen.add(key)
            out.setdefault((task, int(attempt)), {})[what] = float(when)
        return out

    def assertNoOverlap(self, task_id, killed_at=None):
        runs = sorted(((a, r) for (t, a), r in self.attempts().items() if t == task_id))
        for (a1, r1), (a2, r2) in zip(runs, runs[1:]):
            # An attempt that never wrote its end was killed: it ended no later
            # than when the test saw its agent gone.
            end = r1.get("end", killed_at)
            self.assertIsNotNone(end, f"attempt {a1} has no end and no kill time")
            self.assertLess(end, r2["start"],
                            f"task {task_id[:8]}: attempt {a1} (ended {end:.3f}) overlaps"
                            f" attempt {a2} (started {r2['start']:.3f})")
        return runs

    def agent_pids(self, sock):
        """Pids of the live panes of a tmux server (the agents' ccm-agent wrappers)."""
        res = tx.subprocess.run(["tmux", "-S", sock, "list-panes", "-a", "-F",
                                 "#{pane_dead} #{pane_pid}"], capture_output=True, text=True)
        return [int(p) for d, p in (l.split() for l in res.stdout.splitlines()) if d == "0"]


class TestPausedExecutor(FencingTestCase):

    def test_sigstop_past_the_lease_is_fenced(self):
        self.start_router()
        a = self.start_system("alpha", "web", capacity=1)
        task = self.long_task(6)
        self.wait_status(task, "executing")
        self.assertEqual(self.row(task)[2], a)
        b = self.start_system("beta", "web", capacity=1)
        proc_a, _, sock_a = self.systems["alpha"]
        tx.wait_for("attempt 1 to start", lambda: (task, 1) in self.attempts(), 10)
        os.kill(proc_a.pid, signal.SIGSTOP)
        paused_at = time.time()
        try:
            # ccm-agent stops the agent once its lease (2 beats) runs out,
            # though its executor is frozen.
            tx.wait_for("the paused executor's agent to be stopped by its lease",
                        lambda: not self.agent_pids(sock_a), 3 * BEAT_MS / 1000 + 5,
                        diagnose=self.diagnose)
            stopped_at = time.time()
            self.assertLess(stopped_at - paused_at, 2 * BEAT_MS / 1000 + 2.5)
            # The router gives alpha up; the task runs on beta, attempt 2.
            tx.wait_for("attempt 2 on beta", lambda: (task, 2) in self.attempts(), 20,
                        diagnose=self.diagnose)
            self.assertEqual(self.row(task)[2], b)
            remaining = paused_at + 10 - time.time()
            if remaining > 0:
                time.sleep(remaining)  # the pause itself: 10 s, like a closed lid
        finally:
            os.kill(proc_a.pid, signal.SIGCONT)
        final = self.wait_status(task, "complete", timeout=30)
        self.assertEqual(final[3], 2, "two attempts: the one fenced and the one that ran")
        runs = self.assertNoOverlap(task, killed_at=stopped_at)
        self.assertEqual([a for a, _ in runs], [1, 2])
        self.assertNotIn("end", runs[0][1], "the fenced attempt did not run to its end")
        # One result only, of attempt 2; alpha's stale writes were refused.
        results = self.home.query("SELECT status, json_extract(details, '$.attempt')"
                                  " FROM task_results WHERE task_id = ?", task)
        self.assertEqual(results, [("complete", 2)], results)
        tx.wait_for("alpha to log its refused stale write",
                    lambda: "is stale" in self.home_stderr() or "not held by" in
                    self.home_stderr(), 15, diagnose=self.diagnose)
        # Woken, alpha is back and works: a new task runs there.
        self.assertIsNone(proc_a.poll(), "alpha died after its pause")
        after = self.add(f"echo after >> {self.runs}.after", "web", "--system", a)
        self.wait_status(after, "complete", timeout=30)

    def home_stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()


class TestDeadExecutor(FencingTestCase):

    def test_kill9_not_restarted_stops_its_agent(self):
        self.start_router()
        a = self.start_system("alpha", "web", capacity=1)
        task = self.long_task(8)
        self.wait_status(task, "executing")
        self.assertEqual(self.row(task)[2], a)
        proc_a, _, sock_a = self.systems["alpha"]
        tx.wait_for("attempt 1 to start", lambda: (task, 1) in self.attempts(), 10)
        os.kill(proc_a.pid, signal.SIGKILL)
        proc_a.wait(10)
        killed_at = time.time()
        tx.wait_for("the dead executor's agent to be stopped by its lease",
                    lambda: not self.agent_pids(sock_a), 3 * BEAT_MS / 1000 + 5,
                    diagnose=self.diagnose)
        stopped_at = time.time()
        self.assertLess(stopped_at - killed_at, 2 * BEAT_MS / 1000 + 2.5)
        with open(os.path.join(self.home.path, "logs-alpha", f"{task}.log.exit")) as f:
            self.assertEqual(f.read().split(), ["137", "lease"])
        # The task goes back to the queue and runs on beta.
        self.start_system("beta", "web", capacity=1)
        self.wait_status(task, "complete", timeout=40)
        runs = self.assertNoOverlap(task, killed_at=stopped_at)
        self.assertEqual([a for a, _ in runs], [1, 2])


class TestBusyExecutor(FencingTestCase):
    """The issue's reproduction on one machine: an executor of capacity 8, every
    core busy (6 CPU hogs at normal priority, like agents), a 3,000-file
    repository whose worktrees take a while to check out, and 32 tasks at once.
    Before, its loop blocked in git and stopped beating, the router gave it up,
    and 19 of 48 tasks were started twice. Now it keeps beating: each task runs
    exactly once, and no two runs of one task overlap."""

    def test_busy_but_alive_is_not_given_up(self):
        repo = self.make_repo("big", {f"src/d{i % 30}/f{i}.txt": f"file {i}\n"
                                      for i in range(3000)})
        self.add_project("big", repo)
        hogs = [tx.subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(6)]
        def stop_hogs():
            for hog in hogs:
                hog.kill()
                hog.wait()
        self.addCleanup(stop_hogs)
        # The product's default beat (1 s: a 2 s lease), as a laptop runs it.
        self.start_router(beat_ms=1000)
        self.start_system("busy", "big", capacity=8, beat_ms=1000)
        tasks = [self.long_task(1 + i % 3, project="big") for i in range(32)]
        for task in tasks:
            self.wait_status(task, "complete", timeout=240)
        stop_hogs()
        for task in tasks:
            self.assertEqual(self.row(task)[3], 1, f"task {task[:8]} ran more than once")
            runs = self.assertNoOverlap(task)
            self.assertEqual([a for a, r in runs if "end" in r], [1])
        self.assertNotIn("offline", " ".join(
            r[0] for r in self.home.query("SELECT status FROM systems")))
        self.assertNotIn("no heartbeat for", self.home_stderr())

    def home_stderr(self):
        with open(self.stderr_path, errors="replace") as f:
            return f.read()


class TestStaleAttempt(FencingTestCase):

    def test_store_refuses_a_stale_attempt(self):
        system = self.home.ok("system.register", hostname="h", machine_id="m-" + uuid.uuid4().hex,
                              idem=uuid.uuid4().hex)["system"]["id"]
        task = self.home.ok("task.add", prompt="p", idem=uuid.uuid4().hex)["task"]["id"]
        self.home.ok("task.transition", task=task, to="assigned", locked_by=system,
                     idem=uuid.uuid4().hex)
        stale = self.home.call("task.transition", task=task, to="executing", held_by=system,
                               attempt=7, idem=uuid.uuid4().hex)
        self.assertError(stale, "conflict", "attempt")
        self.assertIn("attempt 7 is stale", stale.message)
        self.assertEqual(self.home.scalar("SELECT status FROM tasks WHERE id = ?", task),
                         "assigned")
        no_holder = self.home.call("task.transition", task=task, to="executing", attempt=1,
                                   idem=uuid.uuid4().hex)
        self.assertError(no_holder, "missing_field", "held_by")
        self.home.ok("task.transition", task=task, to="executing", held_by=system, attempt=1,
                     idem=uuid.uuid4().hex)
        self.assertEqual(self.home.scalar("SELECT status FROM tasks WHERE id = ?", task),
                         "executing")


if __name__ == "__main__":
    ccmtest.main()

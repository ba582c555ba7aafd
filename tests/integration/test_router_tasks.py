"""Integration tests of the router's task kinds and queue (issue 5): three
executors each with its own projects, tags and capacity; priority order under
load; WaitConnection for requires_supabase tasks; supervisory reviews that run
in the reviewed task's worktree and leave a supervisory_reports row; manager
tasks whose agent adds subtasks. Real store, router and executors, real tmux
and git, `shell` agents.
"""

import json
import os
import time
import uuid

import ccmtest
import test_executor as tx
from test_router import RouterTestCase

CCM_BIN = os.path.join(ccmtest.BIN_DIR, "ccm")


class TestThreeExecutors(RouterTestCase):

    def test_three_systems_each_decision(self):
        self.start_router()
        a = self.start_system("alpha", "web,api", tags="gpu,os=linux", capacity=1)
        b = self.start_system("beta", "web", capacity=2)
        c = self.start_system("gamma", "api", tags="os=mac", capacity=3)
        out = os.path.join(self.home.path, "ran")
        os.makedirs(out)

        def ran_where(name, project, *options):
            task = self.add(f"echo $CCM_SYSTEM_ID > {out}/{name}", project, *options)
            self.wait_status(task, "complete")
            with open(f"{out}/{name}") as f:
                return f.read().strip()

        self.assertEqual(ran_where("mac", "api", "--requires", "os=mac"), c)
        self.assertEqual(ran_where("gpu-api", "api", "--requires", "gpu=true"), a)
        self.assertEqual(ran_where("gpu-web", "web", "--requires", "gpu=true"), a)
        self.assertEqual(ran_where("linux", "web", "--requires", "os=linux"), a)
        self.assertEqual(ran_where("pinned", "web", "--system", b), b)
        # All idle: api's candidates tie on load (0/1, 0/3) and running (0): lowest id.
        self.assertEqual(ran_where("tie", "api"), min(a, c))
        # web: alpha and beta idle, the same tie rule.
        self.assertEqual(ran_where("tie-web", "web"), min(a, b))

        mac_web = self.add("echo never", "web", "--requires", "os=mac")
        self.wait_reason(mac_web, "no executor holding project web matches os=mac")
        both = self.add("echo never", "api", "--requires", "gpu=true", "--requires", "os=mac")
        self.wait_reason(both, "no executor holding project api matches all of gpu=true, os=mac")
        wrong = self.add("echo never", "api", "--system", b)
        self.wait_reason(wrong, f"system {b} does not hold project api")

        # Fill api: four long tasks take alpha's one slot and gamma's three.
        hold = os.path.join(self.home.path, "hold")
        long_ones = [self.add(f"echo $CCM_SYSTEM_ID >> {out}/long; while [ ! -e {hold} ];"
                              f" do sleep 0.1; done", "api") for _ in range(4)]
        for task in long_ones:
            self.wait_status(task, "executing")
        fifth = self.add(f"echo $CCM_SYSTEM_ID > {out}/fifth", "api")
        self.wait_reason(fifth, "all 2 candidates at capacity")
        with open(f"{out}/long") as f:
            self.assertEqual(sorted(f.read().split()), sorted([a, c, c, c]),
                             "each system runs at most its capacity")
        # web still runs on beta meanwhile: alpha is full, beta is not.
        self.assertEqual(ran_where("web-while-full", "web"), b)
        open(hold, "w").close()
        for task in long_ones + [fifth]:
            self.wait_status(task, "complete")
        for task in (mac_web, both, wrong):
            self.assertEqual(self.row(task)[0], "queued")
        self.assertIsNone(self.router.poll(), "the router died:\n" + self.diagnose())


class TestPriorityUnderLoad(RouterTestCase):

    def test_order_holds_with_a_full_queue(self):
        self.start_router()
        self.start_system("only", "web", capacity=1)
        order = os.path.join(self.home.path, "order")
        gate = os.path.join(self.home.path, "gate")
        blocker = self.add(f"while [ ! -e {gate} ]; do sleep 0.1; done", "web")
        self.wait_status(blocker, "executing")
        # 24 tasks in a mixed order while the one slot is taken.
        plan = ["low", "urgent", "normal", "high"] * 6
        tasks = []
        for i, priority in enumerate(plan):
            name = f"{i:02d}-{priority}"
            tasks.append((name, priority, self.add(f"echo {name} >> {order}", "web",
                                                   "--priority", priority)))
        rank = {"urgent": 0, "high": 1, "normal": 2, "low": 3}
        expected = [name for name, priority, _ in
                    sorted(tasks, key=lambda t: (rank[t[1]], t[0]))]
        open(gate, "w").close()
        for _, _, task in tasks:
            self.wait_status(task, "complete", timeout=60)
        with open(order) as f:
            self.assertEqual(f.read().split(), expected,
                             "urgent > high > normal > low, then first come first served")


class TestWaitConnection(RouterTestCase):

    def set_sync(self, state):
        reply = self.home.ok("sync.set_state", state=state, idem=uuid.uuid4().hex)
        self.assertEqual(reply["sync"]["state"], state)
        return reply["sync"]

    def test_waits_then_runs_or_times_out(self):
        self.start_router()
        self.start_system("only", "web", capacity=2)
        out = os.path.join(self.home.path, "ran")
        os.makedirs(out)
        self.assertEqual(self.home.ok("sync.state")["sync"]["connected"], False)

        waiting = self.add(f"echo ran > {out}/waiting", "web", "--requires-supabase")
        self.wait_reason(waiting, "WaitConnection: waits for sync to connect (sync is LocalOnly)")
        self.assertEqual(self.set_sync("Offline")["connected"], False)
        self.wait_reason(waiting, "WaitConnection: waits for sync to connect (sync is Offline)")
        rc, shown, _ = self.home.run_cli("task", "show", waiting[:8])
        self.assertIn("status_reason  WaitConnection: waits for sync to connect"
                      " (sync is Offline)\n", shown)
        self.assertIn("requires       a connected sync hub (requires_supabase)\n", shown)

        # A task without the requirement runs meanwhile.
        local = self.add(f"echo ran > {out}/local", "web")
        self.wait_status(local, "complete")
        self.assertEqual(self.row(waiting)[0], "queued")
        self.assertFalse(os.path.exists(f"{out}/waiting"))

        # Timed out while still offline: failed, never run, no attempt used.
        doomed = self.add(f"echo ran > {out}/doomed", "web", "--requires-supabase",
                          "--timeout", "2")
        self.wait_reason(doomed, "WaitConnection: waits for sync to connect (sync is Offline)")
        status, reason, _, attempts = self.wait_status(doomed, "failed", timeout=15)
        self.assertEqual(reason, "WaitConnection timed out: sync was not connected within 2 s"
                                 " (it is Offline)")
        self.assertEqual(attempts, 0)
        self.assertFalse(os.path.exists(f"{out}/doomed"))

        # Connected: the waiting task runs.
        self.assertEqual(self.set_sync("Online")["connected"], True)
        self.wait_status(waiting, "complete")
        with open(f"{out}/waiting") as f:
            self.assertEqual(f.read(), "ran\n")
        self.assertEqual(self.home.query("SELECT count(*) FROM events WHERE topic = 'sync.state'"),
                         [(2,)], "one event per change of state")
        time.sleep(0.5)
        self.assertEqual(self.row(doomed)[0], "failed", "a timed-out task stays failed")

    def test_bad_state_is_refused(self):
        reply = self.home.call("sync.set_state", state="Connected", idem=uuid.uuid4().hex)
        self.assertEqual(reply.code, "bad_field")
        self.assertIn("state", reply.message)
        self.assertEqual(self.home.ok("sync.state")["sync"]["state"], "LocalOnly")


class TestSupervisory(RouterTestCase):

    def report_rows(self, task):
        return self.home.query("SELECT quality_score, issues, recommendations, alert_level,"
                               " agent_id FROM supervisory_reports WHERE task_id = ?", task)

    def test_review_runs_in_the_workers_worktree(self):
        self.start_router()
        first = self.start_system("first", "web", capacity=2)
        second = self.start_system("second", "web", capacity=2)
        # The worker runs on the system with the higher id, so that the
        # review (whose tie would go to the lower id) must follow it there.
        there = max(first, second)
        worker = self.add("echo hello > hello.txt", "web", "--system", there)
        self.wait_status(worker, "complete")
        worktree = self.home.query("SELECT worktree_path, system_id FROM task_worktrees"
                                   " WHERE task_id = ?", worker)[0]
        self.assertEqual(worktree[1], there)

        seen = os.path.join(self.home.path, "seen")
        report = {"quality_score": 8, "issues": ["no test for hello.txt"],
                  "recommendations": ["add a test", "say why"], "alert_level": "warning"}
        script = (f"{{ pwd; echo $CCM_SYSTEM_ID; echo $CCM_REVIEW_TASK_ID; cat hello.txt; }}"
                  f" > {seen}; printf '%s' '{json.dumps(report)}' > \"$CCM_REPORT_FILE\"")
        rc, out, err = self.home.run_cli("task", "add", "--review", worker[:8], "--agent",
                                         "shell", "--", script)
        self.assertEqual(rc, 0, err)
        review = out.strip()
        self.wait_status(review, "complete")
        with open(seen) as f:
            self.assertEqual(f.read().split("\n"),
                             [worktree[0], there, worker, "hello", ""])
        rows = self.report_rows(worker)
        self.assertEqual(len(rows), 1)
        score, issues, recs, alert, agent = rows[0]
        self.assertEqual((score, json.loads(issues), json.loads(recs), alert),
                         (8, report["issues"], report["recommendations"], "warning"))
        self.assertEqual(agent, self.home.query("SELECT agent_id FROM task_results WHERE"
                                                " task_id = ?", review)[0][0])
        # The review changed nothing and made no worktree of its own.
        self.assertEqual(self.home.query("SELECT count(*) FROM task_worktrees WHERE task_id = ?",
                                         review), [(0,)])
        self.assertEqual(self.home.query("SELECT files_changed FROM task_results WHERE"
                                         " task_id = ?", review), [("[]",)])
        rc, shown, _ = self.home.run_cli("task", "show", worker[:8])
        self.assertIn("review         quality 8/10, alert warning\n"
                      "  issue: no test for hello.txt\n"
                      "  recommends: add a test\n  recommends: say why\n", shown)

        # Without a report file, the last JSON object with a quality_score in
        # the output counts (as headless Claude Code answers).
        rc, out, err = self.home.run_cli(
            "task", "add", "--review", worker[:8], "--agent", "shell", "--",
            "echo 'thinking {not json}'; echo '{\"quality_score\": 5, \"issues\": [\"style\"],"
            " \"alert_level\": \"info\"}'; echo done")
        self.assertEqual(rc, 0, err)
        self.wait_status(out.strip(), "complete")
        self.assertEqual([r[:4] for r in self.report_rows(worker)],
                         [(8, json.dumps(report["issues"], separators=(",", ":")),
                           json.dumps(report["recommendations"], separators=(",", ":")),
                           "warning"), (5, '["style"]', "[]", "info")])

    def test_reviews_without_a_valid_report_fail_with_the_reason(self):
        self.start_router(CCM_ROUTER_RETRY_BASE_MS="100")
        self.start_system("only", "web", capacity=2)
        worker = self.add("echo hello > hello.txt", "web")
        self.wait_status(worker, "complete")
        cases = {
            "echo nothing to say": "review report: no report: nothing in $CCM_REPORT_FILE and no"
                                   " JSON object with a quality_score in the output",
            "echo '{\"quality_score\": 11}' > \"$CCM_REPORT_FILE\"":
                "review report: quality_score: ",
            "echo 'not json' > \"$CCM_REPORT_FILE\"": "review report: ",
            "echo '{\"quality_score\": 3, \"alert_level\": \"panic\"}' > \"$CCM_REPORT_FILE\"":
                "review report: alert_level: ",
        }
        reviews = {}
        for script, words in cases.items():
            rc, out, err = self.home.run_cli("task", "add", "--review", worker[:8], "--agent",
                                             "shell", "--", script)
            self.assertEqual(rc, 0, err)
            reviews[out.strip()] = words
        for review, words in reviews.items():
            tx.wait_for(f"review {review[:8]} failed", lambda: self.home.query(
                "SELECT json_extract(event_data, '$.reason') FROM task_events WHERE task_id = ?"
                " AND event_type = 'failed'", review), 30, diagnose=self.diagnose)
            reason = self.home.query("SELECT json_extract(event_data, '$.reason') FROM"
                                     " task_events WHERE task_id = ? AND event_type = 'failed'"
                                     " ORDER BY rowid LIMIT 1", review)[0][0]
            self.assertTrue(reason.startswith(words), f"{reason!r} should start with {words!r}")
        self.assertEqual(self.report_rows(worker), [], "no bad report is recorded")

        # A review of a failed task waits, blocked, with the reason.
        broken = self.add("exit 3", "web")
        rc, out, err = self.home.run_cli("task", "add", "--review", broken[:8], "--agent",
                                         "shell", "--", "true")
        blocked = out.strip()
        tx.wait_for("the broken worker out of attempts",
                    lambda: self.row(broken)[0] == "failed" and self.row(broken)[3] == 3, 30,
                    diagnose=self.diagnose)
        self.wait_reason(blocked, f"waits for task {broken[:8]}")

        # A review of a worktree that was discarded fails at start, saying so.
        self.home.ok("worktree.upsert", idem=uuid.uuid4().hex, task_id=worker, worktree_path="/nowhere",
                     branch_name="ccm/" + worker[:8], status="discarded")
        rc, out, err = self.home.run_cli("task", "add", "--review", worker[:8], "--agent",
                                         "shell", "--", "true")
        late = out.strip()
        tx.wait_for("the late review failed", lambda: self.home.query(
            "SELECT 1 FROM task_events WHERE task_id = ? AND event_type = 'failed'"
            " AND json_extract(event_data, '$.reason') = ?", late,
            f"the worktree of task {worker[:8]} was discarded; nothing left to review"), 30,
            diagnose=self.diagnose)


class TestManager(RouterTestCase):

    def test_manager_adds_subtasks(self):
        self.start_router()
        self.start_system("only", "web", capacity=3)
        out = os.path.join(self.home.path, "ran")
        os.makedirs(out)
        script = "; ".join(
            f"{CCM_BIN} task add --parent \"$CCM_TASK_ID\" --agent shell --priority high"
            f" -- 'echo {part} > {out}/{part}'" for part in ("one", "two"))
        manager = self.add(script, "web", "--type", "manager")
        self.wait_status(manager, "complete")
        subtasks = tx.wait_for("two subtasks", lambda: (rows := self.home.query(
            "SELECT t.id, t.status, t.task_type, t.priority, p.name FROM tasks t JOIN projects p"
            " ON p.id = t.project_id WHERE t.parent_task_id = ? ORDER BY t.created_at",
            manager)) and len(rows) == 2 and all(r[1] == "complete" for r in rows) and rows,
            30, diagnose=self.diagnose)
        self.assertEqual([r[2:] for r in subtasks], [("worker", "high", "web")] * 2,
                         "a subtask takes its manager's project")
        for part in ("one", "two"):
            with open(f"{out}/{part}") as f:
                self.assertEqual(f.read(), f"{part}\n")
        rc, shown, _ = self.home.run_cli("task", "show", manager[:8])
        for sub in subtasks:
            self.assertIn(f"subtask        {sub[0][:8]} complete\n", shown)


if __name__ == "__main__":
    ccmtest.main()

"""The store's executor verbs: system.register, context.upsert, task.claim,
agent.upsert, worktree.upsert/list, task.result and results on transitions.
Real ccm-store, raw ZeroMQ, assertions on the database."""

import json
import threading
import uuid

import ccmtest


def idem():
    return str(uuid.uuid4())


class ExecVerbs(ccmtest.StoreTestCase):
    def register(self, machine="m1", **extra):
        return self.store.ok("system.register", idem=idem(), hostname=f"host-{machine}",
                             machine_id=machine, **extra)["system"]

    def test_register_is_one_row_per_machine(self):
        first = self.register(tags=["gpu"], capacity=2)
        again = self.register(tags=["gpu", "big"], capacity=8)
        self.assertEqual(first["id"], again["id"])
        rows = self.store.query("SELECT id, tags, capacity, status FROM systems")
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0][2], 8)
        self.assertEqual(rows[0][3], "online")
        self.assertIn("big", rows[0][1])
        self.assertError(self.store.call("system.register", idem=idem(), hostname="h"),
                         "missing_field", "machine_id")
        self.assertError(self.store.call("system.register", idem=idem(), hostname="h",
                                         machine_id="x", system_type="gamer"),
                         "bad_field", "system_type")

    def test_context_upsert(self):
        system = self.register()
        for status in ("active", "error"):
            self.store.ok("context.upsert", idem=idem(), system_id=system["id"],
                          project_name="p", project_path="/srv/p", status=status)
        rows = self.store.query("SELECT project_name, status, last_verified FROM contexts")
        self.assertEqual(len(rows), 1)
        self.assertEqual(rows[0][1], "error")
        self.assertTrue(rows[0][2])
        self.assertError(self.store.call("context.upsert", idem=idem(), system_id="nope",
                                         project_name="p", project_path="/x"),
                         "not_found", "system_id")

    def test_claim_order_and_lock(self):
        system = self.register()
        self.store.ok("project.add", name="p", path="/srv/p")
        self.store.ok("project.add", name="q", path="/srv/q")
        low = self.add_task("low", project="p", priority="low")
        normal = self.add_task("normal", project="p")
        urgent = self.add_task("urgent", project="p", priority="urgent")
        other = self.add_task("other project", project="q", priority="urgent")
        claimed = self.store.ok("task.claim", idem=idem(), system_id=system["id"],
                                projects=["p"], limit=2)["tasks"]
        self.assertEqual([t["id"] for t in claimed], [urgent["id"], normal["id"]])
        for task in claimed:
            self.assertEqual(task["status"], "assigned")
            self.assertEqual(task["locked_by"], system["id"])
            self.assertEqual(task["attempts"], 1)
        rows = dict(self.store.query("SELECT id, status FROM tasks"))
        self.assertEqual(rows[low["id"]], "queued")
        self.assertEqual(rows[other["id"]], "queued")

    def test_two_claimers_never_get_the_same_task(self):
        system = self.register()
        self.store.ok("project.add", name="p", path="/srv/p")
        for i in range(60):
            self.add_task(f"t{i}", project="p")
        got = []
        lock = threading.Lock()

        def claimer():
            client = self.store.client()
            try:
                while True:
                    reply = client.call("task.claim", idem=idem(), system_id=system["id"],
                                        projects=["p"], limit=3)
                    tasks = reply["tasks"]
                    if not tasks:
                        return
                    with lock:
                        got.extend(t["id"] for t in tasks)
            finally:
                client.close()

        threads = [threading.Thread(target=claimer) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        self.assertEqual(len(got), 60)
        self.assertEqual(len(set(got)), 60)
        self.assertEqual(self.store.scalar("SELECT count(*) FROM tasks WHERE status='assigned'"), 60)

    def test_progress_notes(self):
        task = self.add_task("work")
        note = {"kind": "input", "delivery": "sent", "text": "ünï \"q\" $(x)"}
        reply = self.store.ok("task.progress", idem=idem(), task=task["id"][:8], data=note)
        self.assertEqual(reply["task_id"], task["id"])
        rows = self.store.query("SELECT id, event_data FROM task_events"
                                " WHERE event_type = 'progress'")
        self.assertEqual([(r[0], json.loads(r[1])) for r in rows], [(reply["event_id"], note)])
        self.assertEqual(json.loads(self.store.scalar(
            "SELECT data FROM events WHERE topic = 'task.progress'")), note)
        for body, code, field in (({"data": note}, "missing_field", "task"),
                                  ({"task": task["id"], "data": "text"}, "bad_field", "data"),
                                  ({"task": task["id"], "data": {"t": "x" * 70000}},
                                   "too_large", "data"),
                                  ({"task": "f" * 8, "data": note}, "not_found", "task")):
            self.assertError(self.store.call("task.progress", idem=idem(), **body), code, field)
        self.assertEqual(self.store.scalar("SELECT count(*) FROM task_events"
                                           " WHERE event_type = 'progress'"), 1)

    def test_results_agents_and_worktrees(self):
        system = self.register()
        self.store.ok("project.add", name="p", path="/srv/p")
        task = self.add_task("work", project="p")
        self.store.ok("task.claim", idem=idem(), system_id=system["id"], projects=["p"])
        self.store.ok("task.transition", idem=idem(), task=task["id"], to="executing")
        self.store.ok("agent.upsert", idem=idem(), agent_id="a1", task_id=task["id"],
                      status="running", state_source="spawn", tmux_window="@1")
        wt = self.store.ok("worktree.upsert", idem=idem(), task_id=task["id"],
                           worktree_path="/w/x", branch_name="ccm/x", base_branch="main",
                           status="active")["worktree"]
        self.assertEqual(wt["task_status"], "executing")
        bad = self.store.call("task.transition", idem=idem(), task=task["id"], to="complete",
                              result={"status": "won"})
        self.assertError(bad, "bad_field", "result.status")
        self.assertEqual(self.store.scalar("SELECT count(*) FROM task_results"), 0)
        self.assertEqual(self.store.scalar("SELECT status FROM tasks"), "executing")
        self.store.ok("task.transition", idem=idem(), task=task["id"], to="complete",
                      result={"status": "complete", "exit_code": 0, "output": "done\n",
                              "files_changed": ["a.txt"], "details": {"num_turns": 2}})
        got = self.store.ok("task.get", task=task["id"])
        self.assertEqual(got["task"]["status"], "complete")
        self.assertEqual(got["task"]["locked_by"], None)
        self.assertEqual(len(got["results"]), 1)
        self.assertEqual(got["results"][0]["files_changed"], ["a.txt"])
        self.assertEqual(got["results"][0]["details"], {"num_turns": 2})
        self.store.ok("task.result", idem=idem(), task=task["id"],
                      result={"status": "cancelled", "output": "late"})
        self.assertEqual(self.store.scalar("SELECT count(*) FROM task_results"), 2)
        self.store.ok("agent.upsert", idem=idem(), agent_id="a1", status="exited",
                      state_source="pane")
        self.assertEqual(self.store.query("SELECT status, state_source, tmux_window FROM agents"),
                         [("exited", "pane", "@1")])
        listed = self.store.ok("worktree.list", status="active")["worktrees"]
        self.assertEqual([w["task_id"] for w in listed], [task["id"]])
        self.store.ok("worktree.upsert", idem=idem(), task_id=task["id"], worktree_path="/w/x",
                      branch_name="ccm/x", status="discarded", removed=True)
        self.assertEqual(self.store.ok("worktree.list", status="active")["worktrees"], [])
        removed = self.store.scalar("SELECT removed_at FROM task_worktrees")
        self.assertTrue(removed)
        # Local-only scope: worktrees never reach the sync queue; results do.
        self.assertEqual(self.store.scalar(
            "SELECT count(*) FROM sync_queue WHERE table_name='task_worktrees'"), 0)
        self.assertGreater(self.store.scalar(
            "SELECT count(*) FROM sync_queue WHERE table_name='task_results'"), 0)


if __name__ == "__main__":
    ccmtest.main()

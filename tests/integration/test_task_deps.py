"""Task dependencies and routing constraints at submission (issue 5, §3-4):
depends_on in task.add and task.depend, refused cycles and missing tasks,
task.claim running a chain in order, and `ccm task add --depends-on
--requires --system` from the CLI. Real ccm-store, raw ZeroMQ and the real
CLI; assertions on rows and on what `ccm task show` prints."""

import uuid

import ccmtest


def idem():
    return str(uuid.uuid4())


class Dependencies(ccmtest.StoreTestCase):

    def deps(self, task_id):
        return sorted(r[0] for r in self.store.query(
            "SELECT depends_on FROM task_dependencies WHERE task_id = ?", task_id))

    def test_add_with_dependencies(self):
        a = self.add_task("a")
        b = self.add_task("b")
        c = self.add_task("c", depends_on=[a["id"][:8], b["id"]])
        self.assertEqual(sorted(c["depends_on"]), sorted([a["id"], b["id"]]))
        self.assertEqual(self.deps(c["id"]), sorted([a["id"], b["id"]]))
        shown = self.store.ok("task.get", task=c["id"])["task"]
        self.assertEqual(sorted(shown["depends_on"]), sorted([a["id"], b["id"]]))
        self.assertEqual(self.store.ok("task.get", task=a["id"])["task"]["depends_on"], [])

        tasks = self.store.scalar("SELECT count(*) FROM tasks")
        self.assertError(self.store.call("task.add", prompt="x",
                                         depends_on=[a["id"], "0000dead"]),
                         "not_found", "depends_on[1]")
        self.assertError(self.store.call("task.add", prompt="x", depends_on=[a["id"], 7]),
                         "bad_field", "depends_on[1]")
        self.assertError(self.store.call("task.add", prompt="x", depends_on="abcd"),
                         "bad_field", "depends_on")
        self.assertError(self.store.call("task.add", prompt="x", depends_on=["zz"]),
                         "bad_field", "depends_on[0]")
        self.assertEqual(self.store.scalar("SELECT count(*) FROM tasks"), tasks,
                         "a refused task.add leaves no task behind")
        self.assertEqual(self.store.scalar("SELECT count(*) FROM task_dependencies"), 2)

    def test_cycles_are_refused(self):
        a = self.add_task("a", hold=True)
        b = self.add_task("b", depends_on=[a["id"]])
        c = self.add_task("c", depends_on=[b["id"]])
        # a -> c would close a -> c -> b -> a.
        reply = self.store.call("task.depend", idem=idem(), task=a["id"], depends_on=[c["id"]])
        self.assertError(reply, "cycle", "depends_on[0]")
        self.assertIn("cycle", reply.message)
        self.assertError(self.store.call("task.depend", idem=idem(), task=a["id"],
                                         depends_on=[a["id"]]), "cycle", "depends_on[0]")
        self.assertEqual(self.deps(a["id"]), [])
        # A dependency that closes no cycle is taken, once.
        d = self.add_task("d")
        for _ in range(2):
            task = self.store.ok("task.depend", idem=idem(), task=a["id"],
                                 depends_on=[d["id"]])["task"]
        self.assertEqual(task["depends_on"], [d["id"]])
        self.assertEqual(self.deps(a["id"]), [d["id"]])
        # Only a task that has not started can be made to wait.
        self.store.ok("task.cancel", task=c["id"])
        self.assertError(self.store.call("task.depend", idem=idem(), task=c["id"],
                                         depends_on=[d["id"]]), "illegal_transition", "task")
        self.assertError(self.store.call("task.depend", idem=idem(), task=a["id"]),
                         "missing_field", "depends_on")

    def test_claim_runs_a_chain_in_order(self):
        system = self.store.ok("system.register", idem=idem(), hostname="h", machine_id="m",
                               capacity=8)["system"]
        self.store.ok("project.add", name="p", path="/srv/p")
        a = self.add_task("a", project="p", priority="low")
        b = self.add_task("b", project="p", priority="urgent", depends_on=[a["id"]])
        c = self.add_task("c", project="p", priority="urgent", depends_on=[b["id"]])
        free = self.add_task("free", project="p")

        def claim():
            return [t["id"] for t in self.store.ok("task.claim", idem=idem(),
                                                   system_id=system["id"], projects=["p"],
                                                   limit=8)["tasks"]]

        # b and c are urgent, but wait: only a and the free task can run.
        self.assertEqual(claim(), [free["id"], a["id"]])
        self.assertEqual(claim(), [])
        for to in ("executing", "complete"):
            self.store.ok("task.transition", task=a["id"], to=to)
        self.assertEqual(claim(), [b["id"]])
        self.store.ok("task.transition", task=b["id"], to="executing")
        self.store.ok("task.transition", task=b["id"], to="failed", reason="agent failed")
        self.assertEqual(claim(), [], "a failed dependency holds its dependents")
        self.assertEqual(self.store.ok("task.get", task=c["id"])["task"]["status"], "queued")


class DependenciesFromTheCli(ccmtest.StoreTestCase):

    def test_task_add_options(self):
        system = self.store.ok("system.register", idem=idem(), hostname="h",
                               machine_id="m")["system"]
        rc, out, err = self.store.run_cli("task", "add", "--", "first")
        self.assertEqual(rc, 0, err)
        first = out.strip()
        rc, out, err = self.store.run_cli(
            "task", "add", "--depends-on", first[:8], "--requires", "gpu=true",
            "--requires", "os=linux", "--requires", "gpu=false", "--system", system["id"],
            "--", "second", "task")
        self.assertEqual(rc, 0, err)
        second = out.strip()
        task = self.store.ok("task.get", task=second)["task"]
        self.assertEqual(task["depends_on"], [first])
        self.assertEqual(task["requires_context_metadata"], {"gpu": "false", "os": "linux"},
                         "a repeated key takes its last value")
        self.assertEqual(task["system_id"], system["id"])
        self.assertEqual(task["prompt"], "second task")
        rc, out, err = self.store.run_cli("task", "show", second[:8])
        self.assertEqual(rc, 0, err)
        self.assertIn(f"depends_on     {first}\n", out)
        self.assertIn("requires       gpu=false\n", out)
        self.assertIn("requires       os=linux\n", out)

        tasks = self.store.scalar("SELECT count(*) FROM tasks")
        for bad, says in ((["--requires", "gpu"], "--requires: 'gpu' is not KEY=VALUE"),
                          (["--requires", "=x"], "--requires: '=x' is not KEY=VALUE"),
                          (["--requires", "k="], "--requires: 'k=' is not KEY=VALUE")):
            rc, out, err = self.store.run_cli("task", "add", *bad, "--", "x")
            self.assertEqual(rc, 2, (bad, out, err))
            self.assertIn(says, err)
        rc, out, err = self.store.run_cli("task", "add", "--depends-on", "0000beef", "--", "x")
        self.assertNotEqual(rc, 0)
        self.assertIn("depends_on[0]: no task '0000beef'", err)
        rc, out, err = self.store.run_cli("task", "add", "--system", "no-such-system", "--", "x")
        self.assertNotEqual(rc, 0)
        self.assertIn("no system 'no-such-system'", err)
        self.assertEqual(self.store.scalar("SELECT count(*) FROM tasks"), tasks)


class RouterVerbs(ccmtest.StoreTestCase):
    """The store's side of routing: no path assigns a task before its
    dependencies, a waiting task shows why, and a lost executor's tasks go
    back to the queue (or fail once out of attempts)."""

    def register(self, machine):
        return self.store.ok("system.register", idem=idem(), hostname=f"host-{machine}",
                             machine_id=machine, capacity=4)["system"]

    def test_no_assignment_before_dependencies(self):
        a = self.add_task("a")
        b = self.add_task("b", depends_on=[a["id"]])
        reply = self.store.call("task.transition", task=b["id"], to="assigned", locked_by="x")
        self.assertError(reply, "illegal_transition", "to")
        self.assertIn(f"waits for task {a['id'][:8]} (queued)", reply.message)
        self.assertEqual(self.store.ok("task.get", task=b["id"])["task"]["status"], "queued")
        for to in ("assigned", "executing", "complete"):
            self.store.ok("task.transition", task=a["id"], to=to)
        self.assertEqual(self.store.ok("task.transition", task=b["id"], to="assigned",
                                       locked_by="x")["task"]["status"], "assigned")

    def test_reason_of_a_waiting_task(self):
        task = self.add_task("t")
        said = self.store.ok("task.reason", idem=idem(), task=task["id"][:8],
                             reason="no executor holds project web")["task"]
        self.assertEqual(said["status_reason"], "no executor holds project web")
        head = self.store.head()
        self.store.ok("task.reason", idem=idem(), task=task["id"],
                      reason="no executor holds project web")
        self.assertEqual(self.store.head(), head, "an unchanged reason writes nothing")
        self.store.ok("task.reason", idem=idem(), task=task["id"], reason="all 2 candidates at capacity")
        self.assertEqual([e["topic"] for e in self.store.replay(head)], ["task.updated"])
        rc, out, err = self.store.run_cli("task", "show", task["id"][:8])
        self.assertIn("status_reason  all 2 candidates at capacity\n", out)

        self.assertError(self.store.call("task.reason", idem=idem(), task=task["id"]),
                         "missing_field", "reason")
        self.assertError(self.store.call("task.reason", idem=idem(), task=task["id"],
                                         reason="x" * 513), "bad_field", "reason")
        for to in ("assigned", "executing"):
            self.store.ok("task.transition", task=task["id"], to=to)
        self.assertError(self.store.call("task.reason", idem=idem(), task=task["id"],
                                         reason="late"), "illegal_transition", "task")
        self.assertEqual(self.store.ok("task.get", task=task["id"])["task"]["status_reason"],
                         None, "the move to executing cleared it, and the late reason is refused")

    def test_lost_executor(self):
        lost, other = self.register("lost"), self.register("other")
        self.store.ok("project.add", name="p", path="/srv/p")
        fresh = self.add_task("fresh", project="p")
        running = self.add_task("running", project="p")
        spent = self.add_task("spent", project="p")
        mine = self.add_task("other's", project="p")
        # spent is on its third attempt already.
        for _ in range(2):
            self.store.ok("task.transition", task=spent["id"], to="assigned", locked_by=lost["id"])
            self.store.ok("task.transition", task=spent["id"], to="queued")
        for task, system in ((fresh, lost), (running, lost), (spent, lost), (mine, other)):
            self.store.ok("task.transition", task=task["id"], to="assigned",
                          locked_by=system["id"])
        self.store.ok("task.transition", task=running["id"], to="executing")

        seen = self.store.query("SELECT last_seen FROM systems WHERE id = ?", lost["id"])[0][0]
        beat = self.store.ok("system.status", idem=idem(), system_id=lost["id"], status="online")
        self.assertEqual((beat["requeued"], beat["failed"]), ([], []))
        beat_seen = self.store.query("SELECT last_seen FROM systems WHERE id = ?",
                                     lost["id"])[0][0]
        self.assertGreaterEqual(beat_seen, seen, "a heartbeat refreshes last_seen")

        gone = self.store.ok("system.status", idem=idem(), system_id=lost["id"], status="offline",
                             reason="no heartbeat for 3 s")
        self.assertEqual(sorted(gone["requeued"]), sorted([fresh["id"], running["id"]]))
        self.assertEqual(gone["failed"], [spent["id"]])
        rows = dict((r[0], r[1:]) for r in self.store.query(
            "SELECT id, status, status_reason, locked_by, attempts FROM tasks"))
        why = "its executor went offline: no heartbeat for 3 s"
        self.assertEqual(rows[fresh["id"]], ("queued", why, None, 1))
        self.assertEqual(rows[running["id"]], ("queued", why, None, 1))
        # Out of attempts: the reason says that was the last (no retry_at).
        self.assertEqual(rows[spent["id"]], ("failed", "failed after 3 attempts: " + why, None, 3))
        self.assertEqual(rows[mine["id"]][:3], ("assigned", None, other["id"]))
        self.assertEqual(self.store.query("SELECT status, last_seen FROM systems WHERE id = ?",
                                          lost["id"]), [("offline", beat_seen)],
                         "offline keeps the last time it was seen")
        # The other executor picks the requeued tasks up; this counts an attempt.
        claimed = self.store.ok("task.claim", idem=idem(), system_id=other["id"], projects=["p"],
                                limit=8)["tasks"]
        self.assertEqual(sorted((t["id"], t["attempts"]) for t in claimed),
                         sorted([(fresh["id"], 2), (running["id"], 2)]))

        self.assertError(self.store.call("system.status", idem=idem(), system_id="nope",
                                         status="offline"), "not_found", "system_id")
        self.assertError(self.store.call("system.status", idem=idem(), system_id=lost["id"],
                                         status="asleep"), "bad_field", "status")


if __name__ == "__main__":
    ccmtest.main()

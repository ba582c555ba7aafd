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


if __name__ == "__main__":
    ccmtest.main()

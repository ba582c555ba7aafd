"""What the router knows, as a user reads it: `ccm systems` and `ccm
contexts` (with and without --json) over the store's system.list and
context.list. Real ccm-store, real CLI; the systems are registered the way
executors register them (system.register, context.upsert, task.claim)."""

import json
import uuid

import ccmtest


def idem():
    return str(uuid.uuid4())


class Systems(ccmtest.StoreTestCase):

    def setUp(self):
        super().setUp()
        ok = self.store.ok
        self.build = ok("system.register", idem=idem(), hostname="build-box", machine_id="m-b",
                        system_type="devops", tags=["gpu", "os=linux"], capacity=4)["system"]
        self.laptop = ok("system.register", idem=idem(), hostname="laptop", machine_id="m-l",
                         capacity=2)["system"]
        ok("context.upsert", idem=idem(), system_id=self.build["id"], project_name="web",
           project_path="/srv/web", repo_branch="main", metadata={"lang": "ts"})
        ok("context.upsert", idem=idem(), system_id=self.laptop["id"], project_name="web",
           project_path="/home/me/web", status="stale")
        ok("context.upsert", idem=idem(), system_id=self.laptop["id"], project_name="api",
           project_path="/home/me/api")
        ok("project.add", name="web", path="/srv/web")
        self.add_task("one", project="web")
        ok("task.claim", idem=idem(), system_id=self.build["id"], projects=["web"], limit=1)
        ok("agent.upsert", idem=idem(), agent_id=str(uuid.uuid4()), status="running",
           system_id=self.build["id"])
        ok("agent.upsert", idem=idem(), agent_id=str(uuid.uuid4()), status="exited",
           system_id=self.build["id"])

    def test_systems(self):
        rc, out, err = self.store.run_cli("systems", "--json")
        self.assertEqual(rc, 0, err)
        systems = {s["hostname"]: s for s in json.loads(out)}
        self.assertEqual(set(systems), {"build-box", "laptop"})
        build = systems["build-box"]
        self.assertEqual((build["id"], build["system_type"], build["tags"], build["capacity"],
                          build["running"], build["contexts"], build["status"]),
                         (self.build["id"], "devops", ["gpu", "os=linux"], 4, 1, 1, "online"))
        self.assertEqual((systems["laptop"]["running"], systems["laptop"]["contexts"]), (0, 2))

        rc, out, err = self.store.run_cli("systems")
        self.assertEqual(rc, 0, err)
        lines = out.splitlines()
        self.assertEqual(lines[0].split(), ["ID", "HOSTNAME", "STATUS", "TYPE", "RUNNING",
                                            "AGENTS", "TAGS"])
        build_line = [line for line in lines if "build-box" in line][0]
        self.assertTrue(build_line.startswith(self.build["id"][:8]))
        self.assertEqual(build_line.split()[2:], ["online", "devops", "1/4", "1",
                                                  '["gpu","os=linux"]'])
        self.assertEqual(systems["build-box"]["agents"], 1)
        self.assertEqual(systems["laptop"]["agents"], 0)

        # An offline machine says since when (its last heartbeat).
        self.store.ok("system.status", idem=idem(), system_id=self.laptop["id"],
                      status="offline", reason="test")
        seen = self.store.scalar("SELECT last_seen FROM systems WHERE id = ?", self.laptop["id"])
        rc, out, err = self.store.run_cli("systems")
        laptop_line = [line for line in out.splitlines() if "laptop" in line][0]
        self.assertIn(f" offline since {seen[:19]} ", laptop_line)
        rc, out, err = self.store.run_cli("systems", "extra")
        self.assertEqual(rc, 2)
        self.assertIn("unexpected argument 'extra'", err)

    def test_contexts(self):
        rc, out, err = self.store.run_cli("contexts", "--json")
        self.assertEqual(rc, 0, err)
        contexts = json.loads(out)
        self.assertEqual([(c["project_name"], c["hostname"], c["status"]) for c in contexts],
                         [("api", "laptop", "active"), ("web", "build-box", "active"),
                          ("web", "laptop", "stale")])
        web = contexts[1]
        self.assertEqual((web["project_path"], web["repo_branch"], web["metadata"]),
                         ("/srv/web", "main", {"lang": "ts"}))
        self.assertRegex(web["last_verified"], ccmtest.TIME_RE)

        rc, out, err = self.store.run_cli("contexts", "--project", "web", "--system",
                                          self.laptop["id"], "--json")
        self.assertEqual(rc, 0, err)
        self.assertEqual([(c["project_name"], c["project_path"]) for c in json.loads(out)],
                         [("web", "/home/me/web")])
        rc, out, err = self.store.run_cli("contexts", "--project", "nothing", "--json")
        self.assertEqual((rc, json.loads(out)), (0, []))

        rc, out, err = self.store.run_cli("contexts")
        self.assertEqual(rc, 0, err)
        rows = [line.split() for line in out.splitlines()]
        self.assertEqual(rows[0], ["PROJECT", "HOSTNAME", "STATUS", "BRANCH", "VERIFIED", "PATH"])
        self.assertEqual([r[:3] for r in rows[1:]], [["api", "laptop", "active"],
                                                     ["web", "build-box", "active"],
                                                     ["web", "laptop", "stale"]])
        self.assertEqual(rows[2][-1], "/srv/web")
        rc, out, err = self.store.run_cli("contexts", "--bogus", "x")
        self.assertEqual(rc, 2)
        self.assertIn("usage: ccm contexts", err)


if __name__ == "__main__":
    ccmtest.main()

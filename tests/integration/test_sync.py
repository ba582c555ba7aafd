"""ccm-sync end to end (issue 7): real ccm-store, ccm-router, ccm-executor and
ccm-sync processes on temporary CCM_HOMEs (each its own system), a real
PostgreSQL 15 with schema/supabase/ applied, and tests/fake_postgrest.py
speaking PostgREST's protocol in front of it (synchub.py).

Checked where a user would look: rows on the hub (read as the superuser,
so row-level security hides nothing from the test), rows in each machine's
SQLite, files in the skills directory, `ccm sync status`, the credentials
file and the logs."""

import json
import os
import stat
import subprocess
import time
import unittest
import uuid

import ccmtest
import synchub
import test_executor as tx

SYNC_BIN = os.path.join(ccmtest.BIN_DIR, "ccm-sync")
ROUTER_BIN = os.path.join(ccmtest.BIN_DIR, "ccm-router")
WAIT = 30.0


def read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError:
        return None


def wait_for(what, predicate, timeout=WAIT, diagnose=None):
    value = synchub.wait_until(predicate, timeout)
    if not value:
        raise AssertionError(f"timed out waiting for {what}"
                             + (f"\n{diagnose()}" if diagnose else ""))
    return value


class Machine:
    """One ccm instance: its own CCM_HOME, store, system id; ccm-sync when
    started; a router and an executor when it runs agents."""

    def __init__(self, test, name, hub, agents=False):
        self.test = test
        self.name = name
        self.hub = hub
        self.machine_id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.home = test.make_home(extra_env={
            "CCM_EXECUTOR_MACHINE_ID": self.machine_id, "CCM_EXECUTOR_HOSTNAME": self.machine_id,
            "CCM_SYNC_PULL_MS": "250", "CCM_SYNC_BACKOFF_BASE_MS": "100",
            "CCM_SYNC_BACKOFF_MAX_MS": "600", "CCM_ROUTER_HEARTBEAT_MS": "200",
            "CCM_EXECUTOR_POLL_MS": "100"})
        self.home.env["CCM_SYNC_SKILLS_DIR"] = os.path.join(self.home.path, "skills")
        self.home.env["CCM_EXECUTOR_TMUX_SOCKET"] = os.path.join(self.home.path, "run", "tmux.sock")
        self.home.start()
        self.sync = None
        self.procs = []
        test.addCleanup(self.stop_all)
        if agents:
            self.repo = os.path.join(self.home.path, "repo")
            os.makedirs(self.repo)
            for args in (["init", "-q", "-b", "main"], ["commit", "-q", "--allow-empty", "-m", "init"]):
                subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                               cwd=self.repo, check=True, env=dict(os.environ, **tx.GIT_ENV))
            self.write("project.add", name="demo", path=self.repo)
            self.spawn("router", [ROUTER_BIN])
            self.spawn("executor", [tx.EXECUTOR_BIN], CCM_EXECUTOR_DISPATCH="router",
                       CCM_EXECUTOR_PROJECTS="demo")
            rows = wait_for(f"{name}'s executor registered", lambda: self.home.query(
                "SELECT id FROM systems WHERE machine_id = ?", self.machine_id))
        else:
            self.write("project.add", name="demo", path="/tmp")
            rows = [[self.write("system.register", hostname=self.machine_id,
                                machine_id=self.machine_id)["system"]["id"]]]
        self.system_id = rows[0][0]

    def write(self, verb, **body):
        return self.home.ok(verb, idem=str(uuid.uuid4()), **body)

    def spawn(self, name, argv, **env):
        err = open(os.path.join(self.home.path, f"{name}.stderr"), "ab")
        proc = subprocess.Popen(argv, env=dict(self.home.env, **env), stdin=subprocess.DEVNULL,
                                stdout=err, stderr=err, cwd=self.home.path)
        err.close()
        self.procs.append(proc)
        return proc

    def login(self, email, password):
        rc, out, err = self.home.run_cli("sync", "login", "--url", self.hub.url, "--anon-key",
                                         self.hub.anon_key, "--email", email, "--password-stdin",
                                         input=password + "\n")
        self.test.assertEqual(rc, 0, err)
        return out

    def start_sync(self, **env):
        self.sync = self.spawn("sync", [SYNC_BIN], **env)
        return self.sync

    def stop_sync(self):
        if self.sync is not None:
            self.sync.terminate()
            self.test.assertEqual(self.sync.wait(10), 0, self.log())
            self.procs.remove(self.sync)
            self.sync = None

    def stop_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        subprocess.run(["tmux", "-S", self.home.env["CCM_EXECUTOR_TMUX_SOCKET"], "kill-server"],
                       capture_output=True, timeout=10)

    def log(self, name="sync"):
        try:
            with open(os.path.join(self.home.path, f"{name}.stderr"), encoding="utf-8",
                      errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def state(self):
        return self.home.ok("sync.state")["sync"]["state"]

    def pending(self):
        return self.home.ok("sync.status")["pending"]

    def wait_drained(self, timeout=WAIT):
        wait_for(f"{self.name}'s queue to drain", lambda: self.sync.poll() is None
                 and self.pending() == 0 and self.state() == "Online", timeout,
                 diagnose=lambda: self.log()[-3000:])


class SyncTestCase(ccmtest.CcmTestCase):
    """A hub with two users, alice and bob, shared by the tests of a class."""

    @classmethod
    def setUpClass(cls):
        cls.hub = synchub.Hub()
        cls.alice_id = cls.hub.add_user("alice@example.com", "alice-pw")
        cls.bob_id = cls.hub.add_user("bob@example.com", "bob-pw")

    @classmethod
    def tearDownClass(cls):
        cls.hub.close()

    def setUp(self):
        if self.hub.proc is None:
            self.hub.start_server()

    def token(self, who="alice"):
        return self.hub.login(f"{who}@example.com", f"{who}-pw")["access_token"]


class TestTwoMachines(SyncTestCase):

    def test_task_from_a_runs_on_b_and_skills_reach_both(self):
        a = Machine(self, "a", self.hub)
        b = Machine(self, "b", self.hub, agents=True)
        for m in (a, b):
            m.login("alice@example.com", "alice-pw")
            m.start_sync()
        # A skill written on the hub by the user reaches both machines.
        alice = self.token()
        status, body, _ = self.hub.rest("POST", "/rest/v1/skills", alice,
                                        {"name": "review", "content": "# Review\nv1\n"})
        self.assertEqual(status, 201, body)
        for m in (a, b):
            path = os.path.join(m.home.path, "skills", "review", "SKILL.md")
            wait_for(f"the skill on {m.name}", lambda: read(path) == "# Review\nv1\n", diagnose=m.log)
            self.assertEqual(m.home.query("SELECT content FROM skills WHERE name = 'review'"),
                             [("# Review\nv1\n",)])
        # A learns of B from the hub, then sends it a task.
        wait_for("B's system on A", lambda: a.home.query(
            "SELECT 1 FROM systems WHERE id = ?", b.system_id), diagnose=a.log)
        rc, out, err = a.home.run_cli("task", "add", "--project", "demo", "--agent", "shell",
                                      "--system", b.system_id, "--",
                                      "echo made-on-A ran-on-$CCM_SYSTEM_ID")
        self.assertEqual(rc, 0, err)
        task_id = out.strip()
        # It runs on B, through B's router and executor.
        wait_for("the task complete on B", lambda: b.home.query(
            "SELECT status FROM tasks WHERE id = ?", task_id) == [("complete",)],
            diagnose=lambda: b.log()[-2000:] + b.log("executor")[-2000:])
        self.assertEqual(b.home.query("SELECT origin_system_id, locked_by IS NULL FROM tasks"
                                      " WHERE id = ?", task_id), [(a.system_id, 1)])
        # A sees its status and result.
        wait_for("the result on A", lambda: a.home.query(
            "SELECT t.status, r.status FROM tasks t JOIN task_results r ON r.task_id = t.id"
            " WHERE t.id = ?", task_id) == [("complete", "complete")], diagnose=a.log)
        output = a.home.scalar("SELECT output FROM task_results WHERE task_id = ?", task_id)
        self.assertIn(f"made-on-A ran-on-{b.system_id}", output)
        # And the hub holds one task: made by A, run by B, alice's.
        self.assertEqual(self.hub.sql(
            "SELECT origin_system_id::text, system_id::text, status, user_id::text, prompt"
            " FROM tasks WHERE id = %s", task_id),
            [(a.system_id, b.system_id, "complete", self.alice_id,
              "echo made-on-A ran-on-$CCM_SYSTEM_ID")])
        self.assertEqual(self.hub.sql("SELECT count(*) FROM task_results WHERE task_id = %s",
                                      task_id), [(1,)])
        # Nothing pulled went back up as a change of its own.
        for m in (a, b):
            m.wait_drained()
        # A changed skill replaces the file; the local row follows.
        status, body, _ = self.hub.rest("PATCH", "/rest/v1/skills?name=eq.review", alice,
                                        {"content": "# Review\nv2\n"})
        self.assertEqual(status, 204, body)
        for m in (a, b):
            path = os.path.join(m.home.path, "skills", "review", "SKILL.md")
            wait_for(f"the new skill on {m.name}", lambda: read(path) == "# Review\nv2\n",
                     diagnose=m.log)
        # Bob's machine, on the same hub, sees none of it.
        c = Machine(self, "c", self.hub)
        c.login("bob@example.com", "bob-pw")
        c.start_sync()
        c.wait_drained()
        time.sleep(1.0)  # a few pull passes
        self.assertEqual(c.home.query("SELECT count(*) FROM skills"), [(0,)])
        self.assertEqual(c.home.query("SELECT count(*) FROM systems"), [(1,)])
        self.assertFalse(os.path.exists(os.path.join(c.home.path, "skills")))
        self.assertEqual(self.hub.sql("SELECT count(*) FROM systems WHERE user_id = %s",
                                      self.bob_id), [(1,)])
        for m in (a, b, c):
            self.assertNotIn("ERROR", m.log())

    def test_rls_user_two_cannot_read_or_overwrite(self):
        a = Machine(self, "a", self.hub)
        a.login("alice@example.com", "alice-pw")
        rc, out, err = a.home.run_cli("task", "add", "--project", "demo", "--", "alice's secret")
        self.assertEqual(rc, 0, err)
        task_id = out.strip()
        a.start_sync()
        a.wait_drained()
        self.assertEqual(self.hub.sql("SELECT user_id::text FROM tasks WHERE id = %s", task_id),
                         [(self.alice_id,)])
        bob = self.token("bob")
        before = self.hub.sql("SELECT prompt, status, updated_at FROM tasks WHERE id = %s",
                              task_id)
        # Reads: nothing of alice's, by any filter.
        for path in ("/rest/v1/tasks?select=*", f"/rest/v1/tasks?id=eq.{task_id}",
                     f"/rest/v1/tasks?id=in.({task_id})", "/rest/v1/systems?select=*",
                     "/rest/v1/task_events?select=*", "/rest/v1/projects?select=*"):
            status, body, _ = self.hub.rest("GET", path, bob)
            self.assertEqual((status, body), (200, []), path)
        # Writes: an upsert on alice's id, with or without her user_id.
        row = {"id": task_id, "prompt": "bob was here", "status": "cancelled"}
        for extra in ({}, {"user_id": self.alice_id}, {"user_id": self.bob_id}):
            status, body, _ = self.hub.rest(
                "POST", "/rest/v1/tasks?on_conflict=id", bob, [dict(row, **extra)],
                prefer="resolution=merge-duplicates,return=minimal")
            self.assertEqual(status, 403, body)
            self.assertEqual(body["code"], "42501", body)
        # A PATCH matches no row it may see.
        status, body, _ = self.hub.rest("PATCH", f"/rest/v1/tasks?id=eq.{task_id}", bob,
                                        {"prompt": "bob was here"})
        self.assertEqual(status, 204, body)
        # A token signed with another secret, claiming to be alice.
        forged = self.hub_token_forged(self.alice_id)
        status, body, hdrs = self.hub.rest("GET", "/rest/v1/tasks?select=*", forged)
        self.assertEqual(status, 401)
        self.assertEqual(body["code"], "PGRST301")
        # The anon key alone reads nothing.
        status, body, _ = self.hub.rest("GET", "/rest/v1/tasks?select=*")
        self.assertEqual(status, 401, body)
        self.assertEqual(self.hub.sql("SELECT prompt, status, updated_at FROM tasks WHERE id = %s",
                                      task_id), before)

    @staticmethod
    def hub_token_forged(sub):
        import base64
        import hashlib
        import hmac

        def b64(data):
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()
        head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        body = b64(json.dumps({"sub": sub, "role": "authenticated",
                               "exp": int(time.time()) + 600}).encode())
        sig = hmac.new(b"not-the-secret", f"{head}.{body}".encode(), hashlib.sha256).digest()
        return f"{head}.{body}.{b64(sig)}"


class TestOffline(SyncTestCase):

    def test_1000_changes_offline_then_all_arrive_once_in_order(self):
        a = Machine(self, "a", self.hub)
        a.login("alice@example.com", "alice-pw")
        a.start_sync()
        a.wait_drained()
        self.hub.stop_server()
        wait_for("Offline", lambda: a.state() == "Offline", diagnose=a.log)
        offline_seq = a.home.replay(0, topic="sync.state")[-1]["seq"] - 1
        # Work goes on: 1,000 queued changes (tasks, their moves, events).
        start = a.home.scalar("SELECT count(*) FROM sync_queue")
        pipe = ccmtest.Pipeline(a.home.main_client)
        adds = pipe.run([("task.add", {"prompt": f"offline {i}", "project": "demo",
                                       "idem": str(uuid.uuid4()),
                                       "priority": ("urgent" if i % 5 == 0 else "normal")})
                         for i in range(200)])
        ids = [r["task"]["id"] for r in adds]
        # Some change again: cancelled, then their last word must win.
        pipe.run([("task.cancel", {"task": t, "idem": str(uuid.uuid4())}) for t in ids[:40]])
        queued = a.home.scalar("SELECT count(*) FROM sync_queue") - start
        while queued < 1000:
            a.write("task.progress", task=ids[queued % len(ids)], data={"n": queued})
            queued += 1
        self.assertGreaterEqual(queued, 1000)
        self.assertEqual(a.state(), "Offline")
        self.assertTrue(a.sync.poll() is None)
        # It stayed Offline all along: no flapping while changes kept coming.
        self.assertEqual([e["data"]["state"] for e in a.home.replay(
            offline_seq, topic="sync.state")], ["Offline"])
        waiting = a.pending()
        self.assertGreaterEqual(waiting, 1000)
        failed = a.home.query("SELECT retry_count, error_message FROM sync_queue"
                              " WHERE retry_count > 0 LIMIT 1")
        self.assertTrue(failed and "cannot reach the hub" in failed[0][1], failed)
        rc, out, _ = a.home.run_cli("sync", "status")
        self.assertIn("Offline", out)
        self.assertIn(f"{waiting} change(s) waiting", out)
        # Back online: everything arrives, once, in its last state.
        self.hub.start_server()
        a.wait_drained(timeout=60)
        local = dict(a.home.query("SELECT id, status FROM tasks"))
        remote = dict(self.hub.sql("SELECT id::text, status FROM tasks"))
        self.assertEqual(remote, local)
        self.assertEqual(sum(1 for s in remote.values() if s == "cancelled"), 40)
        local_events = sorted(a.home.query("SELECT id, event_type FROM task_events"))
        remote_events = sorted(self.hub.sql("SELECT id::text, event_type FROM task_events"))
        self.assertEqual(remote_events, local_events)
        self.assertEqual(a.home.scalar("SELECT count(*) FROM sync_queue WHERE synced_at IS NULL"),
                         0)
        rc, out, _ = a.home.run_cli("sync", "status")
        self.assertIn("Online", out)
        self.assertIn("0 change(s) waiting", out)


class TestBadResponses(SyncTestCase):

    def test_permanent_errors_are_parked_not_retried(self):
        a = Machine(self, "a", self.hub)
        a.login("alice@example.com", "alice-pw")
        # Among good systems, one the hub must refuse: its id is no uuid (22P02).
        good = [a.write("system.register", hostname=f"g{i}", machine_id=f"g{i}-{a.machine_id}")
                ["system"]["id"] for i in range(3)]
        a.write("system.register", system_id="not-a-uuid", hostname="bad",
                machine_id=f"bad-{a.machine_id}")
        a.start_sync()
        wait_for("the bad row parked", lambda: a.home.ok("sync.status")["parked_count"] == 1,
                 diagnose=a.log)
        a.wait_drained()
        parked = a.home.ok("sync.status")["parked"]
        self.assertEqual([(p["table"], p["record_id"]) for p in parked],
                         [("systems", "not-a-uuid")])
        self.assertIn("22P02", parked[0]["error"])
        on_hub = {r[0] for r in self.hub.sql("SELECT id::text FROM systems")}
        self.assertTrue(set(good) | {a.system_id} <= on_hub)
        # Not retried: the hub sees no more of it.
        seen = self.hub.stats()["requests"].get("POST /rest/v1/systems")
        time.sleep(1.5)
        self.assertEqual(self.hub.stats()["requests"].get("POST /rest/v1/systems"), seen)
        rc, out, _ = a.home.run_cli("sync", "status")
        self.assertEqual(rc, 0)
        self.assertIn("parked         1 change(s)", out)
        self.assertIn("not-a-uu", out)
        self.assertIn("22P02", out)
        # A PGRST204 for one task is parked too, with its reason.
        self.hub.faults({"method": "POST", "path": "/rest/v1/tasks", "kind": "status",
                         "status": 400, "times": 1, "body": {
                             "code": "PGRST204", "details": None, "hint": None,
                             "message": "Could not find the 'x' column of 'tasks'"}})
        task = a.write("task.add", prompt="refused", project="demo", hold=True)["task"]["id"]
        wait_for("the task parked", lambda: a.home.ok("sync.status")["parked_count"] == 2,
                 diagnose=a.log)
        row = a.home.query("SELECT error_message FROM sync_queue WHERE record_id = ?"
                           " AND parked_at IS NOT NULL", task)
        self.assertIn("PGRST204", row[0][0])
        self.assertTrue(a.sync.poll() is None)

    def test_transient_garbage_and_truncated_responses(self):
        a = Machine(self, "a", self.hub)
        a.login("alice@example.com", "alice-pw")
        a.start_sync()
        a.wait_drained()
        self.hub.faults(
            {"method": "POST", "path": "/rest/v1/tasks", "kind": "status", "status": 503,
             "times": 1, "body": {"code": "PGRST000", "message": "no database"}},
            {"method": "POST", "path": "/rest/v1/tasks", "kind": "garbage", "times": 1},
            {"method": "POST", "path": "/rest/v1/tasks", "kind": "truncate", "times": 1},
            {"method": "GET", "path": "/rest/v1/skills", "kind": "garbage", "times": 1},
            {"method": "GET", "path": "/rest/v1/systems", "kind": "truncate", "times": 1},
            {"method": "GET", "path": "/rest/v1/skills", "kind": "status", "status": 200,
             "body": {"not": "an array"}, "times": 1})
        task = a.write("task.add", prompt="through the storm", project="demo")["task"]["id"]
        wait_for("the task on the hub", lambda: self.hub.sql(
            "SELECT status FROM tasks WHERE id = %s", task) == [("queued",)], diagnose=a.log)
        # Every fault is met (pulls go on every 250 ms), each with a clear line.
        for line in ("HTTP 503 PGRST000: no database",
                     "bad HTTP response from the hub (curl 1): Received HTTP/0.9",
                     "bad HTTP response from the hub (curl 18): transfer closed",
                     "GET skills: the body is not a JSON array"):
            wait_for(line, lambda: line in a.log(), diagnose=a.log)
        a.wait_drained()
        retried = a.home.query("SELECT max(retry_count) FROM sync_queue WHERE record_id = ?", task)
        self.assertGreaterEqual(retried[0][0], 3)
        self.assertEqual(self.hub.stats()["requests"].get("POST /rest/v1/tasks", 0) >= 4, True)
        self.assertTrue(a.sync.poll() is None)

    def test_expired_token_is_refreshed_and_the_request_retried(self):
        a = Machine(self, "a", self.hub)
        self.hub.http("POST", "/__test__/ttl", {"seconds": 1})
        try:
            a.login("alice@example.com", "alice-pw")
        finally:
            self.hub.http("POST", "/__test__/ttl", {"seconds": 3600})
        cred_path = os.path.join(a.home.path, "sync.json")
        self.assertEqual(stat.S_IMODE(os.stat(cred_path).st_mode), 0o600)
        with open(cred_path) as f:
            cred = json.load(f)
        # The file says the token is good for an hour (a skewed clock), but
        # the hub says it expired: only its 401 can tell.
        time.sleep(1.2)
        cred["expires_at"] = int(time.time()) + 3600
        with open(cred_path + ".new", "w") as f:
            json.dump(cred, f)
        os.chmod(cred_path + ".new", 0o600)
        os.rename(cred_path + ".new", cred_path)
        refreshes = self.hub.stats()["refreshes"]
        a.start_sync()
        a.wait_drained()
        self.assertEqual(self.hub.stats()["refreshes"], refreshes + 1)
        self.assertEqual(self.hub.sql("SELECT count(*) FROM systems WHERE id = %s", a.system_id),
                         [(1,)])
        self.assertIn("JWT expired", a.log())
        with open(cred_path) as f:
            after = json.load(f)
        self.assertNotEqual(after["access_token"], cred["access_token"])
        self.assertNotEqual(after["refresh_token"], cred["refresh_token"])
        self.assertEqual(stat.S_IMODE(os.stat(cred_path).st_mode), 0o600)
        # No token ever reaches a log or the CLI's output.
        rc, out, err = a.home.run_cli("sync", "status", "--json")
        for secret in (cred["access_token"], cred["refresh_token"], after["access_token"],
                       after["refresh_token"]):
            self.assertNotIn(secret, a.log())
            self.assertNotIn(secret, out + err)


class TestScopeAndLogin(SyncTestCase):

    def test_hook_events_never_leave_the_machine(self):
        a = Machine(self, "a", self.hub)
        a.login("alice@example.com", "alice-pw")
        marker = f"LOCAL-ONLY-{uuid.uuid4().hex}"
        task = a.write("task.add", prompt="scoped", project="demo")["task"]["id"]
        a.write("hook.add", events=[{"hook_type": "PreToolUse", "task_id": task,
                                     "event_data": {"command": marker}, "tool_name": "Bash"}])
        a.write("automation.add", automation="policy:x", action="deny", outcome="denied",
                task_id=task, details={"why": marker})
        a.write("worktree.upsert", task_id=task, worktree_path=f"/tmp/{marker}",
                branch_name=marker, status="active")
        a.write("agent.upsert", agent_id=str(uuid.uuid4()), status="running", task_id=task,
                tmux_window=marker)
        a.start_sync()
        a.wait_drained()
        self.assertEqual(self.hub.sql("SELECT count(*) FROM tasks WHERE id = %s", task), [(1,)])
        # No such table on the hub, and no row of any table carries the marker.
        tables = [r[0] for r in self.hub.sql(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")]
        for local in ("hook_events", "automation_events", "task_worktrees", "agents"):
            self.assertNotIn(local, tables)
        for table in tables:
            self.assertEqual(self.hub.sql(
                f'SELECT count(*) FROM public."{table}" t WHERE t::text LIKE %s',
                f"%{marker}%"), [(0,)], table)
        self.assertEqual(a.home.query(
            "SELECT DISTINCT table_name FROM sync_queue WHERE table_name IN"
            " ('hook_events', 'automation_events', 'task_worktrees', 'agents')"), [])
        status, body, _ = self.hub.rest("GET", "/rest/v1/hook_events?select=*", self.token())
        self.assertEqual(status, 404, body)

    def test_login_logout_and_status(self):
        a = Machine(self, "a", self.hub)
        cred = os.path.join(a.home.path, "sync.json")
        rc, out, err = a.home.run_cli("sync", "login", "--url", self.hub.url, "--anon-key",
                                      self.hub.anon_key, "--email", "alice@example.com",
                                      "--password-stdin", input="wrong\n")
        self.assertEqual(rc, 1)
        self.assertIn("Invalid login credentials", err)
        self.assertFalse(os.path.exists(cred))
        rc, out, err = a.home.run_cli("sync", "login", "--url", "http://example.com",
                                      "--anon-key", "k", "--email", "e", "--password-stdin",
                                      input="x\n")
        self.assertEqual(rc, 1)
        self.assertIn("https://", err)
        rc, out, err = a.home.run_cli("sync", "status")
        self.assertEqual(rc, 0, err)
        self.assertIn("state          LocalOnly", out)
        self.assertIn("not configured", out)
        a.start_sync()
        wait_for("LocalOnly published", lambda: a.state() == "LocalOnly", diagnose=a.log)
        out = a.login("alice@example.com", "alice-pw")
        self.assertIn(self.alice_id, out)
        self.assertEqual(stat.S_IMODE(os.stat(cred).st_mode), 0o600)
        with open(cred) as f:
            tokens = json.load(f)
        self.assertNotIn(tokens["access_token"], out)
        a.wait_drained()
        rc, out, err = a.home.run_cli("sync", "status", "--json")
        status = json.loads(out)
        self.assertEqual((status["state"], status["pending"], status["hub"]["email"]),
                         ("Online", 0, "alice@example.com"))
        self.assertIsNotNone(status["last_success_at"])
        rc, out, err = a.home.run_cli("sync", "logout")
        self.assertEqual(rc, 0, err)
        self.assertFalse(os.path.exists(cred))
        wait_for("LocalOnly again", lambda: a.state() == "LocalOnly", diagnose=a.log)
        # Local work goes on, queued for a later login.
        a.write("task.add", prompt="while logged out", project="demo")
        self.assertGreater(a.pending(), 0)


class TestReady(SyncTestCase):

    def test_ready_once_the_first_state_is_recorded(self):
        """READY=1 comes once ccm-sync knows its first state and the store has
        it (the router reads it there): LocalOnly with no hub; with the hub
        away, Offline, as soon as the first request to it failed."""
        a = Machine(self, "a", self.hub)
        notify = a.home.notify_socket("notify-1")
        a.start_sync(NOTIFY_SOCKET=notify.path)
        self.assertTrue(notify.wait("READY=1", WAIT), a.log())
        sync = a.home.ok("sync.state")["sync"]
        self.assertEqual(sync["state"], "LocalOnly")
        self.assertIn("no hub configured", sync.get("detail") or "")
        a.stop_sync()
        a.login("alice@example.com", "alice-pw")
        self.hub.stop_server()  # setUp starts it again for the next test
        notify = a.home.notify_socket("notify-2")
        a.start_sync(NOTIFY_SOCKET=notify.path)
        self.assertTrue(notify.wait("READY=1", WAIT), a.log())
        self.assertEqual(a.state(), "Offline")
        self.assertIn("ready: state Offline", a.log())
        self.hub.start_server()
        a.wait_drained()


class TestUp(SyncTestCase):

    def sync_pids(self, home):
        sync = os.path.realpath(os.path.join(home.path, "bin", "ccm-sync"))
        return [p for p in home.processes()
                if os.path.realpath(f"/proc/{p}/exe") == sync]

    def test_ccm_up_starts_sync_only_with_a_hub(self):
        home = self.make_home(extra_env={"CCM_SYNC_PULL_MS": "250"})
        bin_dir = home.private_bin(("ccm", "ccm-store", "ccm-sync"))
        code, out, err = home.run_cli("up", "--detach", timeout=30, bin_dir=bin_dir)
        self.assertEqual(code, 0, err)
        time.sleep(0.5)
        self.assertEqual(self.sync_pids(home), [])
        self.assertEqual(home.run_cli("down", timeout=30)[0], 0)
        rc, out, err = home.run_cli("sync", "login", "--url", self.hub.url, "--anon-key",
                                    self.hub.anon_key, "--email", "alice@example.com",
                                    "--password-stdin", input="alice-pw\n")
        self.assertEqual(rc, 0, err)
        code, out, err = home.run_cli("up", "--detach", timeout=30, bin_dir=bin_dir)
        self.assertEqual(code, 0, err)
        # It returned once ccm-sync said READY=1: it runs, and its first
        # exchange with the hub is recorded.
        self.assertEqual(len(self.sync_pids(home)), 1)
        self.assertIn(home.ok("sync.state")["sync"]["state"], ("Online", "Syncing"))
        wait_for("Online", lambda: home.ok("sync.state")["sync"]["state"] == "Online")
        self.assertEqual(home.run_cli("down", timeout=30)[0], 0)
        self.assertEqual(home.processes(), [])


class TestStoreSyncVerbs(ccmtest.StoreTestCase):
    """The store's sync verbs refuse bad input by field and keep running."""

    def w(self, verb, **body):
        return self.store.call(verb, idem=str(uuid.uuid4()), **body)

    def test_bad_input(self):
        self.assertError(self.w("sync.mark", outcome="synced", items=[{"table": "tasks",
                                "record_id": "x", "upto": "1"}]), "bad_field", "items[0].upto")
        self.assertError(self.w("sync.mark", outcome="parked", items=[{"table": "tasks",
                                "record_id": "x", "upto": 1}]), "missing_field", "error")
        self.assertError(self.w("sync.mark", outcome="lost", items=[]), "bad_field", "outcome")
        self.assertError(self.w("sync.apply", table="hook_events", system_id="s", rows=[]),
                         "bad_field", "table")
        self.assertError(self.w("sync.apply", table="tasks", system_id="s", rows=[{"id": "t"}]),
                         "bad_field", "rows[0]")
        self.assertError(self.w("sync.apply", table="tasks", system_id="s", rows=["x"]),
                         "bad_field", "rows[0]")
        self.assertError(self.w("sync.meta.set", values={"k": 5}), "bad_field", "values.k")
        self.assertError(self.store.call("sync.pending", limit=0), "bad_field", "limit")
        self.assertEqual(self.store.ok("ping")["pong"], True)

    def test_a_hostile_hub_cannot_name_a_path(self):
        now = "2026-01-01T00:00:00.000000+00:00"
        bad = ["../../etc/cron.d/x", ".hidden", "a/b", "-rf", "x" * 65, ""]
        reply = self.w("sync.apply", table="skills", system_id="s", rows=[
            {"id": str(uuid.uuid4()), "name": n, "content": "evil", "updated_at": now}
            for n in bad] + [{"id": str(uuid.uuid4()), "name": "good.skill_1", "content": "ok",
                             "updated_at": now}])
        body = self.assertOk(reply)
        self.assertEqual((body["applied"], body["skipped"], body["changed"]),
                         (1, len(bad), ["good.skill_1"]))
        self.assertEqual(self.store.query("SELECT name FROM skills"), [("good.skill_1",)])
        # The same row again, or an older one, changes nothing.
        again = self.assertOk(self.w("sync.apply", table="skills", system_id="s", rows=[
            {"id": str(uuid.uuid4()), "name": "good.skill_1", "content": "older",
             "updated_at": "2025-01-01T00:00:00Z"}]))
        self.assertEqual(again["applied"], 0)
        self.assertEqual(self.store.query("SELECT content FROM skills"), [("ok",)])

    def test_pending_collapses_a_record_and_puts_urgent_first(self):
        normal = self.add_task("n")["id"]
        urgent = self.add_task("u", priority="urgent")["id"]
        self.assertOk(self.w("task.cancel", task=normal))
        items = self.assertOk(self.store.call("sync.pending", limit=100))["items"]
        tasks = [i for i in items if i["table"] == "tasks"]
        self.assertEqual([i["record_id"] for i in tasks], [urgent, normal])
        last = tasks[1]
        self.assertEqual((last["rows"], last["first_op"], last["data"]["status"]),
                         (3, "INSERT", "cancelled"))
        self.assertEqual(last["upto"], self.store.scalar(
            "SELECT max(id) FROM sync_queue WHERE record_id = ?", normal))
        marked = self.assertOk(self.w("sync.mark", outcome="synced", items=[
            {"table": "tasks", "record_id": normal, "upto": last["upto"]}]))
        self.assertEqual(marked["marked"], 3)
        left = self.assertOk(self.store.call("sync.pending", limit=100))["items"]
        self.assertNotIn(normal, [i["record_id"] for i in left])


if __name__ == "__main__":
    ccmtest.main()

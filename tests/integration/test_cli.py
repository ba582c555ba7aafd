#!/usr/bin/env python3
"""The ccm command against a real ccm-store: what a user types and sees.
Tasks from the CLI and from raw ZeroMQ, --json outputs, hostile prompts
stored byte for byte, errors, and ccm up / status / down supervision."""

import json
import os
import queue
import signal
import subprocess
import threading
import time
import uuid

import ccmtest
from ccmtest import UUID_RE, PROJECT_KEYS, EVENT_KEYS


NOT_RUNNING = ("not running", "no store", "cannot reach", "unreachable", "did not answer",
               "not answering", "is it running")


def assert_not_running_message(test, err):
    """A clear message says the store is not there (any of a few wordings)."""
    test.assertTrue(any(w in err.lower() for w in NOT_RUNNING),
                    f"the message should say the store is not running: {err!r}")


def lines(text):
    return [line for line in text.splitlines() if line.strip()]


class LineReader:
    """Reads a process's stdout lines on a thread, so a test can wait with a timeout."""

    def __init__(self, stream):
        self.queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, args=(stream,), daemon=True)
        self.thread.start()

    def _run(self, stream):
        for line in iter(stream.readline, b""):
            self.queue.put(line.decode("utf-8", "replace"))
        self.queue.put(None)

    def next(self, timeout):
        try:
            return self.queue.get(timeout=timeout)
        except queue.Empty:
            return None


class CliTestCase(ccmtest.StoreTestCase):

    def cli(self, *args, rc=0, **kwargs):
        """Runs ccm; asserts the exit code; returns (stdout, stderr)."""
        code, out, err = self.store.run_cli(*args, **kwargs)
        self.assertEqual(code, rc, f"ccm {' '.join(args)!r:.200} exited {code}, expected {rc}\n"
                                   f"stdout: {out[:1000]}\nstderr: {err[:1000]}")
        return out, err

    def cli_json(self, *args):
        out, _ = self.cli(*args)
        try:
            return json.loads(out)
        except ValueError as e:
            self.fail(f"ccm {' '.join(args)} printed no valid JSON ({e}):\n{out[:2000]}")

    def assertCliError(self, args, rc=1, mentions=()):
        code, out, err = self.store.run_cli(*args)
        self.assertEqual(code, rc, f"ccm {' '.join(args)}: exit {code}, expected {rc}; stderr {err!r}")
        self.assertTrue(err.startswith("ccm: "), f"errors go to stderr as 'ccm: <message>': {err!r}")
        for word in mentions:
            self.assertIn(word.lower(), err.lower(), f"the message should mention {word!r}: {err!r}")
        return err

    def project_dir(self, name):
        path = os.path.join(self.store.path, "projects", name)
        os.makedirs(path, exist_ok=True)
        return path


class Projects(CliTestCase):

    def test_project_add_and_list(self):
        path = self.project_dir("web")
        out, err = self.cli("project", "add", "web", path)
        self.assertEqual(len(lines(out)), 1, out)
        pid = out.strip()
        self.assertRegex(pid, UUID_RE, "project add prints the new project's id")
        self.assertEqual(self.store.query("SELECT id, name, path FROM projects"), [(pid, "web", path)])

        other = self.project_dir("api")
        self.cli("project", "add", "api", other)
        out, _ = self.cli("project", "list")
        self.assertIn("web", out)
        self.assertIn("api", out)
        self.assertIn(path, out)
        self.assertLess(out.index("api"), out.index("web"), "listed by name")

        listed = self.cli_json("project", "list", "--json")
        self.assertIsInstance(listed, list)
        self.assertEqual([p["name"] for p in listed], ["api", "web"])
        for p in listed:
            self.assertEqual(set(p), PROJECT_KEYS)
        self.assertEqual(listed, self.store.ok("project.list")["projects"])

        self.assertCliError(("project", "add", "web", path), mentions=("web",))
        code, out, err = self.store.run_cli("project", "add", "bad name", path)
        self.assertIn(code, (1, 2), f"a bad project name is an error: {code} {err!r}")
        self.assertTrue(err.startswith("ccm: "), err)
        self.assertIn("name", err)
        self.assertEqual(self.store.scalar("SELECT count(*) FROM projects"), 2)
        self.assertNotEqual(self.store.run_cli("project", "add", "only-a-name")[0], 0)


class Tasks(CliTestCase):

    def test_task_add_options(self):
        self.cli("project", "add", "web", self.project_dir("web"))
        out, _ = self.cli("task", "add", "--project", "web", "--priority", "high",
                          "--type", "manager", "--", "fix", "the", "login", "bug")
        self.assertEqual(len(out.splitlines()), 1, f"one line: {out!r}")
        tid = out.strip()
        self.assertRegex(tid, UUID_RE, "task add prints the full id")
        row = self.store.query("SELECT t.prompt, t.priority, t.task_type, t.status, p.name FROM tasks t"
                               " LEFT JOIN projects p ON p.id = t.project_id WHERE t.id = ?", tid)
        self.assertEqual(row, [("fix the login bug", "high", "manager", "queued", "web")])

        # A review names the task it reviews; without one it is refused, clearly.
        code, _, err = self.store.run_cli("task", "add", "--type", "supervisory", "--", "look")
        self.assertEqual(code, 1, err)
        self.assertIn("parent_task_id: a supervisory task names the task it reviews", err)
        review = self.cli("task", "add", "--review", tid[:8])[0].strip()
        row = self.store.query("SELECT task_type, parent_task_id, status, p.name, t.prompt FROM"
                               " tasks t LEFT JOIN projects p ON p.id = t.project_id"
                               " WHERE t.id = ?", review)
        self.assertEqual(row[0][:4], ("supervisory", tid, "queued", "web"),
                         "the review takes the project of the task it reviews")
        self.assertIn(f"Review the work of task {tid[:8]}", row[0][4])
        self.assertIn("CCM_REPORT_FILE", row[0][4])
        self.assertEqual(self.store.query("SELECT depends_on FROM task_dependencies WHERE"
                                          " task_id = ?", review), [(tid,)])
        # Subtasks hang only under a manager.
        sub = self.cli("task", "add", "--parent", tid[:8], "--", "part one")[0].strip()
        code, _, err = self.store.run_cli("task", "add", "--parent", sub[:8], "--", "deeper")
        self.assertEqual(code, 1, err)
        self.assertIn("only a manager task has subtasks", err)
        shown = self.cli_json("task", "show", tid[:8], "--json")
        self.assertEqual({t["id"] for t in shown["subtasks"]}, {review, sub})
        out, _ = self.cli("task", "show", tid[:8])
        self.assertIn(f"subtask        {sub[:8]} queued\n", out)

        out, _ = self.cli("task", "add", "--", "hello")
        row = self.store.query("SELECT prompt, priority, task_type, project_id FROM tasks WHERE id = ?",
                               out.strip())
        self.assertEqual(row, [("hello", "normal", "worker", None)])

        for priority in ("low", "normal", "urgent"):
            out, _ = self.cli("task", "add", "--priority", priority, "--", "p")
            self.assertEqual(self.store.scalar("SELECT priority FROM tasks WHERE id = ?", out.strip()),
                             priority)
        out, _ = self.cli("task", "add", "--type", "manager", "--", "m")
        self.assertEqual(self.store.scalar("SELECT task_type FROM tasks WHERE id = ?", out.strip()),
                         "manager")
        # After --, everything is prompt, even what looks like an option.
        out, _ = self.cli("task", "add", "--", "--priority", "urgent", "--json", "-x")
        self.assertEqual(self.store.query("SELECT prompt, priority FROM tasks WHERE id = ?", out.strip()),
                         [("--priority urgent --json -x", "normal")])

    def test_tasks_from_both_doors_are_listed(self):
        self.cli("project", "add", "web", self.project_dir("web"))
        cli_id = self.cli("task", "add", "--project", "web", "--", "from the CLI")[0].strip()
        zmq_id = self.store.ok("task.add", prompt="from ZeroMQ")["task"]["id"]
        held_id = self.store.ok("task.add", prompt="held", hold=True, project="web")["task"]["id"]

        listed = self.cli_json("task", "list", "--json")
        self.assertIsInstance(listed, list)
        self.assertEqual({t["id"] for t in listed}, {cli_id, zmq_id, held_id})
        for t in listed:
            self.assertTask(t)
        self.assertEqual([t["id"] for t in listed], [held_id, zmq_id, cli_id], "newest first")

        out, _ = self.cli("task", "list")
        for tid, prompt in ((cli_id, "from the CLI"), (zmq_id, "from ZeroMQ")):
            self.assertIn(tid[:8], out)
            self.assertIn(prompt, out)

        queued = self.cli_json("task", "list", "--status", "queued", "--json")
        self.assertEqual({t["id"] for t in queued}, {cli_id, zmq_id})
        created = self.cli_json("task", "list", "--status", "created", "--json")
        self.assertEqual([t["id"] for t in created], [held_id])
        in_web = self.cli_json("task", "list", "--project", "web", "--json")
        self.assertEqual({t["id"] for t in in_web}, {cli_id, held_id})
        both = self.cli_json("task", "list", "--project", "web", "--status", "queued", "--json")
        self.assertEqual([t["id"] for t in both], [cli_id])
        self.assertEqual(self.cli_json("task", "list", "--status", "complete", "--json"), [])

    def test_task_show_and_cancel(self):
        tid = self.cli("task", "add", "--", "show me")[0].strip()
        shown = self.cli_json("task", "show", tid[:8], "--json")
        self.assertLessEqual({"task", "events"}, set(shown))  # later issues may add keys
        self.assertEqual(shown["task"]["id"], tid)
        self.assertEqual(shown["task"]["prompt"], "show me")
        self.assertIsInstance(shown["events"], list)
        self.assertEqual({k: v for k, v in shown.items() if k not in ("reports", "subtasks")},
                         {k: v for k, v in self.store.ok("task.get", task=tid).items()
                          if k not in ("v", "id")})
        self.assertEqual((shown["reports"], shown["subtasks"]), ([], []))
        out, _ = self.cli("task", "show", tid[:4] if self.unique4(tid) else tid)
        self.assertIn(tid, out)
        self.assertIn("show me", out)
        self.assertIn("queued", out)

        self.cli("task", "cancel", tid[:8])
        self.assertEqual(self.store.scalar("SELECT status FROM tasks WHERE id = ?", tid), "cancelled")
        self.assertEqual(self.cli_json("task", "show", tid, "--json")["task"]["status"], "cancelled")
        self.assertCliError(("task", "cancel", tid), mentions=("cancelled",))

    def unique4(self, tid):
        return self.store.scalar("SELECT count(*) FROM tasks WHERE substr(id, 1, 4) = ?", tid[:4]) == 1

    def test_hostile_prompt_is_stored_byte_for_byte(self):
        tag = uuid.uuid4().hex[:8]
        pwned = f"/tmp/ccm-pwned-{tag}"
        prompt = (f'say "hi" and \'bye\' $(touch {pwned}) `touch {pwned}-bt` ${{HOME}} $HOME '
                  f'\\back\\slash; rm -rf "$CCM_HOME" # | && ||\nsecond line\n\tindented\twith tabs '
                  "🚀 ünïcødé 中文 \u200b zero-width  double  spaces  \r\n trailing ")
        out, _ = self.cli("task", "add", "--", prompt)
        tid = out.strip()
        self.assertRegex(tid, UUID_RE)
        stored = self.store.scalar("SELECT CAST(prompt AS BLOB) FROM tasks WHERE id = ?", tid)
        self.assertEqual(stored, prompt.encode("utf-8"), "the prompt must be stored byte for byte")
        self.assertFalse(os.path.exists(pwned), "$( ) was executed")
        self.assertFalse(os.path.exists(pwned + "-bt"), "backticks were executed")
        self.assertEqual(self.cli_json("task", "show", tid, "--json")["task"]["prompt"], prompt)
        listed = self.cli_json("task", "list", "--json")
        self.assertEqual([t["prompt"] for t in listed if t["id"] == tid], [prompt])
        self.assertTrue(os.path.isdir(self.store.path), "the home survived the prompt")

        # Several words: joined by single spaces, each word kept as it is.
        words = ["first\nline", "'quoted'", '"double"', "$(touch " + pwned + ")", "🚀"]
        tid = self.cli("task", "add", "--", *words)[0].strip()
        self.assertEqual(self.store.scalar("SELECT CAST(prompt AS BLOB) FROM tasks WHERE id = ?", tid),
                         " ".join(words).encode("utf-8"))
        self.assertFalse(os.path.exists(pwned))

        # Leading and trailing spaces of a single argument are kept.
        tid = self.cli("task", "add", "--", "  padded  ")[0].strip()
        self.assertEqual(self.store.scalar("SELECT prompt FROM tasks WHERE id = ?", tid), "  padded  ")


class Errors(CliTestCase):

    def test_errors(self):
        before = self.store.scalar("SELECT count(*) FROM tasks")
        missing = str(uuid.uuid4())
        self.assertCliError(("task", "show", missing), mentions=(missing,))
        self.assertCliError(("task", "cancel", missing), mentions=(missing,))

        code, out, err = self.store.run_cli("task", "add", "--priority", "extreme", "--", "x")
        self.assertIn(code, (1, 2), f"a bad priority is an error: {code} {err!r}")
        self.assertTrue(err.startswith("ccm: "), err)
        self.assertIn("priority", err)
        self.assertEqual(out, "")
        code, out, err = self.store.run_cli("task", "add", "--type", "boss", "--", "x")
        self.assertIn(code, (1, 2))
        self.assertTrue(err.startswith("ccm: "), err)
        self.assertTrue("type" in err, err)
        self.assertCliError(("task", "add", "--project", "nope", "--", "x"), mentions=("nope",))
        self.assertCliError(("task", "list", "--project", "nope"), mentions=("nope",))
        self.assertEqual(self.store.scalar("SELECT count(*) FROM tasks"), before, "nothing was added")

        # Usage errors exit 2.
        for args in (("task", "add"), ("task", "add", "--"), ("task", "frobnicate"), ("frobnicate",),
                     (), ("task", "show"), ("events", "--since", "abc"), ("task", "add", "--bogus", "x"),
                     ("task", "add", "--priority")):
            code, out, err = self.store.run_cli(*args)
            self.assertEqual(code, 2, f"ccm {' '.join(args)}: usage error must exit 2, got {code}: {err!r}")
            self.assertTrue(err.strip(), f"ccm {' '.join(args)}: usage error without a message")
        self.assertEqual(self.store.scalar("SELECT count(*) FROM tasks"), before)

    def test_store_not_running(self):
        home = self.make_home()
        for args in (("task", "list"), ("task", "add", "--", "x"), ("status",), ("project", "list"),
                     ("events",)):
            started = time.monotonic()
            code, out, err = home.run_cli(*args, timeout=30)
            took = time.monotonic() - started
            self.assertEqual(code, 1, f"ccm {' '.join(args)} with no store: exit {code}: {err!r}")
            self.assertTrue(err.startswith("ccm: "), err)
            assert_not_running_message(self, err)
            self.assertLess(took, 15, f"ccm {' '.join(args)} took {took:.1f} s to give up")
        self.assertFalse(os.path.exists(home.db_path), "the CLI must never open the database")
        self.assertEqual(home.processes(), [], "the CLI must not start anything by itself")


class Json(CliTestCase):

    def test_events_command(self):
        self.cli("project", "add", "web", self.project_dir("web"))
        a = self.cli("task", "add", "--project", "web", "--", "a")[0].strip()
        b = self.store.ok("task.add", prompt="b")["task"]["id"]
        self.cli("task", "cancel", a)
        head = self.store.head()

        out, _ = self.cli("events", "--json")
        events = [json.loads(line) for line in lines(out)]
        self.assertEqual([e["seq"] for e in events], list(range(1, head + 1)), "NDJSON, every event")
        for e in events:
            self.assertEqual(set(e), EVENT_KEYS)
        self.assertEqual(events, self.store.replay(0))

        out, _ = self.cli("events", "--since", "2", "--json")
        self.assertEqual([json.loads(line)["seq"] for line in lines(out)], list(range(3, head + 1)))
        out, _ = self.cli("events", "--task", a, "--json")
        of_a = [json.loads(line) for line in lines(out)]
        self.assertEqual(of_a, self.store.replay(0, task=a))
        self.assertEqual(of_a[0]["topic"], "task.created")
        self.assertEqual(ccmtest.transitions(of_a), [("queued", "cancelled")])
        self.assertTrue(all(e["task_id"] == a for e in of_a))
        out, _ = self.cli("events", "--task", b, "--json")
        of_b = [json.loads(line) for line in lines(out)]
        self.assertEqual(of_b, self.store.replay(0, task=b))
        self.assertEqual(of_b[0]["topic"], "task.created")
        self.assertTrue(all(e["task_id"] == b for e in of_b))

        out, _ = self.cli("events")
        self.assertEqual(len(lines(out)), head, f"one line per event:\n{out}")
        self.assertIn("task.created", out)
        self.assertIn("project.added", out)

    def test_status_json(self):
        self.cli("task", "add", "--", "one")
        status = self.cli_json("status", "--json")
        self.assertIs(status["store"]["up"], True)
        self.assertEqual(status["store"]["pid"], self.store.pid)
        self.assertEqual(status["store"]["seq"], self.store.head())
        self.assertEqual(status["tasks"].get("queued"), 1)
        out, _ = self.cli("status")
        self.assertIn("store", out)
        self.assertIn(str(self.store.pid), out)

    def test_events_follow_prints_a_later_task(self):
        first = self.store.ok("task.add", prompt="before")["task"]["id"]
        proc = self.store.popen_cli("events", "--follow", "--json")
        reader = LineReader(proc.stdout)
        line = reader.next(10)
        self.assertIsNotNone(line, "ccm events --follow printed nothing for the existing event")
        self.assertEqual(json.loads(line)["entity_id"], first)
        later = self.store.ok("task.add", prompt="after")["task"]["id"]
        seen = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            line = reader.next(max(0.1, deadline - time.monotonic()))
            if line is None:
                break
            event = json.loads(line)
            seen.append(event)
            if event["topic"] == "task.created" and event["entity_id"] == later:
                break
        self.assertTrue(any(e["entity_id"] == later and e["topic"] == "task.created" for e in seen),
                        f"the live task never showed: {seen}")
        self.assertIsNone(proc.poll(), "--follow keeps running")
        proc.send_signal(signal.SIGTERM)
        proc.wait(10)
        seqs = [1] + [e["seq"] for e in seen]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)), "no duplicate, no gap")


class Supervision(ccmtest.CcmTestCase):

    def wait_store(self, home, not_pid=None, timeout=15):
        """Waits for a store on home that answers ping (with a pid other than not_pid)."""
        deadline = time.monotonic() + timeout
        client = home.client(timeout=0.3)
        try:
            while time.monotonic() < deadline:
                try:
                    reply = client.call("ping")
                    if reply.ok and reply["pid"] != not_pid:
                        return reply.body
                except TimeoutError:
                    pass
                time.sleep(0.1)
        finally:
            client.close()
        self.fail(f"no store answered within {timeout} s")

    def test_up_detach_status_down(self):
        home = self.make_home()
        only_store = home.private_bin()  # this test is about the store, not later services
        started = time.monotonic()
        code, out, err = home.run_cli("up", "--detach", timeout=30, bin_dir=only_store)
        self.assertEqual(code, 0, f"ccm up --detach: {code} {err!r}")
        self.assertLess(time.monotonic() - started, 20)
        pong = self.wait_store(home, timeout=2)  # it returned once the store answered
        pid = pong["pid"]
        self.assertTrue(ccmtest.pid_alive(pid))

        code, out, err = home.run_cli("status", "--json")
        self.assertEqual(code, 0, err)
        status = json.loads(out)
        self.assertIs(status["store"]["up"], True)
        self.assertEqual(status["store"]["pid"], pid)
        self.assertEqual(status["store"]["seq"], pong["seq"])
        self.assertIsInstance(status["tasks"], dict)
        code, out, err = home.run_cli("status")
        self.assertEqual(code, 0, err)
        self.assertIn("store", out)
        self.assertIn(str(pid), out)

        code, out, _ = home.run_cli("task", "add", "--", "survives down and up")
        self.assertEqual(code, 0)
        tid = out.strip()
        status = json.loads(home.run_cli("status", "--json")[1])
        self.assertEqual(status["tasks"].get("queued"), 1)

        # A second `up` does not start a second store.
        home.run_cli("up", "--detach", timeout=30, bin_dir=only_store)
        self.assertEqual(self.wait_store(home, timeout=2)["pid"], pid)

        code, out, err = home.run_cli("down", timeout=30)
        self.assertEqual(code, 0, f"ccm down: {code} {err!r}")
        self.assertFalse(ccmtest.pid_alive(pid), "ccm down returned before the store exited")
        self.assertEqual(home.processes(), [], "ccm down left processes behind")
        code, out, err = home.run_cli("status")
        self.assertEqual(code, 1)
        self.assertTrue(err.startswith("ccm: "), err)
        assert_not_running_message(self, err)
        self.assertEqual(home.query("SELECT prompt FROM tasks WHERE id = ?", tid),
                         [("survives down and up",)])

        # Up again: the data is there.
        code, out, err = home.run_cli("up", "--detach", timeout=30, bin_dir=only_store)
        self.assertEqual(code, 0, err)
        code, out, err = home.run_cli("task", "show", tid, "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["task"]["prompt"], "survives down and up")
        self.assertEqual(home.run_cli("down", timeout=30)[0], 0)
        self.assertEqual(home.processes(), [])

    def test_up_restarts_a_killed_store(self):
        home = self.make_home()
        log = open(os.path.join(home.path, "up.out"), "wb")
        self.addCleanup(log.close)
        proc = home.popen_cli("up", stdout=log, stderr=subprocess.STDOUT,
                              bin_dir=home.private_bin())
        first = self.wait_store(home)
        code, out, err = home.run_cli("task", "add", "--", "before the crash")
        self.assertEqual(code, 0, err)
        tid = out.strip()

        os.kill(first["pid"], signal.SIGKILL)
        second = self.wait_store(home, not_pid=first["pid"], timeout=15)
        self.assertNotEqual(second["pid"], first["pid"])
        self.assertTrue(ccmtest.pid_alive(second["pid"]))
        self.assertIsNone(proc.poll(), "the supervisor is still running")
        code, out, err = home.run_cli("task", "show", tid, "--json")
        self.assertEqual(code, 0, err)
        self.assertEqual(json.loads(out)["task"]["prompt"], "before the crash")
        code, out, err = home.run_cli("task", "add", "--", "after the crash")
        self.assertEqual(code, 0, err)
        self.assertEqual(home.scalar("SELECT count(*) FROM tasks"), 2)
        self.assertEqual(home.scalar("PRAGMA integrity_check"), "ok")
        status = json.loads(home.run_cli("status", "--json")[1])
        self.assertEqual(status["store"]["pid"], second["pid"])

        # Ctrl-C on the foreground `ccm up` stops everything.
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            self.fail("ccm up did not exit within 20 s of SIGINT")
        self.assertFalse(ccmtest.pid_alive(second["pid"]), "the store outlived ccm up")
        self.assertEqual(home.processes(), [])

    def test_up_runs_extra_executors(self):
        """up.executors = 3: three executors, each a system of its own (its machine id,
        hostname, tmux server, worktrees, outbox), instance 3 with its own settings from
        executor-3.json; each restarted by ccm up when it dies, all stopped by ccm down."""
        home = self.make_home()
        sup = ccmtest.Supervisor(home, {"up.executors": 3, "executor.machine_id": "m-up",
                                        "executor.hostname": "box", "gateway.port": 0},
                                 instances={3: {"executor": {"capacity": 2}}}).start()
        self.assertEqual(home.query("SELECT hostname, machine_id, capacity FROM systems"
                                    " WHERE machine_id LIKE 'm-up%' ORDER BY hostname"),
                         [("box", "m-up", 4), ("box-2", "m-up-2", 4), ("box-3", "m-up-3", 2)])
        pids = sup.services()
        self.assertLessEqual({"store", "router", "executor", "executor-2", "executor-3", "hooks",
                              "gateway"}, set(pids))
        env = set(ccmtest._proc_environ(pids["executor-2"]))
        run = os.path.join(home.path, "run")
        for var in (f"CCM_EXECUTOR_TMUX_SOCKET={run}/tmux.sock-2",
                    f"CCM_EXECUTOR_WORKTREES={home.path}/worktrees-2",
                    f"CCM_EXECUTOR_OUTBOX={run}/executor-outbox-2"):
            self.assertIn(var.encode(), env)
        self.assertFalse([v for v in ccmtest._proc_environ(pids["executor"])
                          if v.startswith(b"CCM_EXECUTOR_")], "instance 1 keeps config.json's")

        killed = time.time()
        os.kill(pids["executor-2"], signal.SIGKILL)
        again = sup.wait_service("executor-2", not_pid=pids["executor-2"])
        self.assertTrue(again, "ccm up restarted executor #2:\n" + sup.log_tail())
        self.assertEqual(sup.services()["executor-3"], pids["executor-3"], "the others ran on")
        probe = sup.probe_for("executor-2")
        self.assertTrue(ccmtest.wait_until(lambda: (probe() or 0) > killed, 15),
                        "the restarted executor registered its system again")
        self.assertIn(f"started {ccmtest.BIN_DIR}/ccm-executor #2 (pid {again})", sup.log_text())
        self.assertEqual(sup.stop(), (0, 0))
        self.assertEqual(home.processes(), [])

        # A setting no executor has is refused, naming the file and the key.
        with open(os.path.join(home.path, "executor-2.json"), "w") as f:
            json.dump({"executor.capcity": 3}, f)
        code, out, err = home.run_cli("up", timeout=30)
        self.assertEqual(code, 1)
        self.assertIn(f"{home.path}/executor-2.json: unknown key 'executor.capcity'", err)
        self.assertEqual(home.processes(), [])


if __name__ == "__main__":
    ccmtest.main()

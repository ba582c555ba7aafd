"""Integration tests of the hook pipeline: ccm-hook -> ccm-hooks -> ccm-store.

Real processes only: $CCM_BIN_DIR/ccm-hook is run exactly as Claude Code,
Gemini CLI and Codex run it (the event on stdin, or as the last argument
for Codex's notify), ccm-hooks (the ingester) is started on the test's
CCM_HOME, and ccm-store is the harness's. What is checked is what a user
would check: hook_events and agents rows (the database opened read-only),
the files in $CCM_HOME/spool, exit codes and how long ccm-hook took.

The Claude Code events replayed come from tests/fixtures/claude-code-hooks/
(one JSON event a line, as Claude Code wrote them).

Every wait is bounded. Every ingester a test starts is ended in cleanup,
before the harness looks for leftover processes.

HOOKS_STRESS_EVENTS sets how many events the no-loss test sends (default
10,000, the issue's number: about 20 s on a 2-core machine).
"""

import glob
import json
import os
import signal
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ccmtest  # noqa: E402

HOOK_BIN = os.path.join(ccmtest.BIN_DIR, "ccm-hook")
HOOKS_BIN = os.path.join(ccmtest.BIN_DIR, "ccm-hooks")
FIXTURES = os.path.join(ccmtest.SOURCE_DIR, "tests", "fixtures", "claude-code-hooks")
STRESS_EVENTS = int(os.environ.get("HOOKS_STRESS_EVENTS") or 10000)
STRESS_THREADS = 8
WAIT = 30.0             # the longest any single wait may take
HOOK_TIMEOUT = 10.0     # a ccm-hook run that takes longer is a hang
BODY_MAX = 8 << 20      # hook_wire.h HOOK_BODY_MAX: longer events are cut

ROW_KEYS = ("id", "uid", "task_id", "agent_id", "system_id", "session_id", "hook_type",
            "hook_timestamp", "event_data", "tool_name", "file_path", "success")


def wait_for(what, predicate, timeout=WAIT, interval=0.05, diagnose=None):
    """Polls predicate until it gives a true value (returned) or fails after timeout."""
    value = ccmtest.wait_until(predicate, timeout, interval)
    if not value:
        extra = ("\n" + diagnose()) if diagnose else ""
        raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
    return value


def fixture_files():
    return sorted(glob.glob(os.path.join(FIXTURES, "*.jsonl")))


def fixture_lines(path):
    """The events of a fixture file: its non-empty lines, as bytes."""
    with open(path, "rb") as f:
        return [line for line in f.read().split(b"\n") if line.strip()]


class HooksTestCase(ccmtest.CcmTestCase):
    """A home with a running store; helpers to run ccm-hook and ccm-hooks."""

    def setUp(self):
        for binary in (HOOK_BIN, HOOKS_BIN):
            if not os.access(binary, os.X_OK):
                raise AssertionError(f"{binary} is missing: build first")
        self.home = self.make_home(start=True)
        self.ingesters = []
        self.ended = set()  # pids of ingesters the test stopped or killed on purpose
        # Registered after make_home's cleanup, so it runs first (LIFO).
        self.addCleanup(self._stop_ingesters)

    # ------------------------------------------------------------ paths

    @property
    def spool_dir(self):
        return os.path.join(self.home.path, "spool")

    @property
    def socket_path(self):
        return os.path.join(self.home.path, "run", "hooks.sock")

    @property
    def ingester_stderr(self):
        return os.path.join(self.home.path, "hooks.stderr")

    def spooled(self):
        """The spooled events waiting in $CCM_HOME/spool (*.ev)."""
        return sorted(glob.glob(os.path.join(self.spool_dir, "*.ev")))

    def journal_bytes(self):
        """The bytes in the ingester's journal segments (0: all committed)."""
        total = 0
        for path in glob.glob(os.path.join(self.spool_dir, "journal-*.log")):
            try:
                total += os.path.getsize(path)
            except OSError:
                pass
        return total

    def drained(self):
        return not self.spooled() and self.journal_bytes() == 0

    # -------------------------------------------------------- the ingester

    def start_ingester(self, wait=True, **env):
        """Starts ccm-hooks on the home (env added to its environment);
        returns once its socket accepts (at once if not wait)."""
        with open(self.ingester_stderr, "ab") as err:
            err.write(f"--- ccm-hooks started by the test at {time.time():.3f}\n".encode())
            err.flush()
            proc = subprocess.Popen([HOOKS_BIN], env=dict(self.home.env, **env),
                                    stdin=subprocess.DEVNULL, stdout=err, stderr=err,
                                    cwd=self.home.path)
        self.ingesters.append(proc)
        if not wait:
            return proc

        def accepting():
            if proc.poll() is not None:
                return True
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(self.socket_path)
                    return True
                except OSError:
                    return False
        wait_for("ccm-hooks to listen", accepting, 10, diagnose=self.diagnose)
        self.assertIsNone(proc.poll(), "ccm-hooks exited at start:\n" + self.diagnose())
        return proc

    def stop_ingester(self, proc, timeout=10):
        """SIGTERM; returns the exit code (None if it had to be killed)."""
        self.ended.add(proc.pid)
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                return None
        return proc.returncode

    def kill9(self, proc):
        self.ended.add(proc.pid)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def assertAlive(self, proc, msg=""):
        self.assertIsNone(proc.poll(), f"ccm-hooks died ({proc.returncode}) {msg}\n"
                          + self.diagnose())

    def _stop_ingesters(self):
        problems = []
        for proc in self.ingesters:
            running = proc.poll() is None
            ended = proc.pid in self.ended
            code = self.stop_ingester(proc)
            if running and code != 0:
                problems.append(f"ccm-hooks (pid {proc.pid}) exited with {code} on SIGTERM")
            elif not running and not ended:
                problems.append(f"ccm-hooks (pid {proc.pid}) died by itself (exit {code})")
        if problems:
            self.fail("\n".join(problems) + "\n" + self.diagnose())

    def diagnose(self):
        try:
            with open(self.ingester_stderr, "rb") as f:
                tail = "\n".join(f.read().decode("utf-8", "replace").splitlines()[-30:])
        except OSError:
            tail = ""
        try:
            count = self.home.scalar("SELECT count(*) FROM hook_events")
        except Exception as e:  # noqa: BLE001 - a diagnosis must not raise
            count = f"? ({e})"
        spool = sorted(os.listdir(self.spool_dir)) if os.path.isdir(self.spool_dir) else []
        return (f"hook_events rows: {count}; spool: {len(spool)} file(s) {spool[:5]}; "
                f"journal bytes: {self.journal_bytes()}\n"
                f"ccm-hooks stderr:\n{tail}\nstore stderr:\n{self.home.stderr_tail(10)}")

    # ------------------------------------------------------------ ccm-hook

    def hook_env(self, task=None, agent=None, system=None):
        env = dict(self.home.env)
        for key, value in (("CCM_TASK_ID", task), ("CCM_AGENT_ID", agent),
                           ("CCM_SYSTEM_ID", system)):
            if value is not None:
                env[key] = value
        return env

    def hook(self, body, *args, env=None, timeout=HOOK_TIMEOUT):
        """Runs ccm-hook ARGS with body on stdin (None: no stdin at all) the way
        a CLI does; asserts it exits 0 in time. Returns (stdout, stderr, seconds)."""
        started = time.monotonic()
        try:
            done = subprocess.run([HOOK_BIN, *args], input=body,
                                  stdin=subprocess.DEVNULL if body is None else None,
                                  env=env or self.home.env, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"ccm-hook {' '.join(args)} did not exit within {timeout} s")
        took = time.monotonic() - started
        self.assertEqual(done.returncode, 0, f"ccm-hook {' '.join(args)} exited "
                         f"{done.returncode}: {done.stderr!r:.500}")
        return done.stdout, done.stderr, took

    # ---------------------------------------------------------- the rows

    def rows(self, where="1", *args):
        """hook_events rows (dicts, event_data parsed), oldest first."""
        rows = self.home.query(f"SELECT {', '.join(ROW_KEYS)} FROM hook_events WHERE {where}"
                               " ORDER BY id", *args)
        out = []
        for row in rows:
            row = dict(zip(ROW_KEYS, row))
            row["event_data"] = json.loads(row["event_data"])
            out.append(row)
        return out

    def wait_rows(self, count, where="1", *args, timeout=WAIT):
        """Waits until at least count rows match; returns all that match."""
        sql = f"SELECT count(*) FROM hook_events WHERE {where}"
        wait_for(f"{count} hook_events rows where {where} {args}",
                 lambda: self.home.scalar(sql, *args) >= count, timeout, diagnose=self.diagnose)
        return self.rows(where, *args)

    def agent(self, agent_id):
        rows = self.home.query("SELECT status, state_source, task_id FROM agents WHERE id = ?",
                               agent_id)
        return dict(zip(("status", "state_source", "task_id"), rows[0])) if rows else None

    def wait_agent(self, agent_id, status):
        wait_for(f"agent {agent_id} to be {status}",
                 lambda: (self.agent(agent_id) or {}).get("status") == status, 10,
                 diagnose=lambda: f"agent: {self.agent(agent_id)}\n{self.diagnose()}")
        return self.agent(agent_id)

    def add_task(self, prompt="a task of the hook tests"):
        return self.home.ok("task.add", prompt=prompt)["task"]["id"]

    # ------------------------------------------------------- raw clients

    def raw_client(self, data, close=True):
        """Connects to hooks.sock, sends data; returns the socket (closed if close)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5)
        sock.connect(self.socket_path)
        if data:
            try:
                sock.sendall(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the ingester hung up on a bad record: fine
        if close:
            sock.close()
        return sock


def record(head, body):
    """A hook_wire.h record: "CCMH", u32 head_len, u32 body_len, head, body."""
    return b"CCMH" + struct.pack(">II", len(head), len(body)) + head + body


class TestHooks(HooksTestCase):

    # ---------------------------------------------------------------- 1

    def test_fixture_replay(self):
        """Every line of every fixture, run through ccm-hook, is one row, in
        order, with the fields taken from it and event_data equal to it; the
        agents' states follow the events."""
        files = fixture_files()
        self.assertTrue(files, f"no fixtures in {FIXTURES}")
        self.start_ingester()
        system = "system-" + uuid.uuid4().hex[:8]
        for path in files:
            name = os.path.basename(path)
            lines = fixture_lines(path)
            self.assertTrue(lines, f"{name} is empty")
            task = self.add_task(f"replay {name}")
            agent = str(uuid.uuid4())
            env = self.hook_env(task=task, agent=agent, system=system)
            for line in lines:
                out, err, _ = self.hook(line, env=env)
                self.assertEqual(out, b"", f"{name}: ccm-hook printed a decision nobody asked for")
                self.assertEqual(err, b"", f"{name}: ccm-hook complained")
            rows = self.wait_rows(len(lines), "task_id = ?", task)
            self.assertEqual(len(rows), len(lines), f"{name}: one row per line")
            subagents = set()
            for number, (line, row) in enumerate(zip(lines, rows), 1):
                event = json.loads(line)
                with self.subTest(fixture=name, line=number, event=event["hook_event_name"]):
                    self.assertEqual(row["hook_type"], event["hook_event_name"])
                    self.assertEqual(row["tool_name"], event.get("tool_name"))
                    self.assertEqual(row["session_id"], event["session_id"])
                    self.assertEqual(row["task_id"], task)
                    self.assertEqual(row["system_id"], system)
                    self.assertRegex(row["uid"] or "", r"^[0-9a-f]{32}$")
                    self.assertRegex(row["hook_timestamp"], ccmtest.TIME_RE)
                    self.assertEqual(row["agent_id"], event.get("agent_id") or agent)
                    if event.get("agent_id"):
                        subagents.add(event["agent_id"])
                    want_file = (event.get("tool_input") or {}).get("file_path")
                    if event.get("tool_name") in ("Write", "Edit", "Read"):
                        self.assertIsNotNone(want_file, "a fixture file tool without file_path")
                    # Byte-exact: quotes, unicode and all.
                    stored = self.home.scalar("SELECT CAST(file_path AS BLOB) FROM hook_events"
                                              " WHERE id = ?", row["id"])
                    self.assertEqual(stored, want_file.encode() if want_file else None)
                    want_success = {"PostToolUse": 1, "PostToolUseFailure": 0}.get(
                        event["hook_event_name"])
                    self.assertEqual(row["success"], want_success)
                    # The one documented change: a NUL (\u0000) in a string is
                    # stored as U+FFFD, since a NUL would cut the string short.
                    want = json.loads(line.replace(b"\\u0000", b"\\ufffd"))
                    self.assertEqual(row["event_data"], want,
                                     "event_data differs from the event Claude Code sent")
            # The agent's state, from the hooks: the main agent ended its session.
            main = self.wait_agent(agent, "exited")
            self.assertEqual(main["state_source"], "hook", name)
            self.assertEqual(main["task_id"], task, name)
            for sub in sorted(subagents):
                state = self.wait_agent(sub, "exited")
                self.assertEqual(state["state_source"], "hook", f"{name}: subagent {sub}")
            if name == "subagent.jsonl":
                self.assertGreaterEqual(len(subagents), 2, "the subagent fixture has subagents")
        # All of it committed: nothing left to replay.
        wait_for("the journal to be drained", self.drained, 10, diagnose=self.diagnose)

    # ---------------------------------------------------------------- 2

    def test_unknown_event_types_are_kept(self):
        """An event type ccm does not know (a newer CLI) is stored as it is;
        one without any name is kept as Unknown."""
        self.start_ingester()
        agent = str(uuid.uuid4())
        env = self.hook_env(agent=agent)
        novel = {"hook_event_name": "SomethingNew2027", "session_id": "s-new",
                 "future_field": {"nested": [1, 2, 3]}, "tool_name": "Teleport"}
        nameless = {"session_id": "s-new", "what": "no hook_event_name at all"}
        for event in (novel, nameless):
            self.hook(json.dumps(event).encode(), env=env)
        rows = self.wait_rows(2, "agent_id = ?", agent)
        self.assertEqual([r["hook_type"] for r in rows], ["SomethingNew2027", "Unknown"])
        self.assertEqual(rows[0]["event_data"], novel)
        self.assertEqual(rows[0]["tool_name"], "Teleport")
        self.assertIsNone(rows[0]["success"])
        self.assertEqual(rows[1]["event_data"], nameless)
        self.assertEqual(rows[1]["session_id"], "s-new")

    # ---------------------------------------------------------------- 3

    def test_session_links_events_to_the_task(self):
        """An event without CCM_TASK_ID gets the task (and agent) of an earlier
        event of its session that had one; other sessions are not linked."""
        self.start_ingester()
        task = self.add_task("session linking")
        agent = str(uuid.uuid4())
        session = str(uuid.uuid4())
        first = {"hook_event_name": "UserPromptSubmit", "session_id": session, "prompt": "go"}
        later = {"hook_event_name": "PreToolUse", "session_id": session, "tool_name": "Bash",
                 "tool_input": {"command": "true"}, "marker": "later"}
        stranger = {"hook_event_name": "PreToolUse", "session_id": str(uuid.uuid4()),
                    "tool_name": "Bash", "marker": "stranger"}
        self.hook(json.dumps(first).encode(), env=self.hook_env(task=task, agent=agent))
        self.hook(json.dumps(later).encode())      # no CCM_* at all
        self.hook(json.dumps(stranger).encode())
        rows = self.wait_rows(3)
        by_marker = {r["event_data"].get("marker"): r for r in rows}
        self.assertEqual(by_marker[None]["task_id"], task)
        self.assertEqual(by_marker["later"]["task_id"], task, "the session's task was not used")
        self.assertEqual(by_marker["later"]["agent_id"], agent)
        self.assertIsNone(by_marker["stranger"]["task_id"], "another session got the task")

    def test_session_link_survives_an_ingester_restart(self):
        """The link of a session to its task outlives a restart of ccm-hooks
        (an upgrade, a crash): a later event of the session still gets it."""
        ingester = self.start_ingester()
        task = self.add_task("session linking across restarts")
        session = str(uuid.uuid4())
        first = {"hook_event_name": "UserPromptSubmit", "session_id": session, "prompt": "go"}
        self.hook(json.dumps(first).encode(), env=self.hook_env(task=task))
        self.wait_rows(1, "task_id = ?", task)
        wait_for("the journal to be drained", self.drained, 10, diagnose=self.diagnose)
        self.assertEqual(self.stop_ingester(ingester), 0, "ccm-hooks did not exit 0 on SIGTERM")
        self.start_ingester()
        later = {"hook_event_name": "Stop", "session_id": session, "marker": "after-restart"}
        self.hook(json.dumps(later).encode())
        row = self.wait_rows(1, "json_extract(event_data, '$.marker') = 'after-restart'")[0]
        self.assertEqual(row["task_id"], task,
                         "after a restart of ccm-hooks the session's task is forgotten")

    # ---------------------------------------------------------------- 4

    def test_spool_when_the_ingester_is_down(self):
        """With no ingester, ccm-hook still exits 0 at once, leaving each event
        in its own 0600 spool file; a starting ingester stores each exactly
        once and removes the files."""
        count = 25
        task = self.add_task("spooled")
        env = self.hook_env(task=task, agent=str(uuid.uuid4()))
        slowest = 0.0
        for i in range(count):
            event = {"hook_event_name": "PostToolUse", "session_id": "s-spool",
                     "tool_name": "Bash", "marker": f"spool-{i}"}
            out, err, took = self.hook(json.dumps(event).encode(), env=env)
            self.assertEqual((out, err), (b"", b""))
            slowest = max(slowest, took)
        self.assertLess(slowest, 1.0, "ccm-hook waited for an ingester that is not there")
        files = self.spooled()
        self.assertEqual(len(files), count, f"spool: {os.listdir(self.spool_dir)}")
        self.assertEqual(stat.S_IMODE(os.stat(self.spool_dir).st_mode), 0o700)
        for path in files:
            self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600, path)
        self.assertFalse(glob.glob(os.path.join(self.spool_dir, ".tmp-*")),
                         "a temporary spool file was left")
        self.assertEqual(self.home.scalar("SELECT count(*) FROM hook_events"), 0)

        self.start_ingester()
        rows = self.wait_rows(count, "task_id = ?", task)
        markers = [r["event_data"]["marker"] for r in rows]
        self.assertEqual(sorted(markers), sorted(f"spool-{i}" for i in range(count)))
        self.assertEqual(len(set(markers)), count, "an event was stored twice")
        self.assertTrue(all(r["success"] == 1 for r in rows))
        wait_for("the spool files to be removed", self.drained, 10, diagnose=self.diagnose)
        time.sleep(1.2)  # one more spool scan: nothing is read twice
        self.assertEqual(self.home.scalar("SELECT count(*) FROM hook_events"), count)

    def test_ready_once_it_serves(self):
        """READY=1 (systemd's notify protocol) comes once the ingester serves:
        its socket takes records and what waited in the spool was read back.
        The store is not needed for that: with the store down it is ready all
        the same, and the events reach the store once it is back."""
        count = 4  # big ones: reading them back takes a while
        env = self.hook_env(agent=str(uuid.uuid4()))
        for i in range(count):
            self.hook(json.dumps({"hook_event_name": "PostToolUse", "marker": f"before-{i}",
                                  "tool_response": "z" * (4 << 20)}).encode(), env=env)
        self.assertEqual(len(self.spooled()), count)
        self.home.kill9()
        notify = self.home.notify_socket()
        ingester = self.start_ingester(wait=False, NOTIFY_SOCKET=notify.path)
        self.assertTrue(notify.wait("READY=1", WAIT), "no READY=1:\n" + self.diagnose())
        # Right then, with no wait: the socket takes a record, and the spool
        # was read before.
        self.raw_client(None).close()
        with open(self.ingester_stderr, encoding="utf-8", errors="replace") as f:
            log = f.read()
        self.assertIn(f"read {count} spool/journal file(s)", log)
        self.assertIn("ready: listening", log)
        self.assertEqual(notify.messages.count("READY=1"), 1)
        self.home.start()
        rows = self.wait_rows(count, "json_extract(event_data, '$.marker') LIKE 'before-%'")
        self.assertEqual(len(rows), count)
        wait_for("the spool to be drained", self.drained, 10, diagnose=self.diagnose)
        self.assertAlive(ingester)

    def test_ccm_up_detach_returns_once_the_ingester_serves(self):
        """`ccm up --detach` gives each service a NOTIFY_SOCKET of its own and
        returns only once every one said READY=1: the hook socket takes records
        the moment it returns, with no wait."""
        bin_dir = self.home.private_bin(("ccm", "ccm-store", "ccm-hooks", "ccm-hook"))
        self.home.stop()  # ccm up starts its own store
        self.home.close_client()
        code, out, err = self.home.run_cli("up", "--detach", timeout=30, bin_dir=bin_dir)
        self.addCleanup(self.home.run_cli, "down", timeout=30)
        self.assertEqual(code, 0, err)
        self.assertIn("ccm is up", out)
        self.raw_client(None).close()  # no retry: it already listens
        with open(os.path.join(self.home.path, "log", "ccm.log"), encoding="utf-8",
                  errors="replace") as f:
            log = f.read()
        for name in ("ccm-store", "ccm-hooks"):
            self.assertIn(f"{name} is ready (pid", log)
        self.assertIn("every service is ready", log)
        ok = subprocess.run([os.path.join(bin_dir, "ccm-hook")],
                            input=json.dumps({"hook_event_name": "Stop", "marker": "up"}).encode(),
                            env=self.home.env, capture_output=True, timeout=HOOK_TIMEOUT)
        self.assertEqual(ok.returncode, 0)
        self.wait_rows(1, "json_extract(event_data, '$.marker') = 'up'")
        self.assertEqual(self.home.run_cli("down", timeout=30)[0], 0)

    # ---------------------------------------------------------------- 5

    def test_bad_input_is_kept_and_harmless(self):
        """Invalid JSON, binary garbage, an empty stdin and a 50 MiB event: ccm-hook
        exits 0 each time, in bounded time; each is kept as a row saying what was
        wrong, and the ingester keeps working."""
        ingester = self.start_ingester()
        garbage = bytearray(os.urandom(4096))
        garbage[10] = 0
        garbage[2000:2004] = b"\0\0\0\0"
        big_head = b'{"hook_event_name":"PostToolUse","session_id":"s-big","tool_response":"'
        big = big_head + b"y" * (50 * 1024 * 1024 - len(big_head))
        cases = {
            "invalid-json": b'{"hook_event_name":"PreToolUse","tool_name":"Bash", oops',
            "garbage": bytes(garbage),
            "empty": b"",
            "big": big,
            # Control bytes print as \u0001 (6 bytes each) once in JSON: the
            # row must still fit in what the store takes.
            "control-bytes": b"\x01" * (9 * 1024 * 1024),
        }
        agents = {}
        for name, body in cases.items():
            agents[name] = str(uuid.uuid4())
            _, _, took = self.hook(body, env=self.hook_env(agent=agents[name]))
            if name in ("big", "control-bytes"):
                self.assertLess(took, 5.0, "ccm-hook took too long over a 50 MiB event")
            self.assertAlive(ingester, f"after the {name} event")
        rows = {name: self.wait_rows(1, "agent_id = ?", agent)
                for name, agent in agents.items()}
        for name, found in rows.items():
            self.assertEqual(len(found), 1, f"{name}: {found!r:.500}")
        row = rows["invalid-json"][0]
        self.assertEqual(row["hook_type"], "PreToolUse", "the type was visible; it is kept")
        self.assertIn("not valid JSON", row["event_data"]["ccm_error"])
        self.assertEqual(row["event_data"]["raw"], cases["invalid-json"].decode())

        row = rows["garbage"][0]
        self.assertEqual(row["hook_type"], "Unknown")
        self.assertTrue(row["event_data"]["ccm_error"], row["event_data"])
        self.assertIsInstance(row["event_data"]["raw"], str)
        self.assertNotIn("\0", row["event_data"]["raw"])
        self.assertGreater(len(row["event_data"]["raw"]), 1000, "the raw text was lost")

        row = rows["empty"][0]
        self.assertEqual(row["hook_type"], "Unknown")
        self.assertIn("empty", row["event_data"]["ccm_error"])
        self.assertEqual(row["event_data"]["raw"], "")

        row = rows["big"][0]
        self.assertEqual(row["hook_type"], "PostToolUse")
        self.assertIn("cut at 8 MiB", row["event_data"]["ccm_error"])
        self.assertIn(str(len(big)), row["event_data"]["ccm_error"], "the original size")
        self.assertEqual(row["event_data"]["raw"], big[:BODY_MAX].decode(),
                         "raw is not the first 8 MiB of the event")

        row = rows["control-bytes"][0]
        self.assertEqual(row["hook_type"], "Unknown")
        self.assertIn("cut at 8 MiB", row["event_data"]["ccm_error"])
        raw = row["event_data"]["raw"]
        self.assertTrue(raw and set(raw) == {"\x01"}, "raw is not the first bytes of the event")

        # Still ingesting normal events.
        ok = {"hook_event_name": "Stop", "session_id": "s-after-bad", "marker": "after-bad"}
        self.hook(json.dumps(ok).encode())
        self.wait_rows(1, "json_extract(event_data, '$.marker') = 'after-bad'")
        self.assertAlive(ingester)

    def test_big_events_do_not_sink_the_others(self):
        """Big events that waited together (the store was down) are written in
        batches the store accepts: none of them, and none of the small events
        that waited with them, is lost."""
        ingester = self.start_ingester()
        self.home.kill9()
        head = b'{"hook_event_name":"PostToolUse","session_id":"s-bigs","tool_response":"'
        big = head + b"z" * (12 * 1024 * 1024)
        agent = str(uuid.uuid4())
        env = self.hook_env(agent=agent)
        for _ in range(3):
            self.hook(big, env=env)
        for i in range(5):
            self.hook(json.dumps({"hook_event_name": "Stop", "marker": f"small-{i}"}).encode(),
                      env=env)
        self.assertEqual(self.spooled(), [], "the ingester did not take the events")
        self.home.close_client()
        self.home.start()
        rows = self.wait_rows(8, "agent_id = ?", agent)
        self.assertEqual(len(rows), 8)
        self.assertEqual(sorted(r["event_data"].get("marker") or "big" for r in rows),
                         ["big"] * 3 + [f"small-{i}" for i in range(5)])
        wait_for("the journal to be drained", self.drained, 10, diagnose=self.diagnose)
        self.assertAlive(ingester)

    def test_bad_clients_of_the_socket(self):
        """A client of hooks.sock sending garbage, a bad magic, a huge declared
        length, closing mid-record or saying nothing does not stop the ingester;
        neither does a garbage file in the spool."""
        # A garbage spool file (and a cut record) are skipped, not fatal.
        os.makedirs(self.spool_dir, mode=0o700, exist_ok=True)
        bad_files = [os.path.join(self.spool_dir, "0000000000001-garbage.ev"),
                     os.path.join(self.spool_dir, "0000000000002-cut.ev")]
        with open(bad_files[0], "wb") as f:
            f.write(b"this is not a record at all\n" * 10)
        with open(bad_files[1], "wb") as f:
            f.write(record(b"uid=cut\n", b'{"hook_event_name":"Stop"}')[:20])
        ingester = self.start_ingester()
        silent = self.raw_client(b"", close=False)                      # says nothing
        half = self.raw_client(record(b"uid=half\n", b"{}" * 50)[:30], close=False)
        self.raw_client(b"\x00\xffgarbage\r\n" * 1000)
        self.raw_client(b"CCMX" + struct.pack(">II", 4, 2) + b"uid=x\n{}")
        self.raw_client(b"CCMH" + struct.pack(">II", 8, 0xFFFFFFFF) + b"uid=huge")
        self.raw_client(b"CCMH" + struct.pack(">II", 0xFFFFFFF0, 2))
        self.raw_client(record(b"uid=mid\n", b'{"hook_event_name":"Stop"}' * 100)[:500])
        self.raw_client(b"CC")                                           # a cut prefix
        self.assertAlive(ingester, "after bad clients")

        # A client that sends a whole record and hangs up without reading its
        # ack (what ccm-hook does when the ack is late): the ingester takes the
        # record and lives on; the same with the record sent in one go.
        late = uuid.uuid4().hex
        body = json.dumps({"hook_event_name": "Stop", "marker": "hung-up"}).encode()
        sock = self.raw_client(record(f"uid={late}\n".encode(), body)[:12], close=False)
        time.sleep(0.3)  # the ingester reads the prefix meanwhile
        sock.sendall(record(f"uid={late}\n".encode(), body)[12:])
        sock.close()
        at_once = [uuid.uuid4().hex for _ in range(20)]
        for uid in at_once:
            self.raw_client(record(f"uid={uid}\n".encode(), body))
        uids = [late, *at_once]
        hung_up = (f"SELECT count(*) FROM hook_events WHERE uid IN ({', '.join('?' * len(uids))})")
        wait_for("the records of clients that hung up",
                 lambda: self.home.scalar(hung_up, *uids) == len(uids)
                 or ingester.poll() is not None, 10, diagnose=self.diagnose)
        self.assertAlive(ingester, "after clients hung up before their acks")
        self.assertEqual(self.home.scalar(hung_up, *uids), len(uids),
                         "records whose senders hung up were not all taken")

        # A whole record by hand is taken, and acked with an empty decision.
        uid = uuid.uuid4().hex
        body = json.dumps({"hook_event_name": "Notification", "session_id": "s-raw",
                           "marker": "by-hand"}).encode()
        with self.raw_client(record(f"uid={uid}\ncli=claude\n".encode(), body),
                             close=False) as sock:
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    break
                reply += chunk
        self.assertEqual(reply, b"\0\0\0\0", "the ack of a record is an empty decision")
        row = self.wait_rows(1, "uid = ?", uid)[0]
        self.assertEqual(row["event_data"]["marker"], "by-hand")

        # ccm-hook still hands over at once (no spooling) while the silent and
        # half-sent connections are open.
        event = {"hook_event_name": "Stop", "session_id": "s-after", "marker": "after-clients"}
        _, _, took = self.hook(json.dumps(event).encode())
        self.assertEqual([p for p in self.spooled() if p not in bad_files], [],
                         "ccm-hook had to spool: the ingester is stuck")
        self.wait_rows(1, "json_extract(event_data, '$.marker') = 'after-clients'")
        silent.close()
        half.close()
        self.assertAlive(ingester, "after bad clients")
        for name in ("half", "mid", "cut", "x", "huge"):
            self.assertEqual(self.home.scalar("SELECT count(*) FROM hook_events WHERE uid = ?",
                                              name), 0, f"a bad record {name} was stored")
        wait_for("the bad spool files to be removed", lambda: not self.spooled(), 10,
                 diagnose=self.diagnose)
        self.assertEqual(self.stop_ingester(ingester), 0, "ccm-hooks did not exit 0 on SIGTERM")

    # ---------------------------------------------------------------- 6

    def test_no_loss_under_load_and_crashes(self):
        """Many concurrent ccm-hooks while the ingester and then the store are
        killed -9 and restarted: every event is stored exactly once, and every
        ccm-hook exited 0."""
        total = STRESS_EVENTS
        task = self.add_task("stress")
        env = self.hook_env(task=task, agent=str(uuid.uuid4()))
        self.start_ingester()
        lock = threading.Lock()
        sent = [0]
        failures = []
        slowest = [0.0]

        def worker(index):
            for i in range(index, total, STRESS_THREADS):
                event = {"hook_event_name": "PostToolUse", "session_id": f"s-stress-{index}",
                         "tool_name": "Bash", "tool_input": {"command": f"echo {i}"},
                         "marker": f"m-{i}"}
                started = time.monotonic()
                try:
                    done = subprocess.run([HOOK_BIN], input=json.dumps(event).encode(), env=env,
                                          capture_output=True, timeout=HOOK_TIMEOUT)
                except subprocess.TimeoutExpired:
                    with lock:
                        failures.append(f"event {i}: ccm-hook hung")
                    continue
                took = time.monotonic() - started
                with lock:
                    sent[0] += 1
                    slowest[0] = max(slowest[0], took)
                    if done.returncode != 0 or done.stderr:
                        failures.append(f"event {i}: exit {done.returncode}, {done.stderr!r:.200}")

        def progress(fraction):
            wait_for(f"{fraction:.0%} of the events to be sent",
                     lambda: sent[0] >= total * fraction or not any(t.is_alive() for t in threads),
                     120)

        started = time.monotonic()
        threads = [threading.Thread(target=worker, args=(i,), daemon=True)
                   for i in range(STRESS_THREADS)]
        for thread in threads:
            thread.start()
        try:
            progress(0.3)
            self.kill9(self.ingesters[-1])
            time.sleep(0.3)  # events spool meanwhile
            self.start_ingester()
            progress(0.6)
            self.home.kill9()
            self.home.close_client()
            time.sleep(0.3)
            self.home.start()
        finally:
            for thread in threads:
                thread.join(180)
        self.assertFalse(any(t.is_alive() for t in threads), "a sender thread hung")
        self.assertEqual(failures, [], f"{len(failures)} ccm-hook runs failed")
        self.assertEqual(sent[0], total)

        counts = ("SELECT count(*), count(DISTINCT json_extract(event_data, '$.marker'))"
                  " FROM hook_events WHERE json_extract(event_data, '$.marker') LIKE 'm-%'")
        wait_for(f"all {total} events to be stored",
                 lambda: self.home.query(counts)[0][1] >= total, 60, interval=0.25,
                 diagnose=lambda: f"{self.home.query(counts)}\n{self.diagnose()}")
        wait_for("the spool and the journal to be drained", self.drained, 30, interval=0.25,
                 diagnose=self.diagnose)
        rows, distinct = self.home.query(counts)[0]
        self.assertEqual((rows, distinct), (total, total), "events lost or stored twice")
        self.assertEqual(self.home.scalar(
            "SELECT count(*) FROM hook_events WHERE task_id IS NOT ? OR success IS NOT 1", task), 0)
        sys.stderr.write(f"[test_hooks] {total} events through crashes in "
                         f"{time.monotonic() - started:.1f} s; slowest ccm-hook "
                         f"{slowest[0] * 1000:.0f} ms\n")

    # ---------------------------------------------------------------- 7

    def test_codex_and_gemini(self):
        """Codex's notify (the event as the last argument) and Gemini CLI's hooks
        (stdin, hook_event_name) are stored like Claude Code's."""
        self.start_ingester()
        task = self.add_task("other CLIs")
        codex_agent, gemini_agent = str(uuid.uuid4()), str(uuid.uuid4())
        codex = {"type": "agent-turn-complete", "thread-id": "t1", "turn-id": "turn-7",
                 "cwd": "/home/user/project", "input-messages": ["rename foo to bar"],
                 "last-assistant-message": "Renamed foo to bar."}
        out, _, _ = self.hook(None, "codex", json.dumps(codex),
                              env=self.hook_env(task=task, agent=codex_agent))
        self.assertEqual(out, b"")
        gemini = {"hook_event_name": "BeforeTool", "session_id": "g-session-1",
                  "cwd": "/home/user/project", "tool_name": "write_file",
                  "tool_input": {"file_path": "/home/user/project/out.txt", "content": "hi"}}
        out, _, took = self.hook(json.dumps(gemini).encode(), "gemini",
                                 env=self.hook_env(task=task, agent=gemini_agent))
        self.assertEqual(out, b"", "no policy: no decision printed")
        self.assertLess(took, 2.0)

        row = self.wait_rows(1, "agent_id = ?", codex_agent)[0]
        self.assertEqual(row["hook_type"], "agent-turn-complete")
        self.assertEqual(row["session_id"], "t1")
        self.assertEqual(row["task_id"], task)
        self.assertEqual(row["event_data"], codex)

        row = self.wait_rows(1, "agent_id = ?", gemini_agent)[0]
        self.assertEqual(row["hook_type"], "BeforeTool")
        self.assertEqual(row["session_id"], "g-session-1")
        self.assertEqual(row["task_id"], task)
        self.assertEqual(row["tool_name"], "write_file")
        self.assertEqual(row["file_path"], "/home/user/project/out.txt")
        self.assertIsNone(row["success"])
        self.assertEqual(row["event_data"], gemini)
        self.assertEqual(self.wait_agent(gemini_agent, "running")["state_source"], "hook")


if __name__ == "__main__":
    ccmtest.main()

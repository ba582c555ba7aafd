"""ccmtest: the harness of ccm's integration tests.

Starts the REAL binaries ($CCM_BIN_DIR/ccm-store, $CCM_BIN_DIR/ccm) on a
temporary CCM_HOME, talks to them over ZeroMQ exactly as schema/protocol.md
says, and reads the database read-only to check what was really stored.
Every process it starts is reaped at cleanup, and the home is removed
(set CCM_TEST_KEEP=1 to keep it for a post-mortem).

Usage, in a test file:

    import ccmtest

    class T(ccmtest.StoreTestCase):
        def test_x(self):
            reply = self.store.call("task.add", prompt="hi")   # v and idem added
            self.assertOk(reply)
            rows = self.store.query("SELECT prompt FROM tasks")

    if __name__ == "__main__":
        ccmtest.main()
"""

import json
import os
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.parse
import uuid

import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("CCM_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
BIN_DIR = os.environ.get("CCM_BIN_DIR") or os.path.join(SOURCE_DIR, "build")
PYTHON = os.environ.get("CCM_PYTHON") or "/usr/bin/python3"
STORE_BIN = os.path.join(BIN_DIR, "ccm-store")
CLI_BIN = os.path.join(BIN_DIR, "ccm")

WRITE_VERBS = {"project.add", "task.add", "task.transition", "task.cancel", "hook.add"}

PROTOCOL_MD = os.path.join(SOURCE_DIR, "schema", "protocol.md")


def protocol_object_keys(name):
    """The keys of an object as schema/protocol.md defines it ("TASK is `{...}`"),
    so the tests hold the code and the document to the same list. None if the
    document has no such definition (test_protocol_example reports that)."""
    try:
        with open(PROTOCOL_MD, encoding="utf-8") as f:
            doc = f.read()
    except OSError:
        return None
    match = re.search(r"\b" + name + r" is\s*`(\{[^`]*\})`", doc)
    return set(re.findall(r'"([a-z_]+)"', match.group(1))) if match else None


#  The TASK, PROJECT and EVENT objects of protocol.md (the fallbacks are the
#  issue's first version, in case the document cannot be read).
TASK_KEYS = protocol_object_keys("TASK") or {
    "id", "short_id", "project_id", "project", "system_id", "task_type", "status",
    "status_reason", "prompt", "priority", "attempts", "requires_project",
    "requires_context_metadata", "metadata", "input_data", "requires_supabase",
    "created_at", "updated_at", "started_at", "completed_at"}
PROJECT_KEYS = protocol_object_keys("PROJECT") or {
    "id", "name", "path", "repo_url", "config", "system_id", "created_at"}
EVENT_KEYS = protocol_object_keys("EVENT") or {
    "v", "seq", "topic", "ts", "entity", "entity_id", "task_id", "data"}

UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
TIME_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

START_TIMEOUT = 10.0  # seconds for a store to answer its first ping
CALL_TIMEOUT = 10.0   # seconds for one reply (generous: CI may run under ASan)

_MISSING = object()


class Reply:
    """One reply of the store: status ("ok"/"error"), the parsed body, the raw frames."""

    def __init__(self, frames):
        self.frames = frames
        self.delimiter = False
        if len(frames) == 3 and frames[0] == b"":
            self.delimiter = True
            frames = frames[1:]
        if len(frames) != 2:
            raise AssertionError(f"a reply must have 2 frames [status][body], got {frames!r:.500}")
        self.status = frames[0].decode("ascii", "replace")
        self.raw_body = frames[1]
        try:
            self.body = json.loads(frames[1])
        except ValueError as e:
            raise AssertionError(f"reply body is not JSON ({e}): {frames[1]!r:.500}")
        if not isinstance(self.body, dict):
            raise AssertionError(f"reply body is not a JSON object: {frames[1]!r:.500}")

    @property
    def ok(self):
        return self.status == "ok"

    @property
    def error(self):
        return self.body.get("error") or {}

    @property
    def code(self):
        return self.error.get("code")

    @property
    def field(self):
        return self.error.get("field")

    @property
    def message(self):
        return self.error.get("message", "")

    def __getitem__(self, key):
        return self.body[key]

    def get(self, key, default=None):
        return self.body.get(key, default)

    def __repr__(self):
        return f"Reply({self.status}, {self.raw_body[:600]!r})"


class Client:
    """A DEALER (or REQ) connection to the store. Not thread-safe: one per thread."""

    def __init__(self, ctx, endpoint, kind=zmq.DEALER, timeout=CALL_TIMEOUT):
        self.ctx = ctx
        self.endpoint = endpoint
        self.kind = kind
        self.timeout = timeout
        self.sock = None
        self._open()

    def _open(self):
        self.sock = self.ctx.socket(self.kind)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.endpoint)

    def reopen(self):
        """Lazy Pirate: throw the socket away (and any late reply with it)."""
        self.sock.close(linger=0)
        self._open()

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None

    def raw(self, frames, timeout=None):
        """Sends frames as they are; returns the reply frames, or None on timeout.
        With a REQ socket, the delimiter is added and removed by libzmq."""
        timeout = self.timeout if timeout is None else timeout
        self.sock.send_multipart(frames, copy=all(len(f) < 65536 for f in frames))
        if not self.sock.poll(int(timeout * 1000)):
            self.reopen()
            return None
        return self.sock.recv_multipart()

    @staticmethod
    def body(verb, body):
        """Completes a request body: v=1 and, for a write, a fresh idem.
        Passing v=None or idem=None leaves that key out."""
        body = dict(body)
        if body.get("v", _MISSING) is None:
            del body["v"]
        elif "v" not in body:
            body["v"] = 1
        if verb in WRITE_VERBS:
            if body.get("idem", _MISSING) is None:
                del body["idem"]
            elif "idem" not in body:
                body["idem"] = str(uuid.uuid4())
        return body

    def call(self, verb, _timeout=None, **body):
        """Sends one request; returns its Reply. Raises TimeoutError if the
        store does not answer in time (the socket is reopened first)."""
        frames = self.raw([verb.encode(), json.dumps(self.body(verb, body)).encode()],
                          timeout=_timeout)
        if frames is None:
            raise TimeoutError(f"store did not answer {verb} within "
                               f"{self.timeout if _timeout is None else _timeout} s")
        return Reply(frames)


def recv_event(sub, timeout=5.0):
    """Reads one PUB message from a SUB socket: (topic, seq_frame, event) or None."""
    if not sub.poll(int(timeout * 1000)):
        return None
    frames = sub.recv_multipart()
    if len(frames) != 3:
        raise AssertionError(f"a PUB message must have 3 frames [topic][seq][json], got {frames!r:.500}")
    return frames[0], frames[1], json.loads(frames[2])


def status_from_events(events, task_id):
    """A task's status as its events tell it: task.created's status, then
    each task.status's "to". (task.add may log created->queued as its own
    task.status event, or a task.created with status queued: both are fine.)"""
    status = None
    for ev in events:
        if ev.get("task_id") != task_id or ev.get("entity") != "tasks":
            continue
        if ev["topic"] == "task.created":
            status = ev["data"]["status"]
        elif ev["topic"] == "task.status":
            if ev["data"]["from"] != status:
                raise AssertionError(f"task.status from {ev['data']['from']} but the task was "
                                     f"{status}: {ev}")
            status = ev["data"]["to"]
    return status


def transitions(events):
    """[(from, to)] of the task.status events, leaving out a first created->queued
    (task.add's own enqueue, which a store may or may not log separately)."""
    moves = [(e["data"]["from"], e["data"]["to"]) for e in events if e["topic"] == "task.status"]
    return moves[1:] if moves[:1] == [("created", "queued")] else moves


def _proc_environ(pid):
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def _proc_state(pid):
    """The state letter of /proc/PID/stat ('Z' for a zombie), or None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return stat[stat.rindex(b")") + 2:stat.rindex(b")") + 3].decode()
    except (OSError, ValueError):
        return None


def pid_alive(pid):
    """True if pid exists and has not exited (a zombie has exited)."""
    state = _proc_state(pid)
    return state is not None and state not in ("Z", "X")


def wait_until(predicate, timeout, interval=0.05):
    """Polls predicate until it returns a true value or timeout passes; returns the last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


class NotifySocket:
    """systemd's end of sd_notify: a unix datagram socket a service started
    with NOTIFY_SOCKET=path sends READY=1 (and WATCHDOG=1, ...) to."""

    def __init__(self, path):
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(path)
        self.messages = []  # every datagram received, in order

    def wait(self, line, timeout):
        """Reads datagrams until one holds line (e.g. "READY=1"); True at once
        when it comes, False after timeout."""
        deadline = time.monotonic() + timeout
        while not any(line in m.split("\n") for m in self.messages):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                self.messages.append(self.sock.recv(4096).decode("utf-8", "replace"))
            except socket.timeout:
                return False
        return True

    def close(self):
        self.sock.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass


class Home:
    """A temporary CCM_HOME and the processes started on it."""

    def __init__(self, extra_env=None):
        base = "/tmp" if os.path.isdir("/tmp") else None  # short paths: ipc names are limited
        self.path = tempfile.mkdtemp(prefix="ccm-it-", dir=base)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("CCM_")}
        self.env["CCM_HOME"] = self.path
        self.env.pop("CLAUDECODE", None)
        if extra_env:
            self.env.update(extra_env)
        self.ctx = zmq.Context()
        self.proc = None          # the store started by this harness, if any
        self.children = []        # other processes started by the tests (Popen)
        self.stderr_path = os.path.join(self.path, "store.stderr")
        self._client = None
        self._dbs = []
        self._notify = []

    # ----------------------------------------------------------------- paths

    @property
    def db_path(self):
        return os.path.join(self.path, "ccm.db")

    @property
    def run_dir(self):
        return os.path.join(self.path, "run")

    @property
    def endpoint(self):
        return self.env.get("CCM_STORE_ENDPOINT", f"ipc://{self.path}/run/store.ipc")

    @property
    def pub_endpoint(self):
        return self.env.get("CCM_STORE_PUB_ENDPOINT", f"ipc://{self.path}/run/events.ipc")

    # ------------------------------------------------------------- the store

    def start(self, timeout=START_TIMEOUT):
        """Starts ccm-store and waits until it answers ping. Returns the ping reply."""
        if not os.access(STORE_BIN, os.X_OK):
            raise AssertionError(f"{STORE_BIN} is missing: build first (CCM_BIN_DIR={BIN_DIR})")
        with open(self.stderr_path, "ab") as err:
            err.write(f"--- ccm-store started by the test harness at {time.time():.3f}\n".encode())
            err.flush()
            self.proc = subprocess.Popen([STORE_BIN], env=self.env, stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err, cwd=self.path)
        return self.wait_ready(timeout, pid=self.proc.pid)

    def wait_ready(self, timeout=START_TIMEOUT, pid=None):
        """Waits until a store answers ping (with pid, if given); returns the reply."""
        deadline = time.monotonic() + timeout
        probe = Client(self.ctx, self.endpoint, timeout=0.25)
        try:
            while time.monotonic() < deadline:
                if self.proc is not None and pid == self.proc.pid and self.proc.poll() is not None:
                    raise AssertionError(f"ccm-store exited with {self.proc.returncode} at start:\n"
                                         + self.stderr_tail())
                try:
                    reply = probe.call("ping")
                except TimeoutError:
                    continue
                if reply.ok and (pid is None or reply.get("pid") == pid):
                    return reply
                time.sleep(0.05)
        finally:
            probe.close()
        raise AssertionError(f"ccm-store did not answer ping within {timeout} s:\n" + self.stderr_tail())

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def stop(self, timeout=10.0):
        """SIGTERM, then wait; returns the exit code (SIGKILL after timeout, then fails)."""
        if self.proc is None:
            return None
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                raise AssertionError(f"ccm-store did not exit within {timeout} s of SIGTERM")
        return proc.returncode

    def kill9(self):
        """kill -9 the store and reap it."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def restart(self, timeout=START_TIMEOUT):
        """Stops the store if it runs (SIGTERM), starts it again on the same home."""
        code = self.stop()
        if code not in (None, 0):
            raise AssertionError(f"ccm-store exited with {code} on SIGTERM:\n" + self.stderr_tail())
        self.close_client()
        return self.start(timeout)

    def stderr_text(self):
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def stderr_tail(self, lines=40):
        return "\n".join(self.stderr_text().splitlines()[-lines:])

    # ------------------------------------------------------------ the wire

    def client(self, kind=zmq.DEALER, timeout=CALL_TIMEOUT):
        """A new connection (one per thread; the caller closes it)."""
        return Client(self.ctx, self.endpoint, kind=kind, timeout=timeout)

    @property
    def main_client(self):
        if self._client is None:
            self._client = self.client()
        return self._client

    def close_client(self):
        if self._client is not None:
            self._client.close()
            self._client = None

    def call(self, verb, _timeout=None, **body):
        """One request on the main DEALER: v=1 added, idem added to writes."""
        return self.main_client.call(verb, _timeout=_timeout, **body)

    def ok(self, verb, **body):
        """call() that must succeed; returns the reply body."""
        reply = self.call(verb, **body)
        if not reply.ok:
            raise AssertionError(f"{verb} {body!r:.300} failed: {reply!r}")
        return reply.body

    def raw(self, frames, timeout=None):
        """Sends arbitrary frames on the main DEALER; returns the reply frames or None."""
        return self.main_client.raw(frames, timeout=timeout)

    def sub(self, topic=b"", rcvhwm=None):
        """A SUB socket on the events endpoint, subscribed to topic (a prefix)."""
        sock = self.ctx.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        if rcvhwm is not None:
            sock.setsockopt(zmq.RCVHWM, rcvhwm)
        sock.setsockopt(zmq.SUBSCRIBE, topic if isinstance(topic, bytes) else topic.encode())
        sock.connect(self.pub_endpoint)
        return sock

    def head(self):
        """The store's last committed seq (from ping)."""
        return self.ok("ping")["seq"]

    def replay(self, seq=0, **filters):
        """Every event after seq through events.since, paging until more is false."""
        events = []
        for _ in range(100000):
            page = self.ok("events.since", seq=seq, **filters)
            events.extend(page["events"])
            if not page["more"]:
                return events
            if not page["events"]:
                raise AssertionError(f"events.since: more=true with no events: {page!r:.300}")
            seq = page["events"][-1]["seq"]
        raise AssertionError("events.since never ended")

    # ------------------------------------------------------------ readiness

    def notify_socket(self, name="notify"):
        """A NotifySocket in this home (closed at cleanup): give a service
        NOTIFY_SOCKET=its path to hear its READY=1 as systemd would."""
        sock = NotifySocket(os.path.join(self.path, f"{name}.sock"))
        self._notify.append(sock)
        return sock

    # -------------------------------------------------------------- the CLI

    def private_bin(self, names=("ccm", "ccm-store")):
        """A bin dir in this home holding only the given binaries (hard links,
        or copies). `ccm up` run from it supervises just those services, not
        every service binary of the build dir."""
        path = os.path.join(self.path, "bin")
        os.makedirs(path, exist_ok=True)
        for name in names:
            src, dst = os.path.join(BIN_DIR, name), os.path.join(path, name)
            if not os.path.exists(dst):
                try:
                    os.link(src, dst)
                except OSError:
                    shutil.copy2(src, dst)
        return path

    def run_cli(self, *args, input=None, timeout=30.0, env=None, bin_dir=None):
        """Runs $CCM_BIN_DIR/ccm ARGS with this home; returns (rc, stdout, stderr) as text."""
        cli = os.path.join(bin_dir, "ccm") if bin_dir else CLI_BIN
        if not os.access(cli, os.X_OK):
            raise AssertionError(f"{cli} is missing: build first (CCM_BIN_DIR={BIN_DIR})")
        full_env = dict(self.env)
        if env:
            full_env.update(env)
        if isinstance(input, str):
            input = input.encode()
        try:
            done = subprocess.run([cli, *args], env=full_env, input=input,
                                  stdin=None if input is not None else subprocess.DEVNULL,
                                  capture_output=True, timeout=timeout, cwd=self.path)
        except subprocess.TimeoutExpired as e:
            raise AssertionError(f"ccm {' '.join(args)} did not finish within {timeout} s "
                                 f"(stdout {e.stdout!r:.300}, stderr {e.stderr!r:.300})")
        return (done.returncode, done.stdout.decode("utf-8", "surrogateescape"),
                done.stderr.decode("utf-8", "surrogateescape"))

    def popen_cli(self, *args, bin_dir=None, **kwargs):
        """Starts ccm ARGS in the background (reaped at cleanup); returns the Popen."""
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        kwargs.setdefault("stdout", subprocess.PIPE)
        kwargs.setdefault("stderr", subprocess.PIPE)
        cli = os.path.join(bin_dir, "ccm") if bin_dir else CLI_BIN
        proc = subprocess.Popen([cli, *args], env=self.env, cwd=self.path, **kwargs)
        self.children.append(proc)
        return proc

    # ------------------------------------------------------- the database

    def db(self):
        """$CCM_HOME/ccm.db opened READ-ONLY (closed at cleanup)."""
        uri = "file:" + urllib.parse.quote(self.db_path) + "?mode=ro"
        con = sqlite3.connect(uri, uri=True, timeout=10)
        self._dbs.append(con)
        return con

    def query(self, sql, *args):
        """Runs one read-only query on a fresh connection; returns all rows."""
        uri = "file:" + urllib.parse.quote(self.db_path) + "?mode=ro"
        con = sqlite3.connect(uri, uri=True, timeout=10)
        try:
            return con.execute(sql, args).fetchall()
        finally:
            con.close()

    def scalar(self, sql, *args):
        return self.query(sql, *args)[0][0]

    # -------------------------------------------------------------- cleanup

    def processes(self):
        """Pids of live processes (not zombies) whose environment has this CCM_HOME."""
        tag = f"CCM_HOME={self.path}".encode()
        pids = []
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != os.getpid():
                if tag in _proc_environ(int(name)) and pid_alive(int(name)):
                    pids.append(int(name))
        return pids

    def reap_all(self):
        """Ends every process started on this home: ours by Popen, then any
        descendant left (e.g. a store started by `ccm up`), found by its
        CCM_HOME in /proc/PID/environ. Returns what went wrong: pids that had
        to be killed, a store that did not exit 0 on SIGTERM."""
        leftovers = []
        self.close_client()
        if self.proc is not None:
            try:
                code = self.stop(timeout=10)
                if code != 0:
                    leftovers.append(f"ccm-store exited with {code} on SIGTERM")
            except AssertionError:
                leftovers.append("ccm-store (ignored SIGTERM)")
        for proc in self.children:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream:
                    stream.close()
        self.children = []
        for attempt in range(2):
            pids = self.processes()
            if not pids:
                break
            for pid in pids:
                leftovers.append(pid)
                try:
                    os.kill(pid, signal.SIGTERM if attempt == 0 else signal.SIGKILL)
                except ProcessLookupError:
                    pass
            wait_until(lambda: not self.processes(), 5)
        return leftovers

    SANITIZER = re.compile(r"ERROR: (Address|Leak|Thread|Memory)Sanitizer|runtime error:|"
                           r"AddressSanitizer:DEADLYSIGNAL")

    def sanitizer_reports(self):
        """Sanitizer reports in the logs of processes run on this home."""
        found = []
        for root, _, files in os.walk(self.path):
            for name in files:
                if name.endswith((".stderr", ".log", ".out", ".err")):
                    try:
                        with open(os.path.join(root, name), "rb") as f:
                            text = f.read().decode("utf-8", "replace")
                    except OSError:
                        continue
                    for line in text.splitlines():
                        if self.SANITIZER.search(line):
                            found.append(f"{name}: {line.strip()}")
        return found

    def cleanup(self):
        """Reaps everything, removes the home; returns the problems found."""
        leftovers = self.reap_all()
        leftovers += self.sanitizer_reports()
        if leftovers:
            leftovers.append("store stderr tail:\n" + self.stderr_tail(20))
        for con in self._dbs:
            con.close()
        self._dbs = []
        for sock in self._notify:
            sock.close()
        self._notify = []
        self.ctx.destroy(linger=0)
        if os.environ.get("CCM_TEST_KEEP"):
            sys.stderr.write(f"[ccmtest] kept {self.path}\n")
        else:
            shutil.rmtree(self.path, ignore_errors=True)
        return leftovers


class CcmTestCase(unittest.TestCase):
    """A test with helpers; make_home() gives a Home that is always cleaned up."""

    maxDiff = 4000

    def make_home(self, start=False, extra_env=None):
        home = Home(extra_env=extra_env)
        self.addCleanup(self._cleanup_home, home)
        if start:
            home.start()
        return home

    def _cleanup_home(self, home):
        leftovers = home.cleanup()
        # A process left running, a store that did not exit 0 on SIGTERM, or a
        # sanitizer report is a bug of the binaries (or of a test).
        if leftovers:
            self.fail("the test home did not end clean:\n" + "\n".join(map(str, leftovers)))

    def assertOk(self, reply, msg=None):
        if not reply.ok:
            self.fail(f"expected ok, got {reply!r}" + (f": {msg}" if msg else ""))
        self.assertEqual(reply.body.get("v"), 1, f"reply without v=1: {reply!r}")
        return reply.body

    def assertError(self, reply, code, field=_MISSING, msg=None):
        """The reply is an error with this code (and field, if given), with a message."""
        where = f" ({msg})" if msg else ""
        self.assertEqual(reply.status, "error", f"expected error {code}, got {reply!r}{where}")
        self.assertEqual(reply.body.get("v"), 1, f"error body without v=1: {reply!r}{where}")
        self.assertIsInstance(reply.body.get("error"), dict, f"no error object: {reply!r}{where}")
        self.assertEqual(reply.code, code, f"wrong error code: {reply!r}{where}")
        self.assertIsInstance(reply.message, str)
        self.assertTrue(reply.message.strip(), f"error without a message: {reply!r}{where}")
        if field is not _MISSING:
            self.assertEqual(reply.field, field, f"wrong error field: {reply!r}{where}")
        return reply.error

    def assertTask(self, task):
        """A TASK object as protocol.md describes it."""
        self.assertIsInstance(task, dict)
        self.assertEqual(set(task), TASK_KEYS, f"TASK differs from protocol.md's: {task}")
        self.assertRegex(task["id"], UUID_RE)
        self.assertEqual(task["short_id"], task["id"][:8])
        self.assertRegex(task["created_at"], TIME_RE)
        self.assertRegex(task["updated_at"], TIME_RE)
        return task


class StoreTestCase(CcmTestCase):
    """Each test gets a fresh home with a running ccm-store: self.store."""

    def setUp(self):
        self.store = self.make_home(start=True)

    def add_task(self, prompt="a task", **fields):
        return self.store.ok("task.add", prompt=prompt, **fields)["task"]


class Pipeline:
    """Sends many requests on one DEALER with a window of outstanding ones,
    matching replies by the correlation "id". For volume, not for timing."""

    def __init__(self, client, window=32):
        self.client = client
        self.window = window

    def run(self, requests, timeout=CALL_TIMEOUT):
        """requests: list of (verb, body). Returns the list of Replies, in order."""
        sock = self.client.sock
        replies = [None] * len(requests)
        sent = 0
        pending = 0
        while sent < len(requests) or pending:
            while sent < len(requests) and pending < self.window:
                verb, body = requests[sent]
                body = Client.body(verb, body)
                body["id"] = str(sent)
                sock.send_multipart([verb.encode(), json.dumps(body).encode()])
                sent += 1
                pending += 1
            if not sock.poll(int(timeout * 1000)):
                self.client.reopen()
                raise TimeoutError(f"store stopped answering ({pending} requests outstanding)")
            reply = Reply(sock.recv_multipart())
            index = int(reply.body["id"])
            if replies[index] is not None:
                raise AssertionError(f"two replies for request {index}")
            replies[index] = reply
            pending -= 1
        return replies


def main():
    """Runs the tests of the calling module; exits non-zero on any failure."""
    unittest.main(module="__main__", verbosity=2)

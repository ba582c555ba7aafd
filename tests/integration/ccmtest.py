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
import threading
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


# ------------------------------------------------------------ `ccm up`

def _proc_ppid(pid):
    """The parent pid of pid from /proc/PID/stat, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        return int(stat[stat.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _proc_argv0(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return os.path.basename(f.read().split(b"\0")[0].decode("utf-8", "replace"))
    except OSError:
        return ""


def proc_cmdline(pid):
    """The command line of pid as one string ("" if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        return ""


def iso_to_epoch(text):
    """2026-01-02T03:04:05.678Z (the store's timestamps, UTC) as epoch seconds."""
    import calendar
    day, _, rest = text.partition("T")
    y, mo, d = (int(x) for x in day.split("-"))
    hms = rest.rstrip("Z")
    h, mi, sec = hms.split(":")
    return calendar.timegm((y, mo, d, int(h), int(mi), 0)) + float(sec)


class Supervisor:
    """`ccm up` on a Home, in the foreground as the test's child, as a user
    runs it: every service binary of BIN_DIR (ccm-sync only with sync
    credentials), each restarted by ccm up when it dies. The settings given
    go to $CCM_HOME/config.json, those of executor instance K (up.executors)
    to $CCM_HOME/executor-K.json; ccm up's output goes to $CCM_HOME/up.log.

    It finds each supervised service's pid (services()) and tells whether
    a service answers (probe()): the store a ping, the router a HEARTBEAT
    (from a probe system of capacity 0, registered at start), the hooks
    ingester a record on its socket, the gateway an HTTP request, and an
    executor by being registered and online (its system row)."""

    def __init__(self, home, settings=None, instances=None):
        self.home = home
        self.settings = dict(settings or {})
        self.instances = dict(instances or {})  # K -> settings of executor instance K
        self.executors = int(self.settings.get("up.executors", 1))
        self.proc = None
        self.log_path = os.path.join(home.path, "up.log")
        self.probe_system = None

    # ------------------------------------------------------------- start/stop

    def machine_ids(self):
        """The machine id of each executor instance, {"executor": id, "executor-2": id-2, ...}
        (needs executor.machine_id in the settings)."""
        base = self.settings["executor.machine_id"]
        return {self.instance_name(k): base if k == 1 else f"{base}-{k}"
                for k in range(1, self.executors + 1)}

    @staticmethod
    def instance_name(k):
        return "executor" if k == 1 else f"executor-{k}"

    def start(self, timeout=30.0):
        """Writes config.json, starts `ccm up` and waits until every service
        answers (and, with executors, each executor's system is online)."""
        files = {"config.json": self.settings}
        files.update({f"executor-{k}.json": v for k, v in self.instances.items()})
        for name, settings in files.items():
            with open(os.path.join(self.home.path, name), "w", encoding="utf-8") as f:
                json.dump(settings, f)
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([CLI_BIN, "up"], env=self.home.env, cwd=self.home.path,
                                     stdin=subprocess.DEVNULL, stdout=self.log,
                                     stderr=subprocess.STDOUT)
        self.home.children.append(self.proc)
        self.home.wait_ready(timeout)
        reply = self.home.ok("system.register", hostname=f"probe-{uuid.uuid4().hex[:8]}",
                             machine_id=f"probe-{uuid.uuid4().hex}", capacity=0, tags=["probe"],
                             idem=str(uuid.uuid4()))
        self.probe_system = reply["system"]["id"]
        names = ["store", "router", "hooks", "gateway"]
        names += [self.instance_name(k) for k in range(1, self.executors + 1)]
        # Each service polled on its own thread: when each first answered
        # (epoch seconds) is kept in first_answer.
        self.first_answer = {}
        deadline = time.monotonic() + timeout
        threads = [threading.Thread(target=self._first_answer, args=(name, deadline), daemon=True)
                   for name in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        pending = [name for name in names if name not in self.first_answer]
        if self.proc.poll() is not None:
            raise AssertionError(f"ccm up exited with {self.proc.returncode}:\n" + self.log_tail())
        if pending:
            raise AssertionError(f"ccm up: {', '.join(pending)} not answering within {timeout} s:"
                                 "\n" + self.log_tail())
        return self

    def _first_answer(self, name, deadline):
        probe = self.probe_for(name)
        try:
            while time.monotonic() < deadline and self.proc.poll() is None:
                if probe():
                    self.first_answer[name] = time.time()
                    return
                time.sleep(0.02)
        finally:
            probe.close()

    def started_at(self):
        """[(epoch seconds, service name, pid)] of each start that ccm up logged."""
        found = []
        for line in self.log_text().splitlines():
            match = re.match(r"(\S+Z) ccm info: started \S*/ccm-(\w+)(?: #(\d+))? \(pid (\d+)\)",
                             line)
            if match:
                name = match.group(2)
                if match.group(3):
                    name += "-" + match.group(3)
                found.append((iso_to_epoch(match.group(1)), name, int(match.group(4))))
        return found

    def stop(self, timeout=30.0):
        """`ccm down`; waits for the supervisor to exit. Returns (rc of ccm down,
        exit code of ccm up)."""
        rc, out, err = self.home.run_cli("down", timeout=timeout)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            code = None
        self.log.close()
        return rc, code

    def log_text(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail(self, lines=40):
        return "\n".join(self.log_text().splitlines()[-lines:])

    # -------------------------------------------------------------- services

    def services(self):
        """{name: pid} of the services ccm up runs now: "store", "router",
        "hooks", "gateway", "sync", and "executor", "executor-2", ... for the
        executor instances (instance K >= 2 has CCM_EXECUTOR_MACHINE_ID=...-K)."""
        found = {}
        if self.proc is None:
            return found
        for name in os.listdir("/proc"):
            if not name.isdigit() or _proc_ppid(int(name)) != self.proc.pid:
                continue
            pid = int(name)
            argv0 = _proc_argv0(pid)
            if not argv0.startswith("ccm-") or not pid_alive(pid):
                continue
            service = argv0[4:]
            if service == "executor":
                for var in _proc_environ(pid):
                    if var.startswith(b"CCM_EXECUTOR_MACHINE_ID="):
                        service = "executor-" + var.decode().rsplit("-", 1)[1]
            found[service] = pid
        return found

    def wait_service(self, name, timeout=15.0, not_pid=None):
        """The pid of service name once it runs (and is not not_pid), or None."""
        return wait_until(lambda: (pid := self.services().get(name)) and pid != not_pid and pid,
                          timeout) or None

    # ---------------------------------------------------------------- probes

    def probe_for(self, name):
        """A callable that tells whether service name answers now (a new one
        per thread: each holds its own sockets); close() it after use."""
        if name == "store":
            return _StoreProbe(self.home)
        if name == "router":
            return _RouterProbe(self.home, self.probe_system)
        if name == "hooks":
            return _HooksProbe(self.home)
        if name == "gateway":
            return _GatewayProbe(self.home)
        if name.startswith("executor"):
            return _ExecutorProbe(self.home, self.machine_ids()[name])
        raise ValueError(name)


class _StoreProbe:
    """A ping to the store; answers the store's pid, or None."""

    def __init__(self, home, timeout=0.3):
        self.client = home.client(timeout=timeout)

    def __call__(self):
        try:
            reply = self.client.call("ping")
            return reply.get("pid") if reply.ok else None
        except TimeoutError:
            return None

    def close(self):
        self.client.close()


class _RouterProbe:
    """A HEARTBEAT to the router's dispatch socket as a probe system: true
    if the router answers it."""

    def __init__(self, home, system_id, timeout=0.3):
        self.home, self.system_id, self.timeout = home, system_id, timeout
        self.endpoint = home.env.get("CCM_ROUTER_ENDPOINT", f"ipc://{home.path}/run/router.ipc")
        self.sock = None
        self.seq = 0

    def _open(self):
        self.sock = self.home.ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.IMMEDIATE, 1)
        self.sock.connect(self.endpoint)

    def __call__(self):
        if self.sock is None:
            self._open()
        while self.sock.poll(0):
            self.sock.recv_multipart()  # a late answer to an earlier probe
        self.seq += 1
        body = json.dumps({"v": 1, "system_id": self.system_id, "seq": self.seq,
                           "running": []}).encode()
        try:
            self.sock.send_multipart([b"HEARTBEAT", body], flags=zmq.NOBLOCK)
        except zmq.Again:
            time.sleep(self.timeout)  # no router connected
            return False
        if not self.sock.poll(int(self.timeout * 1000)):
            self.close()  # Lazy Pirate: a fresh socket for the next probe
            return False
        return self.sock.recv_multipart()[0] == b"HEARTBEAT"

    def close(self):
        if self.sock is not None:
            self.sock.close(linger=0)
            self.sock = None


class _HooksProbe:
    """One record handed to ccm-hooks on its socket, as ccm-hook does: true
    once the ingester acks it (a ChaosProbe event lands in hook_events)."""

    def __init__(self, home, timeout=0.3):
        self.path = home.env.get("CCM_HOOKS_SOCKET", os.path.join(home.path, "run", "hooks.sock"))
        self.timeout = timeout
        self.count = 0

    def __call__(self):
        import socket
        import struct
        self.count += 1
        head = (f"uid=probe{uuid.uuid4().hex}\nts={int(time.time() * 1000)}\ncli=claude\n").encode()
        body = json.dumps({"hook_event_name": "ChaosProbe", "probe": self.count}).encode()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
            sock.sendall(b"CCMH" + struct.pack(">II", len(head), len(body)) + head + body)
            got = b""
            while len(got) < 4:
                chunk = sock.recv(4 - len(got))
                if not chunk:
                    return False
                got += chunk
            return True
        except OSError:
            return False
        finally:
            sock.close()

    def close(self):
        pass


class _GatewayProbe:
    """An HTTP request to the gateway (the URL in run/gateway.url): true if
    it answers, whatever the status."""

    def __init__(self, home, timeout=0.5):
        self.url_file = os.path.join(home.path, "run", "gateway.url")
        self.timeout = timeout

    def __call__(self):
        import urllib.error
        import urllib.request
        try:
            with open(self.url_file) as f:
                url = f.read().strip()
            with urllib.request.urlopen(url + "api/auth", timeout=self.timeout) as reply:
                return reply.status > 0
        except urllib.error.HTTPError:
            return True
        except (OSError, ValueError):
            return False

    def close(self):
        pass


class _ExecutorProbe:
    """An executor's system row: its last_seen (epoch seconds) while it is
    online, else None. Registration (at every start) sets last_seen."""

    def __init__(self, home, machine_id):
        self.home, self.machine_id = home, machine_id

    def __call__(self):
        try:
            rows = self.home.query("SELECT status, last_seen FROM systems WHERE machine_id = ?",
                                   self.machine_id)
        except sqlite3.Error:
            return None
        if rows and rows[0][0] == "online" and rows[0][1]:
            return iso_to_epoch(rows[0][1])
        return None

    def close(self):
        pass


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

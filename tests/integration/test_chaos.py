"""Chaos (issue 14): ccm keeps its promises under load, pauses and kills.

One machine under `ccm up` (every service supervised and restarted when it
dies), with 3 executors of capacity 4 (up.executors = 3: three systems with
their own machine ids, hostnames and tmux servers) and a CPU hog on every
core (busy processes at normal priority, as agents are). The load: 60
`shell` tasks of 1 to 5 s submitted with `ccm task add` over the first
minute, and 20,000 Claude Code hook events handed to the real `ccm-hook`
(each with a unique chaos_marker) as fast as it takes them. Meanwhile, at
random moments: kill -9 of the store, the router, an executor, the hooks
ingester and the gateway; SIGSTOP of an executor for 10 s and of the store
for 5 s. The schedule comes from a seed, printed at the start; set
CCM_CHAOS_SEED to replay one. The whole test is bounded to 5 minutes.

Each task runs the test's agent.py (written to $CCM_HOME/chaos/), which
appends to one shared file a `start TASK ATTEMPT T0 ...` line when it starts
and an `end TASK ATTEMPT T0 T1 ...` line when it ends (a `stop` line if it is
signalled). ATTEMPT is $CCM_ATTEMPT, which the executor gives each agent;
without it (an executor older than fencing by attempt) the agent asks the
store (`ccm task show`) for the task's attempts, which a stale run reads as
the newer attempt's number. Each run also holds a flock on a file of its own
for as long as it lives, so a run killed with -9 (ccm-agent's lease) is seen
to end by the test's monitor.

Afterwards, as a user would check:
  - every task ended complete (or failed, with its 3 attempts);
  - every attempt line is unique;
  - no two runs of one task overlapped in time;
  - every hook event is in hook_events exactly once;
  - every id the CLI printed exists;
  - PRAGMA integrity_check is ok;
  - no process is left behind once `ccm down` returns.

Waits poll for the event they need (a task's state, a row count, a pid);
only the fault schedule sleeps, to its random moments. bench/chaos.py
reruns a seed's schedule next to a fault-free run of the same work.

Knobs: CCM_CHAOS_SEED, CCM_CHAOS_TASKS (60), CCM_CHAOS_HOOKS (20000),
CCM_TEST_KEEP=1 (keep the home for a post-mortem).
"""

import collections
import fcntl
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ccmtest  # noqa: E402
import test_executor as tx  # noqa: E402

TASKS = int(os.environ.get("CCM_CHAOS_TASKS") or 60)
HOOK_EVENTS = int(os.environ.get("CCM_CHAOS_HOOKS") or 20000)
EXECUTORS = 3
CAPACITY = 4
MAX_ATTEMPTS = 3
BOUND = 300.0            # the whole test, setup to teardown, in seconds
TEARDOWN = 35.0          # kept for `ccm down`, the process check and the checks
SUBMIT_SPAN = 60.0       # tasks are submitted over the first minute of load
FAULT_SPAN = (8.0, 75.0)  # faults strike within these seconds of load
DURATION = (1.0, 5.0)    # each task runs this long
HOOK_WINDOW = 8          # ccm-hook processes in flight at once
PROJECT = "chaos"
HOOK_BIN = os.path.join(ccmtest.BIN_DIR, "ccm-hook")
FIXTURES = os.path.join(ccmtest.SOURCE_DIR, "tests", "fixtures", "claude-code-hooks")

#  The task's program. argv: chaos dir, seconds to run, the ccm CLI.
AGENT = r'''
import fcntl, json, os, signal, subprocess, sys, time, uuid
t0 = time.time()
here, seconds, cli = sys.argv[1], float(sys.argv[2]), sys.argv[3]
task = os.environ.get("CCM_TASK_ID", "-")
system = os.environ.get("CCM_SYSTEM_ID", "-")
token = uuid.uuid4().hex
attempt = "?"

def line(text):
    fd = os.open(os.path.join(here, "runs.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    os.write(fd, (text + "\n").encode())
    os.close(fd)

def stopped(sig, frame):
    line(f"stop {task} {attempt} {t0:.6f} {time.time():.6f} {token} {system} {sig}")
    os._exit(128 + sig)

for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
    signal.signal(sig, stopped)
# Held while this run lives: the test sees a run killed with -9 end.
tmp = os.path.join(here, "locks", "." + token)
lock = os.open(tmp, os.O_WRONLY | os.O_CREAT, 0o600)
fcntl.flock(lock, fcntl.LOCK_EX)
os.write(lock, f"{task} {t0:.6f} {system} {os.getpid()}\n".encode())
os.rename(tmp, os.path.join(here, "locks", token))
source = "env"
attempt = os.environ.get("CCM_ATTEMPT") or "?"
if attempt == "?":
    source = "store"  # no CCM_ATTEMPT: the store's count of attempts
    try:
        out = subprocess.run([cli, "task", "show", task, "--json"], capture_output=True,
                             timeout=60).stdout
        attempt = str(json.loads(out)["task"]["attempts"])
    except Exception as e:
        source = "unknown:" + type(e).__name__
line(f"start {task} {attempt} {t0:.6f} {token} {system} {source}")
time.sleep(max(0.0, t0 + seconds - time.time()))
line(f"end {task} {attempt} {t0:.6f} {time.time():.6f} {token} {system}")
'''


def instance_name(k):
    return ccmtest.Supervisor.instance_name(k)


def make_plan(seed, faults=True, tasks=TASKS, hooks=HOOK_EVENTS):
    """The schedule of a seed: when each task is submitted and how long it
    runs, and which fault strikes when (none with faults=False: the same
    work, fault-free)."""
    rng = random.Random(seed)
    work = sorted((round(rng.uniform(0, SUBMIT_SPAN), 3), round(rng.uniform(*DURATION), 2))
                  for _ in range(tasks))
    chosen = []
    for kind, target, length in (("kill", "store", 0), ("kill", "router", 0),
                                 ("kill", "executor", 0), ("kill", "hooks", 0),
                                 ("kill", "gateway", 0), ("stop", "executor", 10),
                                 ("stop", "store", 5)):
        if target == "executor":
            target = instance_name(rng.randint(1, EXECUTORS))
        chosen.append((round(rng.uniform(*FAULT_SPAN), 3), kind, target, length))
    return {"seed": seed, "tasks": work, "faults": sorted(chosen) if faults else [],
            "hooks": hooks}


def hook_payloads(seed, count):
    """count Claude Code events (the fixtures' lines in turn, each with a
    unique chaos_marker), as the bytes ccm-hook reads on stdin."""
    events = []
    for name in sorted(os.listdir(FIXTURES)):
        with open(os.path.join(FIXTURES, name), "rb") as f:
            for line in f.read().split(b"\n"):
                if line.strip():
                    event = json.loads(line)
                    # A PermissionRequest may be parked for a human: not load.
                    if event.get("hook_event_name") != "PermissionRequest":
                        events.append(event)
    for i in range(count):
        event = dict(events[i % len(events)], chaos_marker=f"{seed}-{i}")
        yield f"{seed}-{i}", json.dumps(event, separators=(",", ":")).encode()


class ChaosRun:
    """One run of a plan on a fresh home: sets up, loads, strikes, drains,
    stops, and returns what happened (run() -> dict)."""

    def __init__(self, home, plan, say=None, bound=BOUND):
        self.home, self.plan = home, plan
        self.say = say or (lambda text: print(text, file=sys.stderr, flush=True))
        self.started = time.time()
        self.deadline = self.started + bound - TEARDOWN
        self.dir = os.path.join(home.path, "chaos")
        self.locks = os.path.join(self.dir, "locks")
        self.runs_path = os.path.join(self.dir, "runs.log")
        self.quit = threading.Event()
        self.lock = threading.Lock()
        self.t0 = None
        self.sup = None
        self.hogs = []
        self.submitted = []  # {at, sent, done, rc, id, err, tries}
        self.struck = []     # {at, kind, target, length, pid, t, cont}
        self.stopped = set()  # pids under SIGSTOP right now
        self.alive = {}      # run token -> last time its lock was held
        self.dead = {}       # run token -> first time its lock was free
        self.probes = collections.defaultdict(list)  # service -> [(t, value)] on change
        self.pids = collections.defaultdict(list)    # service -> [(t, pid)] on change
        self.struck_all = False
        self.hooks_sent = 0
        self.hooks_done = None
        self.hook_failures = []
        self.problems = []   # the harness's own trouble (not the product's)

    # ------------------------------------------------------------- setup

    def _setup(self):
        os.makedirs(self.locks)
        self.agent = os.path.join(self.dir, "agent.py")
        with open(self.agent, "w") as f:
            f.write(AGENT)
        repo = os.path.join(self.home.path, "repo")
        os.makedirs(repo)
        tx.git(repo, "init", "-q", "-b", "main")
        with open(os.path.join(repo, "README.md"), "w") as f:
            f.write("the chaos test's project\n")
        tx.git(repo, "add", "-A")
        tx.git(repo, "commit", "-q", "-m", "initial commit")
        # Each executor is a machine of its own: instances 2 and 3 get their
        # own clones (executor-K.json), as other machines would have.
        instances = {}
        for k in range(2, EXECUTORS + 1):
            clone = f"{repo}-{k}"
            tx.git(self.home.path, "clone", "-q", repo, clone)
            instances[k] = {"executor.projects": f"{PROJECT}={clone}"}
        # A hog on every core, at normal priority, outside this home.
        hog_env = {k: v for k, v in os.environ.items() if not k.startswith("CCM_")}
        for _ in range(os.cpu_count() or 1):
            self.hogs.append(subprocess.Popen([ccmtest.PYTHON, "-c", "while True: pass"],
                                              env=hog_env, stdin=subprocess.DEVNULL))
        machine = f"chaos-{uuid.uuid4().hex[:12]}"
        self.sup = ccmtest.Supervisor(self.home, {
            "up.executors": EXECUTORS, "executor.capacity": CAPACITY,
            "executor.machine_id": machine, "executor.hostname": machine,
            "store.max_attempts": MAX_ATTEMPTS, "gateway.port": 0}, instances=instances)
        self.sup.start(timeout=60)
        rc, out, err = self.home.run_cli("project", "add", PROJECT, repo)
        if rc != 0:
            raise AssertionError(f"ccm project add: {err}")
        machines = list(self.sup.machine_ids().values())
        marks = ",".join("?" * len(machines))
        held = ccmtest.wait_until(lambda: self.home.scalar(
            "SELECT count(*) FROM contexts c JOIN systems s ON s.id = c.system_id"
            f" WHERE c.project_name = ? AND s.machine_id IN ({marks})", PROJECT,
            *machines) == len(machines), 30)
        if not held:
            raise AssertionError("the executors did not all take project chaos within 30 s:\n"
                                 + self.sup.log_tail())
        self.systems = {name: self.home.scalar("SELECT id FROM systems WHERE machine_id = ?", m)
                        for name, m in self.sup.machine_ids().items()}

    # ---------------------------------------------------------- the load

    def _at(self, seconds):
        """Sleeps until `seconds` into the load (the schedule); False if told to quit."""
        return not self.quit.wait(max(0.0, self.t0 + seconds - time.time()))

    def _submit(self):
        for at, seconds in self.plan["tasks"]:
            if not self._at(at):
                return
            record = {"at": at, "sent": time.time(), "tries": 0, "id": None, "errors": []}
            prompt = f"{ccmtest.PYTHON} {self.agent} {self.dir} {seconds} {ccmtest.CLI_BIN}"
            # A user whose `ccm task add` failed tries again.
            while record["id"] is None and record["tries"] < 5 and not self.quit.is_set():
                record["tries"] += 1
                try:
                    rc, out, err = self.home.run_cli("task", "add", "--project", PROJECT,
                                                     "--agent", "shell", "--", prompt,
                                                     timeout=60)
                except AssertionError as e:
                    rc, out, err = -1, "", str(e)
                if rc == 0 and ccmtest.UUID_RE.match(out.strip()):
                    record["id"] = out.strip()
                else:
                    record["errors"].append(f"rc {rc}: {err.strip()[:300]}")
                    self.quit.wait(0.5)
            record["done"] = time.time()
            with self.lock:
                self.submitted.append(record)

    def _hooks(self):
        env = self.home.env
        pending = collections.deque()
        try:
            for marker, body in hook_payloads(self.plan["seed"], self.plan["hooks"]):
                if self.quit.is_set():
                    break
                while len(pending) >= HOOK_WINDOW:
                    self._reap_hook(pending.popleft())
                r, w = os.pipe()
                os.write(w, body)  # < 64 kB: the pipe holds it all
                os.close(w)
                try:
                    pid = os.posix_spawn(HOOK_BIN, [HOOK_BIN, "claude"], env, file_actions=[
                        (os.POSIX_SPAWN_DUP2, r, 0),
                        (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0)])
                finally:
                    os.close(r)
                pending.append((pid, marker))
                self.hooks_sent += 1
        finally:
            while pending:
                self._reap_hook(pending.popleft())
            self.hooks_done = time.time()

    def _reap_hook(self, item):
        pid, marker = item
        _, status = os.waitpid(pid, 0)
        if status != 0:
            self.hook_failures.append((marker, status))

    # ---------------------------------------------------------- the faults

    def _strike(self):
        try:
            self._strike_all()
        finally:
            self.struck_all = True

    def _strike_all(self):
        for at, kind, target, length in self.plan["faults"]:
            if not self._at(at):
                return
            pid = self.sup.wait_service(target, timeout=15)
            record = {"at": at, "kind": kind, "target": target, "length": length, "pid": pid,
                      "t": time.time(), "cont": None}
            if not pid:
                self.problems.append(f"no {target} to {kind} at {at:.1f} s")
                continue
            if kind == "kill":
                os.kill(pid, signal.SIGKILL)
                self.say(f"  {record['t'] - self.t0:6.1f} s  kill -9 {target} (pid {pid})")
            else:
                os.kill(pid, signal.SIGSTOP)
                with self.lock:
                    self.stopped.add(pid)
                self.say(f"  {record['t'] - self.t0:6.1f} s  SIGSTOP {target} (pid {pid}) "
                         f"for {length} s")
                threading.Timer(length, self._cont, (pid, record)).start()
            with self.lock:
                self.struck.append(record)

    def _cont(self, pid, record):
        with self.lock:
            if pid not in self.stopped:
                return
            self.stopped.discard(pid)
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
        record["cont"] = time.time()
        self.say(f"  {record['cont'] - self.t0:6.1f} s  SIGCONT {record['target']} (pid {pid})")

    # ------------------------------------------------------- what it sees

    def _monitor(self):
        while not self.quit.is_set():
            now = time.time()
            for token in os.listdir(self.locks):
                if token.startswith(".") or token in self.dead:
                    continue
                try:
                    fd = os.open(os.path.join(self.locks, token), os.O_RDONLY)
                except OSError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    self.dead[token] = now
                except OSError:
                    self.alive[token] = now
                finally:
                    os.close(fd)
            services = self.sup.services()
            for name in set(services) | set(self.pids):
                history = self.pids[name]
                pid = services.get(name)
                if not history or history[-1][1] != pid:
                    history.append((now, pid))
            self.quit.wait(0.1)

    def _probe(self, name):
        probe = self.sup.probe_for(name)
        try:
            while not self.quit.is_set():
                value = probe()
                history = self.probes[name]
                if not history or history[-1][1] != value:
                    history.append((time.time(), value))
                self.quit.wait(0.1)
        finally:
            probe.close()

    # ------------------------------------------------------------- drain

    def _ended(self):
        """What is still unfinished: tasks not ended for good, hook events
        not stored; None once all is done."""
        left = []
        if not self.struck_all or self.stopped:
            left.append("faults to strike")
        if len(self.submitted) < len(self.plan["tasks"]):
            left.append(f"{len(self.plan['tasks']) - len(self.submitted)} tasks to submit")
        try:
            rows = self.home.query("SELECT status, attempts FROM tasks")
            hooks = self.home.scalar("SELECT count(DISTINCT json_extract(event_data,"
                                     " '$.chaos_marker')) FROM hook_events WHERE"
                                     " json_extract(event_data, '$.chaos_marker') IS NOT NULL")
        except Exception as e:  # a database being recovered after a kill
            return [f"database: {e}"]
        busy = [r for r in rows if not (r[0] == "complete" or r[0] == "cancelled"
                                        or (r[0] == "failed" and r[1] >= MAX_ATTEMPTS))]
        if busy:
            left.append(f"{len(busy)} tasks not ended")
        silent = [name for name, history in self.probes.items()
                  if not history or not history[-1][1]]
        if silent:
            left.append(f"not answering: {', '.join(sorted(silent))}")
        if self.hooks_done is None or hooks < self.hooks_sent:
            left.append(f"{self.hooks_sent - hooks} of {self.plan['hooks']} hook events")
        return left or None

    # --------------------------------------------------------------- run

    def run(self):
        """Runs the plan; returns the record of what happened."""
        threads = []
        result = {"plan": self.plan, "problems": self.problems}
        try:
            self._setup()
            self.t0 = time.time()
            result["setup_s"] = self.t0 - self.started
            for target in (self._monitor, self._submit, self._hooks, self._strike):
                threads.append(threading.Thread(target=target, daemon=True))
            for name in ["store", "router", "hooks", "gateway"] + list(self.systems):
                threads.append(threading.Thread(target=self._probe, args=(name,), daemon=True))
            for thread in threads:
                thread.start()
            left = ccmtest.wait_until(lambda: self._ended() is None or time.time() > self.deadline,
                                      BOUND, interval=0.5) and self._ended()
            result["drained"] = time.time()
            result["unfinished"] = left or []
            if left:
                self.say(f"  still unfinished at the deadline: {', '.join(left)}")
        finally:
            self.quit.set()
            for thread in threads:
                thread.join(30)
            self._cont_all()
            self._stop(result)
            for hog in self.hogs:
                hog.kill()
                hog.wait()
        self._collect(result)
        try:  # for a post-mortem (CCM_TEST_KEEP=1 keeps the home)
            with open(os.path.join(self.dir, "result.json"), "w") as f:
                json.dump(result, f, default=str)
        except (OSError, TypeError, ValueError) as e:
            self.say(f"  cannot write result.json: {e}")
        return result

    def _cont_all(self):
        with self.lock:
            pids, self.stopped = set(self.stopped), set()
        for pid in pids:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass

    def _stop(self, result):
        """ccm down; then what is left running on this home (should be nothing),
        which is then ended so that the home ends clean."""
        result["down"] = None
        if self.sup and self.sup.proc:
            result["down"] = self.sup.stop(timeout=30)
        ccmtest.wait_until(lambda: not self.home.processes(), 10)
        result["left_behind"] = [(pid, ccmtest.proc_cmdline(pid)) for pid in self.home.processes()]
        run = os.path.join(self.home.path, "run")
        for name in os.listdir(run) if os.path.isdir(run) else []:
            if name.startswith("tmux.sock"):
                subprocess.run(["tmux", "-S", os.path.join(run, name), "kill-server"],
                               capture_output=True, timeout=10)
        for pid in self.home.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        ccmtest.wait_until(lambda: not self.home.processes(), 10)

    def _collect(self, result):
        result.update(t0=self.t0, submitted=self.submitted, struck=self.struck,
                      probes=dict(self.probes), pids=dict(self.pids), hooks_sent=self.hooks_sent,
                      hooks_done=self.hooks_done, hook_failures=self.hook_failures,
                      systems=getattr(self, "systems", {}),
                      first_answer=getattr(self.sup, "first_answer", {}),
                      started_at=self.sup.started_at() if self.sup else [],
                      up_log=self.sup.log_text() if self.sup else "")
        spool = os.path.join(self.home.path, "spool")
        result["spooled"] = len([n for n in os.listdir(spool) if n.endswith(".ev")]
                                if os.path.isdir(spool) else [])
        result["runs"] = self._runs()
        if not os.path.exists(self.home.db_path):
            return
        result["tasks"] = [dict(zip(("id", "status", "attempts", "status_reason", "locked_by",
                                     "created_at", "completed_at", "updated_at"), row))
                           for row in self.home.query(
                               "SELECT id, status, attempts, status_reason, locked_by,"
                               " created_at, completed_at, updated_at FROM tasks")]
        result["task_events"] = self.home.query(
            "SELECT task_id, event_type, json_extract(event_data, '$.reason'), created_at"
            " FROM task_events ORDER BY rowid")
        result["markers"] = dict(self.home.query(
            "SELECT json_extract(event_data, '$.chaos_marker') AS m, count(*) FROM hook_events"
            " WHERE m IS NOT NULL GROUP BY m"))
        result["integrity"] = self.home.scalar("PRAGMA integrity_check")

    def _runs(self):
        """Every run of an agent: {token: {task, attempt, system, start, end,
        how}}; how is end (ran to its end), stop SIG (signalled), killed (its
        lock fell free with no last line) or alive (still running at the end)."""
        runs = {}
        for token in os.listdir(self.locks):
            if token.startswith("."):
                continue
            try:
                with open(os.path.join(self.locks, token)) as f:
                    task, t0, system, pid = f.read().split()
            except (OSError, ValueError):
                continue
            end = self.dead.get(token)
            runs[token] = {"task": task, "attempt": "?", "system": system, "start": float(t0),
                           "end": self.alive.get(token, float(t0)) if end else None,
                           "how": "killed" if end else "alive", "pid": int(pid), "lines": []}
        try:
            with open(self.runs_path) as f:
                lines = f.read().splitlines()
        except OSError:
            lines = []
        for line in lines:
            # start TASK ATTEMPT T0 TOKEN SYSTEM SOURCE
            # end   TASK ATTEMPT T0 T1 TOKEN SYSTEM
            # stop  TASK ATTEMPT T0 T1 TOKEN SYSTEM SIGNAL
            words = line.split()
            kind, task, attempt = words[0], words[1], words[2]
            token, system = (words[4], words[5]) if kind == "start" else (words[5], words[6])
            run = runs.setdefault(token, {"task": task, "system": system, "start": None,
                                          "end": None, "how": "alive", "pid": None, "lines": []})
            run["attempt"] = attempt
            run["lines"].append(line)
            run["start"] = float(words[3])
            if kind in ("end", "stop"):
                run["end"] = float(words[4])
                run["how"] = "end" if kind == "end" else f"stop {words[7]}"
        return runs


# ------------------------------------------------------------------ checks

def attempt_lines(result, kind):
    """(task, attempt) of each `kind` line (start or end), in file order."""
    out = []
    for run in result["runs"].values():
        for line in run["lines"]:
            words = line.split()
            if words[0] == kind:
                out.append((words[1], words[2]))
    return out


def overlaps(result):
    """Pairs of runs of one task that were alive at the same time."""
    by_task = collections.defaultdict(list)
    for token, run in result["runs"].items():
        if run["start"] is not None:
            by_task[run["task"]].append((token, run))
    found = []
    for task, runs in by_task.items():
        runs.sort(key=lambda item: item[1]["start"])
        for i, (ta, a) in enumerate(runs):
            for tb, b in runs[i + 1:]:
                a_end = a["end"] if a["end"] is not None else float("inf")
                if b["start"] < a_end:
                    found.append((task, a, b, min(a_end, b["end"] or float("inf")) - b["start"]))
    return found


def describe_run(run, t0):
    end = f"{run['end'] - t0:7.2f}" if run["end"] is not None else "    ..."
    return (f"attempt {run['attempt']} on {run['system']} {run['start'] - t0:7.2f}-{end} s"
            f" ({run['how']})")


class TestChaos(ccmtest.CcmTestCase):

    def test_chaos(self):
        seed = int(os.environ.get("CCM_CHAOS_SEED") or random.SystemRandom().randrange(1, 1 << 31))
        print(f"\nchaos seed {seed} (replay: CCM_CHAOS_SEED={seed})", file=sys.stderr, flush=True)
        plan = make_plan(seed)
        for at, kind, target, length in plan["faults"]:
            print(f"  plan {at:6.1f} s  {kind} {target}" + (f" for {length} s" if length else ""),
                  file=sys.stderr)
        home = self.make_home(extra_env=tx.GIT_ENV)
        result = ChaosRun(home, plan).run()
        t0 = result["t0"]
        self.report(result)
        self.assertEqual(result["problems"], [], "the harness could not do its part")

        with self.subTest("every task ended complete (or failed with its 3 attempts)"):
            bad = [t for t in result["tasks"] if not (t["status"] == "complete" or (
                t["status"] == "failed" and t["attempts"] == MAX_ATTEMPTS))]
            self.assertEqual(bad, [], f"{len(bad)} of {len(result['tasks'])} tasks did not end "
                             f"well (seed {seed}); unfinished at the deadline: "
                             f"{result['unfinished']}")

        with self.subTest("every attempt line is unique"):
            for kind in ("start", "end"):
                # "?": the agent could not learn its attempt (reported below).
                counts = collections.Counter(line for line in attempt_lines(result, kind)
                                             if line[1] != "?")
                twice = {f"{task[:8]} attempt {attempt}": n
                         for (task, attempt), n in counts.items() if n > 1}
                self.assertEqual(twice, {}, f"{kind} lines of one task and attempt written more "
                                 f"than once (seed {seed})")

        with self.subTest("no two attempts of one task overlapped in time"):
            found = overlaps(result)
            name = self.system_names(result)
            text = "\n".join(f"  task {task[:8]}: {describe_run(name(a), t0)} and "
                             f"{describe_run(name(b), t0)}, together {both:.2f} s"
                             for task, a, b, both in found)
            self.assertEqual(len(found), 0, f"{len(found)} overlapping runs (seed {seed}):\n"
                             + text)

        with self.subTest("every hook event is in hook_events exactly once"):
            markers = result["markers"]
            missing = [f"{seed}-{i}" for i in range(plan["hooks"]) if f"{seed}-{i}" not in markers]
            twice = {m: n for m, n in markers.items() if n != 1}
            sent = result["hooks_sent"]
            missing = missing[:len(missing) - (plan["hooks"] - sent)]  # those never sent
            self.assertEqual((len(missing), len(twice)), (0, 0),
                             f"of {sent} events handed to ccm-hook: {len(missing)} not in "
                             f"hook_events (e.g. {missing[:5]}; {result['spooled']} left in the "
                             f"spool), {len(twice)} stored more than once (e.g. "
                             f"{list(twice.items())[:5]}); ccm-hook failures "
                             f"{result['hook_failures'][:5]}")

        with self.subTest(f"all {plan['hooks']} hook events were handed to ccm-hook in time"):
            # The load itself: on a machine too busy to spawn ccm-hook that
            # often, this fails, and says so, apart from the check above.
            rate = sent / max(1e-3, (result["hooks_done"] or result["drained"]) - t0)
            self.assertEqual(sent, plan["hooks"], f"only {sent} events were handed to ccm-hook "
                             f"within the bound ({rate:.0f}/s): this machine is too busy for "
                             "the test's load")

        with self.subTest("every id the CLI printed exists"):
            printed = [s["id"] for s in result["submitted"] if s["id"]]
            stored = {t["id"] for t in result["tasks"]}
            self.assertEqual([i for i in printed if i not in stored], [])
            self.assertEqual(len(printed), TASKS, "every `ccm task add` printed an id: "
                             + str([s["errors"] for s in result["submitted"] if not s["id"]]))

        with self.subTest("PRAGMA integrity_check is ok"):
            self.assertEqual(result["integrity"], "ok")

        with self.subTest("no process is left behind"):
            self.assertEqual(result["down"], (0, 0), "ccm down, and ccm up's exit code")
            self.assertEqual(result["left_behind"], [], "running on the home after ccm down")

    @staticmethod
    def system_names(result):
        """run -> the run with its system named as ccm up's instance (executor-2)."""
        names = {v: k for k, v in result["systems"].items()}
        return lambda run: dict(run, system=names.get(run["system"], run["system"][:8]))

    def report(self, result):
        """What happened, for the log: the faults, the runs, the tasks."""
        t0 = result["t0"]
        out = [f"chaos seed {result['plan']['seed']}: setup {result['setup_s']:.1f} s, drained"
               f" after {result['drained'] - t0:.1f} s"]
        for s in result["struck"]:
            cont = f", SIGCONT at {s['cont'] - t0:.1f} s" if s["cont"] else ""
            out.append(f"  fault {s['t'] - t0:6.1f} s  {s['kind']} {s['target']} "
                       f"(pid {s['pid']}){cont}")
        tasks = result.get("tasks", [])
        statuses = collections.Counter(t["status"] for t in tasks)
        out.append(f"  tasks: {dict(statuses)}; runs: {len(result['runs'])}; hook events sent "
                   f"{result['hooks_sent']}, stored {len(result.get('markers', {}))}, "
                   f"left in the spool {result.get('spooled')}")
        reasons = collections.Counter(re.sub(r"\d+ ms", "N ms", t["status_reason"] or "")
                                      for t in tasks if t["status"] == "failed")
        for reason, n in reasons.most_common():
            out.append(f"  failed x{n}: {reason}")
        unknown = sum(1 for r in result["runs"].values() if r["attempt"] == "?")
        if unknown:
            out.append(f"  {unknown} runs could not learn their attempt (no CCM_ATTEMPT, and the"
                       " store did not answer `ccm task show` or the run was stopped first)")
        name = self.system_names(result)
        by_task = collections.defaultdict(list)
        for run in result["runs"].values():
            by_task[run["task"]].append(run)
        for task in result.get("tasks", []):
            runs = sorted(by_task.get(task["id"], []), key=lambda r: r["start"] or 0)
            if len(runs) != 1 or task["status"] != "complete":
                out.append(f"  task {task['id'][:8]} {task['status']} attempts "
                           f"{task['attempts']} ({task['status_reason']})")
                for run in runs:
                    out.append("      " + describe_run(name(run), t0))
        print("\n".join(out), file=sys.stderr, flush=True)


if __name__ == "__main__":
    ccmtest.main()

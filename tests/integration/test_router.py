"""ccm-router end to end (issue 5): a real ccm-store, a real ccm-router and
several real ccm-executor processes on this machine, each with its own
projects, tags, capacity, tmux server and machine id, so that they serve
as separate systems; shell-profile tasks in real git worktrees.

Checked as a user would: which system each task ran on (the task's lock and
the file the task wrote), the reason a task that cannot run shows in `ccm
task show`, and that the tasks of an executor killed with -9 (its tmux server
too, as when a machine dies) go back to the queue and complete elsewhere,
each run counted."""

import os
import signal
import subprocess
import time
import unittest
import uuid

import ccmtest
import test_executor as tx

ROUTER_BIN = os.path.join(ccmtest.BIN_DIR, "ccm-router")
# The router heartbeat of these tests: a lease of 2 beats (1 s) keeps an agent
# running through a busy machine's hiccups; an executor is given up after 1.5 s.
BEAT_MS = 500


class RouterTestCase(tx.ExecutorTestCase):

    MAX_ATTEMPTS = None  # the store's default, 3: the router's retries are tested here

    def setUp(self):
        super().setUp()
        self.router = None
        self.systems = {}  # name -> (proc, system id, tmux socket)
        self.addCleanup(self._stop_router_side)
        self.repos = {}
        for project in ("web", "api", "nowhere"):
            self.repos[project] = self.make_repo(project)
            self.add_project(project, self.repos[project])

    def _stop_router_side(self):
        for proc, _, sock in self.systems.values():
            self.stop_executor(proc)
            subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True, timeout=10)
        if self.router and self.router.poll() is None:
            self.router.terminate()
            self.router.wait(10)

    def start_router(self, beat_ms=BEAT_MS, **extra):
        if "CCM_ROUTER_RETRY_BASE_MS" in extra:
            # The store keeps the retry schedule (retry_at): it reads the base.
            self.home.env["CCM_ROUTER_RETRY_BASE_MS"] = extra["CCM_ROUTER_RETRY_BASE_MS"]
            self.home.restart()
        env = dict(self.home.env, CCM_ROUTER_HEARTBEAT_MS=str(beat_ms), **extra)
        with open(self.stderr_path, "ab") as err:
            self.router = subprocess.Popen([ROUTER_BIN], env=env, stdin=subprocess.DEVNULL,
                                           stdout=err, stderr=err, cwd=self.home.path)
        sock = os.path.join(self.home.path, "run", "router.ipc")
        tx.wait_for("the router to listen", lambda: os.path.exists(sock), 10,
                    diagnose=self.diagnose)

    def start_system(self, name, projects, tags="", capacity=2, machine=None, beat_ms=BEAT_MS):
        machine = machine or f"{name}-{uuid.uuid4().hex[:8]}"
        sock = os.path.join(self.home.path, "run", f"tmux-{name}.sock")
        env = dict(self.home.env)
        env.update({"CCM_EXECUTOR_POLL_MS": "100", "CCM_EXECUTOR_KILL_GRACE_MS": "1000",
                    "CCM_EXECUTOR_MACHINE_ID": machine, "CCM_EXECUTOR_HOSTNAME": name,
                    "CCM_EXECUTOR_TAGS": tags, "CCM_EXECUTOR_CAPACITY": str(capacity),
                    "CCM_EXECUTOR_PROJECTS": projects, "CCM_EXECUTOR_DISPATCH": "router",
                    "CCM_EXECUTOR_TMUX_SOCKET": sock,
                    "CCM_EXECUTOR_LOGS": os.path.join(self.home.path, f"logs-{name}"),
                    "CCM_ROUTER_HEARTBEAT_MS": str(beat_ms)})
        with open(self.stderr_path, "ab") as err:
            err.write(f"--- ccm-executor {name} started by the test\n".encode())
            err.flush()
            proc = subprocess.Popen([tx.EXECUTOR_BIN], env=env, stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, cwd=self.home.path)
        rows = tx.wait_for(f"system {name} online in the router's eyes", lambda: self.home.query(
            "SELECT s.id FROM systems s WHERE s.machine_id = ? AND (SELECT count(*) FROM"
            " contexts c WHERE c.system_id = s.id) = ?", machine,
            len(projects.split(","))), 10, diagnose=self.diagnose)
        self.systems[name] = (proc, rows[0][0], sock)
        self.executors.append(proc)
        return rows[0][0]

    def add(self, prompt, project, *options):
        rc, out, err = self.home.run_cli("task", "add", "--project", project, "--agent", "shell",
                                         *options, "--", prompt)
        self.assertEqual(rc, 0, err)
        return out.strip()

    def row(self, task_id):
        return self.home.query("SELECT status, status_reason, locked_by, attempts FROM tasks"
                               " WHERE id = ?", task_id)[0]

    def ran_on(self, task_id):
        """The system the task's last run was assigned to, from its events."""
        rows = self.home.query("SELECT json_extract(event_data, '$.reason') FROM task_events"
                               " WHERE task_id = ? AND event_type = 'assigned' ORDER BY rowid",
                               task_id)
        return [r[0] for r in rows]

    def wait_status(self, task_id, status, timeout=30):
        return tx.wait_for(f"task {task_id[:8]} {status}",
                           lambda: self.row(task_id)[0] == status and self.row(task_id), timeout,
                           diagnose=self.diagnose)

    def wait_reason(self, task_id, words, timeout=10):
        return tx.wait_for(f"task {task_id[:8]} waiting: {words}",
                           lambda: (r := self.row(task_id))[0] == "queued"
                           and words in (r[1] or "") and r, timeout, diagnose=self.diagnose)


class TestRouting(RouterTestCase):

    def test_every_decision(self):
        self.start_router()
        big = self.start_system("big", "web,api", tags="gpu,os=linux", capacity=1)
        small = self.start_system("small", "web", capacity=2)
        out = os.path.join(self.home.path, "ran")
        os.makedirs(out)

        # api: only big holds it.
        api = self.add(f"echo $CCM_SYSTEM_ID > {out}/api", "api")
        self.wait_status(api, "complete")
        self.assertEqual(self.row(api)[2], None, "the lock is released when it ends")
        with open(f"{out}/api") as f:
            self.assertEqual(f.read().strip(), big)
        self.assertEqual(self.ran_on(api), [f"routed to system {big[:8]}, project api"])

        # gpu=true on web: big's tag; small holds web but lacks the tag.
        gpu = self.add(f"echo $CCM_SYSTEM_ID > {out}/gpu", "web", "--requires", "gpu=true")
        self.wait_status(gpu, "complete")
        with open(f"{out}/gpu") as f:
            self.assertEqual(f.read().strip(), big)

        # An explicit system wins over load.
        pinned = self.add(f"echo $CCM_SYSTEM_ID > {out}/pinned", "web", "--system", small)
        self.wait_status(pinned, "complete")
        with open(f"{out}/pinned") as f:
            self.assertEqual(f.read().strip(), small)

        # Nobody holds project nowhere; nobody matches os=mac; the reason shows.
        nowhere = self.add("echo never", "nowhere")
        self.wait_reason(nowhere, "no executor holds project nowhere")
        mac = self.add("echo never", "web", "--requires", "os=mac")
        self.wait_reason(mac, "no executor holding project web matches os=mac")
        rc, shown, err = self.home.run_cli("task", "show", nowhere[:8])
        self.assertIn("status_reason  no executor holds project nowhere\n", shown)

        # Capacity: big takes one task; the next gpu task waits for it.
        hold = os.path.join(self.home.path, "hold")
        first = self.add(f"while [ ! -e {hold} ]; do sleep 0.1; done", "web", "--requires",
                         "gpu=true")
        self.wait_status(first, "executing")
        second = self.add(f"echo $CCM_SYSTEM_ID > {out}/second", "web", "--requires",
                          "gpu=true")
        self.wait_reason(second, f"the only candidate (system {big}) is at capacity")
        open(hold, "w").close()
        self.wait_status(first, "complete")
        self.wait_status(second, "complete")
        with open(f"{out}/second") as f:
            self.assertEqual(f.read().strip(), big)
        for task in (nowhere, mac):
            self.assertEqual(self.row(task)[0], "queued")

        # Dependencies: b waits for a, which waits for a file.
        gate = os.path.join(self.home.path, "gate")
        a = self.add(f"while [ ! -e {gate} ]; do sleep 0.1; done", "web")
        b = self.add(f"echo b > {out}/b", "web", "--depends-on", a[:8])
        self.wait_reason(b, f"waits for task {a[:8]}")
        self.assertFalse(os.path.exists(f"{out}/b"))
        open(gate, "w").close()
        self.wait_status(b, "complete")
        self.assertEqual(self.row(a)[0], "complete")
        self.assertIsNone(self.router.poll(), "the router died:\n" + self.diagnose())


class TestLostExecutor(RouterTestCase):

    def test_tasks_of_a_lost_executor_run_elsewhere_once(self):
        self.start_router()
        doomed = self.start_system("doomed", "web", capacity=2)
        runs = os.path.join(self.home.path, "runs.txt")
        # The first run stays until its machine dies; a later run ends at once.
        prompt = (f"echo $CCM_SYSTEM_ID >> {runs}; "
                  f"if [ $(wc -l < {runs}) -lt 2 ]; then exec sleep 300; fi")
        task = self.add(prompt, "web")
        self.wait_status(task, "executing")
        tx.wait_for("the first run", lambda: os.path.exists(runs), 10)

        # The machine dies: executor and tmux server, with the agent.
        proc, _, sock = self.systems["doomed"]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True, timeout=10)
        tx.wait_for("the task requeued", lambda: self.home.query(
            "SELECT 1 FROM task_events WHERE task_id = ? AND event_type = 'requeued' AND"
            " json_extract(event_data, '$.reason') LIKE"
            " 'its executor went offline: no heartbeat for %'", task), 10,
            diagnose=self.diagnose)
        self.wait_reason(task, "no executor holding project web is online (1 offline)")
        self.assertEqual(self.home.query("SELECT status FROM systems WHERE id = ?", doomed),
                         [("offline",)])

        rescue = self.start_system("rescue", "web", capacity=2)
        status, _, _, attempts = self.wait_status(task, "complete")
        self.assertEqual(attempts, 2, "the lost run counts as an attempt")
        with open(runs) as f:
            self.assertEqual(f.read().split(), [doomed, rescue], "one run each, none twice")
        self.assertEqual(self.ran_on(task), [f"routed to system {doomed[:8]}, project web",
                                             f"routed to system {rescue[:8]}, project web"])
        self.assertIsNone(self.router.poll(), "the router died:\n" + self.diagnose())


class TestRouterBadInput(RouterTestCase):

    def test_rogue_dealer(self):
        import zmq
        self.start_router()
        good = self.start_system("good", "web")
        ctx = zmq.Context.instance()
        rogue = ctx.socket(zmq.DEALER)
        rogue.setsockopt(zmq.LINGER, 2000)
        rogue.connect("ipc://" + os.path.join(self.home.path, "run", "router.ipc"))
        for frames in ([b"HEARTBEAT"], [b"HEARTBEAT", b"not json"], [b"HEARTBEAT", b"[]"],
                       [b"HEARTBEAT", b'{"system_id": 7, "running": []}'],
                       [b"HEARTBEAT", b'{"system_id": "' + b"x" * 500 + b'", "running": []}'],
                       [b"HEARTBEAT", b'{"system_id": "s"}'], [b"WHAT", b"{}"],
                       [b"HEARTBEAT", b"{" * 100000]):
            rogue.send_multipart(frames)
        rogue.close()  # lingers until they are delivered
        tx.wait_for("the router to read them", lambda: "an unknown verb 'WHAT'" in open(
            self.stderr_path, encoding="utf-8", errors="replace").read(), 10)
        self.assertIsNone(self.router.poll(), "the router died:\n" + self.diagnose())
        task = self.add(f"echo ok", "web")
        self.wait_status(task, "complete")
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            log = f.read()
        for words in ("a malformed HEARTBEAT (needs system_id and running)",
                      "body not a JSON object", "an unknown verb 'WHAT'"):
            self.assertIn(words, log)
        self.assertEqual(self.home.query("SELECT count(*) FROM systems"), [(1,)],
                         "a rogue peer registers nothing")
        self.assertEqual(self.home.query("SELECT locked_by FROM tasks WHERE id = ?", task),
                         [(None,)])
        del good


class TestRetries(RouterTestCase):

    def test_fail_twice_then_succeed_and_always_fail(self):
        self.start_router(CCM_ROUTER_RETRY_BASE_MS="150")
        self.start_system("only", "web", capacity=2)
        count = os.path.join(self.home.path, "count")
        # Runs that end within milliseconds: their exit status must still be
        # exact (tmux alone can lose it; the executor records it itself).
        flaky = self.add(f"n=$(cat {count} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {count};"
                         f" [ $n -ge 3 ]", "web")
        doomed = self.add("exit 7", "web")
        status, _, _, attempts = self.wait_status(flaky, "complete", timeout=30)
        self.assertEqual(attempts, 3, "complete on attempt 3")
        with open(count) as f:
            self.assertEqual(f.read().strip(), "3")
        events = [r[0] for r in self.home.query(
            "SELECT event_type FROM task_events WHERE task_id = ? ORDER BY rowid", flaky)]
        self.assertEqual(events, ["created", "queued"] + ["assigned", "started", "failed",
                                                          "requeued"] * 2
                         + ["assigned", "started", "completed"])
        # Backoff: the second retry waited at least twice the base (300 ms).
        times = [r[0] for r in self.home.query(
            "SELECT created_at FROM task_events WHERE task_id = ? AND event_type IN"
            " ('failed', 'requeued') ORDER BY rowid", flaky)]
        waits = [self.ms(b) - self.ms(a) for a, b in zip(times[0::2], times[1::2])]
        self.assertGreaterEqual(waits[0], 150, waits)
        self.assertGreaterEqual(waits[1], 300, waits)

        tx.wait_for("the doomed task out of attempts", lambda: self.row(doomed)[0] == "failed"
                    and self.row(doomed)[3] == 3 and self.home.query(
                        "SELECT count(*) FROM task_events WHERE task_id = ? AND event_type ="
                        " 'failed'", doomed)[0][0] == 3, 30, diagnose=self.diagnose)
        self.assertEqual(self.row(doomed)[1],
                         "failed after 3 attempts: agent exited with status 7")
        time.sleep(1.0)  # and it stays failed: no fourth attempt
        self.assertEqual(self.row(doomed)[0], "failed")
        self.assertEqual(self.row(doomed)[3], 3)

    @staticmethod
    def ms(text):
        import datetime
        return datetime.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp() * 1000


if __name__ == "__main__":
    ccmtest.main()

"""Integration tests of ccm-executor (issue 3): real store, real executor,
real tmux, real git, real processes.

Each test gets a fresh CCM_HOME with a running ccm-store (ccmtest), a real
git repository as its project, and starts $CCM_BIN_DIR/ccm-executor itself.
What is checked is what a user would check: rows in the database (opened
read-only), files in worktrees and the project repository, the agent's log,
tmux's windows and whether processes are really gone.

Every wait is bounded. The executor and ccm's tmux server are always ended
in cleanup (before the harness looks for leftover processes).
"""

import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ccmtest  # noqa: E402

EXECUTOR_BIN = os.path.join(ccmtest.BIN_DIR, "ccm-executor")
WAIT = 30.0          # the longest any single wait may take
FINAL = ("complete", "failed", "cancelled")


#  Git, for the tests and for everything they start, ignores the user's and
#  the system's git config (a commit.gpgsign there would break agents' commits).
GIT_ENV = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}


def git(cwd, *args, check=True):
    """Runs git in cwd (identity given, so commits work anywhere); returns the CompletedProcess."""
    done = subprocess.run(["git", "-c", "user.name=ccm test", "-c", "user.email=test@ccm.invalid",
                           "-C", cwd, *args], capture_output=True, timeout=30,
                          env={**os.environ, **GIT_ENV})
    if check and done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} in {cwd} failed: "
                             f"{done.stderr.decode(errors='replace')}")
    return done


def wait_for(what, predicate, timeout=WAIT, interval=0.05, diagnose=None):
    """Polls predicate until it gives a true value (returned) or fails after timeout."""
    value = ccmtest.wait_until(predicate, timeout, interval)
    if not value:
        extra = ("\n" + diagnose()) if diagnose else ""
        raise AssertionError(f"timed out after {timeout} s waiting for {what}{extra}")
    return value


class ExecutorTestCase(ccmtest.CcmTestCase):
    """A home with a store, helpers to run executors, tmux, git and tasks."""

    PROJECT = "proj"

    # One attempt per task here: these tests count the runs of the executor;
    # retries (the store's schedule) have their own tests (test_router).
    MAX_ATTEMPTS = 1

    def setUp(self):
        env = dict(GIT_ENV)
        if self.MAX_ATTEMPTS:
            env["CCM_STORE_MAX_ATTEMPTS"] = str(self.MAX_ATTEMPTS)
        self.home = self.make_home(start=True, extra_env=env)
        self.machine_id = "it-" + uuid.uuid4().hex
        self.executors = []
        self.dispatcher = None  # the ccm-router that start_executor starts
        # Registered after make_home's cleanup, so it runs first (LIFO): the
        # executor, tmux and the agents are gone before the home is checked.
        self.addCleanup(self._stop_everything)

    # ------------------------------------------------------------ paths

    @property
    def tmux_sock(self):
        return os.path.join(self.home.path, "run", "tmux.sock")

    @property
    def stderr_path(self):
        return os.path.join(self.home.path, "executor.stderr")

    def worktree_path(self, task_id, project=None):
        return os.path.join(self.home.path, "worktrees", project or self.PROJECT, task_id[:8])

    def log_path(self, task_id):
        return os.path.join(self.home.path, "logs", task_id + ".log")

    # -------------------------------------------------------- git repos

    def make_repo(self, name=None, files=None):
        """A real git repository on branch main with one commit of files
        ({relative path: text}); returns its path."""
        path = os.path.join(self.home.path, "repos", name or self.PROJECT)
        os.makedirs(path)
        git(path, "init", "-q", "-b", "main")
        files = dict(files or {})
        files.setdefault("README.md", "a project of the executor tests\n")
        for rel, text in files.items():
            full = os.path.join(path, rel)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w", encoding="utf-8") as f:
                f.write(text)
        git(path, "add", "-A")
        git(path, "commit", "-q", "-m", "initial commit")
        return path

    def add_project(self, name, path):
        rc, out, err = self.home.run_cli("project", "add", name, path)
        self.assertEqual(rc, 0, f"ccm project add {name} {path}: {err}")
        return out.strip()

    def branch_exists(self, repo, branch):
        return git(repo, "rev-parse", "--verify", "--quiet", "refs/heads/" + branch,
                   check=False).returncode == 0

    # --------------------------------------------------------- executor

    def write_profiles(self, profiles):
        with open(os.path.join(self.home.path, "profiles.json"), "w", encoding="utf-8") as f:
            json.dump(profiles, f)

    def start_dispatcher(self):
        """The ccm-router that executors get their tasks from (executor.dispatch's
        default), started once per test."""
        if self.dispatcher and self.dispatcher.poll() is None:
            return
        # One attempt per task here: these tests count the runs of the
        # executor; the router's retries have their own tests (test_router).
        env = dict(self.home.env, CCM_STORE_MAX_ATTEMPTS="1", **self.beat_env())
        with open(self.stderr_path, "ab") as err:
            self.dispatcher = subprocess.Popen(
                [os.path.join(ccmtest.BIN_DIR, "ccm-router")], env=env,
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, cwd=self.home.path)
        sock = os.path.join(self.home.path, "run", "router.ipc")
        wait_for("the router to listen", lambda: os.path.exists(sock), 10)

    # The router's heartbeat, for both router and executors (None: the default).
    BEAT_MS = None

    def beat_env(self):
        return {"CCM_ROUTER_HEARTBEAT_MS": str(self.BEAT_MS)} if self.BEAT_MS else {}

    def start_executor(self, extra_env=None):
        if not os.access(EXECUTOR_BIN, os.X_OK):
            raise AssertionError(f"{EXECUTOR_BIN} is missing: build first")
        if (extra_env or {}).get("CCM_EXECUTOR_DISPATCH", "router") == "router":
            self.start_dispatcher()
        env = dict(self.home.env)
        env.update({"CCM_EXECUTOR_POLL_MS": "100", "CCM_EXECUTOR_KILL_GRACE_MS": "1000",
                    "CCM_EXECUTOR_MACHINE_ID": self.machine_id, "CCM_EXECUTOR_CAPACITY": "8"})
        env.update(self.beat_env())
        env.update(extra_env or {})
        with open(self.stderr_path, "ab") as err:
            err.write(f"--- ccm-executor started by the test at {time.time():.3f}\n".encode())
            err.flush()
            proc = subprocess.Popen([EXECUTOR_BIN], env=env, stdin=subprocess.DEVNULL,
                                    stdout=err, stderr=err, cwd=self.home.path)
        self.executors.append(proc)
        # Ready once it registered this machine.
        registered = "SELECT id FROM systems WHERE machine_id = ?"
        wait_for("the executor to register its system",
                 lambda: self.home.query(registered, self.machine_id) or proc.poll() is not None,
                 timeout=10, diagnose=self.diagnose)
        self.assertIsNone(proc.poll(), "the executor exited at start:\n" + self.diagnose())
        return proc

    def kill9(self, proc):
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)

    def stop_executor(self, proc, timeout=10):
        """SIGTERM; returns the exit code (SIGKILL, and None, if it hangs)."""
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
                return None
        return proc.returncode

    def assertAlive(self, proc, msg=""):
        self.assertIsNone(proc.poll(), f"the executor died ({proc.returncode}) {msg}\n"
                          + self.diagnose())

    def _stop_everything(self):
        for proc in self.executors:
            self.stop_executor(proc)
        if self.dispatcher:
            self.stop_executor(self.dispatcher)
        self.tmux("kill-server")
        store_pid = self.home.pid
        # Agents die with their tmux server (SIGHUP); give them a moment.
        ccmtest.wait_until(lambda: not [p for p in self.home.processes() if p != store_pid], 10)

    def executor_stderr(self, lines=40):
        try:
            with open(self.stderr_path, "rb") as f:
                return "\n".join(f.read().decode("utf-8", "replace").splitlines()[-lines:])
        except OSError:
            return ""

    def diagnose(self):
        tasks = self.home.query("SELECT substr(id, 1, 8), status, status_reason FROM tasks")
        return (f"tasks: {tasks}\npanes: {self.panes()}\n"
                f"executor stderr:\n{self.executor_stderr()}")

    # -------------------------------------------------------------- tmux

    def tmux(self, *args):
        return subprocess.run(["tmux", "-S", self.tmux_sock, *args], capture_output=True,
                              timeout=10, env=self.home.env)

    def panes(self):
        """[(window_id, task_id, dead, pid)] of ccm's tmux server ([] if it is not running)."""
        done = self.tmux("list-panes", "-a", "-F",
                         "#{window_id}|#{@ccm_task}|#{pane_dead}|#{pane_pid}")
        if done.returncode != 0:
            return []
        rows = []
        for line in done.stdout.decode().splitlines():
            wid, task, dead, pid = line.split("|")
            rows.append((wid, task, dead == "1", int(pid or 0)))
        return rows

    def windows_of(self, task_id):
        return [p for p in self.panes() if p[1] == task_id]

    # ------------------------------------------------------------- tasks

    def add_task(self, prompt, agent="shell", project=None, timeout=None):
        args = ["task", "add", "--project", project or self.PROJECT, "--agent", agent]
        if timeout is not None:
            args += ["--timeout", str(timeout)]
        rc, out, err = self.home.run_cli(*args, "--", prompt)
        self.assertEqual(rc, 0, f"ccm task add failed: {err}")
        task_id = out.strip()
        self.assertRegex(task_id, ccmtest.UUID_RE)
        return task_id

    def task(self, task_id):
        rows = self.home.query("SELECT status, status_reason, prompt FROM tasks WHERE id = ?",
                               task_id)
        self.assertTrue(rows, f"no task {task_id}")
        return dict(zip(("status", "status_reason", "prompt"), rows[0]))

    def wait_status(self, task_id, statuses, timeout=WAIT):
        statuses = (statuses,) if isinstance(statuses, str) else tuple(statuses)
        wait_for(f"task {task_id[:8]} to be {'/'.join(statuses)}",
                 lambda: self.task(task_id)["status"] in statuses, timeout,
                 diagnose=self.diagnose)
        return self.task(task_id)

    def wait_final(self, task_id, timeout=WAIT):
        """Waits until the task is complete, failed or cancelled, has a result
        row, and its window is closed (the executor's last step of a finish)."""
        task = self.wait_status(task_id, FINAL, timeout)
        wait_for(f"a result row of task {task_id[:8]}", lambda: self.results(task_id), 10,
                 diagnose=self.diagnose)
        wait_for(f"the window of finished task {task_id[:8]} to close",
                 lambda: not self.windows_of(task_id), 10, diagnose=self.diagnose)
        return task

    def results(self, task_id):
        rows = self.home.query("SELECT status, exit_code, output, files_changed, details, agent_id"
                               " FROM task_results WHERE task_id = ? ORDER BY rowid", task_id)
        keys = ("status", "exit_code", "output", "files_changed", "details", "agent_id")
        out = []
        for row in rows:
            result = dict(zip(keys, row))
            result["files_changed"] = json.loads(result["files_changed"])
            result["details"] = json.loads(result["details"]) if result["details"] else None
            out.append(result)
        return out

    def result(self, task_id):
        results = self.results(task_id)
        self.assertEqual(len(results), 1, f"task {task_id[:8]}: expected one result row, got "
                         f"{results!r:.2000}")
        return results[0]

    def events(self, task_id):
        return [r[0] for r in self.home.query(
            "SELECT event_type FROM task_events WHERE task_id = ? ORDER BY created_at, rowid",
            task_id)]

    def agents(self, task_id):
        rows = self.home.query("SELECT id, status, tmux_window, profile, system_id FROM agents"
                               " WHERE task_id = ? ORDER BY rowid", task_id)
        return [dict(zip(("id", "status", "tmux_window", "profile", "system_id"), r))
                for r in rows]

    def worktree_row(self, task_id):
        rows = self.home.query("SELECT worktree_path, branch_name, base_branch, status, removed_at"
                               " FROM task_worktrees WHERE task_id = ?", task_id)
        self.assertEqual(len(rows), 1, f"task {task_id[:8]}: worktree rows {rows}")
        return dict(zip(("worktree_path", "branch_name", "base_branch", "status", "removed_at"),
                        rows[0]))

    def system_id(self):
        return self.home.scalar("SELECT id FROM systems WHERE machine_id = ?", self.machine_id)

    def read_pid(self, path):
        def get():
            try:
                with open(path) as f:
                    text = f.read().strip()
                return int(text) if text else None
            except (OSError, ValueError):
                return None
        return wait_for(f"pid file {path}", get, diagnose=self.diagnose)

    def assertEvents(self, task_id, *expected):
        """The task's task_events hold these event types, in this order."""
        events = self.events(task_id)
        position = 0
        for kind in expected:
            self.assertIn(kind, events[position:], f"task {task_id[:8]}: events {events}, "
                          f"expected {expected} in order")
            position = events.index(kind, position) + 1


class TestLifecycle(ExecutorTestCase):
    """Shell agents that exit 0, exit 1, hang past their timeout, print 10 MB,
    or are cancelled: the right task status, result, events and worktree."""

    LINES = 800000  # "ccm-line-0000001\n" is 17 bytes: 13.6 MB in all

    def test_lifecycle(self):
        repo = self.make_repo()
        self.add_project(self.PROJECT, repo)
        self.start_executor()

        ok = self.add_task("echo hello > out.txt; echo all-done-ok")
        bad = self.add_task("echo about-to-fail; exit 1")
        t_hang = time.monotonic()
        hang = self.add_task("trap '' TERM; echo $$ > hang.pid; "
                             "sleep 300 & echo $! > sleep.pid; wait", timeout=2)
        big = self.add_task(f"seq -f 'ccm-line-%07g' 1 {self.LINES}; echo END-OF-BIG-OUTPUT")
        cancel = self.add_task("echo $$ > cancel.pid; exec sleep 300")

        # --- cancelled while running
        self.wait_status(cancel, "executing")
        cancel_pid = self.read_pid(os.path.join(self.worktree_path(cancel), "cancel.pid"))
        self.assertTrue(ccmtest.pid_alive(cancel_pid))
        # A session per project, a window per task named by its short id.
        done = self.tmux("list-windows", "-a", "-F", "#{session_name}|#{window_name}|#{@ccm_task}")
        self.assertIn(f"{self.PROJECT}|{cancel[:8]}|{cancel}", done.stdout.decode().splitlines())
        rc, out, err = self.home.run_cli("task", "cancel", cancel)
        self.assertEqual(rc, 0, f"ccm task cancel: {err}")
        task = self.wait_final(cancel)
        self.assertEqual(task["status"], "cancelled")
        self.assertEqual(self.result(cancel)["status"], "cancelled")
        wait_for("the cancelled agent's process to end", lambda: not ccmtest.pid_alive(cancel_pid),
                 10)
        self.assertFalse(self.windows_of(cancel), "the cancelled agent's window is still there")
        self.assertEvents(cancel, "queued", "assigned", "started", "cancelled")
        self.assertNotIn("running", [a["status"] for a in self.agents(cancel)])

        # --- exit 0
        task = self.wait_final(ok)
        self.assertEqual(task["status"], "complete", task)
        res = self.result(ok)
        self.assertEqual(res["status"], "complete")
        self.assertEqual(res["exit_code"], 0)
        self.assertEqual(res["files_changed"], ["out.txt"])
        self.assertIn("all-done-ok", res["output"])
        wt = self.worktree_path(ok)
        with open(os.path.join(wt, "out.txt")) as f:
            self.assertEqual(f.read(), "hello\n")
        row = self.worktree_row(ok)
        self.assertEqual(row["status"], "active")
        self.assertEqual(row["branch_name"], "ccm/" + ok[:8])
        self.assertEqual(row["base_branch"], "main")
        self.assertEqual(row["worktree_path"], wt)
        self.assertIsNone(row["removed_at"])
        self.assertTrue(self.branch_exists(repo, "ccm/" + ok[:8]))
        self.assertEqual(git(wt, "rev-parse", "--abbrev-ref", "HEAD").stdout.decode().strip(),
                         "ccm/" + ok[:8])
        self.assertEvents(ok, "queued", "assigned", "started", "completed")
        agents = self.agents(ok)
        self.assertEqual(len(agents), 1, agents)
        self.assertEqual(agents[0]["status"], "exited")
        self.assertEqual(agents[0]["profile"], "shell")
        self.assertRegex(agents[0]["tmux_window"] or "", r"^@\d+$")
        self.assertEqual(agents[0]["system_id"], self.system_id())
        self.assertEqual(res["agent_id"], agents[0]["id"])
        # The CLI shows the same.
        rc, out, err = self.home.run_cli("task", "show", ok, "--json")
        self.assertEqual(rc, 0, err)
        shown = json.loads(out)
        self.assertEqual(shown["task"]["status"], "complete")
        self.assertEqual([r["status"] for r in shown["results"]], ["complete"])
        self.assertTrue(shown["events"])

        # --- exit 1
        task = self.wait_final(bad)
        self.assertEqual(task["status"], "failed", task)
        res = self.result(bad)
        self.assertEqual(res["status"], "failed")
        self.assertEqual(res["exit_code"], 1)
        self.assertIn("about-to-fail", res["output"])
        self.assertEqual(res["files_changed"], [])
        self.assertEqual(self.worktree_row(bad)["status"], "active")
        self.assertEvents(bad, "queued", "assigned", "started", "failed")

        # --- hang past --timeout 2 (ignoring SIGTERM: SIGKILL after the grace)
        hang_pid = self.read_pid(os.path.join(self.worktree_path(hang), "hang.pid"))
        sleep_pid = self.read_pid(os.path.join(self.worktree_path(hang), "sleep.pid"))
        task = self.wait_final(hang)
        took = time.monotonic() - t_hang
        self.assertEqual(task["status"], "failed", task)
        self.assertGreaterEqual(took, 2.0, "the task ended before its timeout")
        res = self.result(hang)
        self.assertEqual(res["status"], "timeout")
        self.assertIn("time", (task["status_reason"] or "").lower())
        wait_for("the timed-out agent's processes to end",
                 lambda: not ccmtest.pid_alive(hang_pid) and not ccmtest.pid_alive(sleep_pid), 10)
        self.assertFalse(self.windows_of(hang))
        self.assertEvents(hang, "queued", "assigned", "started", "failed")

        # --- 10 MB of output
        task = self.wait_final(big)
        self.assertEqual(task["status"], "complete", task)
        res = self.result(big)
        self.assertEqual(res["status"], "complete")
        self.assertEqual(res["exit_code"], 0)
        self.assertIn("END-OF-BIG-OUTPUT", res["output"])
        self.assertIn(f"ccm-line-{self.LINES:07d}", res["output"])
        self.assertLessEqual(len(res["output"].encode()), 64 * 1024, "the output is a tail")
        with open(self.log_path(big), "rb") as f:
            log = f.read().replace(b"\r", b"")
        self.assertGreaterEqual(len(log), 10_000_000)
        expected = "".join(f"ccm-line-{i:07d}\n" for i in range(1, self.LINES + 1)).encode()
        self.assertIn(expected + b"END-OF-BIG-OUTPUT\n", log,
                      "the log does not hold every line of the output, in order")
        rc, out, err = self.home.run_cli("logs", big)
        self.assertEqual(rc, 0, err)
        self.assertIn("END-OF-BIG-OUTPUT", out[-200:])
        self.assertEvents(big, "queued", "assigned", "started", "completed")

        for task_id in (ok, bad, hang, big, cancel):
            self.assertEqual(len(self.results(task_id)), 1, f"task {task_id[:8]}")
        self.assertFalse([p for p in self.panes() if not p[2]], "agents still running")

    def test_files_changed_unusual_names(self):
        """files_changed holds real file names, not git's quoted ones."""
        repo = self.make_repo()
        self.add_project(self.PROJECT, repo)
        self.start_executor()
        task_id = self.add_task(
            "mkdir -p 'sub dir' && echo a > 'sub dir/naïve file.txt' && git add -A && "
            "git -c user.name=agent -c user.email=agent@ccm.invalid commit -q -m unicode && "
            "echo b > 'with space.txt' && echo c > 'tab\there.txt'")
        task = self.wait_final(task_id)
        self.assertEqual(task["status"], "complete", task)
        wt = self.worktree_path(task_id)
        for name in ("sub dir/naïve file.txt", "with space.txt", "tab\there.txt"):
            self.assertTrue(os.path.exists(os.path.join(wt, name)), name)
        self.assertEqual(sorted(self.result(task_id)["files_changed"]),
                         sorted(["sub dir/naïve file.txt", "with space.txt", "tab\there.txt"]))


class TestPrompts(ExecutorTestCase):
    """Prompts reach the agent as one argv element, byte for byte; the
    window's environment is ccm's."""

    def test_prompt_verbatim(self):
        tag = uuid.uuid4().hex[:12]
        pwned = f"/tmp/ccm-pwned-{tag}"
        pwned_bt = f"/tmp/ccm-pwned-bt-{tag}"
        prompt = (f"'\"$(touch {pwned})\"' and `touch {pwned_bt}` $HOME ${{PATH}} \\n \\\\ "
                  f"; | & > < * ? ~ !\nsecond line\twith a tab, emoji 🚀🧪 and ünïcödé "
                  f"{{task_id}} {{worktree}} {{prompt}} %s %n\n")
        self.addCleanup(lambda: [os.unlink(p) for p in (pwned, pwned_bt) if os.path.exists(p)])
        self.write_profiles({"argv-dump": {
            "argv": ["python3", "-c",
                     "import sys; open(sys.argv[2],'wb').write("
                     "sys.argv[1].encode('utf-8','surrogateescape'))",
                     "{prompt}", "{worktree}/prompt.bin"],
            "mode": "headless"}})
        repo = self.make_repo()
        self.add_project(self.PROJECT, repo)
        self.start_executor()
        task_id = self.add_task(prompt, agent="argv-dump")
        task = self.wait_final(task_id)
        self.assertEqual(task["status"], "complete", task)
        self.assertEqual(task["prompt"], prompt, "the store changed the prompt")
        with open(os.path.join(self.worktree_path(task_id), "prompt.bin"), "rb") as f:
            got = f.read()
        self.assertEqual(got, prompt.encode("utf-8"), "the prompt did not arrive byte for byte")
        self.assertEqual(self.result(task_id)["files_changed"], ["prompt.bin"])
        time.sleep(0.2)
        self.assertFalse(os.path.exists(pwned), "$(...) in the prompt was run by a shell")
        self.assertFalse(os.path.exists(pwned_bt), "backticks in the prompt were run by a shell")

    def test_send_reaches_agent_verbatim_and_is_recorded(self):
        """`ccm send` types text into a live agent, byte for byte, then Enter;
        the store records it as sent (a task.progress event)."""
        tag = uuid.uuid4().hex[:12]
        pwned = f"/tmp/ccm-pwned-send-{tag}"
        self.addCleanup(lambda: os.path.exists(pwned) and os.unlink(pwned))
        text = f"'\"$(touch {pwned})\"' `touch {pwned}` $HOME ünïcödé 🚀 {{prompt}} %s"
        repo = self.make_repo()
        self.add_project(self.PROJECT, repo)
        self.start_executor()
        # The agent reads one line from its terminal, as a TUI would.
        task_id = self.add_task("python3 -c 'import sys; "
                                "open(\"got.bin\", \"wb\").write(sys.stdin.buffer.readline())'")
        self.wait_status(task_id, "executing")
        rc, out, err = self.home.run_cli("send", task_id[:8], text)
        self.assertEqual(rc, 0, err)
        self.assertIn("sent to", out)
        task = self.wait_final(task_id)
        self.assertEqual(task["status"], "complete", task)
        with open(os.path.join(self.worktree_path(task_id), "got.bin"), "rb") as f:
            self.assertEqual(f.read(), (text + "\n").encode())
        self.assertFalse(os.path.exists(pwned), "sent text was run by a shell")
        rows = self.home.query("SELECT event_data FROM task_events WHERE task_id = ?"
                               " AND event_type = 'progress'", task_id)
        self.assertEqual(len(rows), 1, rows)
        data = json.loads(rows[0][0])
        self.assertEqual((data["kind"], data["delivery"], data["text"], data["bytes"]),
                         ("input", "sent", text, len(text.encode())))
        topics = [r[0] for r in self.home.query(
            "SELECT topic FROM events WHERE task_id = ? ORDER BY seq", task_id)]
        self.assertIn("task.progress", topics)

        # No live agent: a clear error, nothing recorded.
        rc, out, err = self.home.run_cli("send", task_id[:8], "too late")
        self.assertNotEqual(rc, 0)
        self.assertIn("no running agent", err)
        self.assertEqual(len(self.home.query("SELECT 1 FROM task_events WHERE task_id = ?"
                                             " AND event_type = 'progress'", task_id)), 1)

    def test_window_environment(self):
        repo = self.make_repo()
        self.add_project(self.PROJECT, repo)
        self.start_executor({"CLAUDECODE": "1"})
        task_id = self.add_task("env > env.txt")
        task = self.wait_final(task_id)
        self.assertEqual(task["status"], "complete", task)
        with open(os.path.join(self.worktree_path(task_id), "env.txt"), "rb") as f:
            env = dict(line.split(b"=", 1) for line in f.read().splitlines() if b"=" in line)
        agents = self.agents(task_id)
        self.assertEqual(len(agents), 1, agents)
        self.assertEqual(env.get(b"CCM_TASK_ID"), task_id.encode())
        self.assertEqual(env.get(b"CCM_AGENT_ID"), agents[0]["id"].encode())
        self.assertEqual(env.get(b"CCM_SYSTEM_ID"), self.system_id().encode())
        self.assertEqual(env.get(b"CCM_HOME"), self.home.path.encode())
        self.assertNotIn(b"CLAUDECODE", env, "CLAUDECODE reached the agent")
        self.assertEqual(self.result(task_id)["agent_id"], agents[0]["id"])


class TestWorktrees(ExecutorTestCase):
    """Unmerged work survives discard and prune; --force removes it; prune
    frees clean worktrees and says how much; merge lands on main;
    .worktreeinclude copies ignored files into new worktrees."""

    COMMIT = ("echo {text} > {name} && git add {name} && "
              "git -c user.name=agent -c user.email=agent@ccm.invalid commit -q -m '{text}'")

    def test_worktrees(self):
        repo = self.make_repo(files={".gitignore": ".env\n",
                                     ".worktreeinclude": "# secrets\n.env\n"})
        with open(os.path.join(repo, ".env"), "w") as f:
            f.write("SECRET=included-" + uuid.uuid4().hex + "\n")
        with open(os.path.join(repo, ".env")) as f:
            secret = f.read()
        self.add_project(self.PROJECT, repo)
        self.start_executor()

        keep = self.add_task(self.COMMIT.format(text="unmerged-work", name="feature.txt"))
        clean = self.add_task("echo nothing to change")
        merge = self.add_task(self.COMMIT.format(text="merge-me", name="merged.txt"))
        include = self.add_task("cat .env > seen-env.txt")
        for task_id in (keep, clean, merge, include):
            task = self.wait_final(task_id)
            self.assertEqual(task["status"], "complete", (task_id[:8], task))

        # .worktreeinclude: the ignored .env is in every new worktree, not a change.
        for task_id in (keep, clean, merge, include):
            with open(os.path.join(self.worktree_path(task_id), ".env")) as f:
                self.assertEqual(f.read(), secret, f"task {task_id[:8]}: .env not copied")
        with open(os.path.join(self.worktree_path(include), "seen-env.txt")) as f:
            self.assertEqual(f.read(), secret, "the agent did not see .env")
        self.assertEqual(self.result(include)["files_changed"], ["seen-env.txt"])
        self.assertEqual(self.result(clean)["files_changed"], [])
        self.assertEqual(self.result(keep)["files_changed"], ["feature.txt"])

        keep_wt, keep_branch = self.worktree_path(keep), "ccm/" + keep[:8]
        # discard without --force refuses: unmerged commits.
        rc, out, err = self.home.run_cli("worktree", "discard", keep)
        self.assertNotEqual(rc, 0, f"discard of unmerged work succeeded: {out} {err}")
        self.assertIn("unmerged commit", err + out)
        self.assertIn(keep_branch, err + out)
        self.assertTrue(self.branch_exists(repo, keep_branch), "discard deleted the branch")
        self.assertTrue(os.path.exists(os.path.join(keep_wt, "feature.txt")))
        self.assertEqual(self.worktree_row(keep)["status"], "active")

        # prune: removes the clean one, keeps the unmerged one, reports freed bytes.
        clean_wt = self.worktree_path(clean)
        self.assertTrue(os.path.isdir(clean_wt))
        rc, out, err = self.home.run_cli("worktree", "prune")
        self.assertEqual(rc, 0, f"prune: {out} {err}")
        freed = re.search(r"freed (\d+) bytes", out)
        self.assertTrue(freed, f"prune does not report the disk it freed: {out!r}")
        self.assertGreater(int(freed.group(1)), 0, out)
        self.assertFalse(os.path.exists(clean_wt), "prune left the clean worktree")
        self.assertFalse(self.branch_exists(repo, "ccm/" + clean[:8]))
        row = self.worktree_row(clean)
        self.assertEqual(row["status"], "discarded")
        self.assertIsNotNone(row["removed_at"])
        self.assertTrue(self.branch_exists(repo, keep_branch), "prune deleted unmerged work")
        self.assertTrue(os.path.exists(os.path.join(keep_wt, "feature.txt")))
        self.assertEqual(self.worktree_row(keep)["status"], "active")
        self.assertIn(keep_wt, out, "prune does not say what it kept")

        # discard --force removes worktree and branch.
        rc, out, err = self.home.run_cli("worktree", "discard", keep, "--force")
        self.assertEqual(rc, 0, f"discard --force: {out} {err}")
        self.assertFalse(os.path.exists(keep_wt))
        self.assertFalse(self.branch_exists(repo, keep_branch))
        row = self.worktree_row(keep)
        self.assertEqual(row["status"], "discarded")
        self.assertIsNotNone(row["removed_at"])

        # merge puts the task's file on main in the project repository.
        rc, out, err = self.home.run_cli("worktree", "merge", merge)
        self.assertEqual(rc, 0, f"merge: {out} {err}")
        shown = git(repo, "show", "main:merged.txt").stdout.decode()
        self.assertEqual(shown, "merge-me\n")
        with open(os.path.join(repo, "merged.txt")) as f:
            self.assertEqual(f.read(), "merge-me\n")
        self.assertEqual(self.worktree_row(merge)["status"], "merged")
        self.assertFalse(os.path.exists(self.worktree_path(merge)))
        self.assertFalse(self.branch_exists(repo, "ccm/" + merge[:8]))
        self.assertNotIn("feature.txt", git(repo, "ls-tree", "--name-only", "main").stdout.decode())
        rc, out, err = self.home.run_cli("worktree", "merge", merge)
        self.assertEqual(rc, 1)
        self.assertIn(f"the worktree of task {merge[:8]} is merged already", err)

        # A task still running keeps its worktree: merge and discard refuse.
        gate = os.path.join(self.home.path, "gate")
        live = self.add_task(f"while [ ! -e {gate} ]; do sleep 0.1; done")
        self.wait_status(live, ("executing",))
        for args in (("merge", live), ("discard", live, "--force")):
            rc, out, err = self.home.run_cli("worktree", *args)
            self.assertEqual(rc, 1, args)
            self.assertIn(f"task {live[:8]} is executing: its agent may still work in the"
                          " worktree; nothing done", err)
        self.assertTrue(os.path.isdir(self.worktree_path(live)))
        self.assertEqual(self.worktree_row(live)["status"], "active")
        open(gate, "w").close()
        self.wait_final(live)

        rc, out, err = self.home.run_cli("worktree", "list", "--json")
        self.assertEqual(rc, 0, err)
        listed = {w["task_id"]: w["status"] for w in json.loads(out)}
        self.assertEqual(listed, {keep: "discarded", clean: "discarded", merge: "merged",
                                  include: "active", live: "active"})


class TestRestart(ExecutorTestCase):
    """kill -9 of the executor while agents run: a new executor reattaches,
    records every result once, spawns nothing twice."""

    # The executor stays down a few seconds here (an agent finishes
    # meanwhile): a lease of 2 beats outlasts that, so its agents live on.
    BEAT_MS = 4000

    def kill9_scenario(self):
        """Two agents that sleep then write a file, and one that finishes
        while the executor is down; kill -9 in between. Returns (tasks,
        {task: [agent ids that really ran]}, {task: file written})."""
        repo = self.make_repo()
        self.add_project(self.PROJECT, repo)
        spawns = os.path.join(self.home.path, "spawns")
        os.makedirs(spawns)
        record = f'echo "$CCM_AGENT_ID" >> {spawns}/$CCM_TASK_ID; '
        first = self.start_executor()
        slow = [self.add_task(record + "sleep 5; echo slow-done > slow.txt") for _ in range(2)]
        quick = self.add_task(record + "sleep 2; echo quick-done > quick.txt")
        tasks = slow + [quick]
        for task_id in tasks:
            self.wait_status(task_id, "executing")
            wait_for(f"the agent of {task_id[:8]} to start",
                     lambda: os.path.exists(os.path.join(spawns, task_id)))
        self.kill9(first)
        # The quick agent finishes while no executor watches.
        wait_for("the quick agent's pane to die while the executor is down",
                 lambda: any(p[2] for p in self.windows_of(quick)), 10, diagnose=self.diagnose)
        for task_id in slow:
            self.assertEqual([p[2] for p in self.windows_of(task_id)], [False],
                             "a slow agent is not running in exactly one window")
            self.assertEqual(self.task(task_id)["status"], "executing")
        self.assertEqual(len(self.results(quick)), 0)
        second = self.start_executor()
        self.assertEqual(self.home.scalar("SELECT count(*) FROM systems"), 1)
        files = {quick: "quick.txt", slow[0]: "slow.txt", slow[1]: "slow.txt"}
        for task_id in tasks:
            self.assertLessEqual(len(self.windows_of(task_id)), 1, "duplicate window")
        for task_id in tasks:
            task = self.wait_final(task_id)
            self.assertEqual(task["status"], "complete", (task_id[:8], task))
        self.assertAlive(second)
        time.sleep(0.5)  # a duplicate spawn, if any, would have happened by now
        spawned = {}
        for task_id in tasks:
            with open(os.path.join(spawns, task_id)) as f:
                spawned[task_id] = f.read().split()
        return tasks, spawned, files

    def test_kill9_mid_run(self):
        tasks, spawned, files = self.kill9_scenario()
        for task_id in tasks:
            res = self.result(task_id)  # exactly one row
            self.assertEqual(res["status"], "complete")
            self.assertEqual(res["exit_code"], 0)
            self.assertEqual(res["files_changed"], [files[task_id]])
            with open(os.path.join(self.worktree_path(task_id), files[task_id])) as f:
                self.assertEqual(f.read(), files[task_id].replace(".txt", "-done\n"))
            self.assertEvents(task_id, "queued", "assigned", "started", "completed")
            self.assertEqual(len(spawned[task_id]), 1, f"task {task_id[:8]} spawned "
                             f"{len(spawned[task_id])} times")
        self.assertFalse(self.panes(), "windows left after all tasks ended")

    def test_kill9_one_agent_row_per_task(self):
        """No duplicate agents: the agents row of each task is the agent that
        really ran (its CCM_AGENT_ID), and it is no longer 'running'."""
        tasks, spawned, _ = self.kill9_scenario()
        for task_id in tasks:
            agents = self.agents(task_id)
            self.assertEqual([a["id"] for a in agents], spawned[task_id],
                             f"task {task_id[:8]}: agents rows {agents} but the agent that ran "
                             f"was {spawned[task_id]}")
            self.assertEqual(agents[0]["status"], "exited", agents)
            self.assertEqual(self.result(task_id)["agent_id"], spawned[task_id][0])

    def test_cancel_while_executor_down(self):
        """A task cancelled while no executor runs: the restarted executor
        kills its agent and records the result."""
        repo = self.make_repo()
        self.add_project(self.PROJECT, repo)
        first = self.start_executor()
        task_id = self.add_task("echo $$ > agent.pid; exec sleep 300")
        self.wait_status(task_id, "executing")
        pid = self.read_pid(os.path.join(self.worktree_path(task_id), "agent.pid"))
        self.kill9(first)
        rc, out, err = self.home.run_cli("task", "cancel", task_id)
        self.assertEqual(rc, 0, err)
        self.assertEqual(self.task(task_id)["status"], "cancelled")
        second = self.start_executor()
        wait_for("the restarted executor to kill the cancelled agent",
                 lambda: not ccmtest.pid_alive(pid), 10, diagnose=self.diagnose)
        self.wait_final(task_id, timeout=10)
        self.assertEqual(self.result(task_id)["status"], "cancelled")
        self.assertAlive(second)

    def test_timeout_survives_restart(self):
        """A task's --timeout counts from its start, not from the executor's restart."""
        repo = self.make_repo()
        self.add_project(self.PROJECT, repo)
        first = self.start_executor()
        task_id = self.add_task("exec sleep 300", timeout=3)
        self.wait_status(task_id, "executing")
        started = time.monotonic()
        self.kill9(first)
        time.sleep(max(0.0, started + 5.0 - time.monotonic()))  # past the deadline, executor down
        self.start_executor()
        task = self.wait_final(task_id)
        took = time.monotonic() - started
        self.assertEqual(task["status"], "failed", task)
        self.assertEqual(self.result(task_id)["status"], "timeout")
        # Killed at once after the restart (deadline long past), SIGTERM
        # being enough: not another 3 s later.
        self.assertLess(took, 7.0, f"a 3 s timeout, past due at a restart 5 s after the start, "
                        f"took {took:.1f} s")


class TestExitStatus(ExecutorTestCase):
    """An agent gone within milliseconds still has its exact exit status:
    tmux alone can report such a pane dead with no status at all."""

    def test_instant_exits(self):
        repo = self.make_repo()
        self.add_project(self.PROJECT, repo)
        self.start_executor()
        codes = [0, 3, 7, 1, 0, 42, 2, 0, 5, 7, 0, 9]
        tasks = [(code, self.add_task(f"exit {code}")) for code in codes]
        for code, task_id in tasks:
            task = self.wait_final(task_id)
            self.assertEqual(task["status"], "complete" if code == 0 else "failed", task)
            self.assertEqual(self.result(task_id)["exit_code"], code, task)
        # A signal is told apart from an exit status (128+N from the shell).
        killed = self.add_task("kill -TERM $$")
        task = self.wait_final(killed)
        self.assertEqual(task["status"], "failed")
        self.assertIn("signal 15", task["status_reason"] or "", task)


class TestRegistration(ExecutorTestCase):
    """The executor records this machine and the projects it holds."""

    def test_system_and_contexts(self):
        repo = self.make_repo()
        self.add_project(self.PROJECT, repo)
        self.home.ok("project.add", name="elsewhere", path="/nonexistent/ccm-project")
        self.start_executor(extra_env={"CCM_EXECUTOR_TAGS": "gpu,fast"})
        system = self.home.query("SELECT id, hostname, tags FROM systems WHERE machine_id = ?",
                                 self.machine_id)
        self.assertEqual(len(system), 1)
        self.assertEqual(json.loads(system[0][2]), ["gpu", "fast"])
        rows = wait_for("the project's context", lambda: self.home.query(
            "SELECT project_name, project_path, repo_branch, status, last_verified"
            " FROM contexts WHERE system_id = ?", system[0][0]))
        self.assertEqual(len(rows), 1, "a context for a project not on this machine")
        name, path, branch, status, verified = rows[0]
        self.assertEqual((name, path, branch, status), (self.PROJECT, repo, "main", "active"))
        self.assertRegex(verified, ccmtest.TIME_RE)
        # Recorded once, not at every refresh: the event log does not fill up.
        time.sleep(2.5)
        updates = self.home.query("SELECT count(*) FROM events WHERE topic LIKE 'contexts.%'")
        self.assertLessEqual(updates[0][0], 2)
        # A change of branch is recorded.
        git(repo, "checkout", "-q", "-b", "feature")
        wait_for("the new branch in the context", lambda: self.home.query(
            "SELECT 1 FROM contexts WHERE project_name = ? AND repo_branch = 'feature'",
            self.PROJECT), timeout=10)

    def test_context_freshness(self):
        """A context behind its upstream (as last fetched) is stale, with how
        far behind; last_pulled is the time of the last fetch; a fetch that
        catches up makes it active again."""
        upstream = self.make_repo("upstream")
        clone = os.path.join(self.home.path, "repos", "clone")
        git(self.home.path, "clone", "-q", upstream, clone)
        self.add_project(self.PROJECT, clone)
        self.start_executor()

        def context():
            rows = self.home.query("SELECT status, repo_branch, last_pulled, metadata"
                                   " FROM contexts WHERE project_name = ?", self.PROJECT)
            return rows[0] if rows else None
        first = wait_for("the context", context, timeout=10)
        self.assertEqual(first[:3], ("active", "main", None), "never fetched: no last_pulled")
        self.assertEqual(json.loads(first[3]), {"behind": 0})

        # Upstream moves on by two commits; the clone fetches but does not merge.
        for n in (1, 2):
            with open(os.path.join(upstream, f"new{n}.txt"), "w") as f:
                f.write("news\n")
            git(upstream, "add", ".")
            git(upstream, "commit", "-q", "-m", f"news {n}")
        before = time.time()
        git(clone, "fetch", "-q")
        stale = wait_for("the stale context", lambda: (c := context()) and c[0] == "stale" and c,
                         timeout=10)
        self.assertEqual(json.loads(stale[3]), {"behind": 2})
        pulled = datetime.datetime.strptime(stale[2], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
            tzinfo=datetime.timezone.utc).timestamp()
        self.assertLess(abs(pulled - before), 5, "last_pulled is the fetch's time")

        git(clone, "merge", "-q", "--ff-only", "origin/main")
        git(clone, "fetch", "-q")  # a fetch is what makes the executor look again
        fresh = wait_for("the active context", lambda: (c := context()) and c[0] == "active" and c,
                         timeout=10)
        self.assertEqual(json.loads(fresh[3]), {"behind": 0})
        rows = self.home.query("SELECT id FROM systems WHERE machine_id = ?", self.machine_id)
        rc, out, err = self.home.run_cli("contexts", "--system", rows[0][0])
        self.assertEqual(rc, 0, err)
        self.assertEqual(out.splitlines()[1].split()[:4], [self.PROJECT, os.uname().nodename[:20],
                                                           "active", "main"])


class TestBadInput(ExecutorTestCase):
    """Each bad input gets a clear error on its task; the executor stays up."""

    def test_bad_projects_and_profiles(self):
        repo = self.make_repo()
        self.add_project(self.PROJECT, repo)
        plain = os.path.join(self.home.path, "not-a-repo")
        os.makedirs(plain)
        self.add_project("plain", plain)
        self.write_profiles({"ghost": {"argv": ["ccm-no-such-agent-binary", "{prompt}"],
                                       "mode": "headless"}})
        executor = self.start_executor()

        not_git = self.add_task("echo hi", project="plain")
        unknown = self.add_task("echo hi", agent="no-such-profile")
        ghost = self.add_task("echo hi", agent="ghost")
        for task_id, words in ((not_git, ["not a git repository", plain]),
                               (unknown, ["no-such-profile"]),
                               (ghost, ["not found in PATH", "ccm-no-such-agent-binary"])):
            task = self.wait_final(task_id)
            self.assertEqual(task["status"], "failed", task)
            for word in words:
                self.assertIn(word, task["status_reason"] or "", task)
            self.assertEqual(self.result(task_id)["status"], "failed")
            self.assertEvents(task_id, "queued", "assigned", "failed")
            self.assertFalse(self.agents(task_id), "an agent row for an agent never started")
        self.assertFalse(os.path.exists(os.path.join(plain, ".git")))
        self.assertAlive(executor)

        # tmux killed under a running agent.
        doomed = self.add_task("echo $$ > doomed.pid; exec sleep 300")
        self.wait_status(doomed, "executing")
        doomed_pid = self.read_pid(os.path.join(self.worktree_path(doomed), "doomed.pid"))
        self.assertEqual(self.tmux("kill-server").returncode, 0)
        task = self.wait_final(doomed)
        self.assertEqual(task["status"], "failed", task)
        self.assertEqual(self.result(doomed)["status"], "crashed")
        self.assertTrue(task["status_reason"], task)
        wait_for("the agent to die with its tmux server", lambda: not ccmtest.pid_alive(doomed_pid),
                 10)
        self.assertEqual([a["status"] for a in self.agents(doomed)], ["crashed"])
        self.assertAlive(executor, "after its tmux server was killed")

        after = self.add_task("echo still-working > after.txt")
        task = self.wait_final(after)
        self.assertEqual(task["status"], "complete", task)
        self.assertEqual(self.result(after)["files_changed"], ["after.txt"])
        self.assertAlive(executor)
        self.assertEqual(self.stop_executor(executor), 0, "the executor did not exit 0 on SIGTERM")

    def test_project_path_missing(self):
        """An executor holds no project whose path is missing here: routed,
        the task waits and says why; claimed directly, it fails naming the path."""
        missing = os.path.join(self.home.path, "vanished-project")
        self.home.ok("project.add", name="gone", path=missing)
        executor = self.start_executor()
        task_id = self.add_task("echo hi", project="gone")
        wait_for("the reason", lambda: self.home.query(
            "SELECT 1 FROM tasks WHERE id = ? AND status = 'queued' AND status_reason ="
            " 'no executor holds project gone'", task_id), 10, diagnose=self.diagnose)
        self.assertAlive(executor)
        self.stop_executor(executor)
        self.stop_executor(self.dispatcher)

        direct = self.start_executor({"CCM_EXECUTOR_DISPATCH": "direct"})
        task = self.wait_final(task_id, timeout=10)
        self.assertEqual(task["status"], "failed", task)
        self.assertIn(missing, task["status_reason"] or "", task)
        self.assertAlive(direct)


if __name__ == "__main__":
    ccmtest.main()

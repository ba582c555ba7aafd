"""One hub and two workers, each a host of its own: network namespaces made by
the test (`ip netns add` + veth pairs, private addresses inside them only),
each with its own CCM_HOME and CurveZMQ key (issue 8). A task submitted on the
hub for project P runs on the worker that holds P; its hook events and result
reach the hub's database. A worker whose link goes down for 20 s while its
agent runs delivers the result and every hook event exactly once after the
link comes back. Bounded in time; everything is torn down at the end.
"""

import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
import time
import unittest
import uuid

import ccmtest
import test_executor as tx

BIN = ccmtest.BIN_DIR
PORTS = {"CCM_STORE_ENDPOINT": 7101, "CCM_STORE_PUB_ENDPOINT": 7102,
         "CCM_ROUTER_ENDPOINT": 7103}


def sh(*args, check=True):
    done = subprocess.run(args, capture_output=True, text=True, timeout=20)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(args)}: {done.stderr}")
    return done


def netns_unavailable():
    """Why network namespaces cannot be made here, or None if they can."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        return "needs root and iproute2"
    probe = f"ccm-probe-{uuid.uuid4().hex[:6]}"
    done = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if done.returncode:
        return f"ip netns add failed here: {done.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


UNAVAILABLE = netns_unavailable()


@unittest.skipIf(UNAVAILABLE, UNAVAILABLE)
class TestHubAndWorkersInNamespaces(unittest.TestCase):

    def setUp(self):
        self.tag = uuid.uuid4().hex[:6]
        self.root = tempfile.mkdtemp(prefix="ccm-netns-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.procs = []
        self.netns = []
        self.addCleanup(self._teardown)
        self.ns_hub = self.namespace("hub")
        self.links = {}
        for i, name in ((1, "w1"), (2, "w2"), (3, "w3")):
            ns = self.namespace(name)
            hub_if, worker_if = f"ch{i}{self.tag}", f"cw{i}{self.tag}"
            sh("ip", "link", "add", hub_if, "type", "veth", "peer", "name", worker_if)
            sh("ip", "link", "set", hub_if, "netns", self.ns_hub)
            sh("ip", "link", "set", worker_if, "netns", ns)
            self.ip(self.ns_hub, "addr", "add", f"10.91.{i}.1/24", "dev", hub_if)
            self.ip(ns, "addr", "add", f"10.91.{i}.2/24", "dev", worker_if)
            self.ip(self.ns_hub, "link", "set", hub_if, "up")
            self.ip(ns, "link", "set", worker_if, "up")
            self.links[name] = (ns, worker_if)

    def namespace(self, name):
        ns = f"ccm-{name}-{self.tag}"
        sh("ip", "netns", "add", ns)
        self.netns.append(ns)
        self.ip(ns, "link", "set", "lo", "up")
        return ns

    def ip(self, ns, *args):
        return sh("ip", "-n", ns, *args)

    def _teardown(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for name in ("w1", "w2", "w3"):
            sock = os.path.join(self.root, name, "run", "tmux.sock")
            if os.path.exists(sock):
                subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True)
        for ns in self.netns:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    # ------------------------------------------------------------ hosts

    def home(self, name):
        path = os.path.join(self.root, name)
        os.makedirs(path, exist_ok=True)
        return path

    def env(self, home, host, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCM_")}
        env.update(tx.GIT_ENV)
        env.update({k: f"tcp://{host}:{port}" for k, port in PORTS.items()})
        env.update(CCM_HOME=home, CCM_BUS_TIMEOUT_MS="1000", CCM_BUS_RETRIES="1",
                   CCM_ROUTER_HEARTBEAT_MS="500", CCM_ROUTER_LIVENESS=str(self.liveness),
                   CCM_BUS_SERVER_KEY=os.path.join(self.root, "hub", "keys", "ccm.cert"))
        env.update(extra)
        return env

    def run_in(self, ns, binary, home, env):
        log = open(os.path.join(home, f"{binary}.log"), "ab")
        proc = subprocess.Popen(["ip", "netns", "exec", ns, os.path.join(BIN, binary)], env=env,
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=home)
        log.close()
        self.procs.append(proc)
        return proc

    def cli(self, ns, env, *args):
        done = subprocess.run(["ip", "netns", "exec", ns, os.path.join(BIN, "ccm"), *args],
                              capture_output=True, text=True, env=env, timeout=30)
        return done.returncode, done.stdout, done.stderr

    def query(self, sql, *args):
        with sqlite3.connect(os.path.join(self.root, "hub", "ccm.db"), timeout=10) as conn:
            return conn.execute(sql, args).fetchall()

    def log(self, home, binary):
        with open(os.path.join(home, f"{binary}.log"), encoding="utf-8", errors="replace") as f:
            return f.read()

    def cluster(self, liveness, holds):
        """Keys, the hub (store, router) and the workers (executor, hooks), each
        holding the projects holds[name] names; returns the hub's env and the
        workers' system ids."""
        self.liveness = liveness
        hub = self.home("hub")
        for name in ("hub", "w1", "w2"):
            rc, _, err = self.cli(self.ns_hub, {"CCM_HOME": self.home(name), "PATH":
                                                os.environ["PATH"]}, "keys", "gen")
            self.assertEqual(rc, 0, err)
        for name in ("w1", "w2"):
            self.cli(self.ns_hub, {"CCM_HOME": hub, "PATH": os.environ["PATH"]}, "keys",
                     "trust", os.path.join(self.root, name, "keys", "ccm.cert"), "--name", name)
        hub_env = self.env(hub, "0.0.0.0")
        self.run_in(self.ns_hub, "ccm-store", hub, hub_env)
        tx.wait_for("the hub's store", lambda: "ready" in self.log(hub, "ccm-store"), 15)
        self.run_in(self.ns_hub, "ccm-router", hub, hub_env)
        self.run_in(self.ns_hub, "ccm-gateway", hub, dict(hub_env, CCM_GATEWAY_PORT="0"))

        repos = {}
        for project in ("p", "q", "r"):
            repos[project] = os.path.join(self.root, "repos", project)
            os.makedirs(repos[project])
            tx.git(repos[project], "init", "-q", "-b", "main")
            tx.git(repos[project], "commit", "-q", "--allow-empty", "-m", "initial")
            rc, _, err = self.cli(self.ns_hub, hub_env, "project", "add", project,
                                  repos[project])
            self.assertEqual(rc, 0, err)
        workers = {}
        self.executors = {}
        for i, name in enumerate(("w1", "w2"), 1):
            # Each machine its own clone, as on real hosts.
            projects = []
            for project in holds[name].split(","):
                clone = os.path.join(self.root, name, "src", project)
                tx.git(self.root, "clone", "-q", repos[project], clone)
                projects.append(f"{project}={clone}")
            projects = ",".join(projects)
            home = self.home(name)
            wenv = self.env(home, f"10.91.{i}.1", CCM_EXECUTOR_MACHINE_ID=f"{name}-{self.tag}",
                            CCM_EXECUTOR_HOSTNAME=name, CCM_EXECUTOR_PROJECTS=projects,
                            CCM_EXECUTOR_POLL_MS="100",
                            CCM_EXECUTOR_TMUX_SOCKET=os.path.join(home, "run", "tmux.sock"))
            ns = self.links[name][0]
            self.executors[name] = (self.run_in(ns, "ccm-executor", home, wenv), wenv)
            self.run_in(ns, "ccm-hooks", home, wenv)
            workers[name] = tx.wait_for(f"{name} registered", lambda name=name: self.query(
                "SELECT id FROM systems WHERE hostname = ? AND status = 'online'", name), 20)[0][0]
        return hub_env, workers

    def diagnose(self, task):
        events = self.query("SELECT event_type, event_data FROM task_events WHERE task_id = ?"
                            " ORDER BY rowid", task)
        logs = "\n".join(f"--- {name}/{binary}\n" + self.log(self.home(name), binary)[-1500:]
                         for name, binary in (("hub", "ccm-router"), ("w1", "ccm-executor"),
                                              ("w2", "ccm-executor")))
        return f"events: {events}\n{logs}"

    def gateway_systems(self):
        """The hub's gateway's systems snapshot, asked from inside the hub's
        namespace (the gateway listens on its loopback)."""
        with open(os.path.join(self.root, "hub", "run", "gateway.url")) as f:
            url = f.read().strip().replace("http://", "ws://") + "ws"
        script = (
            "import asyncio, json, sys, websockets\n"
            "async def main():\n"
            "    async with websockets.connect(sys.argv[1], subprotocols=['ccm.v1']) as ws:\n"
            "        await ws.send(json.dumps({'id': 1, 'cmd': 'systems'}))\n"
            "        while True:\n"
            "            frame = json.loads(await ws.recv())\n"
            "            if frame.get('type') == 'reply':\n"
            "                print(json.dumps(frame['result']['systems']))\n"
            "                return\n"
            "asyncio.run(asyncio.wait_for(main(), 15))\n")
        done = subprocess.run(["ip", "netns", "exec", self.ns_hub, "/usr/bin/python3", "-c",
                               script, url], capture_output=True, text=True, timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr)
        return {s["hostname"]: s for s in json.loads(done.stdout)}

    def stranger(self, hub, hub_env):
        """A third host with a key the hub does not trust cannot register,
        submit or subscribe; nor can a plain (non-CURVE) client; the hub logs
        both refusals with the stranger's address."""
        home = self.home("w3")
        self.cli(self.ns_hub, {"CCM_HOME": home, "PATH": os.environ["PATH"]}, "keys", "gen")
        ns = self.links["w3"][0]
        env = self.env(home, "10.91.3.1", CCM_EXECUTOR_MACHINE_ID=f"w3-{self.tag}",
                       CCM_EXECUTOR_HOSTNAME="w3",
                       CCM_EXECUTOR_TMUX_SOCKET=os.path.join(home, "run", "tmux.sock"))
        follow = subprocess.Popen(["ip", "netns", "exec", ns, os.path.join(BIN, "ccm"), "events",
                                   "--follow"], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE)
        self.procs.append(follow)
        self.run_in(ns, "ccm-executor", home, env)
        rc, _, err = self.cli(ns, env, "task", "add", "--", "from a stranger")
        self.assertEqual(rc, 1)
        self.assertIn("no answer from the store at tcp://10.91.3.1:7101", err)
        plain = subprocess.run(
            ["ip", "netns", "exec", ns, "/usr/bin/python3", "-c",
             "import zmq, sys; s = zmq.Context().socket(zmq.DEALER); s.setsockopt(zmq.LINGER, 0);"
             " s.connect('tcp://10.91.3.1:7101'); s.send_multipart([b'', b'ping', b'{\"v\":1}']);"
             " sys.exit(3 if s.poll(2000) else 0)"], capture_output=True, timeout=20)
        self.assertEqual(plain.returncode, 0, "a plain client got an answer")
        self.add(hub_env, "p", "true")  # an event the stranger must not see
        time.sleep(3)
        follow.terminate()
        seen, _ = follow.communicate(timeout=10)
        self.assertEqual(seen, b"", "the stranger's subscription got events")
        self.assertEqual(self.query("SELECT count(*) FROM systems WHERE hostname = 'w3'"),
                         [(0,)])
        self.assertEqual(self.query("SELECT count(*) FROM tasks WHERE prompt ="
                                    " 'from a stranger'"), [(0,)])
        self.assertIn("cannot register with the store at tcp://10.91.3.1:7101",
                      self.log(home, "ccm-executor"))
        log = self.log(hub, "ccm-store")
        self.assertIn("ZAP request mechanism=CURVE ipaddress=10.91.3.2", log)
        with open(os.path.join(home, "keys", "ccm.cert")) as f:
            key = [line.split('"')[1] for line in f if "public-key" in line][0]
        self.assertIn(f"denied (CURVE) client_key={key}", log)
        refusals = [line for line in log.splitlines() if "refused a peer on" in line]
        self.assertTrue(any("not a CURVE client" in line or "a plain client" in line
                            for line in refusals), "\n".join(refusals))

    def add(self, hub_env, project, script):
        rc, task, err = self.cli(self.ns_hub, hub_env, "task", "add", "--project", project,
                                 "--agent", "shell", "--", script)
        self.assertEqual(rc, 0, err)
        return task.strip()

    def test_tasks_cross_hosts_and_survive_a_partition(self):
        # Liveness 80 beats of 500 ms: a 20 s cut is no loss of an executor.
        hub_env, workers = self.cluster(80, {"w1": "p", "w2": "q"})

        # A task for p runs on w1, the only holder of p; q's on w2.
        out = self.root
        ids = {}
        for project in ("p", "q"):
            rc, task, err = self.cli(self.ns_hub, hub_env, "task", "add", "--project", project,
                                     "--agent", "shell", "--",
                                     f"echo $CCM_SYSTEM_ID > {out}/ran-{project}")
            self.assertEqual(rc, 0, err)
            ids[project] = task.strip()
        for project, name in (("p", "w1"), ("q", "w2")):
            tx.wait_for(f"task {project} complete", lambda project=project: self.query(
                "SELECT 1 FROM tasks WHERE id = ? AND status = 'complete'", ids[project]), 30)
            with open(f"{out}/ran-{project}") as f:
                self.assertEqual(f.read().strip(), workers[name])
            path, system = self.query("SELECT worktree_path, system_id FROM task_worktrees"
                                      " WHERE task_id = ?", ids[project])[0]
            self.assertTrue(path.startswith(os.path.join(self.root, name) + "/"),
                            f"{path}: not in {name}'s own worktrees")
            self.assertEqual(system, workers[name])
        rc, shown, err = self.cli(self.ns_hub, hub_env, "systems", "--json")
        self.assertEqual(sorted((s["hostname"], s["status"]) for s in json.loads(shown)),
                         [("w1", "online"), ("w2", "online")])
        shown = self.gateway_systems()
        self.assertEqual({name: shown[name]["status"] for name in shown},
                         {"w1": "online", "w2": "online"}, "the hub's gateway shows both")
        self.assertEqual(shown["w1"]["id"], workers["w1"])
        self.stranger(self.home("hub"), hub_env)

        # A partition of 20 s while an agent runs and sends hook events.
        gate = os.path.join(self.root, "gate")
        hook = os.path.join(BIN, "ccm-hook")
        event = json.dumps({"hook_event_name": "PostToolUse", "tool_name": "Bash",
                            "session_id": "netns", "tool_input": {"command": "true"}})
        script = (f"while [ ! -e {gate} ]; do sleep 0.1; done; "
                  f"for i in 1 2 3 4 5; do echo '{event}' | {hook}; done; echo done")
        rc, task, err = self.cli(self.ns_hub, hub_env, "task", "add", "--project", "p",
                                 "--agent", "shell", "--", script)
        task = task.strip()
        tx.wait_for("the task executing", lambda: self.query(
            "SELECT 1 FROM tasks WHERE id = ? AND status = 'executing'", task), 30)
        ns, link = self.links["w1"]
        self.ip(ns, "link", "set", link, "down")
        cut = time.monotonic()
        open(gate, "w").close()  # the agent sends its events and ends, offline
        # Its result is kept on disk; the executor restarts meanwhile, and the
        # new one sends what the old one kept.
        outbox = os.path.join(self.home("w1"), "run", "executor-outbox")
        def kept():
            if not os.path.exists(outbox):
                return False
            with open(outbox) as f:
                return "task.transition\t" in f.read()
        tx.wait_for("the result kept on disk", kept, 15)
        self.assertEqual(os.stat(outbox).st_mode & 0o777, 0o600)
        old, wenv = self.executors["w1"]
        old.terminate()
        self.assertEqual(old.wait(15), 0)
        self.run_in(ns, "ccm-executor", self.home("w1"), wenv)
        time.sleep(max(0.0, 20 - (time.monotonic() - cut)))
        self.assertEqual(self.query("SELECT status FROM tasks WHERE id = ?", task),
                         [("executing",)], "nothing reached the hub during the partition")
        self.assertEqual(self.query("SELECT count(*) FROM hook_events WHERE task_id = ?", task),
                         [(0,)])
        self.ip(ns, "link", "set", link, "up")
        tx.wait_for("the result after the link came back", lambda: self.query(
            "SELECT 1 FROM tasks WHERE id = ? AND status = 'complete'", task), 60,
            diagnose=lambda: self.diagnose(task))
        tx.wait_for("every hook event", lambda: self.query(
            "SELECT count(*) FROM hook_events WHERE task_id = ?", task)[0][0] >= 5, 60)
        time.sleep(2)  # and nothing more arrives
        self.assertEqual(self.query("SELECT count(*), count(DISTINCT uid) FROM hook_events"
                                    " WHERE task_id = ?", task), [(5, 5)], "each event once")
        self.assertEqual(self.query("SELECT count(*) FROM task_results WHERE task_id = ?", task),
                         [(1,)], "one result")
        self.assertEqual(self.query("SELECT attempts FROM tasks WHERE id = ?", task), [(1,)],
                         "it ran once")
        self.assertLess(time.monotonic() - cut, 120)
        log = self.log(self.home("w1"), "ccm-executor")
        self.assertIn("the store has not answered task.transition", log,
                      "the result was held back while the hub was away")
        self.assertIn("task.transition, kept while the store was away, is recorded", log)
        self.assertIn("kept in", log)
        self.assertFalse(os.path.exists(outbox), "nothing left to send")

    def test_a_lost_worker_is_fenced_and_its_task_runs_elsewhere_once(self):
        # Liveness 6 beats of 500 ms: the router gives w1 up after 3 s; w1,
        # unable to reach the hub, stops its agent a beat before.
        hub_env, workers = self.cluster(6, {"w1": "r", "w2": "r"})
        runs = os.path.join(self.root, "runs")
        # The first run (on w1, pinned by its lower load... either way, the one
        # we cut) notes its start, then works for 8 s; a later run ends at once.
        script = (f"echo $CCM_SYSTEM_ID >> {runs}; "
                  f"if [ $(wc -l < {runs}) -lt 2 ]; then sleep 8; fi; "
                  f"echo $CCM_SYSTEM_ID-finished >> {runs}")
        task = self.add(hub_env, "r", script)
        tx.wait_for("the first run", lambda: os.path.exists(runs), 30)
        with open(runs) as f:
            first = f.read().split()[0]
        name = "w1" if first == workers["w1"] else "w2"
        other = workers["w2" if name == "w1" else "w1"]
        ns, link = self.links[name]
        self.ip(ns, "link", "set", link, "down")
        tx.wait_for("the task requeued and run on the other worker", lambda: self.query(
            "SELECT 1 FROM tasks WHERE id = ? AND status = 'complete'", task), 40,
            diagnose=lambda: self.diagnose(task))
        shown = self.gateway_systems()
        self.assertEqual(shown[name]["status"], "offline", "the gateway shows the cut worker")
        self.assertTrue(shown[name]["last_seen"], "offline since its last heartbeat")
        time.sleep(10)  # longer than the first run would have taken
        self.ip(ns, "link", "set", link, "up")
        tx.wait_for(f"{name} back online", lambda: self.query(
            "SELECT 1 FROM systems WHERE id = ? AND status = 'online'", workers[name]), 30)
        time.sleep(2)
        with open(runs) as f:
            self.assertEqual(f.read().split(), [first, other, f"{other}-finished"],
                             "the cut-off run was stopped before the task ran elsewhere")
        self.assertEqual(self.query("SELECT status, attempts FROM tasks WHERE id = ?", task),
                         [("complete", 2)])
        self.assertEqual(self.query("SELECT count(*) FROM task_results WHERE task_id = ?", task),
                         [(1,)], "the fenced run recorded nothing")
        self.assertIn("its agent is stopped so that the task never runs twice",
                      self.log(self.home(name), "ccm-executor"))


if __name__ == "__main__":
    ccmtest.main()

"""The example configs of deploy/ (deploy/config/hub.json, worker.json), loaded by
the real binaries so that they cannot rot: each is copied into a CCM_HOME with
only its addresses moved to loopback ports, `ccm config` must accept it and
show its values, then a hub (`ccm up --role hub`) and two workers (`ccm up
--role worker`) run from them, with keys made and exchanged as
deploy/README.md says. A task submitted on the hub for each worker's project
runs on that worker (its CCM_SYSTEM_ID), and a hook event sent from inside the
task by ccm-hook travels through the worker's ccm-hooks into the hub's
database, over CurveZMQ.
"""

import json
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import unittest

import ccmtest
import test_executor as tx

BIN = ccmtest.BIN_DIR
SRC = ccmtest.SOURCE_DIR
EXAMPLES = os.path.join(SRC, "deploy", "config")
# The hub's address and ports in the examples, as deploy/README.md uses them.
HUB_ADDRESS = "10.0.0.1"
PORTS = ("7101", "7102", "7103")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TestDeployExamples(unittest.TestCase):

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="ccm-deploy-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.ports = {p: str(free_port()) for p in PORTS}
        self.homes = []
        self.addCleanup(self._stop)

    def _stop(self):
        for home in reversed(self.homes):
            self.cli(home, "down", timeout=30)
            sock = os.path.join(home, "run", "tmux.sock")
            if os.path.exists(sock):
                subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True)

    def env(self, home):
        # Nothing from the environment: the config file alone decides.
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCM_")}
        env.update(tx.GIT_ENV, CCM_HOME=home)
        return env

    def cli(self, home, *args, timeout=20):
        done = subprocess.run([os.path.join(BIN, "ccm"), *args], capture_output=True, text=True,
                              env=self.env(home), timeout=timeout)
        return done.returncode, done.stdout, done.stderr

    def ok(self, home, *args, timeout=20):
        rc, out, err = self.cli(home, *args, timeout=timeout)
        self.assertEqual(rc, 0, f"ccm {' '.join(args)}: {err}")
        return out

    def install(self, example, name, extra=None):
        """A home whose config.json is the example with its addresses moved to
        loopback (and extra settings merged in); returns (home, loaded example)."""
        home = os.path.join(self.root, name)
        os.makedirs(home, mode=0o700)
        self.homes.append(home)
        with open(os.path.join(EXAMPLES, example)) as f:
            text = f.read()
        example_json = json.loads(text)
        endpoints = re.findall(r'"tcp://([^"]+)"', text)
        self.assertTrue(endpoints, f"{example} sets no tcp:// endpoint")
        for endpoint in endpoints:
            host, port = endpoint.rsplit(":", 1)
            self.assertEqual(host, HUB_ADDRESS, f"{example}: {endpoint} is not the hub")
            self.assertIn(port, PORTS, f"{example}: port {port} is not in deploy/README.md")
            text = text.replace(f"tcp://{endpoint}", f"tcp://127.0.0.1:{self.ports[port]}")
        config = json.loads(text)
        for dotted, value in (extra or {}).items():
            section, key = dotted.split(".", 1)
            config.setdefault(section, {})[key] = value
        with open(os.path.join(home, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        return home, example_json

    def config(self, home):
        return json.loads(self.ok(home, "config", "--json"))

    def assert_loaded(self, home, example, overridden=()):
        """Every setting of the example is what `ccm config` shows (addresses
        moved), but those the test overrode."""
        shown = self.config(home)
        for section, values in example.items():
            for key, value in (values.items() if isinstance(values, dict) else [(None, values)]):
                name = f"{section}.{key}" if key else section
                if name in overridden:
                    continue
                want = str(value).replace("{home}", home)
                for port in PORTS:
                    want = want.replace(f"{HUB_ADDRESS}:{port}", f"127.0.0.1:{self.ports[port]}")
                self.assertEqual(shown[name], want, f"{name} of the example")

    def query(self, hub, sql, *args):
        with sqlite3.connect(os.path.join(hub, "ccm.db")) as conn:
            return conn.execute(sql, args).fetchall()

    def test_hub_and_two_workers_from_the_examples(self):
        hub, hub_example = self.install("hub.json", "hub")
        workers = {}
        for name, project in (("alpha", "web"), ("beta", "api")):
            home, worker_example = self.install("worker.json", name, {
                "executor.machine_id": f"{name}-machine", "executor.hostname": name,
                "executor.projects": project, "executor.poll_ms": 100})
            workers[name] = (home, project)

        # Keys, as the walkthrough says: each machine makes its own; the hub
        # trusts each worker's public certificate; each worker gets the hub's.
        self.ok(hub, "keys", "gen")
        for name, (home, _) in workers.items():
            self.ok(home, "keys", "gen")
            self.ok(hub, "keys", "trust", os.path.join(home, "keys", "ccm.cert"), "--name", name)
            shutil.copy(os.path.join(hub, "keys", "ccm.cert"),
                        os.path.join(home, "keys", "hub.cert"))
        listed = json.loads(self.ok(hub, "keys", "list", "--json"))
        self.assertEqual(len(listed["trusted"]), 3, "the hub trusts itself and two workers")

        # `ccm config` accepts each example and shows its values.
        self.assert_loaded(hub, hub_example)
        for home, _ in workers.values():
            self.assert_loaded(home, worker_example, ("executor.projects",))
        self.assertTrue(self.config(hub)["store.endpoint"].startswith("tcp://127.0.0.1:"))

        out = self.ok(hub, "up", "--role", "hub", "--detach", timeout=30)
        self.assertIn("ccm is up", out)
        repos = {}
        for name, (home, project) in workers.items():
            repo = os.path.join(self.root, f"repo-{project}")
            os.makedirs(repo)
            tx.git(repo, "init", "-q", "-b", "main")
            tx.git(repo, "commit", "-q", "--allow-empty", "-m", "initial commit")
            self.ok(hub, "project", "add", project, repo)
            repos[name] = repo
            out = self.ok(home, "up", "--role", "worker", "--detach", timeout=30)
            self.assertIn("ccm is up (worker)", out)

        def online():
            rows = json.loads(self.cli(hub, "systems", "--json")[1] or "[]")
            return {s["hostname"]: s["id"] for s in rows if s["status"] == "online"
                    and s["hostname"] in workers}
        systems = tx.wait_for("both workers online at the hub", lambda: len(online()) == 2
                              and online(), 30)
        keys = dict(self.query(hub, "SELECT hostname, public_key FROM systems"))
        for name, (home, _) in workers.items():
            with open(os.path.join(home, "keys", "ccm.cert")) as f:
                self.assertIn(keys[name], f.read(), f"{name} is bound to its own key")

        hook = os.path.join(BIN, "ccm-hook")
        tasks = {}
        for name, (home, project) in workers.items():
            mark = os.path.join(self.root, f"ran-{name}")
            event = json.dumps({"hook_event_name": "Notification", "session_id": f"s-{name}",
                                "message": f"hello from {name}"})
            command = (f"echo $CCM_SYSTEM_ID > {mark} && echo '{event}' | {hook} ")
            task = self.ok(hub, "task", "add", "--project", project, "--agent", "shell", "--",
                           command).strip()
            tasks[name] = (task, mark)
        for name, (task, mark) in tasks.items():
            tx.wait_for(f"{name}'s task complete", lambda: self.query(
                hub, "SELECT 1 FROM tasks WHERE id = ? AND status = 'complete'", task), 60,
                diagnose=lambda: self.query(hub, "SELECT id, status FROM tasks"))
            with open(mark) as f:
                self.assertEqual(f.read().strip(), systems[name],
                                 f"the {workers[name][1]} task ran on {name}")
            rows = tx.wait_for(f"{name}'s hook event in the hub's database", lambda: self.query(
                hub, "SELECT hook_type, event_data, system_id FROM hook_events WHERE task_id = ?", task), 30)
            self.assertEqual(len(rows), 1, rows)
            self.assertEqual(rows[0][0], "Notification")
            self.assertEqual(json.loads(rows[0][1])["message"], f"hello from {name}")
            self.assertEqual(rows[0][2], systems[name], "the event names its worker")


if __name__ == "__main__":
    ccmtest.main()

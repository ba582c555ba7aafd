"""bus.curve=off, the knob bench/tcp uses to measure what CurveZMQ costs: plain
tcp:// works on loopback only (a hub and a worker without any key run a task
end to end), and every service refuses to start with it on any other address,
or with a value that is neither on nor off.
"""

import os
import sqlite3
import subprocess

import ccmtest
import test_curve
import test_executor as tx

BIN = ccmtest.BIN_DIR


class TestPlainTcp(test_curve.CurveTestCase):

    def refused(self, binary, env, words):
        proc = subprocess.run([os.path.join(BIN, binary)], env=env, capture_output=True,
                              text=True, timeout=20)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn(words, proc.stderr)

    def test_refused_off_loopback(self):
        home = self.home("hub")
        self.keys(home)
        for key, endpoint in (("STORE_ENDPOINT", "tcp://10.0.0.1:7101"),
                              ("STORE_PUB_ENDPOINT", "tcp://0.0.0.0:7102"),
                              ("ROUTER_ENDPOINT", "tcp://hub.example:7103"),
                              ("STORE_ENDPOINT", "tcp://127.0.0.1:0;10.0.0.1:7101")):
            env = self.env(home, CCM_BUS_CURVE="off", **{f"CCM_{key}": endpoint})
            name = key.lower().replace("_", ".", 1)
            for binary in ("ccm-store", "ccm-router", "ccm-executor", "ccm-hooks"):
                with self.subTest(binary=binary, endpoint=endpoint):
                    self.refused(binary, env, f"bus.curve=off is for benchmarks on loopback only,"
                                 f" and {name} is {endpoint}")
        self.refused("ccm-store", self.env(home, CCM_BUS_CURVE="none"),
                     "bus.curve: must be on or off, not 'none'")
        self.assertFalse(os.path.exists(os.path.join(home, "ccm.db")), "no store ever started")

    def test_plain_on_loopback_runs_a_task(self):
        hub, worker = self.home("hub"), self.home("worker")  # no keys at all
        hub_env = self.env(hub, CCM_BUS_CURVE="off", CCM_ROUTER_HEARTBEAT_MS="500")
        self.start("ccm-store", hub, hub_env)
        tx.wait_for("the store", lambda: "ready" in self.log(hub, "ccm-store"), 15)
        self.start("ccm-router", hub, hub_env)
        tx.wait_for("the router", lambda: "ready" in self.log(hub, "ccm-router"), 15)
        repo = os.path.join(self.root, "web")
        os.makedirs(repo)
        tx.git(repo, "init", "-q", "-b", "main")
        tx.git(repo, "commit", "-q", "--allow-empty", "-m", "initial commit")
        rc, _, err = self.cli(hub, "project", "add", "web", repo, env=hub_env)
        self.assertEqual(rc, 0, err)
        wenv = dict(self.worker_env(worker, "worker"), CCM_BUS_CURVE="off",
                    CCM_BUS_SERVER_KEY="")
        self.start("ccm-executor", worker, wenv)
        out = os.path.join(self.root, "ran")
        rc, task, err = self.cli(hub, "task", "add", "--project", "web", "--agent", "shell",
                                 "--", f"echo plain > {out}", env=hub_env)
        self.assertEqual(rc, 0, err)

        def status():
            with sqlite3.connect(os.path.join(hub, "ccm.db")) as conn:
                return conn.execute("SELECT status FROM tasks WHERE id = ?",
                                    (task.strip(),)).fetchone()
        tx.wait_for("the task complete", lambda: status() == ("complete",), 30,
                    diagnose=lambda: (status(), self.log(worker, "ccm-executor")[-2000:]))
        with open(out) as f:
            self.assertEqual(f.read(), "plain\n")


if __name__ == "__main__":
    ccmtest.main()

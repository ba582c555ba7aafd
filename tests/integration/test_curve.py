"""CurveZMQ between machines (issue 8), on loopback: a hub (store, router)
and workers (executor) each with its own CCM_HOME and its own key, talking
over tcp://. `ccm keys gen/trust/list`; a trusted worker runs a task end to
end; an untrusted key and a plain (non-CURVE) client are refused, logged with
the peer's address and counted; a trusted worker cannot speak for another's
system; bad certificates and keys stop a service at start with a clear error.
"""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import unittest

import ccmtest
import test_executor as tx

BIN = ccmtest.BIN_DIR


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CurveTestCase(unittest.TestCase):

    def setUp(self):
        self.root = tempfile.mkdtemp(prefix="ccm-curve-")
        self.addCleanup(shutil.rmtree, self.root, True)
        self.procs = []
        self.addCleanup(self._stop)
        ports = [free_port() for _ in range(3)]
        self.endpoints = {
            "CCM_STORE_ENDPOINT": f"tcp://127.0.0.1:{ports[0]}",
            "CCM_STORE_PUB_ENDPOINT": f"tcp://127.0.0.1:{ports[1]}",
            "CCM_ROUTER_ENDPOINT": f"tcp://127.0.0.1:{ports[2]}",
        }

    def _stop(self):
        for proc, _ in self.procs:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)
        for name in os.listdir(self.root):
            sock = os.path.join(self.root, name, "run", "tmux.sock")
            if os.path.exists(sock):
                subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True)

    def home(self, name):
        path = os.path.join(self.root, name)
        os.makedirs(path, exist_ok=True)
        return path

    def env(self, home, **extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("CCM_")}
        env.update(tx.GIT_ENV)
        env.update(CCM_HOME=home, CCM_BUS_TIMEOUT_MS="1000", CCM_BUS_RETRIES="1",
                   **self.endpoints)
        env.update(extra)
        return env

    def cli(self, home, *args, env=None, timeout=20):
        done = subprocess.run([os.path.join(BIN, "ccm"), *args], capture_output=True, text=True,
                              env=env or self.env(home), timeout=timeout)
        return done.returncode, done.stdout, done.stderr

    def keys(self, home):
        rc, out, err = self.cli(home, "keys", "gen")
        self.assertEqual(rc, 0, err)
        return out.split()[2]  # "public key  KEY"

    def start(self, binary, home, env=None):
        log = open(os.path.join(home, f"{binary}.log"), "ab")
        proc = subprocess.Popen([os.path.join(BIN, binary)], env=env or self.env(home),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, cwd=home)
        log.close()
        self.procs.append((proc, os.path.join(home, f"{binary}.log")))
        return proc

    def log(self, home, binary):
        with open(os.path.join(home, f"{binary}.log"), encoding="utf-8", errors="replace") as f:
            return f.read()

    def start_hub(self):
        hub = self.home("hub")
        self.hub_key = self.keys(hub)
        hub_env = self.env(hub, CCM_BUS_SERVER_KEY=os.path.join(hub, "keys", "ccm.cert"),
                           CCM_ROUTER_HEARTBEAT_MS="500")
        self.start("ccm-store", hub, hub_env)
        tx.wait_for("the hub's store", lambda: self.cli(hub, "status", env=hub_env)[0] == 0
                    or "ready" in self.log(hub, "ccm-store"), 15)
        self.start("ccm-router", hub, hub_env)
        tx.wait_for("the hub's router", lambda: "ready" in self.log(hub, "ccm-router"), 15)
        return hub, hub_env

    def worker_env(self, worker, name):
        return self.env(worker, CCM_BUS_SERVER_KEY=os.path.join(self.root, "hub", "keys",
                                                                "ccm.cert"),
                        CCM_EXECUTOR_MACHINE_ID=f"{name}-machine", CCM_EXECUTOR_HOSTNAME=name,
                        CCM_EXECUTOR_POLL_MS="100", CCM_ROUTER_HEARTBEAT_MS="500",
                        CCM_EXECUTOR_TMUX_SOCKET=os.path.join(worker, "run", "tmux.sock"))


class TestKeys(CurveTestCase):

    def test_gen_trust_list(self):
        hub, peer = self.home("hub"), self.home("peer")
        key = self.keys(hub)
        self.assertEqual(len(key), 40)
        cert = os.path.join(hub, "keys", "ccm.cert")
        self.assertEqual(os.stat(cert + "_secret").st_mode & 0o777, 0o600)
        with open(cert) as f:
            text = f.read()
        self.assertIn(key, text)
        self.assertNotIn("secret-key", text, "the public file holds no secret")
        rc, _, err = self.cli(hub, "keys", "gen")
        self.assertEqual(rc, 1)
        self.assertIn("exists; 'ccm keys gen --force' replaces it", err)

        peer_key = self.keys(peer)
        rc, out, err = self.cli(hub, "keys", "trust", os.path.join(peer, "keys", "ccm.cert"),
                                "--name", "peer")
        self.assertEqual(rc, 0, err)
        trusted = os.path.join(hub, "keys", "trusted", "peer.cert")
        with open(trusted) as f:
            text = f.read()
        self.assertIn(peer_key, text)
        self.assertNotIn("secret", text, "only the public part is kept")
        rc, out, err = self.cli(hub, "keys", "list", "--json")
        listed = json.loads(out)
        self.assertEqual(listed["this_machine"]["public_key"], key)
        self.assertEqual(sorted(t["public_key"] for t in listed["trusted"]),
                         sorted([key, peer_key]), "a machine trusts itself and its peers")

        garbage = os.path.join(self.root, "garbage.cert")
        with open(garbage, "w") as f:
            f.write("not a certificate\n")
        for bad in (garbage, os.path.join(self.root, "missing.cert")):
            rc, _, err = self.cli(hub, "keys", "trust", bad)
            self.assertEqual(rc, 1)
            self.assertIn("is not a ZeroMQ certificate", err)
        rc, _, err = self.cli(hub, "keys", "trust", cert, "--name", "../escape")
        self.assertEqual(rc, 1)
        self.assertIn("is not a plain file name", err)


class TestHubAndWorkers(CurveTestCase):

    def test_trusted_worker_runs_and_strangers_are_refused(self):
        hub, hub_env = self.start_hub()
        worker = self.home("worker")
        worker_key = self.keys(worker)
        rc, _, err = self.cli(hub, "keys", "trust", os.path.join(worker, "keys", "ccm.cert"),
                              "--name", "worker")
        self.assertEqual(rc, 0, err)
        repo = os.path.join(self.root, "web")
        os.makedirs(repo)
        tx.git(repo, "init", "-q", "-b", "main")
        tx.git(repo, "commit", "-q", "--allow-empty", "-m", "initial commit")
        rc, _, err = self.cli(hub, "project", "add", "web", repo, env=hub_env)
        self.assertEqual(rc, 0, err)
        wenv = self.worker_env(worker, "worker")
        self.start("ccm-executor", worker, wenv)
        db = os.path.join(hub, "ccm.db")

        def query(sql, *args):
            import sqlite3
            with sqlite3.connect(db) as conn:
                return conn.execute(sql, args).fetchall()

        rows = tx.wait_for("the worker registered over CURVE", lambda: query(
            "SELECT id, public_key FROM systems WHERE machine_id = 'worker-machine'"), 15)
        system, key = rows[0]
        self.assertEqual(key, worker_key, "the system is bound to the key that registered it")

        # A task submitted on the hub runs on the worker, its result in the hub's database.
        out = os.path.join(self.root, "ran")
        rc, task, err = self.cli(hub, "task", "add", "--project", "web", "--agent", "shell",
                                 "--", f"echo $CCM_SYSTEM_ID > {out}", env=hub_env)
        self.assertEqual(rc, 0, err)
        task = task.strip()
        tx.wait_for("the task complete", lambda: query(
            "SELECT 1 FROM tasks WHERE id = ? AND status = 'complete'", task), 30)
        with open(out) as f:
            self.assertEqual(f.read().strip(), system)
        self.assertEqual(query("SELECT status, exit_code FROM task_results WHERE task_id = ?",
                               task), [("complete", 0)])

        # A stranger's key: refused, logged with its address and key, counted.
        rogue = self.home("rogue")
        rogue_key = self.keys(rogue)
        rc, _, err = self.cli(rogue, "task", "add", "--", "evil",
                              env=self.worker_env(rogue, "rogue"))
        self.assertNotEqual(rc, 0)
        self.assertIn("no answer from the store", err)
        tx.wait_for("the refusal logged", lambda: "refused a peer on" in self.log(
            hub, "ccm-store"), 10)
        log = self.log(hub, "ccm-store")
        self.assertIn(f"denied (CURVE) client_key={rogue_key}", log)
        self.assertIn("ZAP request mechanism=CURVE ipaddress=127.0.0.1", log)
        self.assertIn(f"refused a peer on {self.endpoints['CCM_STORE_ENDPOINT']}: its key is"
                      " not trusted", log)

        # A plain (non-CURVE) client gets nothing, and is logged too.
        import zmq
        before = self.log(hub, "ccm-store").count("refused a peer on")
        ctx = zmq.Context.instance()
        plain = ctx.socket(zmq.DEALER)
        plain.setsockopt(zmq.LINGER, 0)
        plain.connect(self.endpoints["CCM_STORE_ENDPOINT"])
        plain.send_multipart([b"", b"ping", b'{"v":1}'])
        self.assertEqual(plain.poll(1500), 0, "a plain client got an answer")
        plain.close()
        tx.wait_for("the plain client logged", lambda: self.log(hub, "ccm-store").count(
            "refused a peer on") > before, 10, diagnose=lambda: self.log(hub, "ccm-store")[-3000:])
        self.assertRegex(self.log(hub, "ccm-store"), r"refused a peer on tcp://127\.0\.0\.1:\d+: "
                         r"(not a CURVE client|the handshake failed \(a plain client)")
        self.assertEqual(query("SELECT count(*) FROM tasks WHERE prompt = 'evil'"), [(0,)])

        # A trusted peer cannot speak for another machine's system.
        other = self.home("other")
        self.keys(other)
        self.cli(hub, "keys", "trust", os.path.join(other, "keys", "ccm.cert"), "--name",
                 "other")
        oenv = self.worker_env(other, "other")
        probe = subprocess.run(
            [os.path.join(BIN, "ccm"), "systems", "--json"], capture_output=True, text=True,
            env=oenv, timeout=20)
        self.assertEqual(probe.returncode, 0, probe.stderr)  # trusted: it may read
        impostor = self.start("ccm-executor", other, dict(oenv,
                              CCM_EXECUTOR_MACHINE_ID="worker-machine"))
        tx.wait_for("the impostor refused", lambda: "belongs to another key" in self.log(
            other, "ccm-executor") or impostor.poll() is not None, 15)
        self.assertIn(f"system_id: system {system} belongs to another key", self.log(
            other, "ccm-executor"))
        self.assertEqual(query("SELECT public_key FROM systems WHERE id = ?", system),
                         [(worker_key,)])
        # The hub is still up and serving its worker.
        rc, task2, err = self.cli(hub, "task", "add", "--project", "web", "--agent", "shell",
                                  "--", "true", env=hub_env)
        tx.wait_for("a second task complete", lambda: query(
            "SELECT 1 FROM tasks WHERE id = ? AND status = 'complete'", task2.strip()), 30)


class TestRoles(CurveTestCase):

    def comms(self, home):
        """The names of the live processes whose environment has this CCM_HOME."""
        tag = f"CCM_HOME={home}\0".encode()
        names = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                with open(f"/proc/{pid}/environ", "rb") as f:
                    if tag not in f.read() + b"\0":
                        continue
                with open(f"/proc/{pid}/comm") as f:
                    names.append(f.read().strip())
            except OSError:
                pass
        return sorted(set(names))

    def test_up_hub_and_worker(self):
        hub, worker = self.home("hub"), self.home("worker")
        self.keys(hub)
        self.keys(worker)
        self.cli(hub, "keys", "trust", os.path.join(worker, "keys", "ccm.cert"))
        hub_env = self.env(hub, CCM_BUS_SERVER_KEY=os.path.join(hub, "keys", "ccm.cert"))
        wenv = self.worker_env(worker, "worker")
        for home, env, role in ((hub, hub_env, "hub"), (worker, wenv, "worker")):
            rc, out, err = self.cli(home, "up", "--role", role, "--detach", env=env, timeout=30)
            self.assertEqual(rc, 0, err)
            self.addCleanup(self.cli, home, "down", env=env, timeout=30)
        self.assertIn("ccm is up (worker)", out)
        tx.wait_for("the worker's services", lambda: {"ccm-executor", "ccm-hooks"} <= set(
            self.comms(worker)), 15)
        self.assertNotIn("ccm-store", self.comms(worker), "a worker runs no store")
        self.assertNotIn("ccm-router", self.comms(worker))
        tx.wait_for("the hub's services", lambda: {"ccm-store", "ccm-router"} <= set(
            self.comms(hub)), 15)
        self.assertNotIn("ccm-executor", self.comms(hub), "a hub runs no agents")
        rc, out, err = self.cli(hub, "up", "--role", "laptop", env=hub_env)
        self.assertEqual(rc, 2)
        self.assertIn("--role must be hub, worker or all, not 'laptop'", err)

        # The worker's executor registered with the hub over CURVE, as itself.
        rows = tx.wait_for("the worker in ccm systems", lambda: [
            s for s in json.loads(self.cli(hub, "systems", "--json", env=hub_env)[1] or "[]")
            if s["hostname"] == "worker" and s["status"] == "online"], 20)
        self.assertEqual(len(rows), 1)


class TestStartErrors(CurveTestCase):

    def expect_refusal(self, home, env, words):
        proc = subprocess.run([os.path.join(BIN, "ccm-store")], env=env, capture_output=True,
                              text=True, timeout=20)
        self.assertEqual(proc.returncode, 1, proc.stderr)
        self.assertIn(words, proc.stderr)

    def test_bad_keys_stop_a_service_at_start(self):
        home = self.home("hub")
        env = self.env(home)
        self.expect_refusal(home, env, "a tcp:// endpoint needs this machine's certificate, and"
                                       f" {home}/keys/ccm.cert has none; run 'ccm keys gen'")
        self.keys(home)
        cert = os.path.join(home, "keys", "ccm.cert")
        os.chmod(cert + "_secret", 0o644)
        self.expect_refusal(home, env, f"bus.cert: {cert}_secret is readable by others"
                                       " (mode 644); it must be 0600")
        os.chmod(cert + "_secret", 0o600)
        for part in (cert, cert + "_secret"):
            with open(part, "w") as f:
                f.write("garbage\n")
        self.expect_refusal(home, env, f"bus.cert: {cert} is not a ZeroMQ certificate")
        rc, out, err = self.cli(home, "config", env=env)
        self.assertEqual(rc, 0, "ccm config works before the keys do: " + err)
        self.assertIn(f"bus.cert             {cert}", out)
        os.unlink(cert + "_secret")
        self.expect_refusal(home, env, f"bus.cert: {cert} has no secret part")
        self.cli(home, "keys", "gen", "--force")
        # A client with a server key that is no key at all.
        rc, _, err = self.cli(home, "task", "list",
                              env=self.env(home, CCM_BUS_SERVER_KEY="not-a-key"))
        self.assertEqual(rc, 1)
        self.assertIn("bus.server_key: 'not-a-key' is neither a 40-character Z85 key nor a"
                      " public certificate file", err)
        # A wrong server key (a valid key, not the hub's): no answer, said clearly.
        self.start("ccm-store", home, env)
        tx.wait_for("the store", lambda: "ready" in self.log(home, "ccm-store"), 15)
        other = self.home("other")
        self.keys(other)
        self.cli(home, "keys", "trust", os.path.join(other, "keys", "ccm.cert"))
        rc, _, err = self.cli(other, "task", "list", env=self.env(
            other, CCM_BUS_SERVER_KEY=os.path.join(other, "keys", "ccm.cert")))
        self.assertEqual(rc, 1)
        self.assertIn("bus.server_key may not be the hub's key", err)
        tx.wait_for("the failed handshake logged", lambda: "refused a peer on" in self.log(
            home, "ccm-store"), 10)


if __name__ == "__main__":
    ccmtest.main()

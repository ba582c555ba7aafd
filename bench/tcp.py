#!/usr/bin/env python3
"""bench/tcp: what CurveZMQ costs between a worker and the hub.

For each transport a fresh hub (ccm-store + ccm-router) and a fresh worker
(ccm-executor, its own CCM_HOME and key) are started, and three figures are
taken from the worker's side of the link:

  - request round trip: `ping` to the hub's store, one at a time (p50, p99);
  - hook-event throughput: `hook.add` of 100 events per request, 16 requests in
    flight, for BENCH_SECONDS, as the worker's ccm-hooks sends them: events/s
    acknowledged (committed) by the hub, every one counted in its database;
  - task dispatch: `task.add` on the hub to the first instruction of the agent
    in the worker's tmux (store -> router -> executor over the link, then
    git worktree + tmux on the worker), one task at a time (p50, p99).

Transports: ipc (one machine, the reference), tcp in the clear on loopback
(bus.curve=off, which ccm refuses anywhere but loopback), tcp with CurveZMQ
on loopback, and tcp with CurveZMQ over a veth pair into a network namespace
made for the run (the worker's processes run inside it; needs root and
`ip netns`; torn down at the end; skipped, saying why, when unavailable).

The limit, in the same runs: a bare TCP echo (64 bytes, one at a time) over
the same link, the least a round trip costs there. Figures are medians and
p99s: the machine is shared and noisy.
"""
import json, os, shutil, signal, socket, sqlite3, statistics, subprocess, sys, tempfile
import threading, time, uuid

import zmq
import zmq.auth

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.environ.get("CCM_BIN_DIR", os.path.join(HERE, "..", "build"))
SECONDS = float(os.environ.get("BENCH_SECONDS", "2"))
TASKS = int(os.environ.get("BENCH_TASKS", "20"))
PINGS = int(os.environ.get("BENCH_PINGS", "2000"))
REPS = int(os.environ.get("BENCH_REPS", "3"))
INFLIGHT, BATCH = 16, 100
NS, HUB_IF, WORKER_IF = "ccmbench-w", "ccmb-hub", "ccmb-wk"
# RFC 2544's benchmarking range: no real network uses it.
HUB_IP, WORKER_IP = "198.18.77.1", "198.18.77.2"
PY = "/usr/bin/python3"


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def free_port(host):
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ------------------------------------------------------------------ the worker's side

def curve_socket(ctx, kind, secret, server_key):
    sock = ctx.socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    if secret:
        public, private = zmq.auth.load_certificate(secret)
        sock.curve_publickey, sock.curve_secretkey = public, private
        sock.curve_serverkey = server_key.encode()
    return sock


def client(args):
    """Runs on the worker's side of the link (inside the namespace for veth);
    prints its figures as JSON."""
    ctx = zmq.Context()
    sock = curve_socket(ctx, zmq.DEALER, args["secret"], args["server_key"])
    sock.connect(args["endpoint"])
    ping = [b"ping", b'{"v":1}']
    sock.send_multipart(ping)
    if not sock.poll(10000):
        sys.exit("no answer from the hub's store at " + args["endpoint"])
    sock.recv_multipart()
    rtts = []
    for _ in range(args["pings"]):
        t0 = time.perf_counter()
        sock.send_multipart(ping)
        sock.recv_multipart()
        rtts.append((time.perf_counter() - t0) * 1e6)

    # hook.add: INFLIGHT requests of BATCH events in flight for SECONDS.
    run = uuid.uuid4().hex[:8]
    serial = 0

    def request():
        nonlocal serial
        events = []
        for _ in range(BATCH):
            serial += 1
            events.append({"uid": f"{run}-{serial}", "hook_type": "PostToolUse",
                           "tool_name": "Bash", "system_id": "bench-worker",
                           "event_data": {"tool_name": "Bash", "session_id": run,
                                          "tool_input": {"command": "make test"},
                                          "tool_response": {"stdout": "ok " * 40}}})
        body = {"v": 1, "idem": f"{run}-r{serial}", "events": events}
        sock.send_multipart([b"hook.add", json.dumps(body).encode()])

    acked = failed = outstanding = 0
    t0 = time.monotonic()
    end = t0 + args["seconds"]
    while outstanding < INFLIGHT:
        request()
        outstanding += 1
    while outstanding:
        if not sock.poll(10000):
            sys.exit("hook.add: no reply in 10 s")
        status, reply = sock.recv_multipart()
        outstanding -= 1
        if status == b"ok":
            acked += json.loads(reply)["count"]
        else:
            failed += 1
        if time.monotonic() < end:
            request()
            outstanding += 1
    took = time.monotonic() - t0

    # The limit: a bare TCP echo over the same link.
    echo = []
    with socket.create_connection(tuple(args["echo"]), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for _ in range(args["pings"]):
            t = time.perf_counter()
            s.sendall(b"x" * 64)
            got = 0
            while got < 64:
                got += len(s.recv(64 - got))
            echo.append((time.perf_counter() - t) * 1e6)
    # A bare ZeroMQ echo on the same link, in the clear and with CURVE: the
    # transport's own share of the cost, with nothing of ccm in it.
    # Alternated round trip by round trip, so that both see the same moments
    # (the CURVE cost is the median of the pairs' differences).
    zsocks, zecho = {}, {}
    for kind, endpoint in args["zecho"].items():
        public, secret = zmq.curve_keypair()
        z = ctx.socket(zmq.DEALER)
        z.setsockopt(zmq.LINGER, 0)
        if kind == "curve":
            z.curve_publickey, z.curve_secretkey = public, secret
            z.curve_serverkey = args["zecho_key"].encode()
        z.connect(endpoint)
        zsocks[kind], zecho[kind] = z, []
    for i in range(args["pings"] + 1):
        for kind, z in zsocks.items():
            t = time.perf_counter()
            z.send(b"x" * 64)
            if not z.poll(10000):
                sys.exit(f"no zmq echo ({kind})")
            z.recv()
            if i:  # the first includes the handshake
                zecho[kind].append((time.perf_counter() - t) * 1e6)
    for z in zsocks.values():
        z.close()
    sock.close()
    ctx.term()
    print(json.dumps({"rtt": rtts, "acked": acked, "failed": failed, "seconds": took,
                      "run": run, "echo": echo, "zecho": zecho}))


# ------------------------------------------------------------------ the veth link

def run(*cmd, check=True):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20, check=check)


def veth_down():
    run("ip", "netns", "del", NS, check=False)  # takes its end of the pair, and so the other
    run("ip", "link", "del", HUB_IF, check=False)


def veth_up():
    """A veth pair: HUB_IP here, WORKER_IP in namespace NS. Returns None or why not."""
    if os.geteuid() != 0:
        return "not root"
    if not shutil.which("ip"):
        return "no ip(8)"
    veth_down()  # a previous run that was killed
    try:
        run("ip", "netns", "add", NS)
        run("ip", "link", "add", HUB_IF, "type", "veth", "peer", "name", WORKER_IF)
        run("ip", "link", "set", WORKER_IF, "netns", NS)
        run("ip", "addr", "add", f"{HUB_IP}/30", "dev", HUB_IF)
        run("ip", "link", "set", HUB_IF, "up")
        for cmd in (("ip", "addr", "add", f"{WORKER_IP}/30", "dev", WORKER_IF),
                    ("ip", "link", "set", WORKER_IF, "up"), ("ip", "link", "set", "lo", "up")):
            run("ip", "netns", "exec", NS, *cmd)
        # Reachable: a closed port answers at once (refused) instead of timing out.
        run("ip", "netns", "exec", NS, PY, "-c", "import socket, errno; s = socket.socket();"
            f" s.settimeout(3); e = s.connect_ex(('{HUB_IP}', 9)); assert e in (0, errno."
            "ECONNREFUSED), errno.errorcode.get(e, e)")
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, FileNotFoundError) as e:
        veth_down()
        return f"ip netns failed: {getattr(e, 'stderr', '') or e}".strip()
    return None


# ------------------------------------------------------------------ one transport

class Setup:
    def __init__(self, root, name, transport):
        self.name, self.transport = name, transport
        self.procs = []
        self.hub = os.path.join(root, name, "hub")
        self.worker = self.hub if transport == "ipc" else os.path.join(root, name, "worker")
        os.makedirs(self.hub, exist_ok=True)
        os.makedirs(self.worker, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("CCM_")}
        base.pop("CLAUDECODE", None)
        base.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null", CCM_LOG_LEVEL="warn")
        common = {}
        self.secret = self.server_key = None
        host = HUB_IP if transport == "veth" else "127.0.0.1"
        if transport != "ipc":
            ports = [free_port(host) for _ in range(3)]
            common = {"CCM_STORE_ENDPOINT": f"tcp://{host}:{ports[0]}",
                      "CCM_STORE_PUB_ENDPOINT": f"tcp://{host}:{ports[1]}",
                      "CCM_ROUTER_ENDPOINT": f"tcp://{host}:{ports[2]}"}
        if transport == "plain":
            common["CCM_BUS_CURVE"] = "off"
        if transport in ("curve", "veth"):
            for home in (self.hub, self.worker):
                subprocess.run([os.path.join(BIN, "ccm"), "keys", "gen"], check=True,
                               capture_output=True, env=dict(base, CCM_HOME=home))
            subprocess.run([os.path.join(BIN, "ccm"), "keys", "trust",
                            os.path.join(self.worker, "keys", "ccm.cert"), "--name", "worker"],
                           check=True, capture_output=True, env=dict(base, CCM_HOME=self.hub))
            common["CCM_BUS_SERVER_KEY"] = os.path.join(self.hub, "keys", "ccm.cert")
            self.server_key = zmq.auth.load_certificate(common["CCM_BUS_SERVER_KEY"])[0].decode()
            self.secret = os.path.join(self.worker, "keys", "ccm.cert_secret")
        self.hub_env = dict(base, CCM_HOME=self.hub, **common)
        self.worker_env = dict(base, CCM_HOME=self.worker, CCM_EXECUTOR_MACHINE_ID=f"bw-{name}",
                               CCM_EXECUTOR_HOSTNAME=f"bw-{name}", CCM_EXECUTOR_CAPACITY="8",
                               **common)
        self.store_endpoint = common.get("CCM_STORE_ENDPOINT", f"ipc://{self.hub}/run/store.ipc")
        self.in_ns = ["ip", "netns", "exec", NS] if transport == "veth" else []
        self.echo_host = host
        self.ctx = zmq.Context()
        self.req = None

    def start(self, binary, env, prefix=()):
        log = open(os.path.join(env["CCM_HOME"], f"{binary}.log"), "ab")
        proc = subprocess.Popen([*prefix, os.path.join(BIN, binary)], env=env, stdout=log,
                                stderr=log, stdin=subprocess.DEVNULL)
        log.close()
        self.procs.append(proc)

    def up(self):
        self.start("ccm-store", self.hub_env)
        hub_secret = (os.path.join(self.hub, "keys", "ccm.cert_secret") if self.secret
                      else None)
        self.req = curve_socket(self.ctx, zmq.DEALER, hub_secret, self.server_key)
        self.req.connect(self.store_endpoint)
        self.call("ping", timeout=15000)
        self.start("ccm-router", self.hub_env)
        self.start("ccm-executor", self.worker_env, self.in_ns)

    def call(self, verb, timeout=10000, **body):
        body["v"] = 1
        if verb not in ("ping", "stats", "system.list"):
            body["idem"] = str(uuid.uuid4())
        self.req.send_multipart([verb.encode(), json.dumps(body).encode()])
        if not self.req.poll(timeout):
            raise TimeoutError(f"{self.name}: {verb}")
        status, reply = self.req.recv_multipart()
        if status != b"ok":
            raise RuntimeError(f"{self.name}: {verb}: {reply!r}")
        return json.loads(reply)

    def rows(self, sql, *args):
        with sqlite3.connect(os.path.join(self.hub, "ccm.db"), timeout=10) as conn:
            return conn.execute(sql, args).fetchall()

    def worker_side(self):
        """The round trips and hook.add, from the worker's side of the link."""
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind((self.echo_host, 0))
        server.listen(1)

        def echo():
            conn, _ = server.accept()
            with conn:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                while data := conn.recv(4096):
                    conn.sendall(data)
        thread = threading.Thread(target=echo, daemon=True)
        thread.start()
        # Bare ZeroMQ echoes (ROUTER), in the clear and as a CURVE server.
        public, secret = zmq.curve_keypair()
        zsocks = {}
        for kind in ("plain", "curve"):
            z = self.ctx.socket(zmq.ROUTER)
            z.setsockopt(zmq.LINGER, 0)
            if kind == "curve":
                z.curve_server = True
                z.curve_publickey, z.curve_secretkey = public, secret
            port = z.bind_to_random_port(f"tcp://{self.echo_host}")
            zsocks[kind] = (z, f"tcp://{self.echo_host}:{port}")
        stop = threading.Event()

        def zecho():
            poller = zmq.Poller()
            for z, _ in zsocks.values():
                poller.register(z, zmq.POLLIN)
            while not stop.is_set():
                for z, _ in poller.poll(100):
                    z.send_multipart(z.recv_multipart())
        zthread = threading.Thread(target=zecho, daemon=True)
        zthread.start()
        args = {"endpoint": self.store_endpoint, "secret": self.secret,
                "server_key": self.server_key, "pings": PINGS, "seconds": SECONDS,
                "echo": [self.echo_host, server.getsockname()[1]],
                "zecho": {k: e for k, (_, e) in zsocks.items()}, "zecho_key": public.decode()}
        done = subprocess.run([*self.in_ns, PY, os.path.abspath(__file__), "--client",
                               json.dumps(args)], capture_output=True, text=True, timeout=120,
                              env=self.worker_env)
        server.close()
        stop.set()
        zthread.join(5)
        for z, _ in zsocks.values():
            z.close()
        if done.returncode:
            raise RuntimeError(f"{self.name}: the worker-side client failed: {done.stderr}")
        out = json.loads(done.stdout)
        stored = self.rows("SELECT count(*) FROM hook_events WHERE uid LIKE ?",
                           out["run"] + "-%")[0][0]
        if stored != out["acked"] or out["failed"]:
            raise RuntimeError(f"{self.name}: {out['acked']} events acknowledged, {stored} "
                               f"stored, {out['failed']} requests refused")
        return out

    def dispatch(self, repo):
        """task.add on the hub to the agent's first instruction on the worker."""
        self.call("project.add", name="bench", path=repo)
        deadline = time.monotonic() + 30
        while not self.rows("SELECT 1 FROM contexts c JOIN systems s ON s.id = c.system_id "
                            "WHERE s.machine_id = ?", f"bw-{self.name}"):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{self.name}: the worker never reported the project")
            time.sleep(0.05)
        times = []
        for i in range(TASKS + 1):  # the first warms up and is not counted
            out = os.path.join(self.worker, f"agent-{i}")
            t0 = time.monotonic()
            self.call("task.add", project="bench", agent="shell", prompt=stamp_cmd(out))
            took = wait_file(out, time.monotonic() + 30) - t0
            if i:
                times.append(took * 1000)
        return times

    def close(self):
        for proc in reversed(self.procs):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        subprocess.run(["tmux", "-S", os.path.join(self.worker, "run", "tmux.sock"),
                        "kill-server"], capture_output=True)
        if self.req:
            self.req.close()
        self.ctx.term()


def stamp_cmd(path):
    # python3's monotonic clock is CLOCK_MONOTONIC, the same as time.monotonic() here,
    # and it is not a per-namespace clock.
    return f"{PY} -c 'import time; open(\"{path}\", \"w\").write(repr(time.monotonic()))'"


def wait_file(path, deadline):
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                text = f.read()
            if text:
                return float(text)
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise TimeoutError(path)


def make_repo(root):
    repo = os.path.join(root, "repo")
    os.makedirs(repo)
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null")
    for args in (("init", "-q", "-b", "main"),
                 ("-c", "user.name=b", "-c", "user.email=b@b", "commit", "-q", "--allow-empty",
                  "-m", "init")):
        subprocess.run(["git", "-C", repo, *args], check=True, capture_output=True, env=env)
    return repo


def main():
    if len(sys.argv) == 3 and sys.argv[1] == "--client":
        return client(json.loads(sys.argv[2]))
    # Everything is bounded: a hung run is killed, and the link still torn down.
    signal.signal(signal.SIGALRM, lambda *_: (_ for _ in ()).throw(TimeoutError("bench/tcp: 600 s")))
    signal.alarm(600)
    root = tempfile.mkdtemp(prefix="ccm-bench-tcp-")
    why_not = veth_up()
    transports = [("ipc", "ipc", "one machine"), ("plain", "plain", "tcp, no CURVE, loopback"),
                  ("curve", "curve", "tcp + CURVE, loopback")]
    if why_not is None:
        transports.append(("veth", "veth", "tcp + CURVE, veth (namespace)"))
    results = {name: {"label": label, "rtt": [], "echo": [], "zplain": [], "zcurve": [],
                      "rate": [], "disp": []} for name, _, label in transports}
    try:
        repo = make_repo(root)
        for rep in range(REPS):  # interleaved, so that a noisy moment hits them all
            for name, transport, _ in transports:
                setup = Setup(root, f"{name}-{rep}", transport)
                try:
                    setup.up()
                    side = setup.worker_side()
                    disp = setup.dispatch(repo)
                finally:
                    setup.close()
                r = results[name]
                r["rtt"] += side["rtt"]
                r["echo"] += side["echo"]
                r["zplain"] += side["zecho"]["plain"]
                r["zcurve"] += side["zecho"]["curve"]
                r["rate"].append(side["acked"] / side["seconds"])
                r["disp"] += disp
    finally:
        if why_not is None:
            veth_down()
        signal.alarm(0)
        if os.environ.get("BENCH_KEEP") != "1":
            shutil.rmtree(root, ignore_errors=True)

    med = statistics.median
    link = (f"a veth pair into network namespace {NS} (made and removed by this run)"
            if why_not is None else f"loopback only: no veth link ({why_not})")
    print(f"bench/tcp: worker -> hub over ZeroMQ, CurveZMQ vs plain TCP vs IPC; {link}")
    print(f"  {REPS} runs interleaved, each: {PINGS} pings one at a time; hook.add of {BATCH}"
          f" events x {INFLIGHT} in flight for {SECONDS:g} s (every acked event found in the"
          f" hub's database); {TASKS} tasks one at a time\n")
    print(f"  {'':<44}{'ccm-store ping':>16}{'hook events/s':>15}{'task dispatch':>17}")
    print(f"  {'transport':<44}{'p50':>8}{'p99':>8}{'median':>15}{'p50':>9}{'p99':>8}")
    for name, r in results.items():
        print(f"  {name + ': ' + r['label']:<44}{med(r['rtt']):6.0f}us{pct(r['rtt'], 99):6.0f}us"
              f"{med(r['rate']):15,.0f}{med(r['disp']):7.1f}ms{pct(r['disp'], 99):6.1f}ms")
    print("\n  limits, same runs, same links (p50 of one 64-byte round trip):")
    print(f"  {'link':<44}{'TCP echo':>10}{'ZMQ plain':>11}{'ZMQ CURVE':>11}{'CURVE cost':>12}")
    for name, r in results.items():
        if name == "ipc":
            continue  # no tcp link of its own
        cost = med([c - p for c, p in zip(r["zcurve"], r["zplain"])])
        print(f"  {name + ': ' + r['label']:<44}{med(r['echo']):8.0f}us{med(r['zplain']):9.0f}us"
              f"{med(r['zcurve']):9.0f}us{cost:+10.1f}us")
    plain = results["plain"]
    print()
    for name in ("curve", "veth"):
        if name in results:
            r = results[name]
            print(f"  {name} vs plain (loopback): ping {med(r['rtt']) - med(plain['rtt']):+.0f} us"
                  f", hook events/s x{med(r['rate']) / med(plain['rate']):.2f}, dispatch p50"
                  f" {med(r['disp']) - med(plain['disp']):+.1f} ms")
    print(f"  hook events/s over ipc, {med(results['ipc']['rate']):,.0f}, is the store's own"
          " ceiling here (bench/store); plain tcp:// is refused off loopback, so the veth"
          " link's own CURVE cost is the ZMQ plain/CURVE echo pair above")


if __name__ == "__main__":
    main()

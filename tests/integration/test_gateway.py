"""ccm-gateway's WebSocket API (schema/protocol.md, "Gateway WebSocket API"),
against a real ccm-store and a real ccm-gateway on a temporary CCM_HOME, with
Debian's python3-websockets as the client: filters, resume from a seq across
a gateway restart, 200 concurrent clients with one that stops reading, bad
input of every kind refused with the gateway staying up, Origin and token
checks, and the refusal to bind beyond loopback without a token."""

import asyncio
import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ccmtest  # noqa: E402

import websockets  # noqa: E402  (python3-websockets)

GATEWAY_BIN = os.path.join(ccmtest.BIN_DIR, "ccm-gateway")


class Gateway:
    """A ccm-gateway process on a home; port 0, so tests never collide."""

    def __init__(self, home, env=None):
        self.home = home
        self.env = dict(home.env, CCM_GATEWAY_PORT="0", **(env or {}))
        self.log_path = os.path.join(home.path, f"gateway-{uuid.uuid4().hex[:6]}.log")
        self.proc = None

    def start(self, expect_ready=True):
        url_file = os.path.join(self.home.path, "run", "gateway.url")
        if os.path.exists(url_file):
            os.unlink(url_file)
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([GATEWAY_BIN], env=self.env, stdin=subprocess.DEVNULL,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.home.children.append(self.proc)
        if not expect_ready:
            return self
        ok = ccmtest.wait_until(lambda: os.path.exists(url_file) or self.proc.poll() is not None,
                                10)
        if not ok or self.proc.poll() is not None:
            raise AssertionError(f"the gateway did not start:\n{self.log_text()}")
        with open(url_file) as f:
            self.url = f.read().strip()
        self.ws_url = self.url.replace("http://", "ws://") + "ws"
        self.port = int(self.url.rsplit(":", 1)[1].strip("/"))
        return self

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(15)
        self.log.close()
        return self.proc.returncode

    def log_text(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode("utf-8", "replace")

    def alive(self):
        return self.proc.poll() is None


async def connect(gw, protocols=("ccm.v1",), **kwargs):
    return await websockets.connect(gw.ws_url, subprotocols=list(protocols),
                                    max_size=None, open_timeout=10, **kwargs)


async def request(ws, cmd, timeout=15, **args):
    """Sends one request and returns its reply (pushes in between are kept aside)."""
    rid = uuid.uuid4().hex[:8]
    await ws.send(json.dumps({"id": rid, "cmd": cmd, **args}))
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        if frame.get("type") == "reply" and frame.get("id") == rid:
            return frame
        ws.aside = getattr(ws, "aside", []) + [frame]


async def read_until(ws, predicate, timeout=15):
    """Frames until predicate(frame) is true (that frame included)."""
    got = getattr(ws, "aside", [])
    ws.aside = []
    if any(predicate(f) for f in got):
        return got
    deadline = time.monotonic() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), deadline - time.monotonic()))
        got.append(frame)
        if predicate(frame):
            return got


def read(path):
    with open(path) as f:
        return f.read()


def run(coro):
    return asyncio.run(coro)


class GatewayTest(ccmtest.CcmTestCase):

    def setUp(self):
        self.home = self.make_home(start=True)

    def gateway(self, **env):
        gw = Gateway(self.home, env).start()
        self.addCleanup(self._stop, gw)
        return gw

    def _stop(self, gw):
        if gw.proc and gw.proc.poll() is None:
            self.assertEqual(gw.stop(), 0, gw.log_text())

    def store_events(self, since=0, **filters):
        events = []
        while True:
            page = self.home.ok("events.since", seq=since, limit=1000, **filters)
            events += page["events"]
            if not page["more"]:
                return events
            since = events[-1]["seq"]

    # ------------------------------------------------------------ filters

    def test_filters(self):
        """Each filter passes exactly the events it names, from replay and live alike."""
        gw = self.gateway()
        a = self.home.ok("project.add", name="alpha", path="/tmp/alpha")["project"]
        self.home.ok("project.add", name="beta", path="/tmp/beta")
        ta = self.home.ok("task.add", prompt="in alpha", project="alpha")["task"]
        tb = self.home.ok("task.add", prompt="in beta", project="beta")["task"]
        self.home.ok("hook.add", events=[
            {"hook_type": "PreToolUse", "event_data": {"n": 1}, "task_id": ta["id"]},
            {"hook_type": "PermissionRequest", "event_data": {"n": 2}, "task_id": ta["id"]}])
        self.home.ok("hook.add", events=[
            {"hook_type": "Stop", "event_data": {"n": 3}, "task_id": tb["id"]}])

        cases = {
            "project": {"project": "alpha"},
            "task": {"task": tb["id"][:6]},
            "types": {"types": ["task.", "hook.added"]},
            "hook_types": {"hook_types": ["PermissionRequest"]},
            "both": {"project": "alpha", "types": ["hook.added"]},
        }
        matches = {
            "project": lambda e: e["task_id"] == ta["id"] or e["entity_id"] == a["id"],
            "task": lambda e: e["task_id"] == tb["id"],
            "types": lambda e: e["topic"].startswith("task.") or e["topic"] == "hook.added",
            "hook_types": lambda e: e["topic"] == "hook.added"
            and "PermissionRequest" in e["data"]["types"],
            "both": lambda e: e["topic"] == "hook.added" and e["task_id"] == ta["id"],
        }

        async def scenario():
            conns = {}
            for name, filters in cases.items():
                ws = await connect(gw)
                reply = await request(ws, "subscribe", since_seq=0, filters=filters)
                self.assertTrue(reply["ok"], reply)
                conns[name] = ws
            # live ones too: more events after the subscriptions
            self.home.ok("task.cancel", task=ta["id"])
            self.home.ok("task.cancel", task=tb["id"])
            self.home.ok("hook.add", events=[
                {"hook_type": "PermissionRequest", "event_data": {"n": 4}, "task_id": ta["id"]}])
            every = self.store_events()
            got = {}
            for name, ws in conns.items():
                last = [e["seq"] for e in every if matches[name](e)][-1]
                frames = await read_until(ws, lambda f: f.get("type") == "event"
                                          and f["seq"] >= last, timeout=10)
                got[name] = [f for f in frames if f.get("type") == "event"]
                await ws.close()
            return got, every

        got, every = run(scenario())
        for name in cases:
            self.assertEqual([e["seq"] for e in got[name]],
                             [e["seq"] for e in every if matches[name](e)], name)
        for name in got:
            self.assertTrue(got[name], f"filter {name} passed nothing")
        # Every pushed event is the store's, with project_id added, and a
        # small hook.added carries its rows.
        by_seq = {e["seq"]: e for e in every}
        for f in got["types"]:
            store = dict(by_seq[f["seq"]])
            store.pop("v")
            pushed = dict(f)
            self.assertEqual(pushed.pop("type"), "event")
            self.assertIn("project_id", pushed)
            pushed.pop("project_id")
            hooks = pushed.pop("hooks", None)
            self.assertEqual(pushed, store)
            if f["topic"] == "hook.added":
                self.assertEqual([h["id"] for h in hooks],
                                 list(range(f["data"]["first_id"], f["data"]["last_id"] + 1)))
        for f in got["project"]:
            if f["task_id"]:
                self.assertEqual(f["project_id"], a["id"])

    def test_bad_filters_refused(self):
        gw = self.gateway()

        async def scenario():
            ws = await connect(gw)
            r1 = await request(ws, "subscribe", filters={"color": "red"})
            r2 = await request(ws, "subscribe", filters={"types": "task."})
            r3 = await request(ws, "subscribe", filters={"project": "nope"})
            r4 = await request(ws, "subscribe", since_seq=10**9)
            r5 = await request(ws, "subscribe", since_seq=-1)
            await ws.close()
            return r1, r2, r3, r4, r5
        r1, r2, r3, r4, r5 = run(scenario())
        self.assertEqual((r1["error"]["code"], r1["error"]["field"]), ("bad_field", "color"))
        self.assertEqual((r2["error"]["code"], r2["error"]["field"]), ("bad_field", "types"))
        self.assertEqual((r3["error"]["code"], r3["error"]["field"]), ("not_found", "filters.project"))
        self.assertEqual((r4["error"]["code"], r4["error"]["field"]), ("bad_field", "since_seq"))
        self.assertEqual((r5["error"]["code"], r5["error"]["field"]), ("bad_field", "since_seq"))

    # ------------------------------------------------------------ resume

    def test_resume_across_gateway_restart(self):
        """A client that resumes from its last seq after a gateway restart gets
        every event exactly once, including those committed while it was down,
        and the replay joins the live stream without a gap or a duplicate."""
        gw = self.gateway(CCM_GATEWAY_RING="64", CCM_GATEWAY_QUEUE_MAX="16")
        for i in range(30):
            self.home.ok("task.add", prompt=f"before {i}", hold=True)

        async def first():
            ws = await connect(gw)
            self.assertTrue((await request(ws, "subscribe", since_seq=0))["ok"])
            frames = await read_until(ws, lambda f: f.get("type") == "synced")
            await ws.close()
            return [f["seq"] for f in frames if f.get("type") == "event"]
        seen = run(first())
        self.assertEqual(seen, list(range(1, 31)))
        self.assertEqual(gw.stop(), 0, gw.log_text())

        # While the gateway is down: more than its ring holds.
        for i in range(200):
            self.home.ok("task.add", prompt=f"while down {i}", hold=True)
        gw2 = self.gateway(CCM_GATEWAY_RING="64", CCM_GATEWAY_QUEUE_MAX="16")

        async def second():
            ws = await connect(gw2)
            self.assertTrue((await request(ws, "subscribe", since_seq=seen[-1]))["ok"])
            # and live ones while it replays
            for i in range(50):
                self.home.ok("task.add", prompt=f"after {i}", hold=True)
            head = self.home.head()
            frames = await read_until(ws, lambda f: f.get("type") == "event" and f["seq"] == head,
                                      timeout=30)
            await ws.close()
            return [f["seq"] for f in frames if f.get("type") == "event"]
        resumed = run(second())
        self.assertEqual(resumed, list(range(31, self.home.head() + 1)))
        self.assertEqual(seen + resumed, [e["seq"] for e in self.store_events()])

    # ------------------------------------------------------------ many clients

    def test_200_clients_one_slow(self):
        """200 clients: one subscribes to everything and stops reading; 199
        follow task.status while 600 other events flood the gateway. The slow
        one is told to resync and dropped; the 199 get every task.status, in
        order, promptly, all along."""
        gw = self.gateway(CCM_GATEWAY_QUEUE_MAX="64", CCM_GATEWAY_RING="256",
                          CCM_GATEWAY_SNDBUF="4096", CCM_GATEWAY_RATE="1000")
        events, every = 600, 50

        # The slow client: a raw socket with a tiny receive buffer that sends
        # its handshake and subscribe, then reads nothing until it is dropped.
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", gw.port))
        slow.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{gw.port}\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ccm.v1\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += slow.recv(1)
        self.assertIn(b" 101 ", head.split(b"\r\n")[0])
        body = json.dumps({"id": 1, "cmd": "subscribe", "since_seq": 0}).encode()
        mask = os.urandom(4)
        slow.sendall(bytes([0x81, 0x80 | len(body)]) + mask
                     + bytes(b ^ mask[i % 4] for i, b in enumerate(body)))

        async def scenario():
            clients = await asyncio.gather(*(connect(gw) for _ in range(199)))
            for ws in clients:
                await ws.send(json.dumps({"id": "s", "cmd": "subscribe",
                                          "filters": {"types": ["task.status"]}}))
            for ws in clients:
                await read_until(ws, lambda f: f.get("type") == "synced", timeout=30)
            received = {i: [] for i in range(len(clients))}
            arrival = {}
            probes = events // every

            async def reader(i, ws):
                while len(received[i]) < probes:
                    frame = await asyncio.wait_for(ws.recv(), 60)
                    m = re.match(r'\{"type":"event","seq":(\d+)', frame)
                    if m:
                        seq = int(m.group(1))
                        received[i].append(seq)
                        arrival[(i, seq)] = time.monotonic()
            readers = [asyncio.create_task(reader(i, ws)) for i, ws in enumerate(clients)]
            committed = {}
            loop = asyncio.get_running_loop()

            def produce():
                for n in range(events):
                    task = self.home.ok("task.add", prompt=f"flood {n} " + "x" * 200,
                                        hold=True)["task"]
                    if n % every == every - 1:
                        self.home.ok("task.cancel", task=task["id"])  # a task.status probe
                        committed[self.home.head()] = time.monotonic()
            await loop.run_in_executor(None, produce)
            await asyncio.wait_for(asyncio.gather(*readers), 90)
            alive = await request(clients[0], "ping")
            for ws in clients:
                await ws.close()
            return received, arrival, committed, alive
        # Once the gateway says it dropped the slow client, the client reads
        # what it was sent: the resync must be there (it has 5 s to read it).
        data = bytearray()

        def drain():
            ccmtest.wait_until(lambda: "dropped: slow reader" in gw.log_text(), 60)
            slow.settimeout(10)
            try:
                while True:
                    chunk = slow.recv(65536)
                    if not chunk:
                        break
                    data.extend(chunk)
            except OSError:
                pass
        drainer = threading.Thread(target=drain)
        drainer.start()
        received, arrival, committed, alive = run(scenario())
        drainer.join(70)
        data = bytes(data)
        want = sorted(committed)
        for i, seqs in received.items():
            self.assertEqual(seqs, want, f"client {i}")
        lags = sorted(arrival[(i, s)] - committed[s] for i in received for s in want)
        p99 = lags[int(len(lags) * 0.99)]
        # A fan-out stalled by the slow client would hold every probe for the
        # gateway's 5 s close timeout; generous for Python clients on a shared machine.
        self.assertLess(p99, 1.5, f"p99 from commit to 199 clients: {p99:.3f} s")
        self.assertTrue(alive["ok"])
        # The slow client was told to resync, then closed (code 4000).
        slow.close()
        self.assertTrue(b'"type":"resync"' in data, f"no resync in {len(data)} bytes")
        self.assertTrue(b"\x88\x08\x0f\xa0resync" in data, "no close 4000 resync")
        self.assertRegex(gw.log_text(), r"client \d+ \(.*\) dropped: slow reader")
        self.assertTrue(gw.alive())

    # ------------------------------------------------------------ bad input

    def test_bad_input_refused_and_gateway_stays_up(self):
        gw = self.gateway(CCM_GATEWAY_MAX_FRAME="4096", CCM_GATEWAY_RATE="20")

        async def scenario():
            ws = await connect(gw)
            out = {}
            await ws.send("{not json")
            out["malformed"] = json.loads(await ws.recv())
            await ws.send("[1, 2]")
            out["not_object"] = json.loads(await ws.recv())
            await ws.send(b"\xff\xfe{}")  # binary
            out["binary"] = json.loads(await ws.recv())
            await ws.send("x" * 5000)
            out["too_big"] = json.loads(await ws.recv())
            await ws.send(json.dumps({"id": 1, "cmd": "rm -rf /"}))
            out["unknown"] = json.loads(await ws.recv())
            await ws.send(json.dumps({"id": {"a": 1}, "cmd": "ping"}))
            out["bad_id"] = json.loads(await ws.recv())
            await ws.send(json.dumps({"id": 2}))
            out["no_cmd"] = json.loads(await ws.recv())
            out["bad_field"] = await request(ws, "task.add", prompt="p", priority="whenever")
            out["missing"] = await request(ws, "task.add")
            out["not_found"] = await request(ws, "task", task="ffffffff")
            out["forbidden"] = await request(ws, "terminal.input", task="abcd1234", text="ls")
            # the connection still works after all that
            out["ping"] = await request(ws, "ping")
            # a flood: beyond the rate, refused as rate_limited, not run
            for i in range(100):
                await ws.send(json.dumps({"id": i, "cmd": "ping"}))
            replies = [json.loads(await asyncio.wait_for(ws.recv(), 20)) for _ in range(100)]
            out["flood"] = replies
            await ws.close()
            return out
        out = run(scenario())
        self.assertEqual((out["malformed"]["error"]["code"], out["malformed"]["id"]), ("bad_json", None))
        self.assertEqual(out["not_object"]["error"]["code"], "bad_json")
        self.assertEqual(out["binary"]["error"]["code"], "bad_json")
        self.assertEqual((out["too_big"]["error"]["code"], out["too_big"]["error"]["field"]),
                         ("too_big", "frame"))
        self.assertEqual((out["unknown"]["error"]["code"], out["unknown"]["id"]), ("unknown_cmd", 1))
        self.assertEqual((out["bad_id"]["error"]["code"], out["bad_id"]["error"]["field"]),
                         ("bad_request", "id"))
        self.assertEqual((out["no_cmd"]["error"]["code"], out["no_cmd"]["id"]), ("bad_request", 2))
        self.assertEqual((out["bad_field"]["error"]["code"], out["bad_field"]["error"]["field"]),
                         ("bad_field", "priority"))
        self.assertEqual((out["missing"]["error"]["code"], out["missing"]["error"]["field"]),
                         ("missing_field", "prompt"))
        self.assertEqual(out["not_found"]["error"]["code"], "not_found")
        self.assertEqual(out["forbidden"]["error"]["code"], "not_found")  # no view opened here
        for name, reply in out.items():
            if name not in ("ping", "flood"):
                self.assertFalse(reply["ok"], name)
                self.assertTrue(reply["error"]["message"], name)
        self.assertTrue(out["ping"]["ok"])
        codes = [r["ok"] or r["error"]["code"] for r in out["flood"]]
        self.assertIn("rate_limited", codes)
        self.assertIn(True, codes)
        self.assertEqual(self.home.scalar("SELECT count(*) FROM tasks"), 0)
        self.assertTrue(gw.alive())

        # Refused upgrades: wrong path, no ccm.v1, a foreign Origin.
        async def upgrades():
            results = {}
            for name, kwargs in {
                "no_subprotocol": dict(protocols=()),
                "foreign_origin": dict(origin="http://evil.example"),
            }.items():
                try:
                    ws = await connect(gw, **{"protocols": kwargs.get("protocols", ("ccm.v1",))},
                                       **({"origin": kwargs["origin"]} if "origin" in kwargs else {}))
                    await ws.close()
                    results[name] = "accepted"
                except websockets.exceptions.InvalidStatusCode as e:
                    results[name] = e.status_code
            ws = await connect(gw, origin=f"http://127.0.0.1:{gw.port}")
            results["own_origin"] = (await request(ws, "ping"))["ok"]
            await ws.close()
            return results
        results = run(upgrades())
        self.assertEqual(results, {"no_subprotocol": 400, "foreign_origin": 403, "own_origin": True})
        self.assertIn("origin not allowed (origin http://evil.example)", gw.log_text())
        # plain HTTP stays sane too
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(gw.url + "../../etc/passwd", timeout=5)
        self.assertEqual(cm.exception.code, 404)
        with urllib.request.urlopen(gw.url + "api/auth", timeout=5) as r:
            self.assertEqual(json.load(r), {"token_required": False, "authenticated": True})
            self.assertIn("default-src 'self'", r.headers["Content-Security-Policy"])
        self.assertTrue(gw.alive())

    # ------------------------------------------------------------ token

    def test_fd_limit(self):
        """The gateway lowers its open-file limit to gateway.max_fds (lws sizes
        tables by it); a value out of range stops it at start, naming the key."""
        gw = self.gateway(CCM_GATEWAY_MAX_FDS="300")
        limits = read(f"/proc/{gw.proc.pid}/limits")
        soft = int(re.search(r"^Max open files\s+(\d+)", limits, re.M).group(1))
        self.assertLessEqual(soft, 300, limits)

        async def scenario():
            ws = await connect(gw)
            reply = await request(ws, "ping")
            self.assertTrue(reply["ok"], reply)
            await ws.close()
        run(scenario())

        refused = Gateway(self.home, {"CCM_GATEWAY_MAX_FDS": "10"}).start(expect_ready=False)
        self.assertEqual(refused.proc.wait(10), 2)
        refused.log.close()
        self.assertIn("gateway.max_fds 64-1048576", refused.log_text())

    def test_token_bind_and_login(self):
        """A non-loopback bind without a token is refused; `ccm gateway token`
        writes one (0600, never printed); then a wrong or missing token is
        refused and the right one (subprotocol or login cookie) is let in."""
        refused = Gateway(self.home, {"CCM_GATEWAY_BIND": "0.0.0.0"}).start(expect_ready=False)
        self.assertEqual(refused.proc.wait(10), 2)
        refused.log.close()
        self.assertIn("refusing to bind 0.0.0.0 without a token: run 'ccm gateway token'",
                      refused.log_text())

        code, out, err = self.home.run_cli("gateway", "token")
        self.assertEqual(code, 0, err)
        path = os.path.join(self.home.path, "gateway.token")
        token = read(path).strip()
        self.assertRegex(token, r"^[0-9a-f]{64}$")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertIn(path, out)
        self.assertNotIn(token, out + err)

        gw = self.gateway(CCM_GATEWAY_BIND="0.0.0.0")

        async def scenario():
            results = {}
            for name, protocols in {"missing": ("ccm.v1",),
                                    "wrong": ("ccm.v1", "token." + "0" * 64),
                                    "right": ("ccm.v1", "token." + token)}.items():
                try:
                    ws = await connect(gw, protocols=protocols)
                    results[name] = ((await request(ws, "ping"))["ok"], ws.subprotocol)
                    await ws.close()
                except websockets.exceptions.InvalidStatusCode as e:
                    results[name] = e.status_code
            return results
        results = run(scenario())
        self.assertEqual(results, {"missing": 403, "wrong": 403, "right": (True, "ccm.v1")})

        # The login form: a wrong token is 403, the right one sets an HttpOnly cookie.
        def login(value):
            req = urllib.request.Request(gw.url + "login", data=f"token={value}".encode(),
                                         method="POST")
            opener = urllib.request.build_opener(NoRedirect)
            try:
                return opener.open(req, timeout=5)
            except urllib.error.HTTPError as e:
                return e
        self.assertEqual(login("f" * 64).code, 403)
        ok = login(token)
        self.assertEqual(ok.code, 303)
        cookie = ok.headers["Set-Cookie"]
        self.assertIn("HttpOnly", cookie)
        self.assertIn("SameSite=Strict", cookie)

        async def with_cookie():
            ws = await connect(gw, extra_headers={"Cookie": cookie.split(";")[0]})
            reply = await request(ws, "ping")
            await ws.close()
            return reply["ok"]
        self.assertTrue(run(with_cookie()))
        # A new token takes effect at once; the old one no longer opens anything.
        self.assertEqual(self.home.run_cli("gateway", "token")[0], 0)

        async def old():
            try:
                await connect(gw, protocols=("ccm.v1", "token." + token))
                return "accepted"
            except websockets.exceptions.InvalidStatusCode as e:
                return e.status_code
        self.assertEqual(run(old()), 403)
        log = gw.log_text() + refused.log_text()
        self.assertNotIn(token, log)
        self.assertNotIn(read(path).strip(), log)
        self.assertTrue(gw.alive())

    # ------------------------------------------------------------ commands

    def test_commands_and_snapshots(self):
        gw = self.gateway()
        self.home.ok("project.add", name="web", path="/tmp/web")
        dep = self.home.ok("task.add", prompt="first", hold=True)["task"]
        prompt = "it's $(rm -rf ~) `x` \"q\"\nline two ✓"

        async def scenario():
            ws = await connect(gw)
            r = {}
            r["add"] = await request(ws, "task.add", prompt=prompt, project="web", priority="high",
                                     task_type="manager", agent="shell", timeout_s=60,
                                     requires={"gpu": "yes"}, depends_on=[dep["id"][:8]],
                                     metadata={"k": 1}, idem="web-add-1")
            r["again"] = await request(ws, "task.add", prompt=prompt, idem="web-add-1")
            tid = r["add"]["result"]["task"]["id"]
            r["tasks"] = await request(ws, "tasks", project="web", limit=10)
            r["task"] = await request(ws, "task", task=tid[:6])
            r["cancel"] = await request(ws, "task.cancel", task=tid)
            r["retry"] = await request(ws, "task.retry", task=tid)
            r["projects"] = await request(ws, "projects")
            r["stats"] = await request(ws, "stats")
            r["sync"] = await request(ws, "sync")
            r["agents"] = await request(ws, "agents")
            r["systems"] = await request(ws, "systems")
            r["timeline"] = await request(ws, "timeline", task=tid)
            r["result"] = await request(ws, "result", task=tid)
            r["events"] = await request(ws, "events", since_seq=0, limit=5)
            await ws.close()
            return r, tid
        r, tid = run(scenario())
        task = r["add"]["result"]["task"]
        self.assertEqual(r["again"]["result"]["task"]["id"], tid)  # idem: one row
        row = self.home.query("SELECT prompt, priority, task_type, agent_profile, timeout_s,"
                              " requires_context_metadata FROM tasks WHERE id = ?", tid)[0]
        self.assertEqual(tuple(row), (prompt, "high", "manager", "shell", 60, '{"gpu":"yes"}'))
        self.assertEqual(task["depends_on"], [dep["id"]])
        self.assertEqual([t["id"] for t in r["tasks"]["result"]["tasks"]], [tid])
        self.assertEqual(r["task"]["result"]["task"]["id"], tid)
        self.assertEqual(r["cancel"]["result"]["task"]["status"], "cancelled")
        self.assertEqual(r["retry"]["error"]["code"], "illegal_transition")
        self.assertEqual(r["stats"]["result"]["tasks"]["cancelled"], 1)
        sync = r["sync"]["result"]
        self.assertEqual((sync["online"], sync["state"], sync["queue"]),
                         (False, "LocalOnly", r["stats"]["result"]["sync_pending"]))
        self.assertIsNone(r["result"]["result"]["report"])
        self.assertEqual(r["agents"]["result"], {"agents": []})
        self.assertEqual(r["timeline"]["result"]["hooks"], [])
        self.assertTrue(r["timeline"]["result"]["task_events"])
        self.assertEqual(r["result"]["result"]["worktree"], None)
        self.assertEqual(len(r["events"]["result"]["events"]), 5)
        self.assertTrue(gw.alive())


    # ------------------------------------------------------------ task.retry

    def move(self, tid, *steps, **fields):
        for to in steps:
            self.home.ok("task.transition", task=tid, to=to, **fields)

    def snapshot(self, tid):
        return self.home.query("SELECT status, status_reason, attempts, retry_at, locked_by,"
                               " updated_at FROM tasks WHERE id = ?", tid)

    def test_retry_checks_the_status(self):
        """task.retry requeues only a failed task with attempts left; any other
        status is refused with illegal_transition, naming it, and changes nothing."""
        gw = self.gateway()
        add = lambda prompt, **f: self.home.ok("task.add", prompt=prompt, **f)["task"]["id"]
        tasks = {"queued": add("waits"), "created": add("held", hold=True)}
        tasks["assigned"] = add("placed")
        self.move(tasks["assigned"], "assigned", locked_by="sys-1")
        tasks["executing"] = add("runs")
        self.move(tasks["executing"], "assigned", "executing")
        tasks["complete"] = add("done")
        self.move(tasks["complete"], "assigned", "executing", "complete")
        tasks["cancelled"] = add("dropped")
        self.home.ok("task.cancel", task=tasks["cancelled"])
        spent = add("spent")
        for attempt in (1, 2, 3):
            self.move(spent, "assigned", "executing")
            self.move(spent, "failed", reason="agent exited with status 1")
            if attempt < 3:
                self.move(spent, "queued")
        flaky = add("flaky")
        self.move(flaky, "assigned", "executing")
        self.move(flaky, "failed", reason="agent exited with status 1")
        self.assertIsNotNone(self.snapshot(flaky)[0][3], "a retry is scheduled")
        before = {tid: self.snapshot(tid) for tid in [*tasks.values(), spent]}
        head = self.home.head()

        async def scenario():
            ws = await connect(gw)
            replies = {status: await request(ws, "task.retry", task=tid[:8])
                       for status, tid in tasks.items()}
            replies["spent"] = await request(ws, "task.retry", task=spent)
            replies["failed"] = await request(ws, "task.retry", task=flaky[:8])
            replies["again"] = await request(ws, "task.retry", task=flaky)
            replies["missing"] = await request(ws, "task.retry", task="ffffffff")
            await ws.close()
            return replies
        r = run(scenario())
        for status in tasks:
            error = r[status].get("error") or {}
            self.assertEqual((r[status]["ok"], error.get("code"), error.get("field")),
                             (False, "illegal_transition", "task"), f"{status}: {r[status]}")
            self.assertIn(f"is {status}, not failed", error["message"], status)
        self.assertEqual((r["spent"]["ok"], r["spent"]["error"]["code"]),
                         (False, "illegal_transition"))
        self.assertIn("3 of 3 attempts", r["spent"]["error"]["message"])
        for tid, rows in before.items():
            self.assertEqual(self.snapshot(tid), rows, "a refused retry changed the row")
        # The refusals wrote nothing; the one retry wrote its move.
        topics = [e["topic"] for e in self.home.replay(head)]
        self.assertEqual(topics, ["task.status"], topics)
        self.assertTrue(r["failed"]["ok"], r["failed"])
        task = r["failed"]["result"]["task"]
        self.assertEqual((task["status"], task["retry_at"], task["attempts"]), ("queued", None, 1))
        self.assertEqual(self.snapshot(flaky)[0][:5],
                         ("queued", "retried from the gateway", 1, None, None))
        # Retried once: now queued, so the same request again is refused.
        self.assertEqual(r["again"]["error"]["code"], "illegal_transition")
        self.assertIn("is queued, not failed", r["again"]["error"]["message"])
        self.assertEqual(r["missing"]["error"]["code"], "not_found")
        self.assertTrue(gw.alive())


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


if __name__ == "__main__":
    ccmtest.main()

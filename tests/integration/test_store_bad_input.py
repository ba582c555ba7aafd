#!/usr/bin/env python3
"""Bad input gets a clear error reply; the store stays up (same pid) and
nothing it accepted before is lost. Every test ends with that check."""

import json
import random
import threading
import time
import uuid

import zmq

import ccmtest

MIB = 1024 * 1024


def frames_of(verb, body):
    return [verb.encode() if isinstance(verb, str) else verb,
            body if isinstance(body, bytes) else json.dumps(body).encode()]


class BadInput(ccmtest.StoreTestCase):

    def setUp(self):
        super().setUp()
        self.pid = self.store.pid
        self.accepted = [self.add_task(f"accepted before {i}")["id"] for i in range(5)]
        self.store.ok("project.add", name="keep", path="/keep")
        self.projects = ["keep"]

    def assertStillUp(self):
        """ping answers from the same process; every accepted task is in the db."""
        pong = self.store.call("ping", _timeout=10)
        self.assertOk(pong)
        self.assertEqual(pong["pid"], self.pid, "the store was restarted or replaced")
        self.assertIsNone(self.store.proc.poll(), "ccm-store exited")
        ids = {r[0] for r in self.store.query("SELECT id FROM tasks")}
        missing = set(self.accepted) - ids
        self.assertFalse(missing, f"accepted tasks lost: {missing}")
        self.assertEqual(len(ids), len(self.accepted), "a refused request wrote a task")
        self.assertEqual(sorted(r[0] for r in self.store.query("SELECT name FROM projects")),
                         sorted(self.projects), "a refused request wrote a project")
        self.assertEqual(self.store.scalar("PRAGMA integrity_check"), "ok")

    def raw_reply(self, frames, client=None, timeout=10):
        frames = (client or self.store.main_client).raw(frames, timeout=timeout)
        self.assertIsNotNone(frames, "no reply: the store must answer bad input with an error")
        return ccmtest.Reply(frames)

    # ------------------------------------------------------------- frames

    def test_malformed_frames(self):
        ping = json.dumps({"v": 1}).encode()
        cases = [
            ("1 frame", [b"ping"]),
            ("1 frame, a body", [ping]),
            ("3 frames", [b"ping", ping, b"extra"]),
            ("4 frames", [b"task.add", ping, ping, ping]),
            ("empty verb after a delimiter", [b"", b"", ping]),
            ("verb with a space", [b"task add", ping]),
            ("verb with a tab", [b"task\tadd", ping]),
            ("verb with a newline", [b"ping\n", ping]),
            ("binary verb", [b"\x00\xff\xfe\x80", ping]),
            ("verb with a NUL inside", [b"pi\x00ng", ping]),
            ("upper-case verb", [b"PING", ping]),
            ("utf-8 verb", ["pïng".encode(), ping]),
            ("65-byte verb", [b"a" * 65, ping]),
            ("a JSON body as verb", [ping, ping]),
        ]
        for name, frames in cases:
            reply = self.raw_reply(frames)
            self.assertError(reply, "bad_frame", msg=name)
        # A DEALER that sends one empty frame looks like a REQ with nothing after it.
        reply = self.raw_reply([b""])
        self.assertError(reply, "bad_frame")
        # From a REQ socket: the delimiter is libzmq's, the rest is ours.
        req = self.store.client(kind=zmq.REQ)
        self.addCleanup(req.close)
        for name, frames in (("REQ empty verb", [b"", ping]), ("REQ 1 frame", [b"ping"]),
                             ("REQ 3 frames", [b"ping", ping, b"x"])):
            reply = self.raw_reply(frames, client=req)
            self.assertFalse(reply.delimiter)
            self.assertError(reply, "bad_frame", msg=name)
        # A 64-byte verb of the right alphabet is a well-formed frame: unknown, not malformed.
        self.assertError(self.raw_reply([b"a" * 64, ping]), "unknown_verb")
        self.assertStillUp()

    # --------------------------------------------------------------- json

    def test_invalid_json(self):
        cases = [b"", b"{", b"not json", b"{'v': 1}", b'{"v":1,}', b'{"v":1} {"v":1}',
                 b'{"v":1} trailing', b"\xff\xfe{}", b'{"v":1,"prompt":"unterminated}',
                 b"\x00"]
        for body in cases:
            reply = self.raw_reply([b"task.add", body])
            self.assertError(reply, "bad_json", msg=repr(body))
        for body in (b"[1, 2]", b'[{"v":1}]', b'"a string"', b"42", b"null", b"true"):
            reply = self.raw_reply([b"task.add", body])
            self.assertError(reply, "bad_json", msg=repr(body))
            self.assertIn("object", reply.message, "the message says an object is expected")
        self.assertStillUp()

    def test_deeply_nested_json(self):
        depth = 200000
        body = (b'{"v":1,"idem":"deep","prompt":"x","metadata":' + b"[" * depth + b"]" * depth + b"}")
        reply = self.raw_reply([b"task.add", body], timeout=30)
        self.assertEqual(reply.status, "error")
        self.assertIn(reply.code, ("bad_json", "bad_field"), reply)
        self.assertStillUp()

    def test_invalid_utf8_in_a_string(self):
        body = b'{"v":1,"idem":"u8","prompt":"bad \xc3\x28 byte"}'
        reply = self.raw_reply([b"task.add", body])
        self.assertEqual(reply.status, "error", "a prompt must be UTF-8")
        self.assertIn(reply.code, ("bad_json", "bad_field"), reply)
        self.assertStillUp()

    def test_version(self):
        for body, name in (({}, "missing"), ({"v": 2}, "2"), ({"v": 0}, "0"), ({"v": "1"}, "string"),
                           ({"v": 1.5}, "1.5"), ({"v": None}, "null"), ({"v": [1]}, "array"),
                           ({"v": True}, "true")):
            reply = self.raw_reply(frames_of("ping", body))
            self.assertError(reply, "bad_version", "v", msg=name)
            reply = self.raw_reply(frames_of("task.add", dict(body, prompt="x", idem=str(uuid.uuid4()))))
            self.assertError(reply, "bad_version", "v", msg=name)
        self.assertStillUp()

    def test_unknown_verbs(self):
        for verb in ("task.frobnicate", "drop", "tasks.add", "ping.", "a" * 64, "sql.exec", "0"):
            reply = self.store.call(verb, idem=str(uuid.uuid4()), prompt="x")
            self.assertError(reply, "unknown_verb", msg=verb)
            self.assertIn(verb, reply.message, "the message names the verb")
        self.assertStillUp()

    # ------------------------------------------------------------- fields

    def test_task_add_wrong_types(self):
        cases = [
            ("prompt", 5), ("prompt", ["x"]), ("prompt", {"t": "x"}),
            ("prompt", True), ("prompt", ""),
            ("project", 5), ("project", ["keep"]), ("project", True),
            ("priority", "extreme"), ("priority", 1), ("priority", "HIGH"), ("priority", ""),
            ("task_type", "boss"), ("task_type", 2), ("task_type", ["worker"]),
            ("system_id", 1), ("system_id", {"a": 1}),
            ("requires_project", 5), ("requires_project", []),
            ("requires_context_metadata", "lang=c"), ("requires_context_metadata", [1]),
            ("requires_context_metadata", 3),
            ("metadata", "x"), ("metadata", [1, 2]), ("metadata", 7),
            ("input_data", "x"), ("input_data", [1]), ("input_data", False),
            ("requires_supabase", "yes"), ("requires_supabase", 1), ("requires_supabase", {}),
            ("hold", "true"), ("hold", 1), ("hold", []),
        ]
        for field, value in cases:
            reply = self.store.call("task.add", **{"prompt": "wrong type", field: value})
            self.assertError(reply, "bad_field", field, msg=f"{field}={value!r}")
            self.assertIn(field, reply.message, "the message names the field")
        reply = self.store.call("task.add", priority="high")
        self.assertError(reply, "missing_field", "prompt")
        reply = self.store.call("task.add", prompt="x", project="no-such-project")
        self.assertError(reply, "not_found", "project")
        self.assertStillUp()

    def test_common_field_errors(self):
        self.assertError(self.store.call("task.add", prompt="x", idem=5), "bad_field", "idem")
        self.assertError(self.store.call("task.add", prompt="x", idem=""), "bad_field", "idem")
        self.assertError(self.store.call("task.add", prompt="x", idem="k" * 129), "bad_field", "idem")
        self.assertError(self.store.call("task.add", prompt="x", idem=["k"]), "bad_field", "idem")
        self.assertError(self.store.call("ping", id=5), "bad_field", "id")
        self.assertError(self.store.call("ping", id="i" * 129), "bad_field", "id")
        # The limits themselves are fine.
        self.accepted.append(self.store.ok("task.add", prompt="x", idem="k" * 128)["task"]["id"])
        self.assertEqual(self.store.ok("ping", id="i" * 128)["id"], "i" * 128)
        self.assertStillUp()

    def test_prompt_too_large(self):
        reply = self.store.call("task.add", prompt="p" * (MIB + 1), _timeout=30)
        self.assertError(reply, "bad_field", "prompt")
        self.assertIn("prompt", reply.message)
        # Multi-byte characters count in bytes: 1 MiB + 2 bytes of "é".
        reply = self.store.call("task.add", prompt="é" * (MIB // 2 + 1), _timeout=30)
        self.assertError(reply, "bad_field", "prompt")
        # Exactly 1 MiB is allowed, and stored byte for byte.
        prompt = ("0123456789abcdef" * (MIB // 16))
        task = self.store.ok("task.add", prompt=prompt)["task"]
        self.accepted.append(task["id"])
        stored = self.store.scalar("SELECT CAST(prompt AS BLOB) FROM tasks WHERE id = ?", task["id"])
        self.assertEqual(stored, prompt.encode())
        self.assertStillUp()

    def test_bodies_over_the_limit(self):
        # 16 MiB + 1 byte: just over store.max_body.
        over = b'{"v":1,"idem":"o","prompt":"' + b"a" * (16 * MIB) + b'"}'
        reply = self.raw_reply([b"task.add", over], timeout=60)
        self.assertError(reply, "too_large", "body")
        # 64 MiB.
        huge = b'{"v":1,"idem":"h","prompt":"' + b"a" * (64 * MIB) + b'"}'
        started = time.monotonic()
        reply = self.raw_reply([b"task.add", huge], timeout=60)
        self.assertError(reply, "too_large", "body")
        self.assertLess(time.monotonic() - started, 60)
        del huge, over
        # Also on a read verb, and from a fresh connection afterwards.
        reply = self.raw_reply([b"ping", b'{"v":1,"pad":"' + b"b" * (64 * MIB) + b'"}'], timeout=60)
        self.assertError(reply, "too_large", "body")
        self.assertStillUp()

    def test_missing_idem_on_writes(self):
        tid = self.accepted[0]
        writes = [("task.add", {"prompt": "no idem"}),
                  ("project.add", {"name": "noidem", "path": "/n"}),
                  ("task.transition", {"task": tid, "to": "assigned"}),
                  ("task.cancel", {"task": tid}),
                  ("hook.add", {"events": [{"hook_type": "Stop", "event_data": {}}]})]
        head = self.store.head()
        for verb, body in writes:
            reply = self.store.call(verb, idem=None, **body)
            self.assertError(reply, "missing_field", "idem", msg=verb)
        self.assertEqual(self.store.head(), head, "nothing was written")
        self.assertEqual(self.store.scalar("SELECT status FROM tasks WHERE id = ?", tid), "queued")
        self.assertEqual(self.store.scalar("SELECT count(*) FROM hook_events"), 0)
        self.assertStillUp()

    def test_illegal_transitions(self):
        tid = self.accepted[1]
        for to in ("complete", "executing", "created"):
            reply = self.store.call("task.transition", task=tid, to=to)
            self.assertError(reply, "illegal_transition", msg=to)
            self.assertIn("queued", reply.message)
            self.assertIn(to, reply.message)
        self.assertError(self.store.call("task.transition", task=tid, to="finished"), "bad_field", "to")
        self.assertEqual(self.store.scalar("SELECT status FROM tasks WHERE id = ?", tid), "queued")
        self.assertStillUp()

    def test_project_add_bad_fields(self):
        cases = [
            ({"name": "rel", "path": "relative/path"}, "bad_field", "path"),
            ({"name": "rel", "path": "./here"}, "bad_field", "path"),
            ({"name": "rel", "path": "~/home"}, "bad_field", "path"),
            ({"name": "rel", "path": ""}, "bad_field", "path"),
            ({"name": "rel", "path": "/" + "p" * 4096}, "bad_field", "path"),
            ({"name": "rel", "path": 5}, "bad_field", "path"),
            ({"name": "has space", "path": "/p"}, "bad_field", "name"),
            ({"name": "", "path": "/p"}, "bad_field", "name"),
            ({"name": "n" * 65, "path": "/p"}, "bad_field", "name"),
            ({"name": "slash/name", "path": "/p"}, "bad_field", "name"),
            ({"name": "semi;colon", "path": "/p"}, "bad_field", "name"),
            ({"name": "émoji🚀", "path": "/p"}, "bad_field", "name"),
            ({"name": "../up", "path": "/p"}, "bad_field", "name"),
            ({"name": 5, "path": "/p"}, "bad_field", "name"),
            ({"path": "/p"}, "missing_field", "name"),
            ({"name": "nopath"}, "missing_field", "path"),
            ({"name": "url", "path": "/p", "repo_url": "u" * 4097}, "bad_field", "repo_url"),
            ({"name": "url", "path": "/p", "repo_url": 5}, "bad_field", "repo_url"),
            ({"name": "cfg", "path": "/p", "config": "x=1"}, "bad_field", "config"),
            ({"name": "cfg", "path": "/p", "config": [1]}, "bad_field", "config"),
            ({"name": "keep", "path": "/again"}, "conflict", "name"),
        ]
        for body, code, field in cases:
            reply = self.store.call("project.add", **body)
            self.assertError(reply, code, field, msg=repr(body)[:100])
        # The limits themselves are fine.
        self.assertEqual(self.store.ok("project.add", name="n" * 64, path="/" + "p" * 4095)
                         ["project"]["name"], "n" * 64)
        self.projects.append("n" * 64)
        self.assertEqual(self.store.scalar("SELECT path FROM projects WHERE name = 'keep'"), "/keep")
        self.assertStillUp()

    def test_other_verbs_field_errors(self):
        self.assertError(self.store.call("hook.add", events=[{"hook_type": "Stop", "event_data": {}}]
                                         * 10001, _timeout=30), "bad_field", "events")
        self.assertError(self.store.call("task.get", task=5), "bad_field", "task")
        self.assertError(self.store.call("task.get", task="zzzz-not-hex"), "bad_field", "task")
        self.assertError(self.store.call("task.list", status=5), "bad_field", "status")
        self.assertError(self.store.call("task.list", limit="10"), "bad_field", "limit")
        self.assertError(self.store.call("task.cancel", task=str(uuid.uuid4())), "not_found", "task")
        self.assertEqual(self.store.scalar("SELECT count(*) FROM hook_events"), 0)
        self.assertStillUp()

    # ------------------------------------------------------- concurrency

    GARBAGE = [
        [b"ping"],
        [b"ping", b'{"v":1}', b"x"],
        [b"", b'{"v":1}'],
        [b"task add", b'{"v":1}'],
        [b"\xff\x00\xfe", b'{"v":1}'],
        [b"task.add", b"{not json"],
        [b"task.add", b"[1,2,3]"],
        [b"task.add", b'{"prompt":"no version","idem":"g"}'],
        [b"task.add", b'{"v":2,"prompt":"v2","idem":"g"}'],
        [b"task.nope", b'{"v":1}'],
        [b"task.add", b'{"v":1,"prompt":5,"idem":"g"}'],
        [b"task.add", b'{"v":1,"prompt":"x","priority":"extreme","idem":"g"}'],
        [b"task.add", b'{"v":1,"prompt":"no idem"}'],
        [b"task.transition", b'{"v":1,"task":"00000000","to":"complete","idem":"g"}'],
        [b"project.add", b'{"v":1,"name":"bad name","path":"rel","idem":"g"}'],
        [b"events.since", b'{"v":1,"seq":-5}'],
    ]

    def garbage(self, rng):
        kind = rng.randrange(len(self.GARBAGE) + 2)
        if kind < len(self.GARBAGE):
            return self.GARBAGE[kind]
        if kind == len(self.GARBAGE):
            return [rng.randbytes(rng.randrange(1, 40)) for _ in range(rng.randrange(1, 5))]
        return [b"task.add", b'{"v":1,"idem":"big","prompt":' + rng.randbytes(256 * 1024) + b"}"]

    def test_flood_of_garbage_beside_a_valid_writer(self):
        stop = threading.Event()
        errors = []
        counts = [0] * 5

        def flooder(n):
            rng = random.Random(n)
            client = self.store.client(timeout=15)
            try:
                window = 0
                while not stop.is_set():
                    while window < 16:
                        client.sock.send_multipart(self.garbage(rng))
                        window += 1
                    if not client.sock.poll(15000):
                        errors.append(f"flooder {n}: no reply in 15 s")
                        return
                    frames = client.sock.recv_multipart()
                    window -= 1
                    reply = ccmtest.Reply(frames)
                    if reply.ok:
                        errors.append(f"flooder {n}: garbage accepted: {reply!r}")
                        return
                    counts[n] += 1
            except Exception as e:
                errors.append(f"flooder {n}: {e!r}")
            finally:
                client.close()

        threads = [threading.Thread(target=flooder, args=(n,)) for n in range(5)]
        for t in threads:
            t.start()
        try:
            writer = self.store.client(timeout=15)
            self.addCleanup(writer.close)
            time.sleep(0.2)
            for i in range(200):
                reply = writer.call("task.add", prompt=f"valid {i}")
                self.accepted.append(self.assertOk(reply, f"valid write {i}")["task"]["id"])
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        self.assertFalse(errors, errors)
        self.assertTrue(all(c > 50 for c in counts), f"the flood was too thin: {counts}")
        prompts = {r[0] for r in self.store.query("SELECT prompt FROM tasks")}
        self.assertTrue({f"valid {i}" for i in range(200)} <= prompts)
        self.assertStillUp()

    def test_client_that_never_reads_its_replies(self):
        """A client that floods and never reads must not stall the store for others."""
        lazy = self.store.client()
        self.addCleanup(lazy.close)
        sent = 0
        deadline = time.monotonic() + 20
        while sent < 150000 and time.monotonic() < deadline:
            try:
                lazy.sock.send_multipart([b"ping", b'{"v":1}'], flags=zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                time.sleep(0.01)
        self.assertGreater(sent, 110000, "the flood could not be sent")
        other = self.store.client(timeout=10)
        self.addCleanup(other.close)
        for i in range(20):
            reply = other.call("task.add", prompt=f"beside a lazy client {i}")
            self.accepted.append(self.assertOk(reply)["task"]["id"])
        self.assertStillUp()

    def test_clients_that_leave_before_the_reply(self):
        for i in range(50):
            c = self.store.client()
            c.sock.send_multipart(frames_of("ping", {"v": 1}))
            c.close()
        ids = []
        for i in range(50):
            c = self.store.client()
            key = str(uuid.uuid4())
            c.sock.send_multipart(frames_of("task.add", {"v": 1, "idem": key, "prompt": f"gone {i}"}))
            c.close()
            ids.append(key)
        time.sleep(0.5)
        # Whatever was committed for them stays; the store goes on.
        gone = self.store.scalar("SELECT count(*) FROM tasks WHERE prompt LIKE 'gone %'")
        self.accepted.extend(r[0] for r in self.store.query("SELECT id FROM tasks WHERE prompt LIKE 'gone %'"))
        self.assertLessEqual(gone, 50)
        self.assertStillUp()


if __name__ == "__main__":
    ccmtest.main()

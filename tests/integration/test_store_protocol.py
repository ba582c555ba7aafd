#!/usr/bin/env python3
"""ccm-store against schema/protocol.md: tasks and projects from raw ZeroMQ
(DEALER and REQ), lookups and filters, idempotency, the task state machine,
sync scope, hook events, file modes and the gapless event log."""

import datetime
import json
import os
import stat
import subprocess
import time
import unittest
import uuid

import zmq

import ccmtest
from ccmtest import TASK_KEYS, PROJECT_KEYS, EVENT_KEYS, UUID_RE, TIME_RE


def request(verb, **body):
    return [verb.encode(), json.dumps(ccmtest.Client.body(verb, body)).encode()]


class TaskAdd(ccmtest.StoreTestCase):

    def test_task_add_from_dealer(self):
        prompt = "write the README"
        frames = self.store.raw(request("task.add", prompt=prompt))
        self.assertIsNotNone(frames, "no reply to task.add")
        self.assertEqual(len(frames), 2, f"a DEALER reply is [status][body]: {frames!r}")
        self.assertEqual(frames[0], b"ok")
        body = json.loads(frames[1])
        self.assertEqual(body["v"], 1)
        task = self.assertTask(body["task"])
        self.assertEqual(set(task), TASK_KEYS)
        self.assertEqual(task["prompt"], prompt)
        self.assertEqual(task["status"], "queued")
        self.assertEqual(task["priority"], "normal")
        self.assertEqual(task["task_type"], "worker")
        self.assertEqual(task["attempts"], 0)
        self.assertIs(task["requires_supabase"], False)
        self.assertIsNone(task["project_id"])
        self.assertIsNone(task["completed_at"])

        rows = self.store.query("SELECT id, prompt, status, priority, task_type, attempts FROM tasks")
        self.assertEqual(rows, [(task["id"], prompt, "queued", "normal", "worker", 0)])

        events = self.store.replay(0, task=task["id"])
        created = [e for e in events if e["topic"] == "task.created"]
        self.assertEqual(len(created), 1, events)
        ev = created[0]
        self.assertEqual(set(ev), EVENT_KEYS)
        self.assertEqual(ev["v"], 1)
        self.assertEqual(ev["entity"], "tasks")
        self.assertEqual(ev["entity_id"], task["id"])
        self.assertEqual(ev["task_id"], task["id"])
        self.assertRegex(ev["ts"], TIME_RE)
        self.assertIn(ev["data"]["status"], ("created", "queued"))
        self.assertEqual(ccmtest.status_from_events(events, task["id"]), "queued",
                         "the events must tell the task's status")
        self.assertEqual(ev["data"]["priority"], "normal")
        self.assertEqual(ev["data"]["task_type"], "worker")
        self.assertIn("project_id", ev["data"])
        self.assertIsNone(ev["data"]["project_id"])

    def test_task_add_from_req_socket(self):
        req = self.store.client(kind=zmq.REQ)
        self.addCleanup(req.close)
        frames = req.raw(request("task.add", prompt="from a REQ socket", id="req-1"))
        self.assertIsNotNone(frames, "no reply to a REQ client")
        # libzmq's REQ removes the delimiter the store echoed: what is left is [status][body].
        self.assertEqual(len(frames), 2, frames)
        self.assertEqual(frames[0], b"ok")
        body = json.loads(frames[1])
        self.assertEqual(body["id"], "req-1")
        task = self.assertTask(body["task"])
        # A REQ socket must be able to go on: a second request on the same socket.
        again = req.call("task.get", task=task["id"])
        self.assertEqual(self.assertOk(again)["task"]["prompt"], "from a REQ socket")
        self.assertEqual(self.store.query("SELECT prompt FROM tasks WHERE id = ?", task["id"]),
                         [("from a REQ socket",)])

    def test_dealer_with_empty_delimiter_gets_it_back(self):
        frames = self.store.raw([b""] + request("ping"))
        self.assertIsNotNone(frames)
        self.assertEqual(len(frames), 3, frames)
        self.assertEqual(frames[0], b"", "the store must echo the empty delimiter first")
        self.assertEqual(frames[1], b"ok")
        self.assertIs(json.loads(frames[2])["pong"], True)

    def test_correlation_id_is_echoed(self):
        reply = self.store.call("task.add", prompt="x", id="corr-42")
        self.assertEqual(self.assertOk(reply)["id"], "corr-42")
        reply = self.store.call("task.add", prompt=7, id="corr-43")
        self.assertError(reply, "bad_field", "prompt")
        self.assertEqual(reply["id"], "corr-43")
        reply = self.store.call("ping", id="p")
        self.assertEqual(reply["id"], "p")

    def test_ping_and_stats(self):
        pong = self.assertOk(self.store.call("ping"))
        self.assertIs(pong["pong"], True)
        self.assertEqual(pong["pid"], self.store.pid)
        self.assertEqual(pong["version"], "0.1.0")
        self.assertEqual(pong["seq"], 0, "a new store has no events")
        self.add_task("one")
        self.add_task("two", hold=True)
        self.store.ok("project.add", name="p1", path="/srv/p1")
        stats = self.assertOk(self.store.call("stats"))
        self.assertEqual(stats["tasks"].get("queued"), 1, stats)
        self.assertEqual(stats["tasks"].get("created"), 1, stats)
        self.assertEqual(stats["projects"], 1)
        self.assertEqual(stats["hook_events"], 0)
        self.assertEqual(stats["seq"], self.store.scalar("SELECT max(seq) FROM events"))
        self.assertIsInstance(stats["sync_pending"], int)
        self.assertGreater(stats["sync_pending"], 0)
        self.assertEqual(stats["db_bytes"] % 512, 0)
        self.assertGreater(stats["db_bytes"], 0)

    def test_all_optional_fields_round_trip(self):
        fields = dict(priority="urgent", task_type="manager",
                      requires_context_metadata={"lang": "c", "gpu": False},
                      metadata={"source": "test", "n": [1, 2, 3], "nested": {"k": "v"}},
                      input_data={"files": ["a.c", "b.c"]},
                      requires_supabase=True, requires_project="elsewhere")
        task = self.add_task("all the fields", **fields)
        for key, value in fields.items():
            self.assertEqual(task[key], value, key)
        got = self.store.ok("task.get", task=task["id"])["task"]
        for key, value in fields.items():
            self.assertEqual(got[key], value, key)
        row = self.store.query("SELECT priority, task_type, requires_context_metadata, metadata,"
                               " input_data, requires_supabase, requires_project FROM tasks")[0]
        self.assertEqual(row[0:2], ("urgent", "manager"))
        self.assertEqual(json.loads(row[2]), fields["requires_context_metadata"])
        self.assertEqual(json.loads(row[3]), fields["metadata"])
        self.assertEqual(json.loads(row[4]), fields["input_data"])
        self.assertTrue(row[5])
        self.assertEqual(row[6], "elsewhere")

    def test_hold_leaves_the_task_created(self):
        task = self.add_task("held", hold=True)
        self.assertEqual(task["status"], "created")
        self.assertEqual(self.store.query("SELECT status FROM tasks"), [("created",)])
        for priority in ("low", "normal", "high", "urgent"):
            self.assertEqual(self.add_task("p", priority=priority)["priority"], priority)
        for task_type in ("worker", "supervisory", "manager"):
            extra = {"parent_task_id": task["id"]} if task_type == "supervisory" else {}
            added = self.add_task("t", task_type=task_type, **extra)
            self.assertEqual(added["task_type"], task_type)
            self.assertEqual(added["parent_task_id"], extra.get("parent_task_id"))
            self.assertEqual(added["depends_on"], [task["id"]] if extra else [])


class Projects(ccmtest.StoreTestCase):

    def test_project_add_and_list(self):
        reply = self.store.call("project.add", name="zeta", path="/srv/zeta",
                                repo_url="https://example.invalid/zeta.git",
                                config={"branch": "main", "n": 2})
        zeta = self.assertOk(reply)["project"]
        self.assertEqual(set(zeta), PROJECT_KEYS)
        self.assertRegex(zeta["id"], UUID_RE)
        self.assertEqual(zeta["name"], "zeta")
        self.assertEqual(zeta["path"], "/srv/zeta")
        self.assertEqual(zeta["repo_url"], "https://example.invalid/zeta.git")
        self.assertEqual(zeta["config"], {"branch": "main", "n": 2})
        self.assertRegex(zeta["created_at"], TIME_RE)
        alpha = self.store.ok("project.add", name="alpha", path="/srv/alpha")["project"]
        self.assertIsNone(alpha["repo_url"])
        mid = self.store.ok("project.add", name="Mid_1.x-y", path="/srv/m")["project"]

        listed = self.assertOk(self.store.call("project.list"))["projects"]
        self.assertEqual([p["name"] for p in listed], ["Mid_1.x-y", "alpha", "zeta"])
        self.assertEqual(listed[2], zeta)
        self.assertEqual({p["id"] for p in listed}, {zeta["id"], alpha["id"], mid["id"]})

        rows = self.store.query("SELECT id, name, path FROM projects ORDER BY name")
        self.assertEqual(rows, [(mid["id"], "Mid_1.x-y", "/srv/m"),
                                (alpha["id"], "alpha", "/srv/alpha"),
                                (zeta["id"], "zeta", "/srv/zeta")])
        added = [e for e in self.store.replay(0) if e["topic"] == "project.added"]
        self.assertEqual([e["entity_id"] for e in added], [zeta["id"], alpha["id"], mid["id"]])
        self.assertEqual(added[0]["entity"], "projects")
        self.assertEqual(added[0]["data"]["name"], "zeta")

    def test_duplicate_name_is_a_conflict(self):
        self.store.ok("project.add", name="dup", path="/a")
        reply = self.store.call("project.add", name="dup", path="/b")
        self.assertError(reply, "conflict", "name")
        self.assertIn("dup", reply.message)
        self.assertEqual(self.store.query("SELECT path FROM projects"), [("/a",)])

    def test_task_in_project_by_name_and_by_id(self):
        proj = self.store.ok("project.add", name="web", path="/srv/web")["project"]
        by_name = self.add_task("in web", project="web")
        self.assertEqual(by_name["project_id"], proj["id"])
        self.assertEqual(by_name["project"], "web")
        self.assertEqual(by_name["requires_project"], "web",
                         "requires_project defaults to the project's name")
        by_id = self.add_task("in web too", project=proj["id"])
        self.assertEqual(by_id["project_id"], proj["id"])
        self.assertEqual(by_id["project"], "web")
        rows = self.store.query("SELECT count(*) FROM tasks WHERE project_id = ?", proj["id"])
        self.assertEqual(rows, [(2,)])
        created = [e for e in self.store.replay(0, task=by_name["id"]) if e["topic"] == "task.created"]
        self.assertEqual(created[0]["data"]["project_id"], proj["id"])

    def test_task_in_unknown_project_is_not_found(self):
        reply = self.store.call("task.add", prompt="x", project="nope")
        self.assertError(reply, "not_found", "project")
        self.assertIn("nope", reply.message)
        self.assertEqual(self.store.scalar("SELECT count(*) FROM tasks"), 0)


class Lookups(ccmtest.StoreTestCase):

    def test_task_get_by_id_and_prefix(self):
        task = self.add_task("find me")
        other = self.add_task("not me")
        for ref in (task["id"], task["id"][:8], task["id"][:13]):
            got = self.assertOk(self.store.call("task.get", task=ref))
            self.assertEqual(got["task"]["id"], task["id"], ref)
            self.assertEqual(got["task"]["prompt"], "find me")
            self.assertIsInstance(got["events"], list)
        if task["id"][:4] != other["id"][:4]:
            got = self.assertOk(self.store.call("task.get", task=task["id"][:4]))
            self.assertEqual(got["task"]["id"], task["id"])
        missing = str(uuid.uuid4())
        self.assertError(self.store.call("task.get", task=missing), "not_found", "task")
        self.assertError(self.store.call("task.get", task=task["id"][:3]), "bad_field", "task")
        self.assertError(self.store.call("task.get"), "missing_field", "task")

    def test_task_get_events(self):
        task = self.add_task("with history")
        self.store.ok("task.transition", task=task["id"], to="assigned", reason="picked")
        got = self.store.ok("task.get", task=task["id"])
        self.assertEqual(got["task"]["status"], "assigned")
        self.assertGreaterEqual(len(got["events"]), 1)
        for ev in got["events"]:
            self.assertEqual(set(ev), {"id", "event_type", "event_data", "created_at"}, ev)
            self.assertRegex(ev["created_at"], TIME_RE)
        self.assertEqual(self.store.scalar("SELECT count(*) FROM task_events WHERE task_id = ?",
                                           task["id"]), len(got["events"]))

    def test_ambiguous_prefix(self):
        # Submit tasks until two share their first 4 hex characters (birthday
        # bound: ~99% within 800 tasks of 65,536 prefixes).
        client = self.store.client()
        self.addCleanup(client.close)
        seen = {}
        pair = None
        for _ in range(10):
            replies = ccmtest.Pipeline(client).run(
                [("task.add", {"prompt": "birthday"}) for _ in range(200)])
            for reply in replies:
                tid = self.assertOk(reply)["task"]["id"]
                if tid[:4] in seen:
                    pair = (seen[tid[:4]], tid)
                seen[tid[:4]] = tid
            if pair:
                break
        self.assertIsNotNone(pair, "no 4-character prefix collision in 2,000 tasks")
        reply = self.store.call("task.get", task=pair[0][:4])
        self.assertError(reply, "ambiguous", "task")
        self.assertIn(pair[0][:4], reply.message)
        # A longer prefix settles it.
        common = os.path.commonprefix(pair)
        got = self.store.ok("task.get", task=pair[1][:len(common) + 1])
        self.assertEqual(got["task"]["id"], pair[1])

    def test_task_list_filters(self):
        a = self.store.ok("project.add", name="a", path="/a")["project"]
        self.store.ok("project.add", name="b", path="/b")
        order = []
        for i in range(3):
            order.append(self.add_task(f"a{i}", project="a")["id"])
        for i in range(2):
            order.append(self.add_task(f"b{i}", project="b", hold=True)["id"])
        order.append(self.add_task("none")["id"])

        everything = self.assertOk(self.store.call("task.list"))
        self.assertEqual(everything["total"], 6)
        self.assertEqual([t["id"] for t in everything["tasks"]], order[::-1], "newest first")
        for t in everything["tasks"]:
            self.assertTask(t)

        held = self.store.ok("task.list", status="created")
        self.assertEqual(held["total"], 2)
        self.assertEqual({t["prompt"] for t in held["tasks"]}, {"b0", "b1"})
        queued = self.store.ok("task.list", status="queued")
        self.assertEqual(queued["total"], 4)
        self.assertTrue(all(t["status"] == "queued" for t in queued["tasks"]))

        in_a = self.store.ok("task.list", project="a")
        self.assertEqual([t["prompt"] for t in in_a["tasks"]], ["a2", "a1", "a0"])
        self.assertEqual(self.store.ok("task.list", project=a["id"])["tasks"], in_a["tasks"])
        both = self.store.ok("task.list", project="b", status="queued")
        self.assertEqual((both["total"], both["tasks"]), (0, []))

        page1 = self.store.ok("task.list", limit=4)
        page2 = self.store.ok("task.list", limit=4, offset=4)
        self.assertEqual(page1["total"], 6)
        self.assertEqual(page2["total"], 6)
        self.assertEqual([t["id"] for t in page1["tasks"] + page2["tasks"]], order[::-1])
        self.assertEqual(len(page1["tasks"]), 4)

        self.assertError(self.store.call("task.list", status="sleeping"), "bad_field", "status")
        self.assertError(self.store.call("task.list", limit=0), "bad_field", "limit")
        self.assertError(self.store.call("task.list", limit=1001), "bad_field", "limit")
        self.assertError(self.store.call("task.list", offset=-1), "bad_field", "offset")
        self.assertError(self.store.call("task.list", project="nope"), "not_found", "project")


class Idempotency(ccmtest.StoreTestCase):

    def test_same_idem_three_times(self):
        key = str(uuid.uuid4())
        frames = request("task.add", prompt="only once", idem=key)
        replies = [self.store.raw(frames) for _ in range(3)]
        self.assertTrue(all(r is not None for r in replies))
        self.assertEqual(replies[0][0], b"ok")
        self.assertEqual(replies[1], replies[0], "a retry must get the first reply again")
        self.assertEqual(replies[2], replies[0])
        tid = json.loads(replies[0][1])["task"]["id"]
        self.assertEqual(self.store.query("SELECT id FROM tasks WHERE prompt = 'only once'"),
                         [(tid,)])
        self.assertEqual(self.store.query("SELECT count(*) FROM tasks"), [(1,)])
        self.assertEqual(self.store.scalar("SELECT count(*) FROM events WHERE task_id = ?", tid),
                         len(self.store.replay(0)), "retries must write no events")

    def test_retry_with_changed_body_gets_the_first_reply(self):
        key = str(uuid.uuid4())
        first = self.assertOk(self.store.call("task.add", prompt="first", idem=key))
        head = self.store.head()
        second = self.assertOk(self.store.call("task.add", prompt="second", idem=key))
        self.assertEqual(second["task"], first["task"])
        self.assertEqual(self.store.query("SELECT prompt FROM tasks"), [("first",)])
        self.assertEqual(self.store.head(), head)

    def test_same_idem_from_three_sockets_at_once(self):
        key = str(uuid.uuid4())
        clients = [self.store.client() for _ in range(3)]
        for c in clients:
            self.addCleanup(c.close)
        for c in clients:
            c.sock.send_multipart(request("task.add", prompt="racing", idem=key))
        replies = []
        for c in clients:
            self.assertTrue(c.sock.poll(10000), "no reply")
            replies.append(ccmtest.Reply(c.sock.recv_multipart()))
        ids = {self.assertOk(r)["task"]["id"] for r in replies}
        self.assertEqual(len(ids), 1, replies)
        self.assertEqual(self.store.query("SELECT count(*) FROM tasks"), [(1,)])

    def test_idem_reused_for_another_verb(self):
        key = str(uuid.uuid4())
        self.store.ok("task.add", prompt="x", idem=key)
        reply = self.store.call("project.add", name="p", path="/p", idem=key)
        self.assertError(reply, "idem_conflict", "idem")
        self.assertEqual(self.store.query("SELECT count(*) FROM projects"), [(0,)])

    def test_idem_of_other_writes(self):
        key = str(uuid.uuid4())
        p1 = self.store.ok("project.add", name="once", path="/once", idem=key)
        p2 = self.store.ok("project.add", name="once", path="/once", idem=key)
        self.assertEqual(p1, p2, "a retried project.add must not be a conflict")
        task = self.add_task("t")
        key = str(uuid.uuid4())
        t1 = self.store.ok("task.transition", task=task["id"], to="assigned", idem=key)
        t2 = self.store.ok("task.transition", task=task["id"], to="assigned", idem=key)
        self.assertEqual(t1, t2, "a retried transition must not be refused as illegal")
        self.assertEqual(t1["task"]["attempts"], 1)
        self.assertEqual(self.store.query("SELECT status, attempts FROM tasks"), [("assigned", 1)])
        key = str(uuid.uuid4())
        events = [{"hook_type": "Stop", "event_data": {"n": 1}}]
        h1 = self.store.ok("hook.add", events=events, idem=key)
        h2 = self.store.ok("hook.add", events=events, idem=key)
        self.assertEqual(h1, h2)
        self.assertEqual(self.store.query("SELECT count(*) FROM hook_events"), [(1,)])


class StateMachine(ccmtest.StoreTestCase):

    def move(self, task_id, to, reason=None):
        body = {"task": task_id, "to": to}
        if reason is not None:
            body["reason"] = reason
        return self.store.call("task.transition", **body)

    def status_of(self, task_id):
        return self.store.query("SELECT status, attempts FROM tasks WHERE id = ?", task_id)[0]

    def assertRefused(self, task_id, to, frm):
        before = self.store.query("SELECT status, attempts, updated_at FROM tasks WHERE id = ?",
                                  task_id)
        head = self.store.head()
        reply = self.move(task_id, to)
        self.assertError(reply, "illegal_transition", msg=f"{frm} -> {to}")
        self.assertIn(frm, reply.message, f"the message must name the current state: {reply!r}")
        self.assertIn(to, reply.message, f"the message must name the target state: {reply!r}")
        after = self.store.query("SELECT status, attempts, updated_at FROM tasks WHERE id = ?",
                                 task_id)
        self.assertEqual(after, before, "a refused transition must change nothing")
        self.assertEqual(self.store.head(), head, "a refused transition must write no event")

    def test_full_legal_path(self):
        task = self.add_task("walk the path", hold=True)
        tid = task["id"]
        self.assertEqual(task["status"], "created")
        steps = [("queued", 0), ("assigned", 1), ("executing", 1), ("complete", 1)]
        for to, attempts in steps:
            reply = self.move(tid, to, reason=f"to {to}")
            got = self.assertOk(reply)["task"]
            self.assertTask(got)
            self.assertEqual((got["status"], got["attempts"]), (to, attempts))
            self.assertEqual(got["status_reason"], f"to {to}")
            self.assertEqual(self.status_of(tid), (to, attempts))
            if to == "executing":
                self.assertIsNotNone(got["started_at"])
                self.assertRegex(got["started_at"], TIME_RE)
            if to == "complete":
                self.assertRegex(got["completed_at"], TIME_RE)
        statuses = [e for e in self.store.replay(0, task=tid) if e["topic"] == "task.status"]
        self.assertEqual([(e["data"]["from"], e["data"]["to"]) for e in statuses],
                         [("created", "queued"), ("queued", "assigned"),
                          ("assigned", "executing"), ("executing", "complete")])
        self.assertEqual([e["data"]["attempts"] for e in statuses], [0, 1, 1, 1])
        self.assertEqual([e["data"]["reason"] for e in statuses],
                         ["to queued", "to assigned", "to executing", "to complete"])
        for e in statuses:
            self.assertEqual((e["entity"], e["entity_id"], e["task_id"]), ("tasks", tid, tid))
        # complete is terminal
        for to in ("queued", "assigned", "executing", "failed", "cancelled", "created"):
            self.assertRefused(tid, to, "complete")

    def test_failed_requeues_while_attempts_below_3(self):
        tid = self.add_task("flaky")["id"]
        for attempt in (1, 2, 3):
            got = self.store.ok("task.transition", task=tid, to="assigned")["task"]
            self.assertEqual(got["attempts"], attempt)
            self.store.ok("task.transition", task=tid, to="executing")
            got = self.store.ok("task.transition", task=tid, to="failed", reason="boom")["task"]
            # A retry is scheduled while attempts are left (test_task_retry has the rest).
            self.assertEqual((got["status"], got["status_reason"]),
                             ("failed", f"retry {attempt + 1} of 3 at {got['retry_at'][11:19]} UTC,"
                                        " after: boom" if attempt < 3
                              else "failed after 3 attempts: boom"))
            if attempt < 3:
                got = self.store.ok("task.transition", task=tid, to="queued")["task"]
                self.assertEqual((got["status"], got["attempts"]), ("queued", attempt))
        self.assertEqual(self.status_of(tid), ("failed", 3))
        self.assertRefused(tid, "queued", "failed")
        for to in ("assigned", "executing", "complete", "created"):
            self.assertRefused(tid, to, "failed")

    def test_back_to_queued_needs_attempts_below_3(self):
        tid = self.add_task("bounced")["id"]
        for attempt in (1, 2):
            self.store.ok("task.transition", task=tid, to="assigned")
            self.store.ok("task.transition", task=tid, to="queued")
        self.store.ok("task.transition", task=tid, to="assigned")
        self.assertEqual(self.status_of(tid), ("assigned", 3))
        self.assertRefused(tid, "queued", "assigned")
        self.store.ok("task.transition", task=tid, to="executing")
        self.assertRefused(tid, "queued", "executing")
        self.assertOk(self.move(tid, "failed"))

    def test_illegal_moves(self):
        created = self.add_task("c", hold=True)["id"]
        for to in ("assigned", "executing", "complete", "failed", "created"):
            self.assertRefused(created, to, "created")
        queued = self.add_task("q")["id"]
        for to in ("executing", "complete", "created", "queued"):
            self.assertRefused(queued, to, "queued")
        assigned = self.add_task("a")["id"]
        self.store.ok("task.transition", task=assigned, to="assigned")
        for to in ("complete", "created", "assigned"):
            self.assertRefused(assigned, to, "assigned")
        executing = self.add_task("e")["id"]
        self.store.ok("task.transition", task=executing, to="assigned")
        self.store.ok("task.transition", task=executing, to="executing")
        for to in ("assigned", "created", "executing"):
            self.assertRefused(executing, to, "executing")
        cancelled = self.add_task("x")["id"]
        self.store.ok("task.cancel", task=cancelled)
        for to in ("queued", "assigned", "complete", "failed", "cancelled"):
            self.assertRefused(cancelled, to, "cancelled")

    def test_transition_field_errors(self):
        tid = self.add_task("t")["id"]
        self.assertError(self.move(tid, "bogus"), "bad_field", "to")
        self.assertError(self.store.call("task.transition", task=tid), "missing_field", "to")
        self.assertError(self.store.call("task.transition", to="assigned"), "missing_field", "task")
        self.assertError(self.move(str(uuid.uuid4()), "assigned"), "not_found", "task")
        self.assertError(self.store.call("task.transition", task=tid, to=5), "bad_field", "to")
        self.assertError(self.store.call("task.transition", task=tid, to="assigned", reason=5),
                         "bad_field", "reason")
        self.assertEqual(self.status_of(tid), ("queued", 0))
        # by prefix
        got = self.store.ok("task.transition", task=tid[:8], to="assigned")["task"]
        self.assertEqual((got["id"], got["status"]), (tid, "assigned"))

    def test_cancel(self):
        for start in ("created", "queued", "assigned", "executing"):
            tid = self.add_task(start, hold=True)["id"]
            path = {"created": [], "queued": ["queued"], "assigned": ["queued", "assigned"],
                    "executing": ["queued", "assigned", "executing"]}[start]
            for to in path:
                self.store.ok("task.transition", task=tid, to=to)
            got = self.assertOk(self.store.call("task.cancel", task=tid[:8], reason="no longer needed"))
            self.assertEqual(got["task"]["status"], "cancelled")
            self.assertEqual(got["task"]["status_reason"], "no longer needed")
            self.assertEqual(self.store.query("SELECT status, status_reason FROM tasks WHERE id = ?",
                                              tid), [("cancelled", "no longer needed")])
            last = self.store.replay(0, task=tid)[-1]
            self.assertEqual((last["topic"], last["data"]["from"], last["data"]["to"]),
                             ("task.status", start, "cancelled"))
            reply = self.store.call("task.cancel", task=tid)
            self.assertError(reply, "illegal_transition")
            self.assertIn("cancelled", reply.message)
        self.assertError(self.store.call("task.cancel"), "missing_field", "task")
        self.assertError(self.store.call("task.cancel", task=str(uuid.uuid4())), "not_found", "task")


class SyncScope(ccmtest.StoreTestCase):

    def sync_rows_since(self, rowid):
        return self.store.query("SELECT rowid, * FROM sync_queue WHERE rowid > ? ORDER BY rowid",
                                rowid)

    def last_rowid(self):
        return self.store.scalar("SELECT coalesce(max(rowid), 0) FROM sync_queue")

    def assertQueued(self, rows, table, row_id):
        """Some sync_queue row names the table and the row's id."""
        for row in rows:
            values = [str(v) for v in row[1:] if v is not None]
            if table in values and any(row_id in v for v in values):
                return
        self.fail(f"no sync_queue row for {table} {row_id} in {rows!r:.1500}")

    def test_sync_queue_rows_for_syncable_tables_only(self):
        mark = self.last_rowid()
        proj = self.store.ok("project.add", name="synced", path="/s")["project"]
        self.assertQueued(self.sync_rows_since(mark), "projects", proj["id"])

        mark = self.last_rowid()
        task = self.add_task("sync me", project="synced")
        self.assertQueued(self.sync_rows_since(mark), "tasks", task["id"])

        mark = self.last_rowid()
        self.store.ok("task.transition", task=task["id"], to="assigned")
        self.assertQueued(self.sync_rows_since(mark), "tasks", task["id"])

        mark = self.last_rowid()
        count = self.store.scalar("SELECT count(*) FROM sync_queue")
        reply = self.store.ok("hook.add", events=[
            {"hook_type": "PreToolUse", "event_data": {"tool_name": "Bash"}, "task_id": task["id"],
             "tool_name": "Bash"},
            {"hook_type": "Stop", "event_data": {}},
        ])
        self.assertEqual(reply["count"], 2)
        self.assertEqual(self.store.scalar("SELECT count(*) FROM hook_events"), 2)
        self.assertEqual(self.sync_rows_since(mark), [], "hook_events never leave the machine")
        self.assertEqual(self.store.scalar("SELECT count(*) FROM sync_queue"), count)
        for row in self.store.query("SELECT * FROM sync_queue"):
            self.assertNotIn("hook_events", [str(v) for v in row])
            self.assertNotIn("automation_events", [str(v) for v in row])
            self.assertNotIn("task_worktrees", [str(v) for v in row])


class Hooks(ccmtest.StoreTestCase):

    def test_hook_add_batch(self):
        task = self.add_task("hooked")
        tid = task["id"]
        batch = [
            {"hook_type": "SessionStart", "event_data": {"hook_event_name": "SessionStart",
                                                         "source": "startup"},
             "task_id": tid, "agent_id": "agent-1", "uid": "u-1"},
            {"hook_type": "UserPromptSubmit",
             "event_data": {"prompt": "say \"hi\" $(rm -rf /) `x` \u00e9\U0001F680\n\ttab"},
             "task_id": tid, "uid": "u-2", "hook_timestamp": "2026-11-23T10:15:02.123Z"},
            {"hook_type": "PreToolUse", "event_data": {"tool_name": "Write",
                                                       "tool_input": {"file_path": "/p/a.c"}},
             "task_id": tid, "tool_name": "Write", "file_path": "/p/a.c", "uid": "u-3"},
            {"hook_type": "PostToolUse", "event_data": {"tool_name": "Write"}, "task_id": tid,
             "tool_name": "Write", "file_path": "/p/a.c", "success": True, "uid": "u-4"},
            {"hook_type": "PostToolUse", "event_data": {"tool_name": "Bash"}, "task_id": tid,
             "tool_name": "Bash", "success": False, "uid": "u-5"},
            {"hook_type": "Stop", "event_data": {"stop_hook_active": False}, "uid": "u-6"},
            {"hook_type": "SomeFutureHook", "event_data": {"novel": [1, 2, {"x": None}]},
             "uid": "u-7"},
            {"hook_type": "Notification", "event_data": {"message": "no uid"}},
        ]
        before = time.time()
        reply = self.assertOk(self.store.call("hook.add", events=batch))
        self.assertEqual(reply["count"], len(batch))
        self.assertIn("first_id", reply)
        self.assertIn("last_id", reply)

        rows = self.store.query(
            "SELECT id, hook_type, event_data, task_id, agent_id, tool_name, file_path, success,"
            " hook_timestamp, uid FROM hook_events ORDER BY rowid")
        self.assertEqual(len(rows), len(batch))
        self.assertEqual(rows[0][0], reply["first_id"])
        self.assertEqual(rows[-1][0], reply["last_id"])
        for row, ev in zip(rows, batch):
            (_, hook_type, event_data, task_id, agent_id, tool_name, file_path, success,
             hook_ts, uid) = row
            self.assertEqual(hook_type, ev["hook_type"])
            self.assertEqual(json.loads(event_data), ev["event_data"], "event_data byte for byte")
            self.assertEqual(task_id, ev.get("task_id"))
            self.assertEqual(agent_id, ev.get("agent_id"))
            self.assertEqual(tool_name, ev.get("tool_name"))
            self.assertEqual(file_path, ev.get("file_path"))
            if "success" in ev:
                self.assertEqual(bool(success), ev["success"])
                self.assertIn(success, (0, 1))
            else:
                self.assertIsNone(success)
            self.assertEqual(uid, ev.get("uid"))
            if "hook_timestamp" in ev:
                self.assertEqual(hook_ts, ev["hook_timestamp"])
            else:
                self.assertRegex(hook_ts, TIME_RE)
                when = datetime.datetime.strptime(hook_ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                    tzinfo=datetime.timezone.utc).timestamp()
                self.assertLess(abs(when - before), 120, "hook_timestamp defaults to now (UTC)")

        # One hook.added event per task of the request: 5 rows of the task, 3 without one.
        added = self.store.replay(0, topic="hook.")
        self.assertEqual([e["topic"] for e in added], ["hook.added", "hook.added"])
        by_task = {e["task_id"]: e for e in added}
        self.assertEqual(set(by_task), {tid, None})
        self.assertEqual(by_task[tid]["entity"], "hook_events")
        self.assertEqual(by_task[tid]["data"], {
            "first_id": rows[0][0], "last_id": rows[4][0], "count": 5,
            "types": {"SessionStart": 1, "UserPromptSubmit": 1, "PreToolUse": 1,
                      "PostToolUse": 2}})
        self.assertEqual(by_task[None]["data"], {
            "first_id": rows[5][0], "last_id": rows[7][0], "count": 3,
            "types": {"Stop": 1, "SomeFutureHook": 1, "Notification": 1}})

        # hook.list reads them back: all, by task (full id or prefix), after an id, limited.
        listed = self.assertOk(self.store.call("hook.list"))["hooks"]
        self.assertEqual([h["id"] for h in listed], [r[0] for r in rows])
        for hook, src in zip(listed, batch):
            self.assertEqual(hook["hook_type"], src["hook_type"])
            self.assertEqual(hook["event_data"], src["event_data"])
            self.assertEqual(hook["task_id"], src.get("task_id"))
            self.assertEqual(hook["success"], src.get("success"))
            self.assertEqual(hook["tool_name"], src.get("tool_name"))
        of_task = self.assertOk(self.store.call("hook.list", task=tid[:8]))["hooks"]
        self.assertEqual([h["id"] for h in of_task], [r[0] for r in rows[:5]])
        page = self.assertOk(self.store.call("hook.list", task=tid, after_id=rows[1][0],
                                             limit=2))["hooks"]
        self.assertEqual([h["id"] for h in page], [rows[2][0], rows[3][0]])
        self.assertEqual(self.assertOk(self.store.call("hook.list", task="no-such-task"))["hooks"],
                         [])
        self.assertError(self.store.call("hook.list", limit=0), "bad_field", "limit")
        self.assertError(self.store.call("hook.list", after_id="x"), "bad_field", "after_id")
        self.assertError(self.store.call("hook.list", task=""), "bad_field", "task")

        # uid dedupe: two stored uids and a new one, plus the new one twice.
        again = [{"hook_type": "Stop", "event_data": {"again": 1}, "uid": "u-1"},
                 {"hook_type": "Stop", "event_data": {"again": 2}, "uid": "u-7"},
                 {"hook_type": "Stop", "event_data": {"again": 3}, "uid": "u-8"},
                 {"hook_type": "Stop", "event_data": {"again": 4}, "uid": "u-8"}]
        head = self.store.head()
        reply = self.assertOk(self.store.call("hook.add", events=again))
        self.assertEqual(reply["count"], 1)
        self.assertEqual(self.store.query("SELECT uid, count(*) FROM hook_events WHERE uid IS NOT NULL"
                                          " GROUP BY uid HAVING count(*) > 1"), [])
        self.assertEqual(json.loads(self.store.scalar(
            "SELECT event_data FROM hook_events WHERE uid = 'u-1'")), batch[0]["event_data"],
            "a duplicate uid must not overwrite the stored event")
        self.assertEqual(json.loads(self.store.scalar(
            "SELECT event_data FROM hook_events WHERE uid = 'u-8'")), {"again": 3})
        self.assertEqual(self.store.scalar("SELECT count(*) FROM hook_events"), len(batch) + 1)
        new = self.store.replay(head)
        self.assertEqual([(e["topic"], e["data"]["count"], e["data"]["types"]) for e in new],
                         [("hook.added", 1, {"Stop": 1})], "only inserted rows are counted")
        self.assertEqual(new[0]["data"]["first_id"], self.store.scalar(
            "SELECT id FROM hook_events WHERE uid = 'u-8'"))
        head = self.store.head()
        self.assertOk(self.store.call("hook.add", events=again))
        self.assertEqual(self.store.head(), head, "a request that inserts nothing adds no event")

    def test_hook_add_field_errors(self):
        self.assertError(self.store.call("hook.add"), "missing_field", "events")
        self.assertError(self.store.call("hook.add", events=[]), "bad_field", "events")
        self.assertError(self.store.call("hook.add", events={"hook_type": "Stop"}), "bad_field",
                         "events")
        for bad in ({"event_data": {}}, {"hook_type": "Stop"}, {"hook_type": 3, "event_data": {}},
                    {"hook_type": "Stop", "event_data": "text"},
                    {"hook_type": "", "event_data": {}},
                    {"hook_type": "x" * 65, "event_data": {}},
                    {"hook_type": "Stop", "event_data": {}, "success": "yes"}):
            reply = self.store.call("hook.add", events=[{"hook_type": "Stop", "event_data": {}}, bad])
            self.assertIn(reply.code, ("missing_field", "bad_field"), f"{bad}: {reply!r}")
            self.assertEqual(reply.status, "error")
            self.assertTrue(reply.field, f"the error must name the field: {reply!r}")
        self.assertEqual(self.store.scalar("SELECT count(*) FROM hook_events"), 0,
                         "a refused batch writes nothing, not even its good events")


class Files(ccmtest.CcmTestCase):

    def test_modes_migrations_and_wal(self):
        home = self.make_home(start=True)
        home.ok("task.add", prompt="make the wal exist")
        mode = stat.S_IMODE(os.stat(home.db_path).st_mode)
        self.assertEqual(mode, 0o600, f"ccm.db mode is {mode:o}")
        mode = stat.S_IMODE(os.stat(home.run_dir).st_mode)
        self.assertEqual(mode, 0o700, f"run/ mode is {mode:o}")
        for suffix in ("-wal", "-shm"):
            if os.path.exists(home.db_path + suffix):
                mode = stat.S_IMODE(os.stat(home.db_path + suffix).st_mode)
                self.assertEqual(mode & 0o077, 0, f"ccm.db{suffix} mode is {mode:o}")
        self.assertEqual(home.scalar("PRAGMA journal_mode"), "wal")
        migrations = home.scalar("SELECT count(*) FROM schema_migrations")
        self.assertGreater(migrations, 0)
        tables = {r[0] for r in home.query("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in ("systems", "projects", "contexts", "tasks", "task_results", "task_events",
                      "hook_events", "task_worktrees", "automation_events", "supervisory_reports",
                      "sync_queue", "agents", "skills", "events", "schema_migrations"):
            self.assertIn(table, tables)

        # A restart applies nothing twice and keeps the data.
        self.assertEqual(home.stop(), 0, "ccm-store must exit 0 on SIGTERM")
        home.start()
        self.assertEqual(home.scalar("SELECT count(*) FROM schema_migrations"), migrations)
        self.assertEqual(home.scalar("SELECT prompt FROM tasks"), "make the wal exist")
        self.assertEqual(stat.S_IMODE(os.stat(home.db_path).st_mode), 0o600)

    def test_second_store_on_the_same_home_is_refused(self):
        home = self.make_home(start=True)
        pid = home.pid
        second = subprocess.run([ccmtest.STORE_BIN], env=home.env, capture_output=True,
                                timeout=15, stdin=subprocess.DEVNULL)
        self.assertNotEqual(second.returncode, 0, "two stores must never share one database")
        self.assertTrue(second.stderr.strip(), "the refusal must say why on stderr")
        self.assertEqual(home.ok("ping")["pid"], pid, "the first store keeps serving")


class EventLog(ccmtest.StoreTestCase):

    @unittest.skip("UPDATE/DELETE on events is refused by triggers: not observable through the "
                   "protocol, and the tests open the database read-only")
    def test_events_are_append_only(self):
        pass

    def test_events_rows_are_gapless(self):
        self.store.ok("project.add", name="p", path="/p")
        tids = [self.add_task(f"t{i}", project="p")["id"] for i in range(20)]
        for tid in tids[:10]:
            self.store.ok("task.transition", task=tid, to="assigned")
        for tid in tids[10:15]:
            self.store.call("task.transition", task=tid, to="complete")  # refused: no event
            self.store.ok("task.cancel", task=tid)
        self.store.ok("hook.add", events=[{"hook_type": "Stop", "event_data": {}}] * 5)
        seqs = [r[0] for r in self.store.query("SELECT seq FROM events ORDER BY seq")]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)))
        self.assertEqual(self.store.head(), len(seqs))
        self.assertGreaterEqual(len(seqs), 1 + 20 + 10 + 5 + 5)
        replayed = self.store.replay(0)
        self.assertEqual([e["seq"] for e in replayed], seqs)
        topics = self.store.query("SELECT seq, topic FROM events ORDER BY seq")
        self.assertEqual([(e["seq"], e["topic"]) for e in replayed], topics)


if __name__ == "__main__":
    ccmtest.main()

#!/usr/bin/env python3
"""The event log as a subscriber sees it: replay with events.since, live PUB
frames after COMMIT, zguide's Clone pattern filling gaps, filters, paging."""

import threading
import time

import ccmtest
from ccmtest import EVENT_KEYS, TIME_RE, recv_event


def add_tasks(client, count, **fields):
    """count task.add through a pipeline; returns the task ids in request order."""
    replies = ccmtest.Pipeline(client).run(
        [("task.add", dict(prompt=f"task {i}", **fields)) for i in range(count)])
    ids = []
    for reply in replies:
        if not reply.ok:
            raise AssertionError(f"task.add refused: {reply!r}")
        ids.append(reply["task"]["id"])
    return ids


class EventsTestCase(ccmtest.StoreTestCase):

    def setUp(self):
        super().setUp()
        self.bulk = self.store.client()
        self.addCleanup(self.bulk.close)

    def open_sub(self, topic=b"", **kwargs):
        sub = self.store.sub(topic, **kwargs)
        self.addCleanup(sub.close, 0)
        return sub

    def wait_joined(self, subs, probe):
        """Calls probe() until every SUB in subs has received something
        (ZeroMQ's slow joiner), then drains them. Returns the drained events."""
        got = {id(s): [] for s in subs}
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(got.values()):
            probe()
            for s in subs:
                msg = recv_event(s, timeout=0.2)
                while msg:
                    got[id(s)].append(msg)
                    msg = recv_event(s, timeout=0.05)
        self.assertTrue(all(got.values()), "a SUB socket never received an event in 10 s")
        return got

    def read_until(self, sub, seq, after=0, timeout=5):
        """PUB messages after `after` up to and including seq; fails if one
        takes longer than timeout. (Late probe events, <= after, are skipped.)"""
        got = []
        while not got or int(got[-1][1]) < seq:
            msg = recv_event(sub, timeout=timeout)
            self.assertIsNotNone(msg, f"PUB stopped after {len(got)} events, before seq {seq}")
            if int(msg[1]) > after:
                got.append(msg)
        return got

    def db_events(self, after=0):
        return self.store.query("SELECT seq, topic, entity, entity_id, task_id FROM events"
                                " WHERE seq > ? ORDER BY seq", after)

    def assertEventMatchesDb(self, events, after=0):
        rows = self.db_events(after)
        self.assertEqual([(e["seq"], e["topic"], e["entity"], e["entity_id"], e["task_id"])
                          for e in events], rows)


class Replay(EventsTestCase):

    def test_late_subscriber_replays_everything(self):
        proj = self.store.ok("project.add", name="late", path="/late")["project"]
        ids = add_tasks(self.bulk, 250, project="late")
        ids += add_tasks(self.bulk, 250)
        head = self.store.head()
        self.assertGreaterEqual(head, 501)

        # A client that was never connected before.
        late = self.store.client()
        self.addCleanup(late.close)
        events = []
        seq = 0
        pages = 0
        while True:
            page = late.call("events.since", seq=seq)
            self.assertOk(page)
            self.assertEqual(page["last_seq"], head)
            events.extend(page["events"])
            pages += 1
            if not page["more"]:
                break
            seq = page["events"][-1]["seq"]
        self.assertEqual([e["seq"] for e in events], list(range(1, head + 1)),
                         "replay from 0 must give seq 1..N exactly")
        for e in events:
            self.assertEqual(set(e), EVENT_KEYS, e)
            self.assertEqual(e["v"], 1)
            self.assertRegex(e["ts"], TIME_RE)
        self.assertEqual(events[0]["topic"], "project.added")
        self.assertEqual(events[0]["entity_id"], proj["id"])
        created = [e for e in events if e["topic"] == "task.created"]
        self.assertEqual(sorted(e["entity_id"] for e in created), sorted(ids),
                         "one task.created per task")
        for e in created:
            self.assertEqual(e["entity"], "tasks")
            self.assertEqual(e["task_id"], e["entity_id"])
        for tid in ids[::50]:
            self.assertEqual(ccmtest.status_from_events(events, tid), "queued")
        in_project = {e["entity_id"] for e in created if e["data"]["project_id"] == proj["id"]}
        self.assertEqual(in_project, set(ids[:250]))
        allowed = {"project.added", "task.created", "task.status"}
        self.assertEqual({e["topic"] for e in events} - allowed, set())
        self.assertEventMatchesDb(events)

        # The same through small pages.
        small = self.store.replay(0, limit=37)
        self.assertEqual(small, events)


class Live(EventsTestCase):

    def test_live_frames_after_commit(self):
        sub = self.open_sub()
        self.wait_joined([sub], lambda: self.store.ok("task.add", prompt="probe", hold=True))
        prompt = "live one"
        before = self.store.head()
        task = self.store.ok("task.add", prompt=prompt)["task"]
        head = self.store.head()
        frames = self.read_until(sub, head, after=before)
        self.assertTrue(frames, "no PUB frame after an acknowledged task.add")
        topic, seq, event = frames[0]
        self.assertEqual(topic, b"task.created")
        self.assertRegex(seq.decode("ascii"), r"^[1-9][0-9]*$", "seq frame is decimal ASCII")
        self.assertEqual(int(seq), event["seq"])
        self.assertEqual(set(event), EVENT_KEYS)
        self.assertEqual((event["v"], event["topic"], event["entity"], event["entity_id"],
                          event["task_id"]), (1, "task.created", "tasks", task["id"], task["id"]))
        self.assertEqual(ccmtest.status_from_events([f[2] for f in frames], task["id"]), "queued")
        # Published after COMMIT: another process reading the file sees the task now.
        self.assertEqual(self.store.query("SELECT prompt FROM tasks WHERE id = ?", task["id"]),
                         [(prompt,)])
        self.assertEqual(self.store.scalar("SELECT topic FROM events WHERE seq = ?", event["seq"]),
                         "task.created")
        # The PUB body is the same EVENT that events.since replays.
        replayed = self.store.ok("events.since", seq=event["seq"] - 1, limit=1)["events"]
        self.assertEqual(replayed, [event])

        moved = self.store.ok("task.transition", task=task["id"], to="assigned", reason="go")
        self.assertEqual(moved["task"]["attempts"], 1)
        topic, seq, event2 = recv_event(sub, timeout=5) or (None, None, None)
        self.assertEqual(topic, b"task.status")
        self.assertEqual(int(seq), head + 1)
        self.assertEqual(event2["data"]["from"], "queued")
        self.assertEqual(event2["data"]["to"], "assigned")
        self.assertEqual(event2["data"]["reason"], "go")
        self.assertEqual(event2["data"]["attempts"], 1)
        self.assertIsNone(recv_event(sub, timeout=0.3), "no other event was expected")

    def test_every_write_of_a_batch_is_published_in_order(self):
        sub = self.open_sub()
        self.wait_joined([sub], lambda: self.store.ok("task.add", prompt="probe", hold=True))
        head = self.store.head()
        ids = add_tasks(self.bulk, 300)
        after = self.store.head()
        received = self.read_until(sub, after, after=head)
        self.assertEqual([int(m[1]) for m in received], list(range(head + 1, after + 1)))
        self.assertEqual(sorted(m[2]["entity_id"] for m in received if m[0] == b"task.created"),
                         sorted(ids))
        self.assertEqual([m[2] for m in received], self.store.replay(head))

    def test_topic_prefix_subscriptions(self):
        subs = {prefix: self.open_sub(prefix) for prefix in (b"task.status", b"hook.", b"project.")}
        n = [0]

        def probe():
            n[0] += 1
            self.store.ok("project.add", name=f"probe{n[0]}", path="/probe")
            tid = self.store.ok("task.add", prompt="probe")["task"]["id"]
            self.store.ok("task.cancel", task=tid)
            self.store.ok("hook.add", events=[{"hook_type": "Probe", "event_data": {}}])

        drained = self.wait_joined(list(subs.values()), probe)
        for prefix, sock in subs.items():
            for topic, _, _ in drained[id(sock)]:
                self.assertTrue(topic.startswith(prefix), (prefix, topic))

        mark = self.store.head()
        self.store.ok("project.add", name="real", path="/real")
        tid = self.store.ok("task.add", prompt="real")["task"]["id"]
        self.store.ok("task.transition", task=tid, to="assigned")
        self.store.ok("task.transition", task=tid, to="executing")
        self.store.ok("hook.add", events=[{"hook_type": "PreToolUse", "event_data": {}},
                                          {"hook_type": "PostToolUse", "event_data": {}}])
        everything = self.store.replay(mark)
        for prefix, sock in subs.items():
            expect = [(e["seq"], e["topic"].encode()) for e in everything
                      if e["topic"].encode().startswith(prefix)]
            got = [(int(m[1]), m[0]) for m in self.read_until(sock, expect[-1][0], after=mark)]
            self.assertEqual(got, expect, prefix)
            self.assertIsNone(recv_event(sock, timeout=0.2), f"{prefix}: unexpected extra event")
        self.assertEqual([e["topic"] for e in everything if e["topic"].startswith("project.")],
                         ["project.added"])
        self.assertEqual(ccmtest.transitions(everything),
                         [("queued", "assigned"), ("assigned", "executing")])
        self.assertEqual([(e["topic"], e["data"]["types"]) for e in everything
                          if e["topic"].startswith("hook.")],
                         [("hook.added", {"PreToolUse": 1, "PostToolUse": 1})])


class Clone(EventsTestCase):

    def test_gap_fill_by_replay(self):
        """Subscribe late (the first 100 events are missed), lose every 5th PUB
        on purpose, and follow zguide's Clone pattern: the application sees
        every seq exactly once, in order."""
        before = add_tasks(self.bulk, 100)
        self.assertEqual(len(before), 100)
        done = threading.Event()
        errors = []

        def writer():
            client = self.store.client()
            try:
                for _ in range(15):
                    add_tasks(client, 20)
                    time.sleep(0.02)
            except Exception as e:  # reported by the main thread
                errors.append(e)
            finally:
                client.close()
                done.set()

        sub = self.open_sub()
        thread = threading.Thread(target=writer)
        thread.start()
        self.addCleanup(thread.join, 30)

        delivered = []
        last = 0
        replays = 0
        from_pub = 0
        dropped = 0

        def apply(event):
            nonlocal last
            if event["seq"] <= last:
                return False
            self.assertEqual(event["seq"], last + 1, "replay must be gapless")
            delivered.append(event)
            last = event["seq"]
            return True

        def catch_up():
            nonlocal replays
            replays += 1
            for event in self.store.replay(last):
                apply(event)

        catch_up()  # (2) after connecting the SUB first (1)
        received = 0
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msg = recv_event(sub, timeout=0.5)
            if msg is None:
                catch_up()  # quiet: make sure nothing was lost at the tail
                if done.is_set() and last == self.store.head():
                    break
                continue
            received += 1
            if received % 5 == 0:
                dropped += 1
                continue  # pretend PUB/SUB lost this one
            topic, seq, event = msg
            self.assertEqual(int(seq), event["seq"])
            self.assertEqual(topic.decode(), event["topic"])
            if event["seq"] > last + 1:
                catch_up()  # (4) a gap
            if apply(event):
                from_pub += 1
        thread.join(30)
        self.assertFalse(errors, errors)
        head = self.store.head()
        self.assertEqual([e["seq"] for e in delivered], list(range(1, head + 1)),
                         "no duplicate and no missing seq")
        self.assertEventMatchesDb(delivered)
        self.assertEqual(len([e for e in delivered if e["topic"] == "task.created"]), 400)
        self.assertGreater(dropped, 0)
        self.assertGreater(from_pub, 0, "the live path was never used")
        self.assertGreater(replays, 1, "no gap was filled by replay")


class Filters(EventsTestCase):

    def test_task_and_topic_filters(self):
        self.store.ok("project.add", name="f", path="/f")
        a = self.store.ok("task.add", prompt="a", project="f")["task"]["id"]
        b = self.store.ok("task.add", prompt="b")["task"]["id"]
        for to in ("assigned", "executing", "complete"):
            self.store.ok("task.transition", task=a, to=to)
        self.store.ok("task.cancel", task=b)
        self.store.ok("hook.add", events=[{"hook_type": "Stop", "event_data": {}, "task_id": a},
                                          {"hook_type": "PreToolUse", "event_data": {}}])
        head = self.store.head()

        def since(**filters):
            page = self.store.ok("events.since", seq=0, **filters)
            self.assertEqual(page["last_seq"], head, "last_seq is the head, filtered or not")
            self.assertFalse(page["more"])
            return page["events"]

        of_a = since(task=a)
        self.assertEqual([e["seq"] for e in of_a],
                         [r[0] for r in self.store.query(
                             "SELECT seq FROM events WHERE task_id = ? ORDER BY seq", a)])
        self.assertEqual(of_a[0]["topic"], "task.created")
        self.assertEqual((of_a[-1]["topic"], of_a[-1]["data"]["types"]),
                         ("hook.added", {"Stop": 1}))
        self.assertEqual(ccmtest.transitions(of_a), [("queued", "assigned"),
                                                     ("assigned", "executing"),
                                                     ("executing", "complete")])
        self.assertTrue(all(e["task_id"] == a for e in of_a))
        of_b = since(task=b)
        self.assertEqual(of_b[0]["topic"], "task.created")
        self.assertEqual(ccmtest.transitions(of_b), [("queued", "cancelled")])
        self.assertTrue(all(e["task_id"] == b for e in of_b))

        status = since(topic="task.status")
        self.assertEqual([e["seq"] for e in status], [r[0] for r in self.store.query(
            "SELECT seq FROM events WHERE topic = 'task.status' ORDER BY seq")])
        self.assertGreaterEqual(len(status), 4)
        self.assertTrue(all(e["topic"] == "task.status" for e in status))
        tasks = since(topic="task.")
        self.assertEqual(len(tasks), len(of_a) - 1 + len(of_b))
        self.assertEqual([e["topic"] for e in since(topic="project.")], ["project.added"])
        self.assertEqual([(e["task_id"], e["data"]["types"]) for e in since(topic="hook.")],
                         [(a, {"Stop": 1}), (None, {"PreToolUse": 1})])
        self.assertEqual(since(topic="nothing.like.this"), [])
        both = since(task=a, topic="task.status")
        self.assertEqual(both, [e for e in of_a if e["topic"] == "task.status"])
        self.assertEqual(since(task=a, topic="project."), [])
        # Filtered and paged: page by the last returned seq.
        paged = self.store.replay(0, topic="task.", limit=2)
        self.assertEqual(paged, tasks)


class Paging(EventsTestCase):

    def test_limit_and_more(self):
        add_tasks(self.bulk, 1050)
        head = self.store.head()
        self.assertGreaterEqual(head, 1050)

        default = self.store.ok("events.since", seq=0)
        self.assertEqual(len(default["events"]), 1000, "default limit is 1,000")
        self.assertIs(default["more"], True)
        self.assertEqual(default["last_seq"], head)

        pages = []
        seq = 0
        while True:
            page = self.store.ok("events.since", seq=seq, limit=97)
            self.assertLessEqual(len(page["events"]), 97)
            self.assertEqual(page["last_seq"], head)
            pages.append(page)
            if not page["more"]:
                break
            self.assertEqual(len(page["events"]), 97, "a page with more=true is full")
            seq = page["events"][-1]["seq"]
        flat = [e["seq"] for p in pages for e in p["events"]]
        self.assertEqual(flat, list(range(1, head + 1)))
        self.assertEqual(len(pages), (head + 96) // 97)

        big = self.store.ok("events.since", seq=0, limit=10000)
        self.assertEqual(len(big["events"]), head)
        self.assertIs(big["more"], False)
        one = self.store.ok("events.since", seq=5, limit=1)
        self.assertEqual([e["seq"] for e in one["events"]], [6])
        self.assertIs(one["more"], True)
        tail = self.store.ok("events.since", seq=head - 1, limit=1)
        self.assertEqual([e["seq"] for e in tail["events"]], [head])
        self.assertIs(tail["more"], False)
        beyond = self.store.ok("events.since", seq=head + 100)
        self.assertEqual((beyond["events"], beyond["more"], beyond["last_seq"]), ([], False, head))

    def test_bad_arguments(self):
        self.store.ok("task.add", prompt="x")
        cases = [({}, "missing_field", "seq"), ({"seq": -1}, "bad_field", "seq"),
                 ({"seq": "3"}, "bad_field", "seq"), ({"seq": 1.5}, "bad_field", "seq"),
                 ({"seq": 0, "limit": 0}, "bad_field", "limit"),
                 ({"seq": 0, "limit": 10001}, "bad_field", "limit"),
                 ({"seq": 0, "limit": "10"}, "bad_field", "limit"),
                 ({"seq": 0, "topic": 5}, "bad_field", "topic"),
                 ({"seq": 0, "task": 5}, "bad_field", "task")]
        for body, code, field in cases:
            self.assertError(self.store.call("events.since", **body), code, field, msg=str(body))


if __name__ == "__main__":
    ccmtest.main()

#!/usr/bin/env python3
"""Crash test, after SQLite's: 4 writer threads stream 10,000 task.add
requests; the store is killed with SIGKILL at a random point, twice, and
restarted. Every request not acknowledged is resent with its same idem.
Then every acknowledged write is there, nothing is doubled, the database
is intact and the event log's seq has no gap and no repeat.

Set CCM_TEST_SEED to replay a given run's kill points."""

import collections
import json
import os
import random
import sys
import threading
import time
import uuid

import ccmtest

TOTAL = 10000
THREADS = 4
WINDOW = 16          # requests in flight per thread
STALL = 20.0         # seconds without any reply before a thread gives up
MUTE_BURST = 150     # requests each thread sends, unread, just before a kill
BUDGET = 110.0       # seconds for the whole test


class Stream:
    """The 10,000 requests, who has them, and what was acknowledged."""

    def __init__(self, home):
        self.home = home
        self.requests = [(str(uuid.uuid4()), f"crash write {i}") for i in range(TOTAL)]
        self.todo = collections.deque(range(TOTAL))
        self.acked = {}            # idem -> task id
        self.ever_inflight = set()  # indexes that were in flight at a kill
        self.lock = threading.Lock()
        self.errors = []

    def take(self):
        with self.lock:
            return self.todo.popleft() if self.todo else None

    def give_back(self, indexes):
        with self.lock:
            self.todo.extendleft(sorted(indexes, reverse=True))

    def send(self, sock, inflight):
        index = self.take()
        if index is None:
            return False
        idem, prompt = self.requests[index]
        body = {"v": 1, "id": idem, "idem": idem, "prompt": prompt, "metadata": {"n": index}}
        sock.send_multipart([b"task.add", json.dumps(body).encode()])
        inflight[idem] = index
        return True

    def worker(self, stop, mute):
        """Keeps WINDOW requests in flight. Once mute is set it stops reading
        replies (as a client whose replies are lost would) and sends a last
        burst, so the kill finds writes committed but never acknowledged, and
        writes in the middle of a group commit."""
        client = self.home.client()
        sock = client.sock
        inflight = {}  # idem -> index
        last_reply = time.monotonic()
        try:
            while not stop.is_set():
                if mute.is_set():
                    for _ in range(MUTE_BURST):
                        if not self.send(sock, inflight):
                            break
                    stop.wait(STALL)
                    break
                while len(inflight) < WINDOW and self.send(sock, inflight):
                    pass
                if not inflight:
                    return
                if not sock.poll(20):
                    if time.monotonic() - last_reply > STALL and not stop.is_set():
                        self.errors.append(f"no reply in {STALL} s with {len(inflight)} in flight")
                        return
                    continue
                reply = ccmtest.Reply(sock.recv_multipart())
                last_reply = time.monotonic()
                idem = reply.body.get("id")
                if idem not in inflight:
                    self.errors.append(f"a reply for no request in flight: {reply!r}")
                    return
                if not reply.ok:
                    self.errors.append(f"task.add refused: {reply!r}")
                    return
                tid = reply["task"]["id"]
                with self.lock:
                    if idem in self.acked and self.acked[idem] != tid:
                        self.errors.append(f"idem {idem} acknowledged as two tasks")
                    self.acked[idem] = tid
                del inflight[idem]
        except Exception as e:
            self.errors.append(repr(e))
        finally:
            # Unacknowledged: resent later with the same idem.
            with self.lock:
                self.ever_inflight.update(inflight.values())
            self.give_back(inflight.values())
            client.close()

    def run(self, kill_at=None, deadline=None, delay=0.0, unacked_first=False, extra=0):
        """Streams until done, or until kill_at acks have been seen; then mutes
        the writers, (with unacked_first, waits until the database holds a
        write whose reply was not read,) waits delay seconds, and kills the
        store with SIGKILL. Returns the acks seen at the kill. extra: tasks
        in the database that are not of this stream."""
        stop = threading.Event()
        mute = threading.Event()
        threads = [threading.Thread(target=self.worker, args=(stop, mute)) for _ in range(THREADS)]
        for t in threads:
            t.start()
        killed_at = None
        try:
            if kill_at is not None:
                while len(self.acked) < kill_at and any(t.is_alive() for t in threads):
                    if time.monotonic() > deadline:
                        raise AssertionError(f"only {len(self.acked)} acks before the deadline")
                    time.sleep(0.001)
                mute.set()
                if unacked_first:
                    # A loaded machine may take a while to commit the muted burst.
                    ccmtest.wait_until(lambda: self.home.scalar("SELECT count(*) FROM tasks")
                                       > len(self.acked) + extra, 20, interval=0.002)
                time.sleep(delay)
                killed_at = len(self.acked)
                self.home.kill9()
        finally:
            if kill_at is not None:
                stop.set()
            for t in threads:
                t.join(max(1.0, deadline - time.monotonic()) if deadline else 60)
            if any(t.is_alive() for t in threads):
                stop.set()
                for t in threads:
                    t.join(10)
                raise AssertionError("writer threads did not finish in time")
        return killed_at


class Crash(ccmtest.CcmTestCase):

    def check_database(self, home, stream, extra_ids):
        """Every acknowledged write is present; the file is intact; seq is 1..max."""
        self.assertEqual(home.scalar("PRAGMA integrity_check"), "ok")
        self.assertEqual(home.query("PRAGMA foreign_key_check"), [])
        rows = dict(home.query("SELECT id, prompt FROM tasks"))
        prompts = dict(stream.requests)
        lost = [idem for idem, tid in stream.acked.items() if tid not in rows]
        self.assertEqual(lost, [], f"{len(lost)} acknowledged writes lost")
        for idem, tid in stream.acked.items():
            self.assertEqual(rows[tid], prompts[idem])
        self.assertEqual(len(set(stream.acked.values())), len(stream.acked),
                         "two idems acknowledged with the same task")
        self.assertLessEqual(len(rows), TOTAL + len(extra_ids),
                             "more tasks than distinct idems: a write was doubled")
        seqs = [r[0] for r in home.query("SELECT seq FROM events ORDER BY seq")]
        self.assertEqual(seqs, list(range(1, len(seqs) + 1)), "events seq has a gap or a repeat")
        return rows, seqs

    def continue_seq(self, home, extra_ids):
        """A new write after a restart gets seq max+1."""
        top = home.scalar("SELECT coalesce(max(seq), 0) FROM events")
        self.assertEqual(home.ok("ping")["seq"], top, "ping's seq is the log's max after restart")
        task = home.ok("task.add", prompt="after restart")["task"]
        extra_ids.append(task["id"])
        mine = home.ok("events.since", seq=top)["events"]
        self.assertTrue(mine, "no event for a write after restart")
        self.assertEqual(mine[0]["seq"], top + 1, "seq must continue from max+1")
        self.assertEqual(mine[0]["entity_id"], task["id"])

    def test_kill9_during_10000_acknowledged_writes(self):
        started = time.monotonic()
        deadline = started + BUDGET
        seed = int(os.environ.get("CCM_TEST_SEED", random.randrange(1 << 30)))
        rng = random.Random(seed)
        sys.stderr.write(f"[crash] CCM_TEST_SEED={seed}\n")
        kill_points = [rng.randint(2000, 4500)]
        kill_points.append(rng.randint(max(kill_points[0] + 1000, 5500), 8000))

        home = self.make_home(start=True)
        stream = Stream(home)
        extra_ids = []
        committed_unacked = 0
        for cycle, kill_at in enumerate(kill_points, 1):
            # The first kill comes after some unread replies were committed (so
            # resends must find them); the second lands at once, in the
            # middle of anything.
            killed_at = stream.run(kill_at=kill_at, deadline=deadline,
                                   delay=rng.uniform(0.0, 0.05), unacked_first=cycle == 1,
                                   extra=len(extra_ids))
            self.assertFalse(stream.errors, stream.errors[:5])
            self.assertLess(killed_at, TOTAL, "the kill came after the stream ended")
            sys.stderr.write(f"[crash] cycle {cycle}: killed after {killed_at} acks, "
                             f"{len(stream.todo)} unacknowledged\n")
            home.start()
            rows, _ = self.check_database(home, stream, extra_ids)
            unacked_commits = len(rows) - len(stream.acked) - len(extra_ids)
            committed_unacked += unacked_commits
            sys.stderr.write(f"[crash] cycle {cycle}: {unacked_commits} writes were committed "
                             "but not acknowledged before the kill\n")
            self.continue_seq(home, extra_ids)
            # An acknowledged write retried after the crash gets its first reply again.
            prompts = dict(stream.requests)
            for idem in rng.sample(sorted(stream.acked), 50):
                again = home.ok("task.add", idem=idem, prompt=prompts[idem])
                self.assertEqual(again["task"]["id"], stream.acked[idem])

        # The rest, resends of the unacknowledged first: they succeed, never twice.
        stream.run(deadline=deadline)
        self.assertFalse(stream.errors, stream.errors[:5])
        self.assertEqual(len(stream.acked), TOTAL, "every request is acknowledged in the end")
        self.assertGreater(len(stream.ever_inflight), 0, "no request was in flight at a kill")
        self.assertGreater(committed_unacked, 0, "no kill left a committed, unacknowledged write: "
                           "the resend path was not exercised")
        rows, seqs = self.check_database(home, stream, extra_ids)
        self.assertEqual(len(rows), TOTAL + len(extra_ids),
                         "tasks must equal the distinct idems sent")
        self.assertEqual(set(rows), set(stream.acked.values()) | set(extra_ids))
        self.assertEqual(home.scalar("SELECT count(*) FROM events WHERE topic = 'task.created'"),
                         len(rows), "one task.created per task, none for a retry")
        self.continue_seq(home, extra_ids)
        self.assertEqual(home.stop(), 0)
        elapsed = time.monotonic() - started
        sys.stderr.write(f"[crash] done in {elapsed:.1f} s\n")
        self.assertLess(elapsed, 120)


if __name__ == "__main__":
    ccmtest.main()

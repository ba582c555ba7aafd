"""The store owns the retry schedule of failed tasks (schema/protocol.md,
"Retries" under task.transition): a failed run with attempts left gets
retry_at and a reason saying when; a final failure reads differently;
task.list's retry_due lists only the due ones; a transition with "from" is
refused, changing nothing, unless the task is in that status; and the CLI's
task show and task retry say and do the same. Against a real ccm-store."""

import datetime
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ccmtest  # noqa: E402
from ccmtest import TIME_RE  # noqa: E402

REASON = "agent exited with status 1"


def ms(iso):
    """protocol.md's UTC time as milliseconds since the epoch."""
    when = datetime.datetime.strptime(iso, "%Y-%m-%dT%H:%M:%S.%fZ")
    return round(when.replace(tzinfo=datetime.timezone.utc).timestamp() * 1000)


class RetryCase(ccmtest.CcmTestCase):
    BASE_MS = None  # router.retry_base_ms for the store; None: its default

    def setUp(self):
        env = {"CCM_ROUTER_RETRY_BASE_MS": str(self.BASE_MS)} if self.BASE_MS else None
        self.store = self.make_home(start=True, extra_env=env)

    def add(self, prompt="a task", **fields):
        return self.store.ok("task.add", prompt=prompt, **fields)["task"]

    def move(self, tid, to, **fields):
        return self.store.ok("task.transition", task=tid, to=to, **fields)["task"]

    def run_and_fail(self, tid, reason=REASON, **fields):
        """One attempt: assigned, executing, then failed; the failed TASK."""
        self.move(tid, "assigned", locked_by="sys-1")
        self.move(tid, "executing")
        return self.move(tid, "failed", reason=reason, **fields)

    def row(self, tid):
        return self.store.query("SELECT status, status_reason, attempts, retry_at FROM tasks"
                                " WHERE id = ?", tid)[0]

    def failed_event(self, tid):
        """The event_data of the task's newest 'failed' task_events row."""
        rows = self.store.query("SELECT event_data FROM task_events WHERE task_id = ?"
                                " AND event_type = 'failed' ORDER BY rowid DESC LIMIT 1", tid)
        return json.loads(rows[0][0])

    def assertScheduled(self, task, attempt, delay_ms, reason=REASON):
        """task (just failed on attempt `attempt`) retries after delay_ms + jitter
        (≤ base/2), and its reason, row and task_events say so."""
        base = self.BASE_MS or 2000
        self.assertTask(task)
        self.assertEqual((task["status"], task["attempts"], task["max_attempts"]),
                         ("failed", attempt, 3))
        self.assertRegex(task["retry_at"] or "", TIME_RE, task)
        waits = ms(task["retry_at"]) - ms(task["updated_at"])
        # retry_at is the store's clock at the move plus the delay; updated_at
        # the same moment from SQLite: a few ms apart at most.
        self.assertGreaterEqual(waits, delay_ms - 5, task)
        self.assertLessEqual(waits, delay_ms + base // 2 + 50, task)
        self.assertEqual(task["status_reason"],
                         f"retry {attempt + 1} of 3 at {task['retry_at'][11:19]} UTC,"
                         f" after: {reason}")
        self.assertEqual(self.row(task["id"]),
                         ("failed", task["status_reason"], attempt, task["retry_at"]))
        data = self.failed_event(task["id"])
        self.assertEqual((data["reason"], data["retry_at"], data["attempts"]),
                         (reason, task["retry_at"], attempt), "task_events keeps the reason given")

    def assertFinal(self, task, reason, attempts):
        """task failed for good: no retry_at, the reason as expected."""
        self.assertTask(task)
        self.assertEqual((task["status"], task["status_reason"], task["retry_at"],
                          task["attempts"]), ("failed", reason, None, attempts))
        self.assertEqual(self.row(task["id"]), ("failed", reason, attempts, None))
        self.assertNotIn("retry_at", self.failed_event(task["id"]))


class Schedule(RetryCase):
    BASE_MS = 1000

    def test_failed_runs_schedule_retries_then_the_last_reads_final(self):
        tid = self.add("flaky")["id"]
        got = self.store.ok("task.get", task=tid)["task"]
        self.assertTask(got)
        self.assertEqual((got["attempts"], got["max_attempts"], got["retry_at"]), (0, 3, None))

        first = self.run_and_fail(tid)
        self.assertScheduled(first, 1, 1000)
        # The task.status event carries the reason users see.
        status = [e for e in self.store.replay(0, task=tid) if e["topic"] == "task.status"][-1]
        self.assertEqual((status["data"]["to"], status["data"]["reason"]),
                         ("failed", first["status_reason"]))
        # Leaving failed clears the schedule, in the row and the JSON alike.
        requeued = self.move(tid, "queued", **{"from": "failed"})
        self.assertEqual((requeued["status"], requeued["retry_at"]), ("queued", None))
        self.assertEqual(self.row(tid), ("queued", None, 1, None))

        second = self.run_and_fail(tid)
        self.assertScheduled(second, 2, 2000)
        self.move(tid, "queued")

        last = self.run_and_fail(tid)
        self.assertFinal(last, f"failed after 3 attempts: {REASON}", 3)
        reply = self.store.call("task.transition", task=tid, to="queued", **{"from": "failed"})
        self.assertError(reply, "illegal_transition")
        self.assertIn("3 of 3 attempts", reply.message)
        self.assertEqual(self.row(tid), ("failed", last["status_reason"], 3, None))

    def test_a_run_lost_with_its_executor_is_retried_or_spent(self):
        """system.status offline fails a task out of attempts: that reads final."""
        system = self.store.ok("system.register", hostname="h", machine_id="m-1",
                               idem=uuid.uuid4().hex)["system"]["id"]
        tid = self.add("lost")["id"]
        for attempt in (1, 2, 3):
            self.move(tid, "assigned", locked_by=system)
            if attempt < 3:
                self.store.ok("system.status", system_id=system, status="offline",
                              reason="no heartbeat", idem=uuid.uuid4().hex)
                self.assertEqual(self.row(tid)[0::3], ("queued", None))
        gone = self.store.ok("system.status", system_id=system, status="offline",
                             reason="no heartbeat", idem=uuid.uuid4().hex)
        self.assertEqual(gone["failed"], [tid])
        self.assertEqual(self.row(tid), ("failed", "failed after 3 attempts: its executor went"
                                         " offline: no heartbeat", 3, None))


class FinalFailures(RetryCase):
    """The store's default base (router.retry_base_ms, 2000), and the failures
    a retry cannot help."""

    def test_default_base_is_two_seconds(self):
        tid = self.add()["id"]
        self.assertScheduled(self.run_and_fail(tid), 1, 2000)

    def test_a_failure_while_queued_is_final(self):
        """WaitConnection's timeout fails a task that never ran: no retry."""
        tid = self.add("waits", requires_supabase=True)["id"]
        why = "WaitConnection timed out: sync was not connected within 2 s (it is LocalOnly)"
        self.assertFinal(self.move(tid, "failed", reason=why), why, 0)
        # One that ran once and then timed out waiting, too.
        other = self.add("waits again")["id"]
        self.run_and_fail(other)
        self.move(other, "queued")
        self.assertFinal(self.move(other, "failed", reason=why), why, 1)

    def test_a_timeout_or_a_final_flag_is_final(self):
        timed = self.add("slow", timeout_s=5)["id"]
        got = self.run_and_fail(timed, reason="timed out; agent killed",
                                result={"status": "timeout", "exit_code": 143})
        self.assertFinal(got, "timed out; agent killed", 1)
        told = self.add("cannot start")["id"]
        got = self.run_and_fail(told, reason="the worktree of task 1234abcd was discarded",
                                final=True)
        self.assertFinal(got, "the worktree of task 1234abcd was discarded", 1)
        # Without a reason the retry still says what it waits for.
        bare = self.add("bare")["id"]
        self.move(bare, "assigned")
        got = self.move(bare, "failed")
        self.assertEqual(got["status_reason"],
                         f"retry 2 of 3 at {got['retry_at'][11:19]} UTC, after: no reason given")
        # A user's retry may still requeue a final failure with attempts left.
        self.assertEqual(self.move(timed, "queued", **{"from": "failed"})["status"], "queued")

    def test_cancel_is_not_a_failure(self):
        tid = self.add()["id"]
        self.move(tid, "assigned")
        self.move(tid, "executing")
        got = self.store.ok("task.cancel", task=tid, reason="no longer needed")["task"]
        self.assertEqual((got["status"], got["status_reason"], got["retry_at"]),
                         ("cancelled", "no longer needed", None))

    def test_bad_fields_are_named(self):
        tid = self.add()["id"]
        self.assertError(self.store.call("task.transition", task=tid, to="failed", final="yes"),
                         "bad_field", "final")
        self.assertError(self.store.call("task.transition", task=tid, to="queued",
                                         **{"from": "done"}), "bad_field", "from")
        self.assertError(self.store.call("task.list", retry_due="yes"), "bad_field", "retry_due")


class RetryDue(RetryCase):
    BASE_MS = 1000

    def due(self, **filters):
        """task.list retry_due, and the wall clock just before and after it."""
        before = time.time() * 1000
        reply = self.store.ok("task.list", retry_due=True, **filters)
        after = time.time() * 1000
        for task in reply["tasks"]:
            self.assertTask(task)
        return reply, before, after

    def assertDueSet(self, reply, before, after, candidates):
        """Listed: every candidate whose retry_at had come when asked, none
        whose retry_at was still ahead, the longest due first."""
        listed = [t["id"] for t in reply["tasks"]]
        self.assertEqual(reply["total"], len(listed))
        retry_at = {t["id"]: ms(t["retry_at"]) for t in reply["tasks"]}
        self.assertEqual(listed, sorted(listed, key=lambda i: retry_at[i]), "longest due first")
        for tid, when in candidates.items():
            if when <= before:
                self.assertIn(tid, listed, f"{tid[:8]} was due at {when}, asked at {before}")
            elif when > after:
                self.assertNotIn(tid, listed, f"{tid[:8]} is due at {when}, asked at {after}")

    def test_lists_only_the_due(self):
        self.store.ok("project.add", name="web", path="/tmp/web")
        a = self.add("a", project="web")["id"]
        b = self.add("b")["id"]
        self.run_and_fail(b)
        self.move(b, "queued")
        a_at = ms(self.run_and_fail(a)["retry_at"])          # attempt 1: in 1-1.5 s
        b_at = ms(self.run_and_fail(b)["retry_at"])          # attempt 2: in 2-2.5 s
        final = self.add("final")["id"]
        self.move(final, "failed", reason="never ran")        # final: no retry_at
        cleared = self.add("cleared")["id"]
        self.run_and_fail(cleared)
        self.move(cleared, "queued", **{"from": "failed"})    # retried by hand
        self.add("queued")
        done = self.add("done")["id"]
        self.move(done, "assigned")
        self.move(done, "executing")
        self.move(done, "complete")
        self.assertLess(a_at, b_at)
        candidates = {a: a_at, b: b_at}

        reply, before, after = self.due()
        self.assertDueSet(reply, before, after, candidates)
        self.assertTrue(ccmtest.wait_until(lambda: self.due()[0]["tasks"], 10), "a never came due")
        reply, before, after = self.due()
        self.assertDueSet(reply, before, after, candidates)
        # Other filters still apply: b is not in project web.
        web, before, after = self.due(project="web")
        self.assertEqual([t["id"] for t in web["tasks"]], [a])
        self.assertTrue(ccmtest.wait_until(lambda: len(self.due()[0]["tasks"]) == 2, 10),
                        "b never came due")
        reply, before, after = self.due()
        self.assertEqual([t["id"] for t in reply["tasks"]], [a, b])
        self.assertEqual(reply["total"], 2)
        self.assertEqual(self.due(limit=1)[0]["tasks"][0]["id"], a)
        # The router's move: a due task requeued, from failed only.
        self.move(a, "queued", **{"from": "failed"}, reason="retry after a failed attempt")
        self.assertEqual([t["id"] for t in self.due()[0]["tasks"]], [b])
        # Without retry_due, task.list is as it was: every task, newest first.
        every = self.store.ok("task.list")
        self.assertEqual(every["total"], 6)


class FromIsChecked(RetryCase):
    """task.transition's "from": checked with the move, in one transaction."""

    def snapshot(self, tid):
        return self.store.query("SELECT status, status_reason, attempts, retry_at, locked_by,"
                                " updated_at FROM tasks WHERE id = ?", tid)

    def test_from_failed_refuses_every_other_status(self):
        queued = self.add("queued")["id"]
        assigned = self.add("assigned")["id"]
        self.move(assigned, "assigned", locked_by="sys-1")
        executing = self.add("executing")["id"]
        self.move(executing, "assigned", locked_by="sys-1")
        self.move(executing, "executing")
        complete = self.add("complete")["id"]
        self.move(complete, "assigned")
        self.move(complete, "executing")
        self.move(complete, "complete")
        held = self.add("held", hold=True)["id"]
        for tid, status in ((queued, "queued"), (assigned, "assigned"), (executing, "executing"),
                            (complete, "complete"), (held, "created")):
            before, head = self.snapshot(tid), self.store.head()
            reply = self.store.call("task.transition", task=tid[:8], to="queued",
                                    **{"from": "failed"})
            self.assertError(reply, "illegal_transition", "from", msg=status)
            self.assertIn(f"is {status}, not failed", reply.message)
            self.assertEqual(self.snapshot(tid), before, f"{status}: the row changed")
            self.assertEqual(self.store.head(), head, f"{status}: an event was written")
        # Without "from", a running task may still be requeued (by the router).
        self.assertEqual(self.move(executing, "queued")["status"], "queued")


class Cli(RetryCase):
    BASE_MS = 60000  # the retry stays ahead while the CLI looks

    def test_task_show_and_retry(self):
        tid = self.add("flaky")["id"]
        failed = self.run_and_fail(tid)
        rc, out, err = self.store.run_cli("task", "show", tid[:8])
        self.assertEqual(rc, 0, err)
        lines = dict(line.split(None, 1) for line in out.splitlines()[:12] if " " in line)
        self.assertEqual(lines["status"], "failed")
        self.assertEqual(lines["status_reason"], failed["status_reason"])
        self.assertTrue(lines["status_reason"].startswith("retry 2 of 3 at "), out)
        self.assertEqual(lines["attempts"], "1 of 3")
        self.assertRegex(lines["retry"], r"^attempt 2 of 3 at \d\d:\d\d:\d\d local time \(" +
                         failed["retry_at"].replace(".", r"\.") + r"\), in \d+ s$")
        rc, out, err = self.store.run_cli("--json", "task", "show", tid[:8])
        self.assertEqual(rc, 0, err)
        task = json.loads(out)["task"]
        self.assertEqual((task["retry_at"], task["attempts"], task["max_attempts"]),
                         (failed["retry_at"], 1, 3))

        # ccm task retry: a failed task goes back now; anything else is refused.
        rc, out, err = self.store.run_cli("task", "retry", tid[:8])
        self.assertEqual((rc, out.strip()), (0, f"{tid} queued"), err)
        self.assertEqual(self.row(tid), ("queued", "retried from the CLI", 1, None))
        rc, out, err = self.store.run_cli("task", "show", tid[:8])
        self.assertNotIn("\nretry ", out)
        self.move(tid, "assigned")
        self.move(tid, "executing")
        before = self.row(tid)
        rc, out, err = self.store.run_cli("task", "retry", tid[:8])
        self.assertNotEqual(rc, 0)
        self.assertIn("is executing, not failed", err)
        self.assertEqual(self.row(tid), before)


if __name__ == "__main__":
    ccmtest.main()

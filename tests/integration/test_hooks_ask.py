"""Integration tests of the "ask a human" path of PermissionRequest hooks.

A policy rule with "action": "ask" (or "ask_permissions": true) makes the
ingester park a PermissionRequest: ccm-hook keeps waiting, a
permission_requests row is written, and the first answer given through the
store (permission.answer, as the gateway's inbox sends it) reaches the
waiting ccm-hook, which prints it in Claude Code's exact PermissionRequest
shape. With no answer in time, ccm-hook prints nothing (the CLI asks in
its own dialog) and the request expires.

Real processes only, as in test_hooks.py (whose harness, with test_hooks_rules.py's, this reuses):
ccm-store, the ccm-hooks ingester and ccm-hook, each its own process. What
is checked is what a user relies on: the bytes ccm-hook prints, when it
exits, the permission_requests and automation_events rows, the agent's
state, the events on the bus, and the store's typed refusals.
"""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ccmtest  # noqa: E402
from test_hooks import HOOK_BIN, wait_for  # noqa: E402
from test_hooks_rules import RulesTestCase, compact, config_write, tool_event  # noqa: E402

PERM_KEYS = ("id", "owner", "task_id", "agent_id", "system_id", "session_id", "event_uid",
             "tool_name", "tool_input", "rule", "reason", "status", "answer", "answered_by",
             "created_at", "expires_at", "answered_at", "delivered_at", "close_reason")

ASK_BASH = {"rules": [{"name": "ask-bash", "tool": "^Bash$", "action": "ask",
                       "reason": "a human decides shell commands"}]}


def allow_bytes():
    return compact({"hookSpecificOutput": {"hookEventName": "PermissionRequest",
                                           "decision": {"behavior": "allow"}}})


def deny_bytes(message):
    return compact({"hookSpecificOutput": {"hookEventName": "PermissionRequest",
                                           "decision": {"behavior": "deny",
                                                        "message": message}}})


def permission_event(session, command="rm -rf build", tool="Bash"):
    """A PermissionRequest as Claude Code sends it on the hook's stdin."""
    return tool_event("PermissionRequest", tool, {"command": command, "description": "clean"},
                      session, permission_suggestions=[
                          {"type": "addRules", "rules": [{"toolName": tool}],
                           "behavior": "allow", "destination": "localSettings"}])


class WaitingHook:
    """A ccm-hook run in the background, as Claude Code runs it while its
    permission dialog is pending."""

    def __init__(self, test, event, env):
        self.started = time.monotonic()
        self.proc = subprocess.Popen([HOOK_BIN], env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        test.addCleanup(self.reap)
        self.out = self.err = None
        self.ended_at = None
        self.proc.stdin.write(json.dumps(event).encode())
        self.proc.stdin.close()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        self.out = self.proc.stdout.read()
        self.err = self.proc.stderr.read()
        self.proc.wait()
        self.ended_at = time.monotonic()

    def running(self):
        return self.ended_at is None

    def result(self, timeout=15):
        """Waits for the exit; returns stdout. It must exit 0, silent on stderr."""
        self.thread.join(timeout)
        if self.thread.is_alive():
            raise AssertionError(f"ccm-hook still waits after {timeout} s")
        if self.proc.returncode != 0 or self.err:
            raise AssertionError(f"ccm-hook exited {self.proc.returncode}: {self.err!r:.300}")
        return self.out

    def reap(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.thread.join(5)
        self.proc.wait(5)
        self.proc.stdout.close()
        self.proc.stderr.close()


class AskTestCase(RulesTestCase):
    ask_timeout_ms = 20000

    def setUp(self):
        super().setUp()
        self.home.env["CCM_HOOKS_ASK_TIMEOUT_MS"] = str(self.ask_timeout_ms)
        config_write(os.path.join(self.home.path, "policies.json"), ASK_BASH)
        self.task = self.add_task("ask a human")
        self.agent_id = "agent-" + uuid.uuid4().hex[:8]
        self.env = self.hook_env(task=self.task, agent=self.agent_id, system="sys-ask")

    def perms(self, where="1", *args):
        rows = self.home.query(f"SELECT {', '.join(PERM_KEYS)} FROM permission_requests"
                               f" WHERE {where} ORDER BY created_at, id", *args)
        out = []
        for row in rows:
            row = dict(zip(PERM_KEYS, row))
            row["tool_input"] = json.loads(row["tool_input"]) if row["tool_input"] else None
            out.append(row)
        return out

    def wait_perm(self, status, count=1, where="1", *args):
        sql = f"SELECT count(*) FROM permission_requests WHERE status = ? AND {where}"
        wait_for(f"{count} permission request(s) {status}",
                 lambda: self.home.scalar(sql, status, *args) >= count, 15,
                 diagnose=lambda: f"{self.perms()}\n{self.diagnose()}")
        return self.perms(f"status = ? AND {where}", status, *args)

    def answer(self, request, decision, **extra):
        return self.home.call("permission.answer", idem=str(uuid.uuid4()), request=request,
                              decision=decision, **extra)

    def park(self, session=None, **kwargs):
        """Starts a waiting PermissionRequest hook; returns (hook, its row)."""
        session = session or "sess-" + uuid.uuid4().hex[:8]
        event = permission_event(session, **kwargs)
        hook = WaitingHook(self, event, self.env)
        rows = self.wait_perm("pending", 1, "session_id = ?", session)
        self.assertEqual(len(rows), 1, rows)
        return hook, rows[0], event

    def audits_of(self, request):
        rows = self.home.query("SELECT outcome, action, automation, details FROM"
                               " automation_events ORDER BY id")
        out = []
        for outcome, action, automation, details in rows:
            details = json.loads(details) if details else {}
            if details.get("request") == request or (
                    details.get("hook_type") == "PermissionRequest" and "request" not in details):
                out.append((outcome, action, automation, details))
        return out


class TestHooksAsk(AskTestCase):

    def test_allow_reaches_the_waiting_hook(self):
        """An ask rule parks the hook; the row says what is asked; an allow
        through the store is printed by ccm-hook, exactly, and recorded."""
        self.start_ingester()
        sub = self.home.sub(b"permission.")
        hook, row, event = self.park(command="make clean && rm -rf build")
        self.assertEqual(row["task_id"], self.task)
        self.assertEqual(row["agent_id"], self.agent_id)
        self.assertEqual(row["system_id"], "sys-ask")
        self.assertEqual(row["tool_name"], "Bash")
        self.assertEqual(row["tool_input"], event["tool_input"])
        self.assertEqual(row["rule"], "ask-bash")
        self.assertIn("a human decides shell commands", row["reason"])
        self.assertIsNone(row["answered_at"])
        self.assertRegex(row["expires_at"], ccmtest.TIME_RE)
        # The hook event itself is stored like any other, and linked by uid.
        stored = self.wait_rows(1, "hook_type = 'PermissionRequest'")
        self.assertEqual(stored[0]["uid"], row["event_uid"])
        # The agent waits; the hook still waits (the policy did not answer).
        self.assertEqual(self.wait_agent(self.agent_id, "waiting")["status"], "waiting")
        time.sleep(0.5)
        self.assertTrue(hook.running(), "ccm-hook exited before any answer")
        topic, _, requested = ccmtest.recv_event(sub, 10)
        self.assertEqual(topic, b"permission.requested")
        self.assertEqual(requested["data"]["id"], row["id"])
        self.assertEqual(requested["data"]["tool_input"], event["tool_input"])

        listed = self.home.ok("permission.list")["requests"]
        self.assertEqual([r["id"] for r in listed], [row["id"]])
        self.assertEqual(set(listed[0]), ccmtest.protocol_object_keys("PERMISSION"))
        self.assertEqual(listed[0]["short_id"], self.task[:8])

        answered = self.answer(row["id"][:8], "allow", by="browser")
        self.assertOk(answered)
        self.assertEqual(answered["request"]["status"], "allowed")
        self.assertEqual(hook.result(), allow_bytes())
        delivered = self.wait_perm("allowed")[0]
        wait_for("delivered_at", lambda: self.perms()[0]["delivered_at"], 10)
        delivered = self.perms()[0]
        self.assertEqual(delivered["answered_by"], "browser")
        self.assertRegex(delivered["delivered_at"], ccmtest.TIME_RE)
        self.assertEqual(self.home.ok("permission.list")["requests"], [])
        # The audit trail: asked (pending), then allowed and delivered.
        wait_for("two audit rows", lambda: len(self.audits_of(row["id"])) >= 2, 10)
        audits = self.audits_of(row["id"])
        self.assertEqual([a[0] for a in audits], ["pending", "allowed"])
        self.assertEqual(audits[1][2], "policy:ask-bash")
        self.assertTrue(audits[1][3]["delivered"])
        topics = []
        while True:
            got = ccmtest.recv_event(sub, 2)
            if not got:
                break
            topics.append(got[0])
        self.assertEqual(topics, [b"permission.answered", b"permission.delivered"])

    def test_deny_carries_its_message(self):
        self.start_ingester()
        hook, row, _ = self.park()
        self.assertOk(self.answer(row["id"], "deny", reason='not on "main" — ask me later'))
        self.assertEqual(hook.result(), deny_bytes('not on "main" — ask me later'))
        self.assertEqual(self.wait_perm("denied")[0]["answer"], 'not on "main" — ask me later')

    def test_deny_without_a_reason(self):
        self.start_ingester()
        hook, row, _ = self.park()
        self.assertOk(self.answer(row["id"], "deny"))
        self.assertEqual(hook.result(), deny_bytes("denied through ccm"))

    def test_answer_refusals(self):
        """Bad answers get typed errors naming the field; the first answer
        wins and a second one is refused; the store and ingester stay up."""
        self.start_ingester()
        hook, row, _ = self.park()
        for body, code, field in (
                ({"decision": "allow"}, "missing_field", "request"),
                ({"request": row["id"]}, "missing_field", "decision"),
                ({"request": row["id"], "decision": "maybe"}, "bad_field", "decision"),
                ({"request": row["id"], "decision": True}, "bad_field", "decision"),
                ({"request": "ab", "decision": "allow"}, "bad_field", "request"),
                ({"request": 7, "decision": "allow"}, "bad_field", "request"),
                ({"request": str(uuid.uuid4()), "decision": "allow"}, "not_found", "request"),
                ({"request": row["id"], "decision": "deny", "reason": "x" * 5000},
                 "bad_field", "reason")):
            reply = self.home.call("permission.answer", idem=str(uuid.uuid4()), **body)
            self.assertError(reply, code, field, msg=body)
        self.assertTrue(hook.running())
        self.assertEqual(self.perms()[0]["status"], "pending")
        self.assertOk(self.answer(row["id"], "allow"))
        err = self.assertError(self.answer(row["id"], "deny"), "illegal_transition", "request")
        self.assertIn("already allowed", err["message"])
        self.assertEqual(hook.result(), allow_bytes())
        # The same answer retried with its idem gets the first reply again.
        idem = str(uuid.uuid4())
        _, row2, _ = self.park()
        first = self.home.call("permission.answer", idem=idem, request=row2["id"],
                               decision="deny")
        again = self.home.call("permission.answer", idem=idem, request=row2["id"],
                               decision="deny")
        self.assertOk(first)
        self.assertEqual(first.body, again.body)

    def test_request_verb_refusals(self):
        """permission.request and permission.close refuse bad input by field."""
        good = {"request": str(uuid.uuid4()), "owner": "me", "timeout_ms": 1000}
        for change, code, field in (
                ({"request": "not-a-uuid"}, "bad_field", "request"),
                ({"owner": None}, "missing_field", "owner"),
                ({"timeout_ms": 0}, "bad_field", "timeout_ms"),
                ({"timeout_ms": "1"}, "bad_field", "timeout_ms"),
                ({"tool_input": "rm"}, "bad_field", "tool_input"),
                ({"tool_input": {"command": "x" * 70000}}, "bad_field", "tool_input")):
            body = {k: v for k, v in {**good, **change}.items() if v is not None}
            reply = self.home.call("permission.request", idem=str(uuid.uuid4()), **body)
            self.assertError(reply, code, field, msg=change)
        self.assertOk(self.home.call("permission.request", idem=str(uuid.uuid4()), **good))
        dup = self.home.call("permission.request", idem=str(uuid.uuid4()), **good)
        self.assertError(dup, "conflict")
        for body, code, field in (
                ({"outcome": "expired"}, "missing_field", "request"),
                ({"request": good["request"], "outcome": "gone"}, "bad_field", "outcome"),
                ({"request": good["request"], "owner": "me", "outcome": "expired"},
                 "bad_field", "owner"),
                ({"owner": "me", "outcome": "delivered"}, "bad_field", "outcome"),
                ({"request": good["request"], "outcome": "delivered"},
                 "illegal_transition", "request")):
            reply = self.home.call("permission.close", idem=str(uuid.uuid4()), **body)
            self.assertError(reply, code, field, msg=body)
        for body, field in (({"status": "open"}, "status"), ({"ids": "x"}, "ids"),
                            ({"ids": [1]}, "ids[0]"), ({"limit": 0}, "limit")):
            self.assertError(self.home.call("permission.list", **body), "bad_field", field)

    def test_event_without_a_task_is_asked_too(self):
        """A session ccm did not start (no CCM_TASK_ID) is asked like any other."""
        self.env = self.hook_env()
        self.start_ingester()
        hook, row, _ = self.park()
        self.assertIsNone(row["task_id"])
        self.assertOk(self.answer(row["id"], "allow"))
        self.assertEqual(hook.result(), allow_bytes())

    def test_other_events_flow_while_hooks_wait(self):
        """Ten parked hooks do not hold up other events or decisions, and
        each gets its own answer."""
        self.start_ingester()
        parked = [self.park(command=f"echo {i}") for i in range(10)]
        started = time.monotonic()
        for i in range(20):
            out, _, _ = self.hook(json.dumps(tool_event(
                "PostToolUse", "Read", {"file_path": f"/tmp/{i}"}, "sess-flow")).encode(),
                env=self.env)
            self.assertEqual(out, b"")
        self.wait_rows(20, "session_id = 'sess-flow'")
        self.assertLess(time.monotonic() - started, 10)
        for i, (hook, row, _) in enumerate(parked):
            self.assertEqual(row["tool_input"]["command"], f"echo {i}")
            self.assertOk(self.answer(row["id"], "allow" if i % 2 == 0 else "deny",
                                      reason=f"no {i}"))
        for i, (hook, row, _) in enumerate(parked):
            self.assertEqual(hook.result(), allow_bytes() if i % 2 == 0 else deny_bytes(f"no {i}"))

    def test_other_tools_are_not_parked(self):
        """A PermissionRequest no rule asks about is answered at once, with
        nothing; a PreToolUse ask stays Claude Code's own "ask" decision."""
        self.start_ingester()
        out, _, took = self.hook(json.dumps(permission_event("s1", tool="Write")).encode(),
                                 env=self.env)
        self.assertEqual(out, b"")
        self.assertLess(took, 2)
        out, _, _ = self.hook(json.dumps(tool_event("PreToolUse", "Bash", {"command": "ls"},
                                                    "s1")).encode(), env=self.env)
        self.assertEqual(json.loads(out)["hookSpecificOutput"]["permissionDecision"], "ask")
        self.assertEqual(self.perms(), [])

    def test_ask_permissions_parks_every_dialog(self):
        config_write(os.path.join(self.home.path, "policies.json"),
                     {"ask_permissions": True, "rules": [
                         {"name": "no-web", "tool": "^WebFetch$", "action": "deny"}]})
        self.start_ingester()
        hook, row, _ = self.park(tool="Write")
        self.assertEqual(row["rule"], "ask_permissions")
        # A rule that decides still decides at once.
        out, _, _ = self.hook(json.dumps(permission_event("s2", tool="WebFetch")).encode(),
                              env=self.env)
        self.assertEqual(json.loads(out)["hookSpecificOutput"]["decision"]["behavior"], "deny")
        self.assertOk(self.answer(row["id"], "allow"))
        self.assertEqual(hook.result(), allow_bytes())

    def test_bad_ask_permissions_is_refused(self):
        config_write(os.path.join(self.home.path, "policies.json"),
                     {"ask_permissions": "yes", "rules": []})
        self.start_ingester()
        self.wait_log('"ask_permissions" must be true or false', 0)


class TestHooksAskTimeout(AskTestCase):
    ask_timeout_ms = 1500

    def test_no_answer_in_time_leaves_the_dialog_to_the_agent(self):
        self.start_ingester()
        hook, row, _ = self.park()
        self.assertEqual(hook.result(), b"")
        took = hook.ended_at - hook.started
        self.assertGreater(took, 1.2)
        self.assertLess(took, 6)
        expired = self.wait_perm("expired")[0]
        self.assertEqual(expired["close_reason"], "no answer in 1500 ms")
        self.assertIsNone(expired["delivered_at"])
        err = self.assertError(self.answer(row["id"], "allow"), "illegal_transition")
        self.assertIn("already expired", err["message"])
        wait_for("the audit of the expiry",
                 lambda: [a[0] for a in self.audits_of(row["id"])] == ["pending", "skipped"], 10)


class TestHooksAskFailures(AskTestCase):

    def test_hook_killed_while_waiting_expires_its_request(self):
        """Claude Code ends a hook at its timeout: the request expires."""
        ingester = self.start_ingester()
        hook, row, _ = self.park()
        hook.proc.kill()
        expired = self.wait_perm("expired")[0]
        self.assertEqual(expired["close_reason"], "the agent stopped waiting (its hook ended)")
        self.assertError(self.answer(row["id"], "allow"), "illegal_transition")
        self.assertAlive(ingester)

    def test_ingester_killed_while_hooks_wait(self):
        """kill -9 of the ingester: waiting hooks end at once with no decision,
        nothing is spooled twice, and the next ingester expires what was left."""
        ingester = self.start_ingester()
        hook, row, _ = self.park()
        self.wait_rows(1, "hook_type = 'PermissionRequest'")
        self.kill9(ingester)
        self.assertEqual(hook.result(5), b"")
        self.assertEqual(self.spooled(), [])
        self.assertEqual(self.perms()[0]["status"], "pending")
        self.start_ingester()
        expired = self.wait_perm("expired")[0]
        self.assertEqual(expired["close_reason"], "ccm-hooks restarted: the hook was let go")
        wait_for("the journal to drain", self.drained, 10, diagnose=self.diagnose)
        self.assertEqual(self.home.scalar(
            "SELECT count(*) FROM hook_events WHERE uid = ?", row["event_uid"]), 1)

    def test_answer_heard_without_events(self):
        """PUB may drop: with no event reaching the ingester at all, the
        answer still comes through its poll of the store."""
        self.home.env["CCM_STORE_PUB_ENDPOINT"] = f"ipc://{self.home.path}/run/nowhere.ipc"
        self.start_ingester()
        hook, row, _ = self.park()
        self.assertOk(self.answer(row["id"], "deny", reason="polled"))
        self.assertEqual(hook.result(), deny_bytes("polled"))

    def test_ingester_stopped_cleanly_lets_hooks_go(self):
        ingester = self.start_ingester()
        hook, _, _ = self.park()
        self.assertEqual(self.stop_ingester(ingester), 0)
        self.assertEqual(hook.result(5), b"")


if __name__ == "__main__":
    ccmtest.main()

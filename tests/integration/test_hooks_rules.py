"""Integration tests of what ccm does with hook events beyond storing them:
safety policies ($CCM_HOME/policies.json), automations
($CCM_HOME/automations.json) and `ccm hooks install|uninstall`.

Real processes only, as in test_hooks.py (whose harness this reuses):
ccm-store, the ccm-hooks ingester and ccm-hook, each its own process;
webhooks go to a real HTTP server in this process (127.0.0.1, a thread),
commands are run by the ingester, follow-up tasks are added through the
store. What is checked is what a user relies on: the exact bytes ccm-hook
prints for Claude Code, the audit rows in automation_events, the requests
a webhook receives, the files a command writes, the tasks added, the
settings.json bytes `ccm hooks` writes and restores.

The ingester looks at policies.json and automations.json once a second and
re-reads them when their stamp (mtime to the nanosecond, size, inode)
changes. Tests that rewrite a file still give it a later second
(config_write), so that no test depends on timestamp granularity; one test
edits the file the way a user does, a second later, and
test_bug_same_second_edit saves twice within one second.

Tests named test_bug_* guard against bugs found while writing these tests
(now fixed); each docstring says what was wrong.
"""

import http.server
import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
import unittest
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ccmtest  # noqa: E402
from test_hooks import HooksTestCase, record, wait_for  # noqa: E402

#  What ccm-hook prints when it cannot reach ccm-hooks and policies fail
#  closed (ccm_hook.c s_deny_unreachable), byte for byte.
FAIL_CLOSED = (b'{"hookSpecificOutput":{"hookEventName":"PreToolUse","permissionDecision":'
               b'"deny","permissionDecisionReason":"ccm: the policy service is unreachable '
               b'and policies fail closed"}}\n')

#  The hook events `ccm hooks install` puts ccm-hook on (ccm_hookcfg.c).
INSTALLED_EVENTS = [
    "SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "PostToolUseFailure",
    "PostToolBatch", "Notification", "PermissionRequest", "SubagentStart", "SubagentStop",
    "Stop", "StopFailure", "PreCompact", "PostCompact", "SessionEnd"]

AUDIT_KEYS = ("id", "event_id", "task_id", "automation", "action", "outcome", "details",
              "timestamp")


def compact(obj):
    """JSON as cJSON_PrintUnformatted writes it (no spaces, UTF-8 as is)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def pre_decision(action, rule, reason):
    """The exact stdout of ccm-hook for a PreToolUse a policy decided."""
    return compact({"hookSpecificOutput": {
        "hookEventName": "PreToolUse", "permissionDecision": action,
        "permissionDecisionReason": f"ccm policy '{rule}': {reason}"}})


def tool_event(hook, tool, tool_input, session, cwd="/home/user/project", **extra):
    """A tool event as Claude Code sends it on a hook's stdin."""
    event = {"session_id": session, "transcript_path": f"/home/user/.claude/{session}.jsonl",
             "cwd": cwd, "permission_mode": "default", "hook_event_name": hook,
             "tool_name": tool, "tool_input": tool_input,
             "tool_use_id": "toolu_" + uuid.uuid4().hex[:20]}
    event.update(extra)
    return event


def stop_event(session, cwd="/home/user/project"):
    return {"session_id": session, "transcript_path": f"/home/user/.claude/{session}.jsonl",
            "cwd": cwd, "permission_mode": "default", "hook_event_name": "Stop",
            "stop_hook_active": False}


def config_write(path, content):
    """Replaces path (a temporary file, then rename, as most editors do).
    Its mtime is made a later whole second than the one it replaces, so a
    change never depends on timestamp granularity (the ingester compares
    nanoseconds, size and inode: see test_bug_same_second_edit)."""
    try:
        old = os.stat(path).st_mtime
    except FileNotFoundError:
        old = None
    tmp = path + ".test-tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(content if isinstance(content, str) else json.dumps(content, indent=2))
    os.replace(tmp, path)
    if old is not None and int(os.stat(path).st_mtime) <= int(old):
        os.utime(path, (int(old) + 1, int(old) + 1))


class RulesTestCase(HooksTestCase):
    """HooksTestCase with helpers for policies, audits and the ingester's log."""

    @property
    def policies_path(self):
        return os.path.join(self.home.path, "policies.json")

    @property
    def automations_path(self):
        return os.path.join(self.home.path, "automations.json")

    @property
    def mode_path(self):
        return os.path.join(self.home.path, "run", "policy.mode")

    def log(self):
        try:
            with open(self.ingester_stderr, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def wait_log(self, text, more_than):
        """Waits until the ingester's log holds text more than more_than times."""
        wait_for(f"the ingester to log {text!r}", lambda: self.log().count(text) > more_than,
                 10, diagnose=self.diagnose)

    def run_hook(self, event, env=None, *args):
        """Runs ccm-hook with event (a dict) on stdin; returns its stdout. It
        must exit 0 and write nothing on stderr."""
        out, err, _ = self.hook(json.dumps(event).encode(), *args, env=env)
        self.assertEqual(err, b"", f"ccm-hook complained: {err!r}")
        return out

    def row_of(self, event):
        """The hook_events row of an event sent with a tool_use_id."""
        return self.wait_rows(1, "json_extract(event_data, '$.tool_use_id') = ?",
                              event["tool_use_id"])[0]

    def audits(self, where="1", *args):
        rows = self.home.query(f"SELECT {', '.join(AUDIT_KEYS)} FROM automation_events"
                               f" WHERE {where} ORDER BY id", *args)
        out = []
        for row in rows:
            row = dict(zip(AUDIT_KEYS, row))
            row["details"] = json.loads(row["details"]) if row["details"] else None
            out.append(row)
        return out

    def wait_audits(self, count, where="1", *args, timeout=15):
        sql = f"SELECT count(*) FROM automation_events WHERE {where}"
        wait_for(f"{count} automation_events rows where {where} {args}",
                 lambda: self.home.scalar(sql, *args) >= count, timeout,
                 diagnose=lambda: f"{self.audits()}\n{self.diagnose()}")
        return self.audits(where, *args)


# ==========================================================================
#  Policies

class TestPolicies(RulesTestCase):

    RULES = {"rules": [
        {"name": "no-rm-rf-root", "tool": "^Bash$",
         "command": "rm +-[a-zA-Z]*[rR][a-zA-Z]* +/( |$)",
         "action": "deny", "reason": "never remove the root"},
        {"name": "no-web", "tool": "^Web(Fetch|Search)$", "action": "deny"},
        {"name": "git-status-ok", "tool": "^Bash$", "command": "^git status$",
         "action": "allow", "reason": "read-only"},
        {"name": "ask-push", "tool": "^Bash$", "command": "^git push",
         "action": "ask", "reason": "pushing needs a \"human\""}]}

    def test_deny_allow_ask_and_the_audit_trail(self):
        """Rules on the tool name and on the Bash command deny, allow or ask
        in the exact JSON Claude Code reads, for PreToolUse and for
        PermissionRequest; anything no rule matches gets no output at all.
        Every decision is audited in automation_events, linked to its event."""
        config_write(self.policies_path, self.RULES)
        self.start_ingester()
        task = self.add_task("policies")
        env = self.hook_env(task=task, agent=str(uuid.uuid4()))
        session = str(uuid.uuid4())

        def bash(hook, command):
            return tool_event(hook, "Bash", {"command": command, "description": "run it"},
                              session)

        cases = [  # (event, expected stdout, (rule, action, outcome, reason) or None)
            (bash("PreToolUse", "rm -rf /"),
             pre_decision("deny", "no-rm-rf-root", "never remove the root"),
             ("no-rm-rf-root", "deny", "denied", "never remove the root")),
            (bash("PreToolUse", "sudo rm -fr / --no-preserve-root"),
             pre_decision("deny", "no-rm-rf-root", "never remove the root"),
             ("no-rm-rf-root", "deny", "denied", "never remove the root")),
            (bash("PreToolUse", "rm -rf /tmp/build"), b"", None),
            (bash("PreToolUse", "ls -la"), b"", None),
            (tool_event("PreToolUse", "WebFetch", {"url": "https://example.com",
                                                   "prompt": "read"}, session),
             pre_decision("deny", "no-web", "not allowed here"),
             ("no-web", "deny", "denied", "not allowed here")),
            (bash("PreToolUse", "git status"),
             pre_decision("allow", "git-status-ok", "read-only"),
             ("git-status-ok", "allow", "allowed", "read-only")),
            (bash("PreToolUse", "git push origin main"),
             pre_decision("ask", "ask-push", 'pushing needs a "human"'),
             ("ask-push", "ask", "pending", 'pushing needs a "human"')),
            (tool_event("PreToolUse", "Read", {"file_path": "/etc/passwd"}, session), b"",
             None),
            # Not a decision point: the same command after the fact is only stored.
            (bash("PostToolUse", "rm -rf /"), b"", None),
            (bash("PermissionRequest", "rm -rf /"),
             compact({"hookSpecificOutput": {
                 "hookEventName": "PermissionRequest",
                 "decision": {"behavior": "deny",
                              "message": "ccm policy 'no-rm-rf-root': never remove the root"}}}),
             ("no-rm-rf-root", "deny", "denied", "never remove the root")),
            (bash("PermissionRequest", "git status"),
             compact({"hookSpecificOutput": {"hookEventName": "PermissionRequest",
                                             "decision": {"behavior": "allow"}}}),
             ("git-status-ok", "allow", "allowed", "read-only")),
            # ask on a permission dialog parks the hook until a human answers:
            # test_hooks_ask.py covers it.
            (bash("PermissionRequest", "make test"), b"", None),
        ]
        for event, want, _ in cases:
            with self.subTest(hook=event["hook_event_name"], tool=event["tool_name"],
                              input=event["tool_input"]):
                self.assertEqual(self.run_hook(event, env), want)

        decided = [(event, audit) for event, _, audit in cases if audit]
        rows = {event["tool_use_id"]: self.row_of(event) for event, _, _ in cases}
        self.assertTrue(all(r["task_id"] == task for r in rows.values()),
                        "a decided event was not stored like the others")
        audits = self.wait_audits(len(decided))
        self.assertEqual(len(audits), len(decided), "a decision without audit, or one too many")
        by_event = {a["event_id"]: a for a in audits}
        for event, (rule, action, outcome, reason) in decided:
            row = rows[event["tool_use_id"]]
            audit = by_event.get(row["id"])
            with self.subTest(rule=rule, hook=event["hook_event_name"]):
                self.assertIsNotNone(audit, f"no audit linked to event {row['id']}: {audits}")
                self.assertEqual(audit["automation"], f"policy:{rule}")
                self.assertEqual(audit["action"], action)
                self.assertEqual(audit["outcome"], outcome)
                self.assertEqual(audit["task_id"], task)
                self.assertRegex(audit["timestamp"], ccmtest.TIME_RE)
                delivered = not (event["hook_event_name"] == "PermissionRequest"
                                 and action == "ask")
                self.assertEqual(audit["details"], {
                    "hook_type": event["hook_event_name"], "tool_name": event["tool_name"],
                    "tool_input": event["tool_input"],
                    "reason": f"ccm policy '{rule}': {reason}", "delivered": delivered})

    def test_outside_worktree(self):
        """outside_worktree denies a file tool writing outside the task's
        worktree (CCM_WORKTREE, else the event's cwd), paths resolved by
        name; writes inside it, reads and non-file tools get no decision."""
        config_write(self.policies_path, {"rules": [
            {"name": "stay-home", "outside_worktree": True, "action": "deny",
             "reason": "write inside your worktree"}]})
        self.start_ingester()
        tree = os.path.join(self.home.path, "worktrees", "t1")
        env = self.hook_env(task=self.add_task("worktree"), agent=str(uuid.uuid4()))
        env["CCM_WORKTREE"] = tree
        session = str(uuid.uuid4())
        deny = pre_decision("deny", "stay-home", "write inside your worktree")

        def write(tool, key, path, cwd=tree):
            return tool_event("PreToolUse", tool, {key: path, "content": "x"}, session, cwd=cwd)

        cases = [
            (write("Write", "file_path", f"{tree}/src/new.py"), b""),
            (write("Write", "file_path", f"{tree}"), b""),
            (write("Write", "file_path", "/etc/cron.d/evil"), deny),
            (write("Edit", "file_path", "src/inside.txt"), b""),
            (write("Edit", "file_path", "../outside.txt"), deny),
            (write("Edit", "file_path", "./a/../../t1/b.txt"), b""),
            (write("Write", "file_path", f"{tree}/../t1-evil/x"), deny),  # a prefix, not inside
            (write("Write", "file_path", f"{tree}-other/x"), deny),
            (write("Write", "file_path", f"{tree}/a/../../../escape"), deny),
            (write("MultiEdit", "file_path", "/tmp/elsewhere.txt"), deny),
            (write("NotebookEdit", "notebook_path", "/tmp/nb.ipynb"), deny),
            (write("NotebookEdit", "notebook_path", f"{tree}/nb.ipynb"), b""),
            # The worktree is the one of the task, not the event's cwd.
            (write("Write", "file_path", "/home/user/project/x", cwd="/home/user/project"), deny),
            # Reading outside is fine; Bash is not a file tool for this rule.
            (write("Read", "file_path", "/etc/passwd"), b""),
            (tool_event("PreToolUse", "Bash", {"command": "echo x > /etc/motd"}, session), b""),
        ]
        for event, want in cases:
            with self.subTest(tool=event["tool_name"], input=event["tool_input"],
                              cwd=event["cwd"]):
                self.assertEqual(self.run_hook(event, env), want)

        # No CCM_WORKTREE: the event's cwd is the worktree.
        env.pop("CCM_WORKTREE")
        self.assertEqual(self.run_hook(write("Write", "file_path", "/etc/x"), env), deny)
        self.assertEqual(self.run_hook(write("Write", "file_path", f"{tree}/ok"), env), b"")
        self.assertEqual(self.run_hook(write("Write", "file_path", "rel/ok"), env), b"")
        # Neither: no worktree is known, so the rule cannot apply.
        no_cwd = write("Write", "file_path", "/etc/x")
        del no_cwd["cwd"]
        self.assertEqual(self.run_hook(no_cwd, env), b"")

        denied = sum(1 for _, want in cases if want) + 1
        audits = self.wait_audits(denied)
        self.assertEqual(len(audits), denied)
        self.assertEqual({(a["automation"], a["outcome"]) for a in audits},
                         {("policy:stay-home", "denied")})

    def test_first_matching_rule_wins_and_live_edits(self):
        """The first rule that matches decides; a rule that names nothing
        matches nothing. Editing policies.json while the ingester runs takes
        effect within the next scan (about a second); removing it ends all
        decisions and lets ccm-hook fail open again."""
        allow_git = {"name": "allow-git", "tool": "^Bash$", "command": "^git ",
                     "action": "allow", "reason": "git is fine"}
        no_bash = {"name": "no-bash", "tool": "^Bash$", "action": "deny", "reason": "no shell"}
        config_write(self.policies_path, {"fail": "closed", "rules": [
            {"name": "names-nothing", "action": "deny"}, allow_git, no_bash,
            {"name": "never-reached", "tool": "^Bash$", "command": "^git ", "action": "deny"}]})
        self.start_ingester()
        env = self.hook_env(agent=str(uuid.uuid4()))
        session = str(uuid.uuid4())

        def bash(command):
            return tool_event("PreToolUse", "Bash", {"command": command}, session)

        read = tool_event("PreToolUse", "Read", {"file_path": "/etc/hosts"}, session)
        self.assertEqual(self.run_hook(bash("git log"), env),
                         pre_decision("allow", "allow-git", "git is fine"))
        self.assertEqual(self.run_hook(bash("ls"), env),
                         pre_decision("deny", "no-bash", "no shell"))
        self.assertEqual(self.run_hook(read, env), b"", "a rule naming nothing matched")
        with open(self.mode_path) as f:
            self.assertEqual(f.read(), "closed\n")

        # The user edits the file a moment later (a new mtime second).
        loaded = self.log().count("policies loaded from")
        time.sleep(1.1)
        config_write(self.policies_path, {"rules": [no_bash, allow_git]})
        self.wait_log("policies loaded from", loaded)
        self.assertEqual(self.run_hook(bash("git log"), env),
                         pre_decision("deny", "no-bash", "no shell"), "the edit was not used")
        with open(self.mode_path) as f:
            self.assertEqual(f.read(), "open\n", "fail open now: policy.mode not updated")

        os.unlink(self.policies_path)
        wait_for("the removed policies to stop deciding",
                 lambda: self.run_hook(bash("ls"), env) == b"", 10, interval=0.2,
                 diagnose=self.diagnose)
        with open(self.mode_path) as f:
            self.assertEqual(f.read(), "open\n")

    def test_malformed_policies_keep_the_rules_in_force(self):
        """A broken policies.json (not JSON, a bad regular expression, an
        unknown action, a bad "fail" or "rules") is logged, naming the
        problem, and changes nothing: the rules in force stay, none of the
        broken file's rules apply, the ingester stays up. A fixed file is
        taken. Broken at start: no rules, and the ingester still runs."""
        path = self.policies_path
        config_write(path, '{"rules": [{"name": "x", "tool": "^Bash$", "action": "deny"')
        ingester = self.start_ingester()
        self.assertIn(f"policies not changed: {path}: not a JSON object", self.log())
        env = self.hook_env(agent=str(uuid.uuid4()))
        session = str(uuid.uuid4())
        fetch = tool_event("PreToolUse", "WebFetch", {"url": "https://example.com"}, session)
        rm = tool_event("PreToolUse", "Bash", {"command": "rm -rf /"}, session)
        self.assertEqual(self.run_hook(fetch, env), b"", "rules from a broken file")

        config_write(path, {"fail": "closed",
                            "rules": [{"name": "no-web", "tool": "^WebFetch$", "action": "deny"}]})
        self.wait_log("policies loaded from", 0)
        no_web = pre_decision("deny", "no-web", "not allowed here")
        self.assertEqual(self.run_hook(fetch, env), no_web)

        deny_rm = {"name": "deny-rm", "tool": "^Bash$", "command": "^rm ", "action": "deny"}
        broken = [
            ("{ not json", f"{path}: not a JSON object"),
            ("[]", f"{path}: not a JSON object"),
            (json.dumps({"rules": [deny_rm, {"name": "bad-re", "tool": "^Bash$",
                                             "command": "rm (-rf", "action": "deny"}]}),
             "rule 'bad-re': \"command\": "),
            (json.dumps({"rules": [{"name": "bad-tool", "tool": "[z-a]", "action": "deny"}]}),
             "rule 'bad-tool': \"tool\": "),
            (json.dumps({"rules": [deny_rm, {"name": "block-it", "tool": "^Bash$",
                                             "action": "block"}]}),
             f"{path}: rule 'block-it': \"action\" must be deny, allow or ask"),
            (json.dumps({"rules": [{"name": "no-action", "tool": "^Bash$"}]}),
             f"{path}: rule 'no-action': \"action\" must be deny, allow or ask"),
            (json.dumps({"fail": "sometimes", "rules": [deny_rm]}),
             f"{path}: \"fail\" must be \"open\" or \"closed\""),
            (json.dumps({"rules": {"name": "x"}}), f"{path}: \"rules\" must be an array"),
            (json.dumps({"rules": [deny_rm, "deny everything"]}),
             f"{path}: rule 2: must be an object"),
        ]
        for text, message in broken:
            with self.subTest(policies=text):
                before = self.log().count("policies not changed: ")
                config_write(path, text)
                self.wait_log("policies not changed: ", before)
                line = self.log().split("policies not changed: ")[-1].splitlines()[0]
                self.assertIn(message, "policies not changed: " + line)
                self.assertAlive(ingester)
                self.assertEqual(self.run_hook(fetch, env), no_web, "the rules in force were lost")
                self.assertEqual(self.run_hook(rm, env), b"", "a rule of a broken file applies")
                with open(self.mode_path) as f:
                    self.assertEqual(f.read(), "closed\n")

        loaded = self.log().count("policies loaded from")
        config_write(path, {"rules": [deny_rm]})
        self.wait_log("policies loaded from", loaded)
        wait_for("the fixed file to be used",
                 lambda: self.run_hook(rm, env) == pre_decision("deny", "deny-rm",
                                                                "not allowed here"), 5)
        self.assertEqual(self.run_hook(fetch, env), b"")
        self.assertAlive(ingester)

    def test_fail_closed_and_open_when_the_ingester_is_down(self):
        """policies.json's "fail" reaches ccm-hook through run/policy.mode:
        with the ingester down, fail closed denies every PreToolUse (and only
        decision events) with the documented JSON, fail open prints nothing,
        --fail-closed denies whatever the mode; ccm-hook does not wait for
        the missing ingester and the events are spooled, then stored."""
        session = str(uuid.uuid4())
        env = self.hook_env(task=self.add_task("fail modes"), agent=str(uuid.uuid4()))
        bash = tool_event("PreToolUse", "Bash", {"command": "ls"}, session)

        # Nothing ever ran: no policy.mode; fail open unless --fail-closed.
        self.assertEqual(self.run_hook(bash, env), b"")
        self.assertEqual(self.run_hook(bash, env, "--fail-closed", "claude"), FAIL_CLOSED)

        config_write(self.policies_path, {"fail": "closed", "rules": [
            {"name": "no-web", "tool": "^WebFetch$", "action": "deny"}]})
        ingester = self.start_ingester()
        with open(self.mode_path) as f:
            self.assertEqual(f.read(), "closed\n")
        self.assertEqual(self.run_hook(bash, env), b"", "no rule matched: no decision")
        wait_for("the events spooled so far to be stored", lambda: not self.spooled(), 10,
                 diagnose=self.diagnose)
        self.kill9(ingester)  # the socket file stays: connections are refused

        down = [tool_event("PreToolUse", "Bash", {"command": "ls"}, session),
                tool_event("PreToolUse", "Read", {"file_path": "/x"}, session),
                tool_event("PostToolUse", "Bash", {"command": "ls"}, session,
                           tool_response={"stdout": ""}),
                tool_event("PermissionRequest", "Bash", {"command": "ls"}, session),
                {"session_id": session, "hook_event_name": "Notification", "cwd": "/p",
                 "message": "Claude is waiting for your input",
                 "notification_type": "idle_prompt", "tool_use_id": "toolu_notification"}]
        outputs = []
        for event in down:
            started = time.monotonic()
            outputs.append(self.run_hook(event, env))
            self.assertLess(time.monotonic() - started, 1.5, "ccm-hook waited for no ingester")
        self.assertEqual(outputs[0], FAIL_CLOSED)
        self.assertEqual(outputs[1], FAIL_CLOSED)
        self.assertEqual(outputs[2], b"", "only decision events are denied")
        self.assertNotEqual(outputs[3], b"", "a permission request was not denied")
        self.assertEqual(outputs[4], b"")
        self.assertEqual(len(self.spooled()), len(down))

        config_write(self.policies_path, {"fail": "open", "rules": []})
        ingester = self.start_ingester()
        with open(self.mode_path) as f:
            self.assertEqual(f.read(), "open\n")
        for event in down:
            self.row_of(event)  # the spooled events are stored
        self.assertEqual(self.stop_ingester(ingester), 0)
        self.assertEqual(self.run_hook(bash, env), b"", "fail open printed a decision")
        self.assertEqual(self.run_hook(bash, env, "--fail-closed"), FAIL_CLOSED)
        # Spooled events were never decided: nothing audited.
        self.assertEqual(self.audits(), [])

    # ------------------------------------------------------------ bugs

    def test_bug_stale_policy_mode_after_policies_removed(self):
        """Was a bug (hooks_server.c s_policy_refresh): policies.json removed
        while the ingester was down. The next ingester started with no
        policies but returned early without rewriting run/policy.mode, so it
        stayed "closed" and ccm-hook kept denying every tool use whenever the
        ingester was unreachable. Now every ingester writes the mode at start
        (atomically, 0600)."""
        config_write(self.policies_path, {"fail": "closed", "rules": []})
        self.assertEqual(self.stop_ingester(self.start_ingester()), 0)
        os.unlink(self.policies_path)
        self.assertEqual(self.stop_ingester(self.start_ingester()), 0)
        env = self.hook_env(agent=str(uuid.uuid4()))
        event = tool_event("PreToolUse", "Bash", {"command": "ls"}, str(uuid.uuid4()))
        out = self.run_hook(event, env)
        with open(self.mode_path) as f:
            mode = f.read()
        self.assertEqual((mode, out), ("open\n", b""),
                         "no policies any more, yet ccm-hook fails closed")
        self.assertEqual(stat.S_IMODE(os.stat(self.mode_path).st_mode), 0o600)
        self.assertEqual([n for n in os.listdir(os.path.dirname(self.mode_path))
                          if n.startswith("policy.mode")], ["policy.mode"],
                         "a temporary file was left in run/")

    def test_bug_same_second_edit(self):
        """Was a bug (hooks_server.c s_policy_refresh, also hooks_auto.c
        hooks_auto_refresh): a change was seen only if st_mtime changed in
        whole seconds, so a file saved again within the second of the version
        the ingester read (an editor's second save, a script writing twice)
        was never re-read. A broken (say half-written) save within that
        second keeps the rules in force, and the next good one is taken."""
        second = int(time.time()) - 5
        config_write(self.policies_path, {"rules": [
            {"name": "v1", "tool": "^WebFetch$", "action": "deny"}]})
        os.utime(self.policies_path, ns=(second * 10**9 + 100_000_000,) * 2)
        self.start_ingester()
        env = self.hook_env(agent=str(uuid.uuid4()))
        fetch = tool_event("PreToolUse", "WebFetch", {"url": "https://x"}, str(uuid.uuid4()))
        self.assertEqual(self.run_hook(fetch, env), pre_decision("deny", "v1", "not allowed here"))
        with open(self.policies_path, "w") as f:
            json.dump({"rules": [{"name": "v2", "tool": "^WebFetch$", "action": "deny"}]}, f)
        os.utime(self.policies_path, ns=(second * 10**9 + 700_000_000,) * 2)
        time.sleep(2.2)  # two scans
        self.assertEqual(self.run_hook(fetch, env), pre_decision("deny", "v2", "not allowed here"))

        # Half a file, then the whole of it, in the same second.
        v3 = json.dumps({"rules": [{"name": "v3", "tool": "^WebFetch$", "action": "deny"}]})
        failed = self.log().count("policies not changed: ")
        with open(self.policies_path, "w") as f:
            f.write(v3[:20])
        os.utime(self.policies_path, ns=(second * 10**9 + 800_000_000,) * 2)
        self.wait_log("policies not changed: ", failed)
        time.sleep(1.1)  # another scan: a broken version is reported once
        self.assertEqual(self.log().count("policies not changed: "), failed + 1)
        self.assertEqual(self.run_hook(fetch, env), pre_decision("deny", "v2", "not allowed here"))
        with open(self.policies_path, "w") as f:
            f.write(v3)
        os.utime(self.policies_path, ns=(second * 10**9 + 800_000_000,) * 2)
        time.sleep(2.2)
        self.assertEqual(self.run_hook(fetch, env), pre_decision("deny", "v3", "not allowed here"))

    def test_bug_long_decision_is_dropped(self):
        """Was a bug (hooks_server.c s_reply): a decision longer than 1024
        bytes was answered as "no decision" (length 0), silently, though
        ccm-hook takes up to HOOK_REPLY_MAX (64 KiB) and the audit row said
        it was delivered. hooks_policy.c caps the rule name at 200 bytes and
        the reason at 380 before JSON escaping, so only a long name with a
        reason full of quotes or backslashes got there; but then a deny rule
        failed open."""
        name = "no-rm-" + "x" * 160
        reason = 'a quoted path: ' + (chr(92) + '"') * 190  # backslash, quote: 4 bytes in JSON
        config_write(self.policies_path, {"rules": [
            {"name": name, "tool": "^Bash$", "command": "^rm ", "action": "deny",
             "reason": reason}]})
        self.start_ingester()
        want = pre_decision("deny", name, reason[:380])
        self.assertGreater(len(want), 1024)
        event = tool_event("PreToolUse", "Bash", {"command": "rm -rf x"}, str(uuid.uuid4()))
        out = self.run_hook(event, self.hook_env(agent=str(uuid.uuid4())))
        self.assertEqual(self.wait_audits(1)[0]["details"]["delivered"], True)
        self.assertEqual(out, want, "a deny rule matched, and nothing was printed")

    def test_bug_fail_closed_permission_request_shape(self):
        """Was a bug (ccm_hook.c s_deny_unreachable): failing closed, ccm-hook
        printed the PreToolUse decision for every decision event, a
        PermissionRequest included. Claude Code wants hookEventName
        "PermissionRequest" and decision.behavior there (as hooks_policy.c
        writes when the ingester answers); a mismatched hookEventName is not
        a valid answer. Gemini CLI's BeforeTool gets Gemini's own
        {"decision": "deny", "reason": ...}."""
        env = self.hook_env(agent=str(uuid.uuid4()))
        event = tool_event("PermissionRequest", "Bash", {"command": "ls"}, str(uuid.uuid4()))
        out = json.loads(self.run_hook(event, env, "--fail-closed"))
        self.assertEqual(out["hookSpecificOutput"]["hookEventName"], "PermissionRequest")
        self.assertEqual(out["hookSpecificOutput"]["decision"]["behavior"], "deny")
        reason = "ccm: the policy service is unreachable and policies fail closed"
        self.assertEqual(out, {"hookSpecificOutput": {
            "hookEventName": "PermissionRequest",
            "decision": {"behavior": "deny", "message": reason}}})

        gemini = {"hook_event_name": "BeforeTool", "session_id": "g-1", "cwd": "/p",
                  "tool_name": "run_shell_command", "tool_input": {"command": "ls"}}
        self.assertEqual(self.run_hook(gemini, env, "--fail-closed", "gemini"),
                         compact({"decision": "deny", "reason": reason}) + b"\n")
        # Only the event's own name counts, not the same word in its input.
        post = tool_event("PostToolUse", "Bash", {"command": 'echo "PreToolUse"'},
                          str(uuid.uuid4()))
        self.assertEqual(self.run_hook(post, env, "--fail-closed"), b"")

    def test_gemini_before_tool(self):
        """Gemini CLI's BeforeTool is a decision point too: a deny rule prints
        Gemini's {"decision": "deny", "reason": ...}; allow and ask print
        nothing (Gemini's hooks document only deny there), audited as not
        delivered."""
        config_write(self.policies_path, {"rules": [
            {"name": "no-rm", "tool": "^run_shell_command$", "command": "^rm ",
             "action": "deny", "reason": "no rm"},
            {"name": "ls-ok", "tool": "^run_shell_command$", "command": "^ls",
             "action": "allow"}]})
        self.start_ingester()
        env = self.hook_env(agent=str(uuid.uuid4()))

        def before(command):
            return {"hook_event_name": "BeforeTool", "session_id": "g-2", "cwd": "/p",
                    "tool_name": "run_shell_command", "tool_input": {"command": command}}

        self.assertEqual(self.run_hook(before("rm -rf x"), env, "gemini"),
                         compact({"decision": "deny", "reason": "ccm policy 'no-rm': no rm"}))
        self.assertEqual(self.run_hook(before("ls"), env, "gemini"), b"")
        self.assertEqual(self.run_hook(before("make"), env, "gemini"), b"")
        audits = self.wait_audits(2)
        self.assertEqual([(a["automation"], a["outcome"], a["details"]["delivered"])
                          for a in audits],
                         [("policy:no-rm", "denied", True), ("policy:ls-ok", "allowed", False)])


# ==========================================================================
#  Automations

class Recorder(http.server.ThreadingHTTPServer):
    """A local HTTP server recording every request; answers with the status
    codes queued for a path (200 once they run out)."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), RecorderHandler)
        self.lock = threading.Lock()
        self.requests = []
        self.statuses = {}

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}"

    def to(self, path):
        with self.lock:
            return [r for r in self.requests if r["path"] == path]


class RecorderHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def _record(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        server = self.server
        with server.lock:
            server.requests.append({"method": self.command, "path": self.path,
                                    "headers": {k.lower(): v for k, v in self.headers.items()},
                                    "body": body, "at": time.monotonic()})
            queued = server.statuses.get(self.path)
            status = queued.pop(0) if queued else 200
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    do_POST = do_PUT = do_GET = _record

    def log_message(self, *args):
        pass


class TestAutomations(RulesTestCase):

    def setUp(self):
        super().setUp()
        self.server = Recorder()
        thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        thread.start()
        self.addCleanup(self.server.server_close)
        self.addCleanup(self.server.shutdown)

    def write_automations(self, automations):
        config_write(self.automations_path, {"automations": automations})

    def wait_requests(self, count, timeout=15):
        wait_for(f"{count} webhook requests", lambda: len(self.server.requests) >= count,
                 timeout, diagnose=lambda: f"{self.server.requests}\n{self.diagnose()}")
        time.sleep(0.5)  # anything that should not come would come by now
        return list(self.server.requests)

    def test_webhooks_generic_slack_ntfy_and_filters(self):
        """Webhooks fire only for events matching their rule (hook_type,
        tool_name, file_path, agent_id regexes; "task": true), POST exactly
        the documented body and headers of each shape, and each outcome is
        recorded in automation_events. (One action at a time: see
        test_bug_actions_finishing_together_crash_the_ingester, which ends
        several together.)"""
        base = self.server.url
        self.write_automations([
            {"name": "generic-hook", "on": {"hook_type": "^Stop$", "agent_id": "^generic-"},
             "do": {"webhook": {"url": f"{base}/generic"}}},
            {"name": "slack-hook", "on": {"hook_type": "^Stop$", "agent_id": "^slack-",
                                          "task": True},
             "do": {"webhook": {"url": f"{base}/slack", "shape": "slack",
                                "message": "ccm: {hook_type} for task {task_id} ({automation})"
                                           " \"quoted\" ünïcode \\ {nope}"}}},
            {"name": "ntfy-hook", "on": {"hook_type": "^Notification$"},
             "do": {"webhook": {"url": f"{base}/ntfy/my-topic", "shape": "ntfy",
                                "message": "Agent {agent_id} waits in {session_id}",
                                "headers": {"Priority": "high", "Tags": "robot"}}}},
            {"name": "bash-failures", "on": {"hook_type": "Failure$", "tool_name": "^Bash$"},
             "do": {"webhook": {"url": f"{base}/failures", "shape": "generic",
                                "message": "{tool_name} failed at {file_path}."}}},
            {"name": "py-edits", "on": {"hook_type": "^PostToolUse$", "file_path": "\\.py$"},
             "do": {"webhook": {"url": f"{base}/py"}}},
        ])
        self.start_ingester()
        task = self.add_task("webhooks")

        def who(prefix, with_task):
            agent, session = f"{prefix}-{uuid.uuid4()}", str(uuid.uuid4())
            env = self.hook_env(task=task if with_task else None, agent=agent)
            return agent, session, env

        g_agent, g_session, g_env = who("generic", True)
        l_agent, l_session, l_env = who("generic", False)
        s_agent, s_session, s_env = who("slack", True)
        n_agent, n_session, n_env = who("slack", False)
        o_agent, o_session, o_env = who("other", True)
        notification = {"session_id": n_session, "hook_event_name": "Notification",
                        "message": "Claude needs your permission to use Bash",
                        "notification_type": "permission_prompt", "cwd": "/p"}
        sent = [  # (event, env, the automation it fires, or None)
            (tool_event("PostToolUse", "Bash", {"command": "ls"}, g_session), g_env, None),
            (tool_event("PostToolUseFailure", "Read", {"file_path": "/p/a.txt"}, g_session),
             g_env, None),
            (tool_event("PostToolUseFailure", "Bash", {"command": "false"}, g_session,
                        error="exit 1"), g_env, "bash-failures"),
            (tool_event("PostToolUse", "Write", {"file_path": "/p/a.py", "content": ""},
                        g_session), g_env, "py-edits"),
            (tool_event("PostToolUse", "Write", {"file_path": "/p/a.pyc", "content": ""},
                        g_session), g_env, None),
            (stop_event(n_session), n_env, None),       # slack- but no task
            (stop_event(o_session), o_env, None),       # a task, but not a matching agent
            (stop_event(g_session), g_env, "generic-hook"),
            (stop_event(l_session), l_env, "generic-hook"),
            (stop_event(s_session), s_env, "slack-hook"),
            (notification, n_env, "ntfy-hook"),
        ]
        fired = 0
        for event, env, automation in sent:
            self.assertEqual(self.run_hook(event, env), b"")
            if automation:
                fired += 1
                self.wait_audits(fired)
        requests = self.wait_requests(fired)
        self.assertEqual([r["path"] for r in requests],
                         ["/failures", "/py", "/generic", "/generic", "/slack", "/ntfy/my-topic"])
        self.assertEqual({r["method"] for r in requests}, {"POST"})

        def row(session, hook_type):
            return self.wait_rows(1, "session_id = ? AND hook_type = ?", session, hook_type)[0]

        generic = [json.loads(r["body"]) for r in self.server.to("/generic")]
        stop, lone = row(g_session, "Stop"), row(l_session, "Stop")
        self.assertEqual(generic, [
            {"automation": "generic-hook", "message": f"Stop  (task {task})",
             "event": {"hook_type": "Stop", "task_id": task, "agent_id": g_agent,
                       "session_id": g_session, "uid": stop["uid"],
                       "hook_timestamp": stop["hook_timestamp"]}},
            {"automation": "generic-hook", "message": "Stop  (task )",
             "event": {"hook_type": "Stop", "agent_id": l_agent, "session_id": l_session,
                       "uid": lone["uid"], "hook_timestamp": lone["hook_timestamp"]}}])
        for r in self.server.to("/generic"):
            self.assertEqual(r["headers"]["content-type"], "application/json")

        slack = self.server.to("/slack")
        self.assertEqual(slack[0]["body"], compact(
            {"text": f"ccm: Stop for task {task} (slack-hook) \"quoted\" ünïcode \\ {{nope}}"}))
        self.assertEqual(slack[0]["headers"]["content-type"], "application/json")

        ntfy = self.server.to("/ntfy/my-topic")[0]
        self.assertEqual(ntfy["body"], f"Agent {n_agent} waits in {n_session}".encode())
        self.assertEqual(ntfy["headers"]["title"], "ccm ntfy-hook: Notification")
        self.assertEqual(ntfy["headers"]["content-type"], "text/plain; charset=utf-8")
        self.assertEqual(ntfy["headers"]["priority"], "high")
        self.assertEqual(ntfy["headers"]["tags"], "robot")

        failure = self.row_of(sent[2][0])
        body = json.loads(self.server.to("/failures")[0]["body"])
        self.assertEqual(body, {"automation": "bash-failures", "message": "Bash failed at .",
                                "event": {"hook_type": "PostToolUseFailure", "task_id": task,
                                          "agent_id": g_agent, "tool_name": "Bash",
                                          "session_id": g_session, "uid": failure["uid"],
                                          "hook_timestamp": failure["hook_timestamp"]}})
        body = json.loads(self.server.to("/py")[0]["body"])
        self.assertEqual(body["message"], f"PostToolUse Write (task {task})")
        self.assertEqual(body["event"]["file_path"], "/p/a.py")
        self.assertEqual(body["event"]["uid"], self.row_of(sent[3][0])["uid"])

        audits = self.audits()
        self.assertEqual([(a["automation"], a["action"], a["outcome"], a["task_id"])
                          for a in audits],
                         [("bash-failures", "webhook", "ok", task),
                          ("py-edits", "webhook", "ok", task),
                          ("generic-hook", "webhook", "ok", task),
                          ("generic-hook", "webhook", "ok", None),
                          ("slack-hook", "webhook", "ok", task),
                          ("ntfy-hook", "webhook", "ok", None)])
        for audit in audits:
            self.assertEqual(audit["details"], {"attempts": 1, "message": "HTTP 200"})

    def test_failures_are_retried_three_times_and_recorded(self):
        """A webhook answering 500, one refused, a command exiting non-zero and
        one that does not exist: 3 attempts each (1 s, then 2 s apart), then
        one "failed" row with the last error. A webhook failing twice then
        answering 200 ends "ok" after 3 attempts. (The events are sent half
        a second apart so that no two actions end together: see
        test_bug_actions_finishing_together_crash_the_ingester.)"""
        with socket.socket() as probe:  # a port nobody listens on
            probe.bind(("127.0.0.1", 0))
            refused = probe.getsockname()[1]
        self.server.statuses = {"/down": [500] * 10, "/flaky": [500, 503]}
        base = self.server.url

        def on(name):
            return {"hook_type": "^Stop$", "agent_id": f"^{name}-"}

        self.write_automations([
            {"name": "down", "on": on("down"), "do": {"webhook": {"url": f"{base}/down"}}},
            {"name": "flaky", "on": on("flaky"),
             "do": {"webhook": {"url": f"{base}/flaky", "shape": "slack"}}},
            {"name": "refused", "on": on("refused"),
             "do": {"webhook": {"url": f"http://127.0.0.1:{refused}/x"}}},
            {"name": "exit-3", "on": on("exit-3"),
             "do": {"command": [ccmtest.PYTHON, "-c", "import sys; sys.exit(3)"]}},
            {"name": "missing", "on": on("missing"),
             "do": {"command": ["/nonexistent/ccm-test-no-such-program", "x"]}},
        ])
        self.start_ingester()
        task = self.add_task("retries")
        started = time.monotonic()
        for name in ("down", "flaky", "refused", "exit-3", "missing"):
            self.run_hook(stop_event(str(uuid.uuid4())),
                          self.hook_env(task=task, agent=f"{name}-{uuid.uuid4()}"))
            time.sleep(0.5)
        audits = {a["automation"]: a for a in self.wait_audits(5)}
        took = time.monotonic() - started
        time.sleep(0.3)
        self.assertEqual(len(self.audits()), 5, "one row per automation, not per attempt")
        self.assertGreaterEqual(took, 3.0, "the retries did not wait 1 s, then 2 s")
        for name, outcome, message in (("down", "failed", "webhook: HTTP 500"),
                                       ("flaky", "ok", "HTTP 200"),
                                       ("exit-3", "failed", "command: exit 3"),
                                       ("missing", "failed",
                                        "cannot run the command: No such file or directory")):
            with self.subTest(automation=name):
                audit = audits[name]
                self.assertEqual(audit["outcome"], outcome)
                self.assertEqual(audit["details"], {"attempts": 3, "message": message})
                self.assertEqual(audit["task_id"], task)
                self.assertEqual(audit["action"],
                                 "command" if name in ("exit-3", "missing") else "webhook")
        audit = audits["refused"]
        self.assertEqual((audit["outcome"], audit["details"]["attempts"]), ("failed", 3))
        self.assertRegex(audit["details"]["message"], r"^webhook: .*connect", audit)

        for path in ("/down", "/flaky"):
            hits = self.server.to(path)
            self.assertEqual(len(hits), 3, f"{path}: {len(hits)} attempts")
            self.assertEqual(len({r["body"] for r in hits}), 1, "a retry sent another body")
            gaps = [b["at"] - a["at"] for a, b in zip(hits, hits[1:])]
            self.assertGreaterEqual(gaps[0], 0.9, gaps)
            self.assertGreaterEqual(gaps[1], 1.9, gaps)

    def test_bug_actions_finishing_together_crash_the_ingester(self):
        """Was a bug (hooks_auto.c s_check, the "Drop finished jobs" loop): it took
        `next` with zlistx_next, then deleted the finished job with
        zlistx_delete(zlistx_find(job)), which moves the list's cursor back
        to the deleted job's predecessor; the next zlistx_next returned `next`
        again. When two adjacent jobs ended in the same pass, the second was
        destroyed and then visited again: use after free, then a double free.
        ccm-hooks aborted or segfaulted. Any event that matches two
        automations whose actions end within the same 50 ms did it: here
        four commands that end together."""
        self.write_automations([
            {"name": f"sleep-{i}", "on": {"hook_type": "^Stop$"},
             "do": {"command": ["sleep", "0.3"]}} for i in range(4)])
        ingester = self.start_ingester()
        self.ended.add(ingester.pid)  # it dies of the bug: not a failure of the cleanup
        self.run_hook(stop_event(str(uuid.uuid4())), self.hook_env(agent=str(uuid.uuid4())))
        ccmtest.wait_until(lambda: ingester.poll() is not None
                           or self.home.scalar("SELECT count(*) FROM automation_events") >= 4, 10)
        time.sleep(0.3)
        self.assertIsNone(ingester.poll(), "ccm-hooks died:\n" + self.log()[-500:])
        self.assertEqual(self.home.scalar("SELECT count(*) FROM automation_events"), 4)

    def test_command_gets_event_fields_as_argv_not_shell(self):
        """A command action is an argv: placeholders are filled with the
        event's fields byte for byte (quotes, $(...), backticks, newlines,
        braces), no shell ever sees them; unknown placeholders stay as they
        are. It runs only for matching events, and its outcome is recorded."""
        out_dir = os.path.join(self.home.path, "cmd")
        os.makedirs(out_dir)
        out_file = os.path.join(out_dir, "calls.jsonl")
        pwned = os.path.join(out_dir, "pwned")
        code = ("import json, sys\n"
                "with open(sys.argv[1], 'a') as f: f.write(json.dumps(sys.argv[2:]) + chr(10))")
        self.write_automations([
            {"name": "record-write",
             "on": {"hook_type": "^PostToolUse$", "tool_name": "^(Write|Edit)$", "task": True},
             "do": {"command": [ccmtest.PYTHON, "-c", code, out_file, "{file_path}",
                                "{tool_name}", "{task_id}", "{automation}",
                                "{unknown} {session_id}", "$HOME {agent_id}"]}}])
        self.start_ingester()
        task = self.add_task("commands")
        agent = str(uuid.uuid4())
        env = self.hook_env(task=task, agent=agent)
        session = str(uuid.uuid4())
        evil = (f"/tmp/it's \"q\" $(touch {pwned}) `touch {pwned}`; touch {pwned} & "
                f"{{task_id}} $HOME\n\tü.txt")
        no_task = tool_event("PostToolUse", "Write", {"file_path": "/tmp/a", "content": ""},
                             str(uuid.uuid4()))
        read = tool_event("PostToolUse", "Read", {"file_path": "/tmp/a"}, session)
        write = tool_event("PostToolUse", "Write", {"file_path": evil, "content": "x"}, session)
        self.run_hook(no_task, self.hook_env(agent=str(uuid.uuid4())))
        self.run_hook(read, env)
        self.run_hook(write, env)
        audits = self.wait_audits(1, "automation = 'record-write'")
        time.sleep(0.5)
        audits = self.audits()
        self.assertEqual(len(audits), 1, f"the command ran for a non-matching event: {audits}")
        self.assertEqual((audits[0]["action"], audits[0]["outcome"], audits[0]["task_id"]),
                         ("command", "ok", task))
        self.assertEqual(audits[0]["details"], {"attempts": 1, "message": "exit 0"})
        with open(out_file, encoding="utf-8") as f:
            calls = [json.loads(line) for line in f]
        self.assertEqual(calls, [[evil, "Write", task, "record-write",
                                  f"{{unknown}} {session}", f"$HOME {agent}"]])
        self.assertFalse(os.path.exists(pwned), "an event field went through a shell")

    def test_follow_up_task_added_once(self):
        """A task action adds one follow-up task per event, with the filled
        prompt and the parent in its metadata; the same event seen twice
        (taken live, then again from a spool file, as when ccm-hook's ack
        came late) still adds it once. Events without a task add nothing
        when the rule needs one."""
        self.write_automations([
            {"name": "review", "on": {"hook_type": "^Stop$", "task": True},
             "do": {"task": {"prompt": "Review what task {task_id} changed; "
                                       "session \"{session_id}\" $(x)",
                             "type": "supervisory"}}}])
        self.start_ingester()
        parent = self.add_task("the work to review")
        session = str(uuid.uuid4())
        self.run_hook(stop_event(session), self.hook_env(task=parent, agent=str(uuid.uuid4())))
        self.run_hook(stop_event(str(uuid.uuid4())), self.hook_env(agent=str(uuid.uuid4())))
        # One action at a time (test_bug_actions_finishing_together_crash_the_ingester):
        # a task action ends within its start, so two taken together end together.
        self.wait_audits(1, "automation = 'review'")
        time.sleep(0.3)

        # The same record twice: once over the socket, once from the spool.
        second_parent = self.add_task("more work")
        uid = uuid.uuid4().hex
        second_session = str(uuid.uuid4())
        head = (f"uid={uid}\nts={int(time.time() * 1000)}\ncli=claude\n"
                f"task={second_parent}\nagent={uuid.uuid4()}\n").encode()
        data = record(head, json.dumps(stop_event(second_session)).encode())
        with self.raw_client(data, close=False) as sock:
            ack = sock.recv(4)
        self.assertEqual(ack, b"\0\0\0\0")
        self.wait_audits(2, "automation = 'review'")
        time.sleep(0.3)
        tmp = os.path.join(self.spool_dir, f".tmp-{uid}")
        with open(tmp, "wb") as f:
            f.write(data)
        os.rename(tmp, os.path.join(self.spool_dir, f"{int(time.time() * 1000):013d}-{uid}.ev"))

        audits = self.wait_audits(3, "automation = 'review'")
        wait_for("the spool file to be read", lambda: not self.spooled(), 10)
        time.sleep(0.3)
        audits = self.audits()
        self.assertEqual(len(audits), 3, audits)
        for audit in audits:
            self.assertEqual((audit["action"], audit["outcome"]), ("task", "ok"), audit)
            self.assertEqual(audit["details"]["attempts"], 1)
        tasks = self.home.query(
            "SELECT id, prompt, task_type, metadata FROM tasks"
            " WHERE json_extract(metadata, '$.automation') = 'review' ORDER BY created_at")
        self.assertEqual(len(tasks), 2, f"follow-up tasks: {tasks}")
        by_parent = {json.loads(t[3])["parent_task"]: t for t in tasks}
        self.assertEqual(set(by_parent), {parent, second_parent})
        follow_id, prompt, task_type, metadata = by_parent[parent]
        self.assertEqual(prompt, f"Review what task {parent} changed; session \"{session}\" $(x)")
        self.assertEqual(task_type, "supervisory")
        self.assertEqual(self.home.scalar("SELECT parent_task_id FROM tasks WHERE id = ?",
                                          follow_id), parent, "the review names its task")
        self.assertEqual(json.loads(metadata), {"automation": "review", "parent_task": parent})
        self.assertEqual(by_parent[second_parent][1],
                         f"Review what task {second_parent} changed; "
                         f"session \"{second_session}\" $(x)")
        messages = sorted(a["details"]["message"] for a in audits)
        self.assertEqual(messages, sorted([f"task {follow_id} added"]
                                          + [f"task {by_parent[second_parent][0]} added"] * 2),
                         "the replayed event did not find the task it already added")
        self.assertEqual(self.home.scalar("SELECT count(*) FROM hook_events WHERE uid = ?", uid), 1)

    def test_automations_file_changes(self):
        """automations.json is re-read when it changes; a broken version is
        logged and leaves the automations in force; an empty list ends them."""
        base = self.server.url
        self.write_automations([{"name": "a", "on": {"hook_type": "^Stop$"},
                                 "do": {"webhook": {"url": f"{base}/a"}}}])
        ingester = self.start_ingester()
        self.assertIn("1 automation(s) loaded from", self.log())
        env = self.hook_env(agent=str(uuid.uuid4()))

        def stop():
            self.run_hook(stop_event(str(uuid.uuid4())), env)

        broken = [
            ("{ not json", "needs {\"automations\": [...]}; automations not changed"),
            (json.dumps({"automations": [{"name": "re", "on": {"hook_type": "(Stop"},
                                          "do": {"webhook": {"url": f"{base}/re"}}}]}),
             "automation 're': bad regular expression for hook_type; automations not changed"),
            (json.dumps({"automations": [{"name": "two", "on": {},
                                          "do": {"webhook": {"url": f"{base}/two"},
                                                 "command": ["true"]}}]}),
             "automation 'two' needs \"on\": {...} and \"do\" with one of webhook, command, "
             "task; automations not changed"),
        ]
        expected = 0
        for text, message in broken:
            with self.subTest(automations=text):
                before = self.log().count("automations not changed")
                config_write(self.automations_path, text)
                self.wait_log("automations not changed", before)
                self.assertIn(f"{self.automations_path}: {message}", self.log())
                stop()
                expected += 1
                self.wait_requests(expected)
                self.assertEqual({r["path"] for r in self.server.requests}, {"/a"})
                self.assertAlive(ingester)

        loaded = self.log().count("automation(s) loaded from")
        self.write_automations([{"name": "b", "on": {"hook_type": "^Stop$"},
                                 "do": {"webhook": {"url": f"{base}/b"}}}])
        self.wait_log("automation(s) loaded from", loaded)
        stop()
        self.wait_requests(expected + 1)
        self.assertEqual([r["path"] for r in self.server.requests][-1], "/b")

        self.write_automations([])
        self.wait_log("0 automation(s) loaded from", 0)
        stop()
        time.sleep(1.0)
        self.assertEqual(len(self.server.requests), expected + 1, "an ended automation fired")


# ==========================================================================
#  ccm hooks install | uninstall

class TestHooksInstall(ccmtest.CcmTestCase):

    def setUp(self):
        self.home = self.make_home()
        self.home.env.pop("CLAUDE_CONFIG_DIR", None)
        self.user_home = os.path.join(self.home.path, "user-home")
        os.makedirs(self.user_home)
        self.project = os.path.join(self.home.path, "project")
        os.makedirs(self.project)
        bin_dir = os.path.dirname(os.path.realpath(ccmtest.CLI_BIN))
        self.command = f"'{bin_dir}/ccm-hook' --home '{self.home.path}' claude"

    def ccm(self, *args, env=None):
        full = {"HOME": self.user_home}
        full.update(env or {})
        return self.home.run_cli("hooks", *args, env=full)

    def ok(self, *args, env=None):
        code, out, err = self.ccm(*args, env=env)
        self.assertEqual(code, 0, f"ccm hooks {' '.join(args)}: {err}")
        self.assertEqual(err, "")
        return out

    def read(self, path):
        with open(path, "rb") as f:
            return f.read()

    def ours(self, settings):
        """event -> the ccm-hook entries in settings."""
        found = {}
        for event, groups in settings.get("hooks", {}).items():
            for group in groups:
                for hook in group.get("hooks", []):
                    if "ccm-hook" in hook.get("command", ""):
                        found.setdefault(event, []).append(hook)
        return found

    def assertInstalled(self, settings, timeout=10):
        # PermissionRequest may wait for a human's answer (test_hooks_ask.py):
        # at least 330 s, whatever --timeout says.
        self.assertEqual(self.ours(settings), {
            event: [{"type": "command", "command": self.command,
                     "timeout": max(timeout, 330) if event == "PermissionRequest" else timeout}]
            for event in INSTALLED_EVENTS})

    def test_install_into_a_new_project_file_and_uninstall(self):
        """--project writes PATH/.claude/settings.json (0600, in a 0700 dir):
        one ccm-hook command, without matcher, on every hook event; a second
        install changes nothing; uninstall removes the file ccm created."""
        out = self.ok("install", "--project", self.project)
        path = os.path.join(self.project, ".claude", "settings.json")
        self.assertEqual(out, f"ccm hooks installed in {path} ({self.command})\n")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) & 0o077, 0)
        text = self.read(path)
        settings = json.loads(text)
        self.assertEqual(list(settings), ["hooks"])
        self.assertEqual(list(settings["hooks"]), INSTALLED_EVENTS)
        self.assertEqual(settings["hooks"]["PreToolUse"],
                         [{"hooks": [{"type": "command", "command": self.command,
                                      "timeout": 10}]}])
        self.assertInstalled(settings)
        self.assertTrue(text.endswith(b"}\n") and b"\t" not in text, "not 2-space JSON")
        self.assertFalse(os.path.exists(path + ".ccm-orig"), "a backup of nothing")
        self.assertEqual(sorted(os.listdir(os.path.dirname(path))), ["settings.json"])

        mtime = os.stat(path).st_mtime_ns
        self.ok("install", "--project", self.project)
        self.assertEqual(self.read(path), text, "a second install changed the file")
        self.assertEqual(os.stat(path).st_mtime_ns, mtime, "a second install rewrote the file")

        out = self.ok("uninstall", "--project", self.project)
        self.assertEqual(out, f"ccm hooks removed from {path}\n")
        self.assertFalse(os.path.exists(path), "the file ccm created was left")
        self.assertEqual(os.listdir(os.path.dirname(path)), [])
        # Nothing to uninstall: fine, and no file appears.
        self.ok("uninstall", "--project", self.project)
        self.assertFalse(os.path.exists(path))

    def test_install_keeps_the_users_settings_and_uninstall_restores_them(self):
        """Into an existing settings.json: the user's settings and hooks stay
        as they are (ours are added after theirs), the file keeps its mode,
        the original bytes are kept in settings.json.ccm-orig; reinstalling
        (even with another timeout) adds no duplicate and keeps the first
        backup; uninstall puts back the original bytes exactly."""
        claude = os.path.join(self.project, ".claude")
        os.makedirs(claude)
        path = os.path.join(claude, "settings.json")
        user = {
            "model": "opus",
            "permissions": {"allow": ["Bash(npm run test:*)"], "deny": ["Read(./.env)"]},
            "env": {"GREETING": "héllo \"world\"", "EMPTY": ""},
            "hooks": {
                "PreToolUse": [{"matcher": "Bash", "hooks": [
                    {"type": "command", "command": "/usr/local/bin/my-guard --strict"}]}],
                "Stop": [{"hooks": [{"type": "command", "command": "notify-send done",
                                     "timeout": 5}]}],
                "SomeFutureEvent": [{"hooks": [{"type": "command", "command": "echo future"}]}]},
            "statusLine": {"type": "command", "command": "~/.claude/status.sh"},
            "includeCoAuthoredBy": False, "cleanupPeriodDays": 30}
        original = (json.dumps(user, indent=4, ensure_ascii=False) + "\n\n").encode()
        with open(path, "wb") as f:
            f.write(original)
        os.chmod(path, 0o640)

        self.ok("install", "--project", self.project)
        self.assertEqual(self.read(path + ".ccm-orig"), original)
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640, "the file's mode changed")
        settings = json.loads(self.read(path))
        self.assertInstalled(settings)
        for key in user:
            if key != "hooks":
                self.assertEqual(settings[key], user[key], key)
        self.assertEqual(list(settings), list(user), "the order of the settings changed")
        self.assertEqual(settings["hooks"]["PreToolUse"][0], user["hooks"]["PreToolUse"][0])
        self.assertEqual(settings["hooks"]["Stop"][0], user["hooks"]["Stop"][0])
        self.assertEqual(settings["hooks"]["SomeFutureEvent"], user["hooks"]["SomeFutureEvent"])
        self.assertEqual(len(settings["hooks"]["PreToolUse"]), 2)
        installed = self.read(path)

        self.ok("install", "--project", self.project)
        self.assertEqual(self.read(path), installed, "a second install changed the file")
        self.ok("install", "--project", self.project, "--timeout", "3")
        settings = json.loads(self.read(path))
        self.assertInstalled(settings, timeout=3)
        self.assertEqual(settings["hooks"]["PreToolUse"][0], user["hooks"]["PreToolUse"][0])
        self.assertEqual(self.read(path + ".ccm-orig"), original, "the backup was overwritten")

        self.ok("uninstall", "--project", self.project)
        self.assertEqual(self.read(path), original, "uninstall did not restore the bytes")
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o640)
        self.assertFalse(os.path.exists(path + ".ccm-orig"), "the backup was left")
        self.assertEqual(sorted(os.listdir(claude)), ["settings.json"])

    def test_uninstall_after_the_user_changed_the_file(self):
        """The user edits settings.json after install: uninstall takes out
        only ccm's entries and keeps the edit (the backup is then stale)."""
        path = os.path.join(self.project, ".claude", "settings.json")
        os.makedirs(os.path.dirname(path))
        with open(path, "w") as f:
            json.dump({"model": "sonnet"}, f)
        self.ok("install", "--project", self.project)
        settings = json.loads(self.read(path))
        settings["theme"] = "dark"
        settings["hooks"]["Stop"].insert(0, {"hooks": [{"type": "command", "command": "mine"}]})
        with open(path, "w") as f:
            json.dump(settings, f)
        self.ok("uninstall", "--project", self.project)
        self.assertEqual(json.loads(self.read(path)), {
            "model": "sonnet", "hooks": {"Stop": [{"hooks": [{"type": "command",
                                                              "command": "mine"}]}]},
            "theme": "dark"})
        self.assertFalse(os.path.exists(path + ".ccm-orig"))

    def test_local_user_and_config_dir(self):
        """--local writes settings.local.json (--timeout: each hook's timeout);
        --user writes
        $HOME/.claude/settings.json, or $CLAUDE_CONFIG_DIR/settings.json."""
        self.ok("install", "--project", self.project, "--local", "--timeout", "7")
        local = os.path.join(self.project, ".claude", "settings.local.json")
        self.assertInstalled(json.loads(self.read(local)), timeout=7)
        self.assertEqual(os.listdir(os.path.dirname(local)), ["settings.local.json"])

        out = self.ok("install", "--user")
        user = os.path.join(self.user_home, ".claude", "settings.json")
        self.assertEqual(out, f"ccm hooks installed in {user} ({self.command})\n")
        self.assertInstalled(json.loads(self.read(user)))
        self.assertEqual(stat.S_IMODE(os.stat(user).st_mode), 0o600)

        config_dir = os.path.join(self.home.path, "claude-config")
        os.makedirs(config_dir)
        self.ok("install", "--user", env={"CLAUDE_CONFIG_DIR": config_dir})
        self.assertInstalled(json.loads(self.read(os.path.join(config_dir, "settings.json"))))

        self.ok("uninstall", "--project", self.project, "--local")
        self.ok("uninstall", "--user")
        self.assertFalse(os.path.exists(local))
        self.assertFalse(os.path.exists(user))

    def test_malformed_settings_are_not_touched(self):
        """A settings.json that is not a JSON object: install and uninstall
        fail (exit 1) naming the file, and leave it byte for byte, with no
        backup. Bad options are usage errors (exit 2)."""
        path = os.path.join(self.project, ".claude", "settings.json")
        os.makedirs(os.path.dirname(path))
        for text in (b'{"model": "opus", "hooks": {', b"[1, 2]", b"", b"null\n",
                     b'"just a string"'):
            with self.subTest(settings=text):
                with open(path, "wb") as f:
                    f.write(text)
                for verb in ("install", "uninstall"):
                    code, out, err = self.ccm(verb, "--project", self.project)
                    self.assertEqual(code, 1, f"{verb}: {out}{err}")
                    self.assertEqual(out, "")
                    self.assertEqual(err, f"ccm: {path} is not a JSON object; not touched\n")
                    self.assertEqual(self.read(path), text)
                    self.assertEqual(os.listdir(os.path.dirname(path)), ["settings.json"])

        code, _, err = self.ccm("install", "--project", os.path.join(self.home.path, "nope"))
        self.assertEqual(code, 1)
        self.assertIn("nope: No such file or directory", err)
        for args in (("install", "--timeout", "0"), ("install", "--user", "--project", "x"),
                     ("install", "--bogus"), ("reinstall",), ()):
            with self.subTest(args=args):
                code, _, err = self.ccm(*args)
                self.assertEqual(code, 2, err)
                self.assertTrue(err.startswith("ccm: "), err)
        self.assertFalse(os.path.exists(os.path.join(self.user_home, ".claude")))

    def test_bug_uninstall_drops_an_empty_hooks_object(self):
        """Was a bug (ccm_hookcfg.c s_remove_ours): a settings.json with
        "hooks": {} (or an event with an empty list) was not restored by
        uninstall: the emptied "hooks" was deleted, the result no longer
        equalled the backup, and the file was rewritten without the user's
        "hooks" key."""
        path = os.path.join(self.project, ".claude", "settings.json")
        os.makedirs(os.path.dirname(path))
        for original in (b'{\n  "model": "opus",\n  "hooks": {}\n}\n',
                         b'{"hooks": {"Stop": [], "SomeFutureEvent": [],\n'
                         b'  "PreToolUse": [{"matcher": "Bash", "hooks": []}]}, "model": "x"}'):
            with self.subTest(original=original):
                with open(path, "wb") as f:
                    f.write(original)
                self.ok("install", "--project", self.project)
                self.assertInstalled(json.loads(self.read(path)))
                self.ok("uninstall", "--project", self.project)
                self.assertEqual(self.read(path), original)
                self.assertEqual(os.listdir(os.path.dirname(path)), ["settings.json"])

    def test_bug_reinstall_backs_up_ccms_own_file(self):
        """Was a bug (ccm_hookcfg.c ccm_hookcfg_install): when settings.json
        existed only because ccm created it (no .ccm-orig), an install that
        changed it (another --timeout, a moved ccm-hook, another CCM_HOME)
        saved ccm's own file as the user's "original" settings.json.ccm-orig.
        Uninstall then could not tell that ccm created the file and left a
        settings.json holding "{}" behind instead of removing it. A file
        holding nothing but ccm's entries is now never taken for the user's."""
        path = os.path.join(self.project, ".claude", "settings.json")
        self.ok("install", "--project", self.project)
        self.ok("install", "--project", self.project, "--timeout", "42")
        self.assertInstalled(json.loads(self.read(path)), timeout=42)
        self.assertFalse(os.path.exists(path + ".ccm-orig"), "ccm's own file taken as original")
        self.ok("uninstall", "--project", self.project)
        self.assertEqual(os.listdir(os.path.dirname(path)), [],
                         "uninstall left the file ccm created")


class TestInstalledCommand(RulesTestCase):

    def test_the_installed_command_reaches_the_ingester(self):
        """The command `ccm hooks install` writes, run by a shell as Claude
        Code runs it (no CCM_* in the environment), delivers events to this
        home's ingester and prints its policy decisions."""
        project = os.path.join(self.home.path, "project")
        os.makedirs(project)
        code, _, err = self.home.run_cli("hooks", "install", "--project", project)
        self.assertEqual(code, 0, err)
        with open(os.path.join(project, ".claude", "settings.json")) as f:
            settings = json.load(f)
        config_write(self.policies_path, {"rules": [
            {"name": "no-web", "tool": "^WebFetch$", "action": "deny", "reason": "offline"}]})
        self.start_ingester()
        env = {k: v for k, v in self.home.env.items() if not k.startswith("CCM_")}
        env["HOME"] = project
        session = str(uuid.uuid4())
        for name, event, want in (
                ("PreToolUse", tool_event("PreToolUse", "WebFetch", {"url": "https://x"},
                                          session), pre_decision("deny", "no-web", "offline")),
                ("PostToolUse", tool_event("PostToolUse", "Bash", {"command": "ls"}, session),
                 b"")):
            command = settings["hooks"][name][0]["hooks"][0]["command"]
            done = subprocess.run(["/bin/sh", "-c", command], input=json.dumps(event).encode(),
                                  env=env, capture_output=True, timeout=10, cwd=project)
            self.assertEqual((done.returncode, done.stdout, done.stderr), (0, want, b""), name)
            self.assertEqual(self.row_of(event)["event_data"], event)


if __name__ == "__main__":
    ccmtest.main()

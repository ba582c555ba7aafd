"""The real Claude Code CLI end to end (issues 3 and 4): real ccm-store,
ccm-hooks and ccm-executor, real tmux and git, and the real `claude` from npm
(scripts/install-claude.sh puts it in tests/.claude-cli), talking to
tests/fake_anthropic.py, a scripted stand-in for the Messages API (Anthropic
cannot be reached from here).

What is checked is what a user would check: the file the scripted Write
tool created in the task's worktree, the task's status and result
(files_changed, and for headless runs Claude Code's own session id, turns and
cost), every hook event Claude Code fired in hook_events with the task and
agent, the agent's state from hooks (running -> idle -> exited), and that a
deny policy really stops the Bash tool, with its audit row.

Without the CLI the tests are skipped, unless CCM_REQUIRE_CLAUDE=1 (as
scripts/test.sh sets), which makes its absence a failure.
"""

import json
import os
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ccmtest  # noqa: E402
import test_executor as tx  # noqa: E402

CLAUDE = os.path.join(ccmtest.SOURCE_DIR, "tests", ".claude-cli", "node_modules", ".bin", "claude")
STAND_IN = os.path.join(ccmtest.SOURCE_DIR, "tests", "fake_anthropic.py")
HOOKS_BIN = os.path.join(ccmtest.BIN_DIR, "ccm-hooks")
REQUIRED = os.environ.get("CCM_REQUIRE_CLAUDE") == "1"
WAIT = 90.0


@unittest.skipUnless(os.access(CLAUDE, os.X_OK) or REQUIRED,
                     "the Claude Code CLI is not installed (scripts/install-claude.sh)")
class ClaudeTestCase(tx.ExecutorTestCase):
    """A home with a store, the hook ingester, Claude Code's config, and the stand-in."""

    def setUp(self):
        self.assertTrue(os.access(CLAUDE, os.X_OK), f"{CLAUDE} is missing: "
                        "run scripts/install-claude.sh")
        super().setUp()
        self.cfg = os.path.join(self.home.path, "claude-config")
        os.makedirs(self.cfg)
        # What a user who has run Claude Code once has; the trust of each
        # worktree is the executor's to add.
        with open(os.path.join(self.cfg, ".claude.json"), "w") as f:
            json.dump({"hasCompletedOnboarding": True, "bypassPermissionsModeAccepted": True}, f)
        with open(os.path.join(self.cfg, "settings.json"), "w") as f:
            json.dump({"skipDangerousModePermissionPrompt": True}, f)
        self.server = None
        self.hooks = None
        self.repo = self.make_repo()
        self.add_project(self.PROJECT, self.repo)
        self.addCleanup(self._stop_side_processes)

    def _stop_side_processes(self):
        for proc in (self.server, self.hooks):
            if proc and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(5)

    def claude_env(self, port):
        return {"PATH": os.path.dirname(CLAUDE) + ":" + os.environ.get("PATH", "/usr/bin:/bin"),
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{port}",
                "ANTHROPIC_AUTH_TOKEN": "stand-in",
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "CLAUDE_CONFIG_DIR": self.cfg, "IS_SANDBOX": "1"}

    def start_stand_in(self, steps):
        script = os.path.join(self.home.path, "script.json")
        port_file = os.path.join(self.home.path, "stand-in.port")
        with open(script, "w") as f:
            json.dump(steps, f)
        log = open(os.path.join(self.home.path, "stand-in.log"), "wb")
        self.server = subprocess.Popen(
            [sys.executable, STAND_IN, "--script", script, "--port", "0", "--port-file",
             port_file, "--log", os.path.join(self.home.path, "requests.jsonl")],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        def port():
            if os.path.exists(port_file):
                with open(port_file) as f:
                    return f.read().strip()
            return None
        return int(tx.wait_for("the Messages API stand-in to listen", port, 10))

    def start_hooks(self):
        log = open(os.path.join(self.home.path, "hooks.stderr"), "ab")
        self.hooks = subprocess.Popen([HOOKS_BIN], env=self.home.env, stdin=subprocess.DEVNULL,
                                      stdout=log, stderr=log)
        log.close()
        sock = os.path.join(self.home.path, "run", "hooks.sock")
        tx.wait_for("ccm-hooks to listen", lambda: os.path.exists(sock), 10)

    def run_claude_task(self, agent, steps_for):
        """Adds a held task (so its worktree path is known), scripts the
        stand-in for it, starts the services, releases the task, and waits
        until it ends. Returns (task_id, worktree)."""
        reply = self.home.ok("task.add", prompt="make hello", project=self.PROJECT, agent=agent,
                             hold=True)
        task_id = reply["task"]["id"]
        worktree = self.worktree_path(task_id)
        port = self.start_stand_in(steps_for(worktree))
        self.start_hooks()
        self.start_executor(extra_env=self.claude_env(port))
        self.home.ok("task.transition", task=task_id, to="queued")
        self.wait_final(task_id, timeout=WAIT)
        return task_id, worktree

    def hook_rows(self, task_id):
        return self.home.query("SELECT hook_type, tool_name, file_path, success, agent_id"
                               " FROM hook_events WHERE task_id = ? ORDER BY id", task_id)

    def agent_states(self, agent_id):
        """The agent's states in order, from the event log: [(status, source)]."""
        rows = self.home.query("SELECT data FROM events WHERE topic IN ('agents.inserted',"
                               " 'agents.updated') AND entity_id = ? ORDER BY seq", agent_id)
        states = []
        for (data,) in rows:
            data = json.loads(data)
            if data.get("status") and (not states or states[-1] != (data["status"],
                                                                     data.get("state_source"))):
                states.append((data["status"], data.get("state_source")))
        return states


class TestClaudeInteractive(ClaudeTestCase):

    def test_tui_write_hooks_and_state(self):
        def steps(worktree):
            return [{"tool": "Write", "input": {"file_path": os.path.join(worktree, "hello.txt"),
                                                "content": "hi from claude\n"}},
                    {"tool": "Bash", "input": {"command": "echo ran > ran.txt",
                                               "description": "write a marker"}},
                    {"text": "wrote it"}]
        task_id, worktree = self.run_claude_task("claude", steps)
        task = self.task(task_id)
        self.assertEqual(task["status"], "complete", self.diagnose())
        with open(os.path.join(worktree, "hello.txt")) as f:
            self.assertEqual(f.read(), "hi from claude\n")
        result = self.result(task_id)
        self.assertEqual(result["exit_code"], 0)
        self.assertEqual(sorted(result["files_changed"]), ["hello.txt", "ran.txt"])
        # The executor pre-accepted Claude Code's trust dialog for the worktree.
        with open(os.path.join(self.cfg, ".claude.json")) as f:
            trust = json.load(f)["projects"][worktree]
        self.assertTrue(trust["hasTrustDialogAccepted"])

        # Every hook event Claude Code fired, with the task and the agent.
        [agent] = self.agents(task_id)
        agent_id = agent["id"]
        tx.wait_for("SessionEnd in hook_events",
                    lambda: "SessionEnd" in [r[0] for r in self.hook_rows(task_id)], 10)
        rows = self.hook_rows(task_id)
        types = [r[0] for r in rows]
        for expected in ("SessionStart", "UserPromptSubmit", "PreToolUse", "PostToolUse", "Stop",
                         "SessionEnd"):
            self.assertIn(expected, types)
        self.assertLess(types.index("SessionStart"), types.index("UserPromptSubmit"))
        self.assertLess(types.index("Stop"), types.index("SessionEnd"))
        self.assertEqual({r[4] for r in rows}, {agent_id}, "hook events of another agent")
        write = [r for r in rows if r[0] == "PreToolUse" and r[1] == "Write"]
        self.assertEqual([r[2] for r in write], [os.path.join(worktree, "hello.txt")])
        posts = [(r[1], r[3]) for r in rows if r[0] == "PostToolUse"]
        self.assertEqual(posts, [("Write", 1), ("Bash", 1)])
        # No hook event was left without its task.
        self.assertEqual(self.home.query("SELECT count(*) FROM hook_events WHERE task_id IS NULL"),
                         [(0,)])

        # The agent's state came from hooks: running, then idle after Stop,
        # then exited.
        states = self.agent_states(agent_id)
        statuses = [s for s, _ in states]
        self.assertIn(("running", "hook"), states, states)
        self.assertIn(("idle", "hook"), states, states)
        self.assertEqual(statuses[-1], "exited", states)
        self.assertLess(statuses.index("running"), statuses.index("idle"))
        self.assertLess(statuses.index("idle"), len(statuses) - 1)


class TestClaudeHeadless(ClaudeTestCase):

    def test_headless_cost_and_turns(self):
        def steps(worktree):
            return [{"tool": "Write", "input": {"file_path": os.path.join(worktree, "hello.txt"),
                                                "content": "hi\n"}},
                    {"text": "wrote it"}]
        task_id, worktree = self.run_claude_task("claude-headless", steps)
        self.assertEqual(self.task(task_id)["status"], "complete", self.diagnose())
        with open(os.path.join(worktree, "hello.txt")) as f:
            self.assertEqual(f.read(), "hi\n")
        result = self.result(task_id)
        self.assertEqual(result["files_changed"], ["hello.txt"])
        details = result["details"]
        self.assertRegex(details["session_id"], ccmtest.UUID_RE)
        self.assertGreaterEqual(details["num_turns"], 2)
        self.assertGreater(details["total_cost_usd"], 0)
        self.assertIs(details["is_error"], False)
        self.assertEqual(details["result"], "wrote it")
        # The hooks saw the same session.
        sessions = {r[0] for r in self.home.query(
            "SELECT DISTINCT session_id FROM hook_events WHERE task_id = ?", task_id)}
        self.assertEqual(sessions, {details["session_id"]})


class TestClaudePolicy(ClaudeTestCase):

    def test_deny_policy_stops_bash(self):
        with open(os.path.join(self.home.path, "policies.json"), "w") as f:
            json.dump({"rules": [{"name": "no-forbidden", "tool": "^Bash$",
                                  "command": "forbidden", "action": "deny",
                                  "reason": "forbidden files stay unmade"}]}, f)

        def steps(worktree):
            return [{"tool": "Bash", "input": {"command": "touch forbidden.txt",
                                               "description": "make the forbidden file"}},
                    {"tool": "Bash", "input": {"command": "touch allowed.txt",
                                               "description": "make an allowed file"}},
                    {"text": "done trying"}]
        task_id, worktree = self.run_claude_task("claude-headless", steps)
        self.assertEqual(self.task(task_id)["status"], "complete", self.diagnose())
        self.assertFalse(os.path.exists(os.path.join(worktree, "forbidden.txt")),
                         "the denied Bash command ran")
        self.assertTrue(os.path.exists(os.path.join(worktree, "allowed.txt")))
        self.assertEqual(self.result(task_id)["files_changed"], ["allowed.txt"])
        audits = self.home.query(
            "SELECT a.automation, a.action, a.outcome, a.details, h.hook_type, h.tool_name"
            " FROM automation_events a LEFT JOIN hook_events h ON h.id = a.event_id"
            " WHERE a.task_id = ?", task_id)
        self.assertEqual(len(audits), 1, audits)
        automation, action, outcome, details, hook_type, tool = audits[0]
        self.assertEqual((automation, action, outcome, hook_type, tool),
                         ("policy:no-forbidden", "deny", "denied", "PreToolUse", "Bash"))
        self.assertEqual(json.loads(details)["tool_input"]["command"], "touch forbidden.txt")
        # The hooks saw the attempt, and the tool never ran: no PostToolUse for it.
        bash = [(r[0], json.loads(r[1])["tool_input"]["command"]) for r in self.home.query(
            "SELECT hook_type, event_data FROM hook_events WHERE task_id = ? AND tool_name = 'Bash'"
            " ORDER BY id", task_id)]
        self.assertEqual(bash, [("PreToolUse", "touch forbidden.txt"),
                                ("PreToolUse", "touch allowed.txt"),
                                ("PostToolUse", "touch allowed.txt")])


class TestClaudeSend(ClaudeTestCase):
    """ccm send to a live Claude Code TUI: confirmed by the UserPromptSubmit
    hook, and reported (not silently lost) when no confirmation can come."""

    def progress_notes(self, task_id):
        return [json.loads(d) for (d,) in self.home.query(
            "SELECT data FROM events WHERE topic = 'task.progress' AND task_id = ? ORDER BY seq",
            task_id)]

    def wait_idle(self, agent_id, after_prompts):
        """Waits until the agent has had after_prompts prompts and is idle again."""
        def idle():
            prompts = self.home.query("SELECT count(*) FROM hook_events WHERE agent_id = ?"
                                      " AND hook_type = 'UserPromptSubmit'", agent_id)[0][0]
            row = self.home.query("SELECT status FROM agents WHERE id = ?", agent_id)
            return prompts >= after_prompts and row and row[0][0] == "idle"
        tx.wait_for(f"the agent idle after prompt {after_prompts}", idle, WAIT,
                    diagnose=self.diagnose)

    def test_send_is_confirmed_by_user_prompt_submit(self):
        # The built-in claude profile ends its agent at the first idle; this
        # one stays, as a user who talks to the agent would have it.
        self.write_profiles({"claude-stay": {
            "argv": ["claude", "--dangerously-skip-permissions", "{prompt}"],
            "mode": "interactive"}})
        reply = self.home.ok("task.add", prompt="make a", project=self.PROJECT,
                             agent="claude-stay", hold=True)
        task_id = reply["task"]["id"]
        worktree = self.worktree_path(task_id)
        port = self.start_stand_in([
            {"tool": "Write", "input": {"file_path": os.path.join(worktree, "a.txt"),
                                        "content": "a\n"}},
            {"text": "made a"},
            {"tool": "Write", "input": {"file_path": os.path.join(worktree, "b.txt"),
                                        "content": "b\n"}},
            {"text": "made b"},
            {"tool": "Write", "input": {"file_path": os.path.join(worktree, "c.txt"),
                                        "content": "c\n"}},
            {"text": "made c"}])
        self.start_hooks()
        self.start_executor(extra_env=self.claude_env(port))
        self.home.ok("task.transition", task=task_id, to="queued")
        tx.wait_for("the agent", lambda: self.agents(task_id), WAIT, diagnose=self.diagnose)
        agent_id = self.agents(task_id)[0]["id"]
        self.wait_idle(agent_id, 1)

        # 1. Confirmed: the TUI submitted the text, and said so in a hook.
        text = 'now make b, "quoted" $(not run) `nor this`'
        rc, out, err = self.home.run_cli("send", task_id[:8], text, timeout=60)
        self.assertEqual(rc, 0, out + err + self.diagnose())
        self.assertIn("confirmed by the agent's UserPromptSubmit", out)
        tx.wait_for("b.txt", lambda: os.path.exists(os.path.join(worktree, "b.txt")), WAIT,
                    diagnose=self.diagnose)
        prompts = [json.loads(d)["prompt"] for (d,) in self.home.query(
            "SELECT event_data FROM hook_events WHERE task_id = ? AND hook_type ="
            " 'UserPromptSubmit' ORDER BY id", task_id)]
        self.assertEqual(prompts, ["make a", text])
        notes = [(n["delivery"], n.get("attempts"), n.get("detail"), n["text"])
                 for n in self.progress_notes(task_id) if n.get("kind") == "input"]
        self.assertEqual(notes, [("sent", 1, None, text),
                                 ("confirmed", 1, "UserPromptSubmit with this text", text)])
        self.wait_idle(agent_id, 2)

        # 2. Unconfirmable: the ingester is down, so the hook spools its
        # event and no confirmation can arrive in time. ccm send presses
        # Enter once more, then says so, and records it; nothing is lost.
        self.hooks.terminate()
        self.hooks.wait(10)
        rc, out, err = self.home.run_cli("send", task_id[:8], "now make c", "--wait", "1",
                                         timeout=60)
        self.assertEqual(rc, 1, out + err)
        self.assertIn("did not confirm the text", err)
        self.assertIn("after 2 Enter presses", err)
        last = self.progress_notes(task_id)[-1]
        self.assertEqual((last["delivery"], last["attempts"], last["detail"]),
                         ("unconfirmed", 2, "no UserPromptSubmit"))
        tx.wait_for("c.txt", lambda: os.path.exists(os.path.join(worktree, "c.txt")), WAIT,
                    diagnose=self.diagnose)
        self.start_hooks()  # drains the spool: the prompt was only unconfirmed, never lost
        tx.wait_for("the spooled UserPromptSubmit", lambda: self.home.query(
            "SELECT count(*) FROM hook_events WHERE task_id = ? AND hook_type ="
            " 'UserPromptSubmit' AND json_extract(event_data, '$.prompt') = 'now make c'",
            task_id)[0][0] == 1, 30, diagnose=self.diagnose)
        self.home.ok("task.cancel", task=task_id)
        self.wait_final(task_id, timeout=WAIT)


if __name__ == "__main__":
    ccmtest.main()

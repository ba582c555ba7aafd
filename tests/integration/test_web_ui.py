"""The web UI in a real browser: headless Chromium (Debian's /usr/bin/chromium)
driven by Playwright (playwright-core from npm, scripts/install-browser.sh)
through tests/integration/web_ui_driver.mjs, against a real ccm: ccm-store,
ccm-router, ccm-executor running a `shell`-profile agent in tmux, the
ccm-hooks ingester, and ccm-gateway serving web/.

The agent is the task's prompt, a shell script typed into the UI's form: it
sends hook events through the real ccm-hook (as Claude Code would), asks
for a permission that a policy sends to a human, and goes on only if it was
allowed. The test:

  - creates the task in the form and watches its card move to complete;
  - sees hook events appear live in the task's timeline;
  - sees the permission request in the inbox, answers Allow, and checks
    that the parked ccm-hook got exactly that answer;
  - reloads the page, and restarts the gateway, while the agent runs; at
    the end the timeline holds every hook row of the task exactly once (the
    store's ids, compared one by one) and the page's event feed saw every
    seq once, with no gap;
  - checks the result view (files changed, diff) and that the page logged
    no error (a Content-Security-Policy violation would be one);
  - takes screenshots, desktop and phone, under $CCM_BIN_DIR/web-ui-screenshots.

Without playwright-core or chromium it skips, unless CCM_REQUIRE_BROWSER=1
(scripts/test.sh sets it after installing them): then it fails.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ccmtest  # noqa: E402
from test_executor import ExecutorTestCase, wait_for  # noqa: E402
from test_gateway import Gateway  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
DRIVER = os.path.join(HERE, "web_ui_driver.mjs")
HOOK_BIN = os.path.join(ccmtest.BIN_DIR, "ccm-hook")
HOOKS_BIN = os.path.join(ccmtest.BIN_DIR, "ccm-hooks")
CHROMIUM = os.environ.get("CCM_CHROMIUM") or "/usr/bin/chromium"
PLAYWRIGHT_DIR = (os.environ.get("CCM_PLAYWRIGHT_DIR") or os.environ.get("CCM_BROWSER_DIR")
                  or os.path.expanduser("~/.cache/ccm/browser-test"))
SHOTS = os.path.join(ccmtest.BIN_DIR, "web-ui-screenshots")
STEPS_BEFORE, STEPS_AFTER = 4, 36  # PostToolUse events before and after the permission


def browser_missing():
    if not shutil.which("node"):
        return "node is not installed"
    if not os.access(CHROMIUM, os.X_OK):
        return f"{CHROMIUM} is not installed"
    if not os.path.isfile(os.path.join(PLAYWRIGHT_DIR, "node_modules", "playwright-core",
                                       "package.json")):
        return f"playwright-core is not in {PLAYWRIGHT_DIR} (scripts/install-browser.sh)"
    return None


def agent_script():
    """The `shell` agent: hook events through ccm-hook, a permission asked
    of a human, a commit, and success only if the permission was allowed."""
    return f"""H='{HOOK_BIN}'
ev() {{ printf '{{"hook_event_name":"%s","session_id":"web-ui","cwd":"%s","tool_name":"Bash","tool_input":{{"command":"%s"}},"tool_response":{{"stdout":"ok"}}}}' "$1" "$PWD" "$2" | "$H"; }}
i=1; while [ $i -le {STEPS_BEFORE} ]; do ev PostToolUse "step $i"; i=$((i+1)); sleep 0.2; done
ev PermissionRequest "deploy prod" > decision.json
i={STEPS_BEFORE + 1}; while [ $i -le {STEPS_BEFORE + STEPS_AFTER} ]; do ev PostToolUse "step $i"; i=$((i+1)); sleep 0.25; done
echo 'built by the web UI test' > result.txt
git add result.txt decision.json && git -c user.name=ccm -c user.email=ccm@localhost commit -qm 'web ui test'
grep -q '"behavior":"allow"' decision.json
"""


class Browser:
    """The driver process: one JSON command a line, one JSON reply a line."""

    def __init__(self, test):
        env = dict(os.environ, CCM_PLAYWRIGHT_DIR=PLAYWRIGHT_DIR, CCM_CHROMIUM=CHROMIUM)
        self.log_path = os.path.join(test.home.path, "browser.stderr")
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(["node", DRIVER], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log, env=env, text=True)
        test.addCleanup(self.close)

    def __call__(self, op, timeout=60, **args):
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            with open(self.log_path, "rb") as f:
                raise AssertionError(f"the browser driver died: {f.read()[-2000:]!r}")
        reply = json.loads(line)
        if not reply["ok"]:
            raise AssertionError(f"browser {op} {args}: {reply['error']}")
        return reply["result"]

    def close(self):
        if self.proc.poll() is None:
            try:
                self("close")
            except Exception:  # noqa: BLE001 - closing must not hide the real failure
                pass
            self.proc.stdin.close()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc.stdout.close()
        self.log.close()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@unittest.skipIf(browser_missing() and os.environ.get("CCM_REQUIRE_BROWSER") != "1",
                 browser_missing() or "")
class TestWebUI(ExecutorTestCase):

    def setUp(self):
        missing = browser_missing()
        if missing:
            self.fail(f"CCM_REQUIRE_BROWSER=1 but {missing}")
        super().setUp()
        os.makedirs(SHOTS, exist_ok=True)
        with open(os.path.join(self.home.path, "policies.json"), "w") as f:
            json.dump({"rules": [{"name": "deploys-need-a-human", "tool": "^Bash$",
                                  "command": "^deploy", "action": "ask",
                                  "reason": "deploys need a human"}]}, f)
        self.add_project(self.PROJECT, self.make_repo())
        self.start_executor()
        env = dict(self.home.env, CCM_HOOKS_ASK_TIMEOUT_MS="90000")
        self.hooks_log = open(os.path.join(self.home.path, "hooks.stderr"), "wb")
        self.ingester = subprocess.Popen([HOOKS_BIN], env=env, stdin=subprocess.DEVNULL,
                                         stdout=self.hooks_log, stderr=self.hooks_log)
        self.addCleanup(self._stop_ingester)
        wait_for("ccm-hooks to listen",
                 lambda: os.path.exists(os.path.join(self.home.path, "run", "hooks.sock")), 10)
        self.port = free_port()
        self.gw = self.start_gateway()
        self.addCleanup(lambda: self.gw.stop())

    def start_gateway(self):
        """ccm-gateway on the test's port: the same one after a restart, so
        the page reconnects to it."""
        gw = Gateway(self.home)
        gw.env["CCM_GATEWAY_PORT"] = str(self.port)
        return gw.start()

    def _stop_ingester(self):
        if self.ingester.poll() is None:
            self.ingester.terminate()
            self.ingester.wait(10)
        self.hooks_log.close()

    def shot(self, b, name):
        b("screenshot", file=os.path.join(SHOTS, name + ".png"))

    def hook_ids(self, task_id):
        return [r[0] for r in self.home.query(
            "SELECT id FROM hook_events WHERE task_id = ? ORDER BY id", task_id)]

    def test_the_whole_path_in_a_browser(self):
        b = Browser(self)
        b("launch", width=1280, height=900)
        b("goto", url=self.gw.url)
        b("wait", selector="#conn", text="live")
        b("wait", selector="#agents, .panel p.muted", count=1)
        self.shot(b, "01-dashboard")

        # Create the task in the form.
        b("click", selector="nav a[data-view=tasks]")
        b("click", selector="#new-task")
        b("fill", selector="#f-prompt", value=agent_script())
        b("wait", selector="#f-project option", attr="value", value=self.PROJECT)
        b("select", selector="#f-project", value=self.PROJECT)
        b("select", selector="#f-priority", value="high")
        b("fill", selector="#f-agent", value="shell")
        b("fill", selector="#f-timeout", value="300")
        b("click", selector="#create-form details summary")
        b("fill", selector="#f-metadata", value='{"from": "the browser test"}')
        self.shot(b, "02-create-form")
        b("click", selector="#f-submit")
        b("wait", selector=".task-card[data-task]")
        task_id = b("texts", selector=".task-card[data-task]", attr="data-task")[0]
        row = self.home.query("SELECT prompt, priority, agent_profile, timeout_s,"
                              " json_extract(metadata, '$.from') FROM tasks WHERE id = ?",
                              task_id)[0]
        self.assertEqual(row, (agent_script(), "high", "shell", 300, "the browser test"))
        # Its card moves on the board as the executor takes it.
        b("wait", selector=f'[data-column=executing] .task-card[data-task="{task_id}"]',
          timeout=30000)
        self.shot(b, "03-board-executing")

        # The detail: hook events appear live.
        b("click", selector=f'.task-card[data-task="{task_id}"]')
        b("wait", selector="#timeline li[data-hook-id]", count=3, timeout=30000)
        b("wait", selector="#prompt", text="deploy prod")
        self.shot(b, "04-detail-live")

        # The permission: in the inbox, answered in one click.
        wait_for("the permission request",
                 lambda: self.home.query("SELECT id FROM permission_requests"
                                         " WHERE status = 'pending'"), 30, diagnose=self.diagnose)
        b("click", selector="nav a[data-view=inbox]")
        b("wait", selector=".perm[data-request]", text="deploy prod")
        b("wait", selector="#inbox-count", text="1")
        self.shot(b, "05-inbox-permission")
        b("viewport", width=390, height=844)
        self.shot(b, "06-phone-inbox")
        b("viewport", width=1280, height=900)
        b("click", selector=".perm button.allow")
        wait_for("the answer delivered", lambda: self.home.query(
            "SELECT 1 FROM permission_requests WHERE status = 'allowed'"
            " AND delivered_at IS NOT NULL AND answered_at IS NOT NULL"), 15)
        b("wait", selector="#inbox-empty")

        # Back to the task; reload, then restart the gateway, while it runs.
        b("hash", hash=f"#/task/{task_id}")
        b("wait", selector="#timeline li[data-hook-id]", count=STEPS_BEFORE + 3, timeout=30000)
        b("reload")
        b("wait", selector="#conn", text="live")
        b("wait", selector="#timeline li[data-hook-id]", count=STEPS_BEFORE + 6, timeout=30000)
        self.assertEqual(self.task(task_id)["status"], "executing",
                         "the agent ended before the gateway restart: lengthen its script")
        self.gw.stop()
        b("wait", selector="#conn", text="offline", timeout=10000)
        time.sleep(1.0)  # hook events go on while the gateway is down
        self.gw = self.start_gateway()
        b("wait", selector="#conn", text="live", timeout=20000)

        # The end: complete, and every hook row exactly once, in order.
        b("wait", selector="#detail-head .badge.s-complete", timeout=60000)
        expected = self.hook_ids(task_id)
        self.assertEqual(len(expected), STEPS_BEFORE + 1 + STEPS_AFTER)
        b("wait", selector="#timeline li[data-hook-id]", count=len(expected), timeout=20000)
        shown = [int(x) for x in b("texts", selector="#timeline li[data-hook-id]",
                                   attr="data-hook-id")]
        self.assertEqual(shown, expected, "the timeline misses or doubles a hook row")
        types = b("texts", selector="#timeline li .type")
        self.assertEqual(types.count("PermissionRequest"), 1)
        stats = b("eval", expr="({...window.ccm.conn.stats, seqs: undefined,"
                               " lastSeq: window.ccm.conn.lastSeq})")
        self.assertEqual((stats["duplicates"], stats["gaps"]), (0, 0), stats)
        seqs = b("eval", expr="window.ccm.conn.stats.seqs")
        self.assertEqual(seqs, list(range(seqs[0], seqs[0] + len(seqs))), "an event missed")
        head = self.home.ok("ping")["seq"]
        wait_for("the page to reach the store's head",
                 lambda: b("eval", expr="window.ccm.conn.lastSeq") >= head, 10)

        # The result: files changed and the diff of the agent's commit.
        b("wait", selector="#files li", text="result.txt", timeout=20000)
        b("wait", selector="pre.diff .d-add", text="built by the web UI test")
        with open(os.path.join(self.worktree_path(task_id), "decision.json"), "rb") as f:
            self.assertEqual(f.read(), b'{"hookSpecificOutput":{"hookEventName":'
                                       b'"PermissionRequest","decision":{"behavior":"allow"}}}')
        self.shot(b, "07-detail-complete")
        b("hash", hash="#/tasks")
        b("wait", selector=f'[data-column=complete] .task-card[data-task="{task_id}"]')
        self.shot(b, "08-board-complete")
        b("hash", hash="#/events")
        b("fill", selector="[data-filter=types]", value="permission.")
        b("wait", selector="#events-body tr[data-topic='permission.delivered']")
        self.shot(b, "09-events-filtered")
        b("hash", hash="#/")
        b("viewport", width=390, height=844)
        self.shot(b, "10-phone-dashboard")
        # Only the reconnection attempts while the gateway was down may be logged.
        problems = [p for p in b("problems") if "ERR_CONNECTION_REFUSED" not in p]
        self.assertEqual(problems, [], "the page logged errors")


if __name__ == "__main__":
    ccmtest.main()

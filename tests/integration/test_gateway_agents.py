"""ccm-gateway's commands that act on live agents and their worktrees
(schema/protocol.md, "Gateway WebSocket API": terminal.open/input/close,
agent.send, worktree.merge, worktree.discard), against real services: a
ccm-store, a ccm-router, a ccm-executor running `shell`-profile agents in
real tmux windows on real git worktrees, and a ccm-gateway, with Debian's
python3-websockets as the client.

What is checked is what a user would see: the screen pushed to the browser
is the agent's window; bytes typed through the gateway are the bytes the
agent reads (and none arrive while the view is read-only); `task.progress`
rows as `ccm send` records them; files on main after a merge; worktrees and
branches gone after a discard; task_worktrees statuses; and a typed error,
with nothing changed, for every bad request."""

import asyncio
import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ccmtest  # noqa: E402
from test_executor import ExecutorTestCase, git, wait_for  # noqa: E402
from test_gateway import Gateway, connect, read_until, request  # noqa: E402

#  An agent that shows a banner, reads one line from its terminal (as a TUI
#  would) into got.bin, shows what it read, and exits 1.5 s later (so the
#  terminal view catches that screen before the window closes).
READ_LINE = ("python3 -c 'import sys, time; print(\"ready-\" + \"{tag}\", flush=True); "
             "line = sys.stdin.buffer.readline(); open(\"got.bin\", \"wb\").write(line); "
             "print(\"read\", len(line), \"bytes\", flush=True); time.sleep(1.5)'")

COMMIT = ("echo {text} > {name} && git add {name} && "
          "git -c user.name=agent -c user.email=agent@ccm.invalid commit -q -m '{text}'")


class GatewayAgentsTest(ExecutorTestCase):

    def setUp(self):
        super().setUp()
        self.repo = self.make_repo()
        self.add_project(self.PROJECT, self.repo)
        self.start_executor()
        self.gw = Gateway(self.home).start()
        # Cleanups run last-in first-out: the gateway stops before the executor.
        self.addCleanup(self._stop_gateway)

    def _stop_gateway(self):
        if self.gw.proc and self.gw.proc.poll() is None:
            self.assertEqual(self.gw.stop(), 0, self.gw.log_text())

    def assertErr(self, reply, code, field=None, contains=None):
        self.assertFalse(reply["ok"], reply)
        self.assertEqual(reply["error"]["code"], code, reply)
        if field is not None:
            self.assertEqual(reply["error"].get("field"), field, reply)
        if contains is not None:
            self.assertIn(contains, reply["error"]["message"], reply)

    def got(self, task_id):
        path = os.path.join(self.worktree_path(task_id), "got.bin")
        return open(path, "rb").read() if os.path.exists(path) else None

    def progress_rows(self, task_id):
        return [json.loads(r[0]) for r in self.home.query(
            "SELECT event_data FROM task_events WHERE task_id = ? AND event_type = 'progress'"
            " ORDER BY rowid", task_id)]

    def reading_agent(self):
        """A running agent waiting for a line, its banner on screen; (task id, tag)."""
        tag = uuid.uuid4().hex[:10]
        task_id = self.add_task(READ_LINE.format(tag=tag))
        self.wait_status(task_id, "executing")
        wait_for("the agent's window", lambda: self.windows_of(task_id), diagnose=self.diagnose)
        return task_id, tag

    # ------------------------------------------------------------ terminal

    def test_terminal_view_read_only_until_control(self):
        """terminal.open streams the agent's window; input is refused on a
        read-only view (and nothing reaches the agent); a view opened with
        control types into it byte for byte; the end of the window is pushed."""
        task_id, tag = self.reading_agent()
        wid = self.windows_of(task_id)[0][0]
        done = [self.add_task("echo finished")]
        self.wait_final(done[0])
        text = "it's \"$(touch /tmp/ccm-pwned-term)\" `id` $HOME ünïcödé 🚀 %s {x} -- --json"

        async def scenario():
            viewer, pilot = await connect(self.gw), await connect(self.gw)
            reply = await request(viewer, "terminal.open", task=task_id[:8])
            self.assertTrue(reply["ok"], reply)
            self.assertEqual(reply["result"], {"task": task_id, "window": wid, "control": False})
            frames = await read_until(viewer, lambda f: f.get("type") == "terminal"
                                      and ("ready-" + tag) in f["data"], timeout=15)
            screen = frames[-1]
            self.assertEqual((screen["task"], screen["control"]), (task_id, False))

            # Read-only: refused, and the agent still waits.
            reply = await request(viewer, "terminal.input", task=task_id, text="nope",
                                  keys=["Enter"])
            self.assertErr(reply, "forbidden", "task", "read-only")
            # A view of another connection gives this one no right either.
            reply = await request(pilot, "terminal.input", task=task_id, text="nope")
            self.assertErr(reply, "not_found", "task", "no terminal view")

            # Bad requests, each typed, nothing typed into the agent.
            bad = [
                (viewer, {"cmd": "terminal.open", "task": "0" * 8}, "not_found", "task"),
                (viewer, {"cmd": "terminal.open"}, "missing_field", "task"),
                (viewer, {"cmd": "terminal.open", "task": task_id, "control": "yes"},
                 "bad_field", "control"),
                (viewer, {"cmd": "terminal.open", "task": done[0]}, "not_found", "task"),
                (viewer, {"cmd": "terminal.input"}, "missing_field", "task"),
                (viewer, {"cmd": "terminal.close", "task": done[0]}, "not_found", "task"),
            ]
            for ws, req, code, field in bad:
                reply = await request(ws, **req)
                self.assertErr(reply, code, field)

            # Control is taken explicitly.
            reply = await request(pilot, "terminal.open", task=task_id, control=True)
            self.assertTrue(reply["ok"], reply)
            self.assertTrue(reply["result"]["control"])
            for req, code, field in [
                ({"text": None}, "missing_field", "text"),
                ({"keys": ["Enter; rm -rf /"]}, "bad_field", "keys"),
                ({"keys": []}, "bad_field", "keys"),
                ({"text": 7}, "bad_field", "text"),
            ]:
                req = {k: v for k, v in req.items() if v is not None}
                reply = await request(pilot, "terminal.input", task=task_id, **req)
                self.assertErr(reply, code, field)
            time.sleep(0.3)
            self.assertIsNone(self.got(task_id), "a refused input reached the agent")
            self.assertEqual(self.task(task_id)["status"], "executing")

            reply = await request(pilot, "terminal.input", task=task_id[:8], text=text,
                                  keys=["Enter"])
            self.assertTrue(reply["ok"], reply)
            self.assertEqual(reply["result"], {})
            # Both views see what the agent printed, then the window's end.
            for ws in (viewer, pilot):
                frames = await read_until(ws, lambda f: f.get("type") == "terminal_closed"
                                          and f["task"] == task_id, timeout=30)
                screens = [f["data"] for f in frames if f.get("type") == "terminal"]
                self.assertTrue(any("read " in s and " bytes" in s for s in screens),
                                screens[-1:] or frames)
            # Closed: input and close now name a view that is not open.
            reply = await request(pilot, "terminal.input", task=task_id, text="late")
            self.assertErr(reply, "not_found", "task")
            await viewer.close()
            await pilot.close()

        asyncio.run(scenario())
        self.assertEqual(self.got(task_id), (text + "\n").encode())
        self.assertFalse(os.path.exists("/tmp/ccm-pwned-term"), "typed text ran in a shell")
        self.assertEqual(self.wait_final(task_id)["status"], "complete")
        self.assertTrue(self.gw.alive())

    def test_terminal_close_stops_pushes(self):
        """terminal.close stops the screens; a later change of the window is not pushed."""
        tag = uuid.uuid4().hex[:10]
        task_id = self.add_task(f"for i in 1 2 3 4 5 6 7 8 9 10 11 12; do echo tick-{tag}-$i; "
                                "sleep 0.5; done")
        self.wait_status(task_id, "executing")
        wait_for("the agent's window", lambda: self.windows_of(task_id), diagnose=self.diagnose)

        async def scenario():
            ws = await connect(self.gw)
            self.assertTrue((await request(ws, "terminal.open", task=task_id))["ok"])
            await read_until(ws, lambda f: f.get("type") == "terminal"
                             and f"tick-{tag}-2" in f["data"], timeout=15)
            self.assertTrue((await request(ws, "terminal.close", task=task_id))["ok"])
            ws.aside = []
            seen = []
            try:
                while True:
                    seen.append(json.loads(await asyncio.wait_for(ws.recv(), 2.0)))
            except asyncio.TimeoutError:
                pass
            self.assertFalse([f for f in seen if f.get("type") == "terminal"], seen)
            await ws.close()

        asyncio.run(scenario())
        self.wait_final(task_id)

    # ------------------------------------------------------------ agent.send

    def test_agent_send(self):
        """agent.send types the text into the running agent, byte for byte,
        then Enter, and records it as `ccm send` does; bad requests are typed
        errors and record nothing."""
        task_id, _ = self.reading_agent()
        queued = self.home.ok("task.add", prompt="never runs", project=self.PROJECT,
                              hold=True)["task"]["id"]
        text = "--wait 0 '\"$(touch /tmp/ccm-pwned-send-gw)\"' `id` ünïcödé 🚀 %s {prompt}"

        async def scenario():
            ws = await connect(self.gw)
            bad = [
                ({"task": "0" * 8, "text": "x"}, "not_found", "task"),
                ({"text": "x"}, "missing_field", "task"),
                ({"task": task_id}, "missing_field", "text"),
                ({"task": task_id, "text": ""}, "bad_field", "text"),
                ({"task": task_id, "text": "--json"}, "bad_field", "text"),
                ({"task": task_id, "text": 12}, "bad_field", "text"),
                ({"task": task_id, "text": "x", "wait_s": 61}, "bad_field", "wait_s"),
                ({"task": queued, "text": "x"}, "not_found", "task"),
            ]
            for req, code, field in bad:
                reply = await request(ws, "agent.send", **req)
                self.assertErr(reply, code, field)
            self.assertEqual(self.progress_rows(task_id), [])
            self.assertIsNone(self.got(task_id))

            reply = await request(ws, "agent.send", task=task_id[:8], text=text, wait_s=1,
                                  timeout=40)
            self.assertTrue(reply["ok"], reply)
            # A shell agent sends no hooks: delivered, not confirmed.
            self.assertEqual(reply["result"]["delivery"], "sent", reply)
            self.assertIn("sent to", reply["result"]["message"])
            self.wait_final(task_id)
            reply = await request(ws, "agent.send", task=task_id, text="too late")
            self.assertErr(reply, "not_found", "task", "no running agent")
            await ws.close()

        asyncio.run(scenario())
        self.assertEqual(self.got(task_id), (text + "\n").encode())
        self.assertFalse(os.path.exists("/tmp/ccm-pwned-send-gw"), "sent text ran in a shell")
        rows = self.progress_rows(task_id)
        self.assertEqual(len(rows), 1, rows)
        self.assertEqual((rows[0]["kind"], rows[0]["delivery"], rows[0]["text"],
                          rows[0]["bytes"], rows[0]["via"]),
                         ("input", "sent", text, len(text.encode()), "ccm send"))
        self.assertEqual(self.progress_rows(queued), [])
        self.assertEqual(self.task(task_id)["status"], "complete")
        self.assertTrue(self.gw.alive())

    # ------------------------------------------------------------ worktrees

    def test_worktree_merge_and_discard(self):
        """worktree.merge lands the task's branch on main and removes its
        worktree; worktree.discard refuses unmerged work unless forced, then
        removes worktree and branch; each task_worktrees row says so. A task
        still running, one without a worktree, one already merged, and bad
        arguments are typed errors that change nothing."""
        merge = self.add_task(COMMIT.format(text="merge-me", name="merged.txt"))
        keep = self.add_task(COMMIT.format(text="unmerged-work", name="feature.txt"))
        for task_id in (merge, keep):
            self.assertEqual(self.wait_final(task_id)["status"], "complete")
        running, _ = self.reading_agent()
        held = self.home.ok("task.add", prompt="held", project=self.PROJECT,
                            hold=True)["task"]["id"]
        keep_branch = "ccm/" + keep[:8]

        async def scenario():
            ws = await connect(self.gw)
            for cmd in ("worktree.merge", "worktree.discard"):
                for req, code, field, says in [
                    ({"task": "0" * 8}, "not_found", "task", None),
                    ({}, "missing_field", "task", None),
                    ({"task": running}, "conflict", "task", "executing"),
                    ({"task": held}, "conflict", "task", None),
                ]:
                    reply = await request(ws, cmd, **req)
                    self.assertErr(reply, code, field, says)
            reply = await request(ws, "worktree.discard", task=keep, force="yes")
            self.assertErr(reply, "bad_field", "force")
            self.assertTrue(os.path.isdir(self.worktree_path(running)),
                            "a refused request removed a running agent's worktree")
            self.assertEqual(self.worktree_row(running)["status"], "active")

            # discard without force: refused, unmerged work kept.
            reply = await request(ws, "worktree.discard", task=keep)
            self.assertErr(reply, "failed", None, "unmerged commit")
            self.assertIn(keep_branch, reply["error"]["message"])
            self.assertTrue(self.branch_exists(self.repo, keep_branch))
            self.assertTrue(os.path.exists(os.path.join(self.worktree_path(keep),
                                                        "feature.txt")))
            self.assertEqual(self.worktree_row(keep)["status"], "active")

            reply = await request(ws, "worktree.merge", task=merge[:8], timeout=60)
            self.assertTrue(reply["ok"], reply)
            self.assertIn("merged", reply["result"]["message"])
            reply = await request(ws, "worktree.merge", task=merge)
            self.assertErr(reply, "conflict", "task", "merged")

            reply = await request(ws, "worktree.discard", task=keep, force=True, timeout=60)
            self.assertTrue(reply["ok"], reply)
            self.assertIn("discarded", reply["result"]["message"])
            reply = await request(ws, "worktree.discard", task=keep, force=True)
            self.assertErr(reply, "conflict", "task", "discarded")
            await ws.close()

        asyncio.run(scenario())
        self.assertEqual(git(self.repo, "show", "main:merged.txt").stdout.decode(), "merge-me\n")
        self.assertEqual(self.worktree_row(merge)["status"], "merged")
        self.assertFalse(os.path.exists(self.worktree_path(merge)))
        self.assertFalse(self.branch_exists(self.repo, "ccm/" + merge[:8]))
        self.assertNotIn("feature.txt",
                         git(self.repo, "ls-tree", "--name-only", "main").stdout.decode())
        row = self.worktree_row(keep)
        self.assertEqual(row["status"], "discarded")
        self.assertIsNotNone(row["removed_at"])
        self.assertFalse(os.path.exists(self.worktree_path(keep)))
        self.assertFalse(self.branch_exists(self.repo, keep_branch))
        # The running agent was never touched: it still waits, then finishes.
        self.assertEqual(self.task(running)["status"], "executing")
        self.home.run_cli("send", running[:8], "bye")
        self.assertEqual(self.wait_final(running)["status"], "complete")
        self.assertTrue(self.gw.alive())


if __name__ == "__main__":
    ccmtest.main()

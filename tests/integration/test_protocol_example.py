#!/usr/bin/env python3
"""schema/protocol.md's pyzmq example stays runnable: the code block in the
document is byte-identical to tests/integration/protocol_example.py, and that
file, run against a real store, submits a task and prints its events."""

import os
import re
import subprocess

import ccmtest
from ccmtest import UUID_RE

DOC = os.path.join(ccmtest.SOURCE_DIR, "schema", "protocol.md")
EXAMPLE = os.path.join(ccmtest.HERE, "protocol_example.py")


def example_from_doc():
    """The first ```python block of the "## Example" section, as bytes."""
    with open(DOC, "rb") as f:
        doc = f.read()
    match = re.search(rb"^## Example.*?^```python\n(.*?)^```$", doc, re.M | re.S)
    if not match:
        raise AssertionError(f"{DOC}: no ```python block under a '## Example' heading")
    return match.group(1)


class ProtocolExample(ccmtest.CcmTestCase):

    def test_doc_and_file_are_identical(self):
        with open(EXAMPLE, "rb") as f:
            code = f.read()
        self.assertEqual(code, example_from_doc(),
                         "protocol_example.py differs from the example in schema/protocol.md; "
                         "copy the block over (or the doc fix back)")

    def test_doc_defines_the_objects_the_tests_check(self):
        """TASK, PROJECT and EVENT are read from protocol.md by the harness:
        the definitions must be there and parseable."""
        for name, basics in (("TASK", {"id", "short_id", "status", "prompt", "attempts"}),
                             ("PROJECT", {"id", "name", "path"}),
                             ("EVENT", {"v", "seq", "topic", "data"})):
            keys = ccmtest.protocol_object_keys(name)
            self.assertIsNotNone(keys, f"protocol.md has no '{name} is `{{...}}`' definition")
            self.assertLessEqual(basics, keys, name)

    def test_example_runs_against_a_real_store(self):
        home = self.make_home(start=True)
        before = home.ok("task.add", prompt="already there")["task"]["id"]
        head = home.head()
        prompt = "example's \"task\" $(true) 🚀"
        env = dict(home.env, FOLLOW_MS="1500")
        done = subprocess.run([ccmtest.PYTHON, EXAMPLE, prompt], env=env, capture_output=True,
                              timeout=30, stdin=subprocess.DEVNULL, cwd=home.path)
        out = done.stdout.decode("utf-8", "replace")
        err = done.stderr.decode("utf-8", "replace")
        self.assertEqual(done.returncode, 0, f"the example failed:\n{out}\n{err}")
        printed = out.splitlines()
        self.assertTrue(printed, "the example printed nothing")
        first = printed[0].split()
        self.assertEqual(first[0], "task", printed[0])
        self.assertRegex(first[1], UUID_RE)
        self.assertEqual(first[2], "queued")
        tid = first[1]
        self.assertEqual(home.query("SELECT prompt, status FROM tasks WHERE id = ?", tid),
                         [(prompt, "queued")])
        events = [line for line in printed[1:] if line.strip()]
        self.assertTrue(events, "the example printed no event")
        seq, topic, data = events[0].split(" ", 2)
        self.assertEqual((int(seq), topic), (head + 1, "task.created"))
        self.assertTrue(data.startswith("{"), events[0])
        self.assertEqual(home.scalar("SELECT entity_id FROM events WHERE seq = ?", int(seq)), tid)
        self.assertNotIn(before, out, "events before the example started are not printed")


if __name__ == "__main__":
    ccmtest.main()

#!/usr/bin/env python3
"""fake_anthropic: a scripted STAND-IN for the Anthropic Messages API, for tests.

The real Claude Code CLI talks to whatever ANTHROPIC_BASE_URL names. Pointed here, it
runs for real and offline: it really executes the tools this script asks for (Write,
Bash, Edit...) in its working directory, and really fires its hooks. Nothing here is a
model; every answer comes from the script. See shared/REAL-CLIENT.md.

The script is a JSON list of steps, played in order within a conversation:

    [{"tool": "Write", "input": {"file_path": "/abs/hello.txt", "content": "hi\\n"}},
     {"text": "wrote it"}]

A "tool" step answers with a tool_use block (stop_reason "tool_use"); the CLI runs the
tool and comes back with a tool_result. A "text" step answers with a text block
(stop_reason "end_turn"), which ends the turn. Once the list is used up, every answer is
the text "done" (end_turn).

An Agent step may carry its subagent's own steps, played in the subagent's conversation
(told apart by its opening prompt, the Agent input's "prompt"); without them the
subagent just answers "done":

    {"tool": "Agent", "input": {"description": "d", "prompt": "sub task",
                                "subagent_type": "general-purpose"},
     "subagent": [{"tool": "Bash", "input": {"command": "ls"}}, {"text": "listed"}]}

Which step comes next is read from the request alone, so the server keeps no state: it
is the number of tool_result blocks in the request's messages, plus the number of
earlier turns that a text step ended (assistant messages without a tool_use), so that a
second prompt in the same session moves on past a text step.

Usage:
    python3 tests/fake_anthropic.py --script S.json [--port 0] [--port-file F] [--log L]

--port 0 picks a free port; --port-file gets that port (written atomically once the
server listens). --log gets one JSON line per request. SIGTERM or SIGINT stops it.
"""

import argparse
import json
import os
import signal
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SCRIPT = []  # the steps, loaded from --script
LOG = None  # the --log file, or None
LOG_LOCK = threading.Lock()
COUNTER = iter(range(1, 1 << 62))  # ids for messages and tool uses, under COUNTER_LOCK
COUNTER_LOCK = threading.Lock()

DEFAULT_MODEL = "claude-sonnet-4-5"
NO_TOOLS_TEXT = "Stand-in reply"  # for titles, summaries and other tool-less requests


def next_id():
    with COUNTER_LOCK:
        return next(COUNTER)


def count_steps_done(messages):
    """How many steps of the script this conversation has already played."""
    done = 0
    for msg in messages:
        content = msg.get("content")
        blocks = content if isinstance(content, list) else []
        types = [b.get("type") for b in blocks if isinstance(b, dict)]
        if msg.get("role") == "user":
            done += types.count("tool_result")
        elif msg.get("role") == "assistant" and "tool_use" not in types:
            done += 1  # a turn that a text step ended
    return done


def tool_results(messages):
    """The number of tool_result blocks in the request (logged)."""
    return sum(
        1
        for msg in messages
        if isinstance(msg.get("content"), list)
        for b in msg["content"]
        if isinstance(b, dict) and b.get("type") == "tool_result"
    )


def sample_of(schema):
    """A small value that fits a JSON schema (for structured-output requests)."""
    kind = schema.get("type")
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: sample_of(props.get(k, {})) for k in schema.get("required", props)}
    if kind == "array":
        return []
    if kind in ("integer", "number"):
        return 0
    if kind == "boolean":
        return False
    return NO_TOOLS_TEXT


def opening_prompt(messages):
    """The last text of the conversation's first message: the prompt it started with."""
    content = messages[0].get("content") if messages else None
    if isinstance(content, str):
        return content
    texts = [b.get("text") for b in content or [] if isinstance(b, dict) and b.get("type") == "text"]
    return texts[-1] if texts else None


def steps_for(prompt, steps):
    """The "subagent" steps of the Agent step (at any depth) started with prompt, or None.
    A subagent's request looks like the main one, except for its opening prompt."""
    for step in steps:
        if step.get("tool") in ("Agent", "Task"):
            if step.get("input", {}).get("prompt") == prompt:
                return step.get("subagent", [])
            found = steps_for(prompt, step.get("subagent", []))
            if found is not None:
                return found
    return None


def choose_reply(request):
    """Returns (content blocks, stop_reason, step index or None) for a request."""
    if not request.get("tools"):
        # Titles, summaries...: a short text, or JSON when the request asks for it
        # (the CLI asks for {"title": ...} through output_config.format).
        fmt = (request.get("output_config") or {}).get("format") or {}
        text = NO_TOOLS_TEXT
        if fmt.get("type") == "json_schema":
            text = json.dumps(sample_of(fmt.get("schema") or {}))
        return [{"type": "text", "text": text}], "end_turn", None
    messages = request.get("messages") or []
    steps = steps_for(opening_prompt(messages), SCRIPT)
    if steps is None:  # not a subagent: the main conversation
        steps = SCRIPT
    index = count_steps_done(messages)
    step = steps[index] if index < len(steps) else {"text": "done"}
    if "tool" in step:
        block = {
            "type": "tool_use",
            "id": "toolu_%05d" % next_id(),
            "name": step["tool"],
            "input": step.get("input", {}),
        }
        return [block], "tool_use", index
    return [{"type": "text", "text": step["text"]}], "end_turn", index


def usage_for(body, blocks):
    """Plausible token counts (about 4 bytes a token), so the CLI computes a cost > 0."""
    return {
        "input_tokens": max(10, len(body) // 4),
        "output_tokens": max(5, len(json.dumps(blocks)) // 4),
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def sse_events(message, blocks, stop_reason, usage):
    """The Messages API's streaming events, in their order, as (name, data) pairs."""
    start = dict(message, content=[], stop_reason=None, stop_sequence=None)
    start["usage"] = dict(usage, output_tokens=1)
    yield "message_start", {"type": "message_start", "message": start}
    for i, block in enumerate(blocks):
        if block["type"] == "tool_use":
            yield "content_block_start", {
                "type": "content_block_start",
                "index": i,
                "content_block": dict(block, input={}),
            }
            # The input arrives as a JSON string, cut in two as the real API cuts it
            # in pieces; the client must join them before parsing.
            partial = json.dumps(block["input"])
            half = len(partial) // 2
            for piece in (partial[:half], partial[half:]):
                yield "content_block_delta", {
                    "type": "content_block_delta",
                    "index": i,
                    "delta": {"type": "input_json_delta", "partial_json": piece},
                }
        else:
            yield "content_block_start", {
                "type": "content_block_start",
                "index": i,
                "content_block": {"type": "text", "text": ""},
            }
            yield "content_block_delta", {
                "type": "content_block_delta",
                "index": i,
                "delta": {"type": "text_delta", "text": block["text"]},
            }
        yield "content_block_stop", {"type": "content_block_stop", "index": i}
    yield "message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": stop_reason, "stop_sequence": None},
        "usage": {"output_tokens": usage["output_tokens"]},
    }
    yield "message_stop", {"type": "message_stop"}


class Handler(BaseHTTPRequestHandler):
    # HTTP/1.0: one request per connection, so a stream simply ends when it closes.
    protocol_version = "HTTP/1.0"
    server_version = "fake-anthropic/1"

    def log_message(self, fmt, *args):  # keep stderr quiet; --log records requests
        pass

    def send_json(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("request-id", "req_fake_%d" % next_id())
        self.end_headers()
        self.wfile.write(data)

    def not_found(self):
        self.send_json(404, {"type": "error", "error": {"type": "not_found_error",
                                                       "message": "stand-in has no " + self.path}})

    def do_GET(self):
        record({"method": "GET", "path": self.path})
        self.not_found()

    def do_POST(self):
        path = urllib.parse.urlsplit(self.path).path
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            request = json.loads(body or b"{}")
        except ValueError:
            self.send_json(400, {"type": "error", "error": {"type": "invalid_request_error",
                                                           "message": "body is not JSON"}})
            return
        messages = request.get("messages") or []
        entry = {"method": "POST", "path": self.path, "model": request.get("model"),
                 "tool_results": tool_results(messages), "tools": bool(request.get("tools")),
                 "stream": bool(request.get("stream"))}

        if path == "/v1/messages/count_tokens":
            record(entry)
            self.send_json(200, {"input_tokens": 10})
            return
        if path != "/v1/messages":
            record(entry)
            self.not_found()
            return

        blocks, stop_reason, step = choose_reply(request)
        entry.update(step=step, reply=[b.get("name", b["type"]) for b in blocks])
        record(entry)
        usage = usage_for(body, blocks)
        message = {"id": "msg_fake_%d" % next_id(), "type": "message", "role": "assistant",
                   "model": request.get("model") or DEFAULT_MODEL}

        if not request.get("stream"):
            self.send_json(200, dict(message, content=blocks, stop_reason=stop_reason,
                                     stop_sequence=None, usage=usage))
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("request-id", "req_fake_%d" % next_id())
        self.end_headers()
        for name, data in sse_events(message, blocks, stop_reason, usage):
            self.wfile.write(("event: %s\ndata: %s\n\n" % (name, json.dumps(data))).encode())
            self.wfile.flush()


def record(entry):
    if LOG is not None:
        with LOG_LOCK:
            LOG.write(json.dumps(entry) + "\n")
            LOG.flush()


def main():
    global SCRIPT, LOG
    parser = argparse.ArgumentParser(description="Scripted stand-in for the Anthropic Messages API.")
    parser.add_argument("--script", required=True, help="JSON list of steps")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--port-file", help="write the listening port here")
    parser.add_argument("--log", help="append one JSON line per request here")
    args = parser.parse_args()

    with open(args.script) as f:
        SCRIPT = json.load(f)
    if not isinstance(SCRIPT, list) or not all(
        isinstance(s, dict) and ("tool" in s or "text" in s) for s in SCRIPT
    ):
        sys.exit("fake_anthropic: the script must be a list of {tool, input} or {text} steps")
    if args.log:
        LOG = open(args.log, "a")

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    server.daemon_threads = True
    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write("%d\n" % server.server_address[1])
        os.replace(tmp, args.port_file)

    def stop(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        server.serve_forever()
    finally:
        server.server_close()
        if LOG is not None:
            LOG.close()


if __name__ == "__main__":
    main()

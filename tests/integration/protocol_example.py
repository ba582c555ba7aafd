#!/usr/bin/env python3
import json, os, sys, uuid, zmq

home = os.environ.get("CCM_HOME", os.path.expanduser("~/.ccm"))
ctx = zmq.Context()
req = ctx.socket(zmq.DEALER)
req.setsockopt(zmq.LINGER, 0)
req.connect(os.environ.get("CCM_STORE_ENDPOINT", f"ipc://{home}/run/store.ipc"))
sub = ctx.socket(zmq.SUB)
sub.setsockopt(zmq.SUBSCRIBE, b"")
sub.connect(os.environ.get("CCM_STORE_PUB_ENDPOINT", f"ipc://{home}/run/events.ipc"))

def call(verb, **body):
    body.update(v=1)
    req.send_multipart([verb.encode(), json.dumps(body).encode()])
    if not req.poll(3000):
        sys.exit("store did not answer")
    status, reply = req.recv_multipart()
    reply = json.loads(reply)
    if status != b"ok":
        sys.exit(f"{verb}: {reply['error']['message']}")
    return reply

head = call("ping")["seq"]
task = call("task.add", idem=str(uuid.uuid4()),
            prompt=sys.argv[1] if len(sys.argv) > 1 else "say hello")["task"]
print("task", task["id"], task["status"])

last = head
def show(ev):
    global last
    if ev["seq"] <= last:
        return
    last = ev["seq"]
    print(ev["seq"], ev["topic"], json.dumps(ev["data"]))

# catch up from where we were, then follow live, filling any gap by replay
while True:
    page = call("events.since", seq=last)
    for ev in page["events"]:
        show(ev)
    if not page["more"]:
        break
while sub.poll(int(os.environ.get("FOLLOW_MS", "5000"))):
    topic, seq, body = sub.recv_multipart()
    if int(seq) > last + 1:
        for ev in call("events.since", seq=last)["events"]:
            show(ev)
    show(json.loads(body))

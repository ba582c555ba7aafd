#!/usr/bin/env python3
"""bench/dispatch: from `task add` to the agent's process running.

Starts a real ccm-store and ccm-executor on a temporary CCM_HOME with a real
git repository, submits 100 `shell`-profile tasks one after another over the
store's ZeroMQ socket, and measures for each the time from sending task.add to
the first instruction of the agent (the agent writes a monotonic timestamp).

The limit, measured in the same run: `git worktree add` + `tmux new-window`
of a command that writes the same timestamp, done directly, 100 times.

Then: how many concurrent agents one executor holds (sleeping agents, with
executor.capacity raised), as the count running at once.

Figures are medians and p99s: the machine is shared and noisy.
"""
import json, os, shutil, statistics, subprocess, sys, tempfile, time, uuid

import zmq

BIN = os.environ.get("CCM_BIN_DIR", os.path.join(os.path.dirname(__file__), "..", "build"))
N = int(os.environ.get("BENCH_TASKS", "100"))
HOLD = int(os.environ.get("BENCH_HOLD", "64"))


def pct(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def git(repo, *args):
    subprocess.run(["git", "-C", repo, "-c", "user.name=b", "-c", "user.email=b@b", *args],
                   check=True, capture_output=True)


def make_repo(root):
    repo = os.path.join(root, "repo")
    os.makedirs(repo)
    subprocess.run(["git", "init", "-q", "-b", "main", repo], check=True)
    with open(os.path.join(repo, "README"), "w") as f:
        f.write("bench\n")
    git(repo, "add", "README")
    git(repo, "commit", "-qm", "init")
    return repo


def stamp_cmd(path):
    # python3's monotonic clock is CLOCK_MONOTONIC, the same as time.monotonic() here.
    return f"python3 -c 'import time; open(\"{path}\", \"w\").write(repr(time.monotonic()))'"


def wait_file(path, deadline):
    while time.monotonic() < deadline:
        try:
            with open(path) as f:
                text = f.read()
            if text:
                return float(text)
        except FileNotFoundError:
            pass
        time.sleep(0.002)
    raise TimeoutError(path)


def limit_run(root, repo):
    """git worktree add + tmux new-window, directly, N times."""
    sock = os.path.join(root, "limit.sock")
    subprocess.run(["tmux", "-S", sock, "-f", "/dev/null", "new-session", "-d", "-s", "l",
                    "sleep", "600"], check=True)
    times = []
    try:
        for i in range(N):
            wt = os.path.join(root, "limit-wt", f"w{i}")
            out = os.path.join(root, f"limit-{i}")
            t0 = time.monotonic()
            subprocess.run(["git", "-C", repo, "worktree", "add", "-q", "-b", f"l/{i}", wt],
                           check=True, capture_output=True)
            subprocess.run(["tmux", "-S", sock, "new-window", "-t", "=l:", "-c", wt, "--",
                            "sh", "-c", stamp_cmd(out)], check=True)
            times.append(wait_file(out, time.monotonic() + 10) - t0)
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True)
    return times


class Ccm:
    def __init__(self, root, capacity):
        self.home = os.path.join(root, f"home-{capacity}")
        os.makedirs(self.home)
        env = dict(os.environ, CCM_HOME=self.home, CCM_EXECUTOR_CAPACITY=str(capacity),
                   CCM_EXECUTOR_MACHINE_ID=f"bench-{capacity}", CCM_LOG_LEVEL="warn")
        env.pop("CLAUDECODE", None)
        self.env = env
        self.store = subprocess.Popen([os.path.join(BIN, "ccm-store")], env=env)
        self.ctx = zmq.Context()
        self.req = self.ctx.socket(zmq.DEALER)
        self.req.setsockopt(zmq.LINGER, 0)
        self.req.connect(f"ipc://{self.home}/run/store.ipc")
        self.call("ping")
        self.executor = subprocess.Popen([os.path.join(BIN, "ccm-executor")], env=env)

    def call(self, verb, **body):
        body["v"] = 1
        if verb not in ("ping", "task.get", "task.list", "stats"):
            body["idem"] = str(uuid.uuid4())
        self.req.send_multipart([verb.encode(), json.dumps(body).encode()])
        if not self.req.poll(10000):
            raise TimeoutError(verb)
        status, reply = self.req.recv_multipart()
        reply = json.loads(reply)
        if status != b"ok":
            raise RuntimeError(f"{verb}: {reply}")
        return reply

    def close(self):
        for p in (self.executor, self.store):
            p.terminate()
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        subprocess.run(["tmux", "-S", os.path.join(self.home, "run", "tmux.sock"), "kill-server"],
                       capture_output=True)
        self.req.close()
        self.ctx.term()


def dispatch_run(root, repo):
    ccm = Ccm(root, capacity=8)
    times = []
    try:
        ccm.call("project.add", name="bench", path=repo)
        time.sleep(0.5)  # the executor learns the project from its event
        for i in range(N):
            out = os.path.join(root, f"agent-{i}")
            t0 = time.monotonic()
            ccm.call("task.add", project="bench", agent="shell", prompt=stamp_cmd(out))
            times.append(wait_file(out, time.monotonic() + 30) - t0)
    finally:
        ccm.close()
    return times


def hold_run(root, repo):
    ccm = Ccm(root, capacity=HOLD)
    try:
        ccm.call("project.add", name="hold", path=repo)
        time.sleep(0.5)
        for i in range(HOLD):
            ccm.call("task.add", project="hold", agent="shell", prompt="sleep 120")
        deadline = time.monotonic() + 120
        running = 0
        while time.monotonic() < deadline:
            running = ccm.call("stats")["tasks"].get("executing", 0)
            if running >= HOLD:
                break
            time.sleep(0.5)
        panes = subprocess.run(["tmux", "-S", os.path.join(ccm.home, "run", "tmux.sock"),
                                "list-panes", "-a", "-F", "#{pane_dead}"],
                               capture_output=True, text=True).stdout.split()
        return running, panes.count("0")
    finally:
        ccm.close()


def main():
    root = tempfile.mkdtemp(prefix="ccm-bench-dispatch-")
    try:
        repo = make_repo(root)
        limit = limit_run(root, repo)
        dispatch = dispatch_run(root, repo)
        held, alive = hold_run(root, make_repo(os.path.join(root, "r2")))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    l50, l99 = pct(limit, 50) * 1000, pct(limit, 99) * 1000
    d50, d99 = pct(dispatch, 50) * 1000, pct(dispatch, 99) * 1000
    print(f"bench/dispatch  ({N} tasks, one at a time; medians and p99 on a shared machine)")
    print(f"  limit: git worktree add + tmux new-window   p50 {l50:7.1f} ms   p99 {l99:7.1f} ms")
    print(f"  ccm:   task add -> agent process running    p50 {d50:7.1f} ms   p99 {d99:7.1f} ms")
    print(f"  ratio p50 ccm/limit: {d50 / l50:.2f}   (target: <= 2.0 -> {'met' if d50 <= 2 * l50 else 'NOT met'})")
    print(f"  concurrent agents held by one executor: {held} executing, {alive} live panes "
          f"(asked for {HOLD}; raise BENCH_HOLD to probe further)")


if __name__ == "__main__":
    main()

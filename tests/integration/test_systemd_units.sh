#!/usr/bin/env bash
# `systemd-analyze verify` accepts every unit in deploy/systemd, pointed at the
# binaries just built (CCM_BIN_DIR), and the store really speaks sd_notify.
set -euo pipefail
src=${CCM_SOURCE_DIR:?}
bin=${CCM_BIN_DIR:?}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
count=0
for unit in "$src"/deploy/systemd/*.service "$src"/deploy/systemd/*.target; do
    sed "s|^ExecStart=/usr/local/bin/|ExecStart=$bin/|" "$unit" > "$dir/$(basename "$unit")"
    count=$((count + 1))
done
out=$(cd "$dir" && SYSTEMD_LOG_LEVEL=warning systemd-analyze verify --man=no ./*.service ./*.target 2>&1 || true)
problems=$(grep -i 'ccm' <<<"$out" || true)
if [[ -n "$problems" ]]; then
    echo "systemd-analyze verify found problems:"
    echo "$problems"
    exit 1
fi
grep -q '^Type=notify' "$src/deploy/systemd/ccm-store.service"

# The role targets pull in exactly their role's services (following Wants= and
# Requires= through every unit): a worker must never start a store of its own.
python3 - "$src/deploy/systemd" <<'PY'
import os, sys
units = sys.argv[1]

def deps(name, key):
    path = os.path.join(units, name)
    if not os.path.exists(path):
        return set()
    got = set()
    for line in open(path):
        k, _, v = line.partition("=")
        if k.strip() in key:
            got.update(v.split())
    return got

def closure(name):
    seen, todo = set(), [name]
    while todo:
        unit = todo.pop()
        for dep in deps(unit, ("Wants", "Requires", "BindsTo", "Requisite")):
            if dep.startswith("ccm") and dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen

roles = {
    "ccm-hub.target": {"ccm-store.service", "ccm-router.service", "ccm-gateway.service",
                       "ccm-sync.service"},
    "ccm-worker.target": {"ccm-executor.service", "ccm-hooks.service"},
    "ccm.target": {"ccm-store.service", "ccm-router.service", "ccm-gateway.service",
                   "ccm-sync.service", "ccm-executor.service", "ccm-hooks.service"},
}
for target, want in roles.items():
    got = closure(target)
    assert got == want, f"{target} pulls in {sorted(got)}, not {sorted(want)}"
    if target != "ccm.target":
        for service in want:
            part = deps(service, ("PartOf",))
            assert {"ccm.target", target} <= part, f"{service}: PartOf={sorted(part)}"
            wanted = deps(service, ("WantedBy",))
            assert target in wanted, f"{service}: WantedBy={sorted(wanted)} lacks {target}"
print("role targets: hub and worker pull in exactly their services")
PY

# READY=1 reaches $NOTIFY_SOCKET once the store has bound its sockets.
home="$dir/home"
sock="$dir/notify.sock"
python3 - "$sock" "$bin/ccm-store" "$home" <<'PY'
import os, socket, subprocess, sys, time
path, binary, home = sys.argv[1:]
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(path)
s.settimeout(10)
env = dict(os.environ, CCM_HOME=home, NOTIFY_SOCKET=path, WATCHDOG_USEC="600000")
p = subprocess.Popen([binary], env=env, stderr=subprocess.DEVNULL)
try:
    got = []
    deadline = time.time() + 10
    while time.time() < deadline and "WATCHDOG=1" not in got:
        got.append(s.recv(256).decode())
    assert "READY=1" in got, got
    assert os.path.exists(os.path.join(home, "run", "store.ipc")), "READY before bind"
    assert "WATCHDOG=1" in got, got
finally:
    p.terminate()
    p.wait(10)
print("store sent READY=1 and WATCHDOG=1")
PY
echo "systemd units: $count verified"

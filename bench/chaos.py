#!/usr/bin/env python3
"""bench/chaos: what each fault costs, next to the same work without faults.

Reruns the chaos test's schedule for a seed (tests/integration/test_chaos.py:
`ccm up` with 3 executors of capacity 4, a CPU hog on every core, 60 `shell`
tasks of 1-5 s, 20,000 hook events through `ccm-hook`, and kill -9 of the
store, router, an executor, hooks and gateway, SIGSTOP of an executor for
10 s and of the store for 5 s), then the same work with no fault, each on a
fresh CCM_HOME. It prints, faulty next to fault-free:

  - tasks per minute (tasks complete / time from the first submission to the
    last task's end), next to the limit: the same tasks, the same
    submission times, on 12 slots with no overhead at all;
  - for each kill, the time to the service answering again (the store a
    ping, the router a HEARTBEAT, the hooks ingester a record, the gateway
    HTTP, an executor its registration), split into ccm up's wait before the
    restart and the start-up, next to the limit: up.restart_delay_ms plus
    the same service's start-up to its first answer when ccm up started it
    in this run;
  - for each executor fault (kill -9, SIGSTOP), the time from it to each of
    the tasks it held (assigned or running) running elsewhere (a run of the
    task starting on another system), next to the limit: router.liveness x router.heartbeat_ms (3 s,
    the soonest a silent executor counts as lost) plus the fault-free run's
    median dispatch (task created -> its agent's first instruction);
  - what each fault costs: runs cut short, extra runs, tasks failed, and the
    extra end-to-end time of the tasks in flight around it, compared task by
    task with the fault-free run (faults close together share the blame).

It ends with the broken promises found (overlapping runs, duplicate attempt
lines, tasks not ended, hook events missing) and a RESULT line.

Run: CCM_BIN_DIR=build /usr/bin/python3 bench/chaos.py [SEED]; knobs:
BENCH_SEED (1), BENCH_TASKS (60), BENCH_HOOKS (20000). About 8-10 minutes.
"""
import collections
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("CCM_BIN_DIR", os.path.join(ROOT, "build"))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
import ccmtest  # noqa: E402
import test_chaos as chaos  # noqa: E402
import test_executor as tx  # noqa: E402

SEED = int(os.environ.get("BENCH_SEED") or (sys.argv[1] if len(sys.argv) > 1 else 1))
TASKS = int(os.environ.get("BENCH_TASKS") or chaos.TASKS)
HOOKS = int(os.environ.get("BENCH_HOOKS") or chaos.HOOK_EVENTS)
SLOTS = chaos.EXECUTORS * chaos.CAPACITY
RESTART_DELAY = 0.5   # up.restart_delay_ms's default, which the runs keep
DETECT = 3 * 1.0      # router.liveness x router.heartbeat_ms, defaults


def run(plan, label):
    print(f"-- {label} run (seed {plan['seed']}, {len(plan['faults'])} faults)", flush=True)
    home = ccmtest.Home(extra_env=tx.GIT_ENV)
    try:
        return chaos.ChaosRun(home, plan, say=lambda text: print(text, flush=True)).run()
    finally:
        left = home.cleanup()
        if left:
            print(f"   (the home did not end clean: {left})")


def median(values):
    return statistics.median(values) if values else float("nan")


def fmt(value, unit="s"):
    return "   -  " if value != value else f"{value:6.2f} {unit}"


# ---------------------------------------------------------------- figures

def ended_at(result):
    """task id -> when it ended for good (epoch s); tasks still going are absent."""
    out = {}
    for t in result.get("tasks", []):
        if t["status"] == "complete" and t["completed_at"]:
            out[t["id"]] = ccmtest.iso_to_epoch(t["completed_at"])
        elif t["status"] == "failed" and t["attempts"] >= chaos.MAX_ATTEMPTS:
            out[t["id"]] = ccmtest.iso_to_epoch(t["updated_at"])
    return out


def throughput(result):
    ends = ended_at(result)
    complete = sum(1 for t in result.get("tasks", []) if t["status"] == "complete")
    span = (max(ends.values()) - result["t0"]) if ends else float("nan")
    return complete, span, complete / span * 60 if ends else float("nan")


def limit_span(plan):
    """The makespan of the plan's tasks on SLOTS slots with no overhead."""
    free = [0.0] * SLOTS
    end = 0.0
    for at, seconds in plan["tasks"]:
        i = min(range(SLOTS), key=lambda k: free[k])
        start = max(at, free[i])
        free[i] = start + seconds
        end = max(end, free[i])
    return end


def by_index(result):
    """Plan index -> task id (the submissions are made in plan order)."""
    return {i: s["id"] for i, s in enumerate(sorted(result["submitted"], key=lambda s: s["at"]))
            if s["id"]}


def latency(result):
    """task id -> end-to-end seconds (submission sent -> ended for good)."""
    ends = ended_at(result)
    return {s["id"]: ends[s["id"]] - s["sent"] for s in result["submitted"]
            if s["id"] in ends}


def dispatch(result):
    """Seconds from task created to its first run's start, per task."""
    first = {}
    for r in result["runs"].values():
        if r["start"] is not None and (r["task"] not in first or r["start"] < first[r["task"]]):
            first[r["task"]] = r["start"]
    return [first[t["id"]] - ccmtest.iso_to_epoch(t["created_at"])
            for t in result.get("tasks", []) if t["id"] in first]


def answered_again(result, fault):
    """(restart logged, answering again) after a kill, epoch s, or None."""
    name, t = fault["target"], fault["t"]
    restart = next((at for at, service, pid in result["started_at"]
                    if service == name and at > t and pid != fault["pid"]), None)
    after = restart or t
    for at, value in result["probes"].get(name, []):
        if at <= after or not value:
            continue
        if name == "store" and value == fault["pid"]:
            continue
        if name.startswith("executor") and value <= t:
            continue
        return restart, at
    return restart, None


def cold_start(result, name):
    """The service's start-up to its first answer when ccm up first started it."""
    first = next((at for at, service, _ in result["started_at"] if service == name), None)
    answer = result["first_answer"].get(name)
    return answer - first if first and answer else float("nan")


def alive_at(run, t):
    return run["start"] is not None and run["start"] <= t and (run["end"] is None
                                                               or run["end"] > t)


def held_at(result, system, t):
    """The tasks the system held (assigned or executing) at time t, from the
    task_events: an assignment routed to it, with no move away before t."""
    short = system[:8]
    holder = {}
    for task, kind, reason, at in result.get("task_events", []):
        if ccmtest.iso_to_epoch(at) > t:
            continue
        if kind == "assigned":
            holder[task] = short if f"system {short}" in (reason or "") else None
        elif kind != "started":
            holder[task] = None
    return [task for task, by in holder.items() if by == short]


def failover(result, fault):
    """[(task, seconds to a run elsewhere | None, what became of it)] for the
    tasks the faulted executor held at the moment of the fault."""
    system = result["systems"].get(fault["target"])
    t = fault["t"]
    runs = list(result["runs"].values())
    out = []
    for task in held_at(result, system, t):
        mine = [r for r in runs if r["task"] == task and r["system"] == system
                and r["start"] is not None and r["start"] <= t + 30]
        later = sorted(r["start"] for r in runs if r["task"] == task and r["start"]
                       and r["start"] > t and r["system"] != system)
        here = ", ".join(f"its run there {'from before' if r['start'] <= t else 'after'} the "
                         f"fault ended: {r['how']}" for r in mine) or "no run there"
        out.append((task, later[0] - t if later else None, here))
    return out


def costs(faulty, clean, fault):
    """What one fault cost: tasks in flight around it, runs cut short, extra
    runs, tasks failed, and their extra end-to-end time against the
    fault-free run of the same tasks."""
    t = fault["t"]
    until = (fault["cont"] or t) + 3.0
    runs = list(faulty["runs"].values())
    in_flight = {r["task"] for r in runs if alive_at(r, t)}
    in_flight |= {s["id"] for s in faulty["submitted"] if s["id"] and t <= s["sent"] <= until}
    cut = [r for r in runs if r["task"] in in_flight and alive_at(r, t) and r["how"] != "end"]
    extra = [r for r in runs if r["task"] in in_flight and r["start"] and r["start"] > t
             and any(o["task"] == r["task"] and o["start"] and o["start"] < r["start"]
                     for o in runs)]
    failed = [x for x in faulty.get("tasks", []) if x["id"] in in_flight and x["status"] == "failed"]
    lat_f, lat_c = latency(faulty), latency(clean)
    index_c = by_index(clean)
    extra_time = [lat_f[task] - lat_c[index_c[i]] for i, task in by_index(faulty).items()
                  if task in in_flight and task in lat_f and index_c.get(i) in lat_c]
    return len(in_flight), len(cut), len(extra), len(failed), median(extra_time)


def broken(result):
    lines = collections.Counter(x for x in chaos.attempt_lines(result, "start") if x[1] != "?")
    unfinished = [t for t in result.get("tasks", []) if not (
        t["status"] == "complete" or (t["status"] == "failed" and t["attempts"] >= 3))]
    markers = result.get("markers", {})
    return {"overlapping runs": len(chaos.overlaps(result)),
            "duplicate attempt lines": sum(n - 1 for n in lines.values() if n > 1),
            "tasks not ended": len(unfinished),
            "hook events missing": result["hooks_sent"] - len(markers),
            "hook events stored twice": sum(1 for n in markers.values() if n > 1),
            "processes left behind": len(result.get("left_behind", [])),
            "integrity": 0 if result.get("integrity") == "ok" else 1}


# ------------------------------------------------------------------ main

def main():
    faulty_plan = chaos.make_plan(SEED, faults=True, tasks=TASKS, hooks=HOOKS)
    clean_plan = chaos.make_plan(SEED, faults=False, tasks=TASKS, hooks=HOOKS)
    clean = run(clean_plan, "fault-free")
    faulty = run(faulty_plan, "faulty")

    print(f"\nbench/chaos  seed {SEED}: {TASKS} shell tasks of 1-5 s, {HOOKS} hook events, "
          f"{chaos.EXECUTORS} executors x {chaos.CAPACITY}, a CPU hog per core "
          f"({os.cpu_count()}); a shared, noisy machine")
    span_l = limit_span(clean_plan)
    tpm_l = TASKS / span_l * 60
    done_c, span_c, tpm_c = throughput(clean)
    done_f, span_f, tpm_f = throughput(faulty)
    print("\n  throughput                       complete   span      tasks/min")
    print(f"    limit: {SLOTS} slots, no overhead     {TASKS:4d}   {span_l:7.1f} s   {tpm_l:7.1f}")
    print(f"    fault-free                       {done_c:4d}   {span_c:7.1f} s   {tpm_c:7.1f}")
    print(f"    faulty                           {done_f:4d}   {span_f:7.1f} s   {tpm_f:7.1f}")

    print("\n  kill -9 -> answering again        total     ccm up's wait  start-up   limit "
          "(delay + cold start)")
    recoveries, limits = [], []
    for fault in faulty["struck"]:
        if fault["kind"] != "kill":
            continue
        restart, answer = answered_again(faulty, fault)
        total = answer - fault["t"] if answer else float("nan")
        wait = restart - fault["t"] if restart else float("nan")
        start = answer - restart if answer and restart else float("nan")
        limit = RESTART_DELAY + cold_start(faulty, fault["target"])
        recoveries.append(total)
        limits.append(limit)
        print(f"    {fault['target']:<12} at {fault['t'] - faulty['t0']:5.1f} s      "
              f"{fmt(total)}  {fmt(wait)}     {fmt(start)}  {fmt(limit)}")
    for fault in faulty["struck"]:
        if fault["kind"] == "stop":
            restart, answer = None, None
            for at, value in faulty["probes"].get(fault["target"], []):
                if fault["cont"] and at > fault["cont"] and value:
                    answer = at
                    break
            after = answer - fault["cont"] if answer and fault["cont"] else float("nan")
            print(f"    SIGSTOP {fault['target']:<8} {fault['length']} s: answering "
                  f"{fmt(after)} after SIGCONT")

    disp = median(dispatch(clean))
    print(f"\n  executor fault -> its tasks running elsewhere   (limit {DETECT:.1f} s detection"
          f" + {disp:.2f} s fault-free dispatch = {DETECT + disp:.2f} s)")
    moves = []
    for fault in faulty["struck"]:
        if not fault["target"].startswith("executor"):
            continue
        found = failover(faulty, fault)
        what = "kill -9" if fault["kind"] == "kill" else f"SIGSTOP {fault['length']} s"
        print(f"    {what} {fault['target']} at {fault['t'] - faulty['t0']:5.1f} s: "
              f"{len(found)} tasks held there")
        for task, seconds, how in found:
            if seconds is not None:
                moves.append(seconds)
            where = (f"running elsewhere after {seconds:6.2f} s" if seconds is not None
                     else "not run elsewhere")
            print(f"      task {task[:8]}: {where}; {how}")

    print("\n  what each fault cost       in flight  runs cut  extra runs  failed  extra "
          "end-to-end (median, vs fault-free)")
    for fault in faulty["struck"]:
        n, cut, extra, failed, more = costs(faulty, clean, fault)
        what = ("kill -9 " if fault["kind"] == "kill" else f"stop {fault['length']}s ") \
            + fault["target"]
        print(f"    {what:<24} {n:6d}   {cut:6d}    {extra:6d}    {failed:5d}   {fmt(more)}")
    print(f"    all faults together: span {span_f - span_c:+.1f} s, "
          f"{done_c - done_f:+d} tasks not complete")

    bad_f, bad_c = broken(faulty), broken(clean)
    print("\n  broken promises            faulty  fault-free")
    for key in bad_f:
        print(f"    {key:<26} {bad_f[key]:5d}   {bad_c[key]:5d}")
    for label, result in (("faulty", faulty), ("fault-free", clean)):
        names = {v: k for k, v in result["systems"].items()}
        for task, a, b, both in chaos.overlaps(result):
            a, b = (dict(r, system=names.get(r["system"], r["system"][:8])) for r in (a, b))
            print(f"    {label}: task {task[:8]}: {chaos.describe_run(a, result['t0'])} and "
                  f"{chaos.describe_run(b, result['t0'])}, together {both:.2f} s")
    total_f, total_c = sum(bad_f.values()), sum(bad_c.values())
    rec = [x for x in recoveries if x == x]
    print(f"\nRESULT bench/chaos seed={SEED}: {tpm_f:.1f} tasks/min with faults, {tpm_c:.1f} "
          f"fault-free, limit {tpm_l:.1f}; kill->answering p50 {median(rec):.2f} s max "
          f"{max(rec) if rec else float('nan'):.2f} s (limit p50 {median(limits):.2f} s); "
          f"executor fault->elsewhere p50 {median(moves):.2f} s (limit {DETECT + disp:.2f} s); "
          f"broken promises {total_f} with faults, {total_c} without")


if __name__ == "__main__":
    main()

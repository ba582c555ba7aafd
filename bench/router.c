/*  bench/router: the cost of one routing decision in ccm-router's pure core
    (services/router/route.c), against the least work any context router
    must do per decision, measured in the same run.

        build/bench/router

    The fleet: 20 executors of capacities 1 to 16, tagged gpu, os=linux or
    os=darwin, arch=arm64; 2 of them offline. Each holds 8 of 50 projects,
    some contexts stale or error, each with metadata (lang, ci, branch).
    The queue: 10,000 tasks over the 50 projects, priorities urgent 5%,
    high 15%, normal 60%, low 20%; 15% require metadata (met by a context or
    by tags), 5% name no project, 5% name an executor, and about 5% can
    never be placed (an unknown project, metadata nobody has, an
    unregistered or offline executor).

    The run: route_next + route_assign until nothing can be placed; then the
    oldest running task completes (route_release) and it goes on, until
    every placeable task has run. Each route_next (with its route_assign when
    it placed a task) is timed alone with clock_gettime. Figures: p50, p99
    and max per decision, the calls that found nothing placeable (they put
    the woken groups back to sleep), the releases, and the total.

    The limit, measured on the same tasks in the same order: one zhashx
    lookup of the task's project in a plain index, and a scan of its holders
    for the least loaded by load / capacity. No priorities, no metadata,
    no reasons: the least a context router must do per decision. Also the
    cost of the two clock_gettime calls around an empty block, which every
    figure includes.

    Then 100,000 more tasks go through and complete, and the same 10,000
    decisions are run again on the same router: completed tasks leave
    nothing in the index, so the figures must stay the same, and the
    decisions must be identical.

    Knobs: BENCH_EXTRA (100000 tasks completed between the two runs).     */

#include "route.h"

#include <czmq.h>

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_TARGET_NS 1000000  //  p99 <= 1 ms per decision, the target
#define S_SYSTEMS   20
#define S_PROJECTS  50
#define S_HELD      8  //  projects per executor
#define S_TASKS     10000

typedef struct {
    char id[40];
    char tags[80];
    int capacity;
    bool online;
    int projects[S_HELD];
    const char *status[S_HELD];
} s_system_t;

typedef struct {
    char id[40];
    const char *priority;
    int64_t seq;
    char system_id[40];  //  "" if none
    char project[24];    //  "" if none
    char metadata[80];
    //  The bench's own model of it, to check the router against.
    int project_index;  //  -1: none, -2: a project nobody holds
    int system_index;   //  -1: none, -2: an unregistered executor
    int needs;          //  S_NEED_* bits
} s_task_t;

#define S_NEED_GPU   1
#define S_NEED_LINUX 2
#define S_NEED_ARM   4
#define S_NEED_FPGA  8

//  What one run of the queue measured.
typedef struct {
    int64_t *placed_ns;  //  per placing decision (route_next + route_assign)
    size_t placed;
    int64_t *empty_ns;  //  per route_next that found nothing
    size_t empty;
    int64_t *release_ns;
    size_t released;
    int64_t total_ns;
    uint64_t digest;  //  of the sequence of task@system decisions
    route_stats_t after;
    uint64_t judged;  //  decisions route_next made in this run, placed or not
    int problems;     //  placements that broke a rule
} s_run_t;

static const char *const s_langs[] = {"c", "rust", "python", "go"};
static s_system_t s_fleet[S_SYSTEMS];
static bool s_holds[S_SYSTEMS][S_PROJECTS];

static int64_t
s_now_ns (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000000 + ts.tv_nsec;
}

//  xorshift64*: the same fleet and queue in every run and on every machine.
static uint64_t
s_random (uint64_t *state)
{
    *state ^= *state >> 12;
    *state ^= *state << 25;
    *state ^= *state >> 27;
    return *state * 2685821657736338717ULL;
}

static int
s_compare_ns (const void *a, const void *b)
{
    int64_t x = *(const int64_t *) a, y = *(const int64_t *) b;
    return x < y ? -1 : x > y;
}

//  The value at fraction q of the sorted values (sorts them).
static double
s_quantile (int64_t *values, size_t n, double q)
{
    if (n == 0)
        return 0;
    qsort (values, n, sizeof *values, s_compare_ns);
    size_t at = (size_t) (q * (double) (n - 1) + 0.5);
    return (double) values[at];
}

static uint64_t
s_digest (uint64_t hash, const char *text)
{
    for (; *text; text++)
        hash = (hash ^ (uint8_t) *text) * 1099511628211ULL;
    return (hash ^ '|') * 1099511628211ULL;
}

static void
s_fleet_make (void)
{
    static const int capacities[] = {2, 4, 8, 16, 1, 3, 6, 12};
    for (int i = 0; i < S_SYSTEMS; i++) {
        s_system_t *system = &s_fleet[i];
        snprintf (system->id, sizeof system->id, "%08x-5b7d-4e8f-9a1b-%012llx", 0x3f2a9c00u + i,
                  0x2c3d4e5f6a00ull + (unsigned) i);
        system->capacity = capacities[i % 8];
        system->online = i != 7 && i != 13;
        snprintf (system->tags, sizeof system->tags, "[\"os=%s\"%s%s]", i % 3 ? "linux" : "darwin",
                  i % 4 ? "" : ",\"gpu\"", i % 5 ? "" : ",\"arch=arm64\"");
        for (int k = 0; k < S_HELD; k++) {
            int project = (i * 5 + k * 7) % S_PROJECTS;
            system->projects[k] = project;
            s_holds[i][project] = true;
            system->status[k] = (i + k) % 9 == 0 ? "stale" : (i + k) % 13 == 0 ? "error" : "active";
        }
    }
}

static int
s_fleet_load (route_t *route)
{
    for (int i = 0; i < S_SYSTEMS; i++) {
        s_system_t *system = &s_fleet[i];
        if (route_system_set (route, system->id, system->tags, system->capacity, system->online))
            return -1;
        for (int k = 0; k < S_HELD; k++) {
            int project = system->projects[k];
            char name[24], metadata[96];
            snprintf (name, sizeof name, "proj-%02d", project);
            snprintf (metadata, sizeof metadata, "{\"lang\":\"%s\",\"ci\":%s,\"branch\":\"main\"}",
                      s_langs[project % 4], project % 2 ? "false" : "true");
            if (route_context_set (route, system->id, name, system->status[k], metadata))
                return -1;
        }
    }
    return 0;
}

//  True if, by the bench's own model of the fleet, the task may go to
//  executor i when it has a free slot (route.h's rule 1).
static bool
s_model_fits (const s_task_t *task, int i)
{
    const s_system_t *system = &s_fleet[i];
    if (!system->online || task->system_index == -2 || task->project_index == -2
        || (task->system_index >= 0 && task->system_index != i)
        || (task->project_index >= 0 && !s_holds[i][task->project_index])
        || (task->needs & S_NEED_FPGA))
        return false;
    if ((task->needs & S_NEED_GPU) && i % 4)
        return false;
    if ((task->needs & S_NEED_LINUX) && i % 3 == 0)
        return false;
    if ((task->needs & S_NEED_ARM) && i % 5)
        return false;
    return true;
}

//  The 10,000 tasks; *unplaceable counts those that can never be placed.
static void
s_tasks_make (s_task_t *tasks, size_t *unplaceable)
{
    uint64_t rng = 0x9e3779b97f4a7c15ULL;
    *unplaceable = 0;
    for (int n = 0; n < S_TASKS; n++) {
        s_task_t *task = &tasks[n];
        memset (task, 0, sizeof *task);
        snprintf (task->id, sizeof task->id, "%08x-0000-4000-8000-%012d", 0xa0000000u + n, n);
        task->seq = n + 1;
        int p = (int) (s_random (&rng) % 100);
        task->priority = p < 5 ? "urgent" : p < 20 ? "high" : p < 80 ? "normal" : "low";
        int project = (int) (s_random (&rng) % S_PROJECTS);
        snprintf (task->project, sizeof task->project, "proj-%02d", project);
        snprintf (task->metadata, sizeof task->metadata, "{}");
        task->project_index = project;
        task->system_index = -1;
        int kind = (int) (s_random (&rng) % 100);
        if (kind < 70)
            ;  //  a project, nothing else
        else if (kind < 85) {
            //  Metadata a context meets, tags meet, or both together.
            if (kind < 78)
                snprintf (task->metadata, sizeof task->metadata, "{\"lang\":\"%s\"}",
                          s_langs[project % 4]);
            else if (kind < 82) {
                snprintf (task->metadata, sizeof task->metadata, "{\"gpu\":true}");
                task->needs = S_NEED_GPU;
            }
            else {
                snprintf (task->metadata, sizeof task->metadata, "{\"os\":\"linux\",\"ci\":\"%s\"}",
                          project % 2 ? "false" : "true");
                task->needs = S_NEED_LINUX;
            }
        }
        else if (kind < 90) {
            task->project[0] = 0;  //  any executor
            task->project_index = -1;
            if (kind < 87) {
                snprintf (task->metadata, sizeof task->metadata, "{\"arch\":\"arm64\"}");
                task->needs = S_NEED_ARM;
            }
        }
        else if (kind < 95) {
            //  An explicit executor, with one of its projects; 7 and 13 are offline.
            int i = (int) (s_random (&rng) % S_SYSTEMS);
            snprintf (task->system_id, sizeof task->system_id, "%s", s_fleet[i].id);
            task->system_index = i;
            task->project_index = s_fleet[i].projects[s_random (&rng) % S_HELD];
            snprintf (task->project, sizeof task->project, "proj-%02d", task->project_index);
        }
        else if (kind < 97) {
            snprintf (task->project, sizeof task->project, "proj-x%d", kind);
            task->project_index = -2;
        }
        else if (kind < 99) {
            snprintf (task->metadata, sizeof task->metadata, "{\"fpga\":\"true\"}");
            task->needs = S_NEED_FPGA;
        }
        else {
            snprintf (task->system_id, sizeof task->system_id,
                      "ffffffff-0000-4000-8000-00000000000%d", kind % 10);
            task->system_index = -2;
        }
        bool fits = false;
        for (int i = 0; i < S_SYSTEMS && !fits; i++)
            fits = s_model_fits (task, i);
        *unplaceable += !fits;
    }
}

static int
s_tasks_add (route_t *route, const s_task_t *tasks, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const s_task_t *task = &tasks[i];
        if (route_task_add (route, task->id, task->priority, task->seq,
                            *task->system_id ? task->system_id : NULL,
                            *task->project ? task->project : NULL, task->metadata)) {
            fprintf (stderr, "bench/router: task %s: %s\n", task->id, route_error (route));
            return -1;
        }
    }
    return 0;
}

static int
s_fleet_index (const char *id)
{
    for (int i = 0; i < S_SYSTEMS; i++)
        if (streq (s_fleet[i].id, id))
            return i;
    return -1;
}

//  Routes until nothing placeable is left, completing the oldest running
//  task whenever nothing can be placed. With timings when run is set.
//  Checks each placement against the bench's own model of the fleet.
static void
s_drain (route_t *route, const s_task_t *tasks, size_t ntasks, s_run_t *run)
{
    typedef struct {
        char id[ROUTE_ID_MAX];
        int system;
    } running_t;
    running_t *running = malloc (sizeof (running_t) * (ntasks + 1));
    size_t head = 0, tail = 0;
    int load[S_SYSTEMS] = {0};
    //  The bench's own view of each task, to check the router against.
    zhashx_t *known = zhashx_new ();
    for (size_t i = 0; i < ntasks; i++)
        zhashx_insert (known, tasks[i].id, (void *) &tasks[i]);
    route_decision_t decision;
    route_stats (route, &run->after);
    uint64_t judged = run->after.judged;
    int64_t began = s_now_ns ();
    while (true) {
        int64_t start = s_now_ns ();
        bool placed = route_next (route, &decision);
        if (placed && route_assign (route, decision.task_id, decision.system_id))
            run->problems++;
        int64_t took = s_now_ns () - start;
        if (placed) {
            run->placed_ns[run->placed++] = took;
            run->digest = s_digest (s_digest (run->digest, decision.task_id), decision.system_id);
            const s_task_t *task = zhashx_lookup (known, decision.task_id);
            int at = s_fleet_index (decision.system_id);
            if (!task || at < 0 || !s_model_fits (task, at) || load[at] >= s_fleet[at].capacity)
                run->problems++;
            else
                load[at]++;
            snprintf (running[tail].id, sizeof running[tail].id, "%s", decision.task_id);
            running[tail++].system = at;
            continue;
        }
        run->empty_ns[run->empty++] = took;
        if (head == tail)
            break;  //  nothing runs and nothing can be placed: done
        start = s_now_ns ();
        if (route_release (route, running[head].id) != 0)
            run->problems++;
        run->release_ns[run->released++] = s_now_ns () - start;
        if (running[head].system >= 0)
            load[running[head].system]--;
        head++;
    }
    run->total_ns = s_now_ns () - began;
    route_stats (route, &run->after);
    run->judged = run->after.judged - judged;
    zhashx_destroy (&known);
    free (running);
}

//  The floor: per task, one zhashx lookup of its project in a plain index
//  and a scan of the holders for the least loaded (exact ratio compare).
static void
s_floor (const s_task_t *tasks, int64_t *floor_ns, int64_t *timer_ns, int *sink)
{
    typedef struct {
        int n;
        int holders[S_SYSTEMS];
    } holders_t;
    static holders_t holders[S_PROJECTS];
    zhashx_t *index = zhashx_new ();
    for (int p = 0; p < S_PROJECTS; p++) {
        char name[24];
        snprintf (name, sizeof name, "proj-%02d", p);
        for (int i = 0; i < S_SYSTEMS; i++)
            if (s_holds[i][p])
                holders[p].holders[holders[p].n++] = i;
        zhashx_insert (index, name, &holders[p]);
    }
    int load[S_SYSTEMS];
    for (int i = 0; i < S_SYSTEMS; i++)
        load[i] = i % 3;
    for (int n = 0; n < S_TASKS; n++) {
        int64_t start = s_now_ns ();
        const holders_t *found = zhashx_lookup (index, *tasks[n].project ? tasks[n].project : "-");
        int best = -1;
        for (int h = 0; found && h < found->n; h++) {
            int i = found->holders[h];
            if (load[i] < s_fleet[i].capacity
                && (best < 0
                    || (int64_t) load[i] * s_fleet[best].capacity
                           < (int64_t) load[best] * s_fleet[i].capacity))
                best = i;
        }
        floor_ns[n] = s_now_ns () - start;
        *sink += best;
        start = s_now_ns ();
        timer_ns[n] = s_now_ns () - start;
    }
    zhashx_destroy (&index);
}

static void
s_run_init (s_run_t *run, size_t ntasks)
{
    memset (run, 0, sizeof *run);
    run->placed_ns = malloc (sizeof (int64_t) * (ntasks + 1));
    run->empty_ns = malloc (sizeof (int64_t) * (ntasks + 2));
    run->release_ns = malloc (sizeof (int64_t) * (ntasks + 1));
    run->digest = 14695981039346656037ULL;
}

static void
s_run_free (s_run_t *run)
{
    free (run->placed_ns);
    free (run->empty_ns);
    free (run->release_ns);
}

static void
s_run_print (const char *title, s_run_t *run)
{
    printf ("%s\n", title);
    printf ("  %-36s %9s %9s %9s %9s\n", "", "count", "p50 us", "p99 us", "max us");
    double p99 = s_quantile (run->placed_ns, run->placed, 0.99);
    printf ("  %-36s %9zu %9.2f %9.2f %9.2f\n", "decision that placed (next+assign)", run->placed,
            s_quantile (run->placed_ns, run->placed, 0.5) / 1e3, p99 / 1e3,
            s_quantile (run->placed_ns, run->placed, 1.0) / 1e3);
    printf ("  %-36s %9zu %9.2f %9.2f %9.2f\n", "next that found nothing placeable", run->empty,
            s_quantile (run->empty_ns, run->empty, 0.5) / 1e3,
            s_quantile (run->empty_ns, run->empty, 0.99) / 1e3,
            s_quantile (run->empty_ns, run->empty, 1.0) / 1e3);
    printf ("  %-36s %9zu %9.2f %9.2f %9.2f\n", "release (a task completes)", run->released,
            s_quantile (run->release_ns, run->released, 0.5) / 1e3,
            s_quantile (run->release_ns, run->released, 0.99) / 1e3,
            s_quantile (run->release_ns, run->released, 1.0) / 1e3);
    printf ("  total: %zu tasks assigned in %.1f ms (%.2f us per task, releases included)\n",
            run->placed, (double) run->total_ns / 1e6,
            run->placed ? (double) run->total_ns / 1e3 / (double) run->placed : 0);
    printf (
        "  left queued (never placeable): %zu in %zu groups; running: %zu; decisions made: %llu\n",
        run->after.queued, run->after.groups, run->after.running, (unsigned long long) run->judged);
    printf ("  target: p99 <= 1 ms per decision: %s (%.2f us)\n",
            p99 <= S_TARGET_NS ? "met" : "MISSED", p99 / 1e3);
}

int
main (int argc, char **argv)
{
    (void) argv;
    if (argc > 1) {
        fprintf (stderr, "usage: bench/router (knob: BENCH_EXTRA)\n");
        return 2;
    }
    const char *extra_text = getenv ("BENCH_EXTRA");
    long extra = extra_text && *extra_text ? strtol (extra_text, NULL, 10) : 100000;
    if (extra < 0 || extra > 10000000) {
        fprintf (stderr, "bench/router: BENCH_EXTRA: must be 0 to 10000000\n");
        return 2;
    }
    s_fleet_make ();
    s_task_t *tasks = malloc (sizeof (s_task_t) * S_TASKS);
    size_t unplaceable;
    s_tasks_make (tasks, &unplaceable);
    int failures = 0;

    printf ("bench/router: one routing decision of ccm-router's core, and the least a context"
            " router must do\n");
    printf ("  %d executors (2 offline, capacities 1..16, %d projects each), %d projects,"
            " %d tasks (%zu never placeable)\n\n",
            S_SYSTEMS, S_HELD, S_PROJECTS, S_TASKS, unplaceable);

    //  A warm-up on a router of its own: page faults and first-touch costs
    //  land there, not in the first measured run.
    route_t *route = route_new ();
    s_run_t run;
    s_run_init (&run, S_TASKS);
    if (s_fleet_load (route) || s_tasks_add (route, tasks, S_TASKS)) {
        fprintf (stderr, "bench/router: %s\n", route_error (route));
        return 1;
    }
    s_drain (route, tasks, S_TASKS, &run);
    s_run_free (&run);
    route_destroy (&route);

    route = route_new ();
    s_run_t first;
    s_run_init (&first, S_TASKS);
    s_fleet_load (route);
    s_tasks_add (route, tasks, S_TASKS);
    s_drain (route, tasks, S_TASKS, &first);

    //  100,000 more tasks run and complete on the same router.
    s_task_t *more = malloc (sizeof (s_task_t) * (size_t) (extra ? extra : 1));
    for (long n = 0; n < extra; n++) {
        s_task_t *task = &more[n];
        memset (task, 0, sizeof *task);
        snprintf (task->id, sizeof task->id, "%08lx-1111-4000-8000-%012ld", 0xb0000000ul + n, n);
        task->priority = n % 10 ? "normal" : "high";
        task->seq = S_TASKS + 1 + n;
        snprintf (task->project, sizeof task->project, "proj-%02ld", n % S_PROJECTS);
        snprintf (task->metadata, sizeof task->metadata, "{}");
        task->project_index = (int) (n % S_PROJECTS);
        task->system_index = -1;
    }
    s_run_t middle;
    s_run_init (&middle, (size_t) extra);
    route_stats_t before;
    route_stats (route, &before);
    s_tasks_add (route, more, (size_t) extra);
    s_drain (route, more, (size_t) extra, &middle);

    //  The same 10,000 again: re-adding replaces the never-placeable ones.
    s_run_t second;
    s_run_init (&second, S_TASKS);
    s_tasks_add (route, tasks, S_TASKS);
    s_drain (route, tasks, S_TASKS, &second);

    int64_t *floor_ns = malloc (sizeof (int64_t) * S_TASKS);
    int64_t *timer_ns = malloc (sizeof (int64_t) * S_TASKS);
    int sink = 0;
    s_floor (tasks, floor_ns, timer_ns, &sink);

    s_run_print ("run 1: fresh router", &first);
    printf ("\n%ld more tasks assigned and completed in %.1f ms; the router then holds:"
            " %zu queued, %zu running, %zu groups (before them: %zu, %zu, %zu)\n\n",
            extra, (double) middle.total_ns / 1e6, middle.after.queued, middle.after.running,
            middle.after.groups, before.queued, before.running, before.groups);
    s_run_print ("run 2: the same tasks, after those completed", &second);

    printf ("\nlimit, same tasks in the same order (p50 / p99 us):\n");
    printf ("  zhashx lookup of the project + least-loaded scan of its holders: %.2f / %.2f\n",
            s_quantile (floor_ns, S_TASKS, 0.5) / 1e3, s_quantile (floor_ns, S_TASKS, 0.99) / 1e3);
    printf ("  two clock_gettime calls around nothing (in every figure):        %.2f / %.2f\n",
            s_quantile (timer_ns, S_TASKS, 0.5) / 1e3, s_quantile (timer_ns, S_TASKS, 0.99) / 1e3);
    double p99_1 = s_quantile (first.placed_ns, first.placed, 0.99);
    double p99_2 = s_quantile (second.placed_ns, second.placed, 0.99);
    double floor99 = s_quantile (floor_ns, S_TASKS, 0.99);
    printf ("  decision p99 / limit p99: run 1 %.1fx, run 2 %.1fx\n",
            floor99 > 0 ? p99_1 / floor99 : 0, floor99 > 0 ? p99_2 / floor99 : 0);

    printf ("\ncost with %ld completed tasks behind it: p99 %.2f us -> %.2f us (%+.0f%%)\n", extra,
            p99_1 / 1e3, p99_2 / 1e3, p99_1 > 0 ? (p99_2 - p99_1) / p99_1 * 100 : 0);
    bool same = first.digest == second.digest && first.placed == second.placed;
    bool clean = middle.after.queued == before.queued && middle.after.running == 0
                 && middle.after.groups == before.groups;
    bool counts = first.placed + first.after.queued == S_TASKS && first.after.queued == unplaceable
                  && middle.placed == (size_t) extra;
    int problems = first.problems + middle.problems + second.problems;
    printf ("verification: decisions of run 1 and run 2 %s; completed tasks %s; "
            "%zu placed + %zu never placeable = %d %s; %d placements breaking a rule\n",
            same ? "identical" : "DIFFER", clean ? "left nothing behind" : "LEFT STATE BEHIND",
            first.placed, first.after.queued, S_TASKS, counts ? "as built" : "NOT as built",
            problems);
    failures = !same || !clean || !counts || problems;

    free (floor_ns);
    free (timer_ns);
    s_run_free (&first);
    s_run_free (&middle);
    s_run_free (&second);
    free (more);
    free (tasks);
    route_destroy (&route);
    return failures ? 1 : 0;
}

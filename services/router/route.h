/*  route: the pure core of ccm-router. It holds in memory the executors
    (systems), the contexts (projects) each one holds, and the queued tasks,
    and it decides which task goes where. It does no I/O: ccm-router feeds
    it from the store's events and the executors' heartbeats, and acts on
    its answers.

    Where a task may go. A task may go to an executor only if all hold:
      - the task's system_id, if set, is the executor's id;
      - the executor is online;
      - the task's requires_project, if set, is one of its contexts;
      - every key/value of requires_context_metadata is matched, each on its
        own, by the context's metadata (string values equal; other JSON
        values compared by their JSON text, so "true" matches true) or by
        the executor's tags (a tag "k=v" matches key k, value v; a bare tag
        "gpu" matches key "gpu", value "true"). A task without a project may
        use any context of the executor that makes its metadata match, or
        none if the tags alone do;
      - the executor has a free slot: load < capacity.

    Which one. Executors whose context is active (or that need none) come
    first; a stale or error context is used only when no active one fits
    (a full executor does not fit, so a free stale context beats a full
    active one). Then the least loaded by load / capacity (compared
    exactly, by integer cross-multiplication), then the fewest running
    tasks, then the lowest system id (strcmp). The same state always gives
    the same answer.

    Why not. When a task cannot be placed the decision gives one reason,
    the most specific that holds. With an explicit system_id X, the first
    failing of:
        "system X is not registered"
        "system X is offline"
        "system X does not hold project P"
        "system X does not match k=v"            (the first unmet key, by name)
        "system X is at its capacity of N tasks"
    Otherwise the candidates are the executors holding P (or every executor
    when the task names no project), and the reason is the furthest check
    any candidate reached:
        "no executor holds project P"
        "no executor is registered"
        "no executor holding project P is online (N offline)"
        "no executor is online (N offline)"
        "no executor holding project P matches k=v"  (no candidate has k=v)
        "no executor holding project P matches all of a=1, b=2"
                                     (each is met somewhere, never all at once)
        "no executor matches k=v", "no executor matches all of a=1, b=2"
        "the only candidate (system X) is at capacity"
        "all N candidates at capacity"

    The queue. route_next hands out queued tasks by priority, urgent > high
    > normal > low, then by the caller's creation sequence number (then by
    id, so there are no ties). A task that cannot be placed waits aside and
    does not hold up those behind it; it is looked at again only when
    something changes that could let it run (see route.c for how).         */

#ifndef ROUTE_H_INCLUDED
#define ROUTE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

//  Longest id or project name accepted, with its NUL.
#define ROUTE_ID_MAX 128
//  Size of a reason, with its NUL; a longer one is cut.
#define ROUTE_REASON_MAX 256
//  Most keys a task's requires_context_metadata may have.
#define ROUTE_REQS_MAX 32

typedef struct _route_t route_t;

//  One routing decision. Strings are copies: they stay valid whatever
//  happens to the router afterwards.
typedef struct {
    bool placed;                    //  true: the task can go to system_id now
    char task_id[ROUTE_ID_MAX];     //  the task decided
    char system_id[ROUTE_ID_MAX];   //  where it goes, "" if not placed
    char project[ROUTE_ID_MAX];     //  the context it uses there, "" if none
    const char *context_status;     //  "active", "stale", "error", or "" (static)
    char reason[ROUTE_REASON_MAX];  //  why it waits, "" if placed
} route_decision_t;

//  Counts of what the router holds, for tests, benchmarks and status.
typedef struct {
    size_t systems;   //  executors registered, online or not
    size_t contexts;  //  contexts over all executors
    size_t projects;  //  distinct projects held
    size_t queued;    //  tasks queued (ready + waiting)
    size_t ready;     //  queued tasks not looked at since they came or changed
    size_t waiting;   //  queued tasks known not to fit now
    size_t groups;    //  groups of waiting tasks with identical needs
    size_t awake;     //  groups to look at again
    size_t running;   //  tasks assigned and not released
    uint64_t judged;  //  decisions route_next has made so far, placed or not
} route_stats_t;

//  Creates an empty router; the caller owns it. Out of memory aborts, as
//  in the czmq containers it is built on.
route_t *route_new (void);

//  Destroys the router and everything it holds. Accepts NULL; sets *self_p to NULL.
void route_destroy (route_t **self_p);

//  The reason of the last call that returned -1 (borrowed), naming the
//  field at fault, e.g. "tags: element 2 is not a string".
const char *route_error (route_t *self);

//  Adds or updates an executor. tags_json is a JSON array of strings, NULL
//  meaning []. An update keeps its load and contexts. Returns 0, or -1 on
//  bad input (see route_error), with nothing changed.
int route_system_set (route_t *self, const char *id, const char *tags_json, int capacity,
                      bool online);

//  Sets how many tasks the executor runs now, as it reported. Returns 0,
//  or -1 if it is not registered or load < 0.
int route_system_set_load (route_t *self, const char *id, int load);

//  Marks the executor online or offline; it keeps its contexts and load.
//  Returns 0, or -1 if it is not registered.
int route_system_set_online (route_t *self, const char *id, bool online);

//  Removes the executor, its contexts and its record of running tasks (the
//  caller requeues those). Returns 0, or -1 if it is not registered.
int route_system_remove (route_t *self, const char *id);

//  Adds or updates the context of project on the executor. status is
//  "active", "stale" or "error"; metadata_json a JSON object, NULL meaning
//  {}. Returns 0, or -1 on bad input or an unregistered executor.
int route_context_set (route_t *self, const char *system_id, const char *project,
                       const char *status, const char *metadata_json);

//  Removes the context of project from the executor. Returns 0, or -1 if
//  there is no such context.
int route_context_remove (route_t *self, const char *system_id, const char *project);

//  Queues a task, or replaces the queued task of the same id. priority is
//  "low", "normal", "high" or "urgent" (NULL: normal); seq orders tasks of
//  one priority, lowest first; system_id and requires_project may be NULL;
//  requires_metadata_json is a JSON object of key -> value, NULL meaning {}.
//  It does not touch the running record: release a retried task first.
//  Returns 0, or -1 on bad input, with nothing changed.
int route_task_add (route_t *self, const char *id, const char *priority, int64_t seq,
                    const char *system_id, const char *requires_project,
                    const char *requires_metadata_json);

//  Removes a queued task (cancelled, or assigned elsewhere). Returns 0, or
//  -1 if it is not queued.
int route_task_remove (route_t *self, const char *id);

//  Decides where the queued task would go now, into *decision, changing
//  nothing. Returns 0, or -1 if the task is not queued.
int route_decide (route_t *self, const char *task_id, route_decision_t *decision);

//  Finds the first queued task, in priority then sequence order, that can
//  be placed now, and fills *decision for it. Returns true if one was
//  found; false if none can be placed now. Tasks it finds unplaceable on
//  the way wait aside. The task stays queued: call route_assign before the
//  next route_next, or the same decision comes back.
bool route_next (route_t *self, route_decision_t *decision);

//  Records that the task went to the executor: takes it off the queue if
//  it is there, and counts one more running task there. Assigning a task
//  again to the same executor changes nothing (events may be replayed).
//  Returns 0, or -1 if the executor is not registered or the task runs on
//  another one.
int route_assign (route_t *self, const char *task_id, const char *system_id);

//  Records that the task stopped running (complete, failed, cancelled or
//  lost): one less running task on its executor, and the task forgotten.
//  Returns 0, or 1 if the task was not running (events may be replayed).
int route_release (route_t *self, const char *task_id);

//  Why the queued task waits, as last found (borrowed, valid until the next
//  call), or NULL if it is not waiting aside (not queued, or not yet looked
//  at: route_decide tells then).
const char *route_task_reason (route_t *self, const char *task_id);

//  Fills *stats with what the router holds now.
void route_stats (route_t *self, route_stats_t *stats);

#endif

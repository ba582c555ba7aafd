/*  router_server: ccm-router's loop (zloop). It places queued tasks on
    executors; the choice itself is route.c's.

    - Executors connect a DEALER to the dispatch ROUTER and send HEARTBEAT
      {system_id, seq, running} every router.heartbeat_ms; the first one
      registers them. The router answers each at once with HEARTBEAT {seq,
      held: [{task_id, attempt}]}: the attempts it counts as that
      executor's. That answer is the executor's lease on them (see
      services/executor/exec_dispatch.c): an executor heard from by no
      message for router.liveness beats is given up, its attempts are
      dropped from every later answer at once, and the store puts its
      tasks back in the queue (system.status). Every message of an
      executor counts as a sign of life, not only its beats.
    - What an executor is (tags, capacity) and holds (contexts) comes from
      the store, where executors record it; the store's events say when it
      changes.
    - Each pass reads the queued tasks the store holds, asks route.c where
      each goes, moves a placed task to assigned with the executor's lock
      (the store refuses it if another got there first, or a dependency is
      not complete) and sends RUN {task_id, attempt}; a task that cannot go
      anywhere gets its reason (task.reason), shown by ccm task show.
    - Nothing on the loop waits for the store: every request is
      asynchronous (ccm_req), so executors' beats are answered on time even
      while the store is slow or paused.                                  */

#include "router.h"
#include "route.h"

#include "ccm_bus.h"
#include "ccm_client.h"
#include "ccm_id.h"
#include "ccm_log.h"
#include "ccm_msg.h"
#include "ccm_notify.h"
#include "ccm_req.h"

#include <string.h>

#define S_PAGE         1000   //  tasks read per task.list
#define S_SEEN_MS      30000  //  how often a heartbeat refreshes last_seen in the store
#define S_DEFER_MS     2000   //  a task the store refused is not tried again before this
#define S_MAX_MESSAGE  65536  //  largest message taken from an executor
#define S_RECONCILE_MS 5000   //  how often running tasks are checked against the store
#define S_WINDOW       64     //  store requests in flight at once

//  An executor known on the dispatch socket (or, until it beats, from the
//  store: one that was online when this router started).
typedef struct {
    char system_id[ROUTE_ID_MAX];
    zframe_t *identity;  //  its DEALER's routing id, NULL until it beats here
    int64_t heard_ms;    //  last message from it
    int64_t seen_ms;     //  last time last_seen went to the store
    bool online;
} s_exec_t;

//  A task counted as running on an executor (route.c's load).
typedef struct {
    char system_id[ROUTE_ID_MAX];
    int attempt;
    uint64_t gen;  //  when it was counted (s_router_t.gen)
} s_run_t;

struct _router_t {
    ccm_config_t *config;
    zloop_t *loop;
    zsock_t *dispatch;  //  ROUTER: executors
    zsock_t *events;    //  SUB: the store's events
    ccm_req_t *store;
    route_t *route;
    zhashx_t *execs;     //  system_id -> s_exec_t
    zhashx_t *reasons;   //  task id -> the reason last written for it
    zhashx_t *deferred;  //  task id -> (int64_t) when it may be tried again
    zhashx_t *running;   //  task id -> s_run_t: assigned or executing
    zhashx_t *placing;   //  task id -> system id: its move to assigned is under way
    zhashx_t *queued;    //  task id -> "": what the last pass put in the route
    uint64_t gen;
    int64_t reconciled_ms;
    bool retrying;  //  the due retries are being read
    int64_t heartbeat_ms;
    int liveness;
    int64_t ticked_ms;          //  the last tick (a stalled router gives nobody up for it)
    bool dirty;                 //  something changed: run a pass
    bool passing;               //  a pass is under way (reading the queue)
    bool loading, reload;       //  systems and contexts are being read (again after)
    bool reconciling;           //  running tasks are being read
    char sync_state[16];        //  the store's sync.state: LocalOnly, Online...
    bool connected;             //  sync is Online or Syncing
    int64_t wait_connection_s;  //  how long a requires_supabase task may wait, by default
    zhashx_t *waitconn;         //  task id -> why it waits for a connection (this pass)
    bool watchdog;              //  systemd wants WATCHDOG=1 (sent at every tick)
    zhashx_t *keys;             //  system id -> the public key it registered with (tcp://)
};

static void s_pass (router_t *self);
static void s_load_systems (router_t *self);

static void
s_exec_destroy (s_exec_t **self_p)
{
    if (self_p && *self_p) {
        zframe_destroy (&(*self_p)->identity);
        free (*self_p);
        *self_p = NULL;
    }
}

static const char *
s_str (cJSON *obj, const char *key)
{
    return cJSON_GetStringValue (cJSON_GetObjectItem (obj, key));
}

//  Sends a read; fn (may be NULL) gets the reply on the loop.
static void
s_read (router_t *self, const char *verb, cJSON *body, ccm_req_fn *fn, void *arg)
{
    if (ccm_req_send (self->store, verb, &body, fn, arg) && fn)
        fn (arg, CCM_EPROTO, NULL);
}

//  A write nobody waits on: a refusal is logged.
static void
s_logged (void *arg, int rc, cJSON *reply)
{
    const char *verb = arg;
    if (rc && rc != CCM_ECLOSED)
        ccm_warn ("%s: %s", verb, ccm_client_strerror (rc, reply));
}

//  Sends a write with a fresh idempotency key; fn NULL logs a refusal.
static void
s_write (router_t *self, const char *verb, cJSON *body, ccm_req_fn *fn, void *arg)
{
    ccm_client_add_idem (body);
    if (!fn) {
        fn = s_logged;
        arg = (void *) verb;  //  a string literal
    }
    s_read (self, verb, body, fn, arg);
}

//  Counts the task as running on the system at its attempt.
static void
s_track (router_t *self, const char *task_id, const char *system_id, int attempt)
{
    if (route_assign (self->route, task_id, system_id))
        return;
    s_run_t *run = calloc (1, sizeof *run);
    snprintf (run->system_id, sizeof run->system_id, "%s", system_id);
    run->attempt = attempt;
    run->gen = ++self->gen;
    zhashx_update (self->running, task_id, run);
}

static void
s_untrack (router_t *self, const char *task_id)
{
    if (zhashx_lookup (self->running, task_id)) {
        route_release (self->route, task_id);
        zhashx_delete (self->running, task_id);
        self->dirty = true;
    }
}

//  --------------------------------------------------------------------------
//  Running tasks, as the store has them

//  Makes the running tasks those the store says run (assigned or executing,
//  with their lock). Executors' loads are counted here, not taken from their
//  heartbeats: a heartbeat sent before a RUN arrived would undercount, and a
//  task placed on a full executor is worse than one that waits a beat.
//  Events keep it current; this puts right what a dropped event left wrong.
//  A task counted after the reading began is left as it is.
typedef struct {
    router_t *self;
    uint64_t gen;  //  self->gen when the reading began
    int status;    //  0: assigned, 1: executing
    int offset;
    zhashx_t *truth;  //  task id -> s_run_t
} s_census_t;

static void s_census_next (s_census_t *census);

static void
s_census_page (void *arg, int rc, cJSON *reply)
{
    s_census_t *census = arg;
    router_t *self = census->self;
    if (rc) {
        if (rc != CCM_ECLOSED) {
            ccm_warn ("task.list: %s", ccm_client_strerror (rc, reply));
            self->reconciling = false;
        }
        zhashx_destroy (&census->truth);
        free (census);
        return;
    }
    cJSON *tasks = cJSON_GetObjectItem (reply, "tasks"), *task;
    cJSON_ArrayForEach (task, tasks)
    {
        const char *id = s_str (task, "id"), *by = s_str (task, "locked_by");
        if (!id || !by || strlen (by) >= ROUTE_ID_MAX)
            continue;
        s_run_t *run = calloc (1, sizeof *run);
        snprintf (run->system_id, sizeof run->system_id, "%s", by);
        run->attempt = (int) cJSON_GetNumberValue (cJSON_GetObjectItem (task, "attempts"));
        zhashx_update (census->truth, id, run);
    }
    if (cJSON_GetArraySize (tasks) == S_PAGE)
        census->offset += S_PAGE;
    else {
        census->status++;
        census->offset = 0;
    }
    if (census->status < 2) {
        s_census_next (census);
        return;
    }
    zlistx_t *ids = zhashx_keys (self->running);
    for (const char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
        s_run_t *run = zhashx_lookup (self->running, id);
        if (run && run->gen <= census->gen && !zhashx_lookup (census->truth, id))
            s_untrack (self, id);
    }
    zlistx_destroy (&ids);
    for (s_run_t *held = zhashx_first (census->truth); held; held = zhashx_next (census->truth)) {
        const char *id = zhashx_cursor (census->truth);
        s_exec_t *exec = zhashx_lookup (self->execs, held->system_id);
        //  An executor given up keeps none: its tasks are on their way back.
        if (!zhashx_lookup (self->running, id) && !zhashx_lookup (self->placing, id)
            && !(exec && !exec->online && exec->identity != NULL))
            s_track (self, id, held->system_id, held->attempt);
    }
    zhashx_destroy (&census->truth);
    free (census);
    self->reconciled_ms = ccm_mono_ms ();
    self->reconciling = false;
    self->dirty = true;
}

static void
s_census_next (s_census_t *census)
{
    const char *statuses[] = {"assigned", "executing"};
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "status", statuses[census->status]);
    cJSON_AddNumberToObject (body, "limit", S_PAGE);
    cJSON_AddNumberToObject (body, "offset", census->offset);
    s_read (census->self, "task.list", body, s_census_page, census);
}

static void
s_reconcile (router_t *self)
{
    if (self->reconciling)
        return;
    self->reconciling = true;
    self->reconciled_ms = ccm_mono_ms ();
    s_census_t *census = calloc (1, sizeof *census);
    census->self = self;
    census->gen = self->gen;
    census->truth = zhashx_new ();
    zhashx_set_destructor (census->truth, (zhashx_destructor_fn *) zstr_free);
    s_census_next (census);
}

//  --------------------------------------------------------------------------
//  What the executors are and hold, from the store

static void
s_contexts_read (void *arg, int rc, cJSON *reply)
{
    router_t *self = arg;
    if (rc == CCM_ECLOSED)
        return;
    cJSON *context;
    cJSON_ArrayForEach (context, cJSON_GetObjectItem (reply, "contexts"))
    {
        char *metadata = cJSON_PrintUnformatted (cJSON_GetObjectItem (context, "metadata"));
        if (route_context_set (self->route, s_str (context, "system_id"),
                               s_str (context, "project_name"), s_str (context, "status"),
                               metadata))
            ccm_warn ("context: %s", route_error (self->route));
        free (metadata);
    }
    self->loading = false;
    self->dirty = true;
    s_reconcile (self);
    if (self->reload) {
        self->reload = false;
        s_load_systems (self);
    }
}

static void
s_systems_read (void *arg, int rc, cJSON *reply)
{
    router_t *self = arg;
    if (rc == CCM_ECLOSED)
        return;
    int64_t now = ccm_mono_ms ();
    cJSON *system;
    cJSON_ArrayForEach (system, cJSON_GetObjectItem (reply, "systems"))
    {
        const char *id = s_str (system, "id");
        if (!id || strlen (id) >= ROUTE_ID_MAX)
            continue;
        s_exec_t *exec = zhashx_lookup (self->execs, id);
        //  One the store says is online, and never heard here (this router
        //  is new): watched from now on, so that if it is dead it is given up.
        if (!exec && s_str (system, "status") && strcmp (s_str (system, "status"), "online") == 0) {
            exec = calloc (1, sizeof *exec);
            snprintf (exec->system_id, sizeof exec->system_id, "%s", id);
            exec->heard_ms = now;
            exec->seen_ms = now;
            exec->online = true;
            zhashx_insert (self->execs, id, exec);
        }
        //  Only executors connected here can take tasks.
        char *tags = cJSON_PrintUnformatted (cJSON_GetObjectItem (system, "tags"));
        int capacity = (int) cJSON_GetNumberValue (cJSON_GetObjectItem (system, "capacity"));
        if (route_system_set (self->route, id, tags, capacity,
                              exec && exec->online && exec->identity != NULL))
            ccm_warn ("system %s: %s", id, route_error (self->route));
        free (tags);
        const char *key = s_str (system, "public_key");
        if (key)
            zhashx_update (self->keys, id, strdup (key));
    }
    s_read (self, "context.list", cJSON_CreateObject (), s_contexts_read, self);
}

static void
s_load_systems (router_t *self)
{
    if (self->loading) {
        self->reload = true;
        return;
    }
    self->loading = true;
    s_read (self, "system.list", cJSON_CreateObject (), s_systems_read, self);
}

static void
s_sync_read (void *arg, int rc, cJSON *reply)
{
    router_t *self = arg;
    if (rc)
        return;
    cJSON *sync = cJSON_GetObjectItem (reply, "sync");
    const char *state = s_str (sync, "state");
    if (state) {
        snprintf (self->sync_state, sizeof self->sync_state, "%s", state);
        self->connected = cJSON_IsTrue (cJSON_GetObjectItem (sync, "connected"));
        self->dirty = true;
    }
}

//  --------------------------------------------------------------------------
//  Placing tasks

//  Writes why the task waits, when it differs from what was written.
static void
s_say_reason (router_t *self, const char *task_id, const char *reason)
{
    const char *said = zhashx_lookup (self->reasons, task_id);
    if (said && strcmp (said, reason) == 0)
        return;
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", task_id);
    cJSON_AddStringToObject (body, "reason", reason);
    //  A task placed meanwhile takes no reason: not worth a warning.
    s_write (self, "task.reason", body, NULL, NULL);
    zhashx_update (self->reasons, task_id, strdup (reason));
}

static void
s_defer (router_t *self, const char *task_id)
{
    int64_t *until = malloc (sizeof *until);
    *until = ccm_mono_ms () + S_DEFER_MS;
    zhashx_update (self->deferred, task_id, until);
}

//  A requires_supabase task while sync is not connected: it waits in
//  WaitConnection, or fails once it has waited longer than its timeout_s
//  (router.wait_connection_s without one), counted from its creation.
//  Returns true if the task is held here.
static bool
s_hold_for_connection (router_t *self, cJSON *task, const char *id)
{
    if (self->connected || !cJSON_IsTrue (cJSON_GetObjectItem (task, "requires_supabase")))
        return false;
    route_task_remove (self->route, id);
    cJSON *timeout = cJSON_GetObjectItem (task, "timeout_s");
    int64_t limit_s =
        cJSON_IsNumber (timeout) ? (int64_t) timeout->valuedouble : self->wait_connection_s;
    int64_t created = 0;
    ccm_iso_ms (s_str (task, "created_at"), &created);
    if (ccm_wall_ms () - created >= limit_s * 1000) {
        char reason[160];
        snprintf (reason, sizeof reason,
                  "WaitConnection timed out: sync was not connected within %lld s (it is %s)",
                  (long long) limit_s, self->sync_state);
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", id);
        cJSON_AddStringToObject (body, "to", "failed");
        cJSON_AddStringToObject (body, "reason", reason);
        s_write (self, "task.transition", body, NULL, NULL);
        s_defer (self, id);
        ccm_info ("task %.8s: %s", id, reason);
        return true;
    }
    char *reason =
        zsys_sprintf ("WaitConnection: waits for sync to connect (sync is %s)", self->sync_state);
    zhashx_update (self->waitconn, id, reason);
    return true;
}

static void
s_send (router_t *self, s_exec_t *exec, const char *verb, const char *json)
{
    if (!exec->identity)
        return;
    zmsg_t *msg = zmsg_new ();
    zmsg_add (msg, zframe_dup (exec->identity));
    zmsg_addstr (msg, verb);
    zmsg_addstr (msg, json);
    if (zmsg_send (&msg, self->dispatch))
        zmsg_destroy (&msg);
}

typedef struct {
    router_t *self;
    route_decision_t decision;
} s_placing_t;

//  The store's answer to a move to assigned: RUN, or the reason it waits.
static void
s_placed (void *arg, int rc, cJSON *reply)
{
    s_placing_t *placing = arg;
    router_t *self = placing->self;
    const route_decision_t *decision = &placing->decision;
    if (rc == CCM_ECLOSED) {
        free (placing);
        return;
    }
    zhashx_delete (self->placing, decision->task_id);
    s_exec_t *exec = zhashx_lookup (self->execs, decision->system_id);
    if (rc) {
        //  Not ours to run now (a dependency, a cancel, another router):
        //  say why, and look again later rather than at every pass.
        route_release (self->route, decision->task_id);
        route_task_remove (self->route, decision->task_id);
        s_defer (self, decision->task_id);
        if (rc == CCM_EREPLY)
            s_say_reason (self, decision->task_id, ccm_client_strerror (rc, reply));
        self->dirty = true;
        free (placing);
        return;
    }
    int attempt = (int) cJSON_GetNumberValue (
        cJSON_GetObjectItem (cJSON_GetObjectItem (reply, "task"), "attempts"));
    zhashx_delete (self->reasons, decision->task_id);
    if (!exec || !exec->online) {
        //  Given up while the move was under way: the task goes back.
        route_release (self->route, decision->task_id);
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", decision->task_id);
        cJSON_AddStringToObject (body, "to", "queued");
        cJSON_AddStringToObject (body, "reason", "its executor went offline before it started");
        s_write (self, "task.transition", body, NULL, NULL);
        free (placing);
        return;
    }
    route_release (self->route, decision->task_id);
    s_track (self, decision->task_id, decision->system_id, attempt);
    char *text =
        zsys_sprintf ("{\"v\":1,\"task_id\":\"%s\",\"attempt\":%d}", decision->task_id, attempt);
    s_send (self, exec, "RUN", text);
    zstr_free (&text);
    ccm_info ("task %.8s -> system %.8s, attempt %d (%s context%s%s)", decision->task_id,
              decision->system_id, attempt,
              *decision->context_status ? decision->context_status : "no",
              *decision->project ? " " : "", decision->project);
    free (placing);
}

//  Moves the task to assigned on the executor (counted on it at once, so
//  the same pass does not overfill it); RUN follows the store's answer.
static void
s_place (router_t *self, const route_decision_t *decision)
{
    s_exec_t *exec = zhashx_lookup (self->execs, decision->system_id);
    route_assign (self->route, decision->task_id, decision->system_id);
    if (!exec || !exec->identity) {
        route_release (self->route, decision->task_id);
        route_task_remove (self->route, decision->task_id);
        s_defer (self, decision->task_id);
        return;
    }
    s_placing_t *placing = calloc (1, sizeof *placing);
    placing->self = self;
    placing->decision = *decision;
    zhashx_update (self->placing, decision->task_id, strdup (decision->system_id));
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", decision->task_id);
    cJSON_AddStringToObject (body, "to", "assigned");
    cJSON_AddStringToObject (body, "locked_by", decision->system_id);
    char reason[ROUTE_REASON_MAX + 64];
    snprintf (reason, sizeof reason, "routed to system %.8s%s%s", decision->system_id,
              *decision->project ? ", project " : "", decision->project);
    cJSON_AddStringToObject (body, "reason", reason);
    s_write (self, "task.transition", body, s_placed, placing);
}

//  The queue, read page by page; then every task that can go is placed.
typedef struct {
    router_t *self;
    int offset;
    zhashx_t *seen;  //  task ids queued now
} s_sweep_t;

static void s_sweep_next (s_sweep_t *sweep);

static void
s_sweep_end (s_sweep_t *sweep)
{
    router_t *self = sweep->self;
    //  A task that left the queue (cancelled, or placed by someone else).
    for (void *item = zhashx_first (self->queued); item; item = zhashx_next (self->queued))
        if (!zhashx_lookup (sweep->seen, zhashx_cursor (self->queued)))
            route_task_remove (self->route, zhashx_cursor (self->queued));
    zhashx_destroy (&self->queued);
    self->queued = sweep->seen;
    route_decision_t decision;
    while (route_next (self->route, &decision))
        s_place (self, &decision);
    //  What still waits says why.
    for (void *item = zhashx_first (self->queued); item; item = zhashx_next (self->queued)) {
        const char *id = zhashx_cursor (self->queued);
        if (zhashx_lookup (self->placing, id))
            continue;
        const char *reason = zhashx_lookup (self->waitconn, id);
        if (!reason)
            reason = route_task_reason (self->route, id);
        if (reason)
            s_say_reason (self, id, reason);
    }
    free (sweep);
    self->passing = false;
}

static void
s_sweep_page (void *arg, int rc, cJSON *reply)
{
    s_sweep_t *sweep = arg;
    router_t *self = sweep->self;
    if (rc) {
        if (rc != CCM_ECLOSED) {
            ccm_warn ("task.list: %s", ccm_client_strerror (rc, reply));
            self->passing = false;
        }
        zhashx_destroy (&sweep->seen);
        free (sweep);
        return;
    }
    int64_t now = ccm_mono_ms ();
    cJSON *tasks = cJSON_GetObjectItem (reply, "tasks"), *task;
    cJSON_ArrayForEach (task, tasks)
    {
        const char *id = s_str (task, "id");
        if (!id || zhashx_lookup (self->placing, id) || zhashx_lookup (self->running, id))
            continue;
        zhashx_insert (sweep->seen, id, "");
        if (s_hold_for_connection (self, task, id))
            continue;
        int64_t *until = zhashx_lookup (self->deferred, id);
        if (until && *until > now) {
            route_task_remove (self->route, id);
            continue;
        }
        zhashx_delete (self->deferred, id);
        //  FIFO within a priority: the creation time orders them.
        int64_t seq = 0;
        ccm_iso_ms (s_str (task, "created_at"), &seq);
        char *requires =
            cJSON_PrintUnformatted (cJSON_GetObjectItem (task, "requires_context_metadata"));
        //  A review runs where the worktree it reviews is.
        const char *system = s_str (task, "system_id");
        if (!system)
            system = s_str (task, "review_system_id");
        if (route_task_add (self->route, id, s_str (task, "priority"), seq, system,
                            s_str (task, "requires_project"), requires))
            ccm_warn ("task %.8s: %s", id, route_error (self->route));
        free (requires);
    }
    if (cJSON_GetArraySize (tasks) == S_PAGE) {
        sweep->offset += S_PAGE;
        s_sweep_next (sweep);
    }
    else
        s_sweep_end (sweep);
}

static void
s_sweep_next (s_sweep_t *sweep)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "status", "queued");
    cJSON_AddNumberToObject (body, "limit", S_PAGE);
    cJSON_AddNumberToObject (body, "offset", sweep->offset);
    s_read (sweep->self, "task.list", body, s_sweep_page, sweep);
}

//  One pass: the queue from the store, then every task that can go. One
//  at a time; a change meanwhile makes the next.
static void
s_pass (router_t *self)
{
    if (self->passing)
        return;
    self->passing = true;
    self->dirty = false;
    zhashx_purge (self->waitconn);
    s_sweep_t *sweep = calloc (1, sizeof *sweep);
    sweep->self = self;
    sweep->seen = zhashx_new ();
    s_sweep_next (sweep);
}

//  --------------------------------------------------------------------------
//  Executors

static void
s_status_done (void *arg, int rc, cJSON *reply)
{
    router_t *self = arg;
    if (rc == CCM_ECLOSED)
        return;
    if (rc) {
        ccm_warn ("system.status: %s", ccm_client_strerror (rc, reply));
        return;
    }
    cJSON *task;
    cJSON_ArrayForEach (task, cJSON_GetObjectItem (reply, "requeued"))
    {
        s_untrack (self, task->valuestring);
        ccm_info ("task %.8s: back in the queue (its executor went offline)", task->valuestring);
    }
    cJSON_ArrayForEach (task, cJSON_GetObjectItem (reply, "failed"))
        s_untrack (self, task->valuestring);
    self->dirty = true;
}

//  Tells the store whether the executor is up (a heartbeat, now and then),
//  or down (its tasks are requeued), and the route too. Given up, it keeps
//  no attempt from this moment: no later answer to it names one.
static void
s_set_online (router_t *self, s_exec_t *exec, bool online, const char *reason)
{
    int64_t now = ccm_mono_ms ();
    bool changed = exec->online != online;
    exec->online = online;
    if (!changed && (!online || now - exec->seen_ms < S_SEEN_MS))
        return;
    exec->seen_ms = now;
    if (!online) {
        zlistx_t *ids = zhashx_keys (self->running);
        for (const char *id = zlistx_first (ids); id; id = zlistx_next (ids)) {
            s_run_t *run = zhashx_lookup (self->running, id);
            if (run && strcmp (run->system_id, exec->system_id) == 0)
                s_untrack (self, id);
        }
        zlistx_destroy (&ids);
    }
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "system_id", exec->system_id);
    cJSON_AddStringToObject (body, "status", online ? "online" : "offline");
    if (reason)
        cJSON_AddStringToObject (body, "reason", reason);
    s_write (self, "system.status", body, s_status_done, self);
    if (changed) {
        ccm_info ("system %.8s is %s%s%s", exec->system_id, online ? "online" : "offline",
                  reason ? ": " : "", reason ? reason : "");
        if (route_system_set_online (self->route, exec->system_id,
                                     online && exec->identity != NULL))
            s_load_systems (self);  //  new to the route: read it from the store
        self->dirty = true;
    }
}

//  Whether the peer of key (its frames' User-Id over tcp://, else NULL) may
//  speak for system id: over tcp:// only the key that registered it can.
//  A key not yet known sends the systems to be read again; until then it
//  is not believed.
static bool
s_peer_is (router_t *self, const char *id, const char *key)
{
    if (!key || strlen (key) != 40 || strcmp (key, ccm_bus_public_key ()) == 0)
        return true;
    const char *known = zhashx_lookup (self->keys, id);
    if (!known)
        s_load_systems (self);
    return known && strcmp (known, key) == 0;
}

//  The answer to a heartbeat: its seq, and the attempts this executor holds.
static void
s_answer (router_t *self, s_exec_t *exec, cJSON *beat)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddNumberToObject (body, "v", 1);
    cJSON *seq = cJSON_GetObjectItem (beat, "seq");
    if (cJSON_IsNumber (seq))
        cJSON_AddNumberToObject (body, "seq", seq->valuedouble);
    cJSON *held = cJSON_AddArrayToObject (body, "held");
    for (s_run_t *run = zhashx_first (self->running); run; run = zhashx_next (self->running))
        if (strcmp (run->system_id, exec->system_id) == 0) {
            cJSON *item = cJSON_CreateObject ();
            cJSON_AddStringToObject (item, "task_id", zhashx_cursor (self->running));
            cJSON_AddNumberToObject (item, "attempt", run->attempt);
            cJSON_AddItemToArray (held, item);
        }
    char *text = cJSON_PrintUnformatted (body);
    cJSON_Delete (body);
    s_send (self, exec, "HEARTBEAT", text ? text : "{\"v\":1}");
    free (text);
}

//  The executor a message is from: it must name a system its key may speak
//  for. A new one is taken; a restarted one comes back on a new socket.
static s_exec_t *
s_sender (router_t *self, zframe_t *identity, cJSON *body, const char *key, const char *verb)
{
    const char *id = s_str (body, "system_id");
    if (!id || !*id || strlen (id) >= ROUTE_ID_MAX) {
        ccm_warn ("a malformed %s (needs system_id%s); ignored", verb,
                  strcmp (verb, "HEARTBEAT") == 0 ? " and running" : "");
        return NULL;
    }
    if (!s_peer_is (self, id, key)) {
        ccm_warn ("a %s for system %.36s from key %s, which did not register it; ignored", verb, id,
                  key);
        return NULL;
    }
    s_exec_t *exec = zhashx_lookup (self->execs, id);
    if (!exec) {
        exec = calloc (1, sizeof *exec);
        snprintf (exec->system_id, sizeof exec->system_id, "%s", id);
        zhashx_insert (self->execs, id, exec);
        s_load_systems (self);
    }
    if (!exec->identity || !zframe_eq (exec->identity, identity)) {
        bool first = !exec->identity;
        zframe_destroy (&exec->identity);
        exec->identity = zframe_dup (identity);
        if (first && exec->online)
            route_system_set_online (self->route, exec->system_id, true);
    }
    exec->heard_ms = ccm_mono_ms ();
    return exec;
}

static int
s_dispatch_readable (zloop_t *loop, zsock_t *reader, void *arg)
{
    (void) loop;
    router_t *self = arg;
    zmsg_t *msg = zmsg_recv (reader);
    if (!msg)
        return 0;
    zframe_t *identity = zmsg_pop (msg);
    char *verb = zmsg_popstr (msg);
    zframe_t *frame = zmsg_pop (msg);
    cJSON *body =
        frame && zframe_size (frame) <= S_MAX_MESSAGE
            ? cJSON_ParseWithLength ((const char *) zframe_data (frame), zframe_size (frame))
            : NULL;
    const char *key = frame ? zframe_meta (frame, "User-Id") : NULL;
    if (!identity || !verb || !cJSON_IsObject (body))
        ccm_warn ("a malformed message on the dispatch socket (%s); ignored",
                  !verb    ? "no verb"
                  : !frame ? "no body"
                           : "body not a JSON object");
    else if (strcmp (verb, "HEARTBEAT") == 0) {
        s_exec_t *exec = cJSON_IsArray (cJSON_GetObjectItem (body, "running"))
                             ? s_sender (self, identity, body, key, verb)
                             : NULL;
        if (!exec && !cJSON_IsArray (cJSON_GetObjectItem (body, "running")))
            ccm_warn ("a malformed HEARTBEAT (needs system_id and running); ignored");
        if (exec) {
            s_set_online (self, exec, true, NULL);
            s_answer (self, exec, body);
        }
    }
    else if (strcmp (verb, "ACK") == 0) {
        //  A RUN taken (or taken before: never run twice). A sign of life.
        s_sender (self, identity, body, key, verb);
    }
    else
        ccm_warn ("an unknown verb '%.32s' on the dispatch socket; ignored", verb);
    cJSON_Delete (body);
    zframe_destroy (&frame);
    zstr_free (&verb);
    zframe_destroy (&identity);
    zmsg_destroy (&msg);
    if (self->dirty)
        s_pass (self);
    return 0;
}

static int
s_event (zloop_t *loop, zsock_t *reader, void *arg)
{
    (void) loop;
    router_t *self = arg;
    while (zsock_events (reader) & ZMQ_POLLIN) {
        zmsg_t *msg = zmsg_recv (reader);
        char *topic = msg ? zmsg_popstr (msg) : NULL;
        if (topic && (strncmp (topic, "systems.", 8) == 0 || strncmp (topic, "contexts.", 9) == 0))
            s_load_systems (self);
        else if (topic && strcmp (topic, "sync.state") == 0)
            s_read (self, "sync.state", cJSON_CreateObject (), s_sync_read, self);
        else if (topic && strcmp (topic, "task.status") == 0) {
            //  A task that stopped frees its executor's slot.
            zframe_t *seq = zmsg_pop (msg);
            zframe_destroy (&seq);
            char *text = zmsg_popstr (msg);
            cJSON *event = text ? cJSON_Parse (text) : NULL;
            cJSON *data = cJSON_GetObjectItem (event, "data");
            const char *from = s_str (data, "from");
            const char *to = s_str (data, "to");
            const char *task = s_str (event, "entity_id");
            int attempt = (int) cJSON_GetNumberValue (cJSON_GetObjectItem (data, "attempts"));
            //  The end of a run (back to the queue, or over) frees its slot;
            //  only that run's: an event may arrive after the task was
            //  placed again (or, for a new task, after it was first placed).
            bool ended = from && to
                         && (strcmp (from, "assigned") == 0 || strcmp (from, "executing") == 0)
                         && strcmp (to, "executing") != 0;
            s_run_t *run = task ? zhashx_lookup (self->running, task) : NULL;
            if (ended && run && run->attempt == attempt)
                s_untrack (self, task);
            cJSON_Delete (event);
            zstr_free (&text);
        }
        zstr_free (&topic);
        zmsg_destroy (&msg);
        self->dirty = true;
    }
    if (self->dirty)
        s_pass (self);
    return 0;
}

static void
s_requeued (void *arg, int rc, cJSON *reply)
{
    router_t *self = arg;
    if (rc == 0)
        self->dirty = true;
    else if (rc == CCM_EREPLY)
        (void) reply;  //  no longer failed (a user's retry, a cancel): nothing to do
}

//  Each failed task due for its retry goes back to the queue, only from
//  failed: one a user retried meanwhile (or cancelled) is left alone.
static void
s_retries_due (void *arg, int rc, cJSON *reply)
{
    router_t *self = arg;
    if (rc == CCM_ECLOSED)
        return;
    self->retrying = false;
    cJSON *task;
    cJSON_ArrayForEach (task, cJSON_GetObjectItem (reply, "tasks"))
    {
        const char *id = s_str (task, "id");
        if (!id)
            continue;
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", id);
        cJSON_AddStringToObject (body, "to", "queued");
        cJSON_AddStringToObject (body, "from", "failed");
        cJSON_AddStringToObject (body, "reason", "retry after a failed attempt");
        s_write (self, "task.transition", body, s_requeued, self);
    }
}

//  Every beat: executors silent too long are given up; a pass if needed.
static int
s_tick (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop, (void) timer_id;
    router_t *self = arg;
    int64_t now = ccm_mono_ms ();
    //  The loop turns: tell systemd (its watchdog, when it set one).
    if (self->watchdog)
        ccm_notify ("WATCHDOG=1");
    //  This router stalled (paused, starved): it heard nobody meanwhile, so
    //  the stall counts against nobody.
    int64_t stall = now - self->ticked_ms - self->heartbeat_ms;
    if (self->ticked_ms && stall > self->heartbeat_ms)
        for (s_exec_t *exec = zhashx_first (self->execs); exec; exec = zhashx_next (self->execs))
            exec->heard_ms += stall;
    self->ticked_ms = now;
    for (s_exec_t *exec = zhashx_first (self->execs); exec; exec = zhashx_next (self->execs))
        if (exec->online && now - exec->heard_ms > self->heartbeat_ms * self->liveness) {
            char reason[96];
            snprintf (reason, sizeof reason, "no heartbeat for %lld ms",
                      (long long) (now - exec->heard_ms));
            s_set_online (self, exec, false, reason);
        }
    //  Failed tasks whose backoff is over (the store keeps the schedule)
    //  go back to the queue.
    if (!self->retrying) {
        self->retrying = true;
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddBoolToObject (body, "retry_due", true);
        cJSON_AddNumberToObject (body, "limit", S_PAGE);
        s_read (self, "task.list", body, s_retries_due, self);
    }
    //  Deferred tasks come back, and a dropped event costs a beat at most.
    if (now - self->reconciled_ms >= S_RECONCILE_MS)
        s_reconcile (self);
    s_pass (self);
    return 0;
}

router_t *
router_new (ccm_config_t *config)
{
    router_t *self = calloc (1, sizeof *self);
    self->config = config;
    self->heartbeat_ms = ccm_config_int (config, "router.heartbeat_ms");
    self->liveness = (int) ccm_config_int (config, "router.liveness");
    if (self->heartbeat_ms < 10)
        self->heartbeat_ms = 10;
    if (self->liveness < 1)
        self->liveness = 1;
    self->route = route_new ();
    zhashx_t **maps[] = {&self->execs, &self->reasons,  &self->deferred, &self->running,
                         &self->keys,  &self->waitconn, &self->placing,  &self->queued};
    for (size_t i = 0; i < sizeof maps / sizeof maps[0]; i++) {
        *maps[i] = zhashx_new ();
        zhashx_set_destructor (*maps[i], (zhashx_destructor_fn *) zstr_free);
    }
    zhashx_set_destructor (self->execs, (zhashx_destructor_fn *) s_exec_destroy);
    self->wait_connection_s = ccm_config_int (config, "router.wait_connection_s");
    self->watchdog = ccm_notify_watchdog_ms () > 0;
    snprintf (self->sync_state, sizeof self->sync_state, "LocalOnly");
    const char *endpoint = ccm_config_str (config, "router.endpoint");
    self->loop = zloop_new ();
    //  Every request is resent until the store answers (same idem).
    self->store = ccm_req_new (self->loop, ccm_config_str (config, "store.endpoint"),
                               (int) ccm_config_int (config, "bus.timeout_ms"), -1, S_WINDOW);
    self->dispatch = ccm_bus_router_bind (endpoint, S_MAX_MESSAGE);
    self->events = ccm_bus_sub_connect (ccm_config_str (config, "store.pub_endpoint"), "task.");
    if (!self->store || !self->dispatch || !self->events) {
        ccm_error ("cannot start: %s", !self->dispatch ? endpoint : "the store's sockets");
        router_destroy (&self);
        return NULL;
    }
    zsock_set_subscribe (self->events, "systems.");
    zsock_set_subscribe (self->events, "contexts.");
    zsock_set_subscribe (self->events, "sync.state");
    zloop_reader (self->loop, self->dispatch, s_dispatch_readable, self);
    zloop_reader (self->loop, self->events, s_event, self);
    zloop_timer (self->loop, (size_t) self->heartbeat_ms, 0, s_tick, self);
    return self;
}

int
router_run (router_t *self)
{
    //  What it serves from comes first: the executors, their contexts and
    //  their running tasks, and the sync state. Beats are answered meanwhile.
    s_load_systems (self);
    s_read (self, "sync.state", cJSON_CreateObject (), s_sync_read, self);
    ccm_req_flush (self->store, (int) ccm_config_int (self->config, "bus.timeout_ms"));
    ccm_info ("ready: executors on %s, heartbeat %lld ms, liveness %d",
              ccm_config_str (self->config, "router.endpoint"), (long long) self->heartbeat_ms,
              self->liveness);
    ccm_notify ("READY=1");
    zloop_start (self->loop);
    return 0;
}

void
router_destroy (router_t **self_p)
{
    if (self_p && *self_p) {
        router_t *self = *self_p;
        ccm_req_destroy (&self->store);
        zloop_destroy (&self->loop);
        zsock_destroy (&self->events);
        zsock_destroy (&self->dispatch);
        zhashx_t **maps[] = {&self->execs, &self->reasons,  &self->deferred, &self->running,
                             &self->keys,  &self->waitconn, &self->placing,  &self->queued};
        for (size_t i = 0; i < sizeof maps / sizeof maps[0]; i++)
            zhashx_destroy (maps[i]);
        route_destroy (&self->route);
        free (self);
        *self_p = NULL;
    }
}

/*  router_server: ccm-router's loop (zloop). It places queued tasks on
    executors; the choice itself is route.c's.

    - Executors connect a DEALER to the dispatch ROUTER and send HEARTBEAT
      {system_id, running: [task ids]} every router.heartbeat_ms; the first
      one registers them. The router answers each with a HEARTBEAT, so an
      executor can tell a dead router from a quiet one (Paranoid Pirate).
      An executor silent for router.liveness beats is offline: the store
      puts its tasks back in the queue (system.status).
    - What an executor is (tags, capacity) and holds (contexts) comes from
      the store, where executors record it; the store's events say when it
      changes.
    - Each pass reads the queued tasks the store holds, asks route.c where
      each goes, moves a placed task to assigned with the executor's lock
      (the store refuses it if another got there first, or a dependency is
      not complete) and sends RUN {task_id}; a task that cannot go anywhere
      gets its reason (task.reason), shown by ccm task show.              */

#include "router.h"
#include "route.h"

#include "ccm_bus.h"
#include "ccm_client.h"
#include "ccm_id.h"
#include "ccm_log.h"
#include "ccm_msg.h"
#include "ccm_notify.h"

#include <string.h>

#define S_PAGE         1000   //  queued tasks read per task.list
#define S_SEEN_MS      30000  //  how often a heartbeat refreshes last_seen in the store
#define S_DEFER_MS     2000   //  a task the store refused is not tried again before this
#define S_MAX_MESSAGE  65536  //  largest message taken from an executor
#define S_RECONCILE_MS 5000   //  how often running tasks are checked against the store

//  An executor known on the dispatch socket.
typedef struct {
    char system_id[ROUTE_ID_MAX];
    zframe_t *identity;  //  its DEALER's routing id
    int64_t heard_ms;    //  last message from it
    int64_t seen_ms;     //  last time last_seen went to the store
    bool online;
} s_exec_t;

typedef struct {
    ccm_config_t *config;
    zloop_t *loop;
    zsock_t *dispatch;  //  ROUTER: executors
    zsock_t *events;    //  SUB: the store's events
    ccm_client_t *store;
    route_t *route;
    zhashx_t *execs;     //  system_id -> s_exec_t
    zhashx_t *reasons;   //  task id -> the reason last written for it
    zhashx_t *deferred;  //  task id -> (int64_t) when it may be tried again
    zhashx_t *
        running;  //  task id -> "system id\tattempt": assigned or executing, as route.c counts them
    int64_t reconciled_ms;
    zhashx_t *retries;  //  task id -> (int64_t) when a failed task goes back to the queue
    int64_t retry_base_ms;
    int max_attempts;
    int64_t heartbeat_ms;
    int liveness;
    bool dirty;                 //  something changed: run a pass
    char sync_state[16];        //  the store's sync.state: LocalOnly, Online...
    bool connected;             //  sync is Online or Syncing
    int64_t wait_connection_s;  //  how long a requires_supabase task may wait, by default
    zhashx_t *waitconn;         //  task id -> why it waits for a connection (this pass)
    bool watchdog;              //  systemd wants WATCHDOG=1 (sent at every tick)
    zhashx_t *keys;             //  system id -> the public key it registered with (tcp://)
} s_router_t;

static void
s_exec_destroy (s_exec_t **self_p)
{
    if (self_p && *self_p) {
        zframe_destroy (&(*self_p)->identity);
        free (*self_p);
        *self_p = NULL;
    }
}

//  Calls the store; returns the reply (caller destroys) or NULL. A write
//  carries a fresh idempotency key. Why a call failed goes to why if given,
//  else to the log (a refusal by the store, expected, is not logged).
static cJSON *
s_call_why (s_router_t *self, const char *verb, cJSON *body, bool write, char *why, size_t size)
{
    if (write)
        ccm_client_add_idem (body);
    cJSON *reply = NULL;
    int rc = ccm_client_call (self->store, verb, body, &reply);
    cJSON_Delete (body);
    if (rc == 0)
        return reply;
    if (why)
        snprintf (why, size, "%s", ccm_client_strerror (rc, reply));
    else if (rc != CCM_EREPLY)
        ccm_warn ("%s: %s", verb, ccm_client_strerror (rc, reply));
    cJSON_Delete (reply);
    return NULL;
}

static cJSON *
s_call (s_router_t *self, const char *verb, cJSON *body, bool write)
{
    return s_call_why (self, verb, body, write, NULL, 0);
}

//  Counts the task as running on the system (route.c's load), as of its
//  attempt-th assignment, or stops.
static void
s_track (s_router_t *self, const char *task_id, const char *system_id, int attempt)
{
    if (route_assign (self->route, task_id, system_id) == 0)
        zhashx_update (self->running, task_id, zsys_sprintf ("%s\t%d", system_id, attempt));
}

static void
s_untrack (s_router_t *self, const char *task_id)
{
    if (zhashx_lookup (self->running, task_id)) {
        route_release (self->route, task_id);
        zhashx_delete (self->running, task_id);
        self->dirty = true;
    }
}

//  Makes the running tasks those the store says run (assigned or executing,
//  with their lock). Executors' loads are counted here, not taken from their
//  heartbeats: a heartbeat sent before a RUN arrived would undercount, and a
//  task placed on a full executor is worse than one that waits a beat.
//  Events keep it current; this puts right what a dropped event left wrong.
static void
s_reconcile (s_router_t *self)
{
    zhashx_t *truth = zhashx_new ();
    zhashx_set_destructor (truth, (zhashx_destructor_fn *) zstr_free);
    const char *statuses[] = {"assigned", "executing"};
    for (int i = 0; i < 2; i++)
        for (int offset = 0;; offset += S_PAGE) {
            cJSON *body = cJSON_CreateObject ();
            cJSON_AddStringToObject (body, "status", statuses[i]);
            cJSON_AddNumberToObject (body, "limit", S_PAGE);
            cJSON_AddNumberToObject (body, "offset", offset);
            cJSON *reply = s_call (self, "task.list", body, false);
            cJSON *tasks = cJSON_GetObjectItem (reply, "tasks");
            cJSON *task;
            cJSON_ArrayForEach (task, tasks)
            {
                const char *id = cJSON_GetStringValue (cJSON_GetObjectItem (task, "id"));
                const char *by = cJSON_GetStringValue (cJSON_GetObjectItem (task, "locked_by"));
                int attempt = (int) cJSON_GetNumberValue (cJSON_GetObjectItem (task, "attempts"));
                if (id && by)
                    zhashx_update (truth, id, zsys_sprintf ("%s\t%d", by, attempt));
            }
            int count = cJSON_GetArraySize (tasks);
            cJSON_Delete (reply);
            if (count < S_PAGE)
                break;
        }
    zlistx_t *gone = zhashx_keys (self->running);
    for (const char *id = zlistx_first (gone); id; id = zlistx_next (gone))
        if (!zhashx_lookup (truth, id))
            s_untrack (self, id);
    zlistx_destroy (&gone);
    for (const char *held = zhashx_first (truth); held; held = zhashx_next (truth)) {
        const char *id = zhashx_cursor (truth);
        char by[ROUTE_ID_MAX] = "";
        int attempt = 0;
        if (!zhashx_lookup (self->running, id) && sscanf (held, "%127[^\t]\t%d", by, &attempt) == 2)
            s_track (self, id, by, attempt);
    }
    zhashx_destroy (&truth);
    self->reconciled_ms = ccm_mono_ms ();
}

//  --------------------------------------------------------------------------
//  What the executors are and hold, from the store

static void
s_load_systems (s_router_t *self)
{
    cJSON *reply = s_call (self, "system.list", cJSON_CreateObject (), false);
    cJSON *system;
    cJSON_ArrayForEach (system, cJSON_GetObjectItem (reply, "systems"))
    {
        const char *id = cJSON_GetStringValue (cJSON_GetObjectItem (system, "id"));
        s_exec_t *exec = id ? zhashx_lookup (self->execs, id) : NULL;
        //  Only executors connected here can take tasks.
        char *tags = cJSON_PrintUnformatted (cJSON_GetObjectItem (system, "tags"));
        int capacity = (int) cJSON_GetNumberValue (cJSON_GetObjectItem (system, "capacity"));
        if (id && route_system_set (self->route, id, tags, capacity, exec && exec->online))
            ccm_warn ("system %s: %s", id, route_error (self->route));
        free (tags);
        const char *key = cJSON_GetStringValue (cJSON_GetObjectItem (system, "public_key"));
        if (id && key)
            zhashx_update (self->keys, id, strdup (key));
    }
    cJSON_Delete (reply);
    reply = s_call (self, "context.list", cJSON_CreateObject (), false);
    cJSON *context;
    cJSON_ArrayForEach (context, cJSON_GetObjectItem (reply, "contexts"))
    {
        char *metadata = cJSON_PrintUnformatted (cJSON_GetObjectItem (context, "metadata"));
        if (route_context_set (
                self->route, cJSON_GetStringValue (cJSON_GetObjectItem (context, "system_id")),
                cJSON_GetStringValue (cJSON_GetObjectItem (context, "project_name")),
                cJSON_GetStringValue (cJSON_GetObjectItem (context, "status")), metadata))
            ccm_warn ("context: %s", route_error (self->route));
        free (metadata);
    }
    cJSON_Delete (reply);
    s_reconcile (self);
    self->dirty = true;
}

//  Reads the sync hub's connectivity from the store.
static void
s_load_sync (s_router_t *self)
{
    cJSON *reply = s_call (self, "sync.state", cJSON_CreateObject (), false);
    cJSON *sync = cJSON_GetObjectItem (reply, "sync");
    const char *state = cJSON_GetStringValue (cJSON_GetObjectItem (sync, "state"));
    if (state) {
        snprintf (self->sync_state, sizeof self->sync_state, "%s", state);
        self->connected = cJSON_IsTrue (cJSON_GetObjectItem (sync, "connected"));
    }
    cJSON_Delete (reply);
}

//  A requires_supabase task while sync is not connected: it waits in
//  WaitConnection, or fails once it has waited longer than its timeout_s
//  (router.wait_connection_s without one), counted from its creation.
//  Returns true if the task is held here.
static bool
s_hold_for_connection (s_router_t *self, cJSON *task, const char *id)
{
    if (self->connected || !cJSON_IsTrue (cJSON_GetObjectItem (task, "requires_supabase")))
        return false;
    route_task_remove (self->route, id);
    cJSON *timeout = cJSON_GetObjectItem (task, "timeout_s");
    int64_t limit_s =
        cJSON_IsNumber (timeout) ? (int64_t) timeout->valuedouble : self->wait_connection_s;
    int64_t created = 0;
    ccm_iso_ms (cJSON_GetStringValue (cJSON_GetObjectItem (task, "created_at")), &created);
    if (ccm_wall_ms () - created >= limit_s * 1000) {
        char reason[160];
        snprintf (reason, sizeof reason,
                  "WaitConnection timed out: sync was not connected within %lld s (it is %s)",
                  (long long) limit_s, self->sync_state);
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", id);
        cJSON_AddStringToObject (body, "to", "failed");
        cJSON_AddStringToObject (body, "reason", reason);
        cJSON_Delete (s_call (self, "task.transition", body, true));
        ccm_info ("task %.8s: %s", id, reason);
        return true;
    }
    char *reason =
        zsys_sprintf ("WaitConnection: waits for sync to connect (sync is %s)", self->sync_state);
    zhashx_update (self->waitconn, id, reason);
    return true;
}

//  Reads the queued tasks into the route (all of them, page by page);
//  forgets queued ones that are no longer. Returns the ids read (caller
//  destroys).
static zhashx_t *
s_load_queue (s_router_t *self)
{
    zhashx_t *queued = zhashx_new ();
    int64_t now = ccm_mono_ms ();
    for (int offset = 0;; offset += S_PAGE) {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "status", "queued");
        cJSON_AddNumberToObject (body, "limit", S_PAGE);
        cJSON_AddNumberToObject (body, "offset", offset);
        cJSON *reply = s_call (self, "task.list", body, false);
        cJSON *tasks = cJSON_GetObjectItem (reply, "tasks");
        int count = cJSON_GetArraySize (tasks);
        cJSON *task;
        cJSON_ArrayForEach (task, tasks)
        {
            const char *id = cJSON_GetStringValue (cJSON_GetObjectItem (task, "id"));
            if (!id)
                continue;
            zhashx_insert (queued, id, "");
            if (s_hold_for_connection (self, task, id))
                continue;
            int64_t *until = zhashx_lookup (self->deferred, id);
            if (until && *until > now)
                continue;
            zhashx_delete (self->deferred, id);
            //  FIFO within a priority: the creation time orders them.
            int64_t seq = 0;
            ccm_iso_ms (cJSON_GetStringValue (cJSON_GetObjectItem (task, "created_at")), &seq);
            char *requires =
                cJSON_PrintUnformatted (cJSON_GetObjectItem (task, "requires_context_metadata"));
            //  A review runs where the worktree it reviews is.
            const char *system = cJSON_GetStringValue (cJSON_GetObjectItem (task, "system_id"));
            if (!system)
                system = cJSON_GetStringValue (cJSON_GetObjectItem (task, "review_system_id"));
            if (route_task_add (
                    self->route, id, cJSON_GetStringValue (cJSON_GetObjectItem (task, "priority")),
                    seq, system,
                    cJSON_GetStringValue (cJSON_GetObjectItem (task, "requires_project")),
                    requires))
                ccm_warn ("task %.8s: %s", id, route_error (self->route));
            free (requires);
        }
        cJSON_Delete (reply);
        if (count < S_PAGE)
            break;
    }
    //  A task that left the queue (cancelled, or placed by someone else).
    for (const char *id = zhashx_first (self->reasons); id; id = zhashx_next (self->reasons))
        if (!zhashx_lookup (queued, zhashx_cursor (self->reasons)))
            route_task_remove (self->route, zhashx_cursor (self->reasons));
    return queued;
}

//  --------------------------------------------------------------------------
//  Placing tasks

//  Writes why the task waits, when it differs from what was written.
static void
s_say_reason (s_router_t *self, const char *task_id, const char *reason)
{
    const char *said = zhashx_lookup (self->reasons, task_id);
    if (said && strcmp (said, reason) == 0)
        return;
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", task_id);
    cJSON_AddStringToObject (body, "reason", reason);
    cJSON_Delete (s_call (self, "task.reason", body, true));
    zhashx_update (self->reasons, task_id, strdup (reason));
}

//  Moves the task to assigned on the executor and sends it RUN. Returns 0,
//  or -1 if the store refused (the task is deferred, with the reason).
static int
s_place (s_router_t *self, const route_decision_t *decision)
{
    s_exec_t *exec = zhashx_lookup (self->execs, decision->system_id);
    char why[512] = "";
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", decision->task_id);
    cJSON_AddStringToObject (body, "to", "assigned");
    cJSON_AddStringToObject (body, "locked_by", decision->system_id);
    char reason[ROUTE_REASON_MAX + 64];
    snprintf (reason, sizeof reason, "routed to system %.8s%s%s", decision->system_id,
              *decision->project ? ", project " : "", decision->project);
    cJSON_AddStringToObject (body, "reason", reason);
    cJSON *reply = exec ? s_call_why (self, "task.transition", body, true, why, sizeof why) : NULL;
    if (!exec)
        cJSON_Delete (body);
    if (!reply) {
        //  Not ours to run now (a dependency, a cancel, another router):
        //  say why, and look again later rather than at every pass.
        route_task_remove (self->route, decision->task_id);
        int64_t *until = malloc (sizeof *until);
        *until = ccm_mono_ms () + S_DEFER_MS;
        zhashx_update (self->deferred, decision->task_id, until);
        if (*why)
            s_say_reason (self, decision->task_id, why);
        return -1;
    }
    int attempt = (int) cJSON_GetNumberValue (
        cJSON_GetObjectItem (cJSON_GetObjectItem (reply, "task"), "attempts"));
    cJSON_Delete (reply);
    s_track (self, decision->task_id, decision->system_id, attempt);
    zhashx_delete (self->reasons, decision->task_id);
    zmsg_t *msg = zmsg_new ();
    zmsg_add (msg, zframe_dup (exec->identity));
    zmsg_addstr (msg, "RUN");
    char *text = zsys_sprintf ("{\"v\":1,\"task_id\":\"%s\"}", decision->task_id);
    zmsg_addstr (msg, text);
    zstr_free (&text);
    if (zmsg_send (&msg, self->dispatch))
        zmsg_destroy (&msg);
    ccm_info ("task %.8s -> system %.8s (%s context%s%s)", decision->task_id, decision->system_id,
              *decision->context_status ? decision->context_status : "no",
              *decision->project ? " " : "", decision->project);
    return 0;
}

//  One pass: the queue from the store, then every task that can go.
static void
s_pass (s_router_t *self)
{
    self->dirty = false;
    zhashx_purge (self->waitconn);
    zhashx_t *queued = s_load_queue (self);
    route_decision_t decision;
    while (route_next (self->route, &decision))
        s_place (self, &decision);
    //  What still waits says why.
    for (void *item = zhashx_first (queued); item; item = zhashx_next (queued)) {
        const char *id = zhashx_cursor (queued);
        const char *reason = zhashx_lookup (self->waitconn, id);
        if (!reason)
            reason = route_task_reason (self->route, id);
        if (reason)
            s_say_reason (self, id, reason);
    }
    zhashx_destroy (&queued);
}

//  --------------------------------------------------------------------------
//  Executors

static void
s_send (s_router_t *self, s_exec_t *exec, const char *verb, const char *json)
{
    zmsg_t *msg = zmsg_new ();
    zmsg_add (msg, zframe_dup (exec->identity));
    zmsg_addstr (msg, verb);
    zmsg_addstr (msg, json);
    if (zmsg_send (&msg, self->dispatch))
        zmsg_destroy (&msg);
}

//  Tells the store whether the executor is up (a heartbeat, now and then),
//  or down (its tasks are requeued), and the route too.
static void
s_set_online (s_router_t *self, s_exec_t *exec, bool online, const char *reason)
{
    int64_t now = ccm_mono_ms ();
    bool changed = exec->online != online;
    exec->online = online;
    if (!changed && (!online || now - exec->seen_ms < S_SEEN_MS))
        return;
    exec->seen_ms = now;
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "system_id", exec->system_id);
    cJSON_AddStringToObject (body, "status", online ? "online" : "offline");
    if (reason)
        cJSON_AddStringToObject (body, "reason", reason);
    cJSON *reply = s_call (self, "system.status", body, true);
    cJSON *task;
    cJSON_ArrayForEach (task, cJSON_GetObjectItem (reply, "requeued"))
    {
        s_untrack (self, task->valuestring);
        ccm_info ("task %.8s: back in the queue (%s)", task->valuestring, reason);
    }
    cJSON_ArrayForEach (task, cJSON_GetObjectItem (reply, "failed"))
        s_untrack (self, task->valuestring);
    cJSON_Delete (reply);
    if (changed) {
        ccm_info ("system %.8s is %s%s%s", exec->system_id, online ? "online" : "offline",
                  reason ? ": " : "", reason ? reason : "");
        if (route_system_set_online (self->route, exec->system_id, online))
            s_load_systems (self);  //  new to the route: read it from the store
        self->dirty = true;
    }
}

//  Whether the peer of key (its frames' User-Id over tcp://, else NULL) may
//  speak for system id: over tcp:// only the key that registered it can.
static bool
s_peer_is (s_router_t *self, const char *id, const char *key)
{
    if (!key || strlen (key) != 40 || strcmp (key, ccm_bus_public_key ()) == 0)
        return true;
    if (!zhashx_lookup (self->keys, id))
        s_load_systems (self);
    const char *known = zhashx_lookup (self->keys, id);
    return known && strcmp (known, key) == 0;
}

static void
s_heartbeat (s_router_t *self, zframe_t *identity, cJSON *body, const char *key)
{
    const char *id = cJSON_GetStringValue (cJSON_GetObjectItem (body, "system_id"));
    cJSON *running = cJSON_GetObjectItem (body, "running");
    if (!id || !*id || strlen (id) >= ROUTE_ID_MAX || !cJSON_IsArray (running)) {
        ccm_warn ("a malformed HEARTBEAT (needs system_id and running); ignored");
        return;
    }
    if (!s_peer_is (self, id, key)) {
        ccm_warn ("a HEARTBEAT for system %.36s from key %s, which did not register it;"
                  " ignored",
                  id, key);
        return;
    }
    s_exec_t *exec = zhashx_lookup (self->execs, id);
    if (!exec) {
        exec = calloc (1, sizeof *exec);
        snprintf (exec->system_id, sizeof exec->system_id, "%s", id);
        zhashx_insert (self->execs, id, exec);
        s_load_systems (self);
    }
    //  A restarted executor comes back on a new socket.
    if (!exec->identity || !zframe_eq (exec->identity, identity)) {
        zframe_destroy (&exec->identity);
        exec->identity = zframe_dup (identity);
    }
    exec->heard_ms = ccm_mono_ms ();
    s_set_online (self, exec, true, NULL);
    s_send (self, exec, "HEARTBEAT", "{\"v\":1}");
}

static int
s_dispatch_readable (zloop_t *loop, zsock_t *reader, void *arg)
{
    (void) loop;
    s_router_t *self = arg;
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
    if (!identity || !verb || !cJSON_IsObject (body))
        ccm_warn ("a malformed message on the dispatch socket (%s); ignored",
                  !verb    ? "no verb"
                  : !frame ? "no body"
                           : "body not a JSON object");
    else if (strcmp (verb, "HEARTBEAT") == 0)
        s_heartbeat (self, identity, body, zframe_meta (frame, "User-Id"));
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
    s_router_t *self = arg;
    while (zsock_events (reader) & ZMQ_POLLIN) {
        zmsg_t *msg = zmsg_recv (reader);
        char *topic = msg ? zmsg_popstr (msg) : NULL;
        if (topic && (strncmp (topic, "systems.", 8) == 0 || strncmp (topic, "contexts.", 9) == 0))
            s_load_systems (self);
        else if (topic && strcmp (topic, "sync.state") == 0)
            s_load_sync (self);
        else if (topic && strcmp (topic, "task.status") == 0) {
            //  A task that stopped frees its executor's slot.
            zframe_t *seq = zmsg_pop (msg);
            zframe_destroy (&seq);
            char *text = zmsg_popstr (msg);
            cJSON *event = text ? cJSON_Parse (text) : NULL;
            cJSON *data = cJSON_GetObjectItem (event, "data");
            const char *from = cJSON_GetStringValue (cJSON_GetObjectItem (data, "from"));
            const char *to = cJSON_GetStringValue (cJSON_GetObjectItem (data, "to"));
            const char *task = cJSON_GetStringValue (cJSON_GetObjectItem (event, "entity_id"));
            int attempt = (int) cJSON_GetNumberValue (cJSON_GetObjectItem (data, "attempts"));
            //  The end of a run (back to the queue, or over) frees its slot;
            //  only that run's: an event may arrive after the task was
            //  placed again (or, for a new task, after it was first placed).
            bool ended = from && to
                         && (strcmp (from, "assigned") == 0 || strcmp (from, "executing") == 0)
                         && strcmp (to, "executing") != 0;
            const char *held = task ? zhashx_lookup (self->running, task) : NULL;
            const char *tab = held ? strchr (held, '\t') : NULL;
            if (ended && tab && atoi (tab + 1) == attempt)
                s_untrack (self, task);
            //  A run that failed is tried again while attempts are left,
            //  after 1, 2, 4... times router.retry_base_ms, plus jitter.
            if (ended && strcmp (to, "failed") == 0 && attempt >= 1
                && attempt < self->max_attempts) {
                int64_t *when = malloc (sizeof *when);
                int64_t delay = self->retry_base_ms << (attempt - 1);
                *when = ccm_mono_ms () + delay + randof (self->retry_base_ms / 2 + 1);
                zhashx_update (self->retries, task, when);
            }
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

//  Every beat: executors silent too long go offline; a pass if needed.
static int
s_tick (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop, (void) timer_id;
    s_router_t *self = arg;
    int64_t now = ccm_mono_ms ();
    //  The loop turns: tell systemd (its watchdog, when it set one).
    if (self->watchdog)
        ccm_notify ("WATCHDOG=1");
    for (s_exec_t *exec = zhashx_first (self->execs); exec; exec = zhashx_next (self->execs))
        if (exec->online && now - exec->heard_ms > self->heartbeat_ms * self->liveness) {
            char reason[96];
            snprintf (reason, sizeof reason, "no heartbeat for %lld ms",
                      (long long) (now - exec->heard_ms));
            s_set_online (self, exec, false, reason);
        }
    //  Failed tasks whose backoff is over go back to the queue.
    zlistx_t *due = zlistx_new ();
    zlistx_set_destructor (due, (zlistx_destructor_fn *) zstr_free);
    for (int64_t *when = zhashx_first (self->retries); when; when = zhashx_next (self->retries))
        if (*when <= now)
            zlistx_add_end (due, strdup (zhashx_cursor (self->retries)));
    for (const char *task = zlistx_first (due); task; task = zlistx_next (due)) {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", task);
        cJSON_AddStringToObject (body, "to", "queued");
        cJSON_AddStringToObject (body, "reason", "retry after a failed attempt");
        cJSON_Delete (s_call (self, "task.transition", body, true));
        zhashx_delete (self->retries, task);  //  done, or no longer failed (a user's retry)
    }
    zlistx_destroy (&due);
    //  Deferred tasks come back, and a dropped event costs a beat at most.
    if (now - self->reconciled_ms >= S_RECONCILE_MS)
        s_reconcile (self);
    s_pass (self);
    return 0;
}

int
router_main (ccm_config_t *config)
{
    s_router_t self = {.config = config};
    self.heartbeat_ms = ccm_config_int (config, "router.heartbeat_ms");
    self.liveness = (int) ccm_config_int (config, "router.liveness");
    if (self.heartbeat_ms < 10)
        self.heartbeat_ms = 10;
    if (self.liveness < 1)
        self.liveness = 1;
    const char *endpoint = ccm_config_str (config, "router.endpoint");
    self.route = route_new ();
    self.execs = zhashx_new ();
    zhashx_set_destructor (self.execs, (zhashx_destructor_fn *) s_exec_destroy);
    self.reasons = zhashx_new ();
    zhashx_set_destructor (self.reasons, (zhashx_destructor_fn *) zstr_free);
    self.deferred = zhashx_new ();
    zhashx_set_destructor (self.deferred, (zhashx_destructor_fn *) zstr_free);
    self.retries = zhashx_new ();
    zhashx_set_destructor (self.retries, (zhashx_destructor_fn *) zstr_free);
    self.retry_base_ms = ccm_config_int (config, "router.retry_base_ms");
    if (self.retry_base_ms < 1)
        self.retry_base_ms = 1;
    self.max_attempts = (int) ccm_config_int (config, "store.max_attempts");
    self.running = zhashx_new ();
    zhashx_set_destructor (self.running, (zhashx_destructor_fn *) zstr_free);
    self.keys = zhashx_new ();
    zhashx_set_destructor (self.keys, (zhashx_destructor_fn *) zstr_free);
    self.waitconn = zhashx_new ();
    zhashx_set_destructor (self.waitconn, (zhashx_destructor_fn *) zstr_free);
    self.wait_connection_s = ccm_config_int (config, "router.wait_connection_s");
    self.watchdog = ccm_notify_watchdog_ms () > 0;
    snprintf (self.sync_state, sizeof self.sync_state, "LocalOnly");
    self.store = ccm_client_new (ccm_config_str (config, "store.endpoint"),
                                 (int) ccm_config_int (config, "bus.timeout_ms"),
                                 (int) ccm_config_int (config, "bus.retries"));
    self.dispatch = ccm_bus_router_bind (endpoint, S_MAX_MESSAGE);
    self.events = ccm_bus_sub_connect (ccm_config_str (config, "store.pub_endpoint"), "task.");
    int rc = 1;
    if (self.store && self.dispatch && self.events) {
        zsock_set_subscribe (self.events, "systems.");
        zsock_set_subscribe (self.events, "contexts.");
        zsock_set_subscribe (self.events, "sync.state");
        self.loop = zloop_new ();
        zloop_reader (self.loop, self.dispatch, s_dispatch_readable, &self);
        zloop_reader (self.loop, self.events, s_event, &self);
        zloop_timer (self.loop, (size_t) self.heartbeat_ms, 0, s_tick, &self);
        s_load_systems (&self);
        s_load_sync (&self);
        ccm_info ("ready: executors on %s, heartbeat %lld ms, liveness %d", endpoint,
                  (long long) self.heartbeat_ms, self.liveness);
        zloop_start (self.loop);
        zloop_destroy (&self.loop);
        rc = 0;
    }
    else
        ccm_error ("cannot start: %s", !self.dispatch ? endpoint : "the store's sockets");
    zsock_destroy (&self.events);
    zsock_destroy (&self.dispatch);
    ccm_client_destroy (&self.store);
    zhashx_destroy (&self.deferred);
    zhashx_destroy (&self.running);
    zhashx_destroy (&self.retries);
    zhashx_destroy (&self.waitconn);
    zhashx_destroy (&self.keys);
    zhashx_destroy (&self.reasons);
    zhashx_destroy (&self.execs);
    route_destroy (&self.route);
    return rc;
}

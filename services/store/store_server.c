/*  store_server: the request loop and group commit.

    Each turn of the loop takes every request already waiting on the ROUTER
    (up to store.batch_max requests, or until store.batch_rows hook rows are
    in), runs them in one transaction, each write inside its own SAVEPOINT so
    one bad request cannot spoil the others, COMMITs, and only then sends the
    replies and publishes the new events. So an "ok" always means durable,
    and concurrent writers share one fsync.

    hook.add, the hot path, skips the SAVEPOINT: it validates its whole
    request before its first write, so a refusal leaves nothing to undo. If
    a write fails after all (disk full, I/O error), the whole transaction is
    rolled back and every write of the batch is told to retry.              */

#include "store_internal.h"

#include "ccm_bus.h"
#include "ccm_log.h"
#include "ccm_notify.h"

#include <errno.h>
#include <sys/file.h>
#include <unistd.h>

#define S_IDEM_MAX 128
#define S_ID_MAX   128

//  A write handler is "atomic" when it checks all of its input before its
//  first write, so that refusing a request never leaves a row to undo.
static const struct {
    const char *verb;
    bool write;
    bool atomic;
    store_handler_fn *handler;
} s_verbs[] = {
    {"ping", false, false, store_ping},
    {"stats", false, false, store_stats},
    {"project.add", true, false, store_project_add},
    {"project.list", false, false, store_project_list},
    {"task.add", true, false, store_task_add},
    {"task.get", false, false, store_task_get},
    {"task.list", false, false, store_task_list},
    {"task.transition", true, false, store_task_transition},
    {"task.cancel", true, false, store_task_cancel},
    {"task.depend", true, false, store_task_depend},
    {"task.reason", true, false, store_task_reason},
    {"hook.add", true, true, store_hook_add},
    {"hook.list", false, false, store_hook_list},
    {"automation.add", true, false, store_automation_add},
    {"events.since", false, false, store_events_since},
    {"system.register", true, false, store_system_register},
    {"context.upsert", true, false, store_context_upsert},
    {"system.list", false, false, store_system_list},
    {"system.status", true, false, store_system_status},
    {"context.list", false, false, store_context_list},
    {"task.claim", true, false, store_task_claim},
    {"task.result", true, false, store_task_result},
    {"task.progress", true, false, store_task_progress},
    {"agent.upsert", true, false, store_agent_upsert},
    {"worktree.upsert", true, false, store_worktree_upsert},
    {"worktree.list", false, false, store_worktree_list},
    {"sync.state", false, false, store_sync_state},
    {"sync.set_state", true, false, store_sync_set_state},
    {"report.add", true, false, store_report_add},
    {"report.list", false, false, store_report_list},
    {"agent.list", false, false, store_agent_list},
    {"permission.request", true, false, store_permission_request},
    {"permission.answer", true, false, store_permission_answer},
    {"permission.close", true, false, store_permission_close},
    {"permission.list", false, false, store_permission_list},
    {"sync.pending", false, false, store_sync_pending},
    {"sync.mark", true, true, store_sync_mark},
    {"sync.apply", true, false, store_sync_apply},
    {"sync.watch", false, false, store_sync_watch},
    {"sync.meta", false, false, store_sync_meta},
    {"sync.meta.set", true, false, store_sync_meta_set},
    {"sync.status", false, false, store_sync_status},
};

//  A reply waiting for COMMIT.
typedef struct {
    zframe_t *identity;
    bool delimiter;  //  the client is a REQ socket: echo its empty frame
    bool write;      //  only writes are undone by a failed COMMIT
    bool ok;
    char *body;  //  JSON text, "id" already inside
} s_reply_t;

//  Returns reply text with the correlation id (if any) inserted first.
static char *
s_with_id (const char *text, const char *id)
{
    if (!id)
        return strdup (text);
    cJSON *item = cJSON_CreateString (id);
    char *quoted = cJSON_PrintUnformatted (item);
    cJSON_Delete (item);
    char *out = NULL;
    if (!quoted || asprintf (&out, "{\"id\":%s,%s", quoted, text + 1) < 0)
        out = NULL;
    free (quoted);
    return out;
}

static void
s_set_error (s_reply_t *reply, const ccm_error_t *err, const char *id)
{
    cJSON *body = ccm_msg_error_body (err);
    char *text = cJSON_PrintUnformatted (body);
    cJSON_Delete (body);
    reply->ok = false;
    free (reply->body);
    reply->body = text ? s_with_id (text, id) : NULL;
    free (text);
}

//  Looks up a committed write by idempotency key: 1 found (reply_text set,
//  caller frees), 0 not found, -1 with err set.
static int
s_idem_lookup (store_t *self, const char *key, const char *verb, char **reply_text,
               ccm_error_t *err)
{
    sqlite3_bind_text (self->idem_get, 1, key, -1, SQLITE_STATIC);
    int rc = sqlite3_step (self->idem_get);
    int found = 0;
    if (rc == SQLITE_ROW) {
        const char *stored_verb = (const char *) sqlite3_column_text (self->idem_get, 0);
        if (strcmp (stored_verb, verb) != 0)
            found = ccm_fail (err, "idem_conflict", "idem",
                              "idem: key already used for a %s request", stored_verb);
        else {
            *reply_text = strdup ((const char *) sqlite3_column_text (self->idem_get, 1));
            found = 1;
        }
    }
    else if (rc != SQLITE_DONE)
        found = store_db_fail (self, err, "idempotency lookup");
    sqlite3_reset (self->idem_get);
    return found;
}

//  Runs one write handler inside a SAVEPOINT (unless it is atomic) and
//  remembers its reply under the idempotency key. Returns 0 with *text set,
//  or -1 with err set.
static int
s_run_write (store_t *self, int v, const char *key, cJSON *body, char **text, ccm_error_t *err)
{
    int found = s_idem_lookup (self, key, s_verbs[v].verb, text, err);
    if (found)
        return found < 0 ? -1 : 0;

    bool savepoint = !s_verbs[v].atomic;
    int64_t changes = sqlite3_total_changes64 (self->db);
    if (savepoint && store_db_run (self->savepoint) != SQLITE_DONE)
        return store_db_fail (self, err, "savepoint");
    cJSON *result = cJSON_CreateObject ();
    cJSON_AddNumberToObject (result, "v", CCM_PROTOCOL_VERSION);
    int rc = s_verbs[v].handler (self, body, result, err);
    if (rc == 0) {
        *text = cJSON_PrintUnformatted (result);
        sqlite3_bind_text (self->idem_put, 1, key, -1, SQLITE_STATIC);
        sqlite3_bind_text (self->idem_put, 2, s_verbs[v].verb, -1, SQLITE_STATIC);
        sqlite3_bind_text (self->idem_put, 3, *text ? *text : "{}", -1, SQLITE_STATIC);
        if (!*text || store_db_run (self->idem_put) != SQLITE_DONE) {
            rc = store_db_fail (self, err, "idempotency record");
            free (*text);
            *text = NULL;
        }
    }
    cJSON_Delete (result);
    if (!savepoint) {
        //  Refused before its first write: nothing to undo. Refused after
        //  one: only rolling back the whole transaction undoes it.
        if (rc && sqlite3_total_changes64 (self->db) != changes)
            self->poisoned = true;
    }
    else if (rc == 0)
        store_db_run (self->release);
    else {
        store_db_run (self->rollback_to);
        store_db_run (self->release);
    }
    return rc;
}

//  Handles one request message; fills reply. Takes ownership of msg.
static void
s_handle (store_t *self, zmsg_t *msg, s_reply_t *reply)
{
    self->requests++;
    ccm_error_t err = {0};
    cJSON *body = NULL;
    const char *id = NULL;
    reply->identity = zmsg_pop (msg);
    zframe_t *first = zmsg_first (msg);
    if (first && zframe_size (first) == 0) {
        reply->delimiter = true;
        zframe_t *empty = zmsg_pop (msg);
        zframe_destroy (&empty);
    }
    zframe_t *verb_frame = zmsg_first (msg);
    zframe_t *body_frame = zmsg_next (msg);
    //  Over tcp:// the peer is its CurveZMQ key, as zauth accepted it.
    const char *user = verb_frame ? zframe_meta (verb_frame, "User-Id") : NULL;
    snprintf (self->peer_key, sizeof self->peer_key, "%s", user && strlen (user) == 40 ? user : "");
    int v = -1;
    if (zmsg_size (msg) != 2)
        ccm_fail (&err, "bad_frame", "", "expected 2 frames [verb][body], got %zu",
                  zmsg_size (msg));
    else if (!ccm_verb_valid ((const char *) zframe_data (verb_frame), zframe_size (verb_frame)))
        ccm_fail (&err, "bad_frame", "verb", "verb: must be 1-%d bytes of [a-z0-9._-]",
                  CCM_VERB_MAX);
    else if ((body = ccm_msg_parse_body (zframe_data (body_frame), zframe_size (body_frame),
                                         self->max_body, &err))
             && ccm_get_string (body, "id", false, S_ID_MAX, &id, &err) == 0) {
        for (size_t i = 0; i < sizeof s_verbs / sizeof s_verbs[0]; i++)
            if (zframe_streq (verb_frame, s_verbs[i].verb))
                v = (int) i;
        if (v < 0) {
            char *verb = zframe_strdup (verb_frame);
            ccm_fail (&err, "unknown_verb", "verb", "unknown verb '%s'", verb);
            free (verb);
        }
    }
    char *text = NULL;
    if (v >= 0 && s_verbs[v].write) {
        const char *key = NULL;
        reply->write = true;
        if (ccm_get_string (body, "idem", true, S_IDEM_MAX, &key, &err) == 0)
            s_run_write (self, v, key, body, &text, &err);
    }
    else if (v >= 0) {
        cJSON *result = cJSON_CreateObject ();
        cJSON_AddNumberToObject (result, "v", CCM_PROTOCOL_VERSION);
        if (s_verbs[v].handler (self, body, result, &err) == 0)
            text = cJSON_PrintUnformatted (result);
        cJSON_Delete (result);
    }
    if (text) {
        reply->ok = true;
        reply->body = s_with_id (text, id);
        free (text);
    }
    else {
        if (!err.code)
            ccm_fail (&err, "internal", "", "out of memory");
        self->errors++;
        ccm_debug ("request refused: %s: %s", err.code, err.message);
        s_set_error (reply, &err, id);
    }
    cJSON_Delete (body);
    zmsg_destroy (&msg);
}

static void
s_send_reply (store_t *self, s_reply_t *reply)
{
    zmsg_t *out = zmsg_new ();
    zmsg_append (out, &reply->identity);
    if (reply->delimiter)
        zmsg_addmem (out, "", 0);
    zmsg_addstr (out, reply->ok ? "ok" : "error");
    zmsg_addmem (out, reply->body ? reply->body : "{}", reply->body ? strlen (reply->body) : 2);
    //  ROUTER_MANDATORY and a zero send timeout: a client that went away
    //  (EHOSTUNREACH) or stopped reading (EAGAIN) loses its reply; its write
    //  is committed all the same, and a retry with its idem gets the reply.
    if (zmsg_send (&out, self->router)) {
        self->dropped++;
        //  A flooding client must not flood the log too: warn at 1, 2, 4, 8...
        if ((self->dropped & (self->dropped - 1)) == 0)
            ccm_warn ("reply dropped: %s (%llu so far)", zmq_strerror (zmq_errno ()),
                      (unsigned long long) self->dropped);
    }
    zmsg_destroy (&out);
    free (reply->body);
    reply->body = NULL;
}

//  Takes every waiting request (up to batch_max, or until batch_rows hook
//  rows are in), runs them in one transaction, then replies and publishes.
//  The row bound keeps transactions short, so replies flow while clients
//  keep sending instead of all arriving at once after one huge COMMIT.
static void
s_batch (store_t *self, s_reply_t *replies)
{
    int count = 0;
    self->txn_rows = 0;
    self->poisoned = false;
    bool began = store_db_run (self->begin) == SQLITE_DONE;
    while (count < self->batch_max && self->txn_rows < self->batch_rows && !self->poisoned
           && (zsock_events (self->router) & ZMQ_POLLIN)) {
        zmsg_t *msg = zmsg_recv (self->router);
        if (!msg)
            break;
        memset (&replies[count], 0, sizeof replies[count]);
        s_handle (self, msg, &replies[count]);
        count++;
    }
    char why[300];
    snprintf (why, sizeof why, "a write of this batch failed (%s)", sqlite3_errmsg (self->db));
    bool committed = began && !self->poisoned && store_db_run (self->commit) == SQLITE_DONE;
    if (!committed) {
        if (!self->poisoned)
            snprintf (why, sizeof why, "commit failed: %s", sqlite3_errmsg (self->db));
        ccm_error ("%s; rolling back %d request(s)", why, count);
        store_db_run (self->rollback);
        ccm_error_t err;
        ccm_fail (&err, "internal", "", "%s; nothing was written, retry", why);
        for (int i = 0; i < count; i++)
            if (replies[i].write && replies[i].ok)
                s_set_error (&replies[i], &err, NULL);
    }
    else
        self->commits++;
    for (int i = 0; i < count; i++)
        s_send_reply (self, &replies[i]);
    if (committed)
        store_events_publish (self);
}

//  Takes the per-home lock so two stores never share one database.
static int
s_lock (store_t *self, char **error)
{
    char path[4096];
    snprintf (path, sizeof path, "%s/run/store.lock", ccm_config_home (self->config));
    self->lock_fd = open (path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (self->lock_fd < 0 || flock (self->lock_fd, LOCK_EX | LOCK_NB)) {
        if (asprintf (error, "another ccm-store is running for %s (lock %s)",
                      ccm_config_home (self->config), path)
            < 0)
            *error = NULL;
        return -1;
    }
    return 0;
}

static int
s_prepare_all (store_t *self)
{
    sqlite3 *db = self->db;
    self->begin = store_db_prepare (db, "BEGIN IMMEDIATE");
    self->commit = store_db_prepare (db, "COMMIT");
    self->rollback = store_db_prepare (db, "ROLLBACK");
    self->savepoint = store_db_prepare (db, "SAVEPOINT request");
    self->release = store_db_prepare (db, "RELEASE request");
    self->rollback_to = store_db_prepare (db, "ROLLBACK TO request");
    self->idem_get = store_db_prepare (db, "SELECT verb, reply FROM idempotency WHERE key = ?");
    self->idem_put =
        store_db_prepare (db, "INSERT INTO idempotency (key, verb, reply) VALUES (?, ?, ?)");
    self->hook_insert = store_db_prepare (
        db, "INSERT OR IGNORE INTO hook_events (uid, task_id, agent_id, system_id, session_id,"
            " hook_type, hook_timestamp, event_data, tool_name, file_path, success, created_at)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)");
    self->hook_event =
        store_db_prepare (db, "INSERT INTO events (topic, ts, entity, entity_id, task_id, data)"
                              " VALUES ('hook.added', ?, 'hook_events', ?, ?, ?)");
    self->events_after = store_db_prepare (
        db, "SELECT seq, topic, json_object('v', 1, 'seq', seq, 'topic', topic, 'ts', ts,"
            " 'entity', entity, 'entity_id', entity_id, 'task_id', task_id, 'data', json(data))"
            " FROM events WHERE seq > ? ORDER BY seq");
    return self->begin && self->commit && self->rollback && self->savepoint && self->release
                   && self->rollback_to && self->idem_get && self->idem_put && self->hook_insert
                   && self->hook_event && self->events_after
               ? 0
               : -1;
}

//  ccm_max_attempts(): store.max_attempts, for the TASK JSON's max_attempts.
static void
s_max_attempts (sqlite3_context *context, int argc, sqlite3_value **argv)
{
    (void) argc, (void) argv;
    store_t *self = sqlite3_user_data (context);
    sqlite3_result_int (context, self->max_attempts);
}

//  The SQL functions of the store's connection. Returns 0 or -1.
static int
s_functions (store_t *self)
{
    int rc = sqlite3_create_function (self->db, "ccm_max_attempts", 0,
                                      SQLITE_UTF8 | SQLITE_DETERMINISTIC, self, s_max_attempts,
                                      NULL, NULL);
    if (rc != SQLITE_OK)
        ccm_error ("sqlite3_create_function: %s", sqlite3_errmsg (self->db));
    return rc == SQLITE_OK ? 0 : -1;
}

store_t *
store_new (ccm_config_t *config, char **error)
{
    *error = NULL;
    store_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->config = config;
    self->lock_fd = -1;
    self->max_attempts = (int) ccm_config_int (config, "store.max_attempts");
    //  The store keeps the retry schedule; the router's key names its base.
    self->retry_base_ms = ccm_config_int (config, "router.retry_base_ms");
    if (self->retry_base_ms < 1)
        self->retry_base_ms = 1;
    //  Only the retries' jitter draws from random ().
    srandom ((unsigned) (zclock_time () ^ getpid ()));
    self->max_body = (size_t) ccm_config_int (config, "store.max_body");
    self->batch_max = (int) ccm_config_int (config, "store.batch_max");
    if (self->batch_max < 1)
        self->batch_max = 1;
    self->batch_rows = ccm_config_int (config, "store.batch_rows");
    if (self->batch_rows < 1)
        self->batch_rows = 1;

    const char *endpoint = ccm_config_str (config, "store.endpoint");
    const char *pub_endpoint = ccm_config_str (config, "store.pub_endpoint");
    char run[4096];
    snprintf (run, sizeof run, "ipc://%s/run/store.lock", ccm_config_home (config));
    if (ccm_bus_prepare (run) || s_lock (self, error)) {
        if (!*error
            && asprintf (error, "%s/run: %s", ccm_config_home (config), strerror (errno)) < 0)
            *error = NULL;
        store_destroy (&self);
        return NULL;
    }
    self->db = store_db_open (ccm_config_str (config, "store.db_path"),
                              ccm_config_str (config, "store.synchronous"), error);
    if (!self->db || s_functions (self) || s_prepare_all (self)) {
        if (!*error && asprintf (error, "cannot prepare statements") < 0)
            *error = NULL;
        store_destroy (&self);
        return NULL;
    }
    self->published_seq = store_db_last_seq (self->db);
    //  Four times the body limit: bigger messages are cut off by libzmq itself.
    self->router = ccm_bus_router_bind (endpoint, self->max_body * 4 + 4096);
    self->pub = self->router ? ccm_bus_pub_bind (pub_endpoint) : NULL;
    if (!self->router || !self->pub) {
        if (asprintf (error, "cannot bind %s: %s", self->router ? pub_endpoint : endpoint,
                      zmq_strerror (zmq_errno ()))
            < 0)
            *error = NULL;
        store_destroy (&self);
        return NULL;
    }
    ccm_info ("ready: requests on %s, events on %s, seq %lld", endpoint, pub_endpoint,
              (long long) self->published_seq);
    return self;
}

void
store_destroy (store_t **self_p)
{
    if (self_p && *self_p) {
        store_t *self = *self_p;
        zsock_destroy (&self->router);
        zsock_destroy (&self->pub);
        sqlite3_stmt *stmts[] = {self->begin,      self->commit,      self->rollback,
                                 self->savepoint,  self->release,     self->rollback_to,
                                 self->idem_get,   self->idem_put,    self->hook_insert,
                                 self->hook_event, self->events_after};
        for (size_t i = 0; i < sizeof stmts / sizeof stmts[0]; i++)
            sqlite3_finalize (stmts[i]);
        if (self->db && sqlite3_close (self->db) != SQLITE_OK)
            ccm_error ("close: %s", sqlite3_errmsg (self->db));
        if (self->lock_fd >= 0)
            close (self->lock_fd);
        free (self);
        *self_p = NULL;
    }
}

int
store_run (store_t *self)
{
    s_reply_t *replies = calloc ((size_t) self->batch_max, sizeof *replies);
    if (!replies)
        return -1;
    int64_t watchdog_ms = ccm_notify_watchdog_ms ();
    int64_t next_ping = zclock_mono ();
    ccm_notify ("READY=1");
    zmq_pollitem_t item = {zsock_resolve (self->router), 0, ZMQ_POLLIN, 0};
    while (!zsys_interrupted) {
        int64_t now = zclock_mono ();
        if (watchdog_ms && now >= next_ping) {
            ccm_notify ("WATCHDOG=1");
            next_ping = now + watchdog_ms / 3;
        }
        long timeout = watchdog_ms ? (long) (watchdog_ms / 3) : 1000;
        int rc = zmq_poll (&item, 1, timeout);
        if (rc < 0 && zmq_errno () != EINTR)
            break;
        if (rc > 0)
            s_batch (self, replies);
    }
    ccm_notify ("STOPPING=1");
    ccm_info ("stopping: %llu requests, %llu refused, %llu commits, %llu replies dropped",
              (unsigned long long) self->requests, (unsigned long long) self->errors,
              (unsigned long long) self->commits, (unsigned long long) self->dropped);
    free (replies);
    return 0;
}

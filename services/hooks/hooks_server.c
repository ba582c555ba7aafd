/*  hooks_server: the ingester's loop (zloop).

    - A unix socket takes records from ccm-hook. Each record goes to the
      journal (one write) before the ack, so once ccm-hook exits the event
      survives a kill -9 of the ingester.
    - Events wait in `pending` and go to the store as one hook.add batch,
      one batch in flight at a time: while a batch commits, the next fills.
    - The files a batch makes redundant (sealed journal segments, drained
      spool files) are deleted only when the store acks the batch.
    - Agent states derived from the events go to the store as agent.upsert,
      the latest per agent, between batches.
    - A PermissionRequest that a policy asks about is parked (hook_wire.h):
      its connection stays open, a permission_requests row is written
      (permission.request), and the answer (permission.answered, heard on
      the store's events and polled for, since PUB may drop) is written
      back to the waiting ccm-hook. These requests go over a line of
      their own, so they never wait behind a batch of hook events.
    - Both lines to the store are ccm_req requesters on the loop, each one
      request at a time (so in order), resent with the same idem until the
      store answers: nothing here ever waits for the store.
    - READY=1 goes out once the socket listens and the journal and spool
      left by an earlier run are read back: from then on an event is taken. */

#include "hooks.h"
#include "hooks_internal.h"

#include "ccm_bus.h"
#include "ccm_id.h"
#include "ccm_log.h"
#include "ccm_msg.h"
#include "ccm_notify.h"
#include "ccm_req.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#define S_CONN_MAX        1024  //  ccm-hook connections open at once
#define S_SPOOL_SCAN_MS   1000  //  how often the spool is looked at
#define S_RECV_TIMEOUT_MS 5000  //  a connection that sends nothing is closed
#define S_REPLY_MS        100   //  the most a reply may wait for room in the socket
#define S_PARK_MAX        1024  //  PermissionRequests waiting for an answer at once
#define S_PARK_POLL_MS    1000  //  how often answers are also polled for

//  A parked PermissionRequest: a ccm-hook waiting for a human's answer.
typedef struct {
    hooks_t *owner;
    int fd;
    char id[CCM_UUID_LEN + 1];  //  its permission_requests row
    char task[64];
    char event_uid[64];
    char rule[300];
    int64_t deadline_ms;
    bool recorded;  //  the store has its row
} s_park_t;

//  One ccm-hook connection, until its record is whole.
typedef struct {
    hooks_t *owner;
    int fd;
    unsigned char *data;
    size_t len, cap, need;
    int64_t opened_ms;
    int slot;     //  its index in conns
    bool polled;  //  registered with the loop: it sent its record in parts
} s_conn_t;

//  A request of the event line (hook.add, automation.add, agent.upsert),
//  queued or in flight.
typedef struct {
    hooks_t *owner;
    char *verb;
    cJSON *body;  //  until it is sent; hook.add's is made from events at each send
    char idem[CCM_UUID_LEN + 1];
    zlistx_t *files;   //  paths to delete once it is acked (char *)
    zlistx_t *events;  //  hook.add: the events, as JSON text (char *)
} s_request_t;

//  A request of the permission line in flight: what its answer is about.
typedef struct {
    hooks_t *owner;
    char verb[32];
    char request[CCM_UUID_LEN + 1];  //  its park's id, for permission.request
} s_perm_call_t;

struct _hooks_t {
    ccm_config_t *config;
    zloop_t *loop;
    int listen_fd;
    ccm_req_t *store;  //  the event line: hook.add, then audits, then agent states
    char *spool;
    hooks_sessions_t *sessions;
    //  The journal: segments journal-<seq>.log in the spool directory.
    int journal_fd;
    uint64_t journal_seq;
    size_t journal_bytes;
    zlistx_t *pending;      //  events not yet sent, as JSON text (char *)
    zlistx_t *waiting;      //  files to delete once every pending event is committed
    zhashx_t *known;        //  spool and journal files already read (name -> "")
    s_request_t *inflight;  //  the event line's request the store has not answered
    zlistx_t *audits;       //  automation.add requests still to send (s_request_t)
    hooks_policy_t *policy;
    hooks_auto_t *autos;
    hooks_stamp_t policy_loaded;  //  the version of policies.json in force
    hooks_stamp_t policy_failed;  //  the last broken version, reported once
    bool policy_checked;          //  policy_loaded is set
    bool mode_written;            //  run/policy.mode is this run's
    zhashx_t *states;             //  agent_id -> "state\ttask" still to send
    zhashx_t *sent_states;        //  agent_id -> the last state sent
    int batch_max;
    size_t batch_bytes;  //  most bytes of events in one hook.add (under store.max_body)
    s_conn_t *conns[S_CONN_MAX];
    uint64_t accepted, committed, rejected;
    //  Parked PermissionRequests and their own line to the store.
    zhashx_t *parked;  //  request id -> s_park_t
    ccm_req_t *perm;   //  the permission line: permission.* requests, in order
    zsock_t *answers;  //  SUB to the store's permission.answered events
    bool listing;      //  a permission.list is queued or in flight
    int64_t ask_timeout_ms;
    int64_t last_poll_ms;
    char owner_name[PATH_MAX + 300];  //  who parks: host and socket
};

static void s_pump (hooks_t *self);
static void s_policy_refresh (hooks_t *self);
static void s_perm_send (hooks_t *self, const char *verb, cJSON *body);
static void s_request_destroy (s_request_t **request_p);

//  --------------------------------------------------------------------------
//  The journal

static int
s_journal_open (hooks_t *self)
{
    char path[PATH_MAX];
    snprintf (path, sizeof path, "%s/journal-%020llu.log", self->spool,
              (unsigned long long) self->journal_seq);
    self->journal_fd = open (path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
    self->journal_bytes = 0;
    if (self->journal_fd < 0) {
        ccm_error ("cannot open the journal %s: %s", path, strerror (errno));
        return -1;
    }
    zhashx_insert (self->known, strrchr (path, '/') + 1, "");
    return 0;
}

//  Closes the current segment (its events are all pending or in flight)
//  and starts the next. The closed one waits for its events' commit.
static void
s_journal_seal (hooks_t *self)
{
    if (self->journal_bytes == 0)
        return;
    close (self->journal_fd);
    char path[PATH_MAX];
    snprintf (path, sizeof path, "%s/journal-%020llu.log", self->spool,
              (unsigned long long) self->journal_seq);
    zlistx_add_end (self->waiting, strdup (path));
    self->journal_seq++;
    s_journal_open (self);
}

//  --------------------------------------------------------------------------
//  Events in

//  Parses a record into an event, now pending. Returns the event, for the
//  caller to destroy, or NULL if the record was refused.
static cJSON *
s_take_record (hooks_t *self, const unsigned char *data, size_t len, const char *source,
               hooks_record_t *record_out)
{
    hooks_record_t local, *record_p = record_out ? record_out : &local;
    const char *why = NULL;
    if (hooks_record_parse (data, len, record_p, &why)) {
        ccm_warn ("rejected a record from %s: %s", source, why);
        self->rejected++;
        return NULL;
    }
    hooks_record_t record = *record_p;
    cJSON *event = hooks_event_new (self->sessions, &record);
    const char *state = hooks_event_state (event);
    const char *agent = cJSON_GetStringValue (cJSON_GetObjectItem (event, "agent_id"));
    if (state && agent) {
        const char *task = cJSON_GetStringValue (cJSON_GetObjectItem (event, "task_id"));
        zhashx_update (self->states, agent, zsys_sprintf ("%s\t%s", state, task ? task : ""));
    }
    hooks_auto_event (self->autos, event);
    //  Printed once, here: batches are built from the text.
    char *text = cJSON_PrintUnformatted (event);
    if (!text) {
        ccm_error ("out of memory; an event from %s is left in its file", source);
        cJSON_Delete (event);
        return NULL;
    }
    zlistx_add_end (self->pending, text);
    self->accepted++;
    return event;
}

//  Reads the records of one spool or journal file into pending.
static void
s_read_file (hooks_t *self, const char *path)
{
    FILE *file = fopen (path, "rb");
    if (!file)
        return;
    unsigned char prefix[HOOK_PREFIX_LEN];
    while (fread (prefix, 1, HOOK_PREFIX_LEN, file) == HOOK_PREFIX_LEN) {
        const char *why = NULL;
        size_t size = hooks_record_size (prefix, &why);
        unsigned char *data = size ? malloc (size) : NULL;
        if (!data) {
            ccm_warn ("%s: %s; the rest of the file is skipped", path, why ? why : "no memory");
            break;
        }
        memcpy (data, prefix, HOOK_PREFIX_LEN);
        if (fread (data + HOOK_PREFIX_LEN, 1, size - HOOK_PREFIX_LEN, file)
            != size - HOOK_PREFIX_LEN) {
            //  A record cut by a crash mid-write was never acked: ccm-hook spooled it.
            ccm_warn ("%s: a partial record at the end (never acked); skipped", path);
            free (data);
            break;
        }
        cJSON *event = s_take_record (self, data, size, path, NULL);
        cJSON_Delete (event);
        free (data);
    }
    fclose (file);
    zlistx_add_end (self->waiting, strdup (path));
}

//  Picks up spool files (and, at start, old journal segments) not read yet.
static int
s_scan_spool (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop, (void) timer_id;
    hooks_t *self = arg;
    s_policy_refresh (self);
    hooks_auto_refresh (self->autos, ccm_config_str (self->config, "hooks.automations"));
    DIR *dir = opendir (self->spool);
    if (!dir)
        return 0;
    zlistx_t *names = zlistx_new ();
    zlistx_set_destructor (names, (zlistx_destructor_fn *) zstr_free);
    zlistx_set_comparator (names, (zlistx_comparator_fn *) strcmp);
    struct dirent *entry;
    while ((entry = readdir (dir))) {
        const char *name = entry->d_name;
        size_t len = strlen (name);
        bool spooled = len > 3 && strcmp (name + len - 3, HOOK_SPOOL_SUFFIX) == 0;
        bool journal =
            strncmp (name, "journal-", 8) == 0 && len > 4 && strcmp (name + len - 4, ".log") == 0;
        if ((spooled || journal) && !zhashx_lookup (self->known, name))
            zlistx_add_end (names, strdup (name));
    }
    closedir (dir);
    zlistx_sort (names);
    int count = 0;
    for (char *name = zlistx_first (names); name; name = zlistx_next (names)) {
        char path[PATH_MAX];
        snprintf (path, sizeof path, "%s/%s", self->spool, name);
        zhashx_insert (self->known, name, "");
        s_read_file (self, path);
        count++;
    }
    if (count)
        ccm_info ("read %d spool/journal file(s); %zu event(s) pending", count,
                  zlistx_size (self->pending));
    zlistx_destroy (&names);
    s_pump (self);
    return 0;
}

//  --------------------------------------------------------------------------
//  Policies

//  Writes run/policy.mode ("open" or "closed") for ccm-hook, which reads
//  it only when it cannot reach us. Atomically (a temporary file, then
//  rename): ccm-hook never reads half a word. Returns 0 or -1.
static int
s_policy_mode_write (hooks_t *self)
{
    const char *mode = hooks_policy_fail_closed (self->policy) ? "closed\n" : "open\n";
    char path[PATH_MAX + 32], tmp[PATH_MAX + 48];
    snprintf (path, sizeof path, "%s/run/policy.mode", ccm_config_home (self->config));
    snprintf (tmp, sizeof tmp, "%s.tmp", path);
    int fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    size_t len = strlen (mode);
    //  fchmod: a temporary file left by a crash may have another mode.
    bool ok = fd >= 0 && write (fd, mode, len) == (ssize_t) len && fchmod (fd, 0600) == 0;
    int saved = errno;
    if (fd >= 0 && close (fd))
        ok = false;
    if (!ok || rename (tmp, path)) {
        ccm_error ("cannot write %s: %s; while we are down, ccm-hook may use a stale mode", path,
                   strerror (ok ? errno : saved));
        unlink (tmp);
        return -1;
    }
    self->mode_written = true;
    return 0;
}

//  (Re)loads the policy file when it changed; a broken file keeps the rules
//  in force. policy.mode is written at start, whatever the file (a mode left
//  by an earlier run may be stale), and whenever the rules in force change.
static void
s_policy_refresh (hooks_t *self)
{
    const char *path = ccm_config_str (self->config, "hooks.policies");
    //  The whole stamp, not the mtime's seconds: a second save within the
    //  same second, or a rename-over, is a new version too.
    hooks_stamp_t stamp = hooks_stamp (path);
    if (self->policy_checked && hooks_stamp_same (&stamp, &self->policy_loaded)) {
        if (!self->mode_written)
            s_policy_mode_write (self);  //  it failed before: try again
        return;
    }
    char *error = NULL;
    hooks_policy_t *policy = hooks_policy_load (path, &error);
    if (error) {
        //  Maybe half-written: its stamp is not taken, so the next scan
        //  reads it again. The error is logged once per version.
        if (!hooks_stamp_same (&stamp, &self->policy_failed))
            ccm_error ("policies not changed: %s", error);
        self->policy_failed = stamp;
        free (error);
        if (!self->mode_written)
            s_policy_mode_write (self);
        return;
    }
    self->policy_loaded = stamp;
    self->policy_checked = true;
    self->policy_failed = (hooks_stamp_t){0};
    if (policy)
        ccm_info ("policies loaded from %s (fail %s)", path,
                  hooks_policy_fail_closed (policy) ? "closed" : "open");
    else if (self->policy)
        ccm_info ("policies removed (no %s): no decisions, fail open", path);
    hooks_policy_destroy (&self->policy);
    self->policy = policy;
    s_policy_mode_write (self);
}

//  The policy decision for a live event (text for ccm-hook to print, or
//  NULL). A matching rule also gives *audit (caller owns), its audit row
//  minus "delivered", which only the reply can tell.
static char *
s_decide (hooks_t *self, cJSON *event, const hooks_record_t *record, s_request_t **audit_p,
          bool *ask)
{
    *audit_p = NULL;
    *ask = false;
    const char *rule = NULL, *action = NULL;
    char *reason = NULL;
    const char *worktree = record->worktree;
    if (!*worktree)
        worktree = cJSON_GetStringValue (
            cJSON_GetObjectItem (cJSON_GetObjectItem (event, "event_data"), "cwd"));
    char *decision = hooks_policy_decide (self->policy, event, worktree, &rule, &action, &reason);
    if (rule) {
        s_request_t *audit = calloc (1, sizeof *audit);
        audit->verb = strdup ("automation.add");
        audit->body = cJSON_CreateObject ();
        cJSON_AddNumberToObject (audit->body, "v", 1);
        char name[300];
        snprintf (name, sizeof name, "policy:%.290s", rule);
        cJSON_AddStringToObject (audit->body, "automation", name);
        cJSON_AddStringToObject (audit->body, "action", action);
        cJSON_AddStringToObject (audit->body, "outcome",
                                 strcmp (action, "deny") == 0    ? "denied"
                                 : strcmp (action, "allow") == 0 ? "allowed"
                                                                 : "pending");
        const char *task = cJSON_GetStringValue (cJSON_GetObjectItem (event, "task_id"));
        if (task && ccm_uuid_valid (task))
            cJSON_AddStringToObject (audit->body, "task_id", task);
        cJSON_AddStringToObject (audit->body, "event_uid", record->uid);
        cJSON *details = cJSON_AddObjectToObject (audit->body, "details");
        cJSON *payload = cJSON_GetObjectItem (event, "event_data");
        cJSON_AddStringToObject (details, "hook_type",
                                 cJSON_GetStringValue (cJSON_GetObjectItem (event, "hook_type")));
        const char *tool = cJSON_GetStringValue (cJSON_GetObjectItem (payload, "tool_name"));
        if (tool)
            cJSON_AddStringToObject (details, "tool_name", tool);
        cJSON *input = cJSON_GetObjectItem (payload, "tool_input");
        if (input)
            cJSON_AddItemToObject (details, "tool_input", cJSON_Duplicate (input, true));
        cJSON_AddStringToObject (details, "reason", reason);
        ccm_uuid (audit->idem);
        *audit_p = audit;
        ccm_info ("policy '%s': %s %s (%s)", rule, action, tool ? tool : "?",
                  task ? task : "no task");
        const char *type = cJSON_GetStringValue (cJSON_GetObjectItem (event, "hook_type"));
        *ask = strcmp (action, "ask") == 0 && type && strcmp (type, "PermissionRequest") == 0;
    }
    free (reason);
    return decision;
}

//  --------------------------------------------------------------------------
//  Connections from ccm-hook

static void
s_conn_close (s_conn_t *conn)
{
    hooks_t *self = conn->owner;
    if (conn->polled) {
        zmq_pollitem_t item = {NULL, conn->fd, ZMQ_POLLIN, 0};
        zloop_poller_end (self->loop, &item);
    }
    close (conn->fd);
    self->conns[conn->slot] = NULL;
    free (conn->data);
    free (conn);
}

//  Sends the reply, a u32 length and text (NULL: no decision), whole: a
//  decision is up to HOOK_REPLY_MAX bytes (hooks_policy_decide keeps it
//  under). Returns true if all of it went out, the decision included.
static bool
s_reply (int fd, const char *text)
{
    size_t len = text ? strlen (text) : 0;
    bool whole = len <= HOOK_REPLY_MAX;
    if (!whole) {
        //  Not expected; cut JSON would be worse than no decision.
        ccm_error ("a decision of %zu bytes is over %d; answered with none", len, HOOK_REPLY_MAX);
        len = 0;
    }
    unsigned char *buffer = malloc (4 + len);
    if (!buffer) {
        ccm_error ("out of memory; a decision was not sent");
        return false;
    }
    hook_put_u32 (buffer, (uint32_t) len);
    if (len)
        memcpy (buffer + 4, text, len);
    //  The socket's buffer is empty and larger than any reply, so this does
    //  not block in practice; if it is full, wait a little, not forever. A
    //  ccm-hook that gave up waiting has hung up: no SIGPIPE for that.
    size_t sent = 0;
    int64_t deadline = ccm_mono_ms () + S_REPLY_MS;
    while (sent < 4 + len) {
        ssize_t n = send (fd, buffer + sent, 4 + len - sent, MSG_NOSIGNAL);
        if (n > 0) {
            sent += (size_t) n;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        int left = (int) (deadline - ccm_mono_ms ());
        struct pollfd item = {fd, POLLOUT, 0};
        if (n < 0 && errno == EAGAIN && left > 0 && poll (&item, 1, left) > 0)
            continue;
        break;
    }
    free (buffer);
    if (sent < 4 + len) {
        if (len)
            ccm_warn ("a decision was not delivered (%zu of %zu bytes sent: %s)", sent, 4 + len,
                      strerror (errno));
        else
            ccm_debug ("ccm-hook went away before its ack");
        return false;
    }
    return whole;
}

//  --------------------------------------------------------------------------
//  Parked PermissionRequests

//  Lets go of a park: removes it from the loop and the table, closes it.
static void
s_park_free (s_park_t *park)
{
    hooks_t *self = park->owner;
    zmq_pollitem_t item = {NULL, park->fd, ZMQ_POLLIN, 0};
    zloop_poller_end (self->loop, &item);
    close (park->fd);
    zhashx_delete (self->parked, park->id);
    free (park);
}

//  Audits how a park ended (automation_events), like every policy outcome.
static void
s_park_audit (hooks_t *self, s_park_t *park, const char *outcome, const char *status,
              bool delivered, const char *why)
{
    s_request_t *audit = calloc (1, sizeof *audit);
    audit->verb = strdup ("automation.add");
    audit->body = cJSON_CreateObject ();
    cJSON_AddNumberToObject (audit->body, "v", 1);
    char name[320];
    snprintf (name, sizeof name, "policy:%.300s", park->rule);
    cJSON_AddStringToObject (audit->body, "automation", name);
    cJSON_AddStringToObject (audit->body, "action", "ask");
    cJSON_AddStringToObject (audit->body, "outcome", outcome);
    if (ccm_uuid_valid (park->task))
        cJSON_AddStringToObject (audit->body, "task_id", park->task);
    cJSON_AddStringToObject (audit->body, "event_uid", park->event_uid);
    cJSON *details = cJSON_AddObjectToObject (audit->body, "details");
    cJSON_AddStringToObject (details, "hook_type", "PermissionRequest");
    cJSON_AddStringToObject (details, "request", park->id);
    cJSON_AddStringToObject (details, "status", status);
    cJSON_AddBoolToObject (details, "delivered", delivered);
    if (why)
        cJSON_AddStringToObject (details, "reason", why);
    ccm_uuid (audit->idem);
    zlistx_add_end (self->audits, audit);
}

//  Ends a park with no decision (the CLI asks in its own dialog), and
//  expires its request. why says what happened, for the row and the log.
static void
s_park_expire (s_park_t *park, const char *why, bool tell_hook)
{
    hooks_t *self = park->owner;
    ccm_info ("permission request %.8s: %s; the agent's own dialog decides", park->id, why);
    if (tell_hook)
        s_reply (park->fd, NULL);
    if (park->recorded) {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "request", park->id);
        cJSON_AddStringToObject (body, "outcome", "expired");
        cJSON_AddStringToObject (body, "reason", why);
        s_perm_send (self, "permission.close", body);
    }
    s_park_audit (self, park, "skipped", "expired", false, why);
    s_park_free (park);
    s_pump (self);
}

//  Delivers an answer (status allowed or denied) to the parked hook.
static void
s_park_answer (s_park_t *park, const char *status, const char *message, const char *by)
{
    hooks_t *self = park->owner;
    bool allow = strcmp (status, "allowed") == 0;
    char *decision = hooks_policy_answer (allow, message);
    bool sent = decision && s_reply (park->fd, decision);
    free (decision);
    ccm_info ("permission request %.8s: %s by %s; %s", park->id, status, by ? by : "someone",
              sent ? "delivered" : "the agent had stopped waiting");
    if (sent) {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "request", park->id);
        cJSON_AddStringToObject (body, "outcome", "delivered");
        s_perm_send (self, "permission.close", body);
    }
    s_park_audit (self, park, allow ? "allowed" : "denied", status, sent, message);
    s_park_free (park);
    s_pump (self);
}

//  A parked ccm-hook's socket is readable: it sends nothing more, so this
//  is its end (the CLI's hook timeout, or the agent is gone).
static int
s_park_readable (zloop_t *loop, zmq_pollitem_t *item, void *arg)
{
    (void) loop, (void) item;
    s_park_t *park = arg;
    char byte;
    ssize_t n = recv (park->fd, &byte, 1, MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    s_park_expire (park, "the agent stopped waiting (its hook ended)", false);
    return 0;
}

//  Parks the PermissionRequest of conn (its record already journaled):
//  acks it as parked, records the request, and keeps the connection open
//  for the answer. Returns true if parked (conn is then freed), false if
//  it cannot be (the caller answers now, with no decision).
static bool
s_park (s_conn_t *conn, cJSON *event, const hooks_record_t *record, s_request_t *audit)
{
    hooks_t *self = conn->owner;
    if (zhashx_size (self->parked) >= S_PARK_MAX) {
        ccm_warn ("%d permission requests already wait; this one is left to the agent's dialog",
                  S_PARK_MAX);
        return false;
    }
    unsigned char ack[8];
    hook_put_u32 (ack, HOOK_REPLY_PARKED);
    hook_put_u32 (ack + 4, (uint32_t) self->ask_timeout_ms);
    if (send (conn->fd, ack, sizeof ack, MSG_NOSIGNAL) != (ssize_t) sizeof ack) {
        ccm_debug ("ccm-hook went away before it was parked");
        return false;
    }
    s_park_t *park = calloc (1, sizeof *park);
    park->owner = self;
    park->fd = conn->fd;
    ccm_uuid (park->id);
    park->deadline_ms = ccm_mono_ms () + self->ask_timeout_ms;
    snprintf (park->task, sizeof park->task, "%s",
              cJSON_GetStringValue (cJSON_GetObjectItem (event, "task_id"))
                  ? cJSON_GetStringValue (cJSON_GetObjectItem (event, "task_id"))
                  : "");
    snprintf (park->event_uid, sizeof park->event_uid, "%s", record->uid);
    const char *automation =
        audit ? cJSON_GetStringValue (cJSON_GetObjectItem (audit->body, "automation")) : NULL;
    snprintf (park->rule, sizeof park->rule, "%s",
              automation && strncmp (automation, "policy:", 7) == 0 ? automation + 7 : "?");
    zhashx_insert (self->parked, park->id, park);
    //  The connection's fd is the park's now.
    if (conn->polled) {
        zmq_pollitem_t item = {NULL, conn->fd, ZMQ_POLLIN, 0};
        zloop_poller_end (self->loop, &item);
    }
    self->conns[conn->slot] = NULL;
    free (conn->data);
    free (conn);
    zmq_pollitem_t item = {NULL, park->fd, ZMQ_POLLIN, 0};
    zloop_poller (self->loop, &item, s_park_readable, park);
    zloop_set_tolerant (self->loop, &item);

    cJSON *payload = cJSON_GetObjectItem (event, "event_data");
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "request", park->id);
    cJSON_AddStringToObject (body, "owner", self->owner_name);
    const char *fields[][2] = {{"task_id", "task_id"},
                               {"agent_id", "agent_id"},
                               {"system_id", "system_id"},
                               {"session_id", "session_id"}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        const char *value = cJSON_GetStringValue (cJSON_GetObjectItem (event, fields[i][0]));
        if (value && *value && strlen (value) <= 64)
            cJSON_AddStringToObject (body, fields[i][1], value);
    }
    cJSON_AddStringToObject (body, "event_uid", record->uid);
    const char *tool = cJSON_GetStringValue (cJSON_GetObjectItem (payload, "tool_name"));
    if (tool && strlen (tool) <= 256)
        cJSON_AddStringToObject (body, "tool_name", tool);
    cJSON *input = cJSON_GetObjectItem (payload, "tool_input");
    if (cJSON_IsObject (input)) {
        //  A huge input (a whole file to write) is cut to what a human reads.
        char *text = cJSON_PrintUnformatted (input);
        if (text && strlen (text) <= 60 * 1024)
            cJSON_AddItemToObject (body, "tool_input", cJSON_Duplicate (input, true));
        else {
            cJSON *cut = cJSON_AddObjectToObject (body, "tool_input");
            cJSON_AddBoolToObject (cut, "ccm_truncated", true);
            if (text) {
                char preview[4097];
                snprintf (preview, sizeof preview, "%s", text);
                size_t keep = strlen (preview);
                while (keep > 0 && (preview[keep] & 0xC0) == 0x80)
                    preview[--keep] = 0;  //  not inside a UTF-8 character
                cJSON_AddStringToObject (cut, "preview", preview);
            }
        }
        free (text);
    }
    cJSON_AddStringToObject (body, "rule", park->rule);
    cJSON *details = audit ? cJSON_GetObjectItem (audit->body, "details") : NULL;
    const char *reason = cJSON_GetStringValue (cJSON_GetObjectItem (details, "reason"));
    if (reason)
        cJSON_AddStringToObject (body, "reason", reason);
    cJSON_AddNumberToObject (body, "timeout_ms", (double) self->ask_timeout_ms);
    s_perm_send (self, "permission.request", body);
    ccm_info ("permission request %.8s: %s waits for an answer (%lld ms)", park->id,
              tool ? tool : "?", (long long) self->ask_timeout_ms);
    return true;
}

//  An answer from the store (event or poll): data is a permission row or
//  event body with "id", "status", "answer", "answered_by".
static void
s_perm_heard (hooks_t *self, cJSON *data)
{
    const char *id = cJSON_GetStringValue (cJSON_GetObjectItem (data, "id"));
    const char *status = cJSON_GetStringValue (cJSON_GetObjectItem (data, "status"));
    s_park_t *park = id ? zhashx_lookup (self->parked, id) : NULL;
    if (!park || !status)
        return;
    if (strcmp (status, "allowed") == 0 || strcmp (status, "denied") == 0)
        s_park_answer (park, status, cJSON_GetStringValue (cJSON_GetObjectItem (data, "answer")),
                       cJSON_GetStringValue (cJSON_GetObjectItem (data, "answered_by")));
    else if (strcmp (status, "expired") == 0) {
        park->recorded = false;  //  already closed in the store
        s_park_expire (park, "its request was closed", true);
    }
}

static void s_perm_done (void *arg, int rc, cJSON *reply);

//  Sends a permission.* request (body taken) on the permission line, after
//  those already on it. A write gets its idem here, kept for every resend.
static void
s_perm_send (hooks_t *self, const char *verb, cJSON *body)
{
    s_perm_call_t *call = calloc (1, sizeof *call);
    if (!call) {
        ccm_error ("out of memory; %s not sent", verb);
        cJSON_Delete (body);
        return;
    }
    call->owner = self;
    snprintf (call->verb, sizeof call->verb, "%s", verb);
    const char *request = cJSON_GetStringValue (cJSON_GetObjectItem (body, "request"));
    snprintf (call->request, sizeof call->request, "%s", request ? request : "");
    bool list = strcmp (verb, "permission.list") == 0;
    if (!list)
        ccm_client_add_idem (body);
    if (ccm_req_send (self->perm, verb, &body, s_perm_done, call)) {
        ccm_error ("%s: cannot send", verb);
        free (call);
        return;
    }
    if (list)
        self->listing = true;
}

//  The store's answer to a permission.* request (on the loop).
static void
s_perm_done (void *arg, int rc, cJSON *reply)
{
    s_perm_call_t *call = arg;
    hooks_t *self = call->owner;
    if (strcmp (call->verb, "permission.list") == 0)
        self->listing = false;
    if (rc == CCM_ECLOSED) {  //  stopping
        free (call);
        return;
    }
    if (strcmp (call->verb, "permission.request") == 0) {
        s_park_t *park = zhashx_lookup (self->parked, call->request);
        if (rc == 0 && park)
            park->recorded = true;
        else if (park) {
            //  Nobody can answer a request the store refused: let the agent ask.
            ccm_error ("the store refused permission request %.8s: %s", call->request,
                       ccm_client_strerror (rc, reply));
            s_park_expire (park, "the store refused to record it", true);
        }
        else if (rc == 0) {
            //  Its hook ended while the row was being written: nobody waits
            //  for an answer any more, so the row is closed too.
            cJSON *body = cJSON_CreateObject ();
            cJSON_AddStringToObject (body, "request", call->request);
            cJSON_AddStringToObject (body, "outcome", "expired");
            cJSON_AddStringToObject (body, "reason", "the hook ended before it was recorded");
            s_perm_send (self, "permission.close", body);
        }
    }
    else if (strcmp (call->verb, "permission.list") == 0 && rc == 0) {
        cJSON *row;
        cJSON_ArrayForEach (row, cJSON_GetObjectItem (reply, "requests")) s_perm_heard (self, row);
    }
    else if (rc != 0)
        ccm_warn ("%s refused: %s", call->verb, ccm_client_strerror (rc, reply));
    free (call);
}

//  A permission.answered event: [topic][seq][event].
static int
s_answer_event (zloop_t *loop, zsock_t *reader, void *arg)
{
    (void) loop;
    hooks_t *self = arg;
    zmsg_t *msg = zmsg_recv (reader);
    if (!msg)
        return 0;
    zframe_t *body = zmsg_size (msg) == 3 ? zmsg_last (msg) : NULL;
    cJSON *event =
        body ? cJSON_ParseWithLength ((const char *) zframe_data (body), zframe_size (body)) : NULL;
    s_perm_heard (self, cJSON_GetObjectItem (event, "data"));
    cJSON_Delete (event);
    zmsg_destroy (&msg);
    return 0;
}

//  Timers of the parks: expiries, and a poll for answers whose event was
//  dropped (ccm_req resends an unanswered permission request itself).
static void
s_park_tick (hooks_t *self, int64_t now)
{
    zlistx_t *expired = zlistx_new ();
    for (s_park_t *park = zhashx_first (self->parked); park; park = zhashx_next (self->parked))
        if (now >= park->deadline_ms)
            zlistx_add_end (expired, park);
    for (s_park_t *park = zlistx_first (expired); park; park = zlistx_next (expired)) {
        char why[96];
        snprintf (why, sizeof why, "no answer in %lld ms", (long long) self->ask_timeout_ms);
        s_park_expire (park, why, true);
    }
    zlistx_destroy (&expired);
    if (zhashx_size (self->parked) && now - self->last_poll_ms >= S_PARK_POLL_MS) {
        self->last_poll_ms = now;
        if (!self->listing) {
            cJSON *body = cJSON_CreateObject ();
            cJSON *ids = cJSON_AddArrayToObject (body, "ids");
            for (s_park_t *park = zhashx_first (self->parked); park;
                 park = zhashx_next (self->parked))
                if (park->recorded)
                    cJSON_AddItemToArray (ids, cJSON_CreateString (park->id));
            cJSON_AddStringToObject (body, "status", "any");
            cJSON_AddNumberToObject (body, "limit", S_PARK_MAX);
            if (cJSON_GetArraySize (ids))
                s_perm_send (self, "permission.list", body);
            else
                cJSON_Delete (body);
        }
    }
}

//  Reads what the connection has, up to its whole record, then journals,
//  acks and closes it. Returns true while the record is still incomplete.
static bool
s_conn_step (s_conn_t *conn)
{
    hooks_t *self = conn->owner;
    while (!conn->need || conn->len < conn->need) {
        size_t want = conn->need ? conn->need : HOOK_PREFIX_LEN;
        if (conn->cap < want) {
            unsigned char *grown = realloc (conn->data, want);
            if (!grown) {
                s_conn_close (conn);
                return false;
            }
            conn->data = grown;
            conn->cap = want;
        }
        ssize_t n = read (conn->fd, conn->data + conn->len, want - conn->len);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return true;
        if (n <= 0) {
            if (conn->len)
                ccm_warn ("ccm-hook closed after %zu of %zu bytes; it spools the event itself",
                          conn->len, want);
            s_conn_close (conn);
            return false;
        }
        conn->len += (size_t) n;
        if (!conn->need && conn->len == HOOK_PREFIX_LEN) {
            const char *why = NULL;
            conn->need = hooks_record_size (conn->data, &why);
            if (!conn->need) {
                ccm_warn ("rejected a connection: %s", why);
                self->rejected++;
                s_conn_close (conn);
                return false;
            }
        }
    }
    //  Journal first: the ack promises the event survives us.
    if (write (self->journal_fd, conn->data, conn->len) != (ssize_t) conn->len) {
        ccm_error ("journal write failed: %s; ccm-hook will spool", strerror (errno));
        s_conn_close (conn);
        return false;
    }
    self->journal_bytes += conn->len;
    hooks_record_t record;
    s_request_t *audit = NULL;
    bool ask = false;
    cJSON *event = s_take_record (self, conn->data, conn->len, "ccm-hook", &record);
    char *decision = event ? s_decide (self, event, &record, &audit, &ask) : NULL;
    if (ask && s_park (conn, event, &record, audit)) {
        //  Parked: the connection now belongs to the park, which answers it.
        cJSON_Delete (event);
        zlistx_add_end (self->audits, audit);
        s_pump (self);
        return false;
    }
    cJSON_Delete (event);
    bool sent = s_reply (conn->fd, decision);
    if (audit) {
        //  The audit says what the CLI got: a decision that never reached
        //  ccm-hook is not delivered.
        cJSON_AddBoolToObject (cJSON_GetObjectItem (audit->body, "details"), "delivered",
                               decision && sent);
        zlistx_add_end (self->audits, audit);
    }
    free (decision);
    s_conn_close (conn);
    s_pump (self);
    return false;
}

static int
s_conn_readable (zloop_t *loop, zmq_pollitem_t *item, void *arg)
{
    (void) loop, (void) item;
    s_conn_step (arg);
    return 0;
}

static int
s_accept (zloop_t *loop, zmq_pollitem_t *item, void *arg)
{
    (void) item;
    hooks_t *self = arg;
    for (int accepted = 0; accepted < 64; accepted++) {
        int fd = accept4 (self->listen_fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0)
            break;
        int slot = -1;
        for (int i = 0; i < S_CONN_MAX && slot < 0; i++)
            if (!self->conns[i])
                slot = i;
        if (slot < 0) {
            close (fd);  //  ccm-hook spools it
            continue;
        }
        s_conn_t *conn = calloc (1, sizeof *conn);
        if (!conn) {
            close (fd);
            continue;
        }
        conn->owner = self;
        conn->fd = fd;
        conn->slot = slot;
        conn->opened_ms = ccm_mono_ms ();
        self->conns[slot] = conn;
        //  ccm-hook writes its record as soon as it connects, so it is
        //  usually all there already: no poller for the common case.
        if (!s_conn_step (conn))
            continue;
        zmq_pollitem_t poll_item = {NULL, fd, ZMQ_POLLIN, 0};
        zloop_poller (loop, &poll_item, s_conn_readable, conn);
        conn->polled = true;
        //  A hang-up is POLLERR to zloop, which would drop the poller on the
        //  second one, with the rest of the record unread and the fd open:
        //  the handler reads to the end instead, and closes on EOF.
        zloop_set_tolerant (loop, &poll_item);
    }
    return 0;
}

static int
s_listen (hooks_t *self)
{
    const char *path = ccm_config_str (self->config, "hooks.socket");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen (path) >= sizeof addr.sun_path) {
        ccm_error ("hooks.socket: path longer than %zu bytes: %s", sizeof addr.sun_path - 1, path);
        return -1;
    }
    strcpy (addr.sun_path, path);
    char endpoint[PATH_MAX + 8];
    snprintf (endpoint, sizeof endpoint, "ipc://%s", path);
    ccm_bus_prepare (endpoint);  //  the run directory, mode 0700
    unlink (path);               //  a stale socket of a dead ingester
    self->listen_fd = socket (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (self->listen_fd < 0 || bind (self->listen_fd, (struct sockaddr *) &addr, sizeof addr)
        || chmod (path, 0600) || listen (self->listen_fd, 4096)) {
        ccm_error ("cannot listen on %s: %s", path, strerror (errno));
        return -1;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  The store

static void
s_request_destroy (s_request_t **request_p)
{
    if (request_p && *request_p) {
        s_request_t *request = *request_p;
        free (request->verb);
        cJSON_Delete (request->body);
        zlistx_destroy (&request->files);
        zlistx_destroy (&request->events);
        free (request);
        *request_p = NULL;
    }
}

static void s_store_done (void *arg, int rc, cJSON *reply);

//  Puts a hook.add that could not be sent back where it came from: its
//  events first in pending, its files with those still waiting.
static void
s_unsend (hooks_t *self, s_request_t *request)
{
    char *event;
    while (request->events && (event = zlistx_last (request->events))) {
        zlistx_detach_cur (request->events);
        zlistx_add_start (self->pending, event);
    }
    char *path;
    while (request->files && (path = zlistx_detach (request->files, NULL)))
        zlistx_add_end (self->waiting, path);
}

//  Sends request (taken) on the event line; the answer comes to
//  s_store_done. Returns 0, or -1 if it could not even be queued.
static int
s_send (hooks_t *self, s_request_t *request)
{
    request->owner = self;
    cJSON *body = request->body ? request->body : cJSON_CreateObject ();
    request->body = NULL;
    cJSON_DeleteItemFromObject (body, "idem");
    cJSON_AddStringToObject (body, "idem", request->idem);
    if (request->events) {
        //  Each event goes as the text it was printed to once, not parsed again.
        cJSON *events = cJSON_AddArrayToObject (body, "events");
        for (char *event = zlistx_first (request->events); event;
             event = zlistx_next (request->events))
            cJSON_AddItemToArray (events, cJSON_CreateRaw (event));
    }
    //  The callback never runs before ccm_req_send returns.
    self->inflight = request;
    if (ccm_req_send (self->store, request->verb, &body, s_store_done, request) == 0)
        return 0;
    ccm_error ("%s: cannot send (out of memory?); tried again later", request->verb);
    self->inflight = NULL;
    s_unsend (self, request);
    s_request_destroy (&request);
    return -1;
}

//  The next batch of pending events, with the files it makes redundant
//  when it takes every pending event.
static s_request_t *
s_next_batch (hooks_t *self)
{
    if (zlistx_size (self->pending) == 0)
        return NULL;
    s_request_t *request = calloc (1, sizeof *request);
    request->verb = strdup ("hook.add");
    request->body = cJSON_CreateObject ();
    cJSON_AddNumberToObject (request->body, "v", 1);
    request->files = zlistx_new ();
    zlistx_set_destructor (request->files, (zlistx_destructor_fn *) zstr_free);
    request->events = zlistx_new ();
    zlistx_set_destructor (request->events, (zlistx_destructor_fn *) zstr_free);
    ccm_uuid (request->idem);
    //  As many events as fit under the store's body limit (at least one): a
    //  body over it is refused whole, and the batch would be lost with it.
    size_t bytes = 0;
    for (char *event = zlistx_first (self->pending);
         event && zlistx_size (request->events) < (size_t) self->batch_max;
         event = zlistx_first (self->pending)) {
        size_t size = strlen (event) + 1;
        if (bytes > 0 && bytes + size > self->batch_bytes)
            break;
        bytes += size;
        zlistx_add_end (request->events, zlistx_detach_cur (self->pending));
    }
    if (zlistx_size (self->pending) == 0) {
        //  Every event received so far is in this batch: once it commits,
        //  the journal and the spool files read so far are redundant.
        s_journal_seal (self);
        for (char *path = zlistx_detach (self->waiting, NULL); path;
             path = zlistx_detach (self->waiting, NULL))
            zlistx_add_end (request->files, path);
    }
    return request;
}

//  The next agent state to record, if any.
static s_request_t *
s_next_state (hooks_t *self)
{
    const char *value = zhashx_first (self->states);
    if (!value)
        return NULL;
    const char *agent = zhashx_cursor (self->states);
    char fields[256];
    snprintf (fields, sizeof fields, "%s", value);
    char *rest = fields;
    const char *state = strsep (&rest, "\t");
    const char *task = rest ? strsep (&rest, "\t") : "";
    s_request_t *request = NULL;
    const char *last = zhashx_lookup (self->sent_states, agent);
    if (!last || strcmp (last, value) != 0) {
        request = calloc (1, sizeof *request);
        request->verb = strdup ("agent.upsert");
        request->body = cJSON_CreateObject ();
        cJSON_AddNumberToObject (request->body, "v", 1);
        cJSON_AddStringToObject (request->body, "agent_id", agent);
        cJSON_AddStringToObject (request->body, "status", state);
        cJSON_AddStringToObject (request->body, "state_source", "hook");
        if (ccm_uuid_valid (task))
            cJSON_AddStringToObject (request->body, "task_id", task);
        ccm_uuid (request->idem);
        zhashx_update (self->sent_states, agent, strdup (value));
    }
    zhashx_delete (self->states, agent);
    return request;
}

//  Sends the next request if none is in flight.
static void
s_pump (hooks_t *self)
{
    while (!self->inflight) {
        s_request_t *next = s_next_batch (self);
        if (!next)
            next = zlistx_detach (self->audits, NULL);
        if (!next)
            next = s_next_state (self);
        if (!next && zhashx_size (self->states))
            continue;  //  a state already sent was skipped; look at the next
        if (!next || s_send (self, next))
            return;
    }
}

//  Drops event index from a rejected batch, logging it, so one event the
//  store refuses cannot hold back the others.
static void
s_drop_rejected (hooks_t *self, s_request_t *request, cJSON *error)
{
    const char *field = cJSON_GetStringValue (cJSON_GetObjectItem (error, "field"));
    const char *message = cJSON_GetStringValue (cJSON_GetObjectItem (error, "message"));
    int index = -1;
    size_t count = zlistx_size (request->events);
    if (field && sscanf (field, "events[%d]", &index) == 1 && index >= 0
        && (size_t) index < count) {
        char *text = zlistx_first (request->events);
        for (int i = 0; i < index; i++)
            text = zlistx_next (request->events);
        cJSON *event = cJSON_Parse (text);
        ccm_error ("the store refused hook event %s (%s): %s; dropped",
                   cJSON_GetStringValue (cJSON_GetObjectItem (event, "uid")),
                   cJSON_GetStringValue (cJSON_GetObjectItem (event, "hook_type")),
                   message ? message : "?");
        cJSON_Delete (event);
        zlistx_delete (request->events, zlistx_cursor (request->events));
        self->rejected++;
    }
    else {
        ccm_error ("the store refused a batch of %zu hook events: %s; dropped", count,
                   message ? message : "?");
        zlistx_purge (request->events);
        self->rejected += count;
    }
}

//  The store's answer to the event line's request (on the loop).
static void
s_store_done (void *arg, int rc, cJSON *reply)
{
    s_request_t *request = arg;
    hooks_t *self = request->owner;
    if (self->inflight == request)
        self->inflight = NULL;
    if (rc == CCM_ECLOSED) {
        //  Stopping: its events stay in the journal, read again at the next start.
        s_request_destroy (&request);
        return;
    }
    if (rc == 0) {
        if (strcmp (request->verb, "hook.add") == 0) {
            self->committed += zlistx_size (request->events);
            for (char *path = zlistx_first (request->files); path;
                 path = zlistx_next (request->files))
                if (unlink (path) == 0)
                    zhashx_delete (self->known, strrchr (path, '/') + 1);
        }
        s_request_destroy (&request);
    }
    else if (request->events && zlistx_size (request->events) > 0) {
        s_drop_rejected (self, request, cJSON_GetObjectItem (reply, "error"));
        if (zlistx_size (request->events) > 0) {
            ccm_uuid (request->idem);  //  a different request now
            if (s_send (self, request) == 0)
                return;  //  the rest, resent: s_pump waits for its answer
        }
        else {
            //  Nothing left to write: its files are done with.
            for (char *path = zlistx_first (request->files); path;
                 path = zlistx_next (request->files))
                unlink (path);
            s_request_destroy (&request);
        }
    }
    else {
        ccm_warn ("%s refused: %s", request->verb, ccm_client_strerror (rc, reply));
        s_request_destroy (&request);
    }
    s_pump (self);
}

//  Closes connections that never sent a whole record; the parks' timers.
//  (An unanswered request is resent by ccm_req, with its same idem.)
static int
s_tick (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop, (void) timer_id;
    hooks_t *self = arg;
    int64_t now = ccm_mono_ms ();
    for (int i = 0; i < S_CONN_MAX; i++)
        if (self->conns[i] && now - self->conns[i]->opened_ms > S_RECV_TIMEOUT_MS)
            s_conn_close (self->conns[i]);
    s_park_tick (self, now);
    return 0;
}

hooks_t *
hooks_new (ccm_config_t *config)
{
    hooks_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->config = config;
    self->listen_fd = -1;
    self->journal_fd = -1;
    self->spool = strdup (ccm_config_str (config, "hooks.spool"));
    self->batch_max = (int) ccm_config_int (config, "hooks.batch_max");
    if (self->batch_max < 1 || self->batch_max > 10000)
        self->batch_max = 10000;
    //  Room for the request's own fields (v, idem, the array's brackets).
    int64_t max_body = ccm_config_int (config, "store.max_body");
    self->batch_bytes = max_body > 65536 ? (size_t) max_body - 4096 : 61440;
    self->ask_timeout_ms = ccm_config_int (config, "hooks.ask_timeout_ms");
    if (self->ask_timeout_ms < 1 || self->ask_timeout_ms > 86400000)
        self->ask_timeout_ms = 300000;
    char host[256] = "";
    gethostname (host, sizeof host - 1);
    snprintf (self->owner_name, sizeof self->owner_name, "%s:%s", host,
              ccm_config_str (config, "hooks.socket"));
    self->pending = zlistx_new ();
    zlistx_set_destructor (self->pending, (zlistx_destructor_fn *) zstr_free);
    self->waiting = zlistx_new ();
    zlistx_set_destructor (self->waiting, (zlistx_destructor_fn *) zstr_free);
    self->known = zhashx_new ();
    self->audits = zlistx_new ();
    self->states = zhashx_new ();
    zhashx_set_destructor (self->states, (zhashx_destructor_fn *) zstr_free);
    self->sent_states = zhashx_new ();
    zhashx_set_destructor (self->sent_states, (zhashx_destructor_fn *) zstr_free);
    self->parked = zhashx_new ();
    if (mkdir (self->spool, 0700) && errno != EEXIST) {
        ccm_error ("cannot create %s: %s", self->spool, strerror (errno));
        hooks_destroy (&self);
        return NULL;
    }
    char sessions_path[PATH_MAX];
    snprintf (sessions_path, sizeof sessions_path, "%s/sessions.tsv", self->spool);
    self->sessions = hooks_sessions_new (sessions_path);
    self->autos = hooks_auto_new (ccm_config_str (config, "store.endpoint"));
    //  Segments left by an earlier run are read by the first scan; this run
    //  appends to a segment numbered after all of them.
    self->journal_seq = (uint64_t) ccm_wall_ms () * 1000;
    self->loop = zloop_new ();
    //  Both lines resend until the store answers, with the same idem: a
    //  batch is never given up while we run. One request at a time on each
    //  keeps their order: a batch's files go only once it and every batch
    //  before it are committed, and a request's row is written before it
    //  is closed.
    const char *endpoint = ccm_config_str (config, "store.endpoint");
    int timeout_ms = (int) ccm_config_int (config, "bus.timeout_ms");
    self->store = self->loop ? ccm_req_new (self->loop, endpoint, timeout_ms, -1, 1) : NULL;
    self->perm = self->loop ? ccm_req_new (self->loop, endpoint, timeout_ms, -1, 1) : NULL;
    self->answers =
        ccm_bus_sub_connect (ccm_config_str (config, "store.pub_endpoint"), "permission.answered");
    if (!self->store || !self->perm || s_journal_open (self) || s_listen (self)) {
        if (!self->store || !self->perm)
            ccm_error ("cannot start: the store's sockets");
        hooks_destroy (&self);
        return NULL;
    }
    zmq_pollitem_t listen_item = {NULL, self->listen_fd, ZMQ_POLLIN, 0};
    zloop_poller (self->loop, &listen_item, s_accept, self);
    if (self->answers)
        zloop_reader (self->loop, self->answers, s_answer_event, self);
    zloop_timer (self->loop, S_SPOOL_SCAN_MS, 0, s_scan_spool, self);
    zloop_timer (self->loop, 500, 0, s_tick, self);
    //  Hooks parked by an earlier run are gone with it: their requests
    //  can no longer be delivered.
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "owner", self->owner_name);
    cJSON_AddStringToObject (body, "outcome", "expired");
    cJSON_AddStringToObject (body, "reason", "ccm-hooks restarted: the hook was let go");
    s_perm_send (self, "permission.close", body);
    return self;
}

int
hooks_run (hooks_t *self)
{
    s_scan_spool (self->loop, 0, self);  //  drain what waited for us
    ccm_info ("ready: listening on %s", ccm_config_str (self->config, "hooks.socket"));
    ccm_notify ("READY=1");
    zloop_start (self->loop);
    ccm_info ("stopping: %llu event(s) taken, %llu committed, %llu rejected; %zu pending "
              "(kept in the journal)",
              (unsigned long long) self->accepted, (unsigned long long) self->committed,
              (unsigned long long) self->rejected, zlistx_size (self->pending));
    return 0;
}

void
hooks_destroy (hooks_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    hooks_t *self = *self_p;
    for (int i = 0; i < S_CONN_MAX; i++)
        if (self->conns[i])
            s_conn_close (self->conns[i]);
    //  Parked hooks end with no decision: their agents ask in their dialog.
    for (s_park_t *park = zhashx_first (self->parked); park; park = zhashx_first (self->parked)) {
        s_reply (park->fd, NULL);
        s_park_free (park);
    }
    zhashx_destroy (&self->parked);
    //  What the store has not answered stays where it came from (the
    //  journal): the callbacks only free their requests.
    ccm_req_destroy (&self->perm);
    ccm_req_destroy (&self->store);
    zsock_destroy (&self->answers);
    if (self->listen_fd >= 0) {
        close (self->listen_fd);
        unlink (ccm_config_str (self->config, "hooks.socket"));
    }
    if (self->journal_fd >= 0) {
        close (self->journal_fd);
        if (self->journal_bytes == 0) {
            char path[PATH_MAX];
            snprintf (path, sizeof path, "%s/journal-%020llu.log", self->spool,
                      (unsigned long long) self->journal_seq);
            unlink (path);  //  nothing in it
        }
    }
    zloop_destroy (&self->loop);
    s_request_destroy (&self->inflight);
    zlistx_destroy (&self->pending);
    zlistx_destroy (&self->waiting);
    zhashx_destroy (&self->known);
    for (s_request_t *audit = self->audits ? zlistx_detach (self->audits, NULL) : NULL; audit;
         audit = zlistx_detach (self->audits, NULL))
        s_request_destroy (&audit);
    zlistx_destroy (&self->audits);
    hooks_policy_destroy (&self->policy);
    hooks_auto_destroy (&self->autos);
    zhashx_destroy (&self->states);
    zhashx_destroy (&self->sent_states);
    hooks_sessions_destroy (&self->sessions);
    free (self->spool);
    free (self);
    *self_p = NULL;
}

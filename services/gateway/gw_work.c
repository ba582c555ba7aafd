/*  gw_work: the gateway's workers, and its mailbox and job queue.

    A worker takes a job (a snapshot, a command, a subscribe to resolve, a
    replay page), runs it with blocking store calls (Lazy Pirate, its own
    DEALER) or a child process (the ccm CLI, git, tmux: argv only, never a
    shell), and posts the outcome to the main thread. Commands that are
    CLI commands (ccm send, ccm worktree merge/discard) run the ccm binary
    itself, so a browser gets exactly what the CLI does.                   */

#include "gw_internal.h"

#include "ccm_id.h"
#include "ccm_log.h"
#include "ccm_proc.h"

#include <stdarg.h>
#include <errno.h>
#include <string.h>
#include <unistd.h>

#define S_DIFF_MAX (1 << 20)  //  bytes of diff in a result

typedef struct {
    gw_t *gw;
    ccm_client_t *store;
} s_worker_t;

//  ------------------------------------------------------------ mail & jobs

void
gw_mail_destroy (gw_mail_t **self_p)
{
    if (self_p && *self_p) {
        gw_mail_t *self = *self_p;
        free (self->text);
        free (self->task);
        free (self->window);
        for (int i = 0; i < self->nevents; i++)
            gw_event_destroy (&self->events[i]);
        free (self->events);
        gw_filter_destroy (&self->filter);
        free (self);
        *self_p = NULL;
    }
}

void
gw_mail_post (gw_t *self, gw_mail_t *mail)
{
    mail->next = NULL;
    pthread_mutex_lock (&self->mail_lock);
    if (self->mail_tail)
        self->mail_tail->next = mail;
    else
        self->mail_head = mail;
    self->mail_tail = mail;
    pthread_mutex_unlock (&self->mail_lock);
    if (self->context)
        lws_cancel_service (self->context);
}

gw_mail_t *
gw_mail_take (gw_t *self)
{
    pthread_mutex_lock (&self->mail_lock);
    gw_mail_t *head = self->mail_head;
    self->mail_head = self->mail_tail = NULL;
    pthread_mutex_unlock (&self->mail_lock);
    return head;
}

void
gw_job_destroy (gw_job_t **self_p)
{
    if (self_p && *self_p) {
        gw_job_t *self = *self_p;
        cJSON_Delete (self->request);
        gw_filter_destroy (&self->filter);
        free (self->task_filter);
        free (self->topic_filter);
        free (self);
        *self_p = NULL;
    }
}

static void *s_worker (void *arg);

void
gw_job_post (gw_t *self, gw_job_t *job)
{
    job->next = NULL;
    pthread_mutex_lock (&self->job_lock);
    if (self->job_tail)
        self->job_tail->next = job;
    else
        self->job_head = job;
    self->job_tail = job;
    self->jobs_queued++;
    //  Workers start as the load asks for them, up to gateway.workers: an
    //  idle gateway holds one thread (and one store connection), not all.
    if (self->jobs_queued > self->workers_idle && self->workers_started < self->nworkers
        && !self->stop) {
        if (pthread_create (&self->workers[self->workers_started], NULL, s_worker, self) == 0)
            self->workers_started++;
        else
            ccm_warn ("cannot start worker %d: %s; %d run the requests", self->workers_started + 1,
                      strerror (errno), self->workers_started);
    }
    pthread_cond_signal (&self->job_cond);
    pthread_mutex_unlock (&self->job_lock);
}

//  ------------------------------------------------------------ replies

static char *
s_reply (cJSON *id, bool ok, cJSON *payload)
{
    cJSON *reply = cJSON_CreateObject ();
    cJSON_AddStringToObject (reply, "type", "reply");
    if (id)
        cJSON_AddItemToObject (reply, "id", cJSON_Duplicate (id, false));
    else
        cJSON_AddNullToObject (reply, "id");
    cJSON_AddBoolToObject (reply, "ok", ok);
    cJSON_AddItemToObject (reply, ok ? "result" : "error", payload);
    char *text = cJSON_PrintUnformatted (reply);
    cJSON_Delete (reply);
    return text;
}

char *
gw_reply_ok (cJSON *id, cJSON *result)
{
    return s_reply (id, true, result ? result : cJSON_CreateObject ());
}

static char *
s_reply_err (cJSON *id, const ccm_error_t *err)
{
    cJSON *error = cJSON_CreateObject ();
    cJSON_AddStringToObject (error, "code", err->code ? err->code : "internal");
    if (err->field[0])
        cJSON_AddStringToObject (error, "field", err->field);
    else
        cJSON_AddNullToObject (error, "field");
    cJSON_AddStringToObject (error, "message", err->message);
    return s_reply (id, false, error);
}

char *
gw_reply_error (cJSON *id, const char *code, const char *field, const char *format, ...)
{
    ccm_error_t err = {.code = code};
    snprintf (err.field, sizeof err.field, "%s", field ? field : "");
    va_list args;
    va_start (args, format);
    vsnprintf (err.message, sizeof err.message, format, args);
    va_end (args);
    return s_reply_err (id, &err);
}

//  ------------------------------------------------------------ store calls

//  Calls the store; returns its reply without v and id (caller owns), or
//  NULL with err set: the store's own error, or unavailable.
static cJSON *
s_store (s_worker_t *self, const char *verb, cJSON *body, bool write, ccm_error_t *err)
{
    if (write && !cJSON_GetObjectItem (body, "idem"))
        ccm_client_add_idem (body);
    cJSON *reply = NULL;
    int rc = ccm_client_call (self->store, verb, body, &reply);
    if (rc == 0) {
        cJSON_DeleteItemFromObjectCaseSensitive (reply, "v");
        cJSON_DeleteItemFromObjectCaseSensitive (reply, "id");
        return reply;
    }
    if (rc == CCM_EREPLY) {
        cJSON *error = cJSON_GetObjectItem (reply, "error");
        const char *code = cJSON_GetStringValue (cJSON_GetObjectItem (error, "code"));
        const char *field = cJSON_GetStringValue (cJSON_GetObjectItem (error, "field"));
        const char *message = cJSON_GetStringValue (cJSON_GetObjectItem (error, "message"));
        //  The store's codes are static strings of protocol.md; keep ours static too.
        static const char *const codes[] = {
            "bad_frame",     "too_large", "bad_json",  "bad_version", "unknown_verb",
            "missing_field", "bad_field", "not_found", "ambiguous",   "illegal_transition",
            "idem_conflict", "conflict",  "cycle",     "internal",    NULL};
        err->code = "internal";
        for (int i = 0; code && codes[i]; i++)
            if (strcmp (code, codes[i]) == 0)
                err->code = codes[i];
        snprintf (err->field, sizeof err->field, "%s", field ? field : "");
        snprintf (err->message, sizeof err->message, "%s", message ? message : "store error");
    }
    else
        ccm_fail (err, "unavailable", NULL, "%s: %s", verb, ccm_client_strerror (rc, NULL));
    cJSON_Delete (reply);
    return NULL;
}

//  Copies the listed fields of req that are present into a new body.
static cJSON *
s_body (cJSON *req, const char *const *fields)
{
    cJSON *body = cJSON_CreateObject ();
    for (int i = 0; fields[i]; i++) {
        cJSON *item = cJSON_GetObjectItemCaseSensitive (req, fields[i]);
        if (item)
            cJSON_AddItemToObject (body, fields[i], cJSON_Duplicate (item, true));
    }
    return body;
}

//  A store verb with the request's fields passed as they are.
static cJSON *
s_forward (s_worker_t *self, cJSON *req, const char *verb, const char *const *fields, bool write,
           ccm_error_t *err)
{
    cJSON *body = s_body (req, fields);
    if (write) {
        cJSON *idem = cJSON_GetObjectItem (req, "idem");
        if (cJSON_IsString (idem))
            cJSON_AddStringToObject (body, "idem", idem->valuestring);
    }
    cJSON *reply = s_store (self, verb, body, write, err);
    cJSON_Delete (body);
    return reply;
}

//  The full id of the task named by req's "task" (id or prefix) into id.
static int
s_task_id (s_worker_t *self, cJSON *req, char *id, size_t len, cJSON **task_p, ccm_error_t *err)
{
    const char *ref = NULL;
    if (ccm_get_string (req, "task", true, 64, &ref, err))
        return -1;
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", ref);
    cJSON *reply = s_store (self, "task.get", body, false, err);
    cJSON_Delete (body);
    if (!reply)
        return -1;
    snprintf (
        id, len, "%s",
        cJSON_GetStringValue (cJSON_GetObjectItem (cJSON_GetObjectItem (reply, "task"), "id")));
    if (task_p)
        *task_p = reply;
    else
        cJSON_Delete (reply);
    return 0;
}

//  Runs the ccm CLI with args; the outcome as a result or a typed error.
static cJSON *
s_ccm (s_worker_t *self, char *const args[], int timeout_ms, ccm_error_t *err)
{
    char *argv[16];
    int n = 0;
    argv[n++] = self->gw->ccm_bin;
    for (int i = 0; args[i] && n < 15; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    char *out = NULL, *errors = NULL;
    int rc = ccm_proc_run2 (argv, NULL, &out, &errors, timeout_ms);
    ccm_proc_chomp (out ? out : (char *) "");
    ccm_proc_chomp (errors ? errors : (char *) "");
    cJSON *result = NULL;
    if (rc == 0) {
        result = cJSON_CreateObject ();
        cJSON_AddStringToObject (result, "message", out ? out : "");
    }
    else {
        const char *why = errors && *errors ? errors : out && *out ? out : "failed";
        if (strncmp (why, "ccm: ", 5) == 0)
            why += 5;
        if (rc < 0)
            ccm_fail (err, "internal", NULL, "cannot run %s", self->gw->ccm_bin);
        else
            ccm_fail (err, "failed", NULL, "%s", why);
    }
    free (out);
    free (errors);
    return result;
}

//  ------------------------------------------------------------ commands

typedef cJSON *(s_cmd_fn) (s_worker_t *self, cJSON *req, ccm_error_t *err);

static cJSON *
s_ping (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    (void) req;
    cJSON *body = cJSON_CreateObject ();
    cJSON *reply = s_store (self, "ping", body, false, err);
    cJSON_Delete (body);
    if (!reply)
        return NULL;
    cJSON *result = cJSON_CreateObject ();
    cJSON_AddBoolToObject (result, "pong", true);
    cJSON_AddItemToObject (result, "store_seq",
                           cJSON_Duplicate (cJSON_GetObjectItem (reply, "seq"), false));
    cJSON_AddStringToObject (result, "version", "0.1.0");
    cJSON_Delete (reply);
    return result;
}

static const char *const s_none[] = {NULL};

static cJSON *
s_stats (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    return s_forward (self, req, "stats", s_none, false, err);
}

static cJSON *
s_systems (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    return s_forward (self, req, "system.list", s_none, false, err);
}

static cJSON *
s_contexts (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    static const char *const fields[] = {"system_id", "project", NULL};
    return s_forward (self, req, "context.list", fields, false, err);
}

static cJSON *
s_projects (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    return s_forward (self, req, "project.list", s_none, false, err);
}

static cJSON *
s_tasks (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    static const char *const fields[] = {"status", "project", "limit", "offset", NULL};
    return s_forward (self, req, "task.list", fields, false, err);
}

static cJSON *
s_task (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    static const char *const fields[] = {"task", NULL};
    if (!cJSON_GetObjectItem (req, "task")) {
        ccm_fail (err, "missing_field", "task", "task: required");
        return NULL;
    }
    return s_forward (self, req, "task.get", fields, false, err);
}

static cJSON *
s_agents (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    static const char *const fields[] = {"task", "status", "agent", NULL};
    return s_forward (self, req, "agent.list", fields, false, err);
}

static cJSON *
s_timeline (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    int64_t after = 0;
    char id[64];
    cJSON *task = NULL;
    if (ccm_get_int (req, "after_id", false, 0, INT64_C (1) << 53, &after, err)
        || s_task_id (self, req, id, sizeof id, &task, err))
        return NULL;
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", id);
    cJSON_AddNumberToObject (body, "after_id", (double) after);
    cJSON *hooks = s_store (self, "hook.list", body, false, err);
    cJSON_Delete (body);
    if (!hooks) {
        cJSON_Delete (task);
        return NULL;
    }
    cJSON *result = cJSON_CreateObject ();
    cJSON_AddItemToObject (result, "task_events", cJSON_DetachItemFromObject (task, "events"));
    cJSON_AddItemToObject (result, "hooks", cJSON_DetachItemFromObject (hooks, "hooks"));
    cJSON_Delete (task);
    cJSON_Delete (hooks);
    return result;
}

//  git ARGS in dir; its stdout (caller frees) or NULL.
static char *
s_git (const char *dir, char *const args[])
{
    char *argv[12] = {"git", "-C", (char *) dir};
    int n = 3;
    for (int i = 0; args[i] && n < 11; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    char *out = NULL, *errors = NULL;
    int rc = ccm_proc_run2 (argv, NULL, &out, &errors, 20000);
    free (errors);
    if (rc != 0) {
        free (out);
        return NULL;
    }
    return out;
}

static cJSON *
s_result (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    char id[64];
    cJSON *task = NULL;
    if (s_task_id (self, req, id, sizeof id, &task, err))
        return NULL;
    cJSON *result = cJSON_CreateObject ();
    cJSON_AddItemToObject (result, "results", cJSON_DetachItemFromObject (task, "results"));
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", id);
    cJSON *worktrees = s_store (self, "worktree.list", body, false, err);
    cJSON_Delete (body);
    cJSON *worktree =
        worktrees ? cJSON_GetArrayItem (cJSON_GetObjectItem (worktrees, "worktrees"), 0) : NULL;
    cJSON *files = cJSON_AddArrayToObject (result, "files_changed");
    char *diff = NULL;
    if (worktree) {
        //  The branch against its base, in the worktree, or in the project's
        //  repository once the worktree is gone (merged or discarded).
        const char *path = cJSON_GetStringValue (cJSON_GetObjectItem (worktree, "worktree_path"));
        const char *branch = cJSON_GetStringValue (cJSON_GetObjectItem (worktree, "branch_name"));
        const char *base = cJSON_GetStringValue (cJSON_GetObjectItem (worktree, "base_branch"));
        //  The project's repository, for a worktree already removed.
        const char *project_id = cJSON_GetStringValue (
            cJSON_GetObjectItem (cJSON_GetObjectItem (task, "task"), "project_id"));
        cJSON *none = cJSON_CreateObject (), *projects = NULL;
        ccm_error_t ignored = {0};
        if (project_id && (!path || access (path, F_OK)))
            projects = s_store (self, "project.list", none, false, &ignored);
        cJSON_Delete (none);
        const char *repo = NULL;
        cJSON *project;
        cJSON_ArrayForEach (project, cJSON_GetObjectItem (projects, "projects"))
        {
            const char *pid = cJSON_GetStringValue (cJSON_GetObjectItem (project, "id"));
            if (pid && strcmp (pid, project_id) == 0)
                repo = cJSON_GetStringValue (cJSON_GetObjectItem (project, "path"));
        }
        char range[600];
        snprintf (range, sizeof range, "%s...%s", base ? base : "HEAD", branch ? branch : "HEAD");
        const char *dirs[] = {path, repo};
        for (int i = 0; i < 2 && !diff; i++) {
            if (!dirs[i] || access (dirs[i], F_OK))
                continue;
            diff = s_git (dirs[i], (char *[]){"diff", "--no-color", range, NULL});
            char *names =
                diff ? s_git (dirs[i], (char *[]){"diff", "--name-only", range, NULL}) : NULL;
            for (char *line = names ? strtok (names, "\n") : NULL; line; line = strtok (NULL, "\n"))
                cJSON_AddItemToArray (files, cJSON_CreateString (line));
            free (names);
        }
        cJSON_Delete (projects);
        cJSON_AddItemToObject (result, "worktree", cJSON_Duplicate (worktree, true));
    }
    else
        cJSON_AddNullToObject (result, "worktree");
    //  Without a diff, the files the result recorded.
    if (cJSON_GetArraySize (files) == 0) {
        cJSON *one;
        cJSON_ArrayForEach (one, cJSON_GetObjectItem (result, "results"))
        {
            cJSON *name;
            cJSON_ArrayForEach (
                name, cJSON_GetObjectItem (one, "files_changed")) if (cJSON_IsString (name))
                cJSON_AddItemToArray (files, cJSON_CreateString (name->valuestring));
        }
    }
    size_t size = diff ? strlen (diff) : 0;
    bool truncated = size > S_DIFF_MAX;
    if (truncated) {
        size = S_DIFF_MAX;
        while (size > 0 && ((unsigned char) diff[size] & 0xC0) == 0x80)
            size--;  //  not inside a UTF-8 sequence
        diff[size] = 0;
    }
    char *clean = diff ? ccm_utf8_clean (diff, size) : NULL;
    cJSON_AddStringToObject (result, "diff", clean ? clean : "");
    cJSON_AddBoolToObject (result, "diff_truncated", truncated);
    free (clean);
    free (diff);
    //  The supervisory report of the task, the newest if several.
    body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", id);
    ccm_error_t ignored = {0};
    cJSON *reports = s_store (self, "report.list", body, false, &ignored);
    cJSON_Delete (body);
    cJSON *list = cJSON_GetObjectItem (reports, "reports");
    int n = cJSON_GetArraySize (list);
    cJSON_AddItemToObject (result, "report",
                           n > 0 ? cJSON_Duplicate (cJSON_GetArrayItem (list, n - 1), true)
                                 : cJSON_CreateNull ());
    cJSON_Delete (reports);
    cJSON_Delete (worktrees);
    cJSON_Delete (task);
    return result;
}

static cJSON *
s_events (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    int64_t since = 0;
    if (ccm_get_int (req, "since_seq", false, 0, INT64_C (1) << 53, &since, err))
        return NULL;
    static const char *const fields[] = {"limit", "task", "topic", NULL};
    cJSON *body = s_body (req, fields);
    cJSON_AddNumberToObject (body, "seq", (double) since);
    cJSON *reply = s_store (self, "events.since", body, false, err);
    cJSON_Delete (body);
    return reply;
}

static cJSON *
s_sync (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    cJSON *stats = s_forward (self, req, "stats", s_none, false, err);
    if (!stats)
        return NULL;
    cJSON *none = cJSON_CreateObject ();
    cJSON *state = s_store (self, "sync.state", none, false, err);
    cJSON_Delete (none);
    if (!state) {
        cJSON_Delete (stats);
        return NULL;
    }
    cJSON *sync = cJSON_GetObjectItem (state, "sync");
    cJSON *result = cJSON_CreateObject ();
    cJSON_AddItemToObject (result, "online",
                           cJSON_Duplicate (cJSON_GetObjectItem (sync, "connected"), false));
    cJSON_AddItemToObject (result, "state",
                           cJSON_Duplicate (cJSON_GetObjectItem (sync, "state"), false));
    cJSON_AddItemToObject (result, "detail",
                           cJSON_Duplicate (cJSON_GetObjectItem (sync, "detail"), false));
    cJSON_AddItemToObject (result, "updated_at",
                           cJSON_Duplicate (cJSON_GetObjectItem (sync, "updated_at"), false));
    cJSON_AddItemToObject (result, "queue",
                           cJSON_Duplicate (cJSON_GetObjectItem (stats, "sync_pending"), false));
    cJSON_Delete (stats);
    cJSON_Delete (state);
    return result;
}

static cJSON *
s_permissions (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    static const char *const fields[] = {"task", "status", "agent", NULL};
    return s_forward (self, req, "permission.list", fields, false, err);
}

static cJSON *
s_task_add (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    static const char *const fields[] = {
        "prompt",     "project",           "priority",         "task_type", "agent",
        "timeout_s",  "system_id",         "depends_on",       "hold",      "metadata",
        "input_data", "requires_supabase", "requires_project", NULL};
    cJSON *requires = NULL;
    if (!cJSON_GetObjectItem (req, "prompt")) {
        ccm_fail (err, "missing_field", "prompt", "prompt: required");
        return NULL;
    }
    if (ccm_get_object (req, "requires", false, &requires, err))
        return NULL;
    cJSON *body = s_body (req, fields);
    if (requires) {
        cJSON *value;
        cJSON_ArrayForEach (value, requires) if (!cJSON_IsString (value))
        {
            cJSON_Delete (body);
            ccm_fail (err, "bad_field", "requires", "requires.%.64s: must be a string",
                      value->string);
            return NULL;
        }
        cJSON_AddItemToObject (body, "requires_context_metadata", cJSON_Duplicate (requires, true));
    }
    cJSON *idem = cJSON_GetObjectItem (req, "idem");
    if (cJSON_IsString (idem))
        cJSON_AddStringToObject (body, "idem", idem->valuestring);
    cJSON *reply = s_store (self, "task.add", body, true, err);
    cJSON_Delete (body);
    //  The store names its field requires_context_metadata; the request said requires.
    if (!reply && strncmp (err->field, "requires_context_metadata", 25) == 0)
        snprintf (err->field, sizeof err->field, "requires");
    return reply;
}

static cJSON *
s_task_cancel (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    static const char *const fields[] = {"task", "reason", NULL};
    if (!cJSON_GetObjectItem (req, "task")) {
        ccm_fail (err, "missing_field", "task", "task: required");
        return NULL;
    }
    return s_forward (self, req, "task.cancel", fields, true, err);
}

//  Only a failed task goes back to the queue: the store checks its status
//  and moves it in one transaction ("from": "failed"), so a task that runs
//  (or has just been requeued by the router) is never queued twice.
static cJSON *
s_task_retry (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    const char *ref = NULL;
    if (ccm_get_string (req, "task", true, 64, &ref, err))
        return NULL;
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", ref);
    cJSON_AddStringToObject (body, "from", "failed");
    cJSON_AddStringToObject (body, "to", "queued");
    cJSON_AddStringToObject (body, "reason", "retried from the gateway");
    cJSON *idem = cJSON_GetObjectItem (req, "idem");
    if (cJSON_IsString (idem))
        cJSON_AddStringToObject (body, "idem", idem->valuestring);
    cJSON *reply = s_store (self, "task.transition", body, true, err);
    cJSON_Delete (body);
    //  The request named the task, not a state: so does the refusal.
    if (!reply && (strcmp (err->field, "from") == 0 || strcmp (err->field, "to") == 0)) {
        const char *why = err->message;
        if (strncmp (why, "from: ", 6) == 0)
            why += 6;
        char message[sizeof err->message];
        snprintf (message, sizeof message,
                  "task: only a failed task with attempts left can be retried; %.400s", why);
        snprintf (err->message, sizeof err->message, "%s", message);
        snprintf (err->field, sizeof err->field, "task");
    }
    return reply;
}

//  The tmux window of a running task (the executor tags it @ccm_task), or "".
static void
s_window (gw_t *gw, const char *task_id, char *out, size_t len)
{
    char *panes = NULL;
    out[0] = 0;
    ccm_proc_run2 ((char *[]){"tmux", "-S", gw->tmux_socket, "list-panes", "-a", "-F",
                              "#{window_id} #{@ccm_task}", NULL},
                   NULL, &panes, NULL, 10000);
    char *save = NULL;
    for (char *line = panes ? strtok_r (panes, "\n", &save) : NULL; line;
         line = strtok_r (NULL, "\n", &save)) {
        char wid[32], tid[64];
        if (sscanf (line, "%31s %63s", wid, tid) == 2 && strcmp (tid, task_id) == 0)
            snprintf (out, len, "%s", wid);
    }
    free (panes);
}

static cJSON *
s_agent_send (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    const char *text = NULL;
    int64_t wait = 5;
    char id[64];
    if (ccm_get_string (req, "text", true, 64 * 1024, &text, err)
        || ccm_get_int (req, "wait_s", false, 0, 60, &wait, err))
        return NULL;
    if (!*text || strcmp (text, "--json") == 0) {
        //  "--json" is the one argument ccm takes out wherever it stands.
        ccm_fail (err, "bad_field", "text", "text: must not be empty or \"--json\"");
        return NULL;
    }
    if (s_task_id (self, req, id, sizeof id, NULL, err))
        return NULL;
    char window[32];
    s_window (self->gw, id, window, sizeof window);
    if (!window[0]) {
        ccm_fail (err, "not_found", "task", "task %s has no running agent window", id);
        return NULL;
    }
    char wait_text[16];
    snprintf (wait_text, sizeof wait_text, "%d", (int) wait);
    cJSON *result = s_ccm (self, (char *[]){"send", "--wait", wait_text, id, (char *) text, NULL},
                           (int) (wait * 2 + 20) * 1000, err);
    if (result) {
        const char *message = cJSON_GetStringValue (cJSON_GetObjectItem (result, "message"));
        cJSON_AddStringToObject (result, "delivery",
                                 message && strstr (message, "confirmed")
                                         && !strstr (message, "not confirmed")
                                     ? "confirmed"
                                     : "sent");
    }
    return result;
}

static cJSON *
s_permission_answer (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    static const char *const decisions[] = {"allow", "deny", NULL};
    static const char *const fields[] = {"request", "decision", "reason", NULL};
    const char *decision = NULL;
    if (!cJSON_GetObjectItem (req, "request")) {
        ccm_fail (err, "missing_field", "request", "request: required");
        return NULL;
    }
    if (ccm_get_enum (req, "decision", true, decisions, &decision, err))
        return NULL;
    cJSON *body = s_body (req, fields);
    cJSON_AddStringToObject (body, "by", "gateway");
    cJSON *idem = cJSON_GetObjectItem (req, "idem");
    if (cJSON_IsString (idem))
        cJSON_AddStringToObject (body, "idem", idem->valuestring);
    cJSON *reply = s_store (self, "permission.answer", body, true, err);
    cJSON_Delete (body);
    return reply;
}

//  The full id of req's task into id if its worktree may be merged or
//  discarded now: the task is over (no agent works in it) and the worktree
//  is still active. Else -1 with a typed error.
static int
s_worktree_task (s_worker_t *self, cJSON *req, char *id, size_t len, ccm_error_t *err)
{
    cJSON *task_reply = NULL;
    if (s_task_id (self, req, id, len, &task_reply, err))
        return -1;
    const char *status = cJSON_GetStringValue (
        cJSON_GetObjectItem (cJSON_GetObjectItem (task_reply, "task"), "status"));
    char state[32];
    snprintf (state, sizeof state, "%s", status ? status : "?");
    cJSON_Delete (task_reply);
    if (strcmp (state, "complete") && strcmp (state, "failed") && strcmp (state, "cancelled")) {
        ccm_fail (err, "conflict", "task",
                  "task %s is %s: its agent may still work in the worktree; wait for it to end "
                  "or cancel it",
                  id, state);
        return -1;
    }
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", id);
    cJSON *reply = s_store (self, "worktree.list", body, false, err);
    cJSON_Delete (body);
    if (!reply)
        return -1;
    cJSON *row = cJSON_GetArrayItem (cJSON_GetObjectItem (reply, "worktrees"), 0);
    const char *wt_status = cJSON_GetStringValue (cJSON_GetObjectItem (row, "status"));
    int rc = 0;
    if (!row) {
        ccm_fail (err, "not_found", "task", "task %s has no worktree", id);
        rc = -1;
    }
    else if (!wt_status || strcmp (wt_status, "active") != 0) {
        ccm_fail (err, "conflict", "task", "the worktree of task %s is %s already", id,
                  wt_status ? wt_status : "gone");
        rc = -1;
    }
    cJSON_Delete (reply);
    return rc;
}

static cJSON *
s_worktree_merge (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    char id[64];
    if (s_worktree_task (self, req, id, sizeof id, err))
        return NULL;
    return s_ccm (self, (char *[]){"worktree", "merge", id, NULL}, 120000, err);
}

static cJSON *
s_worktree_discard (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    bool force = false;
    char id[64];
    if (ccm_get_bool (req, "force", false, &force, err)
        || s_worktree_task (self, req, id, sizeof id, err))
        return NULL;
    return s_ccm (self, (char *[]){"worktree", "discard", id, force ? "--force" : NULL, NULL},
                  120000, err);
}

static cJSON *
s_terminal_input (s_worker_t *self, cJSON *req, ccm_error_t *err)
{
    const char *text = NULL;
    cJSON *keys = NULL;
    if (ccm_get_string (req, "text", false, 64 * 1024, &text, err)
        || ccm_get_array (req, "keys", false, 1, 32, &keys, err))
        return NULL;
    if (!text && !keys) {
        ccm_fail (err, "missing_field", "text", "text or keys: one is required");
        return NULL;
    }
    cJSON *key;
    cJSON_ArrayForEach (key, keys)
    {
        const char *name = cJSON_GetStringValue (key);
        size_t n = name ? strlen (name) : 0;
        bool ok = n >= 1 && n <= 16;
        for (size_t i = 0; ok && i < n; i++)
            ok = (name[i] >= 'A' && name[i] <= 'Z') || (name[i] >= 'a' && name[i] <= 'z')
                 || (name[i] >= '0' && name[i] <= '9') || name[i] == '-';
        if (!ok) {
            ccm_fail (err, "bad_field", "keys", "keys: a tmux key name such as Enter or C-c");
            return NULL;
        }
    }
    char id[64], window[32];
    if (s_task_id (self, req, id, sizeof id, NULL, err))
        return NULL;
    s_window (self->gw, id, window, sizeof window);
    if (!window[0]) {
        ccm_fail (err, "not_found", "task", "task %s has no running agent window", id);
        return NULL;
    }
    int rc = 0;
    if (text && *text)
        rc = ccm_proc_run ((char *[]){"tmux", "-S", self->gw->tmux_socket, "send-keys", "-t",
                                      window, "-l", "--", (char *) text, NULL},
                           NULL, NULL, 10000);
    cJSON_ArrayForEach (key, keys)
    {
        if (rc == 0)
            rc = ccm_proc_run ((char *[]){"tmux", "-S", self->gw->tmux_socket, "send-keys", "-t",
                                          window, key->valuestring, NULL},
                               NULL, NULL, 10000);
    }
    if (rc != 0) {
        ccm_fail (err, "failed", NULL, "tmux could not type into window %s", window);
        return NULL;
    }
    return cJSON_CreateObject ();
}

static const struct {
    const char *name;
    s_cmd_fn *run;
} s_cmds[] = {
    {"ping", s_ping},
    {"stats", s_stats},
    {"systems", s_systems},
    {"contexts", s_contexts},
    {"projects", s_projects},
    {"tasks", s_tasks},
    {"task", s_task},
    {"agents", s_agents},
    {"timeline", s_timeline},
    {"result", s_result},
    {"events", s_events},
    {"sync", s_sync},
    {"permissions", s_permissions},
    {"task.add", s_task_add},
    {"task.cancel", s_task_cancel},
    {"task.retry", s_task_retry},
    {"agent.send", s_agent_send},
    {"permission.answer", s_permission_answer},
    {"worktree.merge", s_worktree_merge},
    {"worktree.discard", s_worktree_discard},
    {"terminal.input", s_terminal_input},
};

static s_cmd_fn *
s_lookup (const char *cmd)
{
    for (size_t i = 0; i < sizeof s_cmds / sizeof s_cmds[0]; i++)
        if (strcmp (s_cmds[i].name, cmd) == 0)
            return s_cmds[i].run;
    return NULL;
}

bool
gw_cmd_known (const char *cmd)
{
    return s_lookup (cmd) != NULL;
}

//  ------------------------------------------------------------ jobs

static void
s_run_cmd (s_worker_t *self, gw_job_t *job)
{
    cJSON *id = cJSON_GetObjectItem (job->request, "id");
    const char *cmd = cJSON_GetStringValue (cJSON_GetObjectItem (job->request, "cmd"));
    ccm_error_t err = {0};
    cJSON *result = s_lookup (cmd) (self, job->request, &err);
    gw_mail_t *mail = calloc (1, sizeof *mail);
    if (!mail) {
        cJSON_Delete (result);
        return;
    }
    mail->kind = GW_MAIL_REPLY;
    mail->conn_id = job->conn_id;
    if (!result && !err.code)
        ccm_fail (&err, "internal", NULL, "%s failed", cmd);
    if (!result && strcmp (err.code, "internal") == 0)
        ccm_error ("%s: %s", cmd, err.message);
    mail->text = result ? gw_reply_ok (id, result) : s_reply_err (id, &err);
    gw_mail_post (self->gw, mail);
}

//  Resolves a subscription's names to ids, and its start.
static void
s_run_subscribe (s_worker_t *self, gw_job_t *job)
{
    cJSON *req = job->request, *id = cJSON_GetObjectItem (req, "id");
    ccm_error_t err = {0};
    gw_filter_t *filter = NULL;
    int64_t since = -1, head = -1;
    cJSON *since_item = cJSON_GetObjectItem (req, "since_seq");
    if (gw_filter_parse (cJSON_GetObjectItem (req, "filters"), &filter, &err) == 0
        && (!since_item
            || ccm_get_int (req, "since_seq", false, 0, INT64_C (1) << 53, &since, &err) == 0)) {
        cJSON *body = cJSON_CreateObject ();
        cJSON *reply = s_store (self, "ping", body, false, &err);
        cJSON_Delete (body);
        head = reply ? (int64_t) cJSON_GetNumberValue (cJSON_GetObjectItem (reply, "seq")) : -1;
        cJSON_Delete (reply);
        if (head >= 0 && since > head)
            ccm_fail (&err, "bad_field", "since_seq",
                      "since_seq: %lld is past the newest event (%lld)", (long long) since,
                      (long long) head);
    }
    if (!err.code && filter->project_id) {
        cJSON *body = cJSON_CreateObject ();
        cJSON *reply = s_store (self, "project.list", body, false, &err);
        cJSON_Delete (body);
        cJSON *project;
        const char *found = NULL;
        cJSON_ArrayForEach (project, cJSON_GetObjectItem (reply, "projects"))
        {
            const char *pid = cJSON_GetStringValue (cJSON_GetObjectItem (project, "id"));
            const char *name = cJSON_GetStringValue (cJSON_GetObjectItem (project, "name"));
            if ((pid && strcmp (pid, filter->project_id) == 0)
                || (name && strcmp (name, filter->project_id) == 0))
                found = pid;
        }
        if (reply && !found)
            ccm_fail (&err, "not_found", "filters.project", "no project '%.64s'",
                      filter->project_id);
        else if (found) {
            free (filter->project_id);
            filter->project_id = strdup (found);
        }
        cJSON_Delete (reply);
    }
    if (!err.code && filter->task_id) {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", filter->task_id);
        cJSON *reply = s_store (self, "task.get", body, false, &err);
        cJSON_Delete (body);
        if (reply) {
            free (filter->task_id);
            filter->task_id = strdup (cJSON_GetStringValue (
                cJSON_GetObjectItem (cJSON_GetObjectItem (reply, "task"), "id")));
        }
        else if (strcmp (err.code, "not_found") == 0 || strcmp (err.code, "ambiguous") == 0)
            snprintf (err.field, sizeof err.field, "filters.task");
        cJSON_Delete (reply);
    }
    if (!err.code && filter->agent_id) {
        //  An agent's events carry its task: follow that task too.
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "agent", filter->agent_id);
        cJSON *reply = s_store (self, "agent.list", body, false, &err);
        cJSON_Delete (body);
        cJSON *agent = cJSON_GetArrayItem (cJSON_GetObjectItem (reply, "agents"), 0);
        const char *task = cJSON_GetStringValue (cJSON_GetObjectItem (agent, "task_id"));
        if (task)
            filter->agent_task_id = strdup (task);
        cJSON_Delete (reply);
    }
    gw_mail_t *mail = calloc (1, sizeof *mail);
    if (!mail) {
        gw_filter_destroy (&filter);
        return;
    }
    mail->kind = GW_MAIL_SUBSCRIBED;
    mail->conn_id = job->conn_id;
    mail->gen = job->gen;
    if (err.code) {
        mail->text = s_reply_err (id, &err);
        gw_filter_destroy (&filter);
    }
    else {
        mail->filter = filter;
        mail->since = since < 0 ? head : since;
        mail->last_seq = head;
        cJSON *result = cJSON_CreateObject ();
        cJSON_AddNumberToObject (result, "head", (double) head);
        cJSON_AddNumberToObject (result, "since_seq", (double) mail->since);
        mail->text = gw_reply_ok (id, result);
    }
    gw_mail_post (self->gw, mail);
}

static void
s_run_replay (s_worker_t *self, gw_job_t *job)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddNumberToObject (body, "seq", (double) job->seq);
    cJSON_AddNumberToObject (body, "limit", 1000);
    if (job->task_filter)
        cJSON_AddStringToObject (body, "task", job->task_filter);
    if (job->topic_filter)
        cJSON_AddStringToObject (body, "topic", job->topic_filter);
    ccm_error_t err = {0};
    cJSON *reply = s_store (self, "events.since", body, false, &err);
    cJSON_Delete (body);
    gw_mail_t *mail = calloc (1, sizeof *mail);
    if (!mail) {
        cJSON_Delete (reply);
        return;
    }
    mail->kind = GW_MAIL_PAGE;
    mail->conn_id = job->conn_id;
    mail->gen = job->gen;
    if (reply) {
        mail->nevents = gw_enrich (self->gw->cache, self->store,
                                   cJSON_GetObjectItem (reply, "events"), &mail->events);
        if (mail->nevents < 0)
            mail->nevents = 0;
        mail->more = cJSON_IsTrue (cJSON_GetObjectItem (reply, "more"));
        mail->last_seq = (int64_t) cJSON_GetNumberValue (cJSON_GetObjectItem (reply, "last_seq"));
    }
    else {
        //  The store is away: the main thread asks again later.
        ccm_warn ("replay from %lld: %s", (long long) job->seq, err.message);
        mail->last_seq = -1;
    }
    cJSON_Delete (reply);
    gw_mail_post (self->gw, mail);
}

static void
s_run_terminal (s_worker_t *self, gw_job_t *job)
{
    cJSON *req = job->request, *id = cJSON_GetObjectItem (req, "id");
    ccm_error_t err = {0};
    bool control = false;
    char task[64], window[32] = "";
    if (ccm_get_bool (req, "control", false, &control, &err) == 0
        && s_task_id (self, req, task, sizeof task, NULL, &err) == 0) {
        s_window (self->gw, task, window, sizeof window);
        if (!window[0])
            ccm_fail (&err, "not_found", "task", "task %s has no running agent window", task);
    }
    gw_mail_t *mail = calloc (1, sizeof *mail);
    if (!mail)
        return;
    mail->conn_id = job->conn_id;
    if (err.code) {
        mail->kind = GW_MAIL_REPLY;
        mail->text = s_reply_err (id, &err);
    }
    else {
        mail->kind = GW_MAIL_WINDOW;
        mail->task = strdup (task);
        mail->window = strdup (window);
        mail->control = control;
        cJSON *result = cJSON_CreateObject ();
        cJSON_AddStringToObject (result, "task", task);
        cJSON_AddStringToObject (result, "window", window);
        cJSON_AddBoolToObject (result, "control", control);
        mail->text = gw_reply_ok (id, result);
    }
    gw_mail_post (self->gw, mail);
}

static void *
s_worker (void *arg)
{
    gw_t *gw = arg;
    s_worker_t self = {.gw = gw};
    self.store = ccm_client_new (ccm_config_str (gw->config, "store.endpoint"),
                                 (int) ccm_config_int (gw->config, "bus.timeout_ms"),
                                 (int) ccm_config_int (gw->config, "bus.retries"));
    if (!self.store) {
        ccm_error ("worker: cannot connect to the store");
        return NULL;
    }
    while (true) {
        pthread_mutex_lock (&gw->job_lock);
        gw->workers_idle++;
        while (!gw->job_head && !gw->stop)
            pthread_cond_wait (&gw->job_cond, &gw->job_lock);
        gw->workers_idle--;
        gw_job_t *job = gw->job_head;
        if (job) {
            gw->job_head = job->next;
            if (!gw->job_head)
                gw->job_tail = NULL;
            gw->jobs_queued--;
        }
        pthread_mutex_unlock (&gw->job_lock);
        if (!job)
            break;  //  stopping, nothing left
        if (job->kind == GW_JOB_CMD)
            s_run_cmd (&self, job);
        else if (job->kind == GW_JOB_SUBSCRIBE)
            s_run_subscribe (&self, job);
        else if (job->kind == GW_JOB_REPLAY)
            s_run_replay (&self, job);
        else
            s_run_terminal (&self, job);
        gw_job_destroy (&job);
    }
    ccm_client_destroy (&self.store);
    return NULL;
}

int
gw_work_start (gw_t *self)
{
    self->workers = calloc ((size_t) self->nworkers, sizeof (pthread_t));
    if (!self->workers)
        return -1;
    //  One now; gw_job_post starts the others when requests wait.
    pthread_mutex_lock (&self->job_lock);
    int rc = pthread_create (&self->workers[0], NULL, s_worker, self);
    if (rc == 0)
        self->workers_started = 1;
    pthread_mutex_unlock (&self->job_lock);
    return rc ? -1 : 0;
}

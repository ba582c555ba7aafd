/*  hooks_auto: automations, "on an event matching X, do Y", from
    $CCM_HOME/automations.json:

        {"automations": [
          {"name": "tell-me", "on": {"hook_type": "^(Stop|Notification)$"},
           "do": {"webhook": {"url": "https://ntfy.sh/my-topic", "shape": "ntfy"}}},
          {"name": "review", "on": {"hook_type": "^Stop$", "task": true},
           "do": {"task": {"prompt": "Review what task {task_id} changed", "type": "supervisory"}}},
          {"name": "log", "on": {"hook_type": "Failure$", "tool_name": "^Bash$"},
           "do": {"command": ["logger", "-t", "ccm", "{hook_type} {tool_name} {task_id}"]}}]}

    "on" holds extended regular expressions on the event's fields
    (hook_type, tool_name, file_path, agent_id), and "task": true for
    events of a task. Placeholders {hook_type} {task_id} {agent_id}
    {tool_name} {file_path} {session_id} {automation} are filled in each
    argv element, prompt and message: a command is an argv, never a shell
    string. Webhook shapes: "generic" (JSON of the event), "slack"
    ({"text"}), "ntfy" (plain text with a Title header).

    The actions run in an actor thread, off the ingest path, on a zloop of
    their own: webhooks over curl multi, commands as child processes, each
    with a timeout and up to S_ATTEMPTS attempts, and store requests
    (task.get, task.add, automation.add) through a ccm_req, so no action
    waits for the store or holds up another. A follow-up task's
    idempotency key comes from the event's uid, so a replayed event never
    adds the task twice. Every outcome goes to automation_events.         */

#include "hooks_internal.h"

#include "ccm_id.h"
#include "ccm_log.h"
#include "ccm_req.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <regex.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#define S_ATTEMPTS   3
#define S_TIMEOUT_MS 10000
#define S_RETRY_MS   1000
#define S_FIELDS     4
#define S_CHECK_MS   10  //  how often running jobs are looked at (curl, children)
#define S_STORE_MS   3000
#define S_STORE_TRY  3  //  retries of a store request before the attempt fails
#define S_WINDOW     8  //  store requests in flight at once

extern char **environ;

static const char *const s_fields[S_FIELDS] = {"hook_type", "tool_name", "file_path", "agent_id"};

typedef struct {
    char *name;
    regex_t match[S_FIELDS];
    bool has[S_FIELDS];
    bool needs_task;
    cJSON *action;  //  the "do" object
} s_rule_t;

typedef struct _s_runner_t s_runner_t;

//  One run of an action, until it succeeds or runs out of attempts.
typedef struct {
    s_runner_t *runner;
    char *automation;
    char *kind;     //  webhook, command, task
    cJSON *action;  //  the "do" object (owned copy)
    cJSON *event;   //  the fields placeholders use (owned)
    int attempts;
    int64_t next_ms;  //  when to start the next attempt
    //  While an attempt runs:
    CURL *curl;
    struct curl_slist *headers;
    char *body;
    pid_t pid;
    int64_t deadline_ms;
    cJSON *task_body;  //  a task's task.add, while its project is looked up
    bool storing;      //  a task's store request is in flight
    char last_error[256];
} s_job_t;

//  --------------------------------------------------------------------------
//  Rules (in the ingester's thread)

struct hooks_auto_t {
    s_rule_t *rules;
    int count;
    hooks_stamp_t loaded;  //  the version of the file the rules came from
    hooks_stamp_t failed;  //  the last broken version, reported once
    bool checked;          //  loaded is set: the file was read once
    zactor_t *actor;
};

static void
s_rules_free (s_rule_t *rules, int count)
{
    for (int i = 0; i < count; i++) {
        free (rules[i].name);
        for (int f = 0; f < S_FIELDS; f++)
            if (rules[i].has[f])
                regfree (&rules[i].match[f]);
        cJSON_Delete (rules[i].action);
    }
    free (rules);
}

//  Loads the rules at path into self; a broken file is reported (if report)
//  and the rules in force are kept. Returns 0 or -1.
static int
s_load (hooks_auto_t *self, const char *path, bool report)
{
    FILE *file = fopen (path, "rb");
    if (!file) {
        s_rules_free (self->rules, self->count);
        self->rules = NULL;
        self->count = 0;
        return 0;
    }
    char *text = malloc (1 << 20);
    size_t n = text ? fread (text, 1, (1 << 20) - 1, file) : 0;
    fclose (file);
    if (!text)
        return -1;
    text[n] = 0;
    cJSON *json = cJSON_Parse (text);
    free (text);
    cJSON *list = cJSON_GetObjectItemCaseSensitive (json, "automations");
    if (!cJSON_IsArray (list)) {
        if (report)
            ccm_error ("%s: needs {\"automations\": [...]}; automations not changed", path);
        cJSON_Delete (json);
        return -1;
    }
    s_rule_t *rules = calloc ((size_t) cJSON_GetArraySize (list) + 1, sizeof *rules);
    int count = 0, rc = 0;
    cJSON *item;
    cJSON_ArrayForEach (item, list)
    {
        s_rule_t *rule = &rules[count++];
        const char *name = cJSON_GetStringValue (cJSON_GetObjectItemCaseSensitive (item, "name"));
        rule->name = strdup (name ? name : "unnamed");
        cJSON *on = cJSON_GetObjectItemCaseSensitive (item, "on");
        cJSON *action = cJSON_GetObjectItemCaseSensitive (item, "do");
        const char *kinds[] = {"webhook", "command", "task"};
        int found = 0;
        for (int k = 0; k < 3; k++)
            found += cJSON_GetObjectItemCaseSensitive (action, kinds[k]) != NULL;
        if (!cJSON_IsObject (on) || found != 1) {
            if (report)
                ccm_error (
                    "%s: automation '%s' needs \"on\": {...} and \"do\" with one of webhook, "
                    "command, task; automations not changed",
                    path, rule->name);
            rc = -1;
            break;
        }
        rule->action = cJSON_Duplicate (action, true);
        rule->needs_task = cJSON_IsTrue (cJSON_GetObjectItemCaseSensitive (on, "task"));
        for (int f = 0; f < S_FIELDS && rc == 0; f++) {
            const char *pattern = cJSON_GetStringValue (cJSON_GetObjectItem (on, s_fields[f]));
            if (!pattern)
                continue;
            if (regcomp (&rule->match[f], pattern, REG_EXTENDED | REG_NOSUB)) {
                if (report)
                    ccm_error ("%s: automation '%s': bad regular expression for %s; automations "
                               "not changed",
                               path, rule->name, s_fields[f]);
                rc = -1;
            }
            else
                rule->has[f] = true;
        }
        if (rc)
            break;
    }
    cJSON_Delete (json);
    if (rc) {
        s_rules_free (rules, count);
        return -1;
    }
    s_rules_free (self->rules, self->count);
    self->rules = rules;
    self->count = count;
    ccm_info ("%d automation(s) loaded from %s", count, path);
    return 0;
}

void
hooks_auto_refresh (hooks_auto_t *self, const char *path)
{
    //  The whole stamp, not the mtime's seconds: a second save within the
    //  same second, or a rename-over, is a new version too.
    hooks_stamp_t stamp = hooks_stamp (path);
    if (self->checked && hooks_stamp_same (&stamp, &self->loaded))
        return;
    //  A file that does not parse may be half-written: its stamp is not
    //  taken, so the next scan reads it again. Its error is logged once.
    bool report = !hooks_stamp_same (&stamp, &self->failed);
    if (s_load (self, path, report) == 0) {
        self->loaded = stamp;
        self->checked = true;
        self->failed = (hooks_stamp_t){0};
    }
    else
        self->failed = stamp;
}

void
hooks_auto_event (hooks_auto_t *self, cJSON *event)
{
    for (int i = 0; i < self->count; i++) {
        s_rule_t *rule = &self->rules[i];
        bool match = !rule->needs_task || cJSON_GetObjectItem (event, "task_id");
        for (int f = 0; f < S_FIELDS && match; f++) {
            if (!rule->has[f])
                continue;
            const char *value = cJSON_GetStringValue (cJSON_GetObjectItem (event, s_fields[f]));
            match = value && regexec (&rule->match[f], value, 0, NULL, 0) == 0;
        }
        if (!match)
            continue;
        //  The job crosses to the actor as JSON text: automation, do, event.
        cJSON *job = cJSON_CreateObject ();
        cJSON_AddStringToObject (job, "automation", rule->name);
        cJSON_AddItemToObject (job, "do", cJSON_Duplicate (rule->action, true));
        cJSON *fields = cJSON_AddObjectToObject (job, "event");
        const char *keys[] = {"hook_type",  "task_id", "agent_id",       "tool_name", "file_path",
                              "session_id", "uid",     "hook_timestamp", "system_id", NULL};
        for (int k = 0; keys[k]; k++) {
            const char *value = cJSON_GetStringValue (cJSON_GetObjectItem (event, keys[k]));
            if (value)
                cJSON_AddStringToObject (fields, keys[k], value);
        }
        char *text = cJSON_PrintUnformatted (job);
        zstr_send (self->actor, text);
        free (text);
        cJSON_Delete (job);
    }
}

//  --------------------------------------------------------------------------
//  The actor: runs the jobs.

struct _s_runner_t {
    zsock_t *pipe;
    zloop_t *loop;
    ccm_req_t *store;
    CURLM *multi;
    zlistx_t *jobs;  //  s_job_t
    int timer;       //  the check timer, while there are jobs
    bool stop;       //  $TERM came
};

//  template with {field} replaced by the event's fields. Caller frees.
static char *
s_fill (const char *template, cJSON *event, const char *automation)
{
    char *out = NULL;
    size_t size = 0;
    FILE *stream = open_memstream (&out, &size);
    for (const char *p = template; *p; p++) {
        const char *close = *p == '{' ? strchr (p, '}') : NULL;
        if (close && close - p < 32) {
            char key[32];
            snprintf (key, sizeof key, "%.*s", (int) (close - p - 1), p + 1);
            const char *value = strcmp (key, "automation") == 0
                                    ? automation
                                    : cJSON_GetStringValue (cJSON_GetObjectItem (event, key));
            bool known = value || strcmp (key, "automation") == 0;
            for (int f = 0; !known && f < S_FIELDS; f++)
                known = strcmp (key, s_fields[f]) == 0;
            known = known || strcmp (key, "task_id") == 0 || strcmp (key, "session_id") == 0;
            if (known) {
                fputs (value ? value : "", stream);
                p = close;
                continue;
            }
        }
        fputc (*p, stream);
    }
    fclose (stream);
    return out;
}

//  automation.add answered; arg is what it recorded, for the log.
static void
s_recorded (void *arg, int rc, cJSON *reply)
{
    char *what = arg;
    if (rc)
        ccm_warn ("%s not recorded: %s", what,
                  rc == CCM_ECLOSED ? "stopped before the store answered"
                                    : ccm_client_strerror (rc, reply));
    free (what);
}

static void
s_record (s_runner_t *self, s_job_t *job, const char *outcome, const char *message)
{
    cJSON *body = cJSON_CreateObject ();
    char key[CCM_UUID_LEN + 1];
    ccm_uuid (key);
    cJSON_AddStringToObject (body, "idem", key);
    cJSON_AddStringToObject (body, "automation", job->automation);
    cJSON_AddStringToObject (body, "action", job->kind);
    cJSON_AddStringToObject (body, "outcome", outcome);
    const char *task = cJSON_GetStringValue (cJSON_GetObjectItem (job->event, "task_id"));
    if (task && ccm_uuid_valid (task))
        cJSON_AddStringToObject (body, "task_id", task);
    const char *uid = cJSON_GetStringValue (cJSON_GetObjectItem (job->event, "uid"));
    if (uid)
        cJSON_AddStringToObject (body, "event_uid", uid);
    cJSON *details = cJSON_AddObjectToObject (body, "details");
    cJSON_AddNumberToObject (details, "attempts", job->attempts);
    if (message)
        cJSON_AddStringToObject (details, "message", message);
    char *what = zsys_sprintf ("automation '%s': outcome %s", job->automation, outcome);
    if (ccm_req_send (self->store, "automation.add", &body, s_recorded, what)) {
        ccm_warn ("%s not recorded: cannot send", what);
        free (what);
    }
    ccm_info ("automation '%s' (%s): %s%s%s", job->automation, job->kind, outcome,
              message ? ": " : "", message ? message : "");
}

static void
s_job_destroy (s_job_t **job_p)
{
    s_job_t *job = *job_p;
    if (!job)
        return;
    free (job->automation);
    free (job->kind);
    free (job->body);
    curl_slist_free_all (job->headers);
    cJSON_Delete (job->action);
    cJSON_Delete (job->event);
    cJSON_Delete (job->task_body);
    free (job);
    *job_p = NULL;
}

//  An attempt failed: retry later, or record the failure.
static bool
s_attempt_failed (s_runner_t *self, s_job_t *job, const char *why)
{
    snprintf (job->last_error, sizeof job->last_error, "%.250s", why);
    if (job->attempts >= S_ATTEMPTS) {
        s_record (self, job, "failed", why);
        return true;  //  done with it
    }
    job->next_ms = ccm_mono_ms () + S_RETRY_MS * job->attempts;
    return false;
}

static void
s_start_webhook (s_runner_t *self, s_job_t *job, cJSON *hook)
{
    const char *url = cJSON_GetStringValue (cJSON_GetObjectItem (hook, "url"));
    const char *shape = cJSON_GetStringValue (cJSON_GetObjectItem (hook, "shape"));
    const char *message = cJSON_GetStringValue (cJSON_GetObjectItem (hook, "message"));
    char *text = s_fill (message ? message : "{hook_type} {tool_name} (task {task_id})", job->event,
                         job->automation);
    free (job->body);
    curl_slist_free_all (job->headers);
    job->headers = NULL;
    if (shape && strcmp (shape, "ntfy") == 0) {
        job->body = text;
        char *title = s_fill ("Title: ccm {automation}: {hook_type}", job->event, job->automation);
        job->headers = curl_slist_append (job->headers, title);
        job->headers = curl_slist_append (job->headers, "Content-Type: text/plain; charset=utf-8");
        free (title);
    }
    else {
        cJSON *json = cJSON_CreateObject ();
        if (shape && strcmp (shape, "slack") == 0)
            cJSON_AddStringToObject (json, "text", text);
        else {
            cJSON_AddStringToObject (json, "automation", job->automation);
            cJSON_AddStringToObject (json, "message", text);
            cJSON_AddItemToObject (json, "event", cJSON_Duplicate (job->event, true));
        }
        free (text);
        job->body = cJSON_PrintUnformatted (json);
        cJSON_Delete (json);
        job->headers = curl_slist_append (job->headers, "Content-Type: application/json");
    }
    cJSON *extra = cJSON_GetObjectItem (hook, "headers");
    cJSON *item;
    cJSON_ArrayForEach (item, extra) if (cJSON_IsString (item))
    {
        char *line = NULL;
        if (asprintf (&line, "%s: %s", item->string, item->valuestring) >= 0)
            job->headers = curl_slist_append (job->headers, line);
        free (line);
    }
    job->curl = curl_easy_init ();
    curl_easy_setopt (job->curl, CURLOPT_URL, url ? url : "");
    curl_easy_setopt (job->curl, CURLOPT_POSTFIELDS, job->body);
    curl_easy_setopt (job->curl, CURLOPT_HTTPHEADER, job->headers);
    curl_easy_setopt (job->curl, CURLOPT_TIMEOUT_MS, (long) S_TIMEOUT_MS);
    curl_easy_setopt (job->curl, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt (job->curl, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt (job->curl, CURLOPT_PRIVATE, job);
    curl_multi_add_handle (self->multi, job->curl);
}

static void
s_start_command (s_runner_t *self, s_job_t *job, cJSON *argv_json)
{
    int n = cJSON_GetArraySize (argv_json);
    char **argv = calloc ((size_t) n + 1, sizeof *argv);
    int i = 0;
    cJSON *item;
    cJSON_ArrayForEach (item, argv_json) if (cJSON_IsString (item)) argv[i++] =
        s_fill (item->valuestring, job->event, job->automation);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init (&actions);
    posix_spawn_file_actions_addopen (&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawnattr_t attr;
    posix_spawnattr_init (&attr);
    posix_spawnattr_setflags (&attr, POSIX_SPAWN_SETPGROUP | POSIX_SPAWN_SETSIGMASK);
    sigset_t none;
    sigemptyset (&none);
    posix_spawnattr_setsigmask (&attr, &none);
    int rc = i > 0 ? posix_spawnp (&job->pid, argv[0], &actions, &attr, argv, environ) : EINVAL;
    posix_spawn_file_actions_destroy (&actions);
    posix_spawnattr_destroy (&attr);
    for (int k = 0; k < i; k++)
        free (argv[k]);
    free (argv);
    if (rc) {
        job->pid = 0;
        char why[300];
        snprintf (why, sizeof why, "cannot run the command: %s", strerror (rc));
        if (s_attempt_failed (self, job, why))
            job->next_ms = -1;  //  finished
    }
}

//  task.add answered: the attempt's outcome.
static void
s_task_added (void *arg, int rc, cJSON *reply)
{
    s_job_t *job = arg;
    job->storing = false;
    if (rc == CCM_ECLOSED)
        return;  //  stopping
    if (rc == 0) {
        const char *id =
            cJSON_GetStringValue (cJSON_GetObjectItem (cJSON_GetObjectItem (reply, "task"), "id"));
        char message[128];
        snprintf (message, sizeof message, "task %s added", id ? id : "?");
        s_record (job->runner, job, "ok", message);
        job->next_ms = -1;
    }
    else if (s_attempt_failed (job->runner, job, ccm_client_strerror (rc, reply)))
        job->next_ms = -1;
}

static void
s_task_add (s_job_t *job)
{
    cJSON *body = job->task_body;
    job->task_body = NULL;
    job->storing = true;
    if (ccm_req_send (job->runner->store, "task.add", &body, s_task_added, job)) {
        job->storing = false;
        if (s_attempt_failed (job->runner, job, "task.add: cannot send"))
            job->next_ms = -1;
    }
}

//  task.get answered: by default the follow-up goes to the project of the
//  event's task (none if it cannot be read).
static void
s_task_got (void *arg, int rc, cJSON *reply)
{
    s_job_t *job = arg;
    job->storing = false;
    if (rc == CCM_ECLOSED)
        return;
    cJSON *task = cJSON_GetObjectItem (reply, "task");
    const char *name = cJSON_GetStringValue (cJSON_GetObjectItem (task, "requires_project"));
    if (rc == 0 && name)
        cJSON_AddStringToObject (job->task_body, "project", name);
    s_task_add (job);
}

static void
s_start_task (s_runner_t *self, s_job_t *job, cJSON *spec)
{
    const char *prompt = cJSON_GetStringValue (cJSON_GetObjectItem (spec, "prompt"));
    char *filled = s_fill (prompt ? prompt : "Review task {task_id}", job->event, job->automation);
    cJSON *body = cJSON_CreateObject ();
    //  The same event and automation always give the same key: a replayed
    //  event finds the task already added.
    char key[128];
    snprintf (key, sizeof key, "auto:%.40s:%.64s", job->automation,
              cJSON_GetStringValue (cJSON_GetObjectItem (job->event, "uid")));
    cJSON_AddStringToObject (body, "idem", key);
    cJSON_AddStringToObject (body, "prompt", filled);
    free (filled);
    const char *project = cJSON_GetStringValue (cJSON_GetObjectItem (spec, "project"));
    const char *parent = cJSON_GetStringValue (cJSON_GetObjectItem (job->event, "task_id"));
    if (parent && !ccm_uuid_valid (parent))
        parent = NULL;
    //  By default a follow-up reviews the event's task (a supervisory task
    //  names the task it reviews); an event without a task gets a worker.
    const char *type = cJSON_GetStringValue (cJSON_GetObjectItem (spec, "type"));
    if (!type)
        type = parent ? "supervisory" : "worker";
    cJSON_AddStringToObject (body, "task_type", type);
    if (parent && strcmp (type, "supervisory") == 0)
        cJSON_AddStringToObject (body, "parent_task_id", parent);
    if (project)
        cJSON_AddStringToObject (body, "project", project);
    const char *agent = cJSON_GetStringValue (cJSON_GetObjectItem (spec, "agent"));
    if (agent)
        cJSON_AddStringToObject (body, "agent", agent);
    cJSON *metadata = cJSON_AddObjectToObject (body, "metadata");
    cJSON_AddStringToObject (metadata, "automation", job->automation);
    if (parent)
        cJSON_AddStringToObject (metadata, "parent_task", parent);
    cJSON_Delete (job->task_body);
    job->task_body = body;
    if (!project && parent) {
        //  The project of the event's task first; task.add once it is read.
        cJSON *get = cJSON_CreateObject ();
        cJSON_AddStringToObject (get, "task", parent);
        job->storing = true;
        if (ccm_req_send (self->store, "task.get", &get, s_task_got, job) == 0)
            return;
        job->storing = false;
    }
    s_task_add (job);
}

//  Starts the next attempt of job.
static void
s_start (s_runner_t *self, s_job_t *job)
{
    job->attempts++;
    job->next_ms = 0;
    job->deadline_ms = ccm_mono_ms () + S_TIMEOUT_MS;
    cJSON *spec = cJSON_GetObjectItem (job->action, job->kind);
    if (strcmp (job->kind, "webhook") == 0)
        s_start_webhook (self, job, spec);
    else if (strcmp (job->kind, "command") == 0)
        s_start_command (self, job, spec);
    else
        s_start_task (self, job, spec);
}

static void
s_take_job (s_runner_t *self, const char *text)
{
    cJSON *json = cJSON_Parse (text);
    s_job_t *job = calloc (1, sizeof *job);
    job->runner = self;
    job->automation = strdup (cJSON_GetStringValue (cJSON_GetObjectItem (json, "automation")));
    job->action = cJSON_DetachItemFromObject (json, "do");
    job->event = cJSON_DetachItemFromObject (json, "event");
    const char *kinds[] = {"webhook", "command", "task"};
    for (int k = 0; k < 3 && !job->kind; k++)
        if (cJSON_GetObjectItem (job->action, kinds[k]))
            job->kind = strdup (kinds[k]);
    cJSON_Delete (json);
    zlistx_add_end (self->jobs, job);
    s_start (self, job);
}

//  Checks every job: finished webhooks and commands, timeouts, retries.
static void
s_check (s_runner_t *self)
{
    int running = 0;
    curl_multi_perform (self->multi, &running);
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read (self->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        s_job_t *job = NULL;
        curl_easy_getinfo (msg->easy_handle, CURLINFO_PRIVATE, (char **) &job);
        long status = 0;
        curl_easy_getinfo (msg->easy_handle, CURLINFO_RESPONSE_CODE, &status);
        CURLcode result = msg->data.result;
        curl_multi_remove_handle (self->multi, msg->easy_handle);
        curl_easy_cleanup (msg->easy_handle);
        job->curl = NULL;
        char why[300];
        if (result == CURLE_OK && status >= 200 && status < 300) {
            snprintf (why, sizeof why, "HTTP %ld", status);
            s_record (self, job, "ok", why);
            job->next_ms = -1;
        }
        else {
            if (result != CURLE_OK)
                snprintf (why, sizeof why, "webhook: %s", curl_easy_strerror (result));
            else
                snprintf (why, sizeof why, "webhook: HTTP %ld", status);
            if (s_attempt_failed (self, job, why))
                job->next_ms = -1;
        }
    }
    int64_t now = ccm_mono_ms ();
    for (s_job_t *job = zlistx_first (self->jobs); job; job = zlistx_next (self->jobs)) {
        if (job->pid > 0) {
            int status;
            pid_t done = waitpid (job->pid, &status, WNOHANG);
            if (done == job->pid) {
                job->pid = 0;
                if (WIFEXITED (status) && WEXITSTATUS (status) == 0) {
                    s_record (self, job, "ok", "exit 0");
                    job->next_ms = -1;
                }
                else {
                    char why[64];
                    snprintf (why, sizeof why, "command: %s %d",
                              WIFEXITED (status) ? "exit" : "signal",
                              WIFEXITED (status) ? WEXITSTATUS (status) : WTERMSIG (status));
                    if (s_attempt_failed (self, job, why))
                        job->next_ms = -1;
                }
            }
            else if (now > job->deadline_ms) {
                kill (-job->pid, SIGKILL);  //  its process group; reaped next time
                job->deadline_ms = INT64_MAX;
                snprintf (job->last_error, sizeof job->last_error, "command timed out");
            }
        }
        else if (job->next_ms > 0 && !job->curl && !job->storing && now >= job->next_ms)
            s_start (self, job);
    }
    //  Drop finished jobs. zlistx_detach_cur moves the cursor back to the
    //  previous item, so zlistx_next then gives the item after the one
    //  detached: each job is visited once, however many finish together.
    //  (Taking `next` before a delete visits it twice: a double free.)
    for (s_job_t *job = zlistx_first (self->jobs); job; job = zlistx_next (self->jobs))
        if (job->next_ms == -1 && !job->curl && job->pid == 0 && !job->storing) {
            zlistx_detach_cur (self->jobs);
            s_job_destroy (&job);
        }
}

static int
s_check_timer (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop, (void) timer_id;
    s_runner_t *self = arg;
    s_check (self);
    if (zlistx_size (self->jobs) == 0) {
        zloop_timer_end (self->loop, self->timer);  //  idle: only the pipe wakes us
        self->timer = 0;
    }
    return 0;
}

static int
s_pipe_readable (zloop_t *loop, zsock_t *pipe, void *arg)
{
    s_runner_t *self = arg;
    char *text = zstr_recv (pipe);
    if (!text || streq (text, "$TERM")) {
        zstr_free (&text);
        self->stop = true;
        return -1;
    }
    s_take_job (self, text);
    zstr_free (&text);
    if (!self->timer && zlistx_size (self->jobs))
        self->timer = zloop_timer (loop, S_CHECK_MS, 0, s_check_timer, self);
    return 0;
}

static void
s_runner (zsock_t *pipe, void *arg)
{
    s_runner_t self = {.pipe = pipe};
    self.loop = zloop_new ();
    self.store =
        self.loop ? ccm_req_new (self.loop, (const char *) arg, S_STORE_MS, S_STORE_TRY, S_WINDOW)
                  : NULL;
    self.multi = curl_multi_init ();
    self.jobs = zlistx_new ();
    if (!self.store)
        ccm_error ("automations: cannot start (the store's socket)");
    zsock_signal (pipe, 0);
    if (self.store) {
        //  The actor ends at $TERM, when the ingester says, not at the signal.
        zloop_set_nonstop (self.loop, true);
        zloop_reader (self.loop, pipe, s_pipe_readable, &self);
        while (!self.stop)
            zloop_start (self.loop);  //  returns early if a signal interrupts its poll
        //  Outcomes on their way get a moment to be recorded.
        ccm_req_flush (self.store, 1000);
    }
    else {
        //  Nothing can run: jobs are dropped until $TERM.
        char *text;
        while ((text = zstr_recv (pipe)) && !streq (text, "$TERM"))
            zstr_free (&text);
        zstr_free (&text);
    }
    ccm_req_destroy (&self.store);  //  its callbacks see the jobs still there
    for (s_job_t *job = zlistx_first (self.jobs); job; job = zlistx_next (self.jobs)) {
        if (job->curl) {
            curl_multi_remove_handle (self.multi, job->curl);
            curl_easy_cleanup (job->curl);
        }
        s_job_destroy (&job);
    }
    zlistx_destroy (&self.jobs);
    curl_multi_cleanup (self.multi);
    zloop_destroy (&self.loop);
}

hooks_auto_t *
hooks_auto_new (const char *store_endpoint)
{
    curl_global_init (CURL_GLOBAL_DEFAULT);
    hooks_auto_t *self = calloc (1, sizeof *self);
    self->actor = zactor_new (s_runner, (void *) store_endpoint);
    return self;
}

void
hooks_auto_destroy (hooks_auto_t **self_p)
{
    if (self_p && *self_p) {
        zactor_destroy (&(*self_p)->actor);
        s_rules_free ((*self_p)->rules, (*self_p)->count);
        free (*self_p);
        *self_p = NULL;
        curl_global_cleanup ();
    }
}

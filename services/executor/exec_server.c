/*  exec_server: the executor's loop.

    Each tick (executor.poll_ms) it reads every pane of ccm's tmux server in
    one `list-panes`, finishes the agents whose pane died (exit status from
    tmux itself, not from the screen), enforces timeouts and cancellations,
    and claims queued tasks for its projects while it has capacity.

    Dispatch today is task.claim on the store; the router (a later issue)
    will push assignments instead, into the same s_start().                */

#include "exec_internal.h"

#include "ccm_bus.h"
#include "ccm_hookcfg.h"
#include "ccm_log.h"
#include "ccm_msg.h"
#include "ccm_proc.h"

#include <czmq.h>
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_TAIL_BYTES 4096
#define S_VERIFY_MS  (10 * 60 * 1000)  //  contexts are re-verified this often
#define S_REAP_MS    5000              //  longest wait for a dead agent's exit status

#define S_RESEND_MS 2000  //  how often unanswered writes are tried again

//  The kept writes are also in executor.outbox, a line "VERB\tJSON" each
//  (mode 0600), so an executor restarted while the hub is away loses none.
static void
s_outbox_add (exec_t *self, char *item)
{
    if (!self->outbox) {
        self->outbox = zlistx_new ();
        zlistx_set_destructor (self->outbox, (zlistx_destructor_fn *) zstr_free);
    }
    zlistx_add_end (self->outbox, item);
}

//  Writes what is kept to executor.outbox (atomically), or removes the file
//  when nothing is.
static void
s_outbox_save (exec_t *self)
{
    const char *path = ccm_config_str (self->config, "executor.outbox");
    if (!self->outbox || zlistx_size (self->outbox) == 0) {
        unlink (path);
        return;
    }
    char tmp[PATH_MAX + 8];
    snprintf (tmp, sizeof tmp, "%s", path);
    if (strrchr (tmp, '/') && strrchr (tmp, '/') != tmp) {
        *strrchr (tmp, '/') = 0;
        mkdir (tmp, 0700);  //  its directory (run/), if no ipc:// socket made it
    }
    snprintf (tmp, sizeof tmp, "%s.tmp", path);
    int fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *file = fd >= 0 ? fdopen (fd, "w") : NULL;
    bool ok = file != NULL;
    for (char *item = file ? zlistx_first (self->outbox) : NULL; item;
         item = zlistx_next (self->outbox)) {
        char *newline = strchr (item, '\n');
        ok &= fprintf (file, "%.*s\t%s\n", (int) (newline - item), item, newline + 1) > 0;
    }
    ok = file && ok && fflush (file) == 0 && fdatasync (fileno (file)) == 0;
    if (file)
        fclose (file);
    else if (fd >= 0)
        close (fd);
    if (!ok || rename (tmp, path))
        ccm_warn ("cannot save the kept writes to %s: %s", path, strerror (errno));
}

//  Reads executor.outbox, left by an executor stopped while the hub was away.
static void
s_outbox_load (exec_t *self)
{
    FILE *file = fopen (ccm_config_str (self->config, "executor.outbox"), "r");
    if (!file)
        return;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline (&line, &cap, file)) > 0) {
        char *tab = strchr (line, '\t');
        if (!tab || line[len - 1] != '\n')
            continue;  //  a line cut by a crash mid-write: its write was never acked
        line[len - 1] = 0;
        *tab = '\n';
        s_outbox_add (self, strdup (line));
    }
    free (line);
    fclose (file);
    if (self->outbox)
        ccm_info ("%zu write(s) kept while the store was away are to be sent",
                  zlistx_size (self->outbox));
}

//  Keeps a write the store did not answer, to resend in order (same idem).
static void
s_keep (exec_t *self, const char *verb, cJSON *body)
{
    char *json = cJSON_PrintUnformatted (body);
    s_outbox_add (self, zsys_sprintf ("%s\n%s", verb, json ? json : "{}"));
    free (json);
    s_outbox_save (self);
    if (zlistx_size (self->outbox) == 1)
        ccm_warn ("the store does not answer: %s and the writes after it are kept, and sent"
                  " again in order until it does",
                  verb);
}

//  Resends the kept writes, oldest first, until one goes unanswered. A
//  write the store refuses now (e.g. its task was requeued meanwhile) is
//  dropped with a warning. Returns true if none is left.
static bool
s_resend (exec_t *self)
{
    while (self->outbox && zlistx_size (self->outbox)) {
        char *item = zlistx_first (self->outbox);
        char *newline = strchr (item, '\n');
        *newline = 0;
        cJSON *body = cJSON_Parse (newline + 1), *reply = NULL;
        int rc = ccm_client_call (self->store, item, body, &reply);
        cJSON_Delete (body);
        if (rc == CCM_ETIMEOUT) {
            *newline = '\n';
            cJSON_Delete (reply);
            return false;
        }
        if (rc)
            ccm_warn ("%s, sent again: %s; dropped", item, ccm_client_strerror (rc, reply));
        else
            ccm_info ("%s, kept while the store was away, is recorded", item);
        cJSON_Delete (reply);
        zlistx_delete (self->outbox, zlistx_cursor (self->outbox));
        s_outbox_save (self);
    }
    return true;
}

//  Calls the store; returns the reply (caller owns) or NULL, logging why.
//  A write the store does not answer is kept and resent (s_resend); one
//  made while others wait is kept behind them, so each record's writes
//  reach the store in order.
static cJSON *
s_call (exec_t *self, const char *verb, cJSON *body, bool write)
{
    if (write) {
        ccm_client_add_idem (body);
        //  Behind others, or while the hub is out of reach: no call that
        //  would hold the loop for every retry.
        if ((self->outbox && zlistx_size (self->outbox)) || self->hub_quiet) {
            s_keep (self, verb, body);
            cJSON_Delete (body);
            return NULL;
        }
    }
    cJSON *reply = NULL;
    int rc = ccm_client_call (self->store, verb, body, &reply);
    if (rc == CCM_ETIMEOUT && write)
        s_keep (self, verb, body);
    else if (rc)
        ccm_warn ("%s: %s", verb, ccm_client_strerror (rc, reply));
    if (rc) {
        cJSON_Delete (reply);
        reply = NULL;
    }
    cJSON_Delete (body);
    return reply;
}

//  Moves a task; result (taken) may be NULL. Returns 0 on success.
static int
s_move (exec_t *self, const char *task_id, const char *to, const char *reason, cJSON *result)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", task_id);
    cJSON_AddStringToObject (body, "to", to);
    //  Only while this system still holds it: a task requeued while we were
    //  away from the hub is another executor's now.
    cJSON_AddStringToObject (body, "held_by", self->system_id);
    if (reason)
        cJSON_AddStringToObject (body, "reason", reason);
    if (result)
        cJSON_AddItemToObject (body, "result", result);
    cJSON *reply = s_call (self, "task.transition", body, true);
    cJSON_Delete (reply);
    return reply ? 0 : -1;
}

static void
s_agent_status (exec_t *self, exec_agent_t *agent, const char *status, const char *source)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "agent_id", agent->agent_id);
    cJSON_AddStringToObject (body, "system_id", self->system_id);
    if (agent->project_id)
        cJSON_AddStringToObject (body, "project_id", agent->project_id);
    cJSON_AddStringToObject (body, "task_id", agent->task_id);
    cJSON_AddStringToObject (body, "profile", agent->profile);
    if (agent->window[0])
        cJSON_AddStringToObject (body, "tmux_window", agent->window);
    cJSON_AddStringToObject (body, "status", status);
    cJSON_AddStringToObject (body, "state_source", source);
    cJSON_Delete (s_call (self, "agent.upsert", body, true));
}

static void
s_agent_destroy (exec_agent_t **agent_p)
{
    if (agent_p && *agent_p) {
        exec_agent_t *agent = *agent_p;
        free (agent->project_id);
        free (agent->project);
        free (agent->worktree);
        free (agent->base);
        free (agent->review_of);
        free (agent->log_path);
        free (agent->profile);
        free (agent);
        *agent_p = NULL;
    }
}

//  The last bytes of the agent's log, as valid UTF-8 text.
static char *
s_tail (const char *path)
{
    FILE *file = fopen (path, "rb");
    if (!file)
        return strdup ("");
    fseek (file, 0, SEEK_END);
    long size = ftell (file);
    long from = size > S_TAIL_BYTES ? size - S_TAIL_BYTES : 0;
    fseek (file, from, SEEK_SET);
    char *text = calloc (1, S_TAIL_BYTES + 1);
    size_t n = text ? fread (text, 1, S_TAIL_BYTES, file) : 0;
    fclose (file);
    if (!text)
        return strdup ("");
    //  Skip a cut UTF-8 sequence at the start; replace other invalid bytes.
    size_t start = 0;
    while (from > 0 && start < n && ((unsigned char) text[start] & 0xC0) == 0x80)
        start++;
    char *clean = ccm_utf8_clean (text + start, n - start);
    free (text);
    return clean ? clean : strdup ("");
}

//  For headless Claude Code: the stream-json "result" object in the log.
static cJSON *
s_claude_result (const char *path)
{
    FILE *file = fopen (path, "rb");
    if (!file)
        return NULL;
    cJSON *found = NULL;
    char *line = NULL;
    size_t cap = 0;
    while (getline (&line, &cap, file) > 0) {
        char *start = strstr (line, "{\"type\":\"result\"");
        if (!start)
            continue;
        ccm_proc_chomp (start);
        cJSON *json = cJSON_Parse (start);
        if (json) {
            cJSON_Delete (found);
            found = json;
        }
    }
    free (line);
    fclose (file);
    if (!found)
        return NULL;
    cJSON *details = cJSON_CreateObject ();
    const char *keys[] = {"session_id", "num_turns", "total_cost_usd", "is_error", "result"};
    for (int i = 0; i < 5; i++) {
        cJSON *item = cJSON_GetObjectItemCaseSensitive (found, keys[i]);
        if (item)
            cJSON_AddItemToObject (details, keys[i], cJSON_Duplicate (item, true));
    }
    cJSON_Delete (found);
    return details;
}

static void
s_remove (exec_t *self, exec_agent_t *agent)
{
    for (int i = 0; i < self->nagents; i++)
        if (self->agents[i] == agent) {
            self->agents[i] = self->agents[--self->nagents];
            break;
        }
    s_agent_destroy (&agent);
}

//  Records the end of an agent: result, task status, agent status.
static void
s_finish (exec_t *self, exec_agent_t *agent, int status, int signal_number)
{
    int exit_code = signal_number ? 128 + signal_number : status;
    const char *result_status = "complete", *to = "complete";
    char reason[256];
    snprintf (reason, sizeof reason, "agent exited with status %d", exit_code);
    if (agent->end_reason && strcmp (agent->end_reason, "timeout") == 0) {
        result_status = "timeout";
        to = "failed";
        snprintf (reason, sizeof reason, "timed out; agent killed");
    }
    else if (agent->end_reason && strcmp (agent->end_reason, "cancelled") == 0) {
        result_status = "cancelled";
        to = NULL;  //  the task is cancelled already
    }
    else if (signal_number) {
        result_status = "crashed";
        to = "failed";
        snprintf (reason, sizeof reason, "agent killed by signal %d", signal_number);
    }
    else if (status != 0) {
        result_status = "failed";
        to = "failed";
    }
    cJSON *result = cJSON_CreateObject ();
    cJSON_AddStringToObject (result, "status", result_status);
    cJSON_AddNumberToObject (result, "exit_code", exit_code);
    cJSON_AddStringToObject (result, "agent_id", agent->agent_id);
    char *tail = s_tail (agent->log_path);
    cJSON_AddStringToObject (result, "output", tail);
    //  A review changes nothing of its own: the files are the reviewed task's.
    cJSON_AddItemToObject (result, "files_changed",
                           agent->review_of ? cJSON_CreateArray ()
                                            : exec_git_changed (agent->worktree, agent->base));
    cJSON *details = agent->headless ? s_claude_result (agent->log_path) : NULL;
    if (!details)
        details = cJSON_CreateObject ();
    //  A review that ran to its end must leave a report the store accepts.
    if (agent->review_of && to && strcmp (to, "complete") == 0) {
        const char *answer = cJSON_GetStringValue (cJSON_GetObjectItem (details, "result"));
        char *why = NULL;
        if (exec_review_record (self, agent, answer ? answer : tail, &why)) {
            result_status = "failed";
            to = "failed";
            snprintf (reason, sizeof reason, "review report: %s", why ? why : "out of memory");
            cJSON_ReplaceItemInObject (result, "status", cJSON_CreateString (result_status));
        }
        free (why);
    }
    free (tail);
    cJSON_AddStringToObject (details, "log", agent->log_path);
    cJSON_AddStringToObject (details, "worktree", agent->worktree);
    cJSON_AddItemToObject (result, "details", details);
    bool lost = agent->end_reason && strcmp (agent->end_reason, "lost") == 0;
    if (lost) {
        //  Fenced off: the task is (or may be) another executor's now.
        cJSON_Delete (result);
        to = NULL;
        snprintf (reason, sizeof reason, "stopped: the hub was out of reach");
    }
    else if (to)
        s_move (self, agent->task_id, to, reason, result);
    else {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", agent->task_id);
        cJSON_AddItemToObject (body, "result", result);
        cJSON_Delete (s_call (self, "task.result", body, true));
    }
    //  An agent we stopped (timeout, cancel) exited; one killed otherwise crashed.
    s_agent_status (self, agent, signal_number && !agent->end_reason ? "crashed" : "exited",
                    "pane");
    ccm_info ("task %s: %s (%s)", agent->short_id, to ? to : "cancelled", reason);
    exec_tmux (self, NULL, "kill-window", "-t", agent->window, NULL);
    s_remove (self, agent);
}

//  Fails a task that could not start, with a reason the user will read.
static void
s_fail_start (exec_t *self, const char *task_id, const char *reason)
{
    ccm_warn ("task %.8s cannot start: %s", task_id, reason);
    cJSON *result = cJSON_CreateObject ();
    cJSON_AddStringToObject (result, "status", "failed");
    cJSON_AddStringToObject (result, "output", reason);
    s_move (self, task_id, "failed", reason, result);
}

//  The project named name in the store's list, or NULL (borrowed).
static cJSON *
s_project (exec_t *self, const char *name)
{
    cJSON *project;
    cJSON_ArrayForEach (project, self->projects)
    {
        cJSON *item = cJSON_GetObjectItemCaseSensitive (project, "name");
        if (cJSON_IsString (item) && name && strcmp (item->valuestring, name) == 0)
            return project;
    }
    return NULL;
}

static const char *
s_str (cJSON *obj, const char *key)
{
    cJSON *item = cJSON_GetObjectItemCaseSensitive (obj, key);
    return cJSON_IsString (item) ? item->valuestring : NULL;
}

static bool
s_is_claude (const char *program)
{
    return strcmp (strrchr (program, '/') ? strrchr (program, '/') + 1 : program, "claude") == 0;
}

//  Writes the Claude Code settings file that runs ccm-hook (next to this
//  binary) at every hook event. Claude Code agents get it with --settings,
//  on top of their own settings: the worktree itself stays untouched, so
//  the task's files_changed and a clean worktree's prune are not affected.
static void
s_claude_settings (exec_t *self)
{
    char exe[PATH_MAX];
    ssize_t len = readlink ("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0)
        return;
    exe[len] = 0;
    char hook[PATH_MAX + 16], path[PATH_MAX];
    snprintf (hook, sizeof hook, "%.*s/ccm-hook", (int) (strrchr (exe, '/') - exe), exe);
    snprintf (path, sizeof path, "%s/run/claude-hooks.json", ccm_config_home (self->config));
    if (access (hook, X_OK)) {
        ccm_warn ("no %s: Claude Code agents will run without ccm's hooks", hook);
        return;
    }
    char *command = ccm_hookcfg_command (hook, ccm_config_home (self->config));
    char *error = NULL;
    if (command && ccm_hookcfg_install (path, command, 10, &error) == 0)
        self->claude_settings = strdup (path);
    else
        ccm_warn ("cannot write %s: %s; Claude Code agents will run without ccm's hooks", path,
                  error ? error : "out of memory");
    free (error);
    free (command);
}

//  Where Claude Code keeps .claude.json for this profile.
static void
s_claude_dir (exec_t *self, exec_profile_t *profile, char *out, size_t len)
{
    const char *dir = profile->env ? s_str (profile->env, "CLAUDE_CONFIG_DIR") : NULL;
    if (!dir || !*dir)
        dir = ccm_config_str (self->config, "executor.claude_config_dir");
    if (!*dir)
        dir = getenv ("CLAUDE_CONFIG_DIR");
    if (!dir || !*dir)
        dir = getenv ("HOME");
    snprintf (out, len, "%s", dir ? dir : "/root");
}

//  Sets the agent's deadline from the task's timeout_s, counted from when
//  the task started executing, so that an executor restart does not reset it.
static void
s_set_deadline (exec_agent_t *agent, cJSON *task)
{
    cJSON *timeout = cJSON_GetObjectItemCaseSensitive (task, "timeout_s");
    if (!cJSON_IsNumber (timeout) || timeout->valuedouble <= 0)
        return;
    int64_t started, elapsed = 0;
    if (ccm_iso_ms (s_str (task, "started_at"), &started) == 0 && ccm_wall_ms () > started)
        elapsed = ccm_wall_ms () - started;
    agent->deadline_ms = ccm_mono_ms () - elapsed + (int64_t) (timeout->valuedouble * 1000);
}

//  Records the new worktree of a task, and the system that holds it.
static void
s_record_worktree (exec_t *self, exec_agent_t *agent)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task_id", agent->task_id);
    if (agent->project_id)
        cJSON_AddStringToObject (body, "project_id", agent->project_id);
    cJSON_AddStringToObject (body, "worktree_path", agent->worktree);
    char branch[64];
    snprintf (branch, sizeof branch, "ccm/%s", agent->short_id);
    cJSON_AddStringToObject (body, "branch_name", branch);
    cJSON_AddStringToObject (body, "base_branch", agent->base);
    cJSON_AddStringToObject (body, "status", "active");
    cJSON_AddStringToObject (body, "system_id", self->system_id);
    cJSON_Delete (s_call (self, "worktree.upsert", body, true));
}

//  Starts the agent's tmux window in its worktree; the task is executing.
static void
s_launch (exec_t *self, exec_agent_t *agent, cJSON *task, exec_profile_t *profile,
          const char *program)
{
    const char *task_id = agent->task_id;
    char *error = NULL;
    if (s_is_claude (program)) {
        char dir[PATH_MAX];
        s_claude_dir (self, profile, dir, sizeof dir);
        if (exec_claude_trust (dir, agent->worktree))
            ccm_warn ("task %s: could not pre-accept Claude Code's trust dialog in %s",
                      agent->short_id, dir);
    }
    char **argv = exec_profile_argv (profile, s_str (task, "prompt"), task_id, agent->worktree);
    if (argv && self->claude_settings && s_is_claude (program))
        argv = exec_argv_insert (argv, 1, "--settings", self->claude_settings);
    int rc = argv ? exec_tmux_spawn (self, agent, argv, &error) : -1;
    exec_argv_free (argv);
    if (rc) {
        s_fail_start (self, task_id, error ? error : "cannot start the agent");
        free (error);
        s_agent_destroy (&agent);
        return;
    }
    s_set_deadline (agent, task);
    self->agents = realloc (self->agents, (size_t) (self->nagents + 1) * sizeof *self->agents);
    self->agents[self->nagents++] = agent;
    s_agent_status (self, agent, "running", "spawn");
    s_move (self, task_id, "executing", "agent started", NULL);
    ccm_info ("task %s: %s started in tmux window %s, worktree %s", agent->short_id, agent->profile,
              agent->window, agent->worktree);
}

//  Starts the agent of an assigned task: worktree, profile, tmux window.
static void
s_start (exec_t *self, cJSON *task)
{
    const char *task_id = s_str (task, "id");
    const char *project_name = s_str (task, "requires_project");
    if (!project_name)
        project_name = s_str (task, "project");
    cJSON *project = s_project (self, project_name);
    if (!project) {
        s_fail_start (self, task_id, "the task names no project held by this executor");
        return;
    }
    const char *repo = s_str (project, "path");
    struct stat st;
    if (!repo || stat (repo, &st) || !S_ISDIR (st.st_mode)) {
        char reason[PATH_MAX + 300];
        snprintf (reason, sizeof reason, "project path %s %s on %s", repo ? repo : "(none)",
                  !repo || stat (repo, &st) ? "does not exist" : "is not a directory",
                  self->hostname);
        s_fail_start (self, task_id, reason);
        return;
    }
    const char *profile_name = s_str (task, "agent_profile");
    cJSON *config = cJSON_GetObjectItemCaseSensitive (project, "config");
    if (!profile_name)
        profile_name = s_str (config, "agent");
    if (!profile_name)
        profile_name = ccm_config_str (self->config, "executor.default_profile");
    exec_profile_t profile;
    if (exec_profile_find (self, profile_name, &profile)) {
        char reason[128];
        snprintf (reason, sizeof reason, "unknown agent profile '%.64s'", profile_name);
        s_fail_start (self, task_id, reason);
        return;
    }
    const char *program = cJSON_GetArrayItem (profile.argv, 0)->valuestring;
    if (!exec_program_exists (program)) {
        char reason[PATH_MAX];
        snprintf (reason, sizeof reason, "agent binary '%.200s' of profile '%s' not found in PATH",
                  program, profile_name);
        s_fail_start (self, task_id, reason);
        return;
    }

    exec_agent_t *agent = calloc (1, sizeof *agent);
    snprintf (agent->task_id, sizeof agent->task_id, "%s", task_id);
    snprintf (agent->short_id, sizeof agent->short_id, "%.8s", task_id);
    ccm_uuid (agent->agent_id);
    agent->project = strdup (project_name);
    agent->project_id = s_str (project, "id") ? strdup (s_str (project, "id")) : NULL;
    agent->profile = strdup (profile_name);
    agent->headless = profile.headless;
    agent->exit_on_idle = profile.exit_on_idle && !profile.headless;
    if (asprintf (&agent->log_path, "%s/%s.log", ccm_config_str (self->config, "executor.logs"),
                  task_id)
        < 0)
        agent->log_path = NULL;
    char *error = NULL;
    const char *type = s_str (task, "task_type");
    if (type && strcmp (type, "supervisory") == 0) {
        //  A review works in the worktree of the task it reviews.
        agent->review_of =
            strdup (s_str (task, "parent_task_id") ? s_str (task, "parent_task_id") : "");
        if (exec_review_worktree (self, agent->review_of, &agent->worktree, &agent->base, &error)) {
            s_fail_start (self, task_id, error ? error : "no worktree to review");
            free (error);
            s_agent_destroy (&agent);
            return;
        }
    }
    else if (exec_git_worktree (self, project_name, repo, agent->short_id, &agent->worktree,
                                &agent->base, &error)) {
        s_fail_start (self, task_id, error ? error : "cannot create the worktree");
        free (error);
        s_agent_destroy (&agent);
        return;
    }
    else
        s_record_worktree (self, agent);
    s_launch (self, agent, task, &profile, program);
}

//  Whether this executor holds the project: every one present here, or
//  only those executor.projects names. An entry NAME=PATH also says where
//  the project is on this machine (its clone here), written into path;
//  otherwise path is "" and the store's path counts.
static bool
s_holds (exec_t *self, const char *name, char *path, size_t size)
{
    *path = 0;
    const char *list = ccm_config_str (self->config, "executor.projects");
    if (!*list)
        return true;
    size_t len = strlen (name);
    for (const char *at = list; at && *at; at = strchr (at, ',') ? strchr (at, ',') + 1 : NULL) {
        if (strncmp (at, name, len) != 0)
            continue;
        if (at[len] == ',' || at[len] == '\0')
            return true;
        if (at[len] == '=') {
            const char *end = strchr (at + len + 1, ',');
            size_t n = end ? (size_t) (end - at - len - 1) : strlen (at + len + 1);
            snprintf (path, size, "%.*s", (int) n, at + len + 1);
            return true;
        }
    }
    return false;
}

//  Refreshes the store's project list and records the contexts held here.
static void
s_refresh_projects (exec_t *self)
{
    cJSON *reply = s_call (self, "project.list", cJSON_CreateObject (), false);
    if (!reply)
        return;
    cJSON_Delete (self->projects);
    self->projects = cJSON_DetachItemFromObject (reply, "projects");
    cJSON_Delete (reply);
    //  A context is recorded when it changes, and every S_VERIFY_MS anyway
    //  (its last_verified), not at every refresh: each write is an event.
    int64_t now = ccm_mono_ms ();
    bool verify = now - self->contexts_verified_ms >= S_VERIFY_MS;
    if (verify)
        self->contexts_verified_ms = now;
    cJSON *project;
    cJSON_ArrayForEach (project, self->projects)
    {
        const char *name = s_str (project, "name");
        char local[PATH_MAX];
        if (!name || !s_holds (self, name, local, sizeof local))
            continue;  //  left to other executors
        //  This machine's clone, when it is elsewhere than the store says.
        if (*local)
            cJSON_ReplaceItemInObjectCaseSensitive (project, "path", cJSON_CreateString (local));
        const char *path = s_str (project, "path");
        struct stat st;
        if (!path || stat (path, &st))
            continue;  //  not on this machine
        //  Cheap facts first: the repository, its branch, its last fetch
        //  (git's FETCH_HEAD, written by every fetch and pull).
        char marker[PATH_MAX + 24];
        snprintf (marker, sizeof marker, "%s/.git", path);
        bool repo = stat (marker, &st) == 0;
        snprintf (marker, sizeof marker, "%s/.git/FETCH_HEAD", path);
        time_t fetched = stat (marker, &st) == 0 ? st.st_mtime : 0;
        char *branch = repo ? exec_git_branch (path) : NULL;
        char *seen = zsys_sprintf ("%d\t%s\t%s\t%lld", repo, branch ? branch : "", path,
                                   (long long) fetched);
        const char *last = zhashx_lookup (self->contexts, name);
        if (!verify && last && strcmp (last, seen) == 0) {
            zstr_free (&seen);
            free (branch);
            continue;
        }
        //  Then what costs a git run: how far the branch is behind its
        //  upstream, as last fetched. Behind is stale: routed to only when
        //  nothing fresher fits. No repository is an error.
        int behind = branch ? exec_git_behind (path) : -1;
        const char *status = !repo ? "error" : behind > 0 ? "stale" : "active";
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "system_id", self->system_id);
        cJSON_AddStringToObject (body, "project_name", name);
        cJSON_AddStringToObject (body, "project_path", path);
        if (s_str (project, "repo_url"))
            cJSON_AddStringToObject (body, "repo_url", s_str (project, "repo_url"));
        if (branch)
            cJSON_AddStringToObject (body, "repo_branch", branch);
        cJSON_AddStringToObject (body, "status", status);
        char when[25];
        ccm_now_iso (when);
        cJSON_AddStringToObject (body, "last_verified", when);
        if (fetched) {
            struct tm tm;
            gmtime_r (&fetched, &tm);
            strftime (when, sizeof when, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
            cJSON_AddStringToObject (body, "last_pulled", when);
        }
        cJSON *metadata = cJSON_AddObjectToObject (body, "metadata");
        if (behind >= 0)
            cJSON_AddNumberToObject (metadata, "behind", behind);
        cJSON *reply = s_call (self, "context.upsert", body, true);
        if (reply)
            zhashx_update (self->contexts, name, seen);
        else
            zstr_free (&seen);
        cJSON_Delete (reply);
        free (branch);
    }
}

static void
s_claim (exec_t *self)
{
    int free_slots = self->capacity - self->nagents;
    if (free_slots <= 0 || cJSON_GetArraySize (self->projects) == 0)
        return;
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "system_id", self->system_id);
    cJSON *names = cJSON_AddArrayToObject (body, "projects");
    cJSON *project;
    //  Every project with a path, even one missing here: its tasks then fail
    //  with the reason, rather than wait forever. The router (which knows
    //  every machine's contexts) will replace this direct claim.
    char local[PATH_MAX];
    cJSON_ArrayForEach (project, self->projects)
    {
        if (s_str (project, "path") && s_str (project, "name")
            && s_holds (self, s_str (project, "name"), local, sizeof local))
            cJSON_AddItemToArray (names, cJSON_CreateString (s_str (project, "name")));
    }
    cJSON_AddNumberToObject (body, "limit", free_slots);
    cJSON *reply = s_call (self, "task.claim", body, true);
    cJSON *task;
    cJSON_ArrayForEach (task, cJSON_GetObjectItemCaseSensitive (reply, "tasks"))
        s_start (self, task);
    cJSON_Delete (reply);
}

//  One pane of ccm's tmux server, as list-panes reports it.
typedef struct {
    char window[32];
    char task[CCM_UUID_LEN + 1];   //  @ccm_task, set at spawn
    char agent[CCM_UUID_LEN + 1];  //  @ccm_agent, set at spawn
    bool dead;
    bool known;  //  tmux knows its exit status or signal
    int status;  //  exit status once dead
    int signal;  //  the signal that killed it, or 0
    pid_t pid;
} s_pane_t;

#define S_PANE_FORMAT                                                                              \
    "#{window_id}\t#{@ccm_task}\t#{@ccm_agent}\t#{pane_dead}\t#{pane_dead_status}\t"               \
    "#{pane_dead_signal}\t#{pane_pid}"

//  Reads every pane, one S_PANE_FORMAT line each. Returns the output
//  (caller frees), or NULL when the tmux server is gone.
static char *
s_panes (exec_t *self)
{
    char *out = NULL;
    if (exec_tmux (self, &out, "list-panes", "-a", "-F", S_PANE_FORMAT, NULL) != 0) {
        free (out);
        return NULL;
    }
    return out;
}

//  Parses the line at *cursor (advancing it) into pane. Returns false at the end.
static bool
s_pane_next (const char **cursor, s_pane_t *pane)
{
    const char *line = *cursor;
    if (!line || !*line)
        return false;
    const char *eol = strchr (line, '\n');
    *cursor = eol ? eol + 1 : line + strlen (line);
    char text[512];
    snprintf (text, sizeof text, "%.*s", (int) (eol ? eol - line : (long) strlen (line)), line);
    //  Fields may be empty (no @ccm_task, not dead): split on every tab.
    char *fields[7] = {0}, *rest = text;
    for (int i = 0; i < 7; i++)
        fields[i] = strsep (&rest, "\t");
    memset (pane, 0, sizeof *pane);
    snprintf (pane->window, sizeof pane->window, "%s", fields[0] ? fields[0] : "");
    snprintf (pane->task, sizeof pane->task, "%s", fields[1] ? fields[1] : "");
    snprintf (pane->agent, sizeof pane->agent, "%s", fields[2] ? fields[2] : "");
    pane->dead = fields[3] && atoi (fields[3]) == 1;
    pane->status = fields[4] ? atoi (fields[4]) : 0;
    pane->signal = fields[5] ? atoi (fields[5]) : 0;
    pane->known = (fields[4] && *fields[4]) || (fields[5] && *fields[5]);
    pane->pid = fields[6] ? (pid_t) atol (fields[6]) : 0;
    return true;
}

//  Finds window in panes. Returns 0 and fills pane if found.
static int
s_pane_find (const char *panes, const char *window, s_pane_t *pane)
{
    const char *cursor = panes;
    while (s_pane_next (&cursor, pane))
        if (strcmp (pane->window, window) == 0)
            return 0;
    return -1;
}

//  How the dead pane's agent ended: first from the status its wrapper wrote
//  (exec_tmux_spawn), where 128+N means signal N, as shells say; else from
//  tmux. tmux marks a pane dead when its pty closes and learns the status
//  when it reaps the process: until then (and for a process gone within
//  milliseconds, sometimes never) the status reads empty, not 0. Returns
//  true once known; an agent we stopped ended by SIGTERM; after S_REAP_MS
//  of not knowing, says SIGKILL.
static bool
s_exit_of (exec_agent_t *agent, const s_pane_t *pane, int64_t now, int *status, int *signal)
{
    char path[PATH_MAX];
    snprintf (path, sizeof path, "%s.exit", agent->log_path ? agent->log_path : "");
    FILE *file = fopen (path, "r");
    int code = -1;
    if (file) {
        if (fscanf (file, "%d", &code) != 1)
            code = -1;
        fclose (file);
    }
    *status = 0;
    *signal = 0;
    if (code > 128)
        *signal = code - 128;
    else if (code >= 0)
        *status = code;
    else if (pane->known) {
        *status = pane->status;
        *signal = pane->signal;
    }
    else if (agent->term_sent_ms) {
        //  Stopped by us (a timeout or a cancel): its wrapper died with it,
        //  and how it ended is known well enough.
        *signal = SIGTERM;
    }
    else {
        if (!agent->dead_seen_ms)
            agent->dead_seen_ms = now;
        if (now - agent->dead_seen_ms <= S_REAP_MS)
            return false;
        ccm_warn ("task %s: the agent's exit status is unknown", agent->short_id);
        *signal = SIGKILL;
    }
    return true;
}

static void
s_watch (exec_t *self)
{
    if (self->nagents == 0)
        return;
    char *panes = s_panes (self);
    int64_t now = ccm_mono_ms ();
    int64_t grace = ccm_config_int (self->config, "executor.kill_grace_ms");
    for (int i = self->nagents - 1; i >= 0; i--) {
        exec_agent_t *agent = self->agents[i];
        s_pane_t pane;
        if (!panes || s_pane_find (panes, agent->window, &pane)) {
            //  The window vanished (tmux killed, or closed by hand): a crash.
            ccm_warn ("task %s: tmux window %s is gone", agent->short_id, agent->window);
            s_finish (self, agent, 0, SIGKILL);
            continue;
        }
        if (pane.dead) {
            int status, signal;
            if (s_exit_of (agent, &pane, now, &status, &signal))
                s_finish (self, agent, status, signal);
            continue;
        }
        if (!agent->end_reason && agent->deadline_ms && now >= agent->deadline_ms)
            agent->end_reason = "timeout";
        if (agent->end_reason && !agent->term_sent_ms && pane.pid > 1) {
            //  tmux made the agent a session leader: signal its whole group.
            kill (-pane.pid, SIGTERM);
            agent->term_sent_ms = now;
        }
        else if (agent->term_sent_ms && now - agent->term_sent_ms >= grace && pane.pid > 1)
            kill (-pane.pid, SIGKILL);
    }
    free (panes);
}

//  An agent's state changed (agents.updated): if hooks say the turn of an
//  interactive agent whose profile exits on idle is over, type /exit, so
//  the agent ends and its exit status decides the task. (Typed only after
//  Stop: /exit during a turn would kill the tool that runs.)
static void
s_agent_changed (exec_t *self, const char *json, size_t size)
{
    cJSON *event = cJSON_ParseWithLength (json, size);  //  {"v","seq","topic",...,"data"}
    cJSON *data = cJSON_GetObjectItemCaseSensitive (event, "data");
    const char *id = s_str (data, "id");
    const char *status = s_str (data, "status");
    const char *source = s_str (data, "state_source");
    for (int i = 0; id && status && source && i < self->nagents; i++) {
        exec_agent_t *agent = self->agents[i];
        if (strcmp (agent->agent_id, id) != 0 || !agent->exit_on_idle || agent->exit_sent
            || agent->end_reason || strcmp (status, "idle") || strcmp (source, "hook"))
            continue;
        ccm_info ("task %s: the agent's turn is over (Stop); ending it", agent->short_id);
        if (exec_tmux (self, NULL, "send-keys", "-t", agent->window, "-l", "/exit", NULL) == 0)
            exec_tmux (self, NULL, "send-keys", "-t", agent->window, "Enter", NULL);
        agent->exit_sent = true;
    }
    cJSON_Delete (event);
}

//  Notices tasks cancelled by the user while their agent runs.
static void
s_check_cancelled (exec_t *self)
{
    for (int i = 0; i < self->nagents; i++) {
        exec_agent_t *agent = self->agents[i];
        if (agent->end_reason)
            continue;
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", agent->task_id);
        cJSON *reply = s_call (self, "task.get", body, false);
        const char *status = s_str (cJSON_GetObjectItemCaseSensitive (reply, "task"), "status");
        if (status && strcmp (status, "cancelled") == 0) {
            ccm_info ("task %s: cancelled; stopping its agent", agent->short_id);
            agent->end_reason = "cancelled";
        }
        cJSON_Delete (reply);
    }
}

//  The agent watching task_id, or NULL.
static exec_agent_t *
s_agent_of (exec_t *self, const char *task_id)
{
    for (int i = 0; i < self->nagents; i++)
        if (strcmp (self->agents[i]->task_id, task_id) == 0)
            return self->agents[i];
    return NULL;
}

//  After a restart, watches again the agent of task running in pane: the
//  same agent id (from the window), worktree and deadline as before.
static void
s_adopt (exec_t *self, cJSON *task, const s_pane_t *pane)
{
    const char *id = s_str (task, "id");
    exec_agent_t *agent = calloc (1, sizeof *agent);
    snprintf (agent->task_id, sizeof agent->task_id, "%s", id);
    snprintf (agent->short_id, sizeof agent->short_id, "%.8s", id);
    snprintf (agent->window, sizeof agent->window, "%s", pane->window);
    if (ccm_uuid_valid (pane->agent))
        snprintf (agent->agent_id, sizeof agent->agent_id, "%s", pane->agent);
    else
        ccm_uuid (agent->agent_id);
    const char *project = s_str (task, "requires_project");
    agent->project = strdup (project ? project : "");
    const char *project_id = s_str (task, "project_id");
    agent->project_id = project_id ? strdup (project_id) : NULL;
    const char *profile = s_str (task, "agent_profile");
    agent->profile =
        strdup (profile ? profile : ccm_config_str (self->config, "executor.default_profile"));
    exec_profile_t found;
    bool known = exec_profile_find (self, agent->profile, &found) == 0;
    agent->headless = known && found.headless;
    agent->exit_on_idle = known && found.exit_on_idle && !found.headless;
    if (asprintf (&agent->log_path, "%s/%s.log", ccm_config_str (self->config, "executor.logs"), id)
        < 0)
        agent->log_path = NULL;
    //  A review works in the worktree of the task it reviews.
    const char *type = s_str (task, "task_type"), *parent = s_str (task, "parent_task_id");
    if (type && strcmp (type, "supervisory") == 0)
        agent->review_of = strdup (parent ? parent : "");
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", agent->review_of ? agent->review_of : id);
    cJSON *reply = s_call (self, "worktree.list", body, false);
    cJSON *worktree = cJSON_GetArrayItem (cJSON_GetObjectItemCaseSensitive (reply, "worktrees"), 0);
    const char *path = s_str (worktree, "worktree_path");
    const char *base = s_str (worktree, "base_branch");
    agent->worktree = strdup (path ? path : "/");
    agent->base = strdup (base ? base : "HEAD");
    cJSON_Delete (reply);
    s_set_deadline (agent, task);
    self->agents = realloc (self->agents, (size_t) (self->nagents + 1) * sizeof *self->agents);
    self->agents[self->nagents++] = agent;
    ccm_info ("task %s: reattached to tmux window %s", agent->short_id, pane->window);
}

//  After a restart: adopt the windows of our tasks that still run (or were
//  cancelled meanwhile, to stop them), record the ones that ended meanwhile,
//  close windows of tasks already settled, and start the ones never started.
static void
s_reconcile (exec_t *self)
{
    char *panes = s_panes (self);
    const char *cursor = panes;
    s_pane_t pane;
    while (s_pane_next (&cursor, &pane)) {
        if (!ccm_uuid_valid (pane.task) || s_agent_of (self, pane.task))
            continue;
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", pane.task);
        cJSON *reply = s_call (self, "task.get", body, false);
        cJSON *task = cJSON_GetObjectItemCaseSensitive (reply, "task");
        const char *status = s_str (task, "status");
        const char *locked_by = s_str (task, "locked_by");
        bool ours = locked_by && strcmp (locked_by, self->system_id) == 0;
        bool recorded =
            cJSON_GetArraySize (cJSON_GetObjectItemCaseSensitive (reply, "results")) > 0;
        if (!status)
            ccm_warn ("tmux window %s names unknown task %s; left alone", pane.window, pane.task);
        else if (ours && (strcmp (status, "executing") == 0 || strcmp (status, "assigned") == 0)) {
            s_adopt (self, task, &pane);
            if (strcmp (status, "assigned") == 0)
                s_move (self, pane.task, "executing", "agent started", NULL);
        }
        else if (strcmp (status, "cancelled") == 0 && !recorded) {
            s_adopt (self, task, &pane);
            ccm_info ("task %.8s: cancelled while the executor was down; stopping its agent",
                      pane.task);
            s_agent_of (self, pane.task)->end_reason = "cancelled";
        }
        else {
            //  Settled without this window (or taken by another executor).
            ccm_info ("task %.8s is %s; closing its tmux window %s", pane.task, status,
                      pane.window);
            if (!pane.dead && pane.pid > 1)
                kill (-pane.pid, SIGTERM);
            exec_tmux (self, NULL, "kill-window", "-t", pane.window, NULL);
        }
        cJSON_Delete (reply);
    }
    free (panes);

    const char *statuses[] = {"executing", "assigned"};
    for (int s = 0; s < 2; s++) {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "status", statuses[s]);
        cJSON_AddNumberToObject (body, "limit", 1000);
        cJSON *reply = s_call (self, "task.list", body, false);
        cJSON *task;
        cJSON_ArrayForEach (task, cJSON_GetObjectItemCaseSensitive (reply, "tasks"))
        {
            const char *locked_by = s_str (task, "locked_by");
            const char *id = s_str (task, "id");
            if (!id || !locked_by || strcmp (locked_by, self->system_id) != 0
                || s_agent_of (self, id))
                continue;
            if (s == 1)
                s_start (self, task);  //  claimed, never started
            else {
                cJSON *result = cJSON_CreateObject ();
                cJSON_AddStringToObject (result, "status", "crashed");
                cJSON_AddStringToObject (result, "output", "agent window lost");
                s_move (self, id, "failed", "agent lost: no tmux window after an executor restart",
                        result);
            }
        }
        cJSON_Delete (reply);
    }
}

static void
s_read_machine_id (exec_t *self, char *out, size_t len)
{
    const char *configured = ccm_config_str (self->config, "executor.machine_id");
    if (*configured) {
        snprintf (out, len, "%s", configured);
        return;
    }
    FILE *file = fopen ("/etc/machine-id", "r");
    if (file && fgets (out, (int) len, file))
        ccm_proc_chomp (out);
    else
        snprintf (out, len, "host-%.200s", self->hostname);
    if (file)
        fclose (file);
}

static int
s_register (exec_t *self)
{
    const char *name = ccm_config_str (self->config, "executor.hostname");
    if (*name)
        snprintf (self->hostname, sizeof self->hostname, "%s", name);
    else if (gethostname (self->hostname, sizeof self->hostname))
        snprintf (self->hostname, sizeof self->hostname, "localhost");
    char machine_id[256];
    s_read_machine_id (self, machine_id, sizeof machine_id);
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "hostname", self->hostname);
    cJSON_AddStringToObject (body, "machine_id", machine_id);
    cJSON_AddNumberToObject (body, "capacity", self->capacity);
    cJSON *tags = cJSON_AddArrayToObject (body, "tags");
    char *list = strdup (ccm_config_str (self->config, "executor.tags"));
    for (char *tag = strtok (list, ","); tag; tag = strtok (NULL, ","))
        if (*tag)
            cJSON_AddItemToArray (tags, cJSON_CreateString (tag));
    free (list);
    //  Straight to the store, never kept: the caller tries again until it answers.
    ccm_client_add_idem (body);
    cJSON *reply = NULL;
    int rc = ccm_client_call (self->store, "system.register", body, &reply);
    if (rc) {
        if (rc != CCM_ETIMEOUT)
            ccm_warn ("system.register: %s", ccm_client_strerror (rc, reply));
        cJSON_Delete (reply);
        reply = NULL;
    }
    cJSON_Delete (body);
    const char *id = s_str (cJSON_GetObjectItemCaseSensitive (reply, "system"), "id");
    if (id)
        snprintf (self->system_id, sizeof self->system_id, "%s", id);
    cJSON_Delete (reply);
    return id ? 0 : -1;
}

static cJSON *
s_load_profiles (const char *path, char **error)
{
    *error = NULL;
    FILE *file = fopen (path, "rb");
    if (!file)
        return NULL;
    char *text = NULL;
    size_t size = 0;
    FILE *mem = open_memstream (&text, &size);
    char chunk[4096];
    size_t n;
    while (mem && (n = fread (chunk, 1, sizeof chunk, file)) > 0)
        fwrite (chunk, 1, n, mem);
    if (mem)
        fclose (mem);
    fclose (file);
    cJSON *json = text ? cJSON_Parse (text) : NULL;
    free (text);
    if (!cJSON_IsObject (json)) {
        if (asprintf (error, "%s: not a JSON object of profiles", path) < 0)
            *error = NULL;
        cJSON_Delete (json);
        return NULL;
    }
    cJSON *profile;
    cJSON_ArrayForEach (profile, json)
    {
        cJSON *argv = cJSON_GetObjectItemCaseSensitive (profile, "argv");
        cJSON *mode = cJSON_GetObjectItemCaseSensitive (profile, "mode");
        bool ok = cJSON_IsArray (argv) && cJSON_GetArraySize (argv) > 0;
        cJSON *item;
        cJSON_ArrayForEach (item, argv) ok = ok && cJSON_IsString (item);
        ok = ok
             && (!mode
                 || (cJSON_IsString (mode)
                     && (strcmp (mode->valuestring, "headless") == 0
                         || strcmp (mode->valuestring, "interactive") == 0)));
        if (!ok) {
            if (asprintf (error,
                          "%s: profile '%s' needs \"argv\": [strings] and \"mode\": "
                          "\"interactive\" or \"headless\"",
                          path, profile->string)
                < 0)
                *error = NULL;
            cJSON_Delete (json);
            return NULL;
        }
    }
    return json;
}

//  --------------------------------------------------------------------------
//  Dispatch by the router (executor.dispatch "router")

static void
s_router_connect (exec_t *self)
{
    zsock_destroy (&self->router);
    self->router = ccm_bus_dealer_connect (ccm_config_str (self->config, "router.endpoint"));
    self->router_heard_ms = ccm_mono_ms ();
    if (!self->router_contact_ms)
        self->router_contact_ms = self->router_heard_ms;
    self->router_sent_ms = 0;
}

//  Tells the router this executor is alive and what it runs; its load is
//  how many there are. The first one registers it.
static void
s_router_beat (exec_t *self)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddNumberToObject (body, "v", 1);
    cJSON_AddStringToObject (body, "system_id", self->system_id);
    cJSON *running = cJSON_AddArrayToObject (body, "running");
    for (int i = 0; i < self->nagents; i++)
        cJSON_AddItemToArray (running, cJSON_CreateString (self->agents[i]->task_id));
    char *text = cJSON_PrintUnformatted (body);
    cJSON_Delete (body);
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, "HEARTBEAT");
    zmsg_addstr (msg, text);
    free (text);
    if (zmsg_send (&msg, self->router))
        zmsg_destroy (&msg);
    self->router_sent_ms = ccm_mono_ms ();
}

//  Runs the task the router sent, once the store confirms it is ours.
static void
s_router_run (exec_t *self, const char *task_id)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", task_id);
    cJSON *reply = s_call (self, "task.get", body, false);
    cJSON *task = cJSON_GetObjectItemCaseSensitive (reply, "task");
    const char *status = s_str (task, "status"), *locked_by = s_str (task, "locked_by");
    if (task && status && strcmp (status, "assigned") == 0 && locked_by
        && strcmp (locked_by, self->system_id) == 0)
        s_start (self, task);
    else
        ccm_warn ("the router sent task %.8s, which is %s for %s; not started", task_id,
                  status ? status : "unknown", locked_by ? locked_by : "nobody");
    cJSON_Delete (reply);
}

//  Fencing. The router marks an executor silent for router.liveness beats
//  offline, and the store gives its tasks to others. So after one beat
//  less of silence, an executor that cannot reach the store either (a
//  partition: a quick ping fails) stops its agents, and one that can stops
//  those whose tasks it no longer holds: a task never runs twice.
static void
s_fence (exec_t *self, int64_t silent_ms)
{
    int64_t quick_ms = self->router_beat_ms / 2 > 50 ? self->router_beat_ms / 2 : 50;
    ccm_client_t *probe =
        ccm_client_new (ccm_config_str (self->config, "store.endpoint"), (int) quick_ms, 0);
    cJSON *reply = NULL, *ping = cJSON_CreateObject ();
    bool reachable = probe && ccm_client_call (probe, "ping", ping, &reply) == 0;
    cJSON_Delete (ping);
    cJSON_Delete (reply);
    for (int i = 0; i < self->nagents; i++) {
        exec_agent_t *agent = self->agents[i];
        if (agent->end_reason)
            continue;
        bool held = false;
        if (reachable) {
            cJSON *body = cJSON_CreateObject ();
            cJSON_AddStringToObject (body, "task", agent->task_id);
            reply = NULL;
            if (ccm_client_call (probe, "task.get", body, &reply) == 0) {
                const char *holder =
                    s_str (cJSON_GetObjectItemCaseSensitive (reply, "task"), "locked_by");
                held = holder && strcmp (holder, self->system_id) == 0;
            }
            else
                held = true;  //  the store is there: no reason to think it is lost
            cJSON_Delete (reply);
            cJSON_Delete (body);
        }
        if (!held) {
            ccm_warn ("task %s: no word from the router in %lld ms and %s; stopping its agent so"
                      " that it never runs twice",
                      agent->short_id, (long long) silent_ms,
                      reachable ? "the store says another executor holds it"
                                : "the store is out of reach too");
            agent->end_reason = "lost";
        }
    }
    ccm_client_destroy (&probe);
}

//  Takes what the router sent; reconnects if it has been silent too long;
//  fences when it may have been given up; beats when due.
static void
s_router_poll (exec_t *self)
{
    while (zsock_events (self->router) & ZMQ_POLLIN) {
        zmsg_t *msg = zmsg_recv (self->router);
        char *verb = msg ? zmsg_popstr (msg) : NULL;
        char *text = msg ? zmsg_popstr (msg) : NULL;
        cJSON *body = text ? cJSON_Parse (text) : NULL;
        self->router_heard_ms = ccm_mono_ms ();
        self->router_contact_ms = self->router_heard_ms;
        const char *task_id = cJSON_GetStringValue (cJSON_GetObjectItem (body, "task_id"));
        if (verb && strcmp (verb, "RUN") == 0 && task_id && ccm_uuid_valid (task_id))
            s_router_run (self, task_id);
        else if (!verb || strcmp (verb, "HEARTBEAT") != 0)
            ccm_warn ("a malformed message from the router; ignored");
        cJSON_Delete (body);
        zstr_free (&text);
        zstr_free (&verb);
        zmsg_destroy (&msg);
    }
    int64_t now = ccm_mono_ms ();
    int64_t liveness = ccm_config_int (self->config, "router.liveness");
    int64_t silent = now - self->router_contact_ms;
    if (self->nagents && silent > self->router_beat_ms * (liveness > 1 ? liveness - 1 : 1)
        && now - self->fenced_ms > self->router_beat_ms) {
        self->fenced_ms = now;
        s_fence (self, silent);
    }
    if (now - self->router_heard_ms > self->router_beat_ms * liveness) {
        ccm_warn ("no word from the router in %lld ms; reconnecting",
                  (long long) (now - self->router_heard_ms));
        s_router_connect (self);
    }
    if (now - self->router_sent_ms >= self->router_beat_ms)
        s_router_beat (self);
}

int
exec_main (ccm_config_t *config)
{
    exec_t self = {.config = config};
    self.contexts = zhashx_new ();
    zhashx_set_destructor (self.contexts, (zhashx_destructor_fn *) zstr_free);
    self.capacity = (int) ccm_config_int (config, "executor.capacity");
    char *error = NULL;
    self.profiles = s_load_profiles (ccm_config_str (config, "executor.profiles_file"), &error);
    if (error) {
        ccm_error ("%s", error);
        free (error);
        return 1;
    }
    const char *dirs[] = {ccm_config_str (config, "executor.logs"),
                          ccm_config_str (config, "executor.worktrees")};
    for (int i = 0; i < 2; i++)
        if (mkdir (dirs[i], 0700) && errno != EEXIST) {
            ccm_error ("cannot create %s: %s", dirs[i], strerror (errno));
            return 1;
        }
    self.store = ccm_client_new (ccm_config_str (config, "store.endpoint"),
                                 (int) ccm_config_int (config, "bus.timeout_ms"),
                                 (int) ccm_config_int (config, "bus.retries"));
    while (!zsys_interrupted && (!self.store || s_register (&self))) {
        const char *endpoint = ccm_config_str (config, "store.endpoint");
        if (strncmp (endpoint, "tcp://", 6) == 0)
            ccm_warn ("cannot register with the store at %s: no answer; the hub may be down or"
                      " out of reach, bus.server_key may not be the hub's key, or this"
                      " machine's key may not be trusted there ('ccm keys trust' on the hub);"
                      " retrying",
                      endpoint);
        else
            ccm_warn ("cannot register with the store; retrying");
        zclock_sleep (1000);
    }
    if (zsys_interrupted) {
        ccm_client_destroy (&self.store);
        return 0;
    }
    ccm_info ("ready: system %s (%s), capacity %d", self.system_id, self.hostname, self.capacity);
    //  Writes kept by a previous run go first: a result recorded then must
    //  not be taken for a lost agent by the reconciliation below.
    s_outbox_load (&self);
    s_resend (&self);
    s_claude_settings (&self);
    s_refresh_projects (&self);
    s_reconcile (&self);
    //  Task status events wake the loop at once: a newly queued task is
    //  claimed without waiting for the next tick. The tick still runs, so a
    //  dropped PUB only delays, never loses, a claim or a cancellation.
    zsock_t *events = ccm_bus_sub_connect (ccm_config_str (config, "store.pub_endpoint"), "task.");
    if (events) {
        zsock_set_subscribe (events, "project.");
        zsock_set_subscribe (events, "agents.updated");
    }
    int64_t poll_ms = ccm_config_int (config, "executor.poll_ms");
    if (strcmp (ccm_config_str (config, "executor.dispatch"), "router") == 0) {
        self.router_beat_ms = ccm_config_int (config, "router.heartbeat_ms");
        if (self.router_beat_ms < 10)
            self.router_beat_ms = 10;
        if (poll_ms > self.router_beat_ms)
            poll_ms = self.router_beat_ms;
        s_router_connect (&self);
        ccm_info ("tasks come from the router at %s", ccm_config_str (config, "router.endpoint"));
    }
    int64_t next_refresh = ccm_mono_ms () + 2000, next_check = 0;
    while (!zsys_interrupted) {
        bool woken = false, projects_changed = false;
        if (events) {
            zmq_pollitem_t items[2] = {
                {zsock_resolve (events), 0, ZMQ_POLLIN, 0},
                {self.router ? zsock_resolve (self.router) : NULL, 0, ZMQ_POLLIN, 0}};
            if (zmq_poll (items, self.router ? 2 : 1, (long) poll_ms) > 0) {
                //  Drain whatever arrived; the content matters less than the wake-up.
                while (zsock_events (events) & ZMQ_POLLIN) {
                    zmsg_t *msg = zmsg_recv (events);
                    zframe_t *topic = msg ? zmsg_first (msg) : NULL;
                    zframe_t *seq = topic ? zmsg_next (msg) : NULL;  //  [topic][seq][json]
                    zframe_t *body = seq ? zmsg_next (msg) : NULL;
                    if (topic && zframe_size (topic) > 8
                        && memcmp (zframe_data (topic), "project.", 8) == 0)
                        projects_changed = true;
                    else if (topic && body && zframe_streq (topic, "agents.updated"))
                        s_agent_changed (&self, (const char *) zframe_data (body),
                                         zframe_size (body));
                    zmsg_destroy (&msg);
                }
                woken = true;
            }
        }
        else
            zclock_sleep ((int) poll_ms);
        int64_t now = ccm_mono_ms ();
        //  With a router, its silence says the hub is out of reach: then
        //  nothing waits on the store (writes are kept for later).
        self.hub_quiet = self.router && now - self.router_contact_ms > 2 * self.router_beat_ms;
        if (self.outbox && zlistx_size (self.outbox) && !self.hub_quiet
            && now - self.outbox_tried_ms >= S_RESEND_MS) {
            self.outbox_tried_ms = now;
            s_resend (&self);
        }
        s_watch (&self);
        now = ccm_mono_ms ();
        if ((woken || now >= next_check) && !self.hub_quiet) {
            s_check_cancelled (&self);
            next_check = now + poll_ms;
        }
        if ((projects_changed || now >= next_refresh) && !self.hub_quiet) {
            s_refresh_projects (&self);
            next_refresh = now + 2000;
        }
        if (self.router)
            s_router_poll (&self);
        else
            s_claim (&self);
    }
    zsock_destroy (&events);
    zsock_destroy (&self.router);
    //  Agents keep running in tmux; a restarted executor adopts them.
    ccm_info ("stopping; %d agent(s) left running in tmux", self.nagents);
    for (int i = 0; i < self.nagents; i++)
        s_agent_destroy (&self.agents[i]);
    free (self.agents);
    cJSON_Delete (self.projects);
    cJSON_Delete (self.profiles);
    free (self.claude_settings);
    zhashx_destroy (&self.contexts);
    if (self.outbox && !s_resend (&self))
        ccm_warn ("stopping with %zu write(s) the store never answered; kept in %s for the"
                  " next start",
                  zlistx_size (self.outbox), ccm_config_str (config, "executor.outbox"));
    zlistx_destroy (&self.outbox);
    ccm_client_destroy (&self.store);
    return 0;
}

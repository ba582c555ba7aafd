/*  exec_agents: each task's agent, from its start to its recorded end.

    Starting an attempt: the store confirms it (task.get: assigned to this
    system at this attempt), the worktree is made off the loop, the agent's
    lease is written, and tmux starts the agent under ccm-agent, off the
    loop too. Each step is a callback on the loop, which meanwhile keeps
    beating. An attempt this executor already took (the attempts table) is
    never started twice; an older attempt's agent still here is stopped
    before the newer one starts.

    Watching: every pane in one `list-panes` (off the loop); a dead pane's
    exit status comes from its ccm-agent wrapper, not from the screen.
    Finishing: the log's tail and the files changed are read off the loop,
    then the result is recorded as this attempt's (fenced by the store).  */

#include "exec_internal.h"

#include "ccm_log.h"
#include "ccm_msg.h"
#include "ccm_proc.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_TAIL_BYTES 4096
#define S_REAP_MS    5000              //  longest wait for a dead agent's exit status
#define S_FORGET_MS  (10 * 60 * 1000)  //  how long a finished attempt is remembered

//  Worktree adds in one repository, and Claude Code's config file, are
//  read-modify-write: one thread at a time.
static pthread_mutex_t s_lock = PTHREAD_MUTEX_INITIALIZER;
//  A project's tmux session is made by its first window: one spawn at a time.
static pthread_mutex_t s_tmux_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *
s_str (cJSON *obj, const char *key)
{
    return cJSON_GetStringValue (cJSON_GetObjectItemCaseSensitive (obj, key));
}

void
exec_agent_destroy (exec_agent_t **agent_p)
{
    if (agent_p && *agent_p) {
        exec_agent_t *agent = *agent_p;
        free (agent->project_id);
        free (agent->project);
        free (agent->worktree);
        free (agent->base);
        free (agent->review_of);
        free (agent->log_path);
        free (agent->lease_path);
        free (agent->profile);
        free (agent);
        *agent_p = NULL;
    }
}

//  Records what this executor did with attempt of task.
static void
s_mark (exec_t *self, const char *task_id, int attempt, const char *state)
{
    exec_attempt_t *seen = zhashx_lookup (self->attempts, task_id);
    if (!seen) {
        seen = calloc (1, sizeof *seen);
        zhashx_insert (self->attempts, task_id, seen);
    }
    seen->attempt = attempt;
    seen->state = state;
    seen->at_ms = ccm_mono_ms ();
}

exec_agent_t *
exec_agents_of (exec_t *self, const char *task_id)
{
    for (int i = 0; i < self->nagents; i++)
        if (strcmp (self->agents[i]->task_id, task_id) == 0)
            return self->agents[i];
    return NULL;
}

static void
s_add (exec_t *self, exec_agent_t *agent)
{
    agent->seq = ++self->spawned;
    self->agents = realloc (self->agents, (size_t) (self->nagents + 1) * sizeof *self->agents);
    self->agents[self->nagents++] = agent;
}

//  Forgets the agent; an attempt waiting for it to be gone starts now.
static void
s_remove (exec_t *self, exec_agent_t *agent)
{
    for (int i = 0; i < self->nagents; i++)
        if (self->agents[i] == agent) {
            self->agents[i] = self->agents[--self->nagents];
            break;
        }
    char task_id[CCM_UUID_LEN + 1];
    snprintf (task_id, sizeof task_id, "%s", agent->task_id);
    if (agent->lease_path)
        unlink (agent->lease_path);
    exec_agent_destroy (&agent);
    int *next = zhashx_lookup (self->after, task_id);
    if (next) {
        int attempt = *next;
        zhashx_delete (self->after, task_id);
        exec_agents_run (self, task_id, attempt);
    }
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
    exec_store_write (self, "agent.upsert", body, NULL, NULL);
}

//  Fails an attempt that could not start, with a reason the user will read.
static void
s_fail_start (exec_t *self, const char *task_id, int attempt, const char *reason)
{
    ccm_warn ("task %.8s cannot start: %s", task_id, reason);
    cJSON *result = cJSON_CreateObject ();
    cJSON_AddStringToObject (result, "status", "failed");
    cJSON_AddStringToObject (result, "output", reason);
    exec_store_move (self, task_id, attempt, "failed", reason, result);
    s_mark (self, task_id, attempt, "done");
}

//  The project named name in the store's list, or NULL (borrowed).
static cJSON *
s_project (exec_t *self, const char *name)
{
    cJSON *project;
    cJSON_ArrayForEach (project, self->projects)
    {
        const char *item = s_str (project, "name");
        if (item && name && strcmp (item, name) == 0)
            return project;
    }
    return NULL;
}

//  --------------------------------------------------------------------------
//  Starting an attempt

typedef struct {
    exec_t *self;
    char task_id[CCM_UUID_LEN + 1];
    int attempt;
    cJSON *task;  //  the task, as the store confirmed it
    char *repo;   //  the project's path here
    char *prompt;
    exec_profile_t profile;  //  borrowed: built-in or self->profiles
    exec_agent_t *agent;     //  being made: owned here until started
    char *error;             //  why it cannot start
} s_start_t;

static void
s_start_destroy (s_start_t **ctx_p)
{
    if (ctx_p && *ctx_p) {
        s_start_t *ctx = *ctx_p;
        cJSON_Delete (ctx->task);
        free (ctx->repo);
        free (ctx->prompt);
        free (ctx->error);
        exec_agent_destroy (&ctx->agent);
        free (ctx);
        *ctx_p = NULL;
    }
}

//  Gives up starting: the task fails with the reason.
static void
s_start_fail (s_start_t *ctx, const char *reason)
{
    s_fail_start (ctx->self, ctx->task_id, ctx->attempt, reason);
    s_start_destroy (&ctx);
}

//  In a thread: tmux starts the agent under ccm-agent.
static void
s_spawn_run (void *arg)
{
    s_start_t *ctx = arg;
    exec_t *self = ctx->self;
    exec_agent_t *agent = ctx->agent;
    const char *program = cJSON_GetArrayItem (ctx->profile.argv, 0)->valuestring;
    if (exec_is_claude (program)) {
        char dir[PATH_MAX];
        exec_claude_dir (self, &ctx->profile, dir, sizeof dir);
        pthread_mutex_lock (&s_lock);
        if (exec_claude_trust (dir, agent->worktree))
            ccm_warn ("task %s: could not pre-accept Claude Code's trust dialog in %s",
                      agent->short_id, dir);
        pthread_mutex_unlock (&s_lock);
    }
    char **argv = exec_profile_argv (&ctx->profile, ctx->prompt, ctx->task_id, agent->worktree);
    if (argv && self->claude_settings && exec_is_claude (program))
        argv = exec_argv_insert (argv, 1, "--settings", self->claude_settings);
    pthread_mutex_lock (&s_tmux_lock);
    if (!argv || exec_tmux_spawn (self, agent, argv, &ctx->error))
        if (!ctx->error)
            ctx->error = strdup ("cannot start the agent");
    pthread_mutex_unlock (&s_tmux_lock);
    exec_argv_free (argv);
}

//  On the loop: the agent runs (or could not start); the task is executing.
static void
s_spawn_done (void *arg)
{
    s_start_t *ctx = arg;
    exec_t *self = ctx->self;
    if (ctx->error) {
        s_start_fail (ctx, ctx->error);
        return;
    }
    exec_agent_t *agent = ctx->agent;
    ctx->agent = NULL;
    //  Confirmations while it started went to its lease file only.
    if (agent->lease_path)
        agent->lease_until = exec_lease_read (agent->lease_path);
    s_set_deadline (agent, ctx->task);
    s_add (self, agent);
    s_mark (self, agent->task_id, agent->attempt, "running");
    s_agent_status (self, agent, "running", "spawn");
    exec_store_move (self, agent->task_id, agent->attempt, "executing", "agent started", NULL);
    ccm_info ("task %s: %s started (attempt %d) in tmux window %s, worktree %s", agent->short_id,
              agent->profile, agent->attempt, agent->window, agent->worktree);
    s_start_destroy (&ctx);
}

//  Writes the lease, then has tmux start the agent.
static void
s_spawn (s_start_t *ctx)
{
    exec_t *self = ctx->self;
    exec_agent_t *agent = ctx->agent;
    if (self->router) {
        //  Without a lease in force (the router silent), the attempt may be
        //  given away any moment: not started; a confirmation brings it back.
        if (ccm_boot_ms () >= self->lease_until) {
            ccm_warn ("task %.8s: not started now: no lease (the router has been silent)",
                      ctx->task_id);
            zhashx_delete (self->attempts, ctx->task_id);
            s_start_destroy (&ctx);
            return;
        }
        if (asprintf (&agent->lease_path, "%s/%s.lease", self->lease_dir, agent->task_id) < 0
            || exec_lease_write (agent->lease_path, self->lease_until)) {
            s_start_fail (ctx, "cannot write the agent's lease");
            return;
        }
        agent->lease_until = self->lease_until;
    }
    exec_work_submit (self->work, s_spawn_run, s_spawn_done, ctx);
}

//  In a thread: the task's worktree (git can take seconds).
static void
s_worktree_run (void *arg)
{
    s_start_t *ctx = arg;
    exec_agent_t *agent = ctx->agent;
    pthread_mutex_lock (&s_lock);
    if (exec_git_worktree (ctx->self, agent->project, ctx->repo, agent->short_id, &agent->worktree,
                           &agent->base, &ctx->error)
        && !ctx->error)
        ctx->error = strdup ("cannot create the worktree");
    pthread_mutex_unlock (&s_lock);
}

static void
s_worktree_done (void *arg)
{
    s_start_t *ctx = arg;
    exec_t *self = ctx->self;
    if (ctx->error) {
        s_start_fail (ctx, ctx->error);
        return;
    }
    exec_agent_t *agent = ctx->agent;
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
    exec_store_write (self, "worktree.upsert", body, NULL, NULL);
    s_spawn (ctx);
}

//  A review works in the worktree of the task it reviews.
static void
s_review_found (void *arg, int rc, cJSON *reply)
{
    s_start_t *ctx = arg;
    if (rc == CCM_ECLOSED) {
        s_start_destroy (&ctx);
        return;
    }
    cJSON *row = cJSON_GetArrayItem (cJSON_GetObjectItemCaseSensitive (reply, "worktrees"), 0);
    char *error = NULL;
    exec_agent_t *agent = ctx->agent;
    if (rc)
        ccm_set_error (&error, "cannot read the worktree of task %.8s: %s", agent->review_of,
                       ccm_client_strerror (rc, reply));
    else
        exec_review_worktree (ctx->self, agent->review_of, row, &agent->worktree, &agent->base,
                              &error);
    if (error) {
        s_start_fail (ctx, error);
        free (error);
        return;
    }
    s_spawn (ctx);
}

//  The store's word on the attempt: start it if it is ours to run.
static void
s_confirmed (void *arg, int rc, cJSON *reply)
{
    s_start_t *ctx = arg;
    exec_t *self = ctx->self;
    if (rc) {
        if (rc != CCM_ECLOSED) {
            ccm_warn ("task %.8s: %s; not started", ctx->task_id, ccm_client_strerror (rc, reply));
            zhashx_delete (self->attempts, ctx->task_id);
        }
        s_start_destroy (&ctx);
        return;
    }
    cJSON *task = cJSON_GetObjectItemCaseSensitive (reply, "task");
    const char *status = s_str (task, "status"), *locked_by = s_str (task, "locked_by");
    int attempts = (int) cJSON_GetNumberValue (cJSON_GetObjectItemCaseSensitive (task, "attempts"));
    if (ctx->attempt == 0)
        ctx->attempt = attempts;  //  a RUN without its attempt (an older router)
    bool ours = locked_by && strcmp (locked_by, self->system_id) == 0 && attempts == ctx->attempt;
    if (ours && status && strcmp (status, "executing") == 0
        && !exec_agents_of (self, ctx->task_id)) {
        //  It ran here, and its agent is gone without a word.
        cJSON *result = cJSON_CreateObject ();
        cJSON_AddStringToObject (result, "status", "crashed");
        cJSON_AddStringToObject (result, "output", "agent window lost");
        exec_store_move (self, ctx->task_id, ctx->attempt, "failed",
                         "agent lost: its tmux window is gone", result);
        s_mark (self, ctx->task_id, ctx->attempt, "done");
        s_start_destroy (&ctx);
        return;
    }
    if (!ours || !status || strcmp (status, "assigned") != 0) {
        ccm_warn ("task %.8s attempt %d is %s for %.36s at attempt %d; not started", ctx->task_id,
                  ctx->attempt, status ? status : "unknown", locked_by ? locked_by : "nobody",
                  attempts);
        s_mark (self, ctx->task_id, ctx->attempt, "done");
        s_start_destroy (&ctx);
        return;
    }
    s_mark (self, ctx->task_id, ctx->attempt, "starting");
    ctx->task = cJSON_Duplicate (task, true);
    const char *project_name = s_str (task, "requires_project");
    if (!project_name)
        project_name = s_str (task, "project");
    cJSON *project = s_project (self, project_name);
    const char *repo = s_str (project, "path");
    struct stat st;
    if (!project) {
        s_start_fail (ctx, "the task names no project held by this executor");
        return;
    }
    if (!repo || stat (repo, &st) || !S_ISDIR (st.st_mode)) {
        char reason[PATH_MAX + 300];
        snprintf (reason, sizeof reason, "project path %s %s on %s", repo ? repo : "(none)",
                  !repo || stat (repo, &st) ? "does not exist" : "is not a directory",
                  self->hostname);
        s_start_fail (ctx, reason);
        return;
    }
    const char *profile_name = s_str (task, "agent_profile");
    if (!profile_name)
        profile_name = s_str (cJSON_GetObjectItemCaseSensitive (project, "config"), "agent");
    if (!profile_name)
        profile_name = ccm_config_str (self->config, "executor.default_profile");
    if (exec_profile_find (self, profile_name, &ctx->profile)) {
        char reason[128];
        snprintf (reason, sizeof reason, "unknown agent profile '%.64s'", profile_name);
        s_start_fail (ctx, reason);
        return;
    }
    const char *program = cJSON_GetArrayItem (ctx->profile.argv, 0)->valuestring;
    if (!exec_program_exists (program)) {
        char reason[PATH_MAX];
        snprintf (reason, sizeof reason, "agent binary '%.200s' of profile '%s' not found in PATH",
                  program, profile_name);
        s_start_fail (ctx, reason);
        return;
    }
    ctx->repo = strdup (repo);
    ctx->prompt = strdup (s_str (task, "prompt") ? s_str (task, "prompt") : "");
    exec_agent_t *agent = calloc (1, sizeof *agent);
    ctx->agent = agent;
    snprintf (agent->task_id, sizeof agent->task_id, "%s", ctx->task_id);
    snprintf (agent->short_id, sizeof agent->short_id, "%.8s", ctx->task_id);
    agent->attempt = ctx->attempt;
    ccm_uuid (agent->agent_id);
    agent->project = strdup (project_name);
    agent->project_id = s_str (project, "id") ? strdup (s_str (project, "id")) : NULL;
    agent->profile = strdup (profile_name);
    agent->headless = ctx->profile.headless;
    agent->exit_on_idle = ctx->profile.exit_on_idle && !ctx->profile.headless;
    if (asprintf (&agent->log_path, "%s/%s.log", ccm_config_str (self->config, "executor.logs"),
                  ctx->task_id)
        < 0)
        agent->log_path = NULL;
    const char *type = s_str (task, "task_type");
    if (type && strcmp (type, "supervisory") == 0) {
        const char *parent = s_str (task, "parent_task_id");
        agent->review_of = strdup (parent ? parent : "");
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", agent->review_of);
        exec_store_read (self, "worktree.list", body, s_review_found, ctx);
    }
    else
        exec_work_submit (self->work, s_worktree_run, s_worktree_done, ctx);
}

void
exec_agents_run (exec_t *self, const char *task_id, int attempt)
{
    exec_attempt_t *seen = zhashx_lookup (self->attempts, task_id);
    if (seen && (attempt == 0 || seen->attempt >= attempt))
        return;  //  taken already: never a second agent for one attempt
    exec_agent_t *old = exec_agents_of (self, task_id);
    if (old) {
        //  An older attempt's agent is still here: the task was requeued and
        //  placed here again. It stops first; the new attempt waits for that.
        if (!old->end_reason || strcmp (old->end_reason, "stale") != 0)
            ccm_warn ("task %s: attempt %d comes while attempt %d's agent still runs here; that"
                      " agent is stopped first",
                      old->short_id, attempt, old->attempt);
        if (!old->end_reason)
            old->end_reason = "stale";
        int *next = malloc (sizeof *next);
        *next = attempt;
        zhashx_update (self->after, task_id, next);
        return;
    }
    s_mark (self, task_id, attempt, "starting");
    s_start_t *ctx = calloc (1, sizeof *ctx);
    ctx->self = self;
    snprintf (ctx->task_id, sizeof ctx->task_id, "%s", task_id);
    ctx->attempt = attempt;
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", task_id);
    exec_store_read (self, "task.get", body, s_confirmed, ctx);
}

//  --------------------------------------------------------------------------
//  Finishing an agent

typedef struct {
    exec_t *self;
    exec_agent_t *agent;  //  borrowed: still in agents until recorded
    int status, signal;
    const char *result_status, *to;
    char reason[320];
    cJSON *result;  //  built off the loop
    cJSON *report;  //  a review's report.add body, or NULL
    char *report_error;
} s_end_t;

//  The last bytes of the agent's log, as valid UTF-8 text.
static char *
s_tail (const char *path)
{
    FILE *file = path ? fopen (path, "rb") : NULL;
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

//  In a thread: the result (output, files changed, a headless result, a
//  review's report).
static void
s_collect_run (void *arg)
{
    s_end_t *end = arg;
    exec_agent_t *agent = end->agent;
    cJSON *result = cJSON_CreateObject ();
    end->result = result;
    cJSON_AddStringToObject (result, "status", end->result_status);
    int exit_code = end->signal ? 128 + end->signal : end->status;
    cJSON_AddNumberToObject (result, "exit_code", exit_code);
    cJSON_AddStringToObject (result, "agent_id", agent->agent_id);
    char *tail = s_tail (agent->log_path);
    cJSON_AddStringToObject (result, "output", tail);
    //  A review changes nothing of its own: the files are the reviewed task's.
    cJSON_AddItemToObject (result, "files_changed",
                           agent->review_of ? cJSON_CreateArray ()
                                            : exec_git_changed (agent->worktree, agent->base));
    cJSON *details =
        agent->headless && agent->log_path ? exec_claude_result (agent->log_path) : NULL;
    if (!details)
        details = cJSON_CreateObject ();
    if (agent->review_of && end->to && strcmp (end->to, "complete") == 0) {
        const char *answer = s_str (details, "result");
        end->report = exec_review_report (agent, answer ? answer : tail, &end->report_error);
    }
    free (tail);
    cJSON_AddStringToObject (details, "log", agent->log_path ? agent->log_path : "");
    cJSON_AddStringToObject (details, "worktree", agent->worktree ? agent->worktree : "");
    cJSON_AddNumberToObject (details, "attempt", agent->attempt);
    cJSON_AddItemToObject (result, "details", details);
}

static void
s_kill_window_run (void *arg)
{
    char **ctx = arg;
    exec_t *self = (exec_t *) ctx[0];
    //  Closing a session's last window ends it: not while another starts there.
    pthread_mutex_lock (&s_tmux_lock);
    exec_tmux (self, NULL, "kill-window", "-t", ctx[1], NULL);
    pthread_mutex_unlock (&s_tmux_lock);
}

static void
s_kill_window_done (void *arg)
{
    char **ctx = arg;
    free (ctx[1]);
    free (ctx);
}

static void
s_kill_window (exec_t *self, const char *window)
{
    char **ctx = calloc (2, sizeof *ctx);
    ctx[0] = (char *) self;
    ctx[1] = strdup (window);
    exec_work_submit (self->work, s_kill_window_run, s_kill_window_done, ctx);
}

//  Records the end: the result as this attempt's, the agent's status.
static void
s_record (s_end_t *end)
{
    exec_t *self = end->self;
    exec_agent_t *agent = end->agent;
    const char *why = agent->end_reason;
    if (why && strcmp (why, "stale") == 0) {
        //  A newer attempt is the task's: this one records nothing.
        cJSON_Delete (end->result);
        snprintf (end->reason, sizeof end->reason, "stopped: attempt %d is stale", agent->attempt);
    }
    else if (end->to)
        exec_store_move (self, agent->task_id, agent->attempt, end->to, end->reason, end->result);
    else {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", agent->task_id);
        cJSON_AddItemToObject (body, "result", end->result);
        exec_store_write (self, "task.result", body, NULL, NULL);
    }
    end->result = NULL;
    //  An agent we stopped (timeout, cancel, lease) exited; one killed otherwise crashed.
    s_agent_status (self, agent, end->signal && !why ? "crashed" : "exited", "pane");
    ccm_info ("task %s: %s (%s)", agent->short_id,
              end->to ? end->to
              : why   ? why
                      : "cancelled",
              end->reason);
    s_kill_window (self, agent->window);
    s_mark (self, agent->task_id, agent->attempt, "done");
    s_remove (self, agent);
    cJSON_Delete (end->report);
    free (end->report_error);
    free (end);
}

static void
s_report_done (void *arg, int rc, cJSON *reply)
{
    s_end_t *end = arg;
    if (rc == CCM_ECLOSED)
        return;  //  shutting down: the agent is adopted again at the next start
    if (rc) {
        end->result_status = "failed";
        end->to = "failed";
        snprintf (end->reason, sizeof end->reason, "review report: %.280s",
                  ccm_client_strerror (rc, reply));
        cJSON_ReplaceItemInObject (end->result, "status", cJSON_CreateString ("failed"));
    }
    else
        ccm_info ("task %s: review of task %.8s recorded", end->agent->short_id,
                  end->agent->review_of);
    s_record (end);
}

static void
s_collect_done (void *arg)
{
    s_end_t *end = arg;
    if (end->agent->review_of && end->to && strcmp (end->to, "complete") == 0) {
        //  A review that ran to its end must leave a report the store accepts.
        if (!end->report) {
            end->to = "failed";
            snprintf (end->reason, sizeof end->reason, "review report: %.280s",
                      end->report_error ? end->report_error : "out of memory");
            cJSON_ReplaceItemInObject (end->result, "status", cJSON_CreateString ("failed"));
        }
        else {
            cJSON *body = end->report;
            end->report = NULL;
            exec_store_write (end->self, "report.add", body, s_report_done, end);
            return;
        }
    }
    s_record (end);
}

//  The agent ended with status or signal: its end is recorded, off the loop
//  first (reading its log and its worktree).
static void
s_finish (exec_t *self, exec_agent_t *agent, int status, int signal_number)
{
    agent->finishing = true;
    s_end_t *end = calloc (1, sizeof *end);
    end->self = self;
    end->agent = agent;
    end->status = status;
    end->signal = signal_number;
    int exit_code = signal_number ? 128 + signal_number : status;
    end->result_status = "complete";
    end->to = "complete";
    snprintf (end->reason, sizeof end->reason, "agent exited with status %d", exit_code);
    const char *why = agent->end_reason ? agent->end_reason : "";
    if (strcmp (why, "timeout") == 0) {
        end->result_status = "timeout";
        end->to = "failed";
        snprintf (end->reason, sizeof end->reason, "timed out; agent killed");
    }
    else if (strcmp (why, "cancelled") == 0) {
        end->result_status = "cancelled";
        end->to = NULL;  //  the task is cancelled already
    }
    else if (strcmp (why, "lease") == 0) {
        end->result_status = "crashed";
        end->to = "failed";
        snprintf (end->reason, sizeof end->reason,
                  "agent stopped: attempt %d's lease ran out (no word from the router), so that"
                  " the task never runs twice",
                  agent->attempt);
    }
    else if (signal_number) {
        end->result_status = "crashed";
        end->to = "failed";
        snprintf (end->reason, sizeof end->reason, "agent killed by signal %d", signal_number);
    }
    else if (status != 0) {
        end->result_status = "failed";
        end->to = "failed";
    }
    exec_work_submit (self->work, s_collect_run, s_collect_done, end);
}

//  --------------------------------------------------------------------------
//  Watching the panes

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

//  How the dead pane's agent ended: first from the status its ccm-agent
//  wrapper wrote ("STATUS" or "137 lease"), where 128+N means signal N, as
//  shells say; else from tmux, which may never learn the status of a
//  process gone within milliseconds. Returns true once known; an agent we
//  stopped ended by SIGTERM; after S_REAP_MS of not knowing, says SIGKILL.
static bool
s_exit_of (exec_agent_t *agent, const s_pane_t *pane, int64_t now, int *status, int *signal)
{
    char path[PATH_MAX];
    snprintf (path, sizeof path, "%s.exit", agent->log_path ? agent->log_path : "");
    FILE *file = fopen (path, "r");
    int code = -1;
    char word[16] = "";
    if (file) {
        if (fscanf (file, "%d %15s", &code, word) < 1)
            code = -1;
        fclose (file);
    }
    if (strcmp (word, "lease") == 0 && !agent->end_reason)
        agent->end_reason = "lease";
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

typedef struct {
    exec_t *self;
    uint64_t upto;  //  agents started since the panes were read are not judged
    char *panes;
} s_watch_t;

static void
s_watch_run (void *arg)
{
    s_watch_t *watch = arg;
    watch->panes = s_panes (watch->self);
}

static void
s_watch_done (void *arg)
{
    s_watch_t *watch = arg;
    exec_t *self = watch->self;
    self->watching = false;
    int64_t now = ccm_mono_ms ();
    int64_t grace = ccm_config_int (self->config, "executor.kill_grace_ms");
    for (int i = self->nagents - 1; i >= 0; i--) {
        exec_agent_t *agent = self->agents[i];
        if (agent->finishing || agent->seq > watch->upto)
            continue;
        s_pane_t pane;
        if (!watch->panes || s_pane_find (watch->panes, agent->window, &pane)) {
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
            //  tmux made the agent's wrapper a session leader: signal its group.
            kill (-pane.pid, SIGTERM);
            agent->term_sent_ms = now;
        }
        else if (agent->term_sent_ms && now - agent->term_sent_ms >= grace && pane.pid > 1)
            kill (-pane.pid, SIGKILL);
    }
    free (watch->panes);
    free (watch);
}

void
exec_agents_watch (exec_t *self)
{
    if (self->watching || self->nagents == 0)
        return;
    self->watching = true;
    s_watch_t *watch = calloc (1, sizeof *watch);
    watch->self = self;
    watch->upto = self->spawned;
    exec_work_submit (self->work, s_watch_run, s_watch_done, watch);
}

//  --------------------------------------------------------------------------
//  Cancellations, idle agents, forgetting

typedef struct {
    exec_t *self;
    char task_id[CCM_UUID_LEN + 1];
} s_check_t;

static void
s_check_done (void *arg, int rc, cJSON *reply)
{
    s_check_t *check = arg;
    exec_t *self = check->self;
    if (rc != CCM_ECLOSED) {
        self->checking--;
        const char *status = s_str (cJSON_GetObjectItemCaseSensitive (reply, "task"), "status");
        exec_agent_t *agent = exec_agents_of (self, check->task_id);
        if (rc == 0 && agent && !agent->end_reason && status && strcmp (status, "cancelled") == 0) {
            ccm_info ("task %s: cancelled; stopping its agent", agent->short_id);
            agent->end_reason = "cancelled";
        }
    }
    free (check);
}

void
exec_agents_check_cancelled (exec_t *self)
{
    if (self->checking > 0)
        return;  //  the last round is still out (the store slow or away)
    for (int i = 0; i < self->nagents; i++) {
        exec_agent_t *agent = self->agents[i];
        if (agent->end_reason || agent->finishing)
            continue;
        s_check_t *check = calloc (1, sizeof *check);
        check->self = self;
        snprintf (check->task_id, sizeof check->task_id, "%s", agent->task_id);
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", agent->task_id);
        self->checking++;
        exec_store_read (self, "task.get", body, s_check_done, check);
    }
}

static void
s_exit_keys_run (void *arg)
{
    char **ctx = arg;
    exec_t *self = (exec_t *) ctx[0];
    if (exec_tmux (self, NULL, "send-keys", "-t", ctx[1], "-l", "/exit", NULL) == 0)
        exec_tmux (self, NULL, "send-keys", "-t", ctx[1], "Enter", NULL);
}

void
exec_agents_changed (exec_t *self, const char *json, size_t size)
{
    cJSON *event = cJSON_ParseWithLength (json, size);  //  {"v","seq","topic",...,"data"}
    cJSON *data = cJSON_GetObjectItemCaseSensitive (event, "data");
    const char *id = s_str (data, "id");
    const char *status = s_str (data, "status");
    const char *source = s_str (data, "state_source");
    for (int i = 0; id && status && source && i < self->nagents; i++) {
        exec_agent_t *agent = self->agents[i];
        if (strcmp (agent->agent_id, id) != 0 || !agent->exit_on_idle || agent->exit_sent
            || agent->end_reason || agent->finishing || strcmp (status, "idle")
            || strcmp (source, "hook"))
            continue;
        //  Typed only after Stop: /exit during a turn would kill the tool that runs.
        ccm_info ("task %s: the agent's turn is over (Stop); ending it", agent->short_id);
        char **ctx = calloc (2, sizeof *ctx);
        ctx[0] = (char *) self;
        ctx[1] = strdup (agent->window);
        exec_work_submit (self->work, s_exit_keys_run, s_kill_window_done, ctx);
        agent->exit_sent = true;
    }
    cJSON_Delete (event);
}

void
exec_agents_forget (exec_t *self)
{
    int64_t now = ccm_mono_ms ();
    zlistx_t *old = zlistx_new ();
    zlistx_set_destructor (old, (zlistx_destructor_fn *) zstr_free);
    for (exec_attempt_t *seen = zhashx_first (self->attempts); seen;
         seen = zhashx_next (self->attempts))
        if (strcmp (seen->state, "done") == 0 && now - seen->at_ms > S_FORGET_MS)
            zlistx_add_end (old, strdup (zhashx_cursor (self->attempts)));
    for (const char *id = zlistx_first (old); id; id = zlistx_next (old))
        zhashx_delete (self->attempts, id);
    zlistx_destroy (&old);
}

//  --------------------------------------------------------------------------
//  After a restart (before the loop; synchronous on the start-up client)

static cJSON *
s_sync_call (ccm_client_t *client, const char *verb, cJSON *body)
{
    cJSON *reply = NULL;
    int rc = ccm_client_call (client, verb, body, &reply);
    cJSON_Delete (body);
    if (rc) {
        ccm_warn ("%s: %s", verb, ccm_client_strerror (rc, reply));
        cJSON_Delete (reply);
        return NULL;
    }
    return reply;
}

//  Watches again the agent of task running in pane: the same agent id
//  (from the window), worktree, attempt and deadline as before.
static void
s_adopt (exec_t *self, ccm_client_t *client, cJSON *task, const s_pane_t *pane)
{
    const char *id = s_str (task, "id");
    exec_agent_t *agent = calloc (1, sizeof *agent);
    snprintf (agent->task_id, sizeof agent->task_id, "%s", id);
    snprintf (agent->short_id, sizeof agent->short_id, "%.8s", id);
    snprintf (agent->window, sizeof agent->window, "%s", pane->window);
    agent->attempt =
        (int) cJSON_GetNumberValue (cJSON_GetObjectItemCaseSensitive (task, "attempts"));
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
    if (self->router
        && asprintf (&agent->lease_path, "%s/%s.lease", self->lease_dir, agent->task_id) < 0)
        agent->lease_path = NULL;
    //  Its lease stands as the last executor left it until the router confirms it.
    agent->lease_until = agent->lease_path ? exec_lease_read (agent->lease_path) : 0;
    const char *type = s_str (task, "task_type"), *parent = s_str (task, "parent_task_id");
    if (type && strcmp (type, "supervisory") == 0)
        agent->review_of = strdup (parent ? parent : "");
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", agent->review_of ? agent->review_of : id);
    cJSON *reply = s_sync_call (client, "worktree.list", body);
    cJSON *worktree = cJSON_GetArrayItem (cJSON_GetObjectItemCaseSensitive (reply, "worktrees"), 0);
    const char *path = s_str (worktree, "worktree_path");
    const char *base = s_str (worktree, "base_branch");
    agent->worktree = strdup (path ? path : "/");
    agent->base = strdup (base ? base : "HEAD");
    cJSON_Delete (reply);
    s_set_deadline (agent, task);
    s_add (self, agent);
    s_mark (self, id, agent->attempt, "running");
    ccm_info ("task %s: reattached to tmux window %s (attempt %d)", agent->short_id, pane->window,
              agent->attempt);
}

void
exec_agents_reconcile (exec_t *self, ccm_client_t *client)
{
    char *panes = s_panes (self);
    const char *cursor = panes;
    s_pane_t pane;
    while (s_pane_next (&cursor, &pane)) {
        if (!ccm_uuid_valid (pane.task) || exec_agents_of (self, pane.task))
            continue;
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", pane.task);
        cJSON *reply = s_sync_call (client, "task.get", body);
        cJSON *task = cJSON_GetObjectItemCaseSensitive (reply, "task");
        const char *status = s_str (task, "status");
        const char *locked_by = s_str (task, "locked_by");
        bool ours = locked_by && strcmp (locked_by, self->system_id) == 0;
        bool recorded =
            cJSON_GetArraySize (cJSON_GetObjectItemCaseSensitive (reply, "results")) > 0;
        exec_attempt_t *seen = zhashx_lookup (self->attempts, pane.task);
        if (!status)
            ccm_warn ("tmux window %s names unknown task %s; left alone", pane.window, pane.task);
        else if (ours && !seen
                 && (strcmp (status, "executing") == 0 || strcmp (status, "assigned") == 0)) {
            s_adopt (self, client, task, &pane);
            if (strcmp (status, "assigned") == 0)
                exec_store_move (self, pane.task, exec_agents_of (self, pane.task)->attempt,
                                 "executing", "agent started", NULL);
        }
        else if (strcmp (status, "cancelled") == 0 && !recorded) {
            s_adopt (self, client, task, &pane);
            ccm_info ("task %.8s: cancelled while the executor was down; stopping its agent",
                      pane.task);
            exec_agents_of (self, pane.task)->end_reason = "cancelled";
        }
        else {
            //  Settled without this window, taken by another executor, or
            //  its end already on its way to the store (the outbox).
            ccm_info ("task %.8s is %s; closing its tmux window %s", pane.task, status,
                      pane.window);
            if (!pane.dead && pane.pid > 1)
                kill (-pane.pid, SIGKILL);
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
        cJSON *reply = s_sync_call (client, "task.list", body);
        cJSON *task;
        cJSON_ArrayForEach (task, cJSON_GetObjectItemCaseSensitive (reply, "tasks"))
        {
            const char *locked_by = s_str (task, "locked_by");
            const char *id = s_str (task, "id");
            int attempt =
                (int) cJSON_GetNumberValue (cJSON_GetObjectItemCaseSensitive (task, "attempts"));
            if (!id || !locked_by || strcmp (locked_by, self->system_id) != 0
                || exec_agents_of (self, id) || zhashx_lookup (self->attempts, id))
                continue;
            if (s == 1)
                exec_agents_run (self, id, attempt);  //  claimed, never started
            else {
                cJSON *result = cJSON_CreateObject ();
                cJSON_AddStringToObject (result, "status", "crashed");
                cJSON_AddStringToObject (result, "output", "agent window lost");
                exec_store_move (self, id, attempt, "failed",
                                 "agent lost: no tmux window after an executor restart", result);
                s_mark (self, id, attempt, "done");
            }
        }
        cJSON_Delete (reply);
    }
}

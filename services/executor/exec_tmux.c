/*  exec_tmux: ccm's own tmux server (executor.tmux_socket), a session per
    project and a window per task, named by the task's short id. Every call
    passes an argv array; the agent's command is handed to tmux as separate
    arguments after "--", which tmux execs directly, without a shell.     */

#include "exec_internal.h"

#include "ccm_proc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_TMUX_MS  10000
#define S_ARGS_MAX 256

int
exec_tmux (exec_t *self, char **out, const char *first, ...)
{
    char *argv[S_ARGS_MAX] = {"tmux", "-S",
                              (char *) ccm_config_str (self->config, "executor.tmux_socket")};
    int n = 3;
    va_list args;
    va_start (args, first);
    for (const char *arg = first; arg && n < S_ARGS_MAX - 1; arg = va_arg (args, const char *))
        argv[n++] = (char *) arg;
    va_end (args);
    argv[n] = NULL;
    char *errors = NULL;
    int rc = ccm_proc_run2 (argv, NULL, out, &errors, S_TMUX_MS);
    free (errors);
    return rc;
}

//  A tmux session name for a project: '.' and ':' are target separators.
static void
s_session_name (const char *project, char *out, size_t len)
{
    snprintf (out, len, "%s", project);
    for (char *p = out; *p; p++)
        if (*p == '.' || *p == ':')
            *p = '_';
}

//  Quotes text for the one shell command tmux needs (pipe-pane): only paths
//  ccm made itself pass here, and they are single-quoted all the same.
static char *
s_shell_quote (const char *text)
{
    size_t len = 2;
    for (const char *p = text; *p; p++)
        len += *p == '\'' ? 4 : 1;
    char *out = malloc (len + 1), *w = out;
    if (!out)
        return NULL;
    *w++ = '\'';
    for (const char *p = text; *p; p++) {
        if (*p == '\'') {
            memcpy (w, "'\\''", 4);
            w += 4;
        }
        else
            *w++ = *p;
    }
    *w++ = '\'';
    *w = 0;
    return out;
}

int
exec_tmux_spawn (exec_t *self, exec_agent_t *agent, char **argv, char **error)
{
    *error = NULL;
    char session[128], target[140];
    s_session_name (agent->project, session, sizeof session);
    snprintf (target, sizeof target, "=%s:", session);
    bool exists = exec_tmux (self, NULL, "has-session", "-t", target, NULL) == 0;

    char *quoted = s_shell_quote (agent->log_path);
    char *pipe = NULL;
    if (!quoted || asprintf (&pipe, "cat >> %s", quoted) < 0) {
        free (quoted);
        return -1;
    }
    free (quoted);
    char env_task[64], env_agent[64], env_system[64], env_home[4200], env_attempt[32];
    snprintf (env_attempt, sizeof env_attempt, "CCM_ATTEMPT=%d", agent->attempt);
    snprintf (env_task, sizeof env_task, "CCM_TASK_ID=%s", agent->task_id);
    snprintf (env_agent, sizeof env_agent, "CCM_AGENT_ID=%s", agent->agent_id);
    snprintf (env_system, sizeof env_system, "CCM_SYSTEM_ID=%s", self->system_id);
    snprintf (env_home, sizeof env_home, "CCM_HOME=%s", ccm_config_home (self->config));
    char *env_worktree = NULL;
    if (asprintf (&env_worktree, "CCM_WORKTREE=%s", agent->worktree) < 0)
        env_worktree = NULL;
    //  The agent's exit status goes to a file of its own: tmux marks a pane
    //  dead when its pty closes and may never report the status of a
    //  process gone within milliseconds (see exec_exit_status).
    char *env_exit = NULL;
    if (asprintf (&env_exit, "CCM_EXIT_FILE=%s.exit", agent->log_path) < 0)
        env_exit = NULL;
    if (env_exit)
        unlink (strchr (env_exit, '=') + 1);
    //  A review writes its report (JSON) to a file of its own.
    char *env_report = NULL, env_review[64] = "";
    if (agent->review_of) {
        if (asprintf (&env_report, "CCM_REPORT_FILE=%s.report", agent->log_path) < 0)
            env_report = NULL;
        else
            unlink (strchr (env_report, '=') + 1);
        snprintf (env_review, sizeof env_review, "CCM_REVIEW_TASK_ID=%s", agent->review_of);
    }

    //  tmux [new-session -d -s S | new-window -t =S:] -n SHORT -c WT -P -F ID
    //       -- env -u CLAUDECODE CCM_...=... AGENT ARGV...
    //       ; set -g remain-on-exit on ; set -w @ccm_task ID ; pipe-pane -o 'cat >> LOG'
    //  The chained commands run before tmux reads any output of the new pane,
    //  so no byte escapes the log and no exit status is lost.
    const char *args[S_ARGS_MAX];
    int n = 0;
    args[n++] = "tmux";
    args[n++] = "-S";
    args[n++] = ccm_config_str (self->config, "executor.tmux_socket");
    if (!exists) {
        args[n++] = "-f";
        args[n++] = "/dev/null";
        args[n++] = "new-session";
        args[n++] = "-d";
        args[n++] = "-s";
        args[n++] = session;
        args[n++] = "-x";
        args[n++] = "200";
        args[n++] = "-y";
        args[n++] = "50";
    }
    else {
        args[n++] = "new-window";
        args[n++] = "-t";
        args[n++] = target;
    }
    const char *head[] = {"-n",           agent->short_id,
                          "-c",           agent->worktree,
                          "-P",           "-F",
                          "#{window_id}", "--",
                          "env",          "-u",
                          "CLAUDECODE",   env_task,
                          env_agent,      env_system,
                          env_home,       env_worktree ? env_worktree : "CCM_WORKTREE="};
    for (size_t i = 0; i < sizeof head / sizeof head[0]; i++)
        args[n++] = head[i];
    int pairs_start = n;
    exec_profile_t profile;
    if (exec_profile_find (self, agent->profile, &profile) == 0 && profile.env) {
        cJSON *item;
        cJSON_ArrayForEach (item, profile.env) if (cJSON_IsString (item) && n < S_ARGS_MAX - 40)
        {
            char *pair = NULL;
            if (asprintf (&pair, "%s=%s", item->string, item->valuestring) >= 0)
                args[n++] = pair;  //  freed below
        }
    }
    int pairs_end = n;
    if (env_report) {
        args[n++] = env_report;
        args[n++] = env_review;
    }
    //  ccm-agent waits for the agent, writes its status and enforces its
    //  lease; the agent's argv reaches it word for word, never a shell.
    args[n++] = env_attempt;
    args[n++] = self->agent_bin;
    args[n++] = env_exit ? strchr (env_exit, '=') + 1 : "/dev/null";
    args[n++] = agent->lease_path ? agent->lease_path : "-";
    args[n++] = "--";
    //  The window carries its task and agent ids, so that a restarted
    //  executor finds both again.
    const char *tail[] = {";",
                          "set-option",
                          "-g",
                          "remain-on-exit",
                          "on",
                          ";",
                          "set-option",
                          "-w",
                          "@ccm_task",
                          agent->task_id,
                          ";",
                          "set-option",
                          "-w",
                          "@ccm_agent",
                          agent->agent_id,
                          ";",
                          "pipe-pane",
                          "-o",
                          pipe};
    size_t ntail = sizeof tail / sizeof tail[0];
    for (int i = 0; argv[i] && n < S_ARGS_MAX - (int) ntail - 1; i++)
        args[n++] = argv[i];
    for (size_t i = 0; i < ntail; i++)
        args[n++] = tail[i];
    args[n] = NULL;

    char *out = NULL, *errors = NULL;
    int rc = ccm_proc_run2 ((char *const *) args, NULL, &out, &errors, S_TMUX_MS);
    for (int i = pairs_start; i < pairs_end; i++)
        free ((char *) args[i]);
    free (pipe);
    free (env_worktree);
    free (env_exit);
    free (env_report);
    ccm_proc_chomp (out);
    if (rc != 0 || !out || out[0] != '@') {
        if (asprintf (error, "tmux could not start the agent: %s",
                      errors && *errors ? ccm_proc_chomp (errors) : "no window id")
            < 0)
            *error = NULL;
        free (out);
        free (errors);
        return -1;
    }
    snprintf (agent->window, sizeof agent->window, "%s", out);
    free (out);
    free (errors);
    return 0;
}

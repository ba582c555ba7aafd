/*  cli_agents: working with agents and their worktrees on this machine.

    ccm worktree list | merge ID | discard ID [--force] | prune
    ccm logs ID [--follow]     ccm attach ID     ccm send ID TEXT [--wait S]

    Git and tmux run from an argv array (ccm_proc), never through a shell.
    Work is never lost: a branch with commits not in its base survives
    discard and prune unless --force is given.                            */

#include "cli.h"

#include "ccm_proc.h"

#include <czmq.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define S_GIT_MS 120000

//  Resolves a task id or prefix to the task object (caller owns reply).
static cJSON *
s_task (cli_t *cli, const char *ref, cJSON **reply_p)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", ref);
    int rc = cli_call (cli, "task.get", body, reply_p);
    cJSON_Delete (body);
    return rc ? NULL : cJSON_GetObjectItemCaseSensitive (*reply_p, "task");
}

//  The worktree row of a task (caller owns reply), or NULL with a message.
static cJSON *
s_worktree (cli_t *cli, const char *task_id, cJSON **reply_p)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", task_id);
    int rc = cli_call (cli, "worktree.list", body, reply_p);
    cJSON_Delete (body);
    if (rc)
        return NULL;
    cJSON *row = cJSON_GetArrayItem (cJSON_GetObjectItemCaseSensitive (*reply_p, "worktrees"), 0);
    if (!row)
        cli_fail ("task %s has no worktree", task_id);
    return row;
}

static int
s_git (const char *dir, char **out, char *const args[])
{
    char *argv[24] = {"git", "-C", (char *) dir};
    int n = 3;
    for (int i = 0; args[i] && n < 23; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    return ccm_proc_run (argv, NULL, out, S_GIT_MS);
}

//  The main repository of a worktree (its git common dir's parent); caller frees.
static char *
s_repo_of (const char *worktree)
{
    char *out = NULL;
    if (s_git (worktree, &out,
               (char *[]){"rev-parse", "--path-format=absolute", "--git-common-dir", NULL}))
        return (free (out), NULL);
    ccm_proc_chomp (out);
    char *slash = strrchr (out, '/');
    if (slash && strcmp (slash, "/.git") == 0)
        *slash = 0;
    return out;
}

//  Commits on branch that base lacks, or -1.
static long
s_unmerged (const char *repo, const char *base, const char *branch)
{
    char range[512], *out = NULL;
    snprintf (range, sizeof range, "%s..%s", base, branch);
    long count =
        s_git (repo, &out, (char *[]){"rev-list", "--count", range, NULL}) == 0 ? atol (out) : -1;
    free (out);
    return count;
}

//  True if the worktree has uncommitted changes (tracked or untracked).
static bool
s_dirty (const char *worktree)
{
    char *out = NULL;
    int rc = s_git (worktree, &out, (char *[]){"status", "--porcelain", NULL});
    bool dirty = rc != 0 || (out && *ccm_proc_chomp (out));
    free (out);
    return dirty;
}

//  Bytes under path (du -sb), 0 if unknown.
static long long
s_disk (const char *path)
{
    char *out = NULL;
    long long bytes = 0;
    if (ccm_proc_run ((char *[]){"du", "-sb", (char *) path, NULL}, NULL, &out, 60000) == 0)
        bytes = atoll (out);
    free (out);
    return bytes;
}

static int
s_set_status (cli_t *cli, cJSON *row, const char *status, bool removed)
{
    cJSON *body = cJSON_CreateObject ();
    const char *keys[] = {"task_id", "project_id", "worktree_path", "branch_name", "base_branch"};
    for (int i = 0; i < 5; i++)
        if (*cli_str (row, keys[i]))
            cJSON_AddStringToObject (body, keys[i], cli_str (row, keys[i]));
    cJSON_AddStringToObject (body, "status", status);
    cJSON_AddBoolToObject (body, "removed", removed);
    ccm_client_add_idem (body);
    cJSON *reply;
    int rc = cli_call (cli, "worktree.upsert", body, &reply);
    cJSON_Delete (body);
    cJSON_Delete (reply);
    return rc;
}

//  Removes a worktree and its branch; force also drops unmerged work.
static int
s_remove (const char *repo, cJSON *row, bool force)
{
    char *out = NULL;
    const char *path = cli_str (row, "worktree_path");
    int rc = access (path, F_OK) == 0
                 ? s_git (repo, &out,
                          force ? (char *[]){"worktree", "remove", "--force", (char *) path, NULL}
                                : (char *[]){"worktree", "remove", (char *) path, NULL})
                 : 0;
    if (rc) {
        cli_fail ("git worktree remove %s: %s", path, ccm_proc_chomp (out));
        free (out);
        return 1;
    }
    free (out);
    out = NULL;
    s_git (repo, &out, (char *[]){"worktree", "prune", NULL});
    free (out);
    out = NULL;
    rc = s_git (
        repo, &out,
        (char *[]){"branch", force ? "-D" : "-d", (char *) cli_str (row, "branch_name"), NULL});
    free (out);
    return rc ? 1 : 0;
}

static int
s_list (cli_t *cli, int argc, char **argv)
{
    cJSON *body = cJSON_CreateObject ();
    if (argc == 2 && strcmp (argv[0], "--status") == 0)
        cJSON_AddStringToObject (body, "status", argv[1]);
    else if (argc) {
        cJSON_Delete (body);
        return cli_usage ("usage: ccm worktree list [--status S]");
    }
    cJSON *reply;
    int rc = cli_call (cli, "worktree.list", body, &reply);
    cJSON_Delete (body);
    if (rc)
        return rc;
    cJSON *rows = cJSON_GetObjectItemCaseSensitive (reply, "worktrees");
    if (cli->json)
        cli_print_json (rows);
    else {
        printf ("%-8s  %-9s  %-9s  %-16s  %-14s  %s\n", "TASK", "STATUS", "TASK", "PROJECT",
                "BRANCH", "PATH");
        cJSON *row;
        cJSON_ArrayForEach (row, rows)
        {
            printf ("%-8s  %-9s  %-9s  ", cli_str (row, "short_id"), cli_str (row, "status"),
                    cli_str (row, "task_status"));
            cli_print_cell (cli_str (row, "project"), 16);
            printf ("  %-14s  %s\n", cli_str (row, "branch_name"), cli_str (row, "worktree_path"));
        }
    }
    cJSON_Delete (reply);
    return 0;
}

//  A worktree is merged or discarded only once its task has ended (no agent
//  works in it any more) and while it is still active. Says why not.
static bool
s_may_close (cJSON *task, cJSON *row)
{
    const char *status = cli_str (task, "status");
    if (strcmp (status, "complete") && strcmp (status, "failed") && strcmp (status, "cancelled")) {
        cli_fail ("task %s is %s: its agent may still work in the worktree; nothing done (cancel"
                  " it first: ccm task cancel %s)",
                  cli_str (task, "short_id"), status, cli_str (task, "short_id"));
        return false;
    }
    if (strcmp (cli_str (row, "status"), "active")) {
        cli_fail ("the worktree of task %s is %s already", cli_str (task, "short_id"),
                  cli_str (row, "status"));
        return false;
    }
    return true;
}

static int
s_merge (cli_t *cli, const char *ref)
{
    cJSON *task_reply = NULL, *wt_reply = NULL;
    cJSON *task = s_task (cli, ref, &task_reply);
    cJSON *row = task ? s_worktree (cli, cli_str (task, "id"), &wt_reply) : NULL;
    if (row && !s_may_close (task, row))
        row = NULL;
    int rc = 1;
    char *repo = row ? s_repo_of (cli_str (row, "worktree_path")) : NULL;
    if (row && !repo)
        cli_fail ("%s is not a git worktree any more", cli_str (row, "worktree_path"));
    if (repo) {
        const char *path = cli_str (row, "worktree_path");
        const char *base = cli_str (row, "base_branch");
        char *head = NULL;
        s_git (repo, &head, (char *[]){"symbolic-ref", "--short", "-q", "HEAD", NULL});
        ccm_proc_chomp (head);
        char message[128];
        snprintf (message, sizeof message, "ccm: work of task %s", cli_str (row, "short_id"));
        char *out = NULL;
        if (strcmp (head ? head : "", base) != 0)
            cli_fail ("the project checkout %s is on '%s', not on the base branch '%s'", repo,
                      head ? head : "?", base);
        else if (s_dirty (path)
                 && (s_git (path, &out, (char *[]){"add", "-A", NULL})
                     || s_git (path, &out,
                               (char *[]){"-c", "user.name=ccm", "-c", "user.email=ccm@localhost",
                                          "commit", "-q", "-m", message, NULL})))
            cli_fail ("cannot commit the worktree's changes: %s", ccm_proc_chomp (out));
        else {
            free (out);
            out = NULL;
            if (s_git (repo, &out,
                       (char *[]){"-c", "user.name=ccm", "-c", "user.email=ccm@localhost", "merge",
                                  "--no-ff", "--no-edit", (char *) cli_str (row, "branch_name"),
                                  NULL}))
                cli_fail ("merge failed (nothing removed): %s", ccm_proc_chomp (out));
            else if (s_remove (repo, row, false) == 0
                     && s_set_status (cli, row, "merged", true) == 0) {
                printf ("merged %s into %s and removed its worktree\n",
                        cli_str (row, "branch_name"), base);
                rc = 0;
            }
        }
        free (out);
        free (head);
    }
    free (repo);
    cJSON_Delete (task_reply);
    cJSON_Delete (wt_reply);
    return rc;
}

static int
s_discard (cli_t *cli, const char *ref, bool force)
{
    cJSON *task_reply = NULL, *wt_reply = NULL;
    cJSON *task = s_task (cli, ref, &task_reply);
    cJSON *row = task ? s_worktree (cli, cli_str (task, "id"), &wt_reply) : NULL;
    if (row && !s_may_close (task, row))
        row = NULL;
    int rc = 1;
    char *repo = row ? s_repo_of (cli_str (row, "worktree_path")) : NULL;
    if (row && !repo)
        cli_fail ("%s is not a git worktree any more", cli_str (row, "worktree_path"));
    if (repo) {
        long unmerged =
            s_unmerged (repo, cli_str (row, "base_branch"), cli_str (row, "branch_name"));
        bool dirty = s_dirty (cli_str (row, "worktree_path"));
        if (!force && (unmerged != 0 || dirty))
            cli_fail ("branch %s has %ld unmerged commit(s)%s; nothing removed (--force deletes "
                      "them)",
                      cli_str (row, "branch_name"), unmerged < 0 ? 0 : unmerged,
                      dirty ? " and uncommitted changes" : "");
        else if (s_remove (repo, row, force) == 0
                 && s_set_status (cli, row, "discarded", true) == 0) {
            printf ("discarded %s\n", cli_str (row, "worktree_path"));
            rc = 0;
        }
    }
    free (repo);
    cJSON_Delete (task_reply);
    cJSON_Delete (wt_reply);
    return rc;
}

static int
s_prune (cli_t *cli)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "status", "active");
    cJSON *reply;
    int rc = cli_call (cli, "worktree.list", body, &reply);
    cJSON_Delete (body);
    if (rc)
        return rc;
    long long freed = 0;
    int removed = 0, kept = 0;
    cJSON *row;
    cJSON_ArrayForEach (row, cJSON_GetObjectItemCaseSensitive (reply, "worktrees"))
    {
        const char *status = cli_str (row, "task_status");
        const char *path = cli_str (row, "worktree_path");
        if (access (path, F_OK) != 0) {
            s_set_status (cli, row, "stale", true);  //  gone from disk already
            continue;
        }
        if (strcmp (status, "complete") && strcmp (status, "failed")
            && strcmp (status, "cancelled"))
            continue;  //  its agent may still be working
        char *repo = s_repo_of (path);
        long unmerged =
            repo ? s_unmerged (repo, cli_str (row, "base_branch"), cli_str (row, "branch_name"))
                 : -1;
        if (!repo || unmerged != 0 || s_dirty (path)) {
            printf ("kept %s: %s\n", path,
                    unmerged > 0 ? "unmerged commits"
                    : repo       ? "uncommitted changes"
                                 : "not a worktree");
            kept++;
        }
        else {
            long long bytes = s_disk (path);
            if (s_remove (repo, row, false) == 0
                && s_set_status (cli, row, "discarded", true) == 0) {
                freed += bytes;
                removed++;
            }
        }
        free (repo);
    }
    cJSON_Delete (reply);
    printf ("pruned %d worktree(s), kept %d, freed %lld bytes (%.1f MiB)\n", removed, kept, freed,
            (double) freed / 1048576.0);
    return 0;
}

int
cli_cmd_worktree (cli_t *cli, int argc, char **argv)
{
    const char *sub = argc >= 1 ? argv[0] : "";
    if (strcmp (sub, "list") == 0)
        return s_list (cli, argc - 1, argv + 1);
    if (strcmp (sub, "merge") == 0 && argc == 2)
        return s_merge (cli, argv[1]);
    if (strcmp (sub, "discard") == 0 && (argc == 2 || argc == 3)) {
        bool force = argc == 3 && strcmp (argv[2], "--force") == 0;
        if (argc == 3 && !force)
            return cli_usage ("discard: unknown argument '%s'", argv[2]);
        return s_discard (cli, argv[1], force);
    }
    if (strcmp (sub, "prune") == 0 && argc == 1)
        return s_prune (cli);
    return cli_usage ("usage: ccm worktree list | merge ID | discard ID [--force] | prune");
}

//  The tmux window of a running task, from the @ccm_task option; "" if none.
static void
s_window (cli_t *cli, const char *task_id, char *out, size_t len)
{
    char *panes = NULL;
    out[0] = 0;
    ccm_proc_run ((char *[]){"tmux", "-S",
                             (char *) ccm_config_str (cli->config, "executor.tmux_socket"),
                             "list-panes", "-a", "-F", "#{window_id} #{@ccm_task}", NULL},
                  NULL, &panes, 10000);
    for (char *line = panes ? strtok (panes, "\n") : NULL; line; line = strtok (NULL, "\n")) {
        char wid[32], tid[64];
        if (sscanf (line, "%31s %63s", wid, tid) == 2 && strcmp (tid, task_id) == 0)
            snprintf (out, len, "%s", wid);
    }
    free (panes);
}

int
cli_cmd_logs (cli_t *cli, int argc, char **argv)
{
    bool follow = argc == 2 && (strcmp (argv[1], "--follow") == 0 || strcmp (argv[1], "-f") == 0);
    if (argc < 1 || (argc == 2 && !follow) || argc > 2)
        return cli_usage ("usage: ccm logs ID [--follow]");
    cJSON *reply = NULL;
    cJSON *task = s_task (cli, argv[0], &reply);
    if (!task)
        return 1;
    char path[PATH_MAX];
    snprintf (path, sizeof path, "%s/%s.log", ccm_config_str (cli->config, "executor.logs"),
              cli_str (task, "id"));
    char id[64];
    snprintf (id, sizeof id, "%s", cli_str (task, "id"));
    cJSON_Delete (reply);
    FILE *file = fopen (path, "rb");
    if (!file)
        return cli_fail ("no output yet for task %s (%s)", id, path);
    char chunk[65536];
    while (true) {
        size_t n;
        while ((n = fread (chunk, 1, sizeof chunk, file)) > 0)
            fwrite (chunk, 1, n, stdout);
        fflush (stdout);
        if (!follow || zsys_interrupted)
            break;
        //  Follow until the task ends, then print what is left.
        task = s_task (cli, id, &reply);
        const char *status = task ? cli_str (task, "status") : "failed";
        bool done = strcmp (status, "executing") && strcmp (status, "assigned")
                    && strcmp (status, "queued") && strcmp (status, "created");
        cJSON_Delete (reply);
        if (done) {
            clearerr (file);
            while ((n = fread (chunk, 1, sizeof chunk, file)) > 0)
                fwrite (chunk, 1, n, stdout);
            break;
        }
        clearerr (file);
        usleep (200000);
    }
    fclose (file);
    return 0;
}

int
cli_cmd_attach (cli_t *cli, int argc, char **argv)
{
    if (argc != 1)
        return cli_usage ("usage: ccm attach ID");
    cJSON *reply = NULL;
    cJSON *task = s_task (cli, argv[0], &reply);
    if (!task)
        return 1;
    char window[32];
    s_window (cli, cli_str (task, "id"), window, sizeof window);
    cJSON_Delete (reply);
    if (!window[0])
        return cli_fail ("task %s has no running agent window", argv[0]);
    const char *sock = ccm_config_str (cli->config, "executor.tmux_socket");
    execlp ("tmux", "tmux", "-S", sock, "attach-session", "-t", window, ";", "select-window", "-t",
            window, (char *) NULL);
    return cli_fail ("cannot run tmux: %s", strerror (errno));
}

//  Text longer than this is recorded by its size only.
#define S_SEND_RECORD_MAX (32 * 1024)

//  True when the agent of the task has sent hook events: only then can a
//  UserPromptSubmit confirm what ccm send typed.
static bool
s_hooks_seen (cli_t *cli, const char *task_id)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", task_id);
    cJSON_AddNumberToObject (body, "limit", 1);
    cJSON *reply = NULL;
    bool seen = cli_call (cli, "hook.list", body, &reply) == 0
                && cJSON_GetArraySize (cJSON_GetObjectItem (reply, "hooks")) > 0;
    cJSON_Delete (body);
    cJSON_Delete (reply);
    return seen;
}

//  The newest seq of the event log, or -1.
static int64_t
s_head (cli_t *cli)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddNumberToObject (body, "seq", 0);
    cJSON_AddNumberToObject (body, "limit", 1);
    cJSON *reply = NULL;
    int64_t head = -1;
    if (cli_call (cli, "events.since", body, &reply) == 0)
        head = (int64_t) cJSON_GetNumberValue (cJSON_GetObjectItem (reply, "last_seq"));
    cJSON_Delete (body);
    cJSON_Delete (reply);
    return head;
}

//  Whether one of the hook rows first_id.. of the task is a UserPromptSubmit
//  (returns 1, and 2 if its prompt is the text sent), else 0.
static int
s_prompt_in (cli_t *cli, const char *task_id, int64_t first_id, const char *text)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", task_id);
    cJSON_AddNumberToObject (body, "after_id", (double) (first_id - 1));
    cJSON_AddNumberToObject (body, "limit", 100);
    cJSON *reply = NULL;
    int found = 0;
    if (cli_call (cli, "hook.list", body, &reply) == 0) {
        cJSON *hook;
        cJSON_ArrayForEach (hook, cJSON_GetObjectItem (reply, "hooks"))
        {
            if (strcmp (cli_str (hook, "hook_type"), "UserPromptSubmit") != 0)
                continue;
            const char *prompt = cJSON_GetStringValue (
                cJSON_GetObjectItem (cJSON_GetObjectItem (hook, "event_data"), "prompt"));
            found = prompt && strcmp (prompt, text) == 0 ? 2 : found > 1 ? found : 1;
        }
    }
    cJSON_Delete (body);
    cJSON_Delete (reply);
    return found;
}

//  Waits up to wait_ms for the task's agent to report a UserPromptSubmit
//  after event *after (moved on as events are read). Returns as
//  s_prompt_in: 0 none, 1 a prompt, 2 the text sent.
static int
s_wait_prompt (cli_t *cli, const char *task_id, int64_t *after, int wait_ms, const char *text)
{
    int64_t deadline = zclock_mono () + wait_ms;
    int found = 0;
    while (!found && zclock_mono () < deadline) {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddNumberToObject (body, "seq", (double) *after);
        cJSON_AddStringToObject (body, "task", task_id);
        cJSON_AddStringToObject (body, "topic", "hook.added");
        cJSON *reply = NULL;
        if (cli_call (cli, "events.since", body, &reply) == 0) {
            cJSON *event;
            cJSON_ArrayForEach (event, cJSON_GetObjectItem (reply, "events"))
            {
                *after = (int64_t) cJSON_GetNumberValue (cJSON_GetObjectItem (event, "seq"));
                cJSON *data = cJSON_GetObjectItem (event, "data");
                if (!found
                    && cJSON_GetObjectItem (cJSON_GetObjectItem (data, "types"),
                                            "UserPromptSubmit")) {
                    int64_t first =
                        (int64_t) cJSON_GetNumberValue (cJSON_GetObjectItem (data, "first_id"));
                    found = s_prompt_in (cli, task_id, first, text);
                    if (!found)
                        found = 1;  //  beyond the rows looked at
                }
            }
        }
        cJSON_Delete (body);
        cJSON_Delete (reply);
        if (!found)
            zclock_sleep (100);
    }
    return found;
}

//  Types keys into the window (tmux send-keys). 0 or -1.
static int
s_keys (const char *sock, const char *window, const char *keys)
{
    return ccm_proc_run ((char *[]){"tmux", "-S", (char *) sock, "send-keys", "-t", (char *) window,
                                    (char *) keys, NULL},
                         NULL, NULL, 10000);
}

//  Pastes text into the window as one bracketed paste (-p), so that a TUI
//  takes its newlines as text, through a file and a tmux buffer. 0 or -1.
static int
s_paste (const char *sock, const char *window, const char *buffer, const char *text)
{
    char path[] = "/tmp/ccm-send-XXXXXX";
    int fd = mkstemp (path);
    if (fd < 0)
        return -1;
    size_t len = strlen (text);
    bool written = write (fd, text, len) == (ssize_t) len;
    close (fd);
    int rc = written ? ccm_proc_run ((char *[]){"tmux", "-S", (char *) sock, "load-buffer", "-b",
                                                (char *) buffer, path, NULL},
                                     NULL, NULL, 10000)
                     : -1;
    unlink (path);
    if (rc == 0)
        rc = ccm_proc_run ((char *[]){"tmux", "-S", (char *) sock, "paste-buffer", "-p", "-d", "-b",
                                      (char *) buffer, "-t", (char *) window, NULL},
                           NULL, NULL, 10000);
    return rc ? -1 : 0;
}

//  Records a delivery step of ccm send as a task.progress note. 0 or -1.
static int
s_record_delivery (cli_t *cli, const char *task_id, const char *window, const char *text,
                   const char *delivery, int attempts, const char *detail)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", task_id);
    cJSON *data = cJSON_AddObjectToObject (body, "data");
    cJSON_AddStringToObject (data, "kind", "input");
    cJSON_AddStringToObject (data, "delivery", delivery);
    cJSON_AddStringToObject (data, "via", "ccm send");
    cJSON_AddStringToObject (data, "window", window);
    size_t len = strlen (text);
    cJSON_AddNumberToObject (data, "bytes", (double) len);
    if (attempts)
        cJSON_AddNumberToObject (data, "attempts", attempts);
    if (detail)
        cJSON_AddStringToObject (data, "detail", detail);
    if (len <= S_SEND_RECORD_MAX)
        cJSON_AddStringToObject (data, "text", text);
    else
        cJSON_AddBoolToObject (data, "text_omitted", true);
    ccm_client_add_idem (body);
    cJSON *recorded = NULL;
    int rc = cli_call (cli, "task.progress", body, &recorded);
    cJSON_Delete (body);
    cJSON_Delete (recorded);
    return rc ? -1 : 0;
}

int
cli_cmd_send (cli_t *cli, int argc, char **argv)
{
    int wait_ms = 5000;
    const char *args[2];
    int nargs = 0;
    for (int i = 0; i < argc; i++) {
        if (strcmp (argv[i], "--wait") == 0 && i + 1 < argc) {
            char *end = NULL;
            double seconds = strtod (argv[++i], &end);
            if (!end || *end || seconds < 0 || seconds > 3600)
                return cli_usage ("ccm send: --wait takes seconds, 0 to 3600");
            wait_ms = (int) (seconds * 1000);
        }
        else if (nargs < 2)
            args[nargs++] = argv[i];
        else
            nargs = 3;
    }
    if (nargs != 2)
        return cli_usage ("usage: ccm send ID TEXT [--wait SECONDS]");
    const char *text = args[1];
    cJSON *reply = NULL;
    cJSON *task = s_task (cli, args[0], &reply);
    if (!task)
        return 1;
    char window[32], buffer[64], task_id[64];
    snprintf (task_id, sizeof task_id, "%s", cli_str (task, "id"));
    s_window (cli, task_id, window, sizeof window);
    snprintf (buffer, sizeof buffer, "ccm-%.8s", task_id);
    cJSON_Delete (reply);
    if (!window[0])
        return cli_fail ("task %s has no running agent window", args[0]);
    const char *sock = ccm_config_str (cli->config, "executor.tmux_socket");

    //  An agent that sends hooks confirms the text with a UserPromptSubmit;
    //  events from before the paste do not count.
    bool confirmable = wait_ms > 0 && s_hooks_seen (cli, task_id);
    int64_t after = confirmable ? s_head (cli) : -1;
    if (s_paste (sock, window, buffer, text) != 0)
        return cli_fail ("tmux could not paste the text into window %s", window);
    usleep (100000);  //  let the TUI take the paste before the Enter
    if (s_keys (sock, window, "Enter") != 0)
        return cli_fail ("tmux could not press Enter in window %s", window);
    if (s_record_delivery (cli, task_id, window, text, "sent", 1, NULL))
        return cli_fail ("the text was sent to window %s, but not recorded", window);
    if (!confirmable || after < 0) {
        printf ("sent to %s (not confirmed: %s)\n", window,
                wait_ms == 0 ? "--wait 0" : "this agent has sent no hook events");
        return 0;
    }

    //  The classic failure is an Enter the TUI missed, the text left typed
    //  but unsubmitted: one more Enter submits it (on an empty prompt it
    //  does nothing).
    int attempts = 1;
    int found = s_wait_prompt (cli, task_id, &after, wait_ms, text);
    if (!found) {
        attempts++;
        if (s_keys (sock, window, "Enter") == 0)
            found = s_wait_prompt (cli, task_id, &after, wait_ms, text);
    }
    const char *detail = found == 2   ? "UserPromptSubmit with this text"
                         : found == 1 ? "UserPromptSubmit (its prompt differs from the text)"
                                      : "no UserPromptSubmit";
    if (s_record_delivery (cli, task_id, window, text, found ? "confirmed" : "unconfirmed",
                           attempts, detail))
        return cli_fail ("the delivery to window %s was not recorded", window);
    if (!found)
        return cli_fail ("the agent in window %s did not confirm the text: no UserPromptSubmit "
                         "within %.1f s, after %d Enter presses; it may be busy or stuck",
                         window, wait_ms / 1000.0, attempts);
    printf ("sent to %s, confirmed by the agent's UserPromptSubmit%s\n", window,
            attempts > 1 ? " after a second Enter" : "");
    return 0;
}

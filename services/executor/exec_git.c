/*  exec_git: one git worktree per task, on branch ccm/<short-id>, under
    executor.worktrees/<project>/<short-id>. Worktrees are never removed
    here: the user merges, discards or prunes them (`ccm worktree`).       */

#include "exec_internal.h"

#include "ccm_proc.h"

#include <errno.h>
#include <glob.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_GIT_MS 60000

//  Runs git in dir; *out gets stdout and stderr, or only stdout if parsed
//  is true (for output that is parsed).
static int
s_git_run (const char *dir, char **out, char *const args[], bool parsed)
{
    char *argv[24] = {"git", "-C", (char *) dir};
    int n = 3;
    for (int i = 0; args[i] && n < 23; i++)
        argv[n++] = args[i];
    argv[n] = NULL;
    char *errors = NULL;
    int rc = ccm_proc_run2 (argv, NULL, out, parsed ? &errors : NULL, S_GIT_MS);
    free (errors);
    return rc;
}

static int
s_git (const char *dir, char **out, char *const args[])
{
    return s_git_run (dir, out, args, false);
}

static int
s_git_stdout (const char *dir, char **out, char *const args[])
{
    return s_git_run (dir, out, args, true);
}

static int
s_mkdirs (const char *path)
{
    char copy[PATH_MAX];
    snprintf (copy, sizeof copy, "%s", path);
    for (char *p = copy + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir (copy, 0700) && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir (copy, 0700) && errno != EEXIST ? -1 : 0;
}

//  Copies file from to to, keeping its mode.
static int
s_copy (const char *from, const char *to)
{
    FILE *in = fopen (from, "rb");
    if (!in)
        return -1;
    struct stat st;
    fstat (fileno (in), &st);
    FILE *out = fopen (to, "wb");
    int rc = out ? 0 : -1;
    char chunk[16384];
    size_t n;
    while (out && (n = fread (chunk, 1, sizeof chunk, in)) > 0)
        if (fwrite (chunk, 1, n, out) != n)
            rc = -1;
    if (out) {
        fchmod (fileno (out), st.st_mode & 07777);
        fclose (out);
    }
    fclose (in);
    return rc;
}

//  Copies the files named in repo/.worktreeinclude (one path or glob per
//  line, # for comments) into the new worktree: files such as .env that a
//  fresh checkout lacks. As in Claude Code, only git-ignored files are
//  copied, so a copy never shows up as the agent's change or gets committed.
static void
s_include (const char *repo, const char *worktree)
{
    char list[PATH_MAX];
    snprintf (list, sizeof list, "%s/.worktreeinclude", repo);
    FILE *file = fopen (list, "r");
    if (!file)
        return;
    char line[PATH_MAX];
    while (fgets (line, sizeof line, file)) {
        ccm_proc_chomp (line);
        char *pattern = line + strspn (line, " \t");
        if (!*pattern || *pattern == '#' || strstr (pattern, ".."))
            continue;  //  ".." could reach outside the repository
        char full[PATH_MAX * 2];
        snprintf (full, sizeof full, "%s/%s", repo, pattern);
        glob_t found;
        if (glob (full, GLOB_NOSORT, NULL, &found) == 0) {
            for (size_t i = 0; i < found.gl_pathc; i++) {
                const char *rel = found.gl_pathv[i] + strlen (repo) + 1;
                char *out = NULL;
                int ignored =
                    s_git (repo, &out, (char *[]){"check-ignore", "-q", (char *) rel, NULL});
                free (out);
                if (ignored != 0)
                    continue;
                char target[PATH_MAX * 2];
                snprintf (target, sizeof target, "%s/%s", worktree, rel);
                char *slash = strrchr (target, '/');
                *slash = 0;
                s_mkdirs (target);
                *slash = '/';
                s_copy (found.gl_pathv[i], target);
            }
            globfree (&found);
        }
    }
    fclose (file);
}

int
exec_git_worktree (exec_t *self, const char *project, const char *repo, const char *short_id,
                   char **path, char **base, char **error)
{
    *path = *base = *error = NULL;
    char *top = NULL;
    if (s_git (repo, &top, (char *[]){"rev-parse", "--show-toplevel", NULL}) != 0) {
        if (asprintf (error, "project path %s is not a git repository", repo) < 0)
            *error = NULL;
        free (top);
        return -1;
    }
    free (top);
    char *head = NULL;
    if (s_git (repo, &head, (char *[]){"symbolic-ref", "--short", "-q", "HEAD", NULL}) != 0) {
        free (head);
        head = NULL;
        s_git (repo, &head, (char *[]){"rev-parse", "HEAD", NULL});
    }
    *base = ccm_proc_chomp (head);
    char dir[PATH_MAX], branch[64];
    snprintf (dir, sizeof dir, "%s/%s", ccm_config_str (self->config, "executor.worktrees"),
              project);
    snprintf (branch, sizeof branch, "ccm/%s", short_id);
    if (s_mkdirs (dir)) {
        if (asprintf (error, "cannot create %s: %s", dir, strerror (errno)) < 0)
            *error = NULL;
        return -1;
    }
    if (asprintf (path, "%s/%s", dir, short_id) < 0)
        return -1;
    struct stat st;
    char marker[PATH_MAX + 8];
    snprintf (marker, sizeof marker, "%s/.git", *path);
    if (stat (marker, &st) == 0)
        return 0;  //  already there: a restarted executor or a retried task
    char *out = NULL;
    int rc =
        s_git (repo, &out,
               (char *[]){"worktree", "add", "-b", branch, *path, *base ? *base : "HEAD", NULL});
    if (rc != 0) {
        //  The branch may survive from an earlier attempt: check it out again.
        free (out);
        out = NULL;
        rc = s_git (repo, &out, (char *[]){"worktree", "add", *path, branch, NULL});
    }
    if (rc != 0) {
        if (asprintf (error, "git worktree add failed: %s", ccm_proc_chomp (out)) < 0)
            *error = NULL;
        free (out);
        return -1;
    }
    free (out);
    s_include (repo, *path);
    return 0;
}

//  Adds name to files unless it is there already.
static void
s_add_name (cJSON *files, const char *name)
{
    cJSON *item;
    cJSON_ArrayForEach (item, files) if (strcmp (item->valuestring, name) == 0) return;
    cJSON_AddItemToArray (files, cJSON_CreateString (name));
}

char *
exec_git_branch (const char *repo)
{
    char *out = NULL;
    if (s_git_stdout (repo, &out, (char *[]){"symbolic-ref", "--short", "-q", "HEAD", NULL}) != 0
        || !out || !*ccm_proc_chomp (out)) {
        free (out);
        return NULL;
    }
    return out;
}

int
exec_git_behind (const char *repo)
{
    char *out = NULL;
    int behind = -1;
    if (s_git_stdout (repo, &out, (char *[]){"rev-list", "--count", "HEAD..@{upstream}", NULL}) == 0
        && out && *ccm_proc_chomp (out))
        behind = atoi (out);
    free (out);
    return behind;
}

cJSON *
exec_git_changed (const char *worktree, const char *base)
{
    //  -z everywhere: names come raw (spaces, tabs, unicode), NUL-separated,
    //  never in git's quoted form.
    cJSON *files = cJSON_CreateArray ();
    char *out = NULL;
    //  Committed on the task branch since it left base...
    char range[300];
    snprintf (range, sizeof range, "%s...HEAD", base && *base ? base : "HEAD");
    if (s_git_stdout (worktree, &out, (char *[]){"diff", "--name-only", "-z", range, NULL}) == 0)
        for (char *name = out; name && *name; name += strlen (name) + 1)
            s_add_name (files, name);
    free (out);
    out = NULL;
    //  ...and not committed yet (modified, added, untracked): "XY name\0",
    //  and for a rename or copy "XY new\0old\0".
    if (s_git_stdout (worktree, &out,
                      (char *[]){"status", "--porcelain", "-z", "--untracked-files=all", NULL})
        == 0)
        for (char *entry = out; entry && *entry; entry += strlen (entry) + 1) {
            bool moved = entry[0] == 'R' || entry[0] == 'C';
            if (strlen (entry) > 3)
                s_add_name (files, entry + 3);
            if (moved && entry[strlen (entry) + 1])
                entry += strlen (entry) + 1;
        }
    free (out);
    return files;
}

/*  exec_profile: agent profiles. A profile is {"argv": [...], "env": {...},
    "mode": "interactive"|"headless", "on_idle": "exit"|"stay"}; {prompt},
    {task_id} and {worktree} are replaced inside argv elements, so a prompt
    is always exactly one argv element and never meets a shell (except
    under the `shell` profile, whose whole point is to run the prompt with
    sh -c). "on_idle": "exit" ends an interactive agent (by typing /exit)
    once its hooks report its turn over (Stop), so its exit status decides
    the task; without hooks it stays until someone ends it.                */

#include "exec_internal.h"

#include "ccm_log.h"
#include "ccm_msg.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char s_builtins[] =
    "{"
    "\"claude\": {\"argv\": [\"claude\", \"--dangerously-skip-permissions\", \"{prompt}\"],"
    "  \"mode\": \"interactive\", \"on_idle\": \"exit\"},"
    "\"claude-headless\": {\"argv\": [\"claude\", \"-p\", \"{prompt}\","
    "  \"--dangerously-skip-permissions\", \"--output-format\", \"stream-json\", \"--verbose\"],"
    "  \"mode\": \"headless\"},"
    "\"codex\": {\"argv\": [\"codex\", \"{prompt}\"], \"mode\": \"interactive\"},"
    "\"gemini\": {\"argv\": [\"gemini\", \"--prompt-interactive\", \"{prompt}\"],"
    "  \"mode\": \"interactive\"},"
    "\"aider\": {\"argv\": [\"aider\", \"--message\", \"{prompt}\"], \"mode\": \"headless\"},"
    "\"shell\": {\"argv\": [\"sh\", \"-c\", \"{prompt}\"], \"mode\": \"headless\"}"
    "}";

static cJSON *s_builtin_profiles = NULL;

static int
s_from_json (const char *name, cJSON *json, exec_profile_t *profile)
{
    cJSON *argv = cJSON_GetObjectItemCaseSensitive (json, "argv");
    cJSON *env = cJSON_GetObjectItemCaseSensitive (json, "env");
    cJSON *mode = cJSON_GetObjectItemCaseSensitive (json, "mode");
    if (!cJSON_IsArray (argv) || cJSON_GetArraySize (argv) < 1)
        return -1;
    cJSON *item;
    cJSON_ArrayForEach (item, argv) if (!cJSON_IsString (item)) return -1;
    profile->name = (char *) name;
    profile->argv = argv;
    profile->env = cJSON_IsObject (env) ? env : NULL;
    profile->headless = cJSON_IsString (mode) && strcmp (mode->valuestring, "headless") == 0;
    cJSON *on_idle = cJSON_GetObjectItemCaseSensitive (json, "on_idle");
    profile->exit_on_idle = cJSON_IsString (on_idle) && strcmp (on_idle->valuestring, "exit") == 0;
    return 0;
}

int
exec_profile_find (exec_t *self, const char *name, exec_profile_t *profile)
{
    if (!s_builtin_profiles)
        s_builtin_profiles = cJSON_Parse (s_builtins);
    cJSON *json = self->profiles ? cJSON_GetObjectItemCaseSensitive (self->profiles, name) : NULL;
    if (!json)
        json = cJSON_GetObjectItemCaseSensitive (s_builtin_profiles, name);
    return json ? s_from_json (name, json, profile) : -1;
}

//  Returns text with every {key} replaced; caller frees.
static char *
s_expand (const char *text, const char *prompt, const char *task_id, const char *worktree)
{
    const char *keys[] = {"{prompt}", "{task_id}", "{worktree}"};
    const char *values[] = {prompt, task_id, worktree};
    char *out = NULL;
    size_t size = 0;
    FILE *mem = open_memstream (&out, &size);
    if (!mem)
        return NULL;
    for (const char *p = text; *p;) {
        int hit = -1;
        for (int k = 0; k < 3 && hit < 0; k++)
            if (strncmp (p, keys[k], strlen (keys[k])) == 0)
                hit = k;
        if (hit >= 0) {
            fputs (values[hit], mem);
            p += strlen (keys[hit]);
        }
        else
            fputc (*p++, mem);
    }
    fclose (mem);
    return out;
}

char **
exec_profile_argv (const exec_profile_t *profile, const char *prompt, const char *task_id,
                   const char *worktree)
{
    int n = cJSON_GetArraySize (profile->argv);
    char **argv = calloc ((size_t) n + 1, sizeof *argv);
    if (!argv)
        return NULL;
    int i = 0;
    cJSON *item;
    cJSON_ArrayForEach (item, profile->argv)
    {
        argv[i] = s_expand (item->valuestring, prompt, task_id, worktree);
        if (!argv[i]) {
            exec_argv_free (argv);
            return NULL;
        }
        i++;
    }
    return argv;
}

char **
exec_argv_insert (char **argv, int at, const char *first, const char *second)
{
    int n = 0;
    while (argv[n])
        n++;
    char **grown = realloc (argv, (size_t) (n + 3) * sizeof *argv);
    if (!grown) {
        exec_argv_free (argv);
        return NULL;
    }
    memmove (grown + at + 2, grown + at, (size_t) (n - at + 1) * sizeof *grown);
    grown[at] = strdup (first);
    grown[at + 1] = strdup (second);
    return grown;
}

void
exec_argv_free (char **argv)
{
    for (int i = 0; argv && argv[i]; i++)
        free (argv[i]);
    free (argv);
}

bool
exec_program_exists (const char *argv0)
{
    if (strchr (argv0, '/'))
        return access (argv0, X_OK) == 0;
    const char *path = getenv ("PATH");
    char *copy = strdup (path ? path : "/usr/bin:/bin");
    bool found = false;
    for (char *dir = strtok (copy, ":"); dir && !found; dir = strtok (NULL, ":")) {
        char full[PATH_MAX];
        snprintf (full, sizeof full, "%s/%s", *dir ? dir : ".", argv0);
        found = access (full, X_OK) == 0;
    }
    free (copy);
    return found;
}

int
exec_claude_trust (const char *config_dir, const char *worktree)
{
    char path[PATH_MAX], temp[PATH_MAX + 8];
    snprintf (path, sizeof path, "%s/.claude.json", config_dir);
    snprintf (temp, sizeof temp, "%s.ccm-tmp", path);
    int error_no;
    cJSON *root = ccm_json_read_file (path, &error_no);
    if (!error_no) {
        if (!cJSON_IsObject (root)) {
            //  Never overwrite a file we cannot read: the user's settings are in it.
            ccm_warn ("%s is not a JSON object; trust not pre-accepted", path);
            cJSON_Delete (root);
            return -1;
        }
    }
    else if (error_no == ENOENT)
        root = cJSON_CreateObject ();
    else
        return -1;
    cJSON *projects = cJSON_GetObjectItemCaseSensitive (root, "projects");
    if (!cJSON_IsObject (projects)) {
        cJSON_DeleteItemFromObjectCaseSensitive (root, "projects");
        projects = cJSON_AddObjectToObject (root, "projects");
    }
    cJSON *entry = cJSON_GetObjectItemCaseSensitive (projects, worktree);
    if (!cJSON_IsObject (entry)) {
        cJSON_DeleteItemFromObjectCaseSensitive (projects, worktree);
        entry = cJSON_AddObjectToObject (projects, worktree);
    }
    cJSON_DeleteItemFromObjectCaseSensitive (entry, "hasTrustDialogAccepted");
    cJSON_AddBoolToObject (entry, "hasTrustDialogAccepted", true);
    char *text = cJSON_Print (root);
    cJSON_Delete (root);
    if (!text)
        return -1;
    mkdir (config_dir, 0700);
    //  Write a sibling file and rename it, so a reader never sees half a file.
    int fd = open (temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = -1;
    if (fd >= 0) {
        size_t len = strlen (text);
        rc = write (fd, text, len) == (ssize_t) len && fsync (fd) == 0 ? 0 : -1;
        close (fd);
        if (rc == 0)
            rc = rename (temp, path);
    }
    free (text);
    return rc;
}

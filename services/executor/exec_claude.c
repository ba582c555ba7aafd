/*  exec_claude: what is particular to Claude Code agents: the hooks it is
    given with --settings, the trust dialog's config directory, and the
    result of a headless run, read as data.                               */

#include "exec_internal.h"

#include "ccm_hookcfg.h"
#include "ccm_log.h"
#include "ccm_proc.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

bool
exec_is_claude (const char *program)
{
    return strcmp (strrchr (program, '/') ? strrchr (program, '/') + 1 : program, "claude") == 0;
}

//  Claude Code agents get the settings that run ccm-hook (next to this
//  binary) with --settings, on top of their own: the worktree itself stays
//  untouched, so the task's files_changed and a clean worktree's prune are
//  not affected.
void
exec_claude_settings (exec_t *self)
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

void
exec_claude_dir (exec_t *self, exec_profile_t *profile, char *out, size_t len)
{
    cJSON *item =
        profile->env ? cJSON_GetObjectItemCaseSensitive (profile->env, "CLAUDE_CONFIG_DIR") : NULL;
    const char *dir = cJSON_GetStringValue (item);
    if (!dir || !*dir)
        dir = ccm_config_str (self->config, "executor.claude_config_dir");
    if (!*dir)
        dir = getenv ("CLAUDE_CONFIG_DIR");
    if (!dir || !*dir)
        dir = getenv ("HOME");
    snprintf (out, len, "%s", dir ? dir : "/root");
}

//  Each line of the log that is a JSON object with "type": "result" is a
//  result; the last one counts. Keys may come in any order, with others
//  among them, and between lines of anything else.
cJSON *
exec_claude_result (const char *path)
{
    FILE *file = fopen (path, "rb");
    if (!file)
        return NULL;
    cJSON *found = NULL;
    char *line = NULL;
    size_t cap = 0;
    while (getline (&line, &cap, file) > 0) {
        //  The terminal may put escapes before the JSON: start at its '{'.
        char *start = strchr (line, '{');
        if (!start)
            continue;
        ccm_proc_chomp (start);
        cJSON *json = cJSON_Parse (start);
        const char *type = cJSON_GetStringValue (cJSON_GetObjectItemCaseSensitive (json, "type"));
        if (type && strcmp (type, "result") == 0) {
            cJSON_Delete (found);
            found = json;
        }
        else
            cJSON_Delete (json);
    }
    free (line);
    fclose (file);
    if (!found)
        return NULL;
    cJSON *details = cJSON_CreateObject ();
    const char *keys[] = {"session_id", "num_turns", "total_cost_usd",
                          "is_error",   "result",    "usage"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        cJSON *item = cJSON_GetObjectItemCaseSensitive (found, keys[i]);
        if (item)
            cJSON_AddItemToObject (details, keys[i], cJSON_Duplicate (item, true));
    }
    cJSON_Delete (found);
    return details;
}

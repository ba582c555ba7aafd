/*  ccm_hookcfg: ccm's entries in a Claude Code settings.json.             */

#include "ccm_hookcfg.h"
#include "ccm_msg.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_MAX_FILE (4 << 20)

const char *const ccm_hookcfg_events[] = {
    "SessionStart",       "UserPromptSubmit", "PreToolUse",   "PostToolUse",
    "PostToolUseFailure", "PostToolBatch",    "Notification", "PermissionRequest",
    "SubagentStart",      "SubagentStop",     "Stop",         "StopFailure",
    "PreCompact",         "PostCompact",      "SessionEnd",   NULL};

//  Appends text to out, single-quoted for a POSIX shell.
static void
s_quote (FILE *out, const char *text)
{
    fputc ('\'', out);
    for (const char *p = text; *p; p++)
        if (*p == '\'')
            fputs ("'\\''", out);
        else
            fputc (*p, out);
    fputc ('\'', out);
}

char *
ccm_hookcfg_command (const char *hook_bin, const char *home)
{
    char *command = NULL;
    size_t size = 0;
    FILE *out = open_memstream (&command, &size);
    if (!out)
        return NULL;
    s_quote (out, hook_bin);
    fputs (" --home ", out);
    s_quote (out, home);
    fputs (" claude", out);
    fclose (out);
    return command;
}

//  Reads the whole file; *text is NULL if it does not exist. Returns 0 or -1.
static int
s_read (const char *path, char **text, char **error)
{
    *text = NULL;
    FILE *file = fopen (path, "rb");
    if (!file)
        return errno == ENOENT
                   ? 0
                   : ccm_set_error (error, "cannot read %s: %s", path, strerror (errno));
    char *data = malloc (S_MAX_FILE + 1);
    size_t n = data ? fread (data, 1, S_MAX_FILE + 1, file) : 0;
    fclose (file);
    if (!data)
        return ccm_set_error (error, "out of memory");
    if (n > S_MAX_FILE) {
        free (data);
        return ccm_set_error (error, "%s: larger than %d bytes", path, S_MAX_FILE);
    }
    data[n] = 0;
    *text = data;
    return 0;
}

//  Writes text to path atomically (a temporary file, then rename), keeping
//  the mode of the file it replaces (0600 for a new one).
static int
s_write (const char *path, const char *text, char **error)
{
    struct stat st;
    mode_t mode = stat (path, &st) == 0 ? st.st_mode & 0777 : 0600;
    char tmp[PATH_MAX];
    snprintf (tmp, sizeof tmp, "%s.ccm-tmp", path);
    int fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return ccm_set_error (error, "cannot write %s: %s", tmp, strerror (errno));
    size_t len = strlen (text);
    bool ok = write (fd, text, len) == (ssize_t) len && fsync (fd) == 0;
    close (fd);
    if (!ok || fchmodat (AT_FDCWD, tmp, mode, 0) || rename (tmp, path)) {
        int saved = errno;
        unlink (tmp);
        return ccm_set_error (error, "cannot write %s: %s", path, strerror (saved));
    }
    return 0;
}

static bool
s_is_ours (cJSON *hook)
{
    const char *command = cJSON_GetStringValue (cJSON_GetObjectItemCaseSensitive (hook, "command"));
    return command && (strstr (command, "/ccm-hook'") || strncmp (command, "ccm-hook ", 9) == 0);
}

//  Removes ccm's hook entries from settings, and the groups, events and
//  "hooks" that this leaves empty; empty ones of the user's stay as they
//  are. Returns how many entries were removed.
static int
s_remove_ours (cJSON *settings)
{
    cJSON *hooks = cJSON_GetObjectItemCaseSensitive (settings, "hooks");
    if (!cJSON_IsObject (hooks))
        return 0;
    int removed = 0;
    for (cJSON *event = hooks->child, *next_event; event; event = next_event) {
        next_event = event->next;
        if (!cJSON_IsArray (event))
            continue;
        int removed_here = 0;
        for (cJSON *group = event->child, *next_group; group; group = next_group) {
            next_group = group->next;
            cJSON *list = cJSON_GetObjectItemCaseSensitive (group, "hooks");
            if (!cJSON_IsArray (list))
                continue;
            int removed_from_group = 0;
            for (cJSON *hook = list->child, *next_hook; hook; hook = next_hook) {
                next_hook = hook->next;
                if (s_is_ours (hook)) {
                    cJSON_Delete (cJSON_DetachItemViaPointer (list, hook));
                    removed_from_group++;
                }
            }
            if (removed_from_group && cJSON_GetArraySize (list) == 0)
                cJSON_Delete (cJSON_DetachItemViaPointer (event, group));
            removed_here += removed_from_group;
        }
        if (removed_here && cJSON_GetArraySize (event) == 0)
            cJSON_Delete (cJSON_DetachItemViaPointer (hooks, event));
        removed += removed_here;
    }
    if (removed && cJSON_GetArraySize (hooks) == 0)
        cJSON_DeleteItemFromObjectCaseSensitive (settings, "hooks");
    return removed;
}

//  Drops the empty hook containers of settings (groups without hooks,
//  events without groups, an empty "hooks"), which mean nothing to Claude
//  Code. Two settings that differ only in those are the same settings.
static void
s_prune_empty (cJSON *settings)
{
    cJSON *hooks = cJSON_GetObjectItemCaseSensitive (settings, "hooks");
    if (!cJSON_IsObject (hooks))
        return;
    for (cJSON *event = hooks->child, *next_event; event; event = next_event) {
        next_event = event->next;
        if (!cJSON_IsArray (event))
            continue;
        for (cJSON *group = event->child, *next_group; group; group = next_group) {
            next_group = group->next;
            cJSON *list = cJSON_GetObjectItemCaseSensitive (group, "hooks");
            if (cJSON_IsArray (list) && cJSON_GetArraySize (list) == 0)
                cJSON_Delete (cJSON_DetachItemViaPointer (event, group));
        }
        if (cJSON_GetArraySize (event) == 0)
            cJSON_Delete (cJSON_DetachItemViaPointer (hooks, event));
    }
    if (cJSON_GetArraySize (hooks) == 0)
        cJSON_DeleteItemFromObjectCaseSensitive (settings, "hooks");
}

//  True if a and b are the same settings, empty hook containers aside.
static bool
s_same_settings (cJSON *a, cJSON *b)
{
    cJSON *a_copy = cJSON_Duplicate (a, true);
    cJSON *b_copy = cJSON_Duplicate (b, true);
    s_prune_empty (a_copy);
    s_prune_empty (b_copy);
    bool same = a_copy && b_copy && cJSON_Compare (a_copy, b_copy, true);
    cJSON_Delete (a_copy);
    cJSON_Delete (b_copy);
    return same;
}

static void
s_add_ours (cJSON *settings, const char *command, int timeout_s)
{
    cJSON *hooks = cJSON_GetObjectItemCaseSensitive (settings, "hooks");
    if (!cJSON_IsObject (hooks)) {
        cJSON_DeleteItemFromObjectCaseSensitive (settings, "hooks");
        hooks = cJSON_AddObjectToObject (settings, "hooks");
    }
    for (int i = 0; ccm_hookcfg_events[i]; i++) {
        cJSON *event = cJSON_GetObjectItemCaseSensitive (hooks, ccm_hookcfg_events[i]);
        if (!cJSON_IsArray (event)) {
            cJSON_DeleteItemFromObjectCaseSensitive (hooks, ccm_hookcfg_events[i]);
            event = cJSON_AddArrayToObject (hooks, ccm_hookcfg_events[i]);
        }
        //  No matcher: every tool, every source.
        cJSON *group = cJSON_CreateObject ();
        cJSON *list = cJSON_AddArrayToObject (group, "hooks");
        cJSON *hook = cJSON_CreateObject ();
        cJSON_AddStringToObject (hook, "type", "command");
        cJSON_AddStringToObject (hook, "command", command);
        //  A PermissionRequest that a policy asks a human about waits for
        //  the answer (hooks.ask_timeout_ms, 300 s by default): Claude Code
        //  must not end that hook first.
        bool asks = strcmp (ccm_hookcfg_events[i], "PermissionRequest") == 0;
        cJSON_AddNumberToObject (
            hook, "timeout",
            asks && timeout_s < CCM_HOOKCFG_ASK_TIMEOUT_S ? CCM_HOOKCFG_ASK_TIMEOUT_S : timeout_s);
        cJSON_AddItemToArray (list, hook);
        cJSON_AddItemToArray (event, group);
    }
}

//  settings as JSON text indented by two spaces, as Claude Code writes it.
//  (cJSON indents with tabs; a raw tab in its output is always layout,
//  since tabs inside strings are escaped.) Caller frees.
static char *
s_print (cJSON *settings)
{
    char *text = cJSON_Print (settings);
    if (!text)
        return NULL;
    char *out = malloc (strlen (text) * 2 + 2);
    char *w = out;
    for (const char *r = text; out && *r; r++) {
        if (*r != '\t')
            *w++ = *r;
        else if (r > text && r[-1] == ':')
            *w++ = ' ';
        else {
            *w++ = ' ';
            *w++ = ' ';
        }
    }
    if (out) {
        *w++ = '\n';
        *w = 0;
    }
    free (text);
    return out;
}

static char *
s_backup_path (const char *path)
{
    char *backup = NULL;
    if (asprintf (&backup, "%s.ccm-orig", path) < 0)
        return NULL;
    return backup;
}

static int
s_mkdirs (const char *path)
{
    char *copy = strdup (path);
    char *dir = dirname (copy);
    int rc = 0;
    struct stat st;
    if (stat (dir, &st) != 0) {
        rc = s_mkdirs (dir);
        if (rc == 0 && mkdir (dir, 0700) && errno != EEXIST)
            rc = -1;
    }
    free (copy);
    return rc;
}

int
ccm_hookcfg_install (const char *path, const char *command, int timeout_s, char **error)
{
    *error = NULL;
    char *text = NULL;
    if (s_read (path, &text, error))
        return -1;
    cJSON *settings = text ? cJSON_Parse (text) : cJSON_CreateObject ();
    if (!cJSON_IsObject (settings)) {
        cJSON_Delete (settings);
        free (text);
        return ccm_set_error (error, "%s is not a JSON object; not touched", path);
    }
    //  Already there, exactly as we would write it: leave the file alone.
    cJSON *wanted = cJSON_Duplicate (settings, true);
    s_remove_ours (wanted);
    s_add_ours (wanted, command, timeout_s);
    bool same = cJSON_Compare (wanted, settings, true);
    int rc = 0;
    if (!same) {
        char *backup = s_backup_path (path);
        struct stat st;
        //  A file holding nothing but ccm's entries is one ccm created (a
        //  user's file is backed up by the first install): it is not the
        //  user's original, and uninstall removes it. No marker is needed,
        //  and none is left beside the file.
        cJSON *users = cJSON_Duplicate (settings, true);
        s_remove_ours (users);
        bool only_ours = users && cJSON_GetArraySize (users) == 0 && cJSON_GetArraySize (settings);
        cJSON_Delete (users);
        //  The user's file as it was before ccm first touched it.
        if (backup && text && !only_ours && stat (backup, &st) != 0 && s_mkdirs (path) == 0)
            rc = s_write (backup, text, error);
        free (backup);
        char *out = rc == 0 ? s_print (wanted) : NULL;
        if (rc == 0 && s_mkdirs (path))
            rc = ccm_set_error (error, "cannot create the directory of %s: %s", path,
                                strerror (errno));
        if (rc == 0 && out)
            rc = s_write (path, out, error);
        free (out);
    }
    cJSON_Delete (wanted);
    cJSON_Delete (settings);
    free (text);
    return rc;
}

int
ccm_hookcfg_uninstall (const char *path, char **error)
{
    *error = NULL;
    char *text = NULL;
    if (s_read (path, &text, error) || !text)
        return *error ? -1 : 0;
    cJSON *settings = cJSON_Parse (text);
    if (!cJSON_IsObject (settings)) {
        cJSON_Delete (settings);
        free (text);
        return ccm_set_error (error, "%s is not a JSON object; not touched", path);
    }
    int rc = 0;
    char *backup = s_backup_path (path);
    if (s_remove_ours (settings)) {
        char *original = NULL;
        char *ignored = NULL;
        s_read (backup, &original, &ignored);
        free (ignored);
        cJSON *before = original ? cJSON_Parse (original) : NULL;
        //  Taking ccm's entries out drops the containers that leaves empty,
        //  so a user's "hooks": {} (or "Stop": []) is not in settings any
        //  more: compare without empty containers, or such a file would
        //  never get its own bytes back.
        if (before && s_same_settings (before, settings))
            rc = s_write (path, original, error);  //  the user's own bytes
        else if (!original && cJSON_GetArraySize (settings) == 0)
            rc = unlink (path)
                     ? ccm_set_error (error, "cannot remove %s: %s", path, strerror (errno))
                     : 0;  //  ccm created it
        else {
            char *out = s_print (settings);
            rc = out ? s_write (path, out, error) : ccm_set_error (error, "out of memory");
            free (out);
        }
        cJSON_Delete (before);
        free (original);
    }
    if (rc == 0 && backup)
        unlink (backup);
    free (backup);
    cJSON_Delete (settings);
    free (text);
    return rc;
}

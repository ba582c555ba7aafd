/*  hooks_event: records from ccm-hook, turned into hook_events rows.

    Claude Code and Gemini CLI name the event in hook_event_name; Codex's
    notify calls it "type". Every event is kept: an unknown type as it is,
    broken JSON or a cut event as text, with what was wrong with it.       */

#include "hooks_internal.h"

#include "ccm_id.h"
#include "ccm_msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define S_TYPE_MAX 64
#define S_TOOL_MAX 256
#define S_PATH_MAX 4096
#define S_ID_MAX   128

size_t
hooks_record_size (const unsigned char *data, const char **why)
{
    if (memcmp (data, HOOK_MAGIC, 4) != 0) {
        *why = "not a ccm-hook record (bad magic)";
        return 0;
    }
    uint32_t head = hook_get_u32 (data + 4), body = hook_get_u32 (data + 8);
    if (head > HOOK_HEAD_MAX || body > HOOK_BODY_MAX) {
        *why = "record head or body over its limit";
        return 0;
    }
    return HOOK_PREFIX_LEN + head + body;
}

//  Copies the value of "key=" in head (len bytes) into out, if present.
static void
s_head_value (const char *head, size_t len, const char *key, char *out, size_t size)
{
    size_t key_len = strlen (key);
    for (const char *line = head; line < head + len;) {
        const char *end = memchr (line, '\n', (size_t) (head + len - line));
        if (!end)
            end = head + len;
        if ((size_t) (end - line) > key_len && memcmp (line, key, key_len) == 0
            && line[key_len] == '=') {
            size_t value_len = (size_t) (end - line) - key_len - 1;
            snprintf (out, size, "%.*s", (int) value_len, line + key_len + 1);
            return;
        }
        line = end + 1;
    }
}

int
hooks_record_parse (const unsigned char *data, size_t len, hooks_record_t *record, const char **why)
{
    memset (record, 0, sizeof *record);
    if (len < HOOK_PREFIX_LEN || hooks_record_size (data, why) != len) {
        if (len >= HOOK_PREFIX_LEN && hooks_record_size (data, why) != 0)
            *why = "record length does not match its prefix";
        else if (len < HOOK_PREFIX_LEN)
            *why = "record shorter than its prefix";
        return -1;
    }
    const char *head = (const char *) data + HOOK_PREFIX_LEN;
    size_t head_len = hook_get_u32 (data + 4);
    char number[32] = "";
    s_head_value (head, head_len, "uid", record->uid, sizeof record->uid);
    s_head_value (head, head_len, "cli", record->cli, sizeof record->cli);
    s_head_value (head, head_len, "task", record->task, sizeof record->task);
    s_head_value (head, head_len, "agent", record->agent, sizeof record->agent);
    s_head_value (head, head_len, "system", record->system, sizeof record->system);
    s_head_value (head, head_len, "worktree", record->worktree, sizeof record->worktree);
    s_head_value (head, head_len, "ts", number, sizeof number);
    record->ts_ms = atoll (number);
    number[0] = 0;
    s_head_value (head, head_len, "truncated", number, sizeof number);
    record->truncated = atoll (number);
    record->body = head + head_len;
    record->body_len = hook_get_u32 (data + 8);
    if (!record->uid[0]) {
        *why = "record without a uid";
        return -1;
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Sessions: session_id -> task and agent, learned from events that carry them.

#define S_SESSIONS_MAX 10000

struct hooks_sessions_t {
    zhashx_t *map;  //  session_id -> "task\tagent"
    char *path;     //  where links persist across restarts, one "session\ttask\tagent" line each
};

hooks_sessions_t *
hooks_sessions_new (const char *path)
{
    hooks_sessions_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->map = zhashx_new ();
    zhashx_set_destructor (self->map, (zhashx_destructor_fn *) zstr_free);
    self->path = path ? strdup (path) : NULL;
    FILE *file = self->path ? fopen (self->path, "r") : NULL;
    char line[512];
    while (file && fgets (line, sizeof line, file)) {
        char *rest = line, *session = strsep (&rest, "\t");
        if (rest && *session) {
            rest[strcspn (rest, "\n")] = 0;
            zhashx_update (self->map, session, strdup (rest));
        }
    }
    if (file)
        fclose (file);
    return self;
}

void
hooks_sessions_destroy (hooks_sessions_t **self_p)
{
    if (self_p && *self_p) {
        zhashx_destroy (&(*self_p)->map);
        free ((*self_p)->path);
        free (*self_p);
        *self_p = NULL;
    }
}

//  Fills in a missing task or agent from the session, or remembers them.
static void
s_link (hooks_sessions_t *self, const char *session, char *task, char *agent, size_t size)
{
    if (!session || !*session)
        return;
    if (task[0]) {
        char *link = zsys_sprintf ("%s\t%s", task, agent);
        const char *known = zhashx_lookup (self->map, session);
        if (known && strcmp (known, link) == 0) {
            zstr_free (&link);
            return;
        }
        bool full = zhashx_size (self->map) >= S_SESSIONS_MAX;
        if (full)
            zhashx_purge (self->map);  //  a bound, not a cache policy: sessions are few
        //  A new link is remembered on disk too, for events after a restart.
        FILE *file = self->path && !strchr (session, '\n') && !strchr (link, '\n')
                         ? fopen (self->path, full ? "w" : "a")
                         : NULL;
        if (file) {
            fprintf (file, "%s\t%s\n", session, link);
            fclose (file);
        }
        zhashx_update (self->map, session, link);
        return;
    }
    const char *known = zhashx_lookup (self->map, session);
    if (known) {
        const char *tab = strchr (known, '\t');
        snprintf (task, size, "%.*s", (int) (tab - known), known);
        if (!agent[0])
            snprintf (agent, size, "%s", tab + 1);
    }
}

//  --------------------------------------------------------------------------

static const char *
s_str (cJSON *obj, const char *key)
{
    cJSON *item = cJSON_GetObjectItemCaseSensitive (obj, key);
    return cJSON_IsString (item) ? item->valuestring : NULL;
}

//  Adds key: value if value is a string of 1..max bytes.
static void
s_add_capped (cJSON *event, const char *key, const char *value, size_t max)
{
    if (value && *value && strlen (value) <= max)
        cJSON_AddStringToObject (event, key, value);
}

//  The event name in a body that is not valid JSON, if it can be seen.
static void
s_guess_type (const hooks_record_t *record, char *out, size_t size)
{
    const char *key = "\"hook_event_name\":\"";
    size_t key_len = strlen (key);
    const char *end = record->body + record->body_len;
    for (const char *p = record->body; p && p + key_len < end;
         p = memchr (p + 1, '"', (size_t) (end - p - 1))) {
        if (memcmp (p, key, key_len) != 0)
            continue;
        const char *name = p + key_len;
        const char *close = memchr (name, '"', (size_t) (end - name));
        if (close && close > name && close - name <= S_TYPE_MAX) {
            char *clean = ccm_utf8_clean (name, (size_t) (close - name));
            snprintf (out, size, "%s", clean ? clean : "Unknown");
            free (clean);
            return;
        }
    }
}

//  How many bytes of text fit in max once printed as a JSON string: a body
//  of control bytes prints six times its size, over what the store takes.
//  Never ends inside a UTF-8 sequence.
static size_t
s_printable_prefix (const char *text, size_t max)
{
    size_t printed = 0, i = 0;
    for (; text[i]; i++) {
        unsigned char c = (unsigned char) text[i];
        size_t width =
            c == '"' || c == '\\' || c == '\b' || c == '\f' || c == '\n' || c == '\r' || c == '\t'
                ? 2
            : c < 0x20 ? 6
                       : 1;
        if (printed + width > max)
            break;
        printed += width;
    }
    while (i > 0 && ((unsigned char) text[i] & 0xC0) == 0x80)
        i--;
    return i;
}

//  A copy of the JSON text body with every \u0000 escape inside a string
//  made \ufffd (the same length), so that no string is cut short. An
//  escaped backslash followed by "u0000" is text, and is left alone.
static char *
s_without_nul_escapes (const char *body, size_t len)
{
    char *copy = malloc (len + 1);
    if (!copy)
        return NULL;
    memcpy (copy, body, len);
    copy[len] = 0;
    bool in_string = false;
    for (size_t i = 0; i < len; i++) {
        if (copy[i] == '"')
            in_string = !in_string;
        else if (in_string && copy[i] == '\\' && i + 1 < len) {
            if (i + 5 < len && memcmp (copy + i + 1, "u0000", 5) == 0)
                memcpy (copy + i + 1, "ufffd", 5);
            i++;  //  the escaped character
        }
    }
    return copy;
}

cJSON *
hooks_event_new (hooks_sessions_t *sessions, const hooks_record_t *record)
{
    cJSON *event = cJSON_CreateObject ();
    cJSON *payload = NULL;
    const char *problem = NULL;
    if (record->truncated)
        problem = "cut at 8 MiB";
    else if (record->body_len == 0)
        problem = "empty";
    else {
        //  cJSON's strings end at a NUL: "\u0000" would cut them short.
        char *body = s_without_nul_escapes (record->body, record->body_len);
        payload = body ? cJSON_ParseWithLength (body, record->body_len) : NULL;
        free (body);
        if (!payload)
            problem = "not valid JSON";
        else if (!cJSON_IsObject (payload))
            problem = "not a JSON object";
        else if (!ccm_utf8_valid (record->body, record->body_len))
            problem = "not valid UTF-8";
    }
    char type[S_TYPE_MAX + 1] = "Unknown";
    if (problem) {
        //  Kept as text, with what was wrong; nothing is dropped.
        cJSON_Delete (payload);
        payload = cJSON_CreateObject ();
        char *text = ccm_utf8_clean (record->body ? record->body : "", record->body_len);
        //  12 MiB escaped keeps a cut 8 MiB of text whole, and fits in a store request.
        size_t keep = text ? s_printable_prefix (text, HOOK_BODY_MAX / 2 * 3) : 0;
        bool cut = text && text[keep];
        if (cut)
            text[keep] = 0;
        char reason[160];
        snprintf (reason, sizeof reason, "event %s (%lld bytes)%s", problem,
                  (long long) (record->truncated ? record->truncated : (int64_t) record->body_len),
                  cut ? "; raw cut to 12 MiB once escaped" : "");
        cJSON_AddStringToObject (payload, "ccm_error", reason);
        cJSON_AddStringToObject (payload, "raw", text ? text : "");
        free (text);
        s_guess_type (record, type, sizeof type);
    }
    else {
        const char *name = s_str (payload, "hook_event_name");
        if (!name)
            name = s_str (payload, "type");  //  Codex notify
        if (name && *name)
            snprintf (type, sizeof type, "%.*s", S_TYPE_MAX, name);
    }
    //  A cut name must still be valid UTF-8.
    char *clean_type = ccm_utf8_clean (type, strlen (type));
    cJSON_AddStringToObject (event, "hook_type",
                             clean_type && *clean_type ? clean_type : "Unknown");
    free (clean_type);
    cJSON_AddStringToObject (event, "uid", record->uid);

    char task[S_ID_MAX + 1], agent[S_ID_MAX + 1];
    snprintf (task, sizeof task, "%s", record->task);
    snprintf (agent, sizeof agent, "%s", record->agent);
    const char *session = s_str (payload, "session_id");
    if (!session)
        session = s_str (payload, "thread-id");  //  Codex
    s_link (sessions, session, task, agent, sizeof task);
    //  A subagent's events carry its own agent_id: it is tracked by that.
    const char *subagent = s_str (payload, "agent_id");
    s_add_capped (event, "task_id", task, 64);
    s_add_capped (event, "agent_id", subagent && *subagent ? subagent : agent, S_ID_MAX);
    s_add_capped (event, "system_id", record->system, S_ID_MAX);
    s_add_capped (event, "session_id", session, S_ID_MAX);
    if (record->ts_ms > 0) {
        time_t seconds = (time_t) (record->ts_ms / 1000);
        struct tm tm;
        gmtime_r (&seconds, &tm);
        char when[64];
        snprintf (when, sizeof when, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                  tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                  (int) (record->ts_ms % 1000));
        cJSON_AddStringToObject (event, "hook_timestamp", when);
    }
    s_add_capped (event, "tool_name", s_str (payload, "tool_name"), S_TOOL_MAX);
    cJSON *input = cJSON_GetObjectItemCaseSensitive (payload, "tool_input");
    const char *file = s_str (input, "file_path");
    if (!file)
        file = s_str (input, "notebook_path");
    if (!file)
        file = s_str (input, "path");
    s_add_capped (event, "file_path", file, S_PATH_MAX);
    const char *hook_type = s_str (event, "hook_type");
    if (problem)
        ;  //  a cut or broken event's outcome is unknown
    else if (strcmp (hook_type, "PostToolUse") == 0)
        cJSON_AddBoolToObject (event, "success", true);
    else if (strcmp (hook_type, "PostToolUseFailure") == 0)
        cJSON_AddBoolToObject (event, "success", false);
    cJSON_AddItemToObject (event, "event_data", payload);
    return event;
}

const char *
hooks_event_state (cJSON *event)
{
    const char *type = s_str (event, "hook_type");
    cJSON *payload = cJSON_GetObjectItemCaseSensitive (event, "event_data");
    if (!type)
        return NULL;
    const char *running[] = {"UserPromptSubmit",   "PreToolUse",    "PostToolUse",
                             "PostToolUseFailure", "PostToolBatch", "SubagentStart",
                             "BeforeTool",         "AfterTool"};
    for (size_t i = 0; i < sizeof running / sizeof running[0]; i++)
        if (strcmp (type, running[i]) == 0)
            return "running";
    if (strcmp (type, "PermissionRequest") == 0)
        return "waiting";
    if (strcmp (type, "Notification") == 0) {
        const char *kind = s_str (payload, "notification_type");
        const char *message = s_str (payload, "message");
        if ((kind && (strcmp (kind, "idle_prompt") == 0 || strcmp (kind, "permission_prompt") == 0))
            || (!kind && message && strstr (message, "permission")))
            return "waiting";
        return NULL;
    }
    if (strcmp (type, "Stop") == 0)
        return "idle";
    if (strcmp (type, "SubagentStop") == 0 || strcmp (type, "SessionEnd") == 0)
        return "exited";
    return NULL;
}

/*  hooks_policy: safety policies for tool use, from $CCM_HOME/policies.json.

        {"fail": "open" | "closed",
         "rules": [
           {"name": "no-rm-rf-root", "tool": "^Bash$",
            "command": "rm +-[a-zA-Z]*[rR][a-zA-Z]* +/( |$)",
            "action": "deny", "reason": "never remove the root"},
           {"name": "stay-home", "outside_worktree": true, "action": "deny"},
           {"name": "no-web", "tool": "^Web(Fetch|Search)$", "action": "deny"}]}

    A rule matches a tool use when all it names match: "tool" (an extended
    regular expression on the tool name), "command" (on a Bash command),
    "outside_worktree" (a file tool writing outside the task's worktree).
    The first matching rule decides: deny, allow or ask. No match, no
    decision: the CLI's own permission rules apply, unless
    "ask_permissions": true, which asks every PermissionRequest no rule
    decides (as the rule named "ask_permissions").

    Ask on a PermissionRequest (the permission dialog) asks a human
    elsewhere: ccm-hooks parks the hook and records a permission request,
    and whoever answers it first (the browser's inbox, permission.answer)
    allows or denies. With no answer in time (hooks.ask_timeout_ms), the
    hook ends with no decision and the CLI asks in its own dialog. Ask on
    a PreToolUse makes Claude Code show that dialog, so it comes back here
    as a PermissionRequest.

    Decision points: Claude Code's PreToolUse and PermissionRequest, and
    Gemini CLI's BeforeTool (its tool names, e.g. "run_shell_command"; only
    deny is printed for it, the one decision its hooks document).           */

#include "hooks_internal.h"

#include "ccm_log.h"
#include "ccm_msg.h"

#include <errno.h>
#include <stdarg.h>
#include <limits.h>
#include <regex.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

typedef struct {
    char *name;
    char *action;  //  deny, allow or ask
    char *reason;
    bool has_tool, has_command, outside_worktree;
    regex_t tool, command;
} s_rule_t;

struct hooks_policy_t {
    s_rule_t *rules;
    int count;
    bool fail_closed;
    bool ask_permissions;  //  ask every PermissionRequest no rule decides
};

static void
s_rules_free (s_rule_t *rules, int count)
{
    for (int i = 0; i < count; i++) {
        free (rules[i].name);
        free (rules[i].action);
        free (rules[i].reason);
        if (rules[i].has_tool)
            regfree (&rules[i].tool);
        if (rules[i].has_command)
            regfree (&rules[i].command);
    }
    free (rules);
}

void
hooks_policy_destroy (hooks_policy_t **self_p)
{
    if (self_p && *self_p) {
        s_rules_free ((*self_p)->rules, (*self_p)->count);
        free (*self_p);
        *self_p = NULL;
    }
}

//  Compiles the regex in rule's key, if present. Returns 0 or -1 + *error.
static int
s_compile (cJSON *rule, const char *key, const char *name, regex_t *regex, bool *has, char **error)
{
    cJSON *item = cJSON_GetObjectItemCaseSensitive (rule, key);
    if (!item)
        return 0;
    if (!cJSON_IsString (item))
        return ccm_set_error (error, "rule '%s': \"%s\" must be a string (a regular expression)",
                              name, key);
    int rc = regcomp (regex, item->valuestring, REG_EXTENDED | REG_NOSUB);
    if (rc) {
        char message[256];
        regerror (rc, regex, message, sizeof message);
        return ccm_set_error (error, "rule '%s': \"%s\": %s", name, key, message);
    }
    *has = true;
    return 0;
}

hooks_policy_t *
hooks_policy_load (const char *path, char **error)
{
    *error = NULL;
    FILE *file = fopen (path, "rb");
    if (!file) {
        if (errno != ENOENT)
            ccm_set_error (error, "%s: %s", path, strerror (errno));
        return NULL;
    }
    char *text = malloc (1 << 20);
    size_t n = text ? fread (text, 1, (1 << 20) - 1, file) : 0;
    fclose (file);
    if (!text)
        return NULL;
    text[n] = 0;
    cJSON *json = cJSON_Parse (text);
    free (text);
    hooks_policy_t *self = calloc (1, sizeof *self);
    cJSON *rules = cJSON_GetObjectItemCaseSensitive (json, "rules");
    cJSON *fail = cJSON_GetObjectItemCaseSensitive (json, "fail");
    int rc = 0;
    if (!cJSON_IsObject (json))
        rc = ccm_set_error (error, "%s: not a JSON object", path);
    else if (fail
             && !(cJSON_IsString (fail)
                  && (strcmp (fail->valuestring, "open") == 0
                      || strcmp (fail->valuestring, "closed") == 0)))
        rc = ccm_set_error (error, "%s: \"fail\" must be \"open\" or \"closed\"", path);
    else if (rules && !cJSON_IsArray (rules))
        rc = ccm_set_error (error, "%s: \"rules\" must be an array", path);
    cJSON *ask_all = cJSON_GetObjectItemCaseSensitive (json, "ask_permissions");
    if (rc == 0 && ask_all && !cJSON_IsBool (ask_all))
        rc = ccm_set_error (error, "%s: \"ask_permissions\" must be true or false", path);
    self->ask_permissions = rc == 0 && cJSON_IsTrue (ask_all);
    self->fail_closed = rc == 0 && fail && strcmp (fail->valuestring, "closed") == 0;
    self->rules = calloc ((size_t) cJSON_GetArraySize (rules) + 1, sizeof *self->rules);
    cJSON *rule;
    cJSON_ArrayForEach (rule, rules)
    {
        if (rc)
            break;
        s_rule_t *r = &self->rules[self->count++];
        const char *name = cJSON_GetStringValue (cJSON_GetObjectItemCaseSensitive (rule, "name"));
        const char *action =
            cJSON_GetStringValue (cJSON_GetObjectItemCaseSensitive (rule, "action"));
        const char *reason =
            cJSON_GetStringValue (cJSON_GetObjectItemCaseSensitive (rule, "reason"));
        char fallback[32];
        snprintf (fallback, sizeof fallback, "rule %d", self->count);
        r->name = strdup (name ? name : fallback);
        if (!cJSON_IsObject (rule))
            rc = ccm_set_error (error, "%s: %s: must be an object", path, r->name);
        else if (!action
                 || (strcmp (action, "deny") && strcmp (action, "allow") && strcmp (action, "ask")))
            rc = ccm_set_error (error, "%s: rule '%s': \"action\" must be deny, allow or ask", path,
                                r->name);
        if (rc)
            break;
        r->action = strdup (action);
        r->reason = reason ? strdup (reason) : NULL;
        r->outside_worktree =
            cJSON_IsTrue (cJSON_GetObjectItemCaseSensitive (rule, "outside_worktree"));
        rc = s_compile (rule, "tool", r->name, &r->tool, &r->has_tool, error)
             || s_compile (rule, "command", r->name, &r->command, &r->has_command, error);
    }
    cJSON_Delete (json);
    if (rc) {
        hooks_policy_destroy (&self);
        return NULL;
    }
    return self;
}

bool
hooks_policy_fail_closed (hooks_policy_t *self)
{
    return self && self->fail_closed;
}

//  The path, made absolute against cwd, with "." and ".." resolved by name
//  (the file may not exist yet). Caller frees.
static char *
s_normalize (const char *path, const char *cwd)
{
    char *joined = NULL;
    if (asprintf (&joined, "%s/%s", path[0] == '/' ? "" : (cwd ? cwd : ""), path) < 0)
        return NULL;
    char *out = calloc (1, strlen (joined) + 2);
    size_t len = 0;
    for (char *part = strtok (joined, "/"); part; part = strtok (NULL, "/")) {
        if (strcmp (part, ".") == 0)
            continue;
        if (strcmp (part, "..") == 0) {
            while (len > 0 && out[len - 1] != '/')
                len--;
            if (len > 0)
                len--;
            out[len] = 0;
            continue;
        }
        out[len++] = '/';
        strcpy (out + len, part);
        len += strlen (part);
    }
    if (len == 0)
        strcpy (out, "/");
    free (joined);
    return out;
}

//  True if the tool use writes a file outside worktree.
static bool
s_outside (cJSON *payload, const char *worktree)
{
    const char *tool = cJSON_GetStringValue (cJSON_GetObjectItem (payload, "tool_name"));
    const char *writers[] = {"Write", "Edit", "MultiEdit", "NotebookEdit"};
    bool writes = false;
    for (size_t i = 0; tool && i < sizeof writers / sizeof writers[0]; i++)
        writes = writes || strcmp (tool, writers[i]) == 0;
    cJSON *input = cJSON_GetObjectItem (payload, "tool_input");
    const char *file = cJSON_GetStringValue (cJSON_GetObjectItem (input, "file_path"));
    if (!file)
        file = cJSON_GetStringValue (cJSON_GetObjectItem (input, "notebook_path"));
    if (!writes || !file || !worktree || !*worktree)
        return false;
    const char *cwd = cJSON_GetStringValue (cJSON_GetObjectItem (payload, "cwd"));
    char *target = s_normalize (file, cwd ? cwd : worktree);
    char *root = s_normalize (worktree, "/");
    size_t root_len = root ? strlen (root) : 0;
    bool outside = !target || !root
                   || !(strncmp (target, root, root_len) == 0
                        && (target[root_len] == '/' || target[root_len] == 0));
    free (target);
    free (root);
    return outside;
}

//  The decision JSON for the CLI (caller frees), or NULL if the event's CLI
//  has no way to say action: ask on a permission dialog leaves it to the
//  user, and Gemini CLI's BeforeTool documents only "deny" (an allow would
//  be a guess at a contract; no output lets Gemini's own checks apply).
static char *
s_decision (const char *type, const char *action, const char *reason)
{
    bool deny = strcmp (action, "deny") == 0;
    cJSON *out = cJSON_CreateObject ();
    if (strcmp (type, "BeforeTool") == 0) {
        //  Gemini CLI: {"decision": "deny", "reason": ...} on stdout, exit 0
        //  (geminicli.com/docs/hooks/reference, BeforeTool).
        if (!deny) {
            cJSON_Delete (out);
            return NULL;
        }
        cJSON_AddStringToObject (out, "decision", "deny");
        cJSON_AddStringToObject (out, "reason", reason);
    }
    else if (strcmp (type, "PermissionRequest") == 0) {
        //  The permission dialog: allow or deny it (ask: leave it to the user).
        if (strcmp (action, "ask") == 0) {
            cJSON_Delete (out);
            return NULL;
        }
        cJSON *specific = cJSON_AddObjectToObject (out, "hookSpecificOutput");
        cJSON_AddStringToObject (specific, "hookEventName", "PermissionRequest");
        cJSON *decision = cJSON_AddObjectToObject (specific, "decision");
        cJSON_AddStringToObject (decision, "behavior", action);
        if (deny)
            cJSON_AddStringToObject (decision, "message", reason);
    }
    else {
        cJSON *specific = cJSON_AddObjectToObject (out, "hookSpecificOutput");
        cJSON_AddStringToObject (specific, "hookEventName", "PreToolUse");
        cJSON_AddStringToObject (specific, "permissionDecision", action);
        cJSON_AddStringToObject (specific, "permissionDecisionReason", reason);
    }
    char *text = cJSON_PrintUnformatted (out);
    cJSON_Delete (out);
    return text;
}

char *
hooks_policy_decide (hooks_policy_t *self, cJSON *event, const char *worktree,
                     const char **rule_name, const char **action, char **reason_out)
{
    *rule_name = *action = NULL;
    *reason_out = NULL;
    const char *type = cJSON_GetStringValue (cJSON_GetObjectItem (event, "hook_type"));
    bool decides = type
                   && (strcmp (type, "PreToolUse") == 0 || strcmp (type, "PermissionRequest") == 0
                       || strcmp (type, "BeforeTool") == 0);
    if (!self || !decides)
        return NULL;
    cJSON *payload = cJSON_GetObjectItem (event, "event_data");
    const char *tool = cJSON_GetStringValue (cJSON_GetObjectItem (payload, "tool_name"));
    const char *command = cJSON_GetStringValue (
        cJSON_GetObjectItem (cJSON_GetObjectItem (payload, "tool_input"), "command"));
    for (int i = 0; i < self->count; i++) {
        s_rule_t *rule = &self->rules[i];
        if (rule->has_tool && (!tool || regexec (&rule->tool, tool, 0, NULL, 0)))
            continue;
        if (rule->has_command && (!command || regexec (&rule->command, command, 0, NULL, 0)))
            continue;
        if (rule->outside_worktree && !s_outside (payload, worktree))
            continue;
        if (!rule->has_tool && !rule->has_command && !rule->outside_worktree)
            continue;  //  a rule that names nothing matches nothing
        *rule_name = rule->name;
        *action = rule->action;
        char reason[600];
        snprintf (reason, sizeof reason, "ccm policy '%.200s': %.380s", rule->name,
                  rule->reason ? rule->reason : "not allowed here");
        *reason_out = strdup (reason);
        char *text = s_decision (type, rule->action, reason);
        //  ccm-hook takes HOOK_REPLY_MAX bytes at most. The caps above keep a
        //  decision far under it, but should one grow past it, a shorter
        //  reason beats no decision: a deny must never turn into none.
        size_t keep = strlen (reason);
        while (text && strlen (text) > HOOK_REPLY_MAX && keep > 0) {
            keep /= 2;
            while (keep > 0 && (reason[keep] & 0xC0) == 0x80)
                keep--;  //  not inside a UTF-8 character
            reason[keep] = 0;
            free (text);
            text = s_decision (type, rule->action, reason);
        }
        return text;
    }
    if (self->ask_permissions && strcmp (type, "PermissionRequest") == 0) {
        *rule_name = "ask_permissions";
        *action = "ask";
        *reason_out = strdup ("ccm policy 'ask_permissions': every permission dialog is asked");
    }
    return NULL;
}

char *
hooks_policy_answer (bool allow, const char *message)
{
    return s_decision ("PermissionRequest", allow ? "allow" : "deny",
                       message && *message ? message : "denied through ccm");
}

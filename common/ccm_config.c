/*  ccm_config: the table of settings, config.json and CCM_* overrides.

    Precedence, lowest first: the default in s_keys, $CCM_HOME/config.json,
    then the CCM_<KEY> environment variable (dots become underscores). Only
    the names derived from the table are read from the environment, because
    CCM_TASK_ID and friends are legitimately set in agent windows.          */

#include "ccm_config.h"
#include "ccm_log.h"
#include "ccm_msg.h"

#include <assert.h>
#include <stdarg.h>

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cjson/cJSON.h>

static const ccm_config_key_t s_keys[] = {
    {"log_level", CCM_CFG_STRING, "info", "error, warn, info or debug"},
    {"system_id", CCM_CFG_STRING, "", "this machine's system id (empty: derived)"},
    {"store.endpoint", CCM_CFG_STRING, "ipc://{home}/run/store.ipc", "store requests (ROUTER)"},
    {"store.pub_endpoint", CCM_CFG_STRING, "ipc://{home}/run/events.ipc", "store events (PUB)"},
    {"store.db_path", CCM_CFG_STRING, "{home}/ccm.db", "the SQLite database"},
    {"store.synchronous", CCM_CFG_STRING, "full", "SQLite synchronous: full or normal"},
    {"store.batch_max", CCM_CFG_INT, "1024", "most requests in one group commit"},
    {"store.batch_rows", CCM_CFG_INT, "4000",
     "hook rows after which a group commit takes no more requests"},
    {"store.max_body", CCM_CFG_INT, "16777216", "largest request body in bytes"},
    {"store.max_attempts", CCM_CFG_INT, "3", "attempts before a task fails for good"},
    {"router.endpoint", CCM_CFG_STRING, "ipc://{home}/run/router.ipc",
     "where executors meet the router (ROUTER)"},
    {"router.heartbeat_ms", CCM_CFG_INT, "1000", "heartbeat between router and executors"},
    {"router.liveness", CCM_CFG_INT, "3", "missed heartbeats before a peer counts as lost"},
    {"router.retry_base_ms", CCM_CFG_INT, "2000",
     "first backoff before a failed task is retried; doubles each attempt"},
    {"router.wait_connection_s", CCM_CFG_INT, "3600",
     "how long a requires_supabase task without timeout_s waits for sync to connect"},
    {"executor.projects", CCM_CFG_STRING, "",
     "comma-separated projects this executor holds (empty: every one present here);"
     " NAME=PATH also gives this machine's clone of NAME"},
    {"executor.dispatch", CCM_CFG_STRING, "router",
     "how the executor gets tasks: router (from ccm-router) or direct (claims them itself,"
     " for a store without a router)"},
    {"bus.timeout_ms", CCM_CFG_INT, "3000", "request timeout before a retry"},
    {"bus.cert", CCM_CFG_STRING, "{home}/keys/ccm.cert",
     "this machine's CurveZMQ certificate (secret part: the same path + _secret, mode 0600)"},
    {"bus.trusted", CCM_CFG_STRING, "{home}/keys/trusted",
     "directory of the public certificates of peers allowed on tcp:// servers"},
    {"bus.server_key", CCM_CFG_STRING, "",
     "the hub's public key for tcp:// clients: 40 Z85 characters or a public certificate file"},
    {"bus.heartbeat_ms", CCM_CFG_INT, "1000", "ZMTP heartbeat on tcp:// (timeout: 3 beats)"},
    {"bus.handshake_ms", CCM_CFG_INT, "5000", "longest CurveZMQ handshake on tcp://"},
    {"bus.curve", CCM_CFG_STRING, "on",
     "bench only: off sends tcp:// in the clear, and is refused for any non-loopback address"},
    {"bus.retries", CCM_CFG_INT, "3", "retries of a request (Lazy Pirate)"},
    {"up.restart_delay_ms", CCM_CFG_INT, "500", "first delay before restarting a service"},
    {"up.executors", CCM_CFG_INT, "1",
     "executors ccm up runs on this machine (1-16); instance K >= 2 gets its own machine_id,"
     " hostname, tmux_socket, worktrees and outbox (each with -K appended)"},
    {"executor.machine_id", CCM_CFG_STRING, "", "this machine's id (empty: /etc/machine-id)"},
    {"executor.hostname", CCM_CFG_STRING, "", "this machine's name (empty: gethostname)"},
    {"executor.tags", CCM_CFG_STRING, "", "comma-separated tags of this system"},
    {"executor.capacity", CCM_CFG_INT, "4", "most agents running at once"},
    {"executor.poll_ms", CCM_CFG_INT, "250", "how often agents and the queue are checked"},
    {"executor.default_profile", CCM_CFG_STRING, "claude", "agent profile of tasks naming none"},
    {"executor.profiles_file", CCM_CFG_STRING, "{home}/profiles.json",
     "extra agent profiles (JSON object of name: profile)"},
    {"executor.tmux_socket", CCM_CFG_STRING, "{home}/run/tmux.sock", "ccm's own tmux server"},
    {"executor.worktrees", CCM_CFG_STRING, "{home}/worktrees", "where task worktrees live"},
    {"executor.logs", CCM_CFG_STRING, "{home}/logs", "full agent output, one file per task"},
    {"executor.outbox", CCM_CFG_STRING, "{home}/run/executor-outbox",
     "writes the store did not answer, kept across a restart until it does"},
    {"executor.kill_grace_ms", CCM_CFG_INT, "3000", "SIGTERM to SIGKILL delay"},
    {"executor.claude_config_dir", CCM_CFG_STRING, "",
     "Claude Code config dir for trust pre-acceptance (empty: $CLAUDE_CONFIG_DIR or ~)"},
    {"hooks.socket", CCM_CFG_STRING, "{home}/run/hooks.sock",
     "where ccm-hook hands events to ccm-hooks (a unix socket)"},
    {"hooks.spool", CCM_CFG_STRING, "{home}/spool",
     "events spooled by ccm-hook, and the ingester's journal"},
    {"hooks.batch_max", CCM_CFG_INT, "5000", "most hook events in one store write"},
    {"hooks.policies", CCM_CFG_STRING, "{home}/policies.json",
     "safety rules for tool use (see services/hooks/hooks_policy.c)"},
    {"hooks.automations", CCM_CFG_STRING, "{home}/automations.json",
     "on an event matching X, do Y (see services/hooks/hooks_auto.c)"},
    {"gateway.bind", CCM_CFG_STRING, "127.0.0.1",
     "the gateway's address; any but loopback needs a token (ccm gateway token)"},
    {"gateway.port", CCM_CFG_INT, "8765", "the gateway's HTTP/WebSocket port (0: any free one)"},
    {"gateway.token_file", CCM_CFG_STRING, "{home}/gateway.token",
     "the gateway's token (written by ccm gateway token, mode 0600)"},
    {"gateway.origins", CCM_CFG_STRING, "",
     "comma-separated extra origins allowed to open the WebSocket"},
    {"gateway.web_root", CCM_CFG_STRING, "",
     "the web UI's files (empty: share/ccm/web next to the binary, else the source tree)"},
    {"gateway.max_frame", CCM_CFG_INT, "65536", "largest WebSocket message from a client, bytes"},
    {"gateway.rate", CCM_CFG_INT, "50", "requests per second per connection (burst 2x)"},
    {"gateway.queue_max", CCM_CFG_INT, "4096",
     "events a live client may fall behind before it is told to resync"},
    {"gateway.ring", CCM_CFG_INT, "16384", "recent events the gateway keeps for its clients"},
    {"gateway.workers", CCM_CFG_INT, "4",
     "most threads running snapshots and commands (one at idle, more as requests wait)"},
    {"gateway.max_fds", CCM_CFG_INT, "4096",
     "the gateway's open-file limit (clients + its own); lws's tables grow with it"},
    {"gateway.terminal_ms", CCM_CFG_INT, "250", "how often a watched terminal is captured"},
    {"gateway.sndbuf", CCM_CFG_INT, "262144",
     "kernel send buffer per client, bytes (0: the kernel's own): bounds what a slow reader holds"},
    {"hooks.ask_timeout_ms", CCM_CFG_INT, "300000",
     "how long a permission request asked by a policy waits for an answer"},
    {"sync.credentials", CCM_CFG_STRING, "{home}/sync.json",
     "the hub's URL, anon key and the user's tokens (mode 0600; ccm sync login writes it)"},
    {"sync.system_id", CCM_CFG_STRING, "",
     "this system's id on the hub (empty: the one registered for this machine)"},
    {"sync.batch", CCM_CFG_INT, "500", "most rows in one upsert to the hub"},
    {"sync.parallel", CCM_CFG_INT, "4", "most requests to the hub in flight"},
    {"sync.pull_ms", CCM_CFG_INT, "2000", "how often tasks, results and skills are pulled"},
    {"sync.timeout_ms", CCM_CFG_INT, "15000", "longest a request to the hub may take"},
    {"sync.backoff_base_ms", CCM_CFG_INT, "500", "first wait after a transient failure"},
    {"sync.backoff_max_ms", CCM_CFG_INT, "30000", "longest wait between retries"},
    {"sync.max_retries", CCM_CFG_INT, "50",
     "retries of a row the hub refuses for a missing parent (23503) before it is parked"},
    {"sync.skills_dir", CCM_CFG_STRING, "",
     "where pulled skills are written as NAME/SKILL.md (empty: ~/.claude/skills)"},
    {NULL, CCM_CFG_STRING, NULL, NULL}};

#define S_NKEYS (sizeof s_keys / sizeof s_keys[0] - 1)

struct _ccm_config_t {
    char *home;
    char *values[S_NKEYS];  //  expanded strings; ints and bools are validated
};

static int
s_index (const char *key)
{
    for (size_t i = 0; i < S_NKEYS; i++)
        if (strcmp (s_keys[i].key, key) == 0)
            return (int) i;
    return -1;
}

static char *s_printf (const char *format, ...) __attribute__ ((format (printf, 1, 2)));

static char *
s_printf (const char *format, ...)
{
    va_list args;
    va_start (args, format);
    char *text = NULL;
    if (vasprintf (&text, format, args) < 0)
        text = NULL;
    va_end (args);
    return text;
}

//  Replaces every "{home}" in value; caller owns the result.
static char *
s_expand (const char *value, const char *home)
{
    size_t cap = strlen (value) + 1;
    for (const char *p = strstr (value, "{home}"); p; p = strstr (p + 6, "{home}"))
        cap += strlen (home);
    char *out = malloc (cap);
    if (!out)
        return NULL;
    char *w = out;
    for (const char *p = value; *p;) {
        if (strncmp (p, "{home}", 6) == 0) {
            w = stpcpy (w, home);
            p += 6;
        }
        else
            *w++ = *p++;
    }
    *w = 0;
    return out;
}

//  Checks that text is a valid value for key i; returns NULL or a message.
static char *
s_check (int i, const char *text, const char *origin)
{
    if (s_keys[i].type == CCM_CFG_INT) {
        char *end;
        errno = 0;
        long long n = strtoll (text, &end, 10);
        if (errno || end == text || *end || n < 0)
            return s_printf ("%s: key '%s' must be a non-negative integer, got '%s'", origin,
                             s_keys[i].key, text);
    }
    else if (s_keys[i].type == CCM_CFG_BOOL) {
        if (strcmp (text, "true") && strcmp (text, "false") && strcmp (text, "1")
            && strcmp (text, "0"))
            return s_printf ("%s: key '%s' must be true or false, got '%s'", origin, s_keys[i].key,
                             text);
    }
    return NULL;
}

static char *
s_set (ccm_config_t *self, int i, const char *text, const char *origin)
{
    char *problem = s_check (i, text, origin);
    if (problem)
        return problem;
    free (self->values[i]);
    self->values[i] = s_expand (text, self->home);
    return NULL;
}

//  Applies one JSON member (nested objects flatten to dotted keys).
static char *
s_apply_json (ccm_config_t *self, const char *prefix, cJSON *object, const char *origin)
{
    cJSON *item;
    cJSON_ArrayForEach (item, object)
    {
        char key[256];
        snprintf (key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", item->string);
        int i = s_index (key);
        if (cJSON_IsObject (item) && i < 0) {
            char *problem = s_apply_json (self, key, item, origin);
            if (problem)
                return problem;
            continue;
        }
        if (i < 0)
            return s_printf ("%s: unknown key '%s'", origin, key);
        char number[32];
        const char *text = NULL;
        if (s_keys[i].type == CCM_CFG_STRING && cJSON_IsString (item))
            text = item->valuestring;
        else if (s_keys[i].type == CCM_CFG_INT && cJSON_IsNumber (item)
                 && item->valuedouble == (double) (long long) item->valuedouble) {
            snprintf (number, sizeof number, "%lld", (long long) item->valuedouble);
            text = number;
        }
        else if (s_keys[i].type == CCM_CFG_BOOL && cJSON_IsBool (item))
            text = cJSON_IsTrue (item) ? "true" : "false";
        if (!text)
            return s_printf ("%s: key '%s' must be %s", origin, key,
                             s_keys[i].type == CCM_CFG_STRING ? "a string"
                             : s_keys[i].type == CCM_CFG_INT  ? "an integer"
                                                              : "a boolean");
        char *problem = s_set (self, i, text, origin);
        if (problem)
            return problem;
    }
    return NULL;
}

static char *
s_load_file (ccm_config_t *self)
{
    char *path = s_printf ("%s/config.json", self->home);
    if (!path)
        return strdup ("out of memory");
    int error_no;
    cJSON *json = ccm_json_read_file (path, &error_no);
    char *problem = NULL;
    if (error_no)
        problem = error_no == ENOENT ? NULL : s_printf ("%s: %s", path, strerror (error_no));
    else if (!cJSON_IsObject (json))
        problem = s_printf ("%s: not a JSON object", path);
    else
        problem = s_apply_json (self, "", json, path);
    cJSON_Delete (json);
    free (path);
    return problem;
}

void
ccm_config_env_name (const char *key, char *buf, size_t len)
{
    size_t w = (size_t) snprintf (buf, len, "CCM_");
    for (const char *p = key; *p && w + 1 < len; p++)
        buf[w++] = *p == '.' ? '_' : (char) toupper ((unsigned char) *p);
    buf[w < len ? w : len - 1] = 0;
}

ccm_config_t *
ccm_config_load (const char *home, char **error)
{
    *error = NULL;
    ccm_config_t *self = calloc (1, sizeof *self);
    if (!self) {
        *error = strdup ("out of memory");
        return NULL;
    }
    if (!home || !*home)
        home = getenv ("CCM_HOME");
    if (home && *home)
        self->home = strdup (home);
    else
        self->home = s_printf ("%s/.ccm", getenv ("HOME") ? getenv ("HOME") : "/tmp");
    //  Trailing slashes would double up in derived paths.
    for (size_t len = strlen (self->home); len > 1 && self->home[len - 1] == '/'; len--)
        self->home[len - 1] = 0;
    for (size_t i = 0; i < S_NKEYS; i++)
        self->values[i] = s_expand (s_keys[i].fallback, self->home);

    char *problem = s_load_file (self);
    for (size_t i = 0; !problem && i < S_NKEYS; i++) {
        char name[128];
        ccm_config_env_name (s_keys[i].key, name, sizeof name);
        const char *text = getenv (name);
        if (text)
            problem = s_set (self, (int) i, text, name);
    }
    if (!problem && ccm_log_level_parse (self->values[s_index ("log_level")]) < 0)
        problem = s_printf ("log_level: must be error, warn, info or debug");
    if (problem) {
        *error = problem;
        ccm_config_destroy (&self);
    }
    return self;
}

void
ccm_config_destroy (ccm_config_t **self_p)
{
    if (self_p && *self_p) {
        ccm_config_t *self = *self_p;
        for (size_t i = 0; i < S_NKEYS; i++)
            free (self->values[i]);
        free (self->home);
        free (self);
        *self_p = NULL;
    }
}

const char *
ccm_config_home (ccm_config_t *self)
{
    return self->home;
}

const char *
ccm_config_str (ccm_config_t *self, const char *key)
{
    int i = s_index (key);
    assert (i >= 0);
    return self->values[i];
}

int64_t
ccm_config_int (ccm_config_t *self, const char *key)
{
    return strtoll (ccm_config_str (self, key), NULL, 10);
}

bool
ccm_config_bool (ccm_config_t *self, const char *key)
{
    const char *text = ccm_config_str (self, key);
    return strcmp (text, "true") == 0 || strcmp (text, "1") == 0;
}

const ccm_config_key_t *
ccm_config_keys (void)
{
    return s_keys;
}

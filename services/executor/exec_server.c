/*  exec_server: the executor's object and its loop (zloop).

    exec_new registers the machine with the store, reconciles with the
    tmux windows a previous run left, and connects to the router; exec_run
    turns the loop until a signal. On the loop nothing waits: store
    requests are asynchronous (exec_store), git and tmux run in threads
    (exec_work), so heartbeats go out on time however busy it gets.

    Each tick (executor.poll_ms) reads every pane, enforces timeouts,
    cancellations and leases, and beats to the router (exec_dispatch), or
    claims queued tasks itself (executor.dispatch "direct"). The store's
    task events wake it at once.                                          */

#include "exec_internal.h"

#include "ccm_bus.h"
#include "ccm_log.h"
#include "ccm_msg.h"
#include "ccm_notify.h"
#include "ccm_proc.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_VERIFY_MS  (10 * 60 * 1000)  //  contexts are re-verified this often
#define S_REFRESH_MS 2000              //  projects are read again this often
#define S_WINDOW     32                //  store requests in flight at once

struct _exec_server_t {
    exec_t exec;
    zsock_t *events;  //  SUB: the store's task., project. and agents.updated events
    int64_t poll_ms;
    int64_t next_refresh_ms;
    bool watchdog;
};

//  --------------------------------------------------------------------------
//  Projects and contexts

//  Whether this executor holds the project: every one present here, or
//  only those executor.projects names. An entry NAME=PATH also says where
//  the project is on this machine (its clone here), written into path;
//  otherwise path is "" and the store's path counts.
static bool
s_holds (exec_t *self, const char *name, char *path, size_t size)
{
    *path = 0;
    const char *list = ccm_config_str (self->config, "executor.projects");
    if (!*list)
        return true;
    size_t len = strlen (name);
    for (const char *at = list; at && *at; at = strchr (at, ',') ? strchr (at, ',') + 1 : NULL) {
        if (strncmp (at, name, len) != 0)
            continue;
        if (at[len] == ',' || at[len] == '\0')
            return true;
        if (at[len] == '=') {
            const char *end = strchr (at + len + 1, ',');
            size_t n = end ? (size_t) (end - at - len - 1) : strlen (at + len + 1);
            snprintf (path, size, "%.*s", (int) n, at + len + 1);
            return true;
        }
    }
    return false;
}

static const char *
s_str (cJSON *obj, const char *key)
{
    return cJSON_GetStringValue (cJSON_GetObjectItemCaseSensitive (obj, key));
}

//  Keeps the projects this executor holds, with this machine's paths.
static void
s_take_projects (exec_t *self, cJSON *projects)
{
    cJSON *held = cJSON_CreateArray ();
    cJSON *project;
    cJSON_ArrayForEach (project, projects)
    {
        const char *name = s_str (project, "name");
        char local[PATH_MAX];
        if (!name || !s_holds (self, name, local, sizeof local))
            continue;  //  left to other executors
        cJSON *copy = cJSON_Duplicate (project, true);
        //  This machine's clone, when it is elsewhere than the store says.
        if (*local)
            cJSON_ReplaceItemInObjectCaseSensitive (copy, "path", cJSON_CreateString (local));
        cJSON_AddItemToArray (held, copy);
    }
    cJSON_Delete (self->projects);
    self->projects = held;
}

typedef struct {
    exec_t *self;
    cJSON *projects;  //  a copy, to read off the loop
    cJSON *contexts;  //  built off the loop: [{key, body}]
    bool verify;
} s_refresh_t;

//  In a thread: what each project's repository says (git runs here).
static void
s_facts_run (void *arg)
{
    s_refresh_t *refresh = arg;
    refresh->contexts = cJSON_CreateArray ();
    cJSON *project;
    cJSON_ArrayForEach (project, refresh->projects)
    {
        const char *name = s_str (project, "name"), *path = s_str (project, "path");
        struct stat st;
        if (!name || !path || stat (path, &st))
            continue;  //  not on this machine
        //  Cheap facts first: the repository, its branch, its last fetch
        //  (git's FETCH_HEAD, written by every fetch and pull).
        char marker[PATH_MAX + 24];
        snprintf (marker, sizeof marker, "%s/.git", path);
        bool repo = stat (marker, &st) == 0;
        snprintf (marker, sizeof marker, "%s/.git/FETCH_HEAD", path);
        time_t fetched = stat (marker, &st) == 0 ? st.st_mtime : 0;
        char *branch = repo ? exec_git_branch (path) : NULL;
        char *seen = zsys_sprintf ("%d\t%s\t%s\t%lld", repo, branch ? branch : "", path,
                                   (long long) fetched);
        //  Then what costs a git run: how far the branch is behind its
        //  upstream, as last fetched. Behind is stale: routed to only when
        //  nothing fresher fits. No repository is an error.
        int behind = branch ? exec_git_behind (path) : -1;
        const char *status = !repo ? "error" : behind > 0 ? "stale" : "active";
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "system_id", refresh->self->system_id);
        cJSON_AddStringToObject (body, "project_name", name);
        cJSON_AddStringToObject (body, "project_path", path);
        if (s_str (project, "repo_url"))
            cJSON_AddStringToObject (body, "repo_url", s_str (project, "repo_url"));
        if (branch)
            cJSON_AddStringToObject (body, "repo_branch", branch);
        cJSON_AddStringToObject (body, "status", status);
        char when[25];
        ccm_now_iso (when);
        cJSON_AddStringToObject (body, "last_verified", when);
        if (fetched) {
            struct tm tm;
            gmtime_r (&fetched, &tm);
            strftime (when, sizeof when, "%Y-%m-%dT%H:%M:%S.000Z", &tm);
            cJSON_AddStringToObject (body, "last_pulled", when);
        }
        cJSON *metadata = cJSON_AddObjectToObject (body, "metadata");
        if (behind >= 0)
            cJSON_AddNumberToObject (metadata, "behind", behind);
        cJSON *item = cJSON_CreateObject ();
        cJSON_AddStringToObject (item, "name", name);
        cJSON_AddStringToObject (item, "seen", seen);
        cJSON_AddItemToObject (item, "body", body);
        cJSON_AddItemToArray (refresh->contexts, item);
        zstr_free (&seen);
        free (branch);
    }
}

typedef struct {
    exec_t *self;
    char *name;
    char *seen;
} s_context_t;

static void
s_context_done (void *arg, int rc, cJSON *reply)
{
    (void) reply;
    s_context_t *context = arg;
    if (rc == 0)
        zhashx_update (context->self->contexts, context->name, strdup (context->seen));
    free (context->name);
    free (context->seen);
    free (context);
}

//  On the loop: records each context that changed (and all of them every
//  S_VERIFY_MS: their last_verified), not at every refresh: each write is
//  an event.
static void
s_facts_done (void *arg)
{
    s_refresh_t *refresh = arg;
    exec_t *self = refresh->self;
    self->refreshing = false;
    cJSON *item;
    cJSON_ArrayForEach (item, refresh->contexts)
    {
        const char *name = s_str (item, "name"), *seen = s_str (item, "seen");
        const char *last = zhashx_lookup (self->contexts, name);
        if (!refresh->verify && last && strcmp (last, seen) == 0)
            continue;
        s_context_t *context = calloc (1, sizeof *context);
        context->self = self;
        context->name = strdup (name);
        context->seen = strdup (seen);
        exec_store_write (self, "context.upsert",
                          cJSON_DetachItemFromObjectCaseSensitive (item, "body"), s_context_done,
                          context);
    }
    cJSON_Delete (refresh->contexts);
    cJSON_Delete (refresh->projects);
    free (refresh);
}

static void
s_projects_read (void *arg, int rc, cJSON *reply)
{
    exec_t *self = arg;
    if (rc) {
        if (rc != CCM_ECLOSED) {
            self->refreshing = false;
            ccm_warn ("project.list: %s", ccm_client_strerror (rc, reply));
        }
        return;
    }
    s_take_projects (self, cJSON_GetObjectItemCaseSensitive (reply, "projects"));
    s_refresh_t *refresh = calloc (1, sizeof *refresh);
    refresh->self = self;
    refresh->projects = cJSON_Duplicate (self->projects, true);
    int64_t now = ccm_mono_ms ();
    refresh->verify = now - self->contexts_verified_ms >= S_VERIFY_MS;
    if (refresh->verify)
        self->contexts_verified_ms = now;
    exec_work_submit (self->work, s_facts_run, s_facts_done, refresh);
}

//  Reads the store's projects again, then records the contexts held here.
static void
s_refresh (exec_t *self)
{
    if (self->refreshing)
        return;
    self->refreshing = true;
    exec_store_read (self, "project.list", cJSON_CreateObject (), s_projects_read, self);
}

//  --------------------------------------------------------------------------
//  Direct dispatch: the executor claims tasks itself

static void
s_claimed (void *arg, int rc, cJSON *reply)
{
    exec_t *self = arg;
    if (rc == CCM_ECLOSED)
        return;
    self->claiming = false;
    cJSON *task;
    cJSON_ArrayForEach (task, cJSON_GetObjectItemCaseSensitive (reply, "tasks"))
    {
        const char *id = s_str (task, "id");
        cJSON *attempts = cJSON_GetObjectItemCaseSensitive (task, "attempts");
        if (id)
            exec_agents_run (self, id, cJSON_IsNumber (attempts) ? (int) attempts->valuedouble : 0);
    }
}

//  Without a router, the executor moves failed tasks due for their retry
//  (the store's schedule) back to the queue itself, only from failed.
static void
s_retries_due (void *arg, int rc, cJSON *reply)
{
    exec_t *self = arg;
    if (rc == CCM_ECLOSED)
        return;
    self->retrying = false;
    cJSON *task;
    cJSON_ArrayForEach (task, cJSON_GetObjectItemCaseSensitive (reply, "tasks"))
    {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", s_str (task, "id") ? s_str (task, "id") : "");
        cJSON_AddStringToObject (body, "to", "queued");
        cJSON_AddStringToObject (body, "from", "failed");
        cJSON_AddStringToObject (body, "reason", "retry after a failed attempt");
        exec_store_write (self, "task.transition", body, NULL, NULL);
    }
}

static void
s_claim (exec_t *self)
{
    if (!self->retrying) {
        self->retrying = true;
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddBoolToObject (body, "retry_due", true);
        cJSON_AddNumberToObject (body, "limit", 100);
        exec_store_read (self, "task.list", body, s_retries_due, self);
    }
    int starting = 0;
    for (exec_attempt_t *seen = zhashx_first (self->attempts); seen;
         seen = zhashx_next (self->attempts))
        starting += strcmp (seen->state, "starting") == 0;
    int free_slots = self->capacity - self->nagents - starting;
    if (self->claiming || free_slots <= 0 || cJSON_GetArraySize (self->projects) == 0)
        return;
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "system_id", self->system_id);
    cJSON *names = cJSON_AddArrayToObject (body, "projects");
    cJSON *project;
    //  Every project with a path, even one missing here: its tasks then fail
    //  with the reason, rather than wait forever.
    cJSON_ArrayForEach (project, self->projects)
    {
        if (s_str (project, "path") && s_str (project, "name"))
            cJSON_AddItemToArray (names, cJSON_CreateString (s_str (project, "name")));
    }
    cJSON_AddNumberToObject (body, "limit", free_slots);
    self->claiming = true;
    exec_store_write (self, "task.claim", body, s_claimed, self);
}

//  --------------------------------------------------------------------------
//  The loop

static int
s_tick (zloop_t *loop, int timer_id, void *arg)
{
    (void) loop, (void) timer_id;
    exec_server_t *server = arg;
    exec_t *self = &server->exec;
    if (server->watchdog)
        ccm_notify ("WATCHDOG=1");
    if (self->router)
        exec_dispatch_tick (self);
    exec_agents_watch (self);
    exec_agents_check_cancelled (self);
    int64_t now = ccm_mono_ms ();
    if (now >= server->next_refresh_ms) {
        s_refresh (self);
        server->next_refresh_ms = now + S_REFRESH_MS;
    }
    if (!self->router)
        s_claim (self);
    exec_store_check (self);
    exec_agents_forget (self);
    return zsys_interrupted ? -1 : 0;
}

//  The store's events wake the loop at once: a newly queued task is
//  claimed, a cancellation seen, without waiting for the next tick. The
//  tick still runs, so a dropped PUB only delays, never loses, either.
static int
s_event (zloop_t *loop, zsock_t *reader, void *arg)
{
    (void) loop;
    exec_server_t *server = arg;
    exec_t *self = &server->exec;
    bool projects = false, tasks = false;
    while (zsock_events (reader) & ZMQ_POLLIN) {
        zmsg_t *msg = zmsg_recv (reader);
        zframe_t *topic = msg ? zmsg_first (msg) : NULL;
        zframe_t *seq = topic ? zmsg_next (msg) : NULL;  //  [topic][seq][json]
        zframe_t *body = seq ? zmsg_next (msg) : NULL;
        if (topic && zframe_size (topic) > 8 && memcmp (zframe_data (topic), "project.", 8) == 0)
            projects = true;
        else if (topic && body && zframe_streq (topic, "agents.updated"))
            exec_agents_changed (self, (const char *) zframe_data (body), zframe_size (body));
        else
            tasks = true;
        zmsg_destroy (&msg);
    }
    if (projects) {
        s_refresh (self);
        server->next_refresh_ms = ccm_mono_ms () + S_REFRESH_MS;
    }
    if (tasks) {
        exec_agents_check_cancelled (self);
        if (!self->router)
            s_claim (self);
    }
    return 0;
}

//  --------------------------------------------------------------------------
//  Start-up (synchronous: nothing to serve yet)

static void
s_read_machine_id (exec_t *self, char *out, size_t len)
{
    const char *configured = ccm_config_str (self->config, "executor.machine_id");
    if (*configured) {
        snprintf (out, len, "%s", configured);
        return;
    }
    FILE *file = fopen ("/etc/machine-id", "r");
    if (file && fgets (out, (int) len, file))
        ccm_proc_chomp (out);
    else
        snprintf (out, len, "host-%.200s", self->hostname);
    if (file)
        fclose (file);
}

static int
s_register (exec_t *self, ccm_client_t *client)
{
    const char *name = ccm_config_str (self->config, "executor.hostname");
    if (*name)
        snprintf (self->hostname, sizeof self->hostname, "%s", name);
    else if (gethostname (self->hostname, sizeof self->hostname))
        snprintf (self->hostname, sizeof self->hostname, "localhost");
    char machine_id[256];
    s_read_machine_id (self, machine_id, sizeof machine_id);
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "hostname", self->hostname);
    cJSON_AddStringToObject (body, "machine_id", machine_id);
    cJSON_AddNumberToObject (body, "capacity", self->capacity);
    cJSON *tags = cJSON_AddArrayToObject (body, "tags");
    char *list = strdup (ccm_config_str (self->config, "executor.tags"));
    for (char *tag = strtok (list, ","); tag; tag = strtok (NULL, ","))
        if (*tag)
            cJSON_AddItemToArray (tags, cJSON_CreateString (tag));
    free (list);
    ccm_client_add_idem (body);
    cJSON *reply = NULL;
    int rc = ccm_client_call (client, "system.register", body, &reply);
    if (rc && rc != CCM_ETIMEOUT)
        ccm_warn ("system.register: %s", ccm_client_strerror (rc, reply));
    cJSON_Delete (body);
    const char *id = rc ? NULL : s_str (cJSON_GetObjectItemCaseSensitive (reply, "system"), "id");
    if (id)
        snprintf (self->system_id, sizeof self->system_id, "%s", id);
    cJSON_Delete (reply);
    return id ? 0 : -1;
}

static cJSON *
s_load_profiles (const char *path, char **error)
{
    *error = NULL;
    int error_no;
    cJSON *json = ccm_json_read_file (path, &error_no);
    if (error_no)
        return NULL;  //  no profiles file: the built-in profiles only
    if (!cJSON_IsObject (json)) {
        ccm_set_error (error, "%s: not a JSON object of profiles", path);
        cJSON_Delete (json);
        return NULL;
    }
    cJSON *profile;
    cJSON_ArrayForEach (profile, json)
    {
        cJSON *argv = cJSON_GetObjectItemCaseSensitive (profile, "argv");
        cJSON *mode = cJSON_GetObjectItemCaseSensitive (profile, "mode");
        bool ok = cJSON_IsArray (argv) && cJSON_GetArraySize (argv) > 0;
        cJSON *item;
        cJSON_ArrayForEach (item, argv) ok = ok && cJSON_IsString (item);
        ok = ok
             && (!mode
                 || (cJSON_IsString (mode)
                     && (strcmp (mode->valuestring, "headless") == 0
                         || strcmp (mode->valuestring, "interactive") == 0)));
        if (!ok) {
            ccm_set_error (error,
                           "%s: profile '%s' needs \"argv\": [strings] and \"mode\": "
                           "\"interactive\" or \"headless\"",
                           path, profile->string);
            cJSON_Delete (json);
            return NULL;
        }
    }
    return json;
}

//  ccm-agent, next to this binary.
static char *
s_agent_bin (void)
{
    char exe[PATH_MAX];
    ssize_t len = readlink ("/proc/self/exe", exe, sizeof exe - 1);
    if (len <= 0)
        return NULL;
    exe[len] = 0;
    return zsys_sprintf ("%.*s/ccm-agent", (int) (strrchr (exe, '/') - exe), exe);
}

exec_server_t *
exec_new (ccm_config_t *config)
{
    exec_server_t *server = calloc (1, sizeof *server);
    exec_t *self = &server->exec;
    self->config = config;
    self->contexts = zhashx_new ();
    zhashx_set_destructor (self->contexts, (zhashx_destructor_fn *) zstr_free);
    self->attempts = zhashx_new ();
    zhashx_set_destructor (self->attempts, (zhashx_destructor_fn *) zstr_free);
    self->after = zhashx_new ();
    zhashx_set_destructor (self->after, (zhashx_destructor_fn *) zstr_free);
    self->unacked = zlistx_new ();
    self->projects = cJSON_CreateArray ();
    self->capacity = (int) ccm_config_int (config, "executor.capacity");
    char *error = NULL;
    self->profiles = s_load_profiles (ccm_config_str (config, "executor.profiles_file"), &error);
    self->agent_bin = s_agent_bin ();
    self->lease_dir = zsys_sprintf ("%s/run/lease", ccm_config_home (config));
    if (error) {
        ccm_error ("%s", error);
        free (error);
        exec_destroy (&server);
        return NULL;
    }
    if (!self->agent_bin || access (self->agent_bin, X_OK)) {
        ccm_error ("cannot find ccm-agent next to ccm-executor (%s)",
                   self->agent_bin ? self->agent_bin : "?");
        exec_destroy (&server);
        return NULL;
    }
    char run_dir[PATH_MAX];
    snprintf (run_dir, sizeof run_dir, "%s/run", ccm_config_home (config));
    const char *dirs[] = {ccm_config_str (config, "executor.logs"),
                          ccm_config_str (config, "executor.worktrees"), run_dir, self->lease_dir};
    for (int i = 0; i < 4; i++)
        if (mkdir (dirs[i], 0700) && errno != EEXIST) {
            ccm_error ("cannot create %s: %s", dirs[i], strerror (errno));
            exec_destroy (&server);
            return NULL;
        }
    //  Registration and reconciliation run before there is anything to
    //  serve, on a plain client: the loop starts once they are done.
    ccm_client_t *client = ccm_client_new (ccm_config_str (config, "store.endpoint"),
                                           (int) ccm_config_int (config, "bus.timeout_ms"),
                                           (int) ccm_config_int (config, "bus.retries"));
    while (!zsys_interrupted && (!client || s_register (self, client))) {
        const char *endpoint = ccm_config_str (config, "store.endpoint");
        if (strncmp (endpoint, "tcp://", 6) == 0)
            ccm_warn ("cannot register with the store at %s: no answer; the hub may be down or"
                      " out of reach, bus.server_key may not be the hub's key, or this"
                      " machine's key may not be trusted there ('ccm keys trust' on the hub);"
                      " retrying",
                      endpoint);
        else
            ccm_warn ("cannot register with the store; retrying");
        zclock_sleep (1000);
    }
    if (zsys_interrupted) {
        ccm_client_destroy (&client);
        exec_destroy (&server);
        return NULL;
    }
    self->loop = zloop_new ();
    self->work = exec_work_new (self->loop);
    //  Writes are resent until the store answers: never given up while we run.
    self->store = ccm_req_new (self->loop, ccm_config_str (config, "store.endpoint"),
                               (int) ccm_config_int (config, "bus.timeout_ms"), -1, S_WINDOW);
    if (!self->work || !self->store) {
        ccm_error ("cannot start the loop");
        ccm_client_destroy (&client);
        exec_destroy (&server);
        return NULL;
    }
    //  Writes kept by a previous run go first: a result recorded then must
    //  not be taken for a lost agent by the reconciliation below.
    exec_store_load (self);
    exec_claude_settings (self);
    cJSON *body = cJSON_CreateObject (), *reply = NULL;
    if (ccm_client_call (client, "project.list", body, &reply) == 0)
        s_take_projects (self, cJSON_GetObjectItemCaseSensitive (reply, "projects"));
    cJSON_Delete (body);
    cJSON_Delete (reply);
    server->poll_ms = ccm_config_int (config, "executor.poll_ms");
    if (strcmp (ccm_config_str (config, "executor.dispatch"), "router") == 0) {
        self->router_beat_ms = ccm_config_int (config, "router.heartbeat_ms");
        if (self->router_beat_ms < 10)
            self->router_beat_ms = 10;
        int64_t liveness = ccm_config_int (config, "router.liveness");
        self->lease_ms = self->router_beat_ms * (liveness > 1 ? liveness - 1 : 1);
        if (liveness <= 1)
            self->lease_ms = self->router_beat_ms / 2;
        if (server->poll_ms > self->router_beat_ms / 2)
            server->poll_ms = self->router_beat_ms / 2 > 5 ? self->router_beat_ms / 2 : 5;
        exec_dispatch_connect (self);
    }
    exec_agents_reconcile (self, client);
    ccm_client_destroy (&client);
    server->events = ccm_bus_sub_connect (ccm_config_str (config, "store.pub_endpoint"), "task.");
    if (server->events) {
        zsock_set_subscribe (server->events, "project.");
        zsock_set_subscribe (server->events, "agents.updated");
        zloop_reader (self->loop, server->events, s_event, server);
    }
    self->poll_ms = server->poll_ms;
    zloop_timer (self->loop, (size_t) server->poll_ms, 0, s_tick, server);
    server->watchdog = ccm_notify_watchdog_ms () > 0;
    server->next_refresh_ms = ccm_mono_ms () + S_REFRESH_MS;
    return server;
}

int
exec_run (exec_server_t *server)
{
    exec_t *self = &server->exec;
    ccm_info ("ready: system %s (%s), capacity %d%s%s", self->system_id, self->hostname,
              self->capacity, self->router ? ", tasks from the router at " : ", claiming tasks",
              self->router ? ccm_config_str (self->config, "router.endpoint") : "");
    if (self->router) {
        //  The first beat goes out before we say we serve.
        exec_dispatch_tick (self);
    }
    ccm_notify ("READY=1");
    zloop_start (self->loop);
    return 0;
}

void
exec_destroy (exec_server_t **server_p)
{
    if (server_p && *server_p) {
        exec_server_t *server = *server_p;
        exec_t *self = &server->exec;
        //  Agents keep running in tmux; a restarted executor adopts them.
        if (self->loop)
            ccm_info ("stopping; %d agent(s) left running in tmux", self->nagents);
        exec_work_destroy (&self->work);
        if (self->store)
            exec_store_close (self);
        zsock_destroy (&server->events);
        zsock_destroy (&self->router);
        zloop_destroy (&self->loop);
        for (int i = 0; i < self->nagents; i++)
            exec_agent_destroy (&self->agents[i]);
        free (self->agents);
        cJSON_Delete (self->projects);
        cJSON_Delete (self->profiles);
        free (self->claude_settings);
        zstr_free (&self->agent_bin);
        zstr_free (&self->lease_dir);
        zhashx_destroy (&self->contexts);
        zhashx_destroy (&self->attempts);
        zhashx_destroy (&self->after);
        zlistx_destroy (&self->unacked);
        free (server);
        *server_p = NULL;
    }
}

/*  bench/store: acknowledged hook-event writes per second through a real
    ccm-store, against the physical limit of SQLite on the same disk.

        build/bench/store [PATH-TO-ccm-store]

    Each store measurement starts ccm-store as its own process on a fresh
    temporary CCM_HOME, then 1, 4 or 16 client threads (each a DEALER with a
    bounded number of hook.add requests in flight) send batches of 1 or 100
    events for BENCH_SECONDS. Only events whose request got "ok" count. The
    store is stopped and its hook_events rows are counted: a count that
    differs from the acknowledged one fails the bench.

    The limit, measured in the same run: one process inserting into SQLite
    with the store's pragmas (WAL, the same synchronous), in transactions of
    1 and of 100 rows, into a bare table and into a database migrated by
    ccm-store itself (hook_events and its indexes; the store adds one events
    row per request, which the raw runs leave out).

    Every figure is the median of BENCH_REPS runs (default 3). The runs are
    interleaved (all configurations once, then again) so a noisy neighbour
    spreads over all of them instead of spoiling one.

    Knobs: BENCH_SECONDS (2), BENCH_REPS (3), BENCH_INFLIGHT (16 requests
    per client), BENCH_DIR (where the homes go; default $TMPDIR or /tmp),
    BENCH_KEEP=1 (keep the homes), CCM_BIN_DIR (where ccm-store is), and
    any CCM_STORE_* setting (e.g. CCM_STORE_SYNCHRONOUS, CCM_STORE_BATCH_MAX),
    which the store and the raw runs both follow.                         */

#include <cjson/cJSON.h>
#include <czmq.h>
#include <sqlite3.h>

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/vfs.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define S_TARGET     100000.0  //  acknowledged events/s, the target
#define S_MAX_REPS   9
#define S_CALL_MS    10000  //  longest wait for one reply before it counts as lost
#define S_START_MS   10000  //  longest wait for a store to answer ping
#define S_EVENT_MAX  1024   //  bytes of one event's JSON, with room to spare
#define S_NCLIENTS   3
#define S_NBATCHES   2
#define S_NRAW       4
#define S_TASK_ID    "3f2a9c1e-5b7d-4e8f-9a1b-2c3d4e5f6a7b"
#define S_SESSION_ID "b1f0c2d4-6e8a-4c1b-9d3f-5a7b9c1d3e5f"
#define S_FILE_PATH  "/home/dev/project/src/main.c"

//  The store's hook insert, word for word (services/store/store_server.c).
#define S_HOOK_INSERT                                                                              \
    "INSERT OR IGNORE INTO hook_events (uid, task_id, agent_id, system_id, session_id,"            \
    " hook_type, hook_timestamp, event_data, tool_name, file_path, success, created_at)"           \
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

//  A Claude Code PostToolUse payload of a typical size (about 330 bytes).
static const char s_event_data[] =
    "{\"session_id\":\"" S_SESSION_ID "\",\"hook_event_name\":\"PostToolUse\","
    "\"cwd\":\"/home/dev/project\",\"tool_name\":\"Bash\",\"tool_input\":{\"command\":"
    "\"make -j2 && ./run-tests --fast\",\"description\":\"Build and run the tests\"},"
    "\"tool_response\":{\"stdout\":\"all 42 tests passed\\n\",\"stderr\":\"\","
    "\"interrupted\":false},\"transcript_path\":\"/home/dev/.claude/projects/p/t.jsonl\"}";

static const int s_clients[S_NCLIENTS] = {1, 4, 16};
static const int s_batches[S_NBATCHES] = {1, 100};

typedef struct {
    char *store_bin;
    char *root;               //  temporary directory of every home
    const char *synchronous;  //  full or normal, as the store will use
    double seconds;
    int reps;
    int inflight;
    bool keep;
    int serial;  //  numbers homes and uids, so no two runs share one
} s_bench_t;

//  One ccm-store process and where its files are.
typedef struct {
    pid_t pid;
    char home[256];  //  ipc paths are short anyway: 107 bytes at most
    char endpoint[300];
    char db[300];
    char log[300];
} s_store_t;

//  One client thread of a store run.
typedef struct {
    const char *endpoint;
    int serial, index, batch, inflight;
    pthread_barrier_t *barrier;
    const int64_t *deadline_us;  //  set by the runner between the two barriers
    //  Results.
    int64_t events;    //  events in requests answered "ok"
    int64_t requests;  //  requests answered "ok"
    int64_t errors;    //  requests answered "error", or with a wrong count
    int64_t lost;      //  requests with no answer within S_CALL_MS
    int64_t last_us;   //  when the last reply came
    char problem[512];
} s_client_t;

static int64_t
s_now_us (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (int64_t) ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static double
s_median (double *values, int n)
{
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && values[j - 1] > values[j]; j--) {
            double swap = values[j];
            values[j] = values[j - 1];
            values[j - 1] = swap;
        }
    return n % 2 ? values[n / 2] : (values[n / 2 - 1] + values[n / 2]) / 2;
}

static int
s_remove_one (const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void) st, (void) flag, (void) ftw;
    return remove (path);
}

//  Removes path and everything under it, unless BENCH_KEEP is set.
static void
s_remove_tree (s_bench_t *bench, const char *path)
{
    if (!bench->keep && nftw (path, s_remove_one, 16, FTW_DEPTH | FTW_PHYS) && errno != ENOENT)
        fprintf (stderr, "bench/store: cannot remove %s: %s\n", path, strerror (errno));
}

//  Writes one hook event (as the wire carries it) to buf; returns its length.
static size_t
s_event (char *buf, size_t size, int serial, int client, int64_t n)
{
    int len = snprintf (buf, size,
                        "{\"uid\":\"r%d-c%d-e%lld\",\"hook_type\":\"PostToolUse\","
                        "\"task_id\":\"" S_TASK_ID "\",\"agent_id\":\"bench-%d\","
                        "\"session_id\":\"" S_SESSION_ID "\",\"tool_name\":\"Bash\","
                        "\"file_path\":\"" S_FILE_PATH "\",\"success\":true,\"event_data\":%s}",
                        serial, client, (long long) n, client, s_event_data);
    assert (len > 0 && (size_t) len < size);
    return (size_t) len;
}

//  Sends [verb][body] on sock and waits up to timeout_ms for the reply.
//  Returns the reply body (caller frees) with *ok set, or NULL on timeout.
static char *
s_call (zsock_t *sock, const char *verb, const char *body, int timeout_ms, bool *ok)
{
    zsock_set_rcvtimeo (sock, timeout_ms);
    if (zstr_sendx (sock, verb, body, NULL))
        return NULL;
    char *status = NULL, *reply = NULL;
    if (zstr_recvx (sock, &status, &reply, NULL) < 2) {
        zstr_free (&status);
        zstr_free (&reply);
        return NULL;
    }
    *ok = streq (status, "ok");
    zstr_free (&status);
    return reply;
}

static zsock_t *
s_dealer (const char *endpoint)
{
    zsock_t *sock = zsock_new (ZMQ_DEALER);
    if (!sock)
        return NULL;
    //  Every request is answered or counted as lost before close: nothing to linger for.
    zsock_set_linger (sock, 0);
    zsock_set_sndhwm (sock, 100000);
    zsock_set_rcvhwm (sock, 100000);
    if (zsock_connect (sock, "%s", endpoint)) {
        zsock_destroy (&sock);
        return NULL;
    }
    return sock;
}

//  Appends to envp (of capacity cap, at *n) every variable of environ except
//  the CCM_ ones the bench sets itself.
static void
s_env_copy (char **envp, size_t cap, size_t *n)
{
    static const char *const ours[] = {
        "CCM_HOME=",      "CCM_STORE_ENDPOINT=", "CCM_STORE_PUB_ENDPOINT=", "CCM_STORE_DB_PATH=",
        "CCM_LOG_LEVEL=", "NOTIFY_SOCKET=",      "WATCHDOG_USEC=",          NULL};
    for (char **e = environ; *e && *n + 8 < cap; e++) {
        bool skip = false;
        for (const char *const *o = ours; *o && !skip; o++)
            skip = strncmp (*e, *o, strlen (*o)) == 0;
        if (!skip)
            envp[(*n)++] = *e;
    }
}

//  Starts ccm-store on a fresh home under the bench's root and waits until
//  it answers ping. Returns 0, or -1 with the reason printed.
static int
s_store_start (s_bench_t *bench, s_store_t *store)
{
    memset (store, 0, sizeof *store);
    snprintf (store->home, sizeof store->home, "%s/home-%03d", bench->root, ++bench->serial);
    snprintf (store->endpoint, sizeof store->endpoint, "ipc://%s/run/store.ipc", store->home);
    snprintf (store->db, sizeof store->db, "%s/ccm.db", store->home);
    snprintf (store->log, sizeof store->log, "%s/store.log", store->home);
    if (mkdir (store->home, 0700)) {
        fprintf (stderr, "bench/store: %s: %s\n", store->home, strerror (errno));
        return -1;
    }
    char home[320], endpoint[320], pub[320], db[320];
    snprintf (home, sizeof home, "CCM_HOME=%s", store->home);
    snprintf (endpoint, sizeof endpoint, "CCM_STORE_ENDPOINT=%s", store->endpoint);
    snprintf (pub, sizeof pub, "CCM_STORE_PUB_ENDPOINT=ipc://%s/run/events.ipc", store->home);
    snprintf (db, sizeof db, "CCM_STORE_DB_PATH=%s", store->db);
    char *envp[4096];
    size_t n = 0;
    s_env_copy (envp, sizeof envp / sizeof envp[0], &n);
    envp[n++] = home;
    envp[n++] = endpoint;
    envp[n++] = pub;
    envp[n++] = db;
    //  info: the store's last line counts its requests and commits.
    envp[n++] = "CCM_LOG_LEVEL=info";
    envp[n] = NULL;

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init (&actions);
    posix_spawn_file_actions_addopen (&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen (&actions, 2, store->log, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_adddup2 (&actions, 2, 1);
    char *argv[] = {bench->store_bin, NULL};
    int rc = posix_spawn (&store->pid, bench->store_bin, &actions, NULL, argv, envp);
    posix_spawn_file_actions_destroy (&actions);
    if (rc) {
        fprintf (stderr, "bench/store: cannot start %s: %s\n", bench->store_bin, strerror (rc));
        store->pid = 0;
        return -1;
    }
    zsock_t *sock = s_dealer (store->endpoint);
    if (!sock) {
        fprintf (stderr, "bench/store: cannot connect to %s\n", store->endpoint);
        return -1;
    }
    int64_t deadline = s_now_us () + S_START_MS * 1000;
    bool ready = false;
    while (!ready && !zsys_interrupted && s_now_us () < deadline) {
        int status;
        if (waitpid (store->pid, &status, WNOHANG) == store->pid) {
            store->pid = 0;
            break;
        }
        bool ok = false;
        char *reply = s_call (sock, "ping", "{\"v\":1}", 100, &ok);
        ready = reply && ok;
        zstr_free (&reply);
    }
    zsock_destroy (&sock);
    if (!ready)
        fprintf (stderr, "bench/store: ccm-store did not answer ping (log: %s)\n", store->log);
    return ready ? 0 : -1;
}

//  Stops the store with SIGTERM and reaps it. Returns 0 if it exited 0
//  within 10 s; otherwise kills it and returns -1.
static int
s_store_stop (s_store_t *store)
{
    if (!store->pid)
        return -1;  //  never started, or already gone: s_store_start said why
    kill (store->pid, SIGTERM);
    int status = 0;
    pid_t pid = 0;
    for (int i = 0; i < 1000 && pid == 0; i++) {
        pid = waitpid (store->pid, &status, WNOHANG);
        if (pid == 0)
            usleep (10000);
    }
    if (pid == 0) {
        kill (store->pid, SIGKILL);
        waitpid (store->pid, &status, 0);
    }
    store->pid = 0;
    if (pid <= 0 || !WIFEXITED (status) || WEXITSTATUS (status) != 0) {
        fprintf (stderr, "bench/store: ccm-store did not exit cleanly on SIGTERM (log: %s)\n",
                 store->log);
        return -1;
    }
    return 0;
}

//  Reads the store's own count of commits from its log ("stopping: ...").
static long long
s_store_commits (s_store_t *store)
{
    FILE *file = fopen (store->log, "r");
    if (!file)
        return -1;
    long long requests, refused, commits = -1;
    char line[1024];
    while (fgets (line, sizeof line, file)) {
        const char *at = strstr (line, "stopping: ");
        if (at
            && sscanf (at, "stopping: %lld requests, %lld refused, %lld commits", &requests,
                       &refused, &commits)
                   != 3)
            commits = -1;
    }
    fclose (file);
    return commits;
}

//  CPU seconds (user + system) used so far by process pid, 0 for this one.
static double
s_cpu_seconds (pid_t pid)
{
    if (pid == 0) {
        struct rusage usage;
        getrusage (RUSAGE_SELF, &usage);
        return (double) (usage.ru_utime.tv_sec + usage.ru_stime.tv_sec)
               + (double) (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
    }
    char path[64], text[1024];
    snprintf (path, sizeof path, "/proc/%d/stat", (int) pid);
    FILE *file = fopen (path, "r");
    size_t len = file ? fread (text, 1, sizeof text - 1, file) : 0;
    if (file)
        fclose (file);
    text[len] = 0;
    //  Fields 14 and 15 (utime, stime) follow the command name in parentheses.
    const char *at = strrchr (text, ')');
    unsigned long long utime = 0, stime = 0;
    if (!at
        || sscanf (at + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime, &stime)
               != 2)
        return 0;
    return (double) (utime + stime) / (double) sysconf (_SC_CLK_TCK);
}

//  Counts rows of table in the database at path, opened read-only.
static int64_t
s_count_rows (const char *path, const char *table)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *stmt = NULL;
    int64_t count = -1;
    char sql[128];
    snprintf (sql, sizeof sql, "SELECT count(*) FROM %s", table);
    if (sqlite3_open_v2 (path, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK
        && sqlite3_prepare_v2 (db, sql, -1, &stmt, NULL) == SQLITE_OK
        && sqlite3_step (stmt) == SQLITE_ROW)
        count = sqlite3_column_int64 (stmt, 0);
    else
        fprintf (stderr, "bench/store: %s: %s\n", path, db ? sqlite3_errmsg (db) : "no memory");
    sqlite3_finalize (stmt);
    sqlite3_close (db);
    return count;
}

//  Sends requests until the deadline, at most inflight unanswered at once,
//  then waits for every answer.
static void
s_client_loop (s_client_t *self, zsock_t *sock)
{
    size_t size = (size_t) self->batch * S_EVENT_MAX + 256;
    char *body = malloc (size);
    if (!body) {
        snprintf (self->problem, sizeof self->problem, "out of memory");
        return;
    }
    void *handle = zsock_resolve (sock);
    int64_t sent = 0, events = 0, outstanding = 0;
    int64_t waiting_since = s_now_us ();
    while (!zsys_interrupted) {
        int64_t now = s_now_us ();
        bool sending = now < *self->deadline_us && !self->problem[0];
        while (sending && outstanding < self->inflight) {
            size_t len =
                (size_t) snprintf (body, size, "{\"v\":1,\"idem\":\"r%d-c%d-q%lld\",\"events\":[",
                                   self->serial, self->index, (long long) sent);
            for (int i = 0; i < self->batch; i++) {
                if (i)
                    body[len++] = ',';
                len += s_event (body + len, size - len, self->serial, self->index, events++);
            }
            len += (size_t) snprintf (body + len, size - len, "]}");
            if (zmq_send (handle, "hook.add", 8, ZMQ_SNDMORE) < 0
                || zmq_send (handle, body, len, 0) < 0) {
                snprintf (self->problem, sizeof self->problem, "send: %s",
                          zmq_strerror (zmq_errno ()));
                break;
            }
            sent++;
            outstanding++;
        }
        if (outstanding == 0 && !sending)
            break;
        //  Wake at the deadline to stop sending; afterwards wait for the rest.
        int64_t wait_ms = sending ? (*self->deadline_us - now) / 1000 + 1 : 100;
        zmq_pollitem_t item = {handle, 0, ZMQ_POLLIN, 0};
        int rc = zmq_poll (&item, 1, (long) wait_ms);
        if (rc < 0 && zmq_errno () != EINTR) {
            snprintf (self->problem, sizeof self->problem, "poll: %s", zmq_strerror (zmq_errno ()));
            break;
        }
        if (rc <= 0) {
            if (outstanding && s_now_us () - waiting_since > S_CALL_MS * 1000) {
                self->lost += outstanding;
                snprintf (self->problem, sizeof self->problem,
                          "%lld requests unanswered after %d ms", (long long) outstanding,
                          S_CALL_MS);
                break;
            }
            continue;
        }
        while (zsock_events (sock) & ZMQ_POLLIN) {
            char *status = NULL, *reply = NULL;
            if (zstr_recvx (sock, &status, &reply, NULL) < 2) {
                snprintf (self->problem, sizeof self->problem, "a reply of fewer than 2 frames");
                zstr_free (&status);
                zstr_free (&reply);
                break;
            }
            outstanding--;
            waiting_since = self->last_us = s_now_us ();
            cJSON *json = cJSON_Parse (reply);
            cJSON *count = cJSON_GetObjectItemCaseSensitive (json, "count");
            if (streq (status, "ok") && cJSON_IsNumber (count)
                && count->valuedouble == self->batch) {
                self->requests++;
                self->events += self->batch;
            }
            else {
                self->errors++;
                if (!self->problem[0])
                    snprintf (self->problem, sizeof self->problem, "%s: %.400s", status, reply);
            }
            cJSON_Delete (json);
            zstr_free (&status);
            zstr_free (&reply);
        }
    }
    free (body);
}

static void *
s_client_main (void *arg)
{
    s_client_t *self = (s_client_t *) arg;
    zsock_t *sock = s_dealer (self->endpoint);
    if (!sock)
        snprintf (self->problem, sizeof self->problem, "cannot connect");
    else {
        //  A first round trip, so the connection exists before the clock starts.
        bool ok = false;
        char *reply = s_call (sock, "ping", "{\"v\":1}", S_CALL_MS, &ok);
        if (!reply || !ok)
            snprintf (self->problem, sizeof self->problem, "ping: %s", reply ? reply : "no answer");
        zstr_free (&reply);
    }
    pthread_barrier_wait (self->barrier);  //  every client is connected
    pthread_barrier_wait (self->barrier);  //  the deadline is set: go
    if (!self->problem[0])
        s_client_loop (self, sock);
    zsock_destroy (&sock);
    return NULL;
}

//  One store measurement: a fresh store, clients x batch for the set time.
//  Sets *rate (acknowledged events/s). Returns 0, or -1 if anything failed,
//  including acknowledged and stored counts that differ.
static int
s_store_measure (s_bench_t *bench, int clients, int batch, double *rate)
{
    s_store_t store;
    if (s_store_start (bench, &store)) {
        s_store_stop (&store);
        return -1;
    }
    s_client_t client[16];
    pthread_t thread[16];
    assert (clients <= 16);
    pthread_barrier_t barrier;
    pthread_barrier_init (&barrier, NULL, (unsigned) clients + 1);
    int64_t deadline = 0;
    for (int i = 0; i < clients; i++) {
        client[i] = (s_client_t){.endpoint = store.endpoint,
                                 .serial = bench->serial,
                                 .index = i,
                                 .batch = batch,
                                 .inflight = bench->inflight,
                                 .barrier = &barrier,
                                 .deadline_us = &deadline};
        if (pthread_create (&thread[i], NULL, s_client_main, &client[i])) {
            //  The barrier counts on every thread: no way to go on without one.
            fprintf (stderr, "bench/store: cannot start a client thread\n");
            s_store_stop (&store);
            exit (2);
        }
    }
    pthread_barrier_wait (&barrier);
    int64_t start = s_now_us ();
    double store_cpu = s_cpu_seconds (store.pid), client_cpu = s_cpu_seconds (0);
    deadline = start + (int64_t) (bench->seconds * 1e6);
    pthread_barrier_wait (&barrier);
    int64_t events = 0, requests = 0, errors = 0, lost = 0, end = start;
    const char *problem = NULL;
    for (int i = 0; i < clients; i++) {
        pthread_join (thread[i], NULL);
        events += client[i].events;
        requests += client[i].requests;
        errors += client[i].errors;
        lost += client[i].lost;
        if (client[i].last_us > end)
            end = client[i].last_us;
        if (client[i].problem[0] && !problem)
            problem = client[i].problem;
    }
    pthread_barrier_destroy (&barrier);
    store_cpu = s_cpu_seconds (store.pid) - store_cpu;
    client_cpu = s_cpu_seconds (0) - client_cpu;
    int rc = s_store_stop (&store);
    long long commits = s_store_commits (&store);
    int64_t rows = rc == 0 ? s_count_rows (store.db, "hook_events") : -1;
    double seconds = (double) (end - start) / 1e6;
    *rate = seconds > 0 ? (double) events / seconds : 0;
    printf (
        "  store  %2d client%s x %3d ev/req: %9.0f ev/s   (%lld acked in %.2f s; %.0f req/commit;"
        " cores: store %.2f, clients %.2f)\n",
        clients, clients == 1 ? " " : "s", batch, *rate, (long long) events, seconds,
        commits > 0 ? (double) requests / (double) commits : 0.0,
        seconds > 0 ? store_cpu / seconds : 0, seconds > 0 ? client_cpu / seconds : 0);
    fflush (stdout);
    if (problem) {
        fprintf (stderr, "bench/store: client: %s\n", problem);
        rc = -1;
    }
    if (errors || lost) {
        fprintf (stderr, "bench/store: %lld requests refused, %lld unanswered\n",
                 (long long) errors, (long long) lost);
        rc = -1;
    }
    if (rows != events) {
        fprintf (stderr, "bench/store: FAIL: %lld events acknowledged but %lld rows in %s\n",
                 (long long) events, (long long) rows, store.db);
        rc = -1;
    }
    if (rc == 0)
        s_remove_tree (bench, store.home);
    return rc;
}

//  One raw SQLite measurement: rows_per_txn rows per transaction for the
//  set time, into hook_events of a store-migrated database (ccm) or into a
//  bare table. Sets *rate (rows/s). Returns 0, or -1 on any failure.
static int
s_raw_measure (s_bench_t *bench, bool ccm, int rows_per_txn, double *rate)
{
    s_store_t store;
    char path[PATH_MAX + 32];
    if (ccm) {
        //  Let the store create and migrate the database, then take it over.
        int rc = s_store_start (bench, &store);
        if (s_store_stop (&store) || rc)
            return -1;
        snprintf (path, sizeof path, "%s", store.db);
    }
    else {
        snprintf (store.home, sizeof store.home, "%s/bare-%03d", bench->root, ++bench->serial);
        if (mkdir (store.home, 0700)) {
            fprintf (stderr, "bench/store: %s: %s\n", store.home, strerror (errno));
            return -1;
        }
        snprintf (path, sizeof path, "%s/bare.db", store.home);
    }
    sqlite3 *db = NULL;
    sqlite3_stmt *insert = NULL, *begin = NULL, *commit = NULL;
    char pragmas[512];
    //  The store's pragmas (services/store/store_db.c).
    snprintf (pragmas, sizeof pragmas,
              "PRAGMA journal_mode = WAL;"
              "PRAGMA synchronous = %s;"
              "PRAGMA foreign_keys = ON;"
              "PRAGMA busy_timeout = 5000;"
              "PRAGMA temp_store = MEMORY;"
              "PRAGMA cache_size = -65536;"
              "%s",
              bench->synchronous,
              ccm ? "" : "CREATE TABLE bare (id INTEGER PRIMARY KEY, payload TEXT);");
    int rc = -1;
    int64_t rows = 0;
    if (sqlite3_open_v2 (path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL) != SQLITE_OK
        || sqlite3_exec (db, pragmas, NULL, NULL, NULL) != SQLITE_OK
        || sqlite3_prepare_v2 (db, ccm ? S_HOOK_INSERT : "INSERT INTO bare (payload) VALUES (?)",
                               -1, &insert, NULL)
               != SQLITE_OK
        || sqlite3_prepare_v2 (db, "BEGIN IMMEDIATE", -1, &begin, NULL) != SQLITE_OK
        || sqlite3_prepare_v2 (db, "COMMIT", -1, &commit, NULL) != SQLITE_OK)
        goto done;
    char event[S_EVENT_MAX];
    int64_t start = s_now_us ();
    int64_t deadline = start + (int64_t) (bench->seconds * 1e6);
    int64_t end = start;
    while (end < deadline && !zsys_interrupted) {
        if (sqlite3_step (begin) != SQLITE_DONE)
            goto done;
        sqlite3_reset (begin);
        //  The store takes the time once per request, not per row.
        char now[32];
        time_t secs = time (NULL);
        strftime (now, sizeof now, "%Y-%m-%dT%H:%M:%S.000Z", gmtime (&secs));
        for (int i = 0; i < rows_per_txn; i++) {
            if (ccm) {
                char uid[48];
                snprintf (uid, sizeof uid, "raw-%d-e%lld", bench->serial, (long long) rows);
                sqlite3_bind_text (insert, 1, uid, -1, SQLITE_TRANSIENT);
                sqlite3_bind_text (insert, 2, S_TASK_ID, -1, SQLITE_STATIC);
                sqlite3_bind_text (insert, 3, "bench-0", -1, SQLITE_STATIC);
                sqlite3_bind_null (insert, 4);
                sqlite3_bind_text (insert, 5, S_SESSION_ID, -1, SQLITE_STATIC);
                sqlite3_bind_text (insert, 6, "PostToolUse", -1, SQLITE_STATIC);
                sqlite3_bind_text (insert, 7, now, -1, SQLITE_TRANSIENT);
                sqlite3_bind_text (insert, 8, s_event_data, -1, SQLITE_STATIC);
                sqlite3_bind_text (insert, 9, "Bash", -1, SQLITE_STATIC);
                sqlite3_bind_text (insert, 10, S_FILE_PATH, -1, SQLITE_STATIC);
                sqlite3_bind_int (insert, 11, 1);
                sqlite3_bind_text (insert, 12, now, -1, SQLITE_TRANSIENT);
            }
            else {
                size_t len = s_event (event, sizeof event, bench->serial, 0, rows);
                sqlite3_bind_text (insert, 1, event, (int) len, SQLITE_TRANSIENT);
            }
            if (sqlite3_step (insert) != SQLITE_DONE)
                goto done;
            sqlite3_reset (insert);
            rows++;
        }
        if (sqlite3_step (commit) != SQLITE_DONE)
            goto done;
        sqlite3_reset (commit);
        end = s_now_us ();
    }
    *rate = (double) rows / ((double) (end - start) / 1e6);
    printf ("  sqlite %-11s %3d %-9s   %9.0f rows/s (%lld rows in %.2f s)\n",
            ccm ? "hook_events" : "bare table", rows_per_txn,
            rows_per_txn == 1 ? "row/txn:" : "rows/txn:", *rate, (long long) rows,
            (double) (end - start) / 1e6);
    fflush (stdout);
    rc = 0;
done:
    if (rc)
        fprintf (stderr, "bench/store: %s: %s\n", path, db ? sqlite3_errmsg (db) : "no memory");
    sqlite3_finalize (insert);
    sqlite3_finalize (begin);
    sqlite3_finalize (commit);
    sqlite3_close (db);
    if (rc == 0 && !zsys_interrupted) {
        int64_t count = s_count_rows (path, ccm ? "hook_events" : "bare");
        if (count != rows) {
            fprintf (stderr, "bench/store: FAIL: %lld rows inserted but %lld in %s\n",
                     (long long) rows, (long long) count, path);
            rc = -1;
        }
    }
    if (rc == 0)
        s_remove_tree (bench, store.home);
    return rc;
}

//  Finds ccm-store: argv[1], else $CCM_BIN_DIR, else next to build/bench/.
static char *
s_find_store (int argc, char **argv)
{
    char path[PATH_MAX + 16];
    if (argc > 1)
        return strdup (argv[1]);
    const char *dir = getenv ("CCM_BIN_DIR");
    if (dir && *dir) {
        snprintf (path, sizeof path, "%s/ccm-store", dir);
        return strdup (path);
    }
    char self[PATH_MAX];
    ssize_t len = readlink ("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        return strdup ("build/ccm-store");
    self[len] = 0;
    char *slash = strrchr (self, '/');
    if (slash)
        *slash = 0;
    snprintf (path, sizeof path, "%s/../ccm-store", self);
    return strdup (path);
}

static double
s_env_double (const char *name, double fallback, double min, double max)
{
    const char *text = getenv (name);
    if (!text || !*text)
        return fallback;
    char *end;
    double value = strtod (text, &end);
    if (*end || value < min || value > max) {
        fprintf (stderr, "bench/store: %s: must be a number from %g to %g, got '%s'\n", name, min,
                 max, text);
        exit (2);
    }
    return value;
}

static const char *
s_fs_type (const char *path)
{
    struct statfs st;
    if (statfs (path, &st))
        return "unknown";
    switch ((unsigned long) st.f_type) {
        case 0xEF53:
            return "ext4";
        case 0x58465342:
            return "xfs";
        case 0x9123683E:
            return "btrfs";
        case 0x01021994:
            return "tmpfs (fsync is free: figures are not durable ones)";
        case 0x794c7630:
            return "overlayfs";
        default:
            return "other";
    }
}

int
main (int argc, char **argv)
{
    if (argc > 2 || (argc == 2 && (streq (argv[1], "-h") || streq (argv[1], "--help")))) {
        fprintf (stderr, "usage: bench/store [PATH-TO-ccm-store]\n"
                         "Knobs: BENCH_SECONDS BENCH_REPS BENCH_INFLIGHT BENCH_DIR BENCH_KEEP\n");
        return 2;
    }
    zsys_init ();
    zsys_catch_interrupts ();
    s_bench_t bench = {0};
    bench.store_bin = s_find_store (argc, argv);
    bench.seconds = s_env_double ("BENCH_SECONDS", 2.0, 0.1, 600);
    bench.reps = (int) s_env_double ("BENCH_REPS", 3, 1, S_MAX_REPS);
    bench.inflight = (int) s_env_double ("BENCH_INFLIGHT", 16, 1, 1000);
    bench.keep = getenv ("BENCH_KEEP") && streq (getenv ("BENCH_KEEP"), "1");
    bench.synchronous =
        getenv ("CCM_STORE_SYNCHRONOUS") ? getenv ("CCM_STORE_SYNCHRONOUS") : "full";
    const char *batch_max =
        getenv ("CCM_STORE_BATCH_MAX") ? getenv ("CCM_STORE_BATCH_MAX") : "1024 (default)";
    if (access (bench.store_bin, X_OK)) {
        fprintf (stderr, "bench/store: %s: %s (build first: bash scripts/build.sh)\n",
                 bench.store_bin, strerror (errno));
        return 2;
    }
    const char *dir = getenv ("BENCH_DIR");
    if (!dir || !*dir)
        dir = getenv ("TMPDIR");
    if (!dir || !*dir)
        dir = "/tmp";
    char root[PATH_MAX];
    snprintf (root, sizeof root, "%s/ccm-bench-store-XXXXXX", dir);
    if (!mkdtemp (root)) {
        fprintf (stderr, "bench/store: %s: %s\n", root, strerror (errno));
        return 2;
    }
    bench.root = root;
    if (strlen (root) > 64) {
        fprintf (stderr, "bench/store: %s: too long for ipc socket paths; set BENCH_DIR\n", root);
        rmdir (root);
        return 2;
    }

    printf ("bench/store: acknowledged hook.add events/s through ccm-store, and the SQLite"
            " limit\n");
    printf ("  %ld CPUs, homes in %s (%s), SQLite %s, synchronous=%s, store.batch_max %s,\n"
            "  %d requests in flight per client, %.1f s per run, medians of %d interleaved"
            " runs\n\n",
            sysconf (_SC_NPROCESSORS_ONLN), dir, s_fs_type (root), sqlite3_libversion (),
            bench.synchronous, batch_max, bench.inflight, bench.seconds, bench.reps);
    fflush (stdout);

    double raw[S_NRAW][S_MAX_REPS];                    //  [ccm * 2 + (batch == 100)][rep]
    double rates[S_NCLIENTS][S_NBATCHES][S_MAX_REPS];  //  [clients][batch][rep]
    int failures = 0;
    int64_t began = s_now_us ();
    for (int rep = 0; rep < bench.reps && !zsys_interrupted; rep++) {
        printf ("run %d of %d\n", rep + 1, bench.reps);
        for (int r = 0; r < S_NRAW && !zsys_interrupted; r++)
            if (s_raw_measure (&bench, r >= 2, s_batches[r % 2], &raw[r][rep])) {
                raw[r][rep] = 0;
                failures++;
            }
        for (int c = 0; c < S_NCLIENTS && !zsys_interrupted; c++)
            for (int b = 0; b < S_NBATCHES && !zsys_interrupted; b++)
                if (s_store_measure (&bench, s_clients[c], s_batches[b], &rates[c][b][rep])) {
                    rates[c][b][rep] = 0;
                    failures++;
                }
    }
    if (zsys_interrupted) {
        fprintf (stderr, "bench/store: interrupted (homes left in %s)\n", root);
        free (bench.store_bin);
        return 1;
    }
    double limit[S_NRAW];
    for (int r = 0; r < S_NRAW; r++)
        limit[r] = s_median (raw[r], bench.reps);

    printf ("\nphysical limit: SQLite in one process, WAL, synchronous=%s (median rows/s)\n",
            bench.synchronous);
    printf ("  %-34s %14s %14s\n", "", "1 row/txn", "100 rows/txn");
    printf ("  %-34s %14.0f %14.0f\n", "bare table (id, payload)", limit[0], limit[1]);
    printf ("  %-34s %14.0f %14.0f\n", "hook_events, ccm schema", limit[2], limit[3]);

    printf ("\nccm-store: hook.add over ipc, fresh store per run, every acked event counted"
            " in the db\n");
    printf ("  %-7s %-7s %12s %21s %14s %14s\n", "clients", "ev/req", "ev/s median", "min..max",
            "/ hook_events", "/ bare table");
    double best = 0;
    int best_c = 0, best_b = 0;
    for (int c = 0; c < S_NCLIENTS; c++)
        for (int b = 0; b < S_NBATCHES; b++) {
            double low = rates[c][b][0], high = rates[c][b][0];
            for (int rep = 1; rep < bench.reps; rep++) {
                low = rates[c][b][rep] < low ? rates[c][b][rep] : low;
                high = rates[c][b][rep] > high ? rates[c][b][rep] : high;
            }
            double median = s_median (rates[c][b], bench.reps);
            char range[32];
            snprintf (range, sizeof range, "%.0f..%.0f", low, high);
            printf ("  %-7d %-7d %12.0f %21s %13.2fx %13.2fx\n", s_clients[c], s_batches[b], median,
                    range, limit[2 + b] > 0 ? median / limit[2 + b] : 0,
                    limit[b] > 0 ? median / limit[b] : 0);
            if (median > best) {
                best = median;
                best_c = s_clients[c];
                best_b = s_batches[b];
            }
        }
    printf ("  (ratios: to the raw limit with as many rows per transaction as events per request;\n"
            "   group commit puts many requests in one transaction, so 1 ev/req can pass 1x)\n");
    printf ("\ntarget: >= %.0f acknowledged events/s. Best: %.0f (%d clients x %d ev/req)"
            " -> %s\n",
            S_TARGET, best, best_c, best_b, best >= S_TARGET ? "met" : "NOT met");
    printf ("verification: %s; %.0f s in all\n",
            failures ? "FAILED (see the messages above)"
                     : "every acknowledged event is in hook_events, no more, no fewer",
            (double) (s_now_us () - began) / 1e6);
    if (!failures && !bench.keep)
        s_remove_tree (&bench, root);
    free (bench.store_bin);
    return failures ? 1 : 0;
}

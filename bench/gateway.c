/*  bench/gateway: how soon a hook event reaches a browser, through a real
    ccm-store, ccm-hooks and ccm-gateway.

        build/bench/gateway [BIN-DIR]

    One paced sender hands hook events to ccm-hooks as ccm-hook does (one
    unix-socket connection each) at 1,000 and 5,000 events/s for
    BENCH_SECONDS (2); 1 and 100 WebSocket clients subscribed to hook.added
    read every frame. For each event: the time from its hand-over to the
    moment each client has read the frame that carries its row (a hook.added
    names its rows' id range; rows are numbered in send order here, with one
    sender), p50 and p99 over every (event, client) pair.

    The limit, measured in the same runs: the same events seen by a ZeroMQ
    SUB on the store's PUB socket, the moment the store publishes them after
    COMMIT. The gateway cannot deliver before that; what it adds is the
    difference. Then the gateway's resident memory, idle (before any client)
    and after the runs. Targets: p99 <= 10 ms at 5,000 events/s with 100
    clients; RSS <= 10 MB idle.                                           */

#include "ccm_client.h"
#include "hook_wire.h"

#include <cjson/cJSON.h>
#include <czmq.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;

#define S_CLIENTS_MAX 128

static char s_home[80];
static char s_socket[108];

static double
s_now (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}

static int
s_compare (const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;
    return x < y ? -1 : x > y;
}

static double
s_pct (double *values, int n, double p)
{
    if (n == 0)
        return -1;
    qsort (values, (size_t) n, sizeof *values, s_compare);
    int i = (int) (p / 100.0 * (n - 1) + 0.5);
    return values[i < n ? i : n - 1];
}

static int
s_env_int (const char *name, int fallback)
{
    const char *value = getenv (name);
    return value && atoi (value) > 0 ? atoi (value) : fallback;
}

static pid_t
s_spawn (char *const argv[], const char *log)
{
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init (&actions);
    posix_spawn_file_actions_addopen (&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen (&actions, 1, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    posix_spawn_file_actions_addopen (&actions, 2, log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    pid_t pid = -1;
    if (posix_spawn (&pid, argv[0], &actions, NULL, argv, environ))
        pid = -1;
    posix_spawn_file_actions_destroy (&actions);
    return pid;
}

//  A memory figure of pid in MB: field is "VmRSS:" (resident), "RssFile:"
//  (pages of mapped files: the shared libraries, shared with ccm's other
//  services) or "RssAnon:" (the process's own).
static double
s_mem_mb (pid_t pid, const char *field)
{
    char path[64], line[256];
    snprintf (path, sizeof path, "/proc/%d/status", (int) pid);
    FILE *file = fopen (path, "r");
    double mb = -1;
    size_t n = strlen (field);
    while (file && fgets (line, sizeof line, file))
        if (strncmp (line, field, n) == 0)
            mb = atof (line + n) / 1024.0;
    if (file)
        fclose (file);
    return mb;
}

//  Sends one record the way ccm-hook does and waits for its ack.
static int
s_hand_over (int i)
{
    char head[128], body[256];
    int head_len = snprintf (head, sizeof head, "uid=gw-bench-%09d\ncli=claude\n", i);
    int body_len = snprintf (body, sizeof body,
                             "{\"hook_event_name\":\"PostToolUse\",\"tool_name\":\"Bash\","
                             "\"tool_input\":{\"command\":\"make test\"},\"n\":%d}",
                             i);
    unsigned char record[512];
    memcpy (record, HOOK_MAGIC, 4);
    hook_put_u32 (record + 4, (uint32_t) head_len);
    hook_put_u32 (record + 8, (uint32_t) body_len);
    memcpy (record + HOOK_PREFIX_LEN, head, (size_t) head_len);
    memcpy (record + HOOK_PREFIX_LEN + head_len, body, (size_t) body_len);
    size_t len = HOOK_PREFIX_LEN + (size_t) head_len + (size_t) body_len;
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf (addr.sun_path, sizeof addr.sun_path, "%s", s_socket);
    int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    unsigned char ack[4];
    int rc = fd >= 0 && connect (fd, (struct sockaddr *) &addr, sizeof addr) == 0
                     && write (fd, record, len) == (ssize_t) len && read (fd, ack, 4) == 4
                 ? 0
                 : -1;
    if (fd >= 0)
        close (fd);
    return rc;
}

//  ------------------------------------------------------------ a WebSocket client

typedef struct {
    int fd;
    unsigned char *buf;
    size_t len, cap;
} s_ws_t;

static int
s_ws_send (int fd, const char *text)
{
    size_t len = strlen (text);
    unsigned char frame[1024];
    if (len > 1000)
        return -1;
    size_t n = 0;
    frame[n++] = 0x81;
    if (len < 126)
        frame[n++] = (unsigned char) (0x80 | len);
    else {
        frame[n++] = 0x80 | 126;
        frame[n++] = (unsigned char) (len >> 8);
        frame[n++] = (unsigned char) len;
    }
    unsigned char mask[4] = {0x12, 0x34, 0x56, 0x78};
    memcpy (frame + n, mask, 4);
    n += 4;
    for (size_t i = 0; i < len; i++)
        frame[n++] = (unsigned char) text[i] ^ mask[i % 4];
    return write (fd, frame, n) == (ssize_t) n ? 0 : -1;
}

static int
s_ws_connect (int port, s_ws_t *ws)
{
    memset (ws, 0, sizeof *ws);
    ws->fd = socket (AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons ((uint16_t) port)};
    addr.sin_addr.s_addr = htonl (INADDR_LOOPBACK);
    int one = 1;
    setsockopt (ws->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect (ws->fd, (struct sockaddr *) &addr, sizeof addr))
        return -1;
    char request[512];
    int n = snprintf (request, sizeof request,
                      "GET /ws HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: ccm.v1\r\n\r\n",
                      port);
    if (write (ws->fd, request, (size_t) n) != n)
        return -1;
    char head[2048] = "";
    size_t got = 0;
    while (got < sizeof head - 1 && !strstr (head, "\r\n\r\n")) {
        if (read (ws->fd, head + got, 1) != 1)
            return -1;
        head[++got] = 0;
    }
    if (!strstr (head, " 101 "))
        return -1;
    ws->cap = 1 << 20;
    ws->buf = malloc (ws->cap);
    return s_ws_send (ws->fd,
                      "{\"id\":1,\"cmd\":\"subscribe\",\"filters\":{\"types\":[\"hook.added\"]}}");
}

//  What a reader learns from a frame: the hook row id range it announces.
typedef void (s_rows_fn) (void *arg, int client, int64_t first, int64_t last, double now);

static int64_t
s_field (const char *text, size_t len, const char *key)
{
    const char *hit = memmem (text, len, key, strlen (key));
    return hit ? strtoll (hit + strlen (key), NULL, 10) : -1;
}

//  Reads what is there on ws; calls fn for each hook.added frame.
static int
s_ws_read (s_ws_t *ws, int client, s_rows_fn *fn, void *arg)
{
    if (ws->cap - ws->len < 65536) {
        ws->cap *= 2;
        ws->buf = realloc (ws->buf, ws->cap);
    }
    ssize_t r = read (ws->fd, ws->buf + ws->len, ws->cap - ws->len);
    if (r <= 0)
        return -1;
    double now = s_now ();
    ws->len += (size_t) r;
    size_t at = 0;
    while (ws->len - at >= 2) {
        unsigned char *p = ws->buf + at;
        uint64_t len = p[1] & 0x7f;
        size_t head = 2;
        if (len == 126) {
            if (ws->len - at < 4)
                break;
            len = (uint64_t) p[2] << 8 | p[3];
            head = 4;
        }
        else if (len == 127) {
            if (ws->len - at < 10)
                break;
            len = 0;
            for (int i = 0; i < 8; i++)
                len = len << 8 | p[2 + i];
            head = 10;
        }
        if (ws->len - at < head + len)
            break;
        const char *text = (const char *) p + head;
        if ((p[0] & 0x0f) == 1 && memmem (text, len, "\"topic\":\"hook.added\"", 20)) {
            int64_t first = s_field (text, len, "\"first_id\":");
            int64_t last = s_field (text, len, "\"last_id\":");
            if (first > 0 && last >= first)
                fn (arg, client, first, last, now);
        }
        at += head + len;
    }
    memmove (ws->buf, ws->buf + at, ws->len - at);
    ws->len -= at;
    return 0;
}

//  ------------------------------------------------------------ one run

typedef struct {
    double *sent;      //  by row id (1-based): when the event was handed over
    int64_t first_id;  //  this run's rows
    int64_t last_id;
    double *latency;  //  (client, row) pairs, ms
    int nlatency;
    int64_t *seen;  //  per client: the highest row id read
    int clients;
    volatile bool stop;
    s_ws_t *ws;
    zsock_t *sub;
    double *pub_latency;
    int npub;
    int64_t pub_seen;
} s_run_t;

static void
s_on_rows (void *arg, int client, int64_t first, int64_t last, double now)
{
    s_run_t *run = arg;
    for (int64_t id = first; id <= last; id++)
        if (id >= run->first_id && id <= run->last_id && run->sent[id] > 0)
            run->latency[run->nlatency++] = (now - run->sent[id]) * 1000;
    if (last > run->seen[client])
        run->seen[client] = last;
}

static void *
s_readers (void *arg)
{
    s_run_t *run = arg;
    struct pollfd fds[S_CLIENTS_MAX];
    for (int i = 0; i < run->clients; i++)
        fds[i] = (struct pollfd){.fd = run->ws[i].fd, .events = POLLIN};
    while (!run->stop) {
        if (poll (fds, (nfds_t) run->clients, 100) <= 0)
            continue;
        for (int i = 0; i < run->clients; i++)
            if (fds[i].revents & POLLIN)
                s_ws_read (&run->ws[i], i, s_on_rows, run);
    }
    return NULL;
}

static void *
s_subscriber (void *arg)
{
    s_run_t *run = arg;
    zsock_set_rcvtimeo (run->sub, 100);
    while (!run->stop) {
        zmsg_t *msg = zmsg_recv (run->sub);
        if (!msg)
            continue;
        double now = s_now ();
        zframe_t *body = zmsg_last (msg);
        const char *text = (const char *) zframe_data (body);
        size_t len = zframe_size (body);
        int64_t first = s_field (text, len, "\"first_id\":");
        int64_t last = s_field (text, len, "\"last_id\":");
        for (int64_t id = first; first > 0 && id <= last; id++)
            if (id >= run->first_id && id <= run->last_id && run->sent[id] > 0)
                run->pub_latency[run->npub++] = (now - run->sent[id]) * 1000;
        if (last > run->pub_seen)
            run->pub_seen = last;
        zmsg_destroy (&msg);
    }
    return NULL;
}

static bool
s_all_seen (s_run_t *run)
{
    for (int i = 0; i < run->clients; i++)
        if (run->seen[i] < run->last_id)
            return false;
    return run->pub_seen >= run->last_id;
}

static int
s_run (int port, int rate, int clients, int seconds, double *sent, int64_t *next_id, double out[4])
{
    s_run_t run = {.sent = sent, .clients = clients};
    int events = rate * seconds;
    run.first_id = *next_id;
    run.last_id = *next_id + events - 1;
    run.latency = calloc ((size_t) events * (size_t) clients, sizeof (double));
    run.pub_latency = calloc ((size_t) events, sizeof (double));
    run.seen = calloc ((size_t) clients, sizeof (int64_t));
    run.ws = calloc ((size_t) clients, sizeof (s_ws_t));
    for (int i = 0; i < clients; i++)
        if (s_ws_connect (port, &run.ws[i])) {
            fprintf (stderr, "bench/gateway: client %d could not connect\n", i);
            return -1;
        }
    char endpoint[PATH_MAX + 32];
    snprintf (endpoint, sizeof endpoint, "ipc://%s/run/events.ipc", s_home);
    run.sub = zsock_new_sub (endpoint, "hook.added");
    zclock_sleep (500);  //  the subscriptions settle
    pthread_t readers, subscriber;
    pthread_create (&readers, NULL, s_readers, &run);
    pthread_create (&subscriber, NULL, s_subscriber, &run);
    double start = s_now ();
    for (int i = 0; i < events;) {
        double due = start + (double) i / rate;
        double now = s_now ();
        if (now < due) {
            if (due - now > 0.0002)
                usleep (100);
            continue;
        }
        sent[run.first_id + i] = s_now ();
        if (s_hand_over ((int) (run.first_id + i)) == 0)
            i++;
    }
    double deadline = s_now () + 30;
    while (!s_all_seen (&run) && s_now () < deadline)
        usleep (10000);
    run.stop = true;
    pthread_join (readers, NULL);
    pthread_join (subscriber, NULL);
    int missing = 0;
    for (int i = 0; i < clients; i++)
        missing += run.seen[i] < run.last_id;
    if (missing || run.pub_seen < run.last_id)
        fprintf (stderr, "bench/gateway: %d client(s) and the SUB (%s) did not see every event\n",
                 missing, run.pub_seen < run.last_id ? "missing" : "complete");
    out[0] = s_pct (run.latency, run.nlatency, 50);
    out[1] = s_pct (run.latency, run.nlatency, 99);
    out[2] = s_pct (run.pub_latency, run.npub, 50);
    out[3] = s_pct (run.pub_latency, run.npub, 99);
    *next_id = run.last_id + 1;
    for (int i = 0; i < clients; i++) {
        close (run.ws[i].fd);
        free (run.ws[i].buf);
    }
    zsock_destroy (&run.sub);
    free (run.ws);
    free (run.seen);
    free (run.latency);
    free (run.pub_latency);
    return missing ? -1 : 0;
}

static int
s_remove_entry (const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void) st, (void) flag, (void) ftw;
    return remove (path);
}

int
main (int argc, char **argv)
{
    signal (SIGPIPE, SIG_IGN);
    const char *bin = argc > 1 ? argv[1] : getenv ("CCM_BIN_DIR");
    char bin_dir[PATH_MAX];
    snprintf (bin_dir, sizeof bin_dir, "%s", bin ? bin : "build");
    int seconds = s_env_int ("BENCH_SECONDS", 2);
    snprintf (s_home, sizeof s_home, "/tmp/ccm-bench-gw-XXXXXX");
    if (!mkdtemp (s_home)) {
        perror ("mkdtemp");
        return 1;
    }
    setenv ("CCM_HOME", s_home, 1);
    setenv ("CCM_GATEWAY_PORT", "0", 1);
    char store_bin[PATH_MAX + 16], hooks_bin[PATH_MAX + 16], gw_bin[PATH_MAX + 16];
    char log[PATH_MAX + 16];
    snprintf (store_bin, sizeof store_bin, "%s/ccm-store", bin_dir);
    snprintf (hooks_bin, sizeof hooks_bin, "%s/ccm-hooks", bin_dir);
    snprintf (gw_bin, sizeof gw_bin, "%s/ccm-gateway", bin_dir);
    snprintf (log, sizeof log, "%s/services.log", s_home);

    pid_t store = s_spawn ((char *[]){store_bin, NULL}, log);
    char endpoint[PATH_MAX + 32];
    snprintf (endpoint, sizeof endpoint, "ipc://%s/run/store.ipc", s_home);
    ccm_client_t *client = ccm_client_new (endpoint, 1000, 10);
    cJSON *ping = cJSON_CreateObject (), *reply = NULL;
    if (ccm_client_call (client, "ping", ping, &reply)) {
        fprintf (stderr, "bench/gateway: ccm-store did not start; see %s\n", log);
        return 1;
    }
    cJSON_Delete (ping);
    cJSON_Delete (reply);
    ccm_client_destroy (&client);
    pid_t hooks = s_spawn ((char *[]){hooks_bin, NULL}, log);
    snprintf (s_socket, sizeof s_socket, "%.70s/run/%s", s_home, HOOK_SOCKET_NAME);
    for (int i = 0; i < 500 && access (s_socket, F_OK); i++)
        usleep (10000);
    pid_t gateway = s_spawn ((char *[]){gw_bin, NULL}, log);
    char url_path[PATH_MAX + 32];
    snprintf (url_path, sizeof url_path, "%s/run/gateway.url", s_home);
    int port = 0;
    for (int i = 0; i < 500 && !port; i++) {
        FILE *file = fopen (url_path, "r");
        char url[256] = "";
        if (file) {
            if (fgets (url, sizeof url, file) && strrchr (url, ':'))
                port = atoi (strrchr (url, ':') + 1);
            fclose (file);
        }
        if (!port)
            usleep (10000);
    }
    if (!port) {
        fprintf (stderr, "bench/gateway: ccm-gateway did not start; see %s\n", log);
        return 1;
    }
    sleep (1);
    double rss_idle = s_mem_mb (gateway, "VmRSS:");
    double rss_file = s_mem_mb (gateway, "RssFile:"), rss_anon = s_mem_mb (gateway, "RssAnon:");
    double store_idle = s_mem_mb (store, "VmRSS:");

    int rates[] = {1000, 5000}, counts[] = {1, 100};
    int64_t total = 0;
    for (int r = 0; r < 2; r++)
        total += (int64_t) rates[r] * seconds * 2;
    double *sent = calloc ((size_t) total + 2, sizeof (double));
    int64_t next_id = 1;
    int status = 0;
    printf ("bench/gateway: hook event -> WebSocket client, %d s per run (ms)\n", seconds);
    printf ("  %-8s %-8s %9s %9s   %s\n", "rate/s", "clients", "p50", "p99",
            "limit: the store's publication, same events (p50, p99)");
    double target_p99 = -1;
    for (int r = 0; r < 2; r++)
        for (int c = 0; c < 2; c++) {
            double out[4] = {0, 0, 0, 0};
            if (s_run (port, rates[r], counts[c], seconds, sent, &next_id, out))
                status = 1;
            printf ("  %-8d %-8d %9.2f %9.2f   %.2f, %.2f\n", rates[r], counts[c], out[0], out[1],
                    out[2], out[3]);
            fflush (stdout);
            if (rates[r] == 5000 && counts[c] == 100)
                target_p99 = out[1];
        }
    double rss_after = s_mem_mb (gateway, "VmRSS:");
    printf ("  target: p99 <= 10 ms at 5000/s with 100 clients: %s (%.2f ms)\n",
            target_p99 >= 0 && target_p99 <= 10 ? "met" : "MISSED", target_p99);
    printf ("ccm-gateway RSS: %.2f MB idle (target <= 10 MB: %s), %.1f MB after the runs\n",
            rss_idle, rss_idle <= 10 ? "met" : "MISSED", rss_after);
    printf ("  idle = %.2f MB of library pages (RssFile, shared) + %.2f MB its own (RssAnon);"
            " ccm-store idle, same libraries but lws: %.2f MB\n",
            rss_file, rss_anon, store_idle);

    kill (gateway, SIGTERM);
    kill (hooks, SIGTERM);
    waitpid (gateway, NULL, 0);
    waitpid (hooks, NULL, 0);
    kill (store, SIGTERM);
    waitpid (store, NULL, 0);
    free (sent);
    if (!getenv ("BENCH_KEEP"))
        nftw (s_home, s_remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    return status;
}

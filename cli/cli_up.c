/*  cli_up: ccm up, down, status and config.

    `ccm up` is a small supervisor for one machine: it starts every ccm
    service binary that sits next to the ccm binary (the store first, and
    waits for it to answer), restarts any that dies with a growing delay, and
    stops them all on SIGTERM/SIGINT. It holds a lock on run/ccm.pid, so two
    supervisors never share one CCM_HOME. systemd units do the same job in
    production (deploy/systemd).

    With up.executors = N (> 1) it runs N executors, each supervised on its
    own: instance K >= 2 is a system of its own on this machine, its
    executor.machine_id, hostname, tmux_socket, worktrees and outbox being
    the first instance's with "-K" appended. Other settings are shared,
    except those in $CCM_HOME/executor-K.json (config.json's format), which
    are instance K's own: executor.projects NAME=PATH gives it its own
    clone, as a machine of its own would have. All of these reach the
    instance as CCM_* variables. It is for trying a fleet on one machine
    (the chaos test runs three); `ccm attach`, `ccm send` and the gateway's
    terminal view reach the first instance's tmux server only.

    It speaks systemd's notify protocol to its services as systemd would:
    each child's $NOTIFY_SOCKET is the supervisor's run/notify.sock, and a
    READY=1 from a child's pid (SO_PASSCRED) says that service serves.
    `ccm up --detach` returns once every service it started said so; a
    supervisor that runs under systemd itself says READY=1 then.           */

#include "cli.h"

#include "ccm_bus.h"
#include "ccm_id.h"
#include "ccm_msg.h"
#include "ccm_notify.h"

#include <czmq.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

//  The services in start order; those whose binary is absent are skipped.
static const char *const s_services[] = {"store", "router", "executor", "hooks", "sync", "gateway"};

//  Which services a role runs: a hub holds the state and the brokers, a
//  worker runs agents; "all" is everything on one machine.
static bool
s_in_role (const char *role, const char *service)
{
    static const char *const hub[] = {"store", "router", "gateway", "sync", NULL};
    if (strcmp (role, "all") == 0)
        return true;
    bool on_hub = false;
    for (const char *const *h = hub; *h; h++)
        on_hub |= strcmp (*h, service) == 0;
    return strcmp (role, "hub") == 0 ? on_hub : !on_hub;
}
#define S_NSERVICES     (sizeof s_services / sizeof s_services[0])
#define S_MAX_DELAY_MS  10000
#define S_MAX_EXECUTORS 16
#define S_READY_MS      20000  //  the longest `ccm up --detach` waits for every service
#define S_MAX_SERVICES  (S_NSERVICES + S_MAX_EXECUTORS - 1)

//  The settings that make an extra executor instance a system of its own.
static const char *const s_instance_keys[] = {"executor.machine_id",  "executor.hostname",
                                              "executor.tmux_socket", "executor.worktrees",
                                              "executor.outbox",      NULL};
#define S_MAX_ENV 64  //  settings given to one instance, at most

typedef struct {
    char path[PATH_MAX + 64];
    char name[PATH_MAX + 80];  //  path, and " #K" for executor instance K >= 2
    char tag[96];              //  ccm-store, ...; ccm-executor#K: its name in readiness lines
    char *env[S_MAX_ENV + 1];  //  "CCM_X=value" of instance K >= 2, NULL-terminated
    pid_t pid;
    int64_t started_ms;
    int64_t restart_at_ms;  //  0: not waiting for a restart
    int64_t delay_ms;
    int restarts;
    bool ready;  //  its current process said READY=1
} s_service_t;

static volatile sig_atomic_t s_stop = 0;

//  The children's $NOTIFY_SOCKET ("" if it could not be opened).
static char s_notify_name[PATH_MAX + 32];

static void
s_on_signal (int sig)
{
    (void) sig;
    s_stop = 1;
}

static void
s_path (cli_t *cli, const char *name, char *buf, size_t len)
{
    snprintf (buf, len, "%s/%s", ccm_config_home (cli->config), name);
}

//  Pings the store with a short timeout; returns its pid or 0.
static long
s_ping (cli_t *cli, cJSON **reply_p)
{
    const char *endpoint = ccm_config_str (cli->config, "store.endpoint");
    if (ccm_bus_reachable (endpoint))
        return 0;
    ccm_client_t *client = ccm_client_new (endpoint, 1000, 0);
    cJSON *body = cJSON_CreateObject (), *reply = NULL;
    int rc = client ? ccm_client_call (client, "ping", body, &reply) : -1;
    cJSON_Delete (body);
    ccm_client_destroy (&client);
    long pid = 0;
    if (rc == 0) {
        cJSON *item = cJSON_GetObjectItemCaseSensitive (reply, "pid");
        pid = cJSON_IsNumber (item) ? (long) item->valuedouble : 0;
    }
    if (reply_p)
        *reply_p = reply;
    else
        cJSON_Delete (reply);
    return pid;
}

static int64_t
s_now (void)
{
    return ccm_mono_ms ();
}

static void s_log (const char *format, ...) __attribute__ ((format (printf, 1, 2)));

static void
s_log (const char *format, ...)
{
    char now[25];
    ccm_now_iso (now);
    va_list args;
    va_start (args, format);
    fprintf (stderr, "%s ccm info: ", now);
    vfprintf (stderr, format, args);
    fputc ('\n', stderr);
    va_end (args);
}

//  The value instance 1 of the executor has for key, into buf: the
//  configured one, else what the executor itself would find.
static void
s_instance_base (cli_t *cli, const char *key, char *buf, size_t len)
{
    snprintf (buf, len, "%s", ccm_config_str (cli->config, key));
    if (*buf)
        return;
    char host[256] = "localhost";
    const char *configured = ccm_config_str (cli->config, "executor.hostname");
    if (*configured)
        snprintf (host, sizeof host, "%s", configured);
    else if (gethostname (host, sizeof host))
        snprintf (host, sizeof host, "localhost");
    host[sizeof host - 1] = 0;
    if (strcmp (key, "executor.hostname") == 0) {
        snprintf (buf, len, "%s", host);
        return;
    }
    //  executor.machine_id, as exec_server.c reads it.
    FILE *file = fopen ("/etc/machine-id", "r");
    if (file && fgets (buf, (int) len, file))
        buf[strcspn (buf, "\r\n")] = 0;
    else
        snprintf (buf, len, "host-%s", host);
    if (file)
        fclose (file);
}

//  Adds "CCM_KEY=value" to the instance's environment (a later one wins).
static int
s_env_add (s_service_t *service, const char *key, const char *value, const char *suffix)
{
    char name[128];
    ccm_config_env_name (key, name, sizeof name);
    size_t n = 0;
    while (service->env[n])
        n++;
    if (n == S_MAX_ENV)
        return -1;
    if (asprintf (&service->env[n], "%s=%s%s", name, value, suffix) < 0) {
        service->env[n] = NULL;
        return -1;
    }
    return 0;
}

//  Adds the settings of an executor-K.json object (nested objects flatten to
//  dotted keys, as in config.json). Returns NULL or a message (caller frees).
static char *
s_env_from_json (s_service_t *service, const char *prefix, cJSON *object, const char *origin)
{
    cJSON *item;
    cJSON_ArrayForEach (item, object)
    {
        char key[256];
        snprintf (key, sizeof key, "%s%s%s", prefix, *prefix ? "." : "", item->string);
        const ccm_config_key_t *known = ccm_config_keys ();
        while (known->key && strcmp (known->key, key))
            known++;
        if (!known->key && cJSON_IsObject (item)) {
            char *problem = s_env_from_json (service, key, item, origin);
            if (problem)
                return problem;
            continue;
        }
        char number[32], *problem = NULL;
        const char *text = cJSON_IsString (item) ? item->valuestring : NULL;
        if (cJSON_IsNumber (item)) {
            snprintf (number, sizeof number, "%lld", (long long) item->valuedouble);
            text = number;
        }
        else if (cJSON_IsBool (item))
            text = cJSON_IsTrue (item) ? "true" : "false";
        if (!known->key)
            return asprintf (&problem, "%s: unknown key '%s'", origin, key) < 0 ? NULL : problem;
        if (!text)
            return asprintf (&problem, "%s: key '%s' must be a string, number or boolean", origin,
                             key)
                           < 0
                       ? NULL
                       : problem;
        if (s_env_add (service, key, text, ""))
            return strdup ("out of memory, or too many settings");
    }
    return NULL;
}

//  Gives executor instance K (>= 2) its own identity and paths, then the
//  settings of $CCM_HOME/executor-K.json. Returns NULL or a message.
static char *
s_instance_env (cli_t *cli, s_service_t *service, int instance)
{
    char suffix[16];
    snprintf (suffix, sizeof suffix, "-%d", instance);
    for (const char *const *key = s_instance_keys; *key; key++) {
        char base[PATH_MAX];
        s_instance_base (cli, *key, base, sizeof base);
        if (s_env_add (service, *key, base, suffix))
            return strdup ("out of memory");
    }
    size_t len = strlen (service->path);
    memcpy (service->name, service->path, len);
    snprintf (service->name + len, sizeof service->name - len, " #%d", instance);
    snprintf (service->tag + strlen (service->tag), sizeof service->tag - strlen (service->tag),
              "#%d", instance);

    char path[PATH_MAX + 32], *problem = NULL;
    snprintf (path, sizeof path, "%s/executor-%d.json", ccm_config_home (cli->config), instance);
    int error_no;
    cJSON *json = ccm_json_read_file (path, &error_no);
    if (error_no)
        return error_no == ENOENT || asprintf (&problem, "%s: %s", path, strerror (error_no)) < 0
                   ? NULL
                   : problem;
    if (!cJSON_IsObject (json)) {
        cJSON_Delete (json);
        return asprintf (&problem, "%s: not a JSON object", path) < 0 ? NULL : problem;
    }
    problem = s_env_from_json (service, "", json, path);
    cJSON_Delete (json);
    return problem;
}

static void
s_services_free (s_service_t *services, size_t count)
{
    for (size_t i = 0; i < count; i++)
        for (size_t k = 0; services[i].env[k]; k++) {
            free (services[i].env[k]);
            services[i].env[k] = NULL;
        }
}

static void
s_start (cli_t *cli, s_service_t *service)
{
    pid_t pid = fork ();
    if (pid == 0) {
        setenv ("CCM_HOME", ccm_config_home (cli->config), 1);
        for (size_t i = 0; service->env[i]; i++)
            putenv (service->env[i]);
        //  Its readiness is told to us, not to a systemd that runs ccm up.
        if (*s_notify_name)
            setenv ("NOTIFY_SOCKET", s_notify_name, 1);
        else
            unsetenv ("NOTIFY_SOCKET");
        unsetenv ("WATCHDOG_USEC");
        unsetenv ("WATCHDOG_PID");
        signal (SIGINT, SIG_DFL);
        signal (SIGTERM, SIG_DFL);
        execl (service->path, service->path, (char *) NULL);
        fprintf (stderr, "ccm: cannot run %s: %s\n", service->path, strerror (errno));
        _exit (127);
    }
    service->pid = pid > 0 ? pid : 0;
    service->ready = false;
    service->started_ms = s_now ();
    service->restart_at_ms = 0;
    if (pid > 0)
        s_log ("started %s (pid %ld)", service->name, (long) pid);
    else {
        s_log ("cannot fork for %s: %s", service->name, strerror (errno));
        service->restart_at_ms = s_now () + service->delay_ms;
    }
}

//  Takes the supervisor lock; returns its fd, or -1 if another holds it.
static int
s_lock (cli_t *cli, bool write_pid)
{
    char path[PATH_MAX];
    s_path (cli, "run/ccm.pid", path, sizeof path);
    int fd = open (path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    if (flock (fd, LOCK_EX | LOCK_NB)) {
        close (fd);
        return -1;
    }
    if (write_pid) {
        char text[32];
        int len = snprintf (text, sizeof text, "%ld\n", (long) getpid ());
        if (ftruncate (fd, 0) || write (fd, text, (size_t) len) != len)
            s_log ("cannot write %s: %s", path, strerror (errno));
    }
    return fd;
}

//  Reads the supervisor's pid from run/ccm.pid, or 0.
static long
s_supervisor_pid (cli_t *cli)
{
    char path[PATH_MAX];
    s_path (cli, "run/ccm.pid", path, sizeof path);
    FILE *file = fopen (path, "r");
    long pid = 0;
    if (file) {
        if (fscanf (file, "%ld", &pid) != 1)
            pid = 0;
        fclose (file);
    }
    return pid;
}

//  True while some process holds the supervisor lock.
static bool
s_supervisor_running (cli_t *cli)
{
    int fd = s_lock (cli, false);
    if (fd >= 0) {
        close (fd);
        return false;
    }
    char path[PATH_MAX];
    s_path (cli, "run/ccm.pid", path, sizeof path);
    return access (path, F_OK) == 0;
}

//  Opens the supervisor's notify socket: a unix datagram socket in run/ (an
//  abstract one if that path is too long) that passes each sender's pid.
//  Sets s_notify_name; returns the fd, or -1 (readiness is then unknown).
static int
s_notify_open (cli_t *cli)
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf (s_notify_name, sizeof s_notify_name, "%s/run/notify.sock",
              ccm_config_home (cli->config));
    if (strlen (s_notify_name) >= sizeof addr.sun_path)
        snprintf (s_notify_name, sizeof s_notify_name, "@ccm-up-%ld", (long) getpid ());
    size_t len = strlen (s_notify_name);
    memcpy (addr.sun_path, s_notify_name, len);
    if (s_notify_name[0] == '@')
        addr.sun_path[0] = 0;
    else
        unlink (s_notify_name);  //  left by a supervisor killed -9
    int on = 1;
    int fd = socket (AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0 || setsockopt (fd, SOL_SOCKET, SO_PASSCRED, &on, sizeof on)
        || bind (fd, (struct sockaddr *) &addr,
                 (socklen_t) (offsetof (struct sockaddr_un, sun_path) + len))) {
        s_log ("cannot open %s: %s; the services' readiness is not known", s_notify_name,
               strerror (errno));
        if (fd >= 0)
            close (fd);
        *s_notify_name = 0;
        return -1;
    }
    return fd;
}

//  Reads what waits on the notify socket: READY=1 from the pid of one of
//  the services marks it ready. Anything else is ignored.
static void
s_notify_read (int fd, s_service_t *services, size_t count)
{
    for (int i = 0; fd >= 0 && i < 64; i++) {
        char text[4096];
        union {
            struct cmsghdr align;
            char data[CMSG_SPACE (sizeof (struct ucred))];
        } control;
        struct iovec iov = {text, sizeof text - 1};
        struct msghdr msg = {.msg_iov = &iov,
                             .msg_iovlen = 1,
                             .msg_control = control.data,
                             .msg_controllen = sizeof control.data};
        ssize_t n = recvmsg (fd, &msg, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);
        if (n < 0)
            break;
        text[n] = 0;
        pid_t pid = 0;
        for (struct cmsghdr *c = CMSG_FIRSTHDR (&msg); c; c = CMSG_NXTHDR (&msg, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_CREDENTIALS) {
                struct ucred cred;
                memcpy (&cred, CMSG_DATA (c), sizeof cred);
                pid = cred.pid;
            }
        bool ready = false;
        char *rest = text, *line;
        while ((line = strsep (&rest, "\n")))
            ready |= strcmp (line, "READY=1") == 0;
        for (size_t k = 0; ready && pid > 0 && k < count; k++)
            if (services[k].pid == pid && !services[k].ready) {
                services[k].ready = true;
                s_log ("%s is ready (pid %ld)", services[k].name, (long) pid);
            }
    }
}

//  Tells the `ccm up --detach` that waits (fd, -1 if none) one line; on a
//  failure it stops listening, and *fd_p is -1.
static void
s_tell (int *fd_p, const char *line)
{
    size_t len = strlen (line);
    if (*fd_p >= 0 && send (*fd_p, line, len, MSG_NOSIGNAL) != (ssize_t) len) {
        close (*fd_p);
        *fd_p = -1;
    }
}

//  The supervisor loop; returns the exit code. up_fd (-1 if none) hears
//  "wait NAME...", "ready NAME PID" and, once every service is ready, "up".
static int
s_supervise (cli_t *cli, int lock_fd, const char *role, int up_fd)
{
    //  czmq would install its own SIGINT/SIGTERM handler at its first socket
    //  (the store pings); the supervisor keeps its own.
    zsys_handler_set (NULL);
    struct sigaction action = {.sa_handler = s_on_signal};
    sigemptyset (&action.sa_mask);
    sigaction (SIGTERM, &action, NULL);
    sigaction (SIGINT, &action, NULL);
    sigaction (SIGHUP, &action, NULL);

    char self[PATH_MAX];
    ssize_t len = readlink ("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        return cli_fail ("cannot find the ccm binary: %s", strerror (errno));
    self[len] = 0;
    *strrchr (self, '/') = 0;

    int64_t executors = ccm_config_int (cli->config, "up.executors");  //  checked by cli_cmd_up
    s_service_t services[S_MAX_SERVICES];
    size_t count = 0;
    int64_t first_delay = ccm_config_int (cli->config, "up.restart_delay_ms");
    for (size_t i = 0; i < S_NSERVICES; i++) {
        int copies = strcmp (s_services[i], "executor") == 0 ? (int) executors : 1;
        for (int instance = 1; instance <= copies; instance++) {
            s_service_t *service = &services[count];
            memset (service, 0, sizeof *service);
            snprintf (service->path, sizeof service->path, "%s/ccm-%s", self, s_services[i]);
            memcpy (service->name, service->path, sizeof service->path);
            snprintf (service->tag, sizeof service->tag, "ccm-%s", s_services[i]);
            service->delay_ms = first_delay;
            //  ccm-sync runs only for a machine connected to a hub (ccm sync login).
            if (!strcmp (s_services[i], "sync")
                && access (ccm_config_str (cli->config, "sync.credentials"), F_OK) != 0)
                continue;
            if (!s_in_role (role, s_services[i]) || access (service->path, X_OK) != 0)
                continue;
            count++;
            char *problem = instance > 1 ? s_instance_env (cli, service, instance) : NULL;
            if (problem) {
                s_services_free (services, count);
                int rc = cli_fail ("%s", problem);
                free (problem);
                return rc;
            }
        }
    }
    bool has_store = count > 0 && strstr (services[0].path, "ccm-store") != NULL;
    if (strcmp (role, "worker") != 0 && !has_store) {
        s_services_free (services, count);
        return cli_fail ("no ccm-store binary next to %s/ccm", self);
    }
    if (count == 0)
        return cli_fail ("no service of role %s next to %s/ccm", role, self);

    s_log ("ccm up: home %s, role %s, %zu service(s)", ccm_config_home (cli->config), role, count);
    int notify_fd = s_notify_open (cli);
    char line[PATH_MAX] = "wait";
    for (size_t i = 0; i < count; i++)
        snprintf (line + strlen (line), sizeof line - strlen (line), " %s", services[i].tag);
    strcat (line, "\n");
    s_tell (&up_fd, line);
    bool all_ready = false;
    //  A worker's services reach the hub's store by themselves, and retry.
    size_t first = has_store ? 1 : 0;
    if (has_store)
        s_start (cli, &services[0]);
    //  The other services need the store, so wait until it answers.
    for (int64_t deadline = s_now () + 15000; has_store && !s_stop && s_now () < deadline;) {
        if (s_ping (cli, NULL))
            break;
        int status;
        if (waitpid (services[0].pid, &status, WNOHANG) == services[0].pid) {
            services[0].pid = 0;
            s_log ("ccm-store exited during start-up; see the lines above");
            s_services_free (services, count);
            if (notify_fd >= 0)
                close (notify_fd);
            close (lock_fd);
            return 1;
        }
        usleep (20000);
    }
    for (size_t i = first; i < count && !s_stop; i++)
        s_start (cli, &services[i]);

    while (!s_stop) {
        int status;
        pid_t pid;
        while ((pid = waitpid (-1, &status, WNOHANG)) > 0) {
            for (size_t i = 0; i < count; i++) {
                s_service_t *service = &services[i];
                if (service->pid != pid)
                    continue;
                service->pid = 0;
                //  A service that ran for a while earns a fresh, short delay.
                if (s_now () - service->started_ms > 30000)
                    service->delay_ms = first_delay;
                if (WIFEXITED (status))
                    s_log ("%s exited with status %d; restart in %lld ms", service->name,
                           WEXITSTATUS (status), (long long) service->delay_ms);
                else
                    s_log ("%s killed by signal %d; restart in %lld ms", service->name,
                           WTERMSIG (status), (long long) service->delay_ms);
                service->restart_at_ms = s_now () + service->delay_ms;
                service->delay_ms =
                    service->delay_ms * 2 > S_MAX_DELAY_MS ? S_MAX_DELAY_MS : service->delay_ms * 2;
                service->restarts++;
            }
        }
        for (size_t i = 0; i < count; i++)
            if (!services[i].pid && services[i].restart_at_ms
                && s_now () >= services[i].restart_at_ms)
                s_start (cli, &services[i]);
        //  Wait 50 ms, or less if a service says it is ready.
        struct pollfd item = {notify_fd, POLLIN, 0};
        if (notify_fd < 0 || poll (&item, 1, 50) < 0)
            usleep (50000);
        bool was[S_MAX_SERVICES], ready = true;
        for (size_t i = 0; i < count; i++)
            was[i] = services[i].ready;
        s_notify_read (notify_fd, services, count);
        for (size_t i = 0; i < count && notify_fd >= 0; i++) {
            if (services[i].ready && !was[i]) {
                snprintf (line, sizeof line, "ready %s %ld\n", services[i].tag,
                          (long) services[i].pid);
                s_tell (&up_fd, line);
            }
            ready &= services[i].ready;
        }
        if (ready && !all_ready) {
            all_ready = true;
            s_log ("every service is ready");
            s_tell (&up_fd, "up\n");
            if (up_fd >= 0)
                close (up_fd);
            up_fd = -1;
            ccm_notify ("READY=1");  //  to a systemd that runs ccm up, if one does
        }
    }
    if (up_fd >= 0)
        close (up_fd);
    if (notify_fd >= 0) {
        close (notify_fd);
        if (s_notify_name[0] != '@')
            unlink (s_notify_name);
    }

    s_log ("ccm down: stopping %zu service(s)", count);
    for (size_t i = count; i-- > 0;)
        if (services[i].pid)
            kill (services[i].pid, SIGTERM);
    for (int64_t deadline = s_now () + 10000; s_now () < deadline;) {
        bool alive = false;
        for (size_t i = 0; i < count; i++)
            if (services[i].pid) {
                if (waitpid (services[i].pid, NULL, WNOHANG) == services[i].pid)
                    services[i].pid = 0;
                else
                    alive = true;
            }
        if (!alive)
            break;
        usleep (20000);
    }
    for (size_t i = 0; i < count; i++)
        if (services[i].pid) {
            s_log ("%s did not stop in 10 s; killing it", services[i].name);
            kill (services[i].pid, SIGKILL);
            waitpid (services[i].pid, NULL, 0);
        }
    s_services_free (services, count);
    char path[PATH_MAX];
    s_path (cli, "run/ccm.pid", path, sizeof path);
    unlink (path);
    close (lock_fd);
    s_log ("ccm down: stopped");
    return 0;
}

//  Reads the supervisor's lines on fd until "up" (returns 0), the end (the
//  supervisor stopped: -1) or S_READY_MS (1, with the services not ready
//  in waiting, each after a space).
static int
s_wait_ready (int fd, char *waiting, size_t size)
{
    char names[S_MAX_SERVICES][32] = {{0}};
    char buffer[4096];
    size_t len = 0;
    for (int64_t deadline = s_now () + S_READY_MS; s_now () < deadline;) {
        struct pollfd item = {fd, POLLIN, 0};
        int left = (int) (deadline - s_now ());
        if (poll (&item, 1, left > 0 ? left : 0) <= 0)
            continue;
        ssize_t n = read (fd, buffer + len, sizeof buffer - 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        len += (size_t) n;
        buffer[len] = 0;
        char *start = buffer, *end;
        while ((end = strchr (start, '\n'))) {
            *end = 0;
            if (strcmp (start, "up") == 0)
                return 0;
            if (strncmp (start, "wait ", 5) == 0) {
                char *rest = start + 5, *name;
                for (size_t i = 0; i < S_MAX_SERVICES && (name = strsep (&rest, " ")); i++)
                    snprintf (names[i], sizeof names[i], "%s", name);
            }
            else if (strncmp (start, "ready ", 6) == 0) {
                char *name = start + 6;
                name[strcspn (name, " ")] = 0;
                for (size_t i = 0; i < S_MAX_SERVICES; i++)
                    if (strcmp (names[i], name) == 0)
                        names[i][0] = 0;
            }
            start = end + 1;
        }
        len -= (size_t) (start - buffer);
        memmove (buffer, start, len);
        if (len == sizeof buffer - 1)
            len = 0;  //  a line that long is no line of ours
    }
    *waiting = 0;
    for (size_t i = 0; i < S_MAX_SERVICES; i++)
        if (names[i][0] && strlen (waiting) + strlen (names[i]) + 2 < size) {
            strcat (waiting, " ");
            strcat (waiting, names[i]);
        }
    return 1;
}

int
cli_cmd_up (cli_t *cli, int argc, char **argv)
{
    bool detach = false;
    const char *role = "all";
    for (int i = 0; i < argc; i++) {
        if (strcmp (argv[i], "--detach") == 0 || strcmp (argv[i], "-d") == 0)
            detach = true;
        else if (strcmp (argv[i], "--role") == 0 && i + 1 < argc)
            role = argv[++i];
        else
            return cli_usage ("up: unknown argument '%s'", argv[i]);
    }
    if (strcmp (role, "all") && strcmp (role, "hub") && strcmp (role, "worker"))
        return cli_usage ("up: --role must be hub, worker or all, not '%s'", role);
    int64_t executors = ccm_config_int (cli->config, "up.executors");
    if (executors < 1 || executors > S_MAX_EXECUTORS)
        return cli_fail ("up.executors must be 1 to %d, not %lld", S_MAX_EXECUTORS,
                         (long long) executors);
    const char *home = ccm_config_home (cli->config);
    char run[PATH_MAX], log_dir[PATH_MAX];
    snprintf (run, sizeof run, "ipc://%s/run/x", home);
    s_path (cli, "log", log_dir, sizeof log_dir);
    if ((mkdir (home, 0700) && errno != EEXIST) || ccm_bus_prepare (run)
        || (mkdir (log_dir, 0700) && errno != EEXIST))
        return cli_fail ("cannot create %s: %s", home, strerror (errno));
    int lock_fd = s_lock (cli, true);
    if (lock_fd < 0)
        return cli_fail ("ccm is already running for %s (pid %ld); 'ccm down' stops it", home,
                         s_supervisor_pid (cli));
    if (!detach)
        return s_supervise (cli, lock_fd, role, -1);

    //  The supervisor tells us, over this pair, when every service is ready.
    int pair[2];
    if (socketpair (AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair))
        return cli_fail ("socketpair: %s", strerror (errno));
    pid_t pid = fork ();
    if (pid < 0)
        return cli_fail ("fork: %s", strerror (errno));
    if (pid == 0) {
        close (pair[0]);
        setsid ();
        char log_path[PATH_MAX];
        s_path (cli, "log/ccm.log", log_path, sizeof log_path);
        int log = open (log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        int null = open ("/dev/null", O_RDWR);
        if (null >= 0)
            dup2 (null, STDIN_FILENO);
        if (log >= 0) {
            dup2 (log, STDOUT_FILENO);
            dup2 (log, STDERR_FILENO);
        }
        //  The lock was taken before fork; rewrite the pid file with our pid.
        char text[32];
        int len = snprintf (text, sizeof text, "%ld\n", (long) getpid ());
        if (ftruncate (lock_fd, 0) || pwrite (lock_fd, text, (size_t) len, 0) != len)
            s_log ("cannot write the pid file: %s", strerror (errno));
        _exit (s_supervise (cli, lock_fd, role, pair[1]));
    }
    close (pair[1]);
    close (lock_fd);
    char waiting[PATH_MAX] = "";
    int rc = s_wait_ready (pair[0], waiting, sizeof waiting);
    close (pair[0]);
    bool worker = strcmp (role, "worker") == 0;
    if (rc < 0 || waitpid (pid, NULL, WNOHANG) == pid)
        return cli_fail ("ccm up failed; see %s/ccm.log", log_dir);
    if (rc > 0 && !worker)
        return cli_fail ("not every service is ready within %d s (still waiting for%s); see "
                         "%s/ccm.log",
                         S_READY_MS / 1000, waiting, log_dir);
    if (worker) {
        //  A worker's executor needs the hub's store, which may be away: the
        //  supervisor runs, and the services get ready when it answers.
        if (rc > 0)
            fprintf (stderr, "ccm: not ready within %d s:%s (is the hub's store reachable?)\n",
                     S_READY_MS / 1000, waiting);
        printf ("ccm is up (worker): supervisor pid %ld, home %s, log %s/ccm.log\n", (long) pid,
                home, log_dir);
        return 0;
    }
    printf ("ccm is up: store pid %ld, home %s, log %s/ccm.log\n", s_ping (cli, NULL), home,
            log_dir);
    return 0;
}

int
cli_cmd_down (cli_t *cli, int argc, char **argv)
{
    (void) argv;
    if (argc > 0)
        return cli_usage ("usage: ccm down");
    long pid = s_supervisor_pid (cli);
    if (!s_supervisor_running (cli) || pid <= 0)
        return cli_fail ("ccm is not running for %s", ccm_config_home (cli->config));
    if (kill ((pid_t) pid, SIGTERM))
        return cli_fail ("cannot signal pid %ld: %s", pid, strerror (errno));
    for (int64_t deadline = s_now () + 20000; s_now () < deadline; usleep (50000))
        if (!s_supervisor_running (cli)) {
            if (!cli->json)
                printf ("ccm is down\n");
            return 0;
        }
    return cli_fail ("ccm (pid %ld) did not stop within 20 s", pid);
}

int
cli_cmd_status (cli_t *cli, int argc, char **argv)
{
    (void) argv;
    if (argc > 0)
        return cli_usage ("usage: ccm status [--json]");
    cJSON *ping = NULL;
    long store_pid = s_ping (cli, &ping);
    cJSON_Delete (ping);
    long supervisor = s_supervisor_running (cli) ? s_supervisor_pid (cli) : 0;
    if (!store_pid) {
        if (cli->json) {
            cJSON *out = cJSON_CreateObject ();
            cJSON *store = cJSON_AddObjectToObject (out, "store");
            cJSON_AddBoolToObject (store, "up", false);
            cli_print_json (out);
            cJSON_Delete (out);
        }
        return cli_fail ("ccm is not running for %s (no store at %s)",
                         ccm_config_home (cli->config),
                         ccm_config_str (cli->config, "store.endpoint"));
    }
    cJSON *body = cJSON_CreateObject (), *stats = NULL;
    int rc = cli_call (cli, "stats", body, &stats);
    cJSON_Delete (body);
    if (rc)
        return rc;
    cJSON *out = cJSON_CreateObject ();
    cJSON *store = cJSON_AddObjectToObject (out, "store");
    cJSON_AddBoolToObject (store, "up", true);
    cJSON_AddNumberToObject (store, "pid", (double) store_pid);
    cJSON_AddItemToObject (store, "seq",
                           cJSON_Duplicate (cJSON_GetObjectItemCaseSensitive (stats, "seq"), 1));
    cJSON_AddStringToObject (store, "endpoint", ccm_config_str (cli->config, "store.endpoint"));
    cJSON_AddStringToObject (out, "home", ccm_config_home (cli->config));
    if (supervisor)
        cJSON_AddNumberToObject (out, "supervisor_pid", (double) supervisor);
    else
        cJSON_AddNullToObject (out, "supervisor_pid");
    const char *copy[] = {"tasks", "projects", "hook_events", "sync_pending", "db_bytes", NULL};
    for (const char **key = copy; *key; key++) {
        cJSON *item = cJSON_GetObjectItemCaseSensitive (stats, *key);
        cJSON_AddItemToObject (out, *key,
                               item && !cJSON_IsNull (item) ? cJSON_Duplicate (item, 1)
                                                            : cJSON_CreateObject ());
    }
    if (cli->json)
        cli_print_json (out);
    else {
        printf ("home         %s\n", ccm_config_home (cli->config));
        printf ("supervisor   %s", supervisor ? "running" : "not running (store started alone)");
        if (supervisor)
            printf (" (pid %ld)", supervisor);
        printf ("\nstore        up (pid %ld), seq %.0f\n", store_pid,
                cJSON_GetObjectItemCaseSensitive (stats, "seq")->valuedouble);
        printf ("tasks       ");
        cJSON *item;
        cJSON_ArrayForEach (item, cJSON_GetObjectItemCaseSensitive (out, "tasks"))
            printf (" %s=%d", item->string, item->valueint);
        printf ("\nprojects     %d\nhook events  %d\nsync queue   %d pending\n",
                cJSON_GetObjectItemCaseSensitive (out, "projects")->valueint,
                cJSON_GetObjectItemCaseSensitive (out, "hook_events")->valueint,
                cJSON_GetObjectItemCaseSensitive (out, "sync_pending")->valueint);
    }
    cJSON_Delete (out);
    cJSON_Delete (stats);
    return 0;
}

int
cli_cmd_config (cli_t *cli, int argc, char **argv)
{
    (void) argv;
    if (argc > 0)
        return cli_usage ("usage: ccm config [--json]");
    cJSON *out = cJSON_CreateObject ();
    for (const ccm_config_key_t *key = ccm_config_keys (); key->key; key++) {
        char env[128];
        ccm_config_env_name (key->key, env, sizeof env);
        if (cli->json)
            cJSON_AddStringToObject (out, key->key, ccm_config_str (cli->config, key->key));
        else
            printf ("%-20s %-44s %s (%s)\n", key->key, ccm_config_str (cli->config, key->key), env,
                    key->help);
    }
    if (cli->json)
        cli_print_json (out);
    cJSON_Delete (out);
    return 0;
}

/*  ccm-hook: the command a coding agent's CLI runs for each hook event.

        ccm-hook [--home DIR] [--socket PATH] [--fail-closed] [claude|gemini|codex] [JSON]

    It reads the event from stdin (Claude Code, Gemini CLI) or takes it as
    its last argument (Codex's notify), adds CCM_TASK_ID, CCM_AGENT_ID and
    CCM_SYSTEM_ID from its environment, hands it to ccm-hooks over a unix
    socket and exits 0. If the ingester is not there, or does not answer in
    a few milliseconds, the event goes to a spool file that the ingester
    drains when it is back. It prints only what the ingester decided (a
    policy decision), and never fails the agent: every path exits 0.

    A PermissionRequest that a policy asks a human about is parked by the
    ingester: ccm-hook then waits, as long as the ingester says, for the
    answer (allow or deny) and prints it; with none, it prints nothing and
    the CLI shows its own permission dialog.

    It sits in the agent's loop, paid at every tool call, so it links only
    libc and does the least work that keeps an event safe.                   */

#include "hook_wire.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define S_ACK_MS      50    //  an ingester that does not ack by then is stuck
#define S_DECISION_MS 2000  //  how long a PreToolUse waits for a policy
#define S_DRAIN_MS    1000  //  reading what is past the cap, at most
#define S_PARK_SLACK  2000  //  past the ingester's own wait, for its reply to come
#define S_PATH_MAX    4096

typedef struct {
    const char *home;
    const char *socket_path;
    const char *cli;
    const char *argument;  //  codex: the event JSON
    bool fail_closed;
    //  The record.
    char head[HOOK_HEAD_MAX];
    size_t head_len;
    char *body;
    size_t body_len;
    size_t original_len;  //  > body_len when the event was cut
    char uid[33];
    int64_t ts_ms;
    char event[64];  //  hook_event_name, if found: which decision shape the CLI reads
} hook_t;

static int64_t
s_now_ms (clockid_t clock)
{
    struct timespec ts;
    clock_gettime (clock, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

//  Reads stdin up to the cap; what is past it is read and counted, within
//  a bounded time, so the CLI writing to us never blocks on a full pipe.
static void
s_read_stdin (hook_t *self)
{
    if (isatty (STDIN_FILENO))
        return;
    size_t cap = 64 * 1024;
    self->body = malloc (cap);
    int64_t deadline = s_now_ms (CLOCK_MONOTONIC) + S_DRAIN_MS;
    char sink[65536];
    while (self->body) {
        char *into = self->body_len < HOOK_BODY_MAX ? self->body + self->body_len : sink;
        size_t room = self->body_len < HOOK_BODY_MAX ? cap - self->body_len : sizeof sink;
        ssize_t n = read (STDIN_FILENO, into, room);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        self->original_len += (size_t) n;
        if (into != sink) {
            self->body_len += (size_t) n;
            if (self->body_len == cap && cap < HOOK_BODY_MAX) {
                cap = cap * 4 > HOOK_BODY_MAX ? HOOK_BODY_MAX : cap * 4;
                char *grown = realloc (self->body, cap);
                if (!grown)
                    break;
                self->body = grown;
            }
        }
        else if (s_now_ms (CLOCK_MONOTONIC) > deadline)
            break;
    }
}

//  Appends "key=value\n" unless value is missing or would break the head.
static void
s_head_add (hook_t *self, const char *key, const char *value)
{
    if (!value || !*value || strchr (value, '\n'))
        return;
    int n = snprintf (self->head + self->head_len, sizeof self->head - self->head_len, "%s=%s\n",
                      key, value);
    if (n > 0 && self->head_len + (size_t) n < sizeof self->head)
        self->head_len += (size_t) n;
}

static void
s_build_head (hook_t *self)
{
    unsigned char random[16] = {0};
    if (getrandom (random, sizeof random, 0) != sizeof random) {
        //  Not expected; pid and clocks still make the uid unique enough.
        uint64_t mix = (uint64_t) getpid () << 32 ^ (uint64_t) s_now_ms (CLOCK_MONOTONIC);
        memcpy (random, &mix, sizeof mix);
    }
    for (int i = 0; i < 16; i++)
        snprintf (self->uid + 2 * i, 3, "%02x", random[i]);
    self->ts_ms = s_now_ms (CLOCK_REALTIME);
    char ts[32], original[32];
    snprintf (ts, sizeof ts, "%lld", (long long) self->ts_ms);
    s_head_add (self, "uid", self->uid);
    s_head_add (self, "ts", ts);
    s_head_add (self, "cli", self->cli);
    s_head_add (self, "task", getenv ("CCM_TASK_ID"));
    s_head_add (self, "agent", getenv ("CCM_AGENT_ID"));
    s_head_add (self, "system", getenv ("CCM_SYSTEM_ID"));
    s_head_add (self, "worktree", getenv ("CCM_WORKTREE"));
    if (self->original_len > self->body_len) {
        snprintf (original, sizeof original, "%zu", self->original_len);
        s_head_add (self, "truncated", original);
    }
}

//  Finds the event's hook_event_name (Claude Code, Gemini CLI) with a cheap
//  look rather than a JSON parser: the first "hook_event_name" key with a
//  string value. The CLIs write it before tool_input, and inside a string
//  its quotes would be escaped. Leaves self->event empty if there is none.
static void
s_find_event (hook_t *self)
{
    static const char key[] = "\"hook_event_name\"";
    self->event[0] = 0;
    if (!self->body)
        return;
    const char *end = self->body + self->body_len;
    for (const char *p = self->body; p < end; p += sizeof key - 1) {
        p = memmem (p, (size_t) (end - p), key, sizeof key - 1);
        if (!p)
            return;
        const char *q = p + sizeof key - 1;
        while (q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r'))
            q++;
        if (q == end || *q != ':')
            continue;  //  a value, not the key
        for (q++; q < end && (*q == ' ' || *q == '\t' || *q == '\n' || *q == '\r'); q++)
            ;
        if (q == end || *q != '"')
            return;
        size_t n = 0;
        for (q++; q < end && *q != '"' && *q != '\\' && n + 1 < sizeof self->event; q++)
            self->event[n++] = *q;
        //  Event names are plain words: anything else is no name we decide on.
        self->event[q < end && *q == '"' ? n : 0] = 0;
        return;
    }
}

//  True if the event is a decision point: one that may wait for a policy
//  decision, and that failing closed denies.
static bool
s_wants_decision (hook_t *self)
{
    return strcmp (self->event, "PreToolUse") == 0 || strcmp (self->event, "PermissionRequest") == 0
           || strcmp (self->event, "BeforeTool") == 0;
}

//  Writes all of iov within the deadline. Returns 0 or -1.
static int
s_send_all (int fd, struct iovec *iov, int count, int64_t deadline)
{
    while (count > 0) {
        ssize_t n = writev (fd, iov, count);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EAGAIN) {
            int left = (int) (deadline - s_now_ms (CLOCK_MONOTONIC));
            struct pollfd item = {fd, POLLOUT, 0};
            if (left <= 0 || poll (&item, 1, left) <= 0)
                return -1;
            continue;
        }
        if (n < 0)
            return -1;
        while (count > 0 && (size_t) n >= iov->iov_len) {
            n -= (ssize_t) iov->iov_len;
            iov++;
            count--;
        }
        if (count > 0) {
            iov->iov_base = (char *) iov->iov_base + n;
            iov->iov_len -= (size_t) n;
        }
    }
    return 0;
}

//  Reads exactly len bytes within the deadline. Returns 0 or -1.
static int
s_recv_all (int fd, void *buffer, size_t len, int64_t deadline)
{
    size_t got = 0;
    while (got < len) {
        int left = (int) (deadline - s_now_ms (CLOCK_MONOTONIC));
        struct pollfd item = {fd, POLLIN, 0};
        if (left <= 0 || poll (&item, 1, left) <= 0)
            return -1;
        ssize_t n = read (fd, (char *) buffer + got, len - got);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n <= 0)
            return -1;
        got += (size_t) n;
    }
    return 0;
}

//  Hands the record to the ingester; prints its decision, if any.
//  Returns 0 once the ingester has it, -1 if it must be spooled.
static int
s_hand_over (hook_t *self, unsigned char prefix[HOOK_PREFIX_LEN])
{
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen (self->socket_path) >= sizeof addr.sun_path)
        return -1;
    strcpy (addr.sun_path, self->socket_path);
    int fd = socket (AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (connect (fd, (struct sockaddr *) &addr, sizeof addr)) {
        close (fd);  //  no ingester: refused at once, no waiting
        return -1;
    }
    int64_t wait = s_wants_decision (self) ? S_DECISION_MS : S_ACK_MS;
    //  Big events take a little longer to copy; never more than a second.
    wait += (int64_t) (self->body_len >> 14);
    int64_t deadline = s_now_ms (CLOCK_MONOTONIC) + wait;
    struct iovec iov[3] = {
        {prefix, HOOK_PREFIX_LEN}, {self->head, self->head_len}, {self->body, self->body_len}};
    unsigned char length[4];
    int rc = -1;
    if (s_send_all (fd, iov, self->body_len ? 3 : 2, deadline) == 0
        && s_recv_all (fd, length, 4, deadline) == 0) {
        uint32_t reply_len = hook_get_u32 (length);
        if (reply_len == HOOK_REPLY_PARKED && s_recv_all (fd, length, 4, deadline) == 0) {
            //  Parked: the event is safe; now the answer, for as long as
            //  the ingester waits for one. Nothing comes: no decision.
            deadline = s_now_ms (CLOCK_MONOTONIC) + hook_get_u32 (length) + S_PARK_SLACK;
            reply_len = s_recv_all (fd, length, 4, deadline) == 0 ? hook_get_u32 (length) : 0;
        }
        else if (reply_len == HOOK_REPLY_PARKED)
            reply_len = 0;
        char *reply = reply_len && reply_len <= HOOK_REPLY_MAX ? malloc (reply_len) : NULL;
        rc = 0;  //  acked: the ingester has the event
        if (reply && s_recv_all (fd, reply, reply_len, deadline) == 0)
            if (write (STDOUT_FILENO, reply, reply_len) < 0) {
                //  Nothing more to do: the CLI went away.
            }
        free (reply);
    }
    close (fd);
    return rc;
}

//  Writes the record to its own file under $CCM_HOME/spool/, atomically
//  (a temporary name, then rename). Returns 0 or -1.
static int
s_spool (hook_t *self, unsigned char prefix[HOOK_PREFIX_LEN])
{
    char dir[S_PATH_MAX], tmp[S_PATH_MAX + 64], path[S_PATH_MAX + 64];
    snprintf (dir, sizeof dir, "%s/spool", self->home);
    if (mkdir (dir, 0700) && errno != EEXIST) {
        //  The home itself may be missing (ccm never ran): make it too.
        mkdir (self->home, 0700);
        if (mkdir (dir, 0700) && errno != EEXIST)
            return -1;
    }
    snprintf (tmp, sizeof tmp, "%s/.tmp-%s", dir, self->uid);
    snprintf (path, sizeof path, "%s/%013lld-%s%s", dir, (long long) self->ts_ms, self->uid,
              HOOK_SPOOL_SUFFIX);
    int fd = open (tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    struct iovec iov[3] = {
        {prefix, HOOK_PREFIX_LEN}, {self->head, self->head_len}, {self->body, self->body_len}};
    size_t total = HOOK_PREFIX_LEN + self->head_len + self->body_len;
    bool ok = writev (fd, iov, self->body_len ? 3 : 2) == (ssize_t) total && fdatasync (fd) == 0;
    close (fd);
    if (!ok || rename (tmp, path)) {
        unlink (tmp);
        return -1;
    }
    return 0;
}

//  When policies fail closed (--fail-closed, or the ingester's last word in
//  run/policy.mode) and no ingester can decide, a tool use is denied.
static void
s_deny_unreachable (hook_t *self)
{
    if (!s_wants_decision (self))
        return;
    if (!self->fail_closed) {
        char path[S_PATH_MAX + 32], mode[16] = "";
        snprintf (path, sizeof path, "%s/run/policy.mode", self->home);
        int fd = open (path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            if (read (fd, mode, sizeof mode - 1) < 0)
                mode[0] = 0;
            close (fd);
        }
        if (strncmp (mode, "closed", 6) != 0)
            return;
    }
    //  The same shapes as the ingester's decisions (hooks_policy.c): each CLI
    //  reads its own, and one for another event is no valid answer.
#define S_UNREACHABLE "ccm: the policy service is unreachable and policies fail closed"
    const char *decision;
    if (strcmp (self->event, "PermissionRequest") == 0)
        decision = "{\"hookSpecificOutput\":{\"hookEventName\":\"PermissionRequest\","
                   "\"decision\":{\"behavior\":\"deny\",\"message\":\"" S_UNREACHABLE "\"}}}\n";
    else if (strcmp (self->event, "BeforeTool") == 0)
        //  Gemini CLI (geminicli.com/docs/hooks/reference, BeforeTool).
        decision = "{\"decision\":\"deny\",\"reason\":\"" S_UNREACHABLE "\"}\n";
    else
        decision = "{\"hookSpecificOutput\":{\"hookEventName\":\"PreToolUse\","
                   "\"permissionDecision\":\"deny\",\"permissionDecisionReason\":\"" S_UNREACHABLE
                   "\"}}\n";
#undef S_UNREACHABLE
    if (write (STDOUT_FILENO, decision, strlen (decision)) < 0) {
        //  The CLI went away.
    }
}

int
main (int argc, char **argv)
{
    signal (SIGPIPE, SIG_IGN);
    hook_t self = {.cli = "claude"};
    for (int i = 1; i < argc; i++) {
        if (strcmp (argv[i], "--home") == 0 && i + 1 < argc)
            self.home = argv[++i];
        else if (strcmp (argv[i], "--socket") == 0 && i + 1 < argc)
            self.socket_path = argv[++i];
        else if (strcmp (argv[i], "--fail-closed") == 0)
            self.fail_closed = true;
        else if (strcmp (argv[i], "claude") == 0 || strcmp (argv[i], "gemini") == 0
                 || strcmp (argv[i], "codex") == 0)
            self.cli = argv[i];
        else if (argv[i][0] == '{' && i == argc - 1)
            self.argument = argv[i];  //  Codex notify: the event is the last argument
        //  Anything else is ignored: a hook never fails the agent.
    }
    char home[S_PATH_MAX], socket_path[S_PATH_MAX + 32];
    if (!self.home || !*self.home)
        self.home = getenv ("CCM_HOME");
    if (!self.home || !*self.home) {
        snprintf (home, sizeof home, "%s/.ccm", getenv ("HOME") ? getenv ("HOME") : "/tmp");
        self.home = home;
    }
    if (!self.socket_path) {
        snprintf (socket_path, sizeof socket_path, "%s/run/%s", self.home, HOOK_SOCKET_NAME);
        self.socket_path = socket_path;
    }
    if (self.argument) {
        //  Codex notify: the event is the argument; stdin is not ours.
        self.body_len = self.original_len = strlen (self.argument);
        if (self.body_len > HOOK_BODY_MAX)
            self.body_len = HOOK_BODY_MAX;
        self.body = malloc (self.body_len + 1);
        if (self.body)
            memcpy (self.body, self.argument, self.body_len);
        else
            self.body_len = 0;
    }
    else
        s_read_stdin (&self);
    s_find_event (&self);
    s_build_head (&self);
    unsigned char prefix[HOOK_PREFIX_LEN];
    memcpy (prefix, HOOK_MAGIC, 4);
    hook_put_u32 (prefix + 4, (uint32_t) self.head_len);
    hook_put_u32 (prefix + 8, (uint32_t) self.body_len);
    if (s_hand_over (&self, prefix) != 0) {
        if (s_spool (&self, prefix) != 0)
            fprintf (stderr, "ccm-hook: cannot hand over or spool the event (%s/spool): %s\n",
                     self.home, strerror (errno));
        s_deny_unreachable (&self);
    }
    free (self.body);
    return 0;
}

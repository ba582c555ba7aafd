/*  ccm-agent: the wrapper each agent runs under, in its tmux window.

        ccm-agent EXIT_FILE LEASE_FILE -- AGENT ARGV...

    It runs the agent as its child, waits for it, and writes how it ended to
    EXIT_FILE ("STATUS\n", 128+N for signal N, as shells say), so the
    executor knows the exit status even of an agent gone within
    milliseconds. And it enforces the agent's lease: LEASE_FILE holds a
    deadline (milliseconds of CLOCK_BOOTTIME, which counts a suspended
    machine's sleep too) that the executor pushes forward while the router
    confirms that this attempt is still the task's. Once the deadline
    passes, the attempt may be given to another executor, so the agent is
    killed at once (SIGKILL, its whole process group) and EXIT_FILE says
    "137 lease". A paused, killed or cut-off executor therefore can never
    leave an agent running beside the task's next attempt. LEASE_FILE "-"
    means no lease (an executor that claims tasks itself).

    It links libc only, and polls the lease every S_POLL_MS (the router
    gives an executor up at least one beat after its lease ends).         */

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define S_POLL_MS 50

static long long
s_boot_ms (void)
{
    struct timespec ts;
    clock_gettime (CLOCK_BOOTTIME, &ts);
    return (long long) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

//  The lease's deadline, or -1 if the file cannot be read (an executor
//  writes it before it starts the agent, and replaces it atomically).
static long long
s_deadline (const char *path)
{
    int fd = open (path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char text[32];
    ssize_t n = read (fd, text, sizeof text - 1);
    close (fd);
    if (n <= 0)
        return -1;
    text[n] = 0;
    char *end = NULL;
    long long value = strtoll (text, &end, 10);
    return end != text ? value : -1;
}

static void
s_write_exit (const char *path, int status, const char *why)
{
    char tmp[4200];
    snprintf (tmp, sizeof tmp, "%s.tmp", path);
    FILE *file = fopen (tmp, "w");
    if (!file)
        return;
    fprintf (file, "%d%s%s\n", status, why ? " " : "", why ? why : "");
    if (fclose (file) == 0)
        rename (tmp, path);
}

static void
s_ignore (int sig)
{
    (void) sig;
}

int
main (int argc, char **argv)
{
    if (argc < 5 || strcmp (argv[3], "--") != 0) {
        fprintf (stderr, "usage: ccm-agent EXIT_FILE LEASE_FILE -- AGENT ARGV...\n");
        return 2;
    }
    const char *exit_file = argv[1];
    const char *lease = strcmp (argv[2], "-") == 0 ? NULL : argv[2];
    //  The executor stops an agent by signalling the window's process group:
    //  this wrapper outlives the signal to record how the agent ended.
    struct sigaction action = {.sa_handler = s_ignore};
    sigaction (SIGTERM, &action, NULL);
    sigaction (SIGINT, &action, NULL);
    sigaction (SIGHUP, &action, NULL);
    sigset_t chld;
    sigemptyset (&chld);
    sigaddset (&chld, SIGCHLD);
    sigprocmask (SIG_BLOCK, &chld, NULL);
    pid_t child = fork ();
    if (child < 0) {
        perror ("ccm-agent: fork");
        s_write_exit (exit_file, 126, NULL);
        return 126;
    }
    if (child == 0) {
        struct sigaction dfl = {.sa_handler = SIG_DFL};
        sigaction (SIGTERM, &dfl, NULL);
        sigaction (SIGINT, &dfl, NULL);
        sigaction (SIGHUP, &dfl, NULL);
        sigprocmask (SIG_UNBLOCK, &chld, NULL);
        execvp (argv[4], argv + 4);
        fprintf (stderr, "ccm-agent: cannot run %s: %s\n", argv[4], strerror (errno));
        _exit (127);
    }
    while (1) {
        int status;
        pid_t done = waitpid (child, &status, WNOHANG);
        if (done == child) {
            int code = WIFEXITED (status) ? WEXITSTATUS (status) : 128 + WTERMSIG (status);
            s_write_exit (exit_file, code, NULL);
            return code;
        }
        if (lease) {
            long long deadline = s_deadline (lease);
            if (deadline < 0 || s_boot_ms () > deadline) {
                fprintf (stderr,
                         "\nccm-agent: this attempt's lease ran out (its executor lost the"
                         " router); the agent is stopped so that the task never runs twice\n");
                s_write_exit (exit_file, 137, "lease");
                kill (0, SIGKILL);  //  the window's whole group, this wrapper too
                return 137;
            }
        }
        struct timespec wait = {0, S_POLL_MS * 1000000L};
        sigtimedwait (&chld, NULL, &wait);
    }
}

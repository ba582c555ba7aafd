/*  ccm_proc: fork/exec with captured output and a deadline.                */

#include "ccm_proc.h"

#include "ccm_id.h"

#include <errno.h>
#include <stdbool.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define S_OUTPUT_MAX (1 << 20)

typedef struct {
    char *data;
    size_t size;
} s_buf_t;

static void
s_append (s_buf_t *buf, const char *data, size_t size)
{
    if (buf->size + size > S_OUTPUT_MAX)
        size = S_OUTPUT_MAX - buf->size;
    char *grown = realloc (buf->data, buf->size + size + 1);
    if (!grown)
        return;
    buf->data = grown;
    memcpy (buf->data + buf->size, data, size);
    buf->size += size;
    buf->data[buf->size] = 0;
}

int
ccm_proc_run2 (char *const argv[], const char *cwd, char **output, char **errors, int timeout_ms)
{
    int out_pipe[2], err_pipe[2];
    if (pipe2 (out_pipe, O_CLOEXEC))
        return -1;
    if (pipe2 (err_pipe, O_CLOEXEC)) {
        close (out_pipe[0]);
        close (out_pipe[1]);
        return -1;
    }
    pid_t pid = fork ();
    if (pid == 0) {
        int null = open ("/dev/null", O_RDONLY);
        dup2 (null, STDIN_FILENO);
        dup2 (out_pipe[1], STDOUT_FILENO);
        dup2 (err_pipe[1], STDERR_FILENO);
        if (cwd && chdir (cwd))
            _exit (126);
        execvp (argv[0], argv);
        _exit (127);
    }
    close (out_pipe[1]);
    close (err_pipe[1]);
    if (pid < 0) {
        close (out_pipe[0]);
        close (err_pipe[0]);
        return -1;
    }
    s_buf_t bufs[2] = {{NULL, 0}, {NULL, 0}};
    struct pollfd fds[2] = {{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}};
    int open_fds = 2;
    int64_t deadline = ccm_mono_ms () + timeout_ms;
    bool killed = false;
    while (open_fds > 0) {
        int64_t left = deadline - ccm_mono_ms ();
        if (left <= 0 && !killed) {
            kill (pid, SIGKILL);
            killed = true;
        }
        if (poll (fds, 2, left > 0 ? (int) left : 100) < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2; i++) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            char chunk[8192];
            ssize_t n = read (fds[i].fd, chunk, sizeof chunk);
            if (n > 0)
                s_append (&bufs[i], chunk, (size_t) n);
            else if (n == 0 || errno != EINTR) {
                close (fds[i].fd);
                fds[i].fd = -1;
                open_fds--;
            }
        }
    }
    for (int i = 0; i < 2; i++)
        if (fds[i].fd >= 0)
            close (fds[i].fd);
    int status = 0;
    while (waitpid (pid, &status, 0) < 0 && errno == EINTR)
        ;
    if (output) {
        if (!errors && bufs[1].size)
            s_append (&bufs[0], bufs[1].data, bufs[1].size);
        *output = bufs[0].data ? bufs[0].data : strdup ("");
    }
    else
        free (bufs[0].data);
    if (errors)
        *errors = bufs[1].data ? bufs[1].data : strdup ("");
    else
        free (bufs[1].data);
    if (WIFEXITED (status))
        return WEXITSTATUS (status);
    return 128 + WTERMSIG (status);
}

int
ccm_proc_run (char *const argv[], const char *cwd, char **output, int timeout_ms)
{
    return ccm_proc_run2 (argv, cwd, output, NULL, timeout_ms);
}

char *
ccm_proc_chomp (char *text)
{
    size_t len = text ? strlen (text) : 0;
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
        text[--len] = 0;
    return text;
}

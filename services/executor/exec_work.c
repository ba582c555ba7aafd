/*  exec_work: slow work off the executor's loop.

    git and tmux can take seconds (a worktree of a large repository, a
    diff, a tmux server under load). Each job runs in a thread of its own,
    at most S_THREADS at once, the rest queued in order; its done callback
    then runs on the loop, which meanwhile keeps beating, so a busy
    executor is never mistaken for a lost one. A job's run function sees
    only its own data and what of the executor never changes after start
    (config, profiles, system id): it must not touch the rest.            */

#include "exec_internal.h"

#include "ccm_log.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#define S_THREADS 4

typedef struct {
    exec_work_fn *run;
    exec_work_fn *done;
    void *arg;
    exec_work_t *owner;
} s_job_t;

struct _exec_work_t {
    zloop_t *loop;
    int pipe[2];  //  finished jobs come back through it (a pointer each)
    zlistx_t *queued;
    int running;
};

static void *
s_thread (void *arg)
{
    s_job_t *job = arg;
    job->run (job->arg);
    //  A pointer is far below PIPE_BUF: the write is atomic.
    ssize_t n;
    do
        n = write (job->owner->pipe[1], &job, sizeof job);
    while (n < 0 && errno == EINTR);
    return NULL;
}

static void
s_start (exec_work_t *self)
{
    while (self->running < S_THREADS && zlistx_size (self->queued)) {
        s_job_t *job = zlistx_detach (self->queued, NULL);
        pthread_t thread;
        pthread_attr_t attr;
        pthread_attr_init (&attr);
        pthread_attr_setdetachstate (&attr, PTHREAD_CREATE_DETACHED);
        if (pthread_create (&thread, &attr, s_thread, job) == 0)
            self->running++;
        else {
            //  No thread to be had: run it here, late rather than never.
            ccm_warn ("no thread for a job (%s); running it on the loop", strerror (errno));
            job->run (job->arg);
            job->done (job->arg);
            free (job);
        }
        pthread_attr_destroy (&attr);
    }
}

static int
s_readable (zloop_t *loop, zmq_pollitem_t *item, void *arg)
{
    (void) loop, (void) item;
    exec_work_t *self = arg;
    s_job_t *job;
    while (read (self->pipe[0], &job, sizeof job) == (ssize_t) sizeof job) {
        self->running--;
        job->done (job->arg);
        free (job);
    }
    s_start (self);
    return 0;
}

exec_work_t *
exec_work_new (zloop_t *loop)
{
    exec_work_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    self->loop = loop;
    self->queued = zlistx_new ();
    if (pipe2 (self->pipe, O_CLOEXEC | O_NONBLOCK)) {
        zlistx_destroy (&self->queued);
        free (self);
        return NULL;
    }
    zmq_pollitem_t item = {NULL, self->pipe[0], ZMQ_POLLIN, 0};
    zloop_poller (loop, &item, s_readable, self);
    return self;
}

void
exec_work_destroy (exec_work_t **self_p)
{
    if (self_p && *self_p) {
        exec_work_t *self = *self_p;
        //  Jobs under way finish first: their threads hold the pipe.
        while (self->running > 0) {
            s_job_t *job;
            if (read (self->pipe[0], &job, sizeof job) == (ssize_t) sizeof job) {
                self->running--;
                job->done (job->arg);
                free (job);
            }
            else
                zclock_sleep (5);
        }
        s_job_t *job;
        while ((job = zlistx_detach (self->queued, NULL))) {
            job->run (job->arg);
            job->done (job->arg);
            free (job);
        }
        zmq_pollitem_t item = {NULL, self->pipe[0], ZMQ_POLLIN, 0};
        zloop_poller_end (self->loop, &item);
        close (self->pipe[0]);
        close (self->pipe[1]);
        zlistx_destroy (&self->queued);
        free (self);
        *self_p = NULL;
    }
}

void
exec_work_submit (exec_work_t *self, exec_work_fn *run, exec_work_fn *done, void *arg)
{
    s_job_t *job = calloc (1, sizeof *job);
    job->run = run;
    job->done = done;
    job->arg = arg;
    job->owner = self;
    zlistx_add_end (self->queued, job);
    s_start (self);
}

size_t
exec_work_pending (exec_work_t *self)
{
    return zlistx_size (self->queued) + (size_t) self->running;
}

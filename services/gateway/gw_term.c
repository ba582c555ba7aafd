/*  gw_term: the live terminal view. Every gateway.terminal_ms, each watched
    task's tmux window is captured (`tmux capture-pane -p -e`, argv only)
    and its screen posted to the main thread when it changed; a window that
    is gone is posted once as the end of the view. Nothing is stored: the
    screen is ephemeral, as DESIGN.md wants terminal output to be.        */

#include "gw_internal.h"

#include "ccm_log.h"
#include "ccm_proc.h"

#include <string.h>
#include <time.h>
#include <unistd.h>

static void
s_post (gw_t *self, const char *task, char *screen)
{
    gw_mail_t *mail = calloc (1, sizeof *mail);
    if (!mail) {
        free (screen);
        return;
    }
    mail->kind = GW_MAIL_TERMINAL;
    mail->task = strdup (task);
    mail->text = screen;  //  NULL: the window is gone
    gw_mail_post (self, mail);
}

static void *
s_term (void *arg)
{
    gw_t *self = arg;
    zhashx_t *last = zhashx_new ();  //  task -> the screen last posted
    zhashx_set_destructor (last, (zhashx_destructor_fn *) zstr_free);
    while (!self->stop) {
        usleep ((useconds_t) self->terminal_ms * 1000);
        pthread_mutex_lock (&self->term_lock);
        zlistx_t *tasks = zhashx_keys (self->term_watch);
        zhashx_t *windows = zhashx_dup (self->term_watch);
        zlistx_t *fresh = zhashx_keys (self->term_fresh);
        zhashx_purge (self->term_fresh);
        pthread_mutex_unlock (&self->term_lock);
        for (const char *task = zlistx_first (fresh); task; task = zlistx_next (fresh))
            zhashx_delete (last, task);
        zlistx_destroy (&fresh);
        for (const char *task = zlistx_first (tasks); task; task = zlistx_next (tasks)) {
            const char *window = zhashx_lookup (windows, task);
            char *screen = NULL;
            int rc = ccm_proc_run2 ((char *[]){"tmux", "-S", self->tmux_socket, "capture-pane",
                                               "-p", "-e", "-t", (char *) window, NULL},
                                    NULL, &screen, NULL, 5000);
            if (rc != 0) {
                free (screen);
                s_post (self, task, NULL);
                pthread_mutex_lock (&self->term_lock);
                zhashx_delete (self->term_watch, task);
                pthread_mutex_unlock (&self->term_lock);
                zhashx_delete (last, task);
                continue;
            }
            const char *before = zhashx_lookup (last, task);
            if (before && strcmp (before, screen) == 0) {
                free (screen);
                continue;
            }
            char *clean = ccm_utf8_clean (screen, strlen (screen));
            free (screen);
            if (!clean)
                continue;
            zhashx_update (last, task, strdup (clean));
            s_post (self, task, clean);
        }
        //  Forget the screens of tasks no longer watched.
        zlistx_t *known = zhashx_keys (last);
        for (const char *task = zlistx_first (known); task; task = zlistx_next (known))
            if (!zhashx_lookup (windows, task))
                zhashx_delete (last, task);
        zlistx_destroy (&known);
        zlistx_destroy (&tasks);
        zhashx_destroy (&windows);
    }
    zhashx_destroy (&last);
    return NULL;
}

int
gw_term_start (gw_t *self)
{
    if (pthread_create (&self->term, NULL, s_term, self))
        return -1;
    self->term_started = true;
    return 0;
}

int
gw_threads_join (gw_t *self)
{
    self->stop = true;
    pthread_mutex_lock (&self->job_lock);
    pthread_cond_broadcast (&self->job_cond);
    pthread_mutex_unlock (&self->job_lock);
    //  A worker may be inside a long command (ccm send waits for the agent):
    //  it gets a few seconds, then the process leaves without it.
    struct timespec deadline;
    clock_gettime (CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 5;
    int stuck = 0;
    pthread_mutex_lock (&self->job_lock);
    int workers = self->workers_started;
    pthread_mutex_unlock (&self->job_lock);
    for (int i = 0; i < workers; i++)
        stuck += pthread_timedjoin_np (self->workers[i], NULL, &deadline) != 0;
    if (self->feed_started)
        stuck += pthread_timedjoin_np (self->feed, NULL, &deadline) != 0;
    if (self->term_started)
        stuck += pthread_timedjoin_np (self->term, NULL, &deadline) != 0;
    if (stuck)
        ccm_warn ("%d thread(s) still busy at exit", stuck);
    return stuck ? -1 : 0;
}

/*  exec_store: the executor's requests to the store, asynchronous.

    Every request goes through one ccm_req on the loop, resent until the
    store answers (Lazy Pirate, the same idem each time), so the writes of
    one task reach the store in the order they were made. A write is
    journaled (unacked) until its ack. Once one is overdue (the hub away,
    the store paused), the journal is also written to executor.outbox
    (mode 0600, replaced atomically), so that an executor restarted
    meanwhile sends those writes first and loses none; the file goes once
    every write is acked.                                                 */

#include "exec_internal.h"

#include "ccm_log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

typedef struct {
    exec_t *owner;
    char *verb;
    char *json;  //  the body as first sent, with its idem
    int64_t sent_ms;
    ccm_req_fn *fn;
    void *arg;
    bool kept;  //  it went to executor.outbox
} s_write_t;

static void
s_write_destroy (s_write_t **self_p)
{
    if (self_p && *self_p) {
        free ((*self_p)->verb);
        free ((*self_p)->json);
        free (*self_p);
        *self_p = NULL;
    }
}

//  Writes the journal to executor.outbox, or removes the file when empty.
static void
s_save (exec_t *self)
{
    const char *path = ccm_config_str (self->config, "executor.outbox");
    if (zlistx_size (self->unacked) == 0) {
        if (unlink (path) && errno != ENOENT)
            ccm_warn ("cannot remove %s: %s", path, strerror (errno));
        self->outbox_saved = false;
        return;
    }
    char tmp[PATH_MAX + 8];
    snprintf (tmp, sizeof tmp, "%s", path);
    if (strrchr (tmp, '/') && strrchr (tmp, '/') != tmp) {
        *strrchr (tmp, '/') = 0;
        mkdir (tmp, 0700);  //  its directory (run/), if no ipc:// socket made it
    }
    snprintf (tmp, sizeof tmp, "%s.tmp", path);
    int fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    FILE *file = fd >= 0 ? fdopen (fd, "w") : NULL;
    bool ok = file != NULL;
    for (s_write_t *write = file ? zlistx_first (self->unacked) : NULL; write;
         write = zlistx_next (self->unacked)) {
        ok &= fprintf (file, "%s\t%s\n", write->verb, write->json) > 0;
        write->kept = true;
    }
    ok = file && ok && fflush (file) == 0 && fdatasync (fileno (file)) == 0;
    if (file)
        fclose (file);
    else if (fd >= 0)
        close (fd);
    if (!ok || rename (tmp, path))
        ccm_warn ("cannot save the unacknowledged writes to %s: %s", path, strerror (errno));
    else
        self->outbox_saved = true;
}

static void
s_write_done (void *arg, int rc, cJSON *reply)
{
    s_write_t *write = arg;
    exec_t *self = write->owner;
    for (s_write_t *item = zlistx_first (self->unacked); item; item = zlistx_next (self->unacked))
        if (item == write) {
            zlistx_detach_cur (self->unacked);
            break;
        }
    if (rc == CCM_EREPLY)
        //  Refused now (e.g. a stale attempt: the task was requeued): dropped.
        ccm_warn ("%s: %s", write->verb, ccm_client_strerror (rc, reply));
    else if (rc == 0 && write->kept)
        ccm_info ("%s, kept while the store was away, is recorded", write->verb);
    if (rc == CCM_ECLOSED)
        zlistx_add_end (self->unacked, write);  //  saved at shutdown
    else if (self->outbox_saved)
        s_save (self);
    if (write->fn)
        write->fn (write->arg, rc, reply);
    if (rc != CCM_ECLOSED)
        s_write_destroy (&write);
}

static void
s_send (exec_t *self, s_write_t *write)
{
    cJSON *body = cJSON_Parse (write->json);
    write->sent_ms = ccm_mono_ms ();
    //  The callback never runs before ccm_req_send returns.
    if (ccm_req_send (self->store, write->verb, &body, s_write_done, write)) {
        ccm_error ("%s: cannot send (not a JSON object)", write->verb);
        s_write_destroy (&write);
    }
    else
        zlistx_add_end (self->unacked, write);
}

void
exec_store_write (exec_t *self, const char *verb, cJSON *body, ccm_req_fn *fn, void *arg)
{
    if (!cJSON_GetObjectItemCaseSensitive (body, "idem"))
        ccm_client_add_idem (body);
    s_write_t *write = calloc (1, sizeof *write);
    write->owner = self;
    write->verb = strdup (verb);
    write->json = cJSON_PrintUnformatted (body);
    write->fn = fn;
    write->arg = arg;
    cJSON_Delete (body);
    s_send (self, write);
}

void
exec_store_read (exec_t *self, const char *verb, cJSON *body, ccm_req_fn *fn, void *arg)
{
    if (ccm_req_send (self->store, verb, &body, fn, arg) && fn)
        fn (arg, CCM_EPROTO, NULL);
}

void
exec_store_move (exec_t *self, const char *task_id, int attempt, const char *to, const char *reason,
                 cJSON *result)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", task_id);
    cJSON_AddStringToObject (body, "to", to);
    //  Only while this system holds this very attempt: a task requeued while
    //  we were away from the hub, and perhaps placed again, is not ours.
    cJSON_AddStringToObject (body, "held_by", self->system_id);
    if (attempt > 0)
        cJSON_AddNumberToObject (body, "attempt", attempt);
    if (reason)
        cJSON_AddStringToObject (body, "reason", reason);
    if (result)
        cJSON_AddItemToObject (body, "result", result);
    exec_store_write (self, "task.transition", body, NULL, NULL);
}

void
exec_store_load (exec_t *self)
{
    FILE *file = fopen (ccm_config_str (self->config, "executor.outbox"), "r");
    if (!file)
        return;
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    int count = 0;
    while ((len = getline (&line, &cap, file)) > 0) {
        char *tab = strchr (line, '\t');
        if (!tab || line[len - 1] != '\n')
            continue;  //  a line cut by a crash mid-write: its write was never acked
        line[len - 1] = 0;
        *tab = 0;
        cJSON *body = cJSON_Parse (tab + 1);
        if (!cJSON_IsObject (body)) {
            cJSON_Delete (body);
            continue;
        }
        //  An attempt whose end is recorded here is over: never started again.
        const char *task = cJSON_GetStringValue (cJSON_GetObjectItem (body, "task"));
        cJSON *attempt = cJSON_GetObjectItem (body, "attempt");
        if (strcmp (line, "task.transition") == 0 && task && cJSON_IsNumber (attempt)) {
            exec_attempt_t *seen = calloc (1, sizeof *seen);
            seen->attempt = (int) attempt->valuedouble;
            seen->state = "done";
            seen->at_ms = ccm_mono_ms ();
            zhashx_update (self->attempts, task, seen);
        }
        exec_store_write (self, line, body, NULL, NULL);
        ((s_write_t *) zlistx_last (self->unacked))->kept = true;
        count++;
    }
    free (line);
    fclose (file);
    if (count) {
        ccm_info ("%d write(s) left unacknowledged by the last run are sent first", count);
        self->outbox_saved = true;  //  the file goes once they are acked
    }
}

void
exec_store_check (exec_t *self)
{
    if (self->outbox_saved)
        return;
    int64_t overdue = ccm_mono_ms () - ccm_config_int (self->config, "bus.timeout_ms");
    for (s_write_t *write = zlistx_first (self->unacked); write;
         write = zlistx_next (self->unacked))
        if (write->sent_ms <= overdue) {
            ccm_warn ("the store has not answered %s for %lld ms: the %zu unacknowledged"
                      " write(s) are kept in %s and sent again until it does",
                      write->verb, (long long) (ccm_mono_ms () - write->sent_ms),
                      zlistx_size (self->unacked),
                      ccm_config_str (self->config, "executor.outbox"));
            s_save (self);
            return;
        }
}

//  At shutdown: whatever is still unacknowledged goes to the file.
void
exec_store_close (exec_t *self)
{
    if (self->store)
        ccm_req_flush (self->store, 2000);
    ccm_req_destroy (&self->store);  //  ECLOSED writes stay in unacked
    if (zlistx_size (self->unacked)) {
        s_save (self);
        ccm_warn ("stopping with %zu write(s) the store never answered; kept in %s for the"
                  " next start",
                  zlistx_size (self->unacked), ccm_config_str (self->config, "executor.outbox"));
    }
    s_write_t *write;
    while ((write = zlistx_detach (self->unacked, NULL)))
        s_write_destroy (&write);
}

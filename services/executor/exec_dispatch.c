/*  exec_dispatch: the executor and its router (executor.dispatch "router").

    The executor beats every router.heartbeat_ms: HEARTBEAT {system_id,
    seq, running}. The router answers each with HEARTBEAT {seq, held}: the
    attempts it counts as this executor's. That answer is the lease:

    - The router gives an executor up (its tasks go back to the queue) once
      it has heard nothing from it for router.liveness beats.
    - An answer to the beat sent at time t lets the agents of the attempts
      it names run until t + (liveness - 1) beats. t is when the executor
      sent the beat, on its own clock, so the router heard the beat after
      t, and gives the executor up no sooner than t + liveness beats: a
      whole beat after every lease it confirmed ran out.
    - The deadline goes to each agent's lease file, which its ccm-agent
      wrapper enforces by itself. So an executor paused (SIGSTOP, a
      laptop lid), killed or cut off cannot leave an agent running once
      its attempt may run elsewhere, and a stale answer read after a pause
      confirms nothing: its beat is old.
    - An attempt the router names and this executor never heard of is a
      RUN it missed: it is started as one. A RUN this executor has already
      taken is acknowledged, never run again.                             */

#include "exec_internal.h"

#include "ccm_bus.h"
#include "ccm_log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define S_RING 16  //  beats remembered, to match their answers

int
exec_lease_write (const char *path, int64_t deadline)
{
    char tmp[4200], text[32];
    snprintf (tmp, sizeof tmp, "%s.tmp", path);
    int len = snprintf (text, sizeof text, "%lld\n", (long long) deadline);
    int fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    bool ok = fd >= 0 && write (fd, text, (size_t) len) == len;
    if (fd >= 0)
        close (fd);
    //  Replaced whole: the wrapper never reads half a deadline.
    if (!ok || rename (tmp, path)) {
        ccm_warn ("cannot write the lease %s: %s", path, strerror (errno));
        return -1;
    }
    return 0;
}

int64_t
exec_lease_read (const char *path)
{
    FILE *file = fopen (path, "r");
    long long deadline = 0;
    if (file) {
        if (fscanf (file, "%lld", &deadline) != 1)
            deadline = 0;
        fclose (file);
    }
    return deadline;
}

void
exec_dispatch_connect (exec_t *self)
{
    if (self->router)
        zloop_reader_end (self->loop, self->router);
    zsock_destroy (&self->router);
    self->router = ccm_bus_dealer_connect (ccm_config_str (self->config, "router.endpoint"));
    if (self->router)
        zloop_reader (self->loop, self->router, exec_dispatch_readable, self);
    self->router_heard_ms = ccm_mono_ms ();
    self->router_sent_ms = 0;
}

static void
s_send (exec_t *self, const char *verb, cJSON *body)
{
    char *text = cJSON_PrintUnformatted (body);
    cJSON_Delete (body);
    zmsg_t *msg = zmsg_new ();
    zmsg_addstr (msg, verb);
    zmsg_addstr (msg, text ? text : "{}");
    free (text);
    if (!self->router || zmsg_send (&msg, self->router))
        zmsg_destroy (&msg);
}

//  Tells the router this executor is alive and what it runs; the first
//  beat registers it.
static void
s_beat (exec_t *self)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddNumberToObject (body, "v", 1);
    cJSON_AddStringToObject (body, "system_id", self->system_id);
    self->beat_seq++;
    self->beat_sent[self->beat_seq % S_RING] = ccm_boot_ms ();
    cJSON_AddNumberToObject (body, "seq", (double) self->beat_seq);
    cJSON *running = cJSON_AddArrayToObject (body, "running");
    for (int i = 0; i < self->nagents; i++)
        cJSON_AddItemToArray (running, cJSON_CreateString (self->agents[i]->task_id));
    s_send (self, "HEARTBEAT", body);
    self->router_sent_ms = ccm_mono_ms ();
}

//  The router's answer to beat seq: the attempts it holds for us keep
//  running until that beat's time plus the lease; others are left to run
//  out. An attempt it names that we never heard of is a RUN we missed.
static void
s_answer (exec_t *self, cJSON *body)
{
    cJSON *seq = cJSON_GetObjectItem (body, "seq");
    cJSON *held = cJSON_GetObjectItem (body, "held");
    if (!cJSON_IsNumber (seq) || !cJSON_IsArray (held))
        return;  //  a router of before leases: no word on them
    uint64_t n = (uint64_t) seq->valuedouble;
    if (n == 0 || n > self->beat_seq || self->beat_seq - n >= S_RING)
        return;  //  an answer to a beat too old to remember: confirms nothing
    int64_t until = self->beat_sent[n % S_RING] + self->lease_ms;
    if (until > self->lease_until)
        self->lease_until = until;
    cJSON *item;
    cJSON_ArrayForEach (item, held)
    {
        const char *task = cJSON_GetStringValue (cJSON_GetObjectItem (item, "task_id"));
        cJSON *attempt = cJSON_GetObjectItem (item, "attempt");
        if (!task || !ccm_uuid_valid (task) || !cJSON_IsNumber (attempt))
            continue;
        exec_attempt_t *seen = zhashx_lookup (self->attempts, task);
        if (!seen || seen->attempt < (int) attempt->valuedouble) {
            exec_agents_run (self, task, (int) attempt->valuedouble);
            continue;
        }
        if (seen->attempt != (int) attempt->valuedouble || strcmp (seen->state, "done") == 0)
            continue;
        exec_agent_t *agent = exec_agents_of (self, task);
        char path[4200];
        snprintf (path, sizeof path, "%s/%s.lease", self->lease_dir, task);
        if (agent && agent->attempt == seen->attempt) {
            if (agent->lease_until < until && exec_lease_write (path, until) == 0)
                agent->lease_until = until;
        }
        else if (strcmp (seen->state, "starting") == 0)
            exec_lease_write (path, until);
    }
}

int
exec_dispatch_readable (zloop_t *loop, zsock_t *reader, void *arg)
{
    (void) loop;
    exec_t *self = arg;
    while (zsock_events (reader) & ZMQ_POLLIN) {
        zmsg_t *msg = zmsg_recv (reader);
        if (!msg)
            break;
        char *verb = zmsg_popstr (msg);
        char *text = zmsg_popstr (msg);
        cJSON *body = text ? cJSON_Parse (text) : NULL;
        self->router_heard_ms = ccm_mono_ms ();
        const char *task_id = cJSON_GetStringValue (cJSON_GetObjectItem (body, "task_id"));
        cJSON *attempt = cJSON_GetObjectItem (body, "attempt");
        if (verb && strcmp (verb, "RUN") == 0 && task_id && ccm_uuid_valid (task_id)) {
            int number = cJSON_IsNumber (attempt) ? (int) attempt->valuedouble : 0;
            exec_attempt_t *seen = zhashx_lookup (self->attempts, task_id);
            cJSON *ack = cJSON_CreateObject ();
            cJSON_AddNumberToObject (ack, "v", 1);
            cJSON_AddStringToObject (ack, "system_id", self->system_id);
            cJSON_AddStringToObject (ack, "task_id", task_id);
            cJSON_AddNumberToObject (ack, "attempt", number);
            bool again = seen && number > 0 && seen->attempt >= number;
            cJSON_AddStringToObject (ack, "state", again ? seen->state : "starting");
            if (again)
                ccm_info ("the router sent task %.8s attempt %d again; it is %s here, not run"
                          " twice",
                          task_id, number, seen->state);
            else
                exec_agents_run (self, task_id, number);
            s_send (self, "ACK", ack);
        }
        else if (verb && strcmp (verb, "HEARTBEAT") == 0 && cJSON_IsObject (body))
            s_answer (self, body);
        else
            ccm_warn ("a malformed message from the router; ignored");
        cJSON_Delete (body);
        zstr_free (&text);
        zstr_free (&verb);
        zmsg_destroy (&msg);
    }
    return 0;
}

void
exec_dispatch_tick (exec_t *self)
{
    int64_t now = ccm_mono_ms ();
    int64_t liveness = ccm_config_int (self->config, "router.liveness");
    if (now - self->router_heard_ms > self->router_beat_ms * (liveness > 1 ? liveness : 1)) {
        ccm_warn ("no word from the router in %lld ms; reconnecting",
                  (long long) (now - self->router_heard_ms));
        exec_dispatch_connect (self);
    }
    //  On time, not up to a tick late: each answer renews the leases.
    if (now - self->router_sent_ms >= self->router_beat_ms - self->poll_ms / 2)
        s_beat (self);
    //  Past the lease, ccm-agent stops each agent by itself; say why once.
    for (int i = 0; i < self->nagents; i++) {
        exec_agent_t *agent = self->agents[i];
        if (!agent->end_reason && agent->lease_path && ccm_boot_ms () > agent->lease_until) {
            ccm_warn ("task %s: attempt %d's lease ran out (the router has not confirmed it for"
                      " %lld ms); its agent is stopped so that the task never runs twice",
                      agent->short_id, agent->attempt,
                      (long long) (ccm_boot_ms () - agent->lease_until + self->lease_ms));
            agent->end_reason = "lease";
        }
    }
}

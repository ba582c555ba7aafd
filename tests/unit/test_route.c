/*  Unit tests of the router's pure core (services/router/route.c): every
    rule of route.h with concrete executors, contexts and tasks, the exact
    reasons a user would read, the queue order, and that waiting tasks are
    judged again only when something they depend on changed.             */

#include "ccm_test.h"
#include "route.h"

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_UNKNOWN "3f2a9c1e-5b7d-4e8f-9a1b-2c3d4e5f6a7b"

//  The decision for a queued task, as one string: "A web active" when
//  placed (system, project, context status), else the reason.
static const char *
s_decide (route_t *route, const char *task_id)
{
    static char text[ROUTE_REASON_MAX + ROUTE_ID_MAX * 2];
    route_decision_t decision;
    if (route_decide (route, task_id, &decision))
        return "(not queued)";
    if (decision.placed)
        snprintf (text, sizeof text, "%s%s%s%s%s", decision.system_id, *decision.project ? " " : "",
                  decision.project, *decision.context_status ? " " : "", decision.context_status);
    else
        snprintf (text, sizeof text, "%s", decision.reason);
    return text;
}

//  Queues one task, decides it, and takes it off the queue again.
static const char *
s_try (route_t *route, const char *system_id, const char *project, const char *metadata)
{
    static int serial;
    char id[32];
    snprintf (id, sizeof id, "try-%d", ++serial);
    if (route_task_add (route, id, "normal", serial, system_id, project, metadata))
        return route_error (route);
    const char *text = s_decide (route, id);
    route_task_remove (route, id);
    return text;
}

//  Runs route_next and assigns what it found; returns "task@system", or
//  "-" if nothing could be placed.
static const char *
s_next (route_t *route)
{
    static char text[ROUTE_ID_MAX * 2 + 2];
    route_decision_t decision;
    if (!route_next (route, &decision))
        return "-";
    snprintf (text, sizeof text, "%s@%s", decision.task_id, decision.system_id);
    if (route_assign (route, decision.task_id, decision.system_id))
        return route_error (route);
    return text;
}

static route_stats_t
s_stats (route_t *route)
{
    route_stats_t stats;
    route_stats (route, &stats);
    return stats;
}

//  The fleet most cases use:
//    A  online, capacity 2, tags gpu, os=linux; web (active, lang=ts,
//       ci=true, cores=8)
//    B  online, capacity 4, tag os=darwin; web (active, lang=ts), api
//       (stale, lang=go)
//    C  offline, capacity 1; db (active)
static route_t *
s_fleet (void)
{
    route_t *route = route_new ();
    CHECK (route_system_set (route, "A", "[\"gpu\",\"os=linux\"]", 2, true) == 0);
    CHECK (route_system_set (route, "B", "[\"os=darwin\"]", 4, true) == 0);
    CHECK (route_system_set (route, "C", NULL, 1, false) == 0);
    CHECK (
        route_context_set (route, "A", "web", "active", "{\"lang\":\"ts\",\"ci\":true,\"cores\":8}")
        == 0);
    CHECK (route_context_set (route, "B", "web", "active", "{\"lang\":\"ts\"}") == 0);
    CHECK (route_context_set (route, "B", "api", "stale", "{\"lang\":\"go\"}") == 0);
    CHECK (route_context_set (route, "C", "db", "active", NULL) == 0);
    return route;
}

static void
s_test_input (void)
{
    route_t *route = route_new ();
    CHECK (route_system_set (route, "A", "[\"gpu\", 3]", 2, true) == -1);
    CHECK_STR (route_error (route), "tags: element 1 is not a non-empty string");
    CHECK (route_system_set (route, "A", "{\"gpu\":true}", 2, true) == -1);
    CHECK_STR (route_error (route), "tags: not a JSON array of strings");
    CHECK (route_system_set (route, "A", "[", 2, true) == -1);
    CHECK_STR (route_error (route), "tags: not a JSON array of strings");
    CHECK (route_system_set (route, "A", NULL, -1, true) == -1);
    CHECK_STR (route_error (route), "capacity: must be 0 or more, got -1");
    CHECK (route_system_set (route, "", NULL, 1, true) == -1);
    CHECK_STR (route_error (route), "system id: must be a non-empty string");
    char long_id[ROUTE_ID_MAX + 1];
    memset (long_id, 'x', ROUTE_ID_MAX);
    long_id[ROUTE_ID_MAX] = 0;
    CHECK (route_system_set (route, long_id, NULL, 1, true) == -1);
    CHECK_STR (route_error (route), "system id: longer than 127 bytes");
    CHECK (s_stats (route).systems == 0);  //  nothing half-added

    CHECK (route_context_set (route, "A", "web", "active", NULL) == -1);
    CHECK_STR (route_error (route), "system A is not registered");
    CHECK (route_system_set (route, "A", NULL, 1, true) == 0);
    CHECK (route_context_set (route, "A", "web", "busy", NULL) == -1);
    CHECK_STR (route_error (route), "status: must be active, stale or error, got 'busy'");
    CHECK (route_context_set (route, "A", "web", "active", "[1]") == -1);
    CHECK_STR (route_error (route), "metadata: not a JSON object");
    CHECK (route_context_remove (route, "A", "web") == -1);
    CHECK_STR (route_error (route), "system A has no context for project web");
    CHECK (route_system_set_load (route, "Z", 1) == -1);
    CHECK_STR (route_error (route), "system Z is not registered");
    CHECK (route_system_set_load (route, "A", -2) == -1);
    CHECK_STR (route_error (route), "load: must be 0 or more, got -2");

    CHECK (route_task_add (route, "t1", "asap", 1, NULL, NULL, NULL) == -1);
    CHECK_STR (route_error (route), "priority: must be low, normal, high or urgent, got 'asap'");
    CHECK (route_task_add (route, "t1", "high", 1, NULL, NULL, "\"gpu\"") == -1);
    CHECK_STR (route_error (route), "requires_context_metadata: not a JSON object");
    CHECK (route_task_add (route, "t1", NULL, 1, "", NULL, NULL) == -1);
    CHECK_STR (route_error (route), "system_id: must be a non-empty string");
    char many[ROUTE_REQS_MAX * 16 + 16] = "{";
    for (int i = 0; i <= ROUTE_REQS_MAX; i++)
        snprintf (many + strlen (many), sizeof many - strlen (many), "%s\"k%d\":\"v\"",
                  i ? "," : "", i);
    strcat (many, "}");
    CHECK (route_task_add (route, "t1", NULL, 1, NULL, NULL, many) == -1);
    CHECK_STR (route_error (route), "requires_context_metadata: more than 32 keys");
    CHECK (s_stats (route).queued == 0);
    CHECK (route_task_remove (route, "t1") == -1);
    CHECK_STR (route_error (route), "task t1 is not queued");
    route_decision_t decision;
    CHECK (route_decide (route, "t1", &decision) == -1);
    route_destroy (&route);
    CHECK (route == NULL);
    route_destroy (&route);  //  NULL is fine
}

//  Rule 1, and rule 3's reasons: an explicit target.
static void
s_test_explicit (void)
{
    route_t *route = s_fleet ();
    CHECK_STR (s_try (route, S_UNKNOWN, NULL, NULL), "system " S_UNKNOWN " is not registered");
    CHECK_STR (s_try (route, "C", "db", NULL), "system C is offline");
    CHECK_STR (s_try (route, "A", "api", NULL), "system A does not hold project api");
    CHECK_STR (s_try (route, "B", "web", "{\"gpu\":\"true\"}"), "system B does not match gpu=true");
    CHECK_STR (s_try (route, "B", "web", "{\"zone\":\"eu\",\"lang\":\"ts\",\"gpu\":\"true\"}"),
               "system B does not match gpu=true");  //  the first unmet key, by name
    CHECK_STR (s_try (route, "A", "web", NULL), "A web active");
    CHECK_STR (s_try (route, "B", NULL, NULL), "B");  //  no project: no context needed
    CHECK (route_system_set_load (route, "A", 2) == 0);
    CHECK_STR (s_try (route, "A", "web", NULL), "system A is at its capacity of 2 tasks");
    //  The explicit target is taken even when another executor is idler.
    CHECK (route_system_set_load (route, "A", 1) == 0);
    CHECK_STR (s_try (route, "A", "web", NULL), "A web active");
    route_destroy (&route);
}

//  Rule 1: projects, metadata from contexts or tags, JSON values by text.
static void
s_test_match (void)
{
    route_t *route = s_fleet ();
    CHECK_STR (s_try (route, NULL, "mobile", NULL), "no executor holds project mobile");
    CHECK_STR (s_try (route, NULL, "db", NULL),
               "no executor holding project db is online (1 offline)");
    CHECK_STR (s_try (route, NULL, "api", "{\"lang\":\"go\"}"), "B api stale");
    //  From the context's metadata: both hold web with lang=ts; A (0 of 2)
    //  and B (0 of 4) tie at 0, so the lower id.
    CHECK_STR (s_try (route, NULL, "web", "{\"lang\":\"ts\"}"), "A web active");
    //  From tags: a bare tag is key=true, whether true is asked as a string
    //  or as JSON true; k=v tags by their value.
    CHECK_STR (s_try (route, NULL, "web", "{\"gpu\":\"true\"}"), "A web active");
    CHECK_STR (s_try (route, NULL, "web", "{\"gpu\":true}"), "A web active");
    CHECK_STR (s_try (route, NULL, "web", "{\"os\":\"darwin\"}"), "B web active");
    CHECK_STR (s_try (route, NULL, "web", "{\"os\":\"linux\",\"lang\":\"ts\"}"), "A web active");
    //  Non-string metadata by JSON text: ci=true, cores=8.
    CHECK_STR (s_try (route, NULL, "web", "{\"ci\":\"true\"}"), "A web active");
    CHECK_STR (s_try (route, NULL, "web", "{\"ci\":true,\"cores\":8}"), "A web active");
    CHECK_STR (s_try (route, NULL, "web", "{\"cores\":\"8\"}"), "A web active");
    CHECK_STR (s_try (route, NULL, "web", "{\"cores\":\"8.0\"}"),
               "no executor holding project web matches cores=8.0");
    //  A string is compared by its text, not its JSON: "ts" is not "\"ts\"".
    CHECK_STR (s_try (route, NULL, "web", "{\"lang\":\"\\\"ts\\\"\"}"),
               "no executor holding project web matches lang=\"ts\"");
    //  No candidate has it; the first such key by name is named.
    CHECK_STR (s_try (route, NULL, "web", "{\"zone\":\"eu\",\"lang\":\"rust\"}"),
               "no executor holding project web matches lang=rust");
    //  Each key met somewhere but never together.
    CHECK_STR (s_try (route, NULL, "web", "{\"os\":\"darwin\",\"gpu\":\"true\"}"),
               "no executor holding project web matches all of gpu=true, os=darwin");
    //  Metadata of another project's context does not count for web.
    CHECK_STR (s_try (route, NULL, "web", "{\"lang\":\"go\"}"),
               "no executor holding project web matches lang=go");

    //  No project: the tags alone, or any context that completes them.
    CHECK_STR (s_try (route, NULL, NULL, NULL), "A");
    CHECK_STR (s_try (route, NULL, NULL, "{\"gpu\":\"true\"}"), "A");
    CHECK_STR (s_try (route, NULL, NULL, "{\"lang\":\"go\"}"), "B api stale");
    CHECK_STR (s_try (route, NULL, NULL, "{\"lang\":\"ts\",\"os\":\"darwin\"}"), "B web active");
    CHECK_STR (s_try (route, NULL, NULL, "{\"lang\":\"rust\"}"), "no executor matches lang=rust");
    CHECK_STR (s_try (route, NULL, NULL, "{\"lang\":\"go\",\"gpu\":\"true\"}"),
               "no executor matches all of gpu=true, lang=go");
    route_destroy (&route);

    route = route_new ();
    CHECK_STR (s_try (route, NULL, NULL, NULL), "no executor is registered");
    CHECK (route_system_set (route, "A", NULL, 1, false) == 0);
    CHECK (route_system_set (route, "B", NULL, 1, false) == 0);
    CHECK_STR (s_try (route, NULL, NULL, NULL), "no executor is online (2 offline)");
    CHECK (route_system_set_online (route, "B", true) == 0);
    CHECK_STR (s_try (route, NULL, NULL, NULL), "B");
    //  Capacity 0 never takes a task.
    CHECK (route_system_set (route, "B", NULL, 0, true) == 0);
    CHECK_STR (s_try (route, NULL, NULL, NULL), "the only candidate (system B) is at capacity");
    route_destroy (&route);
}

//  Rule 2: active first, then load / capacity, running tasks, id.
static void
s_test_prefer (void)
{
    route_t *route = route_new ();
    CHECK (route_system_set (route, "X", NULL, 4, true) == 0);
    CHECK (route_system_set (route, "Y", NULL, 4, true) == 0);
    CHECK (route_system_set (route, "Z", NULL, 4, true) == 0);
    CHECK (route_context_set (route, "X", "p", "active", NULL) == 0);
    CHECK (route_context_set (route, "Y", "p", "stale", NULL) == 0);
    CHECK (route_context_set (route, "Z", "p", "error", NULL) == 0);
    //  Active wins even when busier.
    CHECK (route_system_set_load (route, "X", 3) == 0);
    CHECK_STR (s_try (route, NULL, "p", NULL), "X p active");
    //  A full active one does not fit: then the least loaded of the others.
    CHECK (route_system_set_load (route, "X", 4) == 0);
    CHECK (route_system_set_load (route, "Y", 2) == 0);
    CHECK (route_system_set_load (route, "Z", 1) == 0);
    CHECK_STR (s_try (route, NULL, "p", NULL), "Z p error");
    CHECK (route_system_set_load (route, "Z", 3) == 0);
    CHECK_STR (s_try (route, NULL, "p", NULL), "Y p stale");
    CHECK (route_system_set_load (route, "Y", 4) == 0);
    CHECK (route_system_set_load (route, "Z", 4) == 0);
    CHECK_STR (s_try (route, NULL, "p", NULL), "all 3 candidates at capacity");
    //  Back to active: refreshing the status changes the choice.
    CHECK (route_context_set (route, "Y", "p", "active", NULL) == 0);
    CHECK (route_system_set_load (route, "Y", 3) == 0);
    CHECK (route_system_set_load (route, "X", 2) == 0);
    CHECK_STR (s_try (route, NULL, "p", NULL), "X p active");
    route_destroy (&route);

    //  Ratios, exactly: 1/4 < 1/2; 1/2 = 2/4 goes to fewer running; 1/3 =
    //  2/6 likewise; a full tie goes to the lower id.
    route = route_new ();
    CHECK (route_system_set (route, "m", NULL, 4, true) == 0);
    CHECK (route_system_set (route, "n", NULL, 2, true) == 0);
    CHECK (route_system_set_load (route, "m", 1) == 0);
    CHECK (route_system_set_load (route, "n", 1) == 0);
    CHECK_STR (s_try (route, NULL, NULL, NULL), "m");
    CHECK (route_system_set_load (route, "m", 2) == 0);
    CHECK_STR (s_try (route, NULL, NULL, NULL), "n");
    CHECK (route_system_set (route, "m", NULL, 6, true) == 0);
    CHECK (route_system_set (route, "n", NULL, 3, true) == 0);
    CHECK (route_system_set_load (route, "n", 1) == 0);
    CHECK_STR (s_try (route, NULL, NULL, NULL), "n");
    CHECK (route_system_set_load (route, "n", 2) == 0);
    CHECK (route_system_set_load (route, "m", 4) == 0);
    CHECK_STR (s_try (route, NULL, NULL, NULL), "n");  //  2/3 = 4/6, n runs fewer
    CHECK (route_system_set (route, "n", NULL, 6, true) == 0);
    CHECK (route_system_set_load (route, "n", 4) == 0);
    CHECK_STR (s_try (route, NULL, NULL, NULL), "m");  //  4/6 = 4/6, 4 = 4, "m" < "n"
    //  Big numbers do not overflow: 1000000000/2000000000 < 1000000001/2000000000.
    CHECK (route_system_set (route, "m", NULL, 2000000000, true) == 0);
    CHECK (route_system_set (route, "n", NULL, 2000000000, true) == 0);
    CHECK (route_system_set_load (route, "m", 1000000001) == 0);
    CHECK (route_system_set_load (route, "n", 1000000000) == 0);
    CHECK_STR (s_try (route, NULL, NULL, NULL), "n");
    route_destroy (&route);
}

//  Rule 4: priority, then seq; assign and release move the load.
static void
s_test_order (void)
{
    route_t *route = route_new ();
    CHECK (route_system_set (route, "A", NULL, 100, true) == 0);
    CHECK (route_task_add (route, "low-1", "low", 1, NULL, NULL, NULL) == 0);
    CHECK (route_task_add (route, "normal-2", "normal", 2, NULL, NULL, NULL) == 0);
    CHECK (route_task_add (route, "urgent-5", "urgent", 5, NULL, NULL, NULL) == 0);
    CHECK (route_task_add (route, "urgent-3", "urgent", 3, NULL, NULL, NULL) == 0);
    CHECK (route_task_add (route, "high-4", "high", 4, NULL, NULL, NULL) == 0);
    CHECK (route_task_add (route, "normal-0", NULL, 0, NULL, NULL, NULL) == 0);
    CHECK (s_stats (route).queued == 6 && s_stats (route).ready == 6);
    CHECK_STR (s_next (route), "urgent-3@A");
    CHECK_STR (s_next (route), "urgent-5@A");
    CHECK_STR (s_next (route), "high-4@A");
    CHECK_STR (s_next (route), "normal-0@A");
    CHECK_STR (s_next (route), "normal-2@A");
    CHECK_STR (s_next (route), "low-1@A");
    CHECK_STR (s_next (route), "-");
    route_stats_t stats = s_stats (route);
    CHECK (stats.queued == 0 && stats.running == 6);

    //  Re-adding a task replaces it: a new priority moves it.
    CHECK (route_task_add (route, "a", "low", 10, NULL, NULL, NULL) == 0);
    CHECK (route_task_add (route, "b", "normal", 11, NULL, NULL, NULL) == 0);
    CHECK (route_task_add (route, "a", "high", 10, NULL, NULL, NULL) == 0);
    CHECK (s_stats (route).queued == 2);
    CHECK_STR (s_next (route), "a@A");
    //  route_next without assign hands out the same decision again.
    route_decision_t one, two;
    CHECK (route_next (route, &one) && route_next (route, &two));
    CHECK_STR (one.task_id, "b");
    CHECK_STR (two.task_id, "b");
    CHECK (route_task_remove (route, "b") == 0);
    CHECK_STR (s_next (route), "-");

    //  Assign and release are idempotent, as replayed events need.
    CHECK (route_assign (route, "x", "A") == 0);
    CHECK (route_assign (route, "x", "A") == 0);
    CHECK (s_stats (route).running == 8);
    CHECK (route_system_set (route, "B", NULL, 1, true) == 0);
    CHECK (route_assign (route, "x", "B") == -1);
    CHECK_STR (route_error (route), "task x already runs on system A");
    CHECK (route_assign (route, "y", S_UNKNOWN) == -1);
    CHECK_STR (route_error (route), "system " S_UNKNOWN " is not registered");
    CHECK (route_release (route, "x") == 0);
    CHECK (route_release (route, "x") == 1);
    CHECK (s_stats (route).running == 7);
    route_destroy (&route);

    //  Load follows assign and release: capacity 2 takes two, then waits.
    route = route_new ();
    CHECK (route_system_set (route, "A", NULL, 2, true) == 0);
    CHECK (route_context_set (route, "A", "web", "active", NULL) == 0);
    for (int i = 1; i <= 3; i++) {
        char id[16];
        snprintf (id, sizeof id, "w%d", i);
        CHECK (route_task_add (route, id, "normal", i, NULL, "web", NULL) == 0);
    }
    CHECK_STR (s_next (route), "w1@A");
    CHECK_STR (s_next (route), "w2@A");
    CHECK_STR (s_next (route), "-");
    CHECK_STR (route_task_reason (route, "w3"), "the only candidate (system A) is at capacity");
    CHECK (route_release (route, "w1") == 0);
    CHECK_STR (s_next (route), "w3@A");
    CHECK_STR (s_next (route), "-");
    //  set_load is what the executor reports: it may free slots too.
    CHECK (route_task_add (route, "w4", "normal", 4, NULL, "web", NULL) == 0);
    CHECK_STR (s_next (route), "-");
    CHECK (route_system_set_load (route, "A", 0) == 0);
    CHECK_STR (s_next (route), "w4@A");
    route_destroy (&route);
}

//  Rule 4: a task that cannot go does not hold up the others, and is not
//  judged again until something it depends on changes.
static void
s_test_waiting (void)
{
    route_t *route = s_fleet ();
    CHECK (route_task_add (route, "u1", "urgent", 1, NULL, "mobile", NULL) == 0);
    CHECK (route_task_add (route, "u2", "urgent", 2, NULL, "web", "{\"lang\":\"rust\"}") == 0);
    CHECK (route_task_add (route, "n3", "normal", 3, NULL, "web", NULL) == 0);
    CHECK (route_task_reason (route, "u1") == NULL);  //  not looked at yet
    CHECK_STR (s_next (route), "n3@A");
    CHECK_STR (route_task_reason (route, "u1"), "no executor holds project mobile");
    CHECK_STR (route_task_reason (route, "u2"),
               "no executor holding project web matches lang=rust");
    route_stats_t stats = s_stats (route);
    CHECK (stats.queued == 2 && stats.waiting == 2 && stats.groups == 2 && stats.awake == 0);
    CHECK (stats.judged == 3);

    //  Nothing changed: nothing is judged again.
    CHECK_STR (s_next (route), "-");
    CHECK (s_stats (route).judged == 3);
    //  A second task of the same needs joins its group unjudged.
    CHECK (route_task_add (route, "u4", "urgent", 4, NULL, "mobile", NULL) == 0);
    CHECK_STR (s_next (route), "-");
    stats = s_stats (route);
    CHECK (stats.judged == 3 && stats.waiting == 3 && stats.groups == 2);
    CHECK_STR (route_task_reason (route, "u4"), "no executor holds project mobile");
    //  A freed slot wakes no one stopped by something else.
    CHECK (route_release (route, "n3") == 0);
    CHECK_STR (s_next (route), "-");
    CHECK (s_stats (route).judged == 3);
    //  A heartbeat or a context refresh that changes nothing wakes no one.
    CHECK (route_system_set (route, "A", "[\"os=linux\",\"gpu\"]", 2, true) == 0);
    CHECK (route_context_set (route, "B", "web", "active", "{\"lang\":\"ts\"}") == 0);
    CHECK (s_stats (route).awake == 0);
    //  A change that does not concern them either: a context of api.
    CHECK (route_context_set (route, "B", "api", "stale", "{\"lang\":\"go\",\"v\":2}") == 0);
    CHECK (s_stats (route).awake == 0);

    //  A change of web's metadata on B wakes the web group only; its
    //  reason is found again.
    CHECK (route_context_set (route, "B", "web", "active", "{\"lang\":\"ts\",\"ci\":false}") == 0);
    CHECK (s_stats (route).awake == 1);
    CHECK_STR (s_next (route), "-");
    CHECK (s_stats (route).judged == 4);
    //  Now B learns rust: u2 goes, u1 and u4 still wait for a mobile holder.
    CHECK (route_context_set (route, "B", "web", "active", "{\"lang\":\"rust\"}") == 0);
    CHECK_STR (s_next (route), "u2@B");
    CHECK_STR (s_next (route), "-");
    //  A new executor with mobile: both go, in order.
    CHECK (route_system_set (route, "D", NULL, 4, true) == 0);
    CHECK (route_context_set (route, "D", "mobile", "active", NULL) == 0);
    CHECK_STR (s_next (route), "u1@D");
    CHECK_STR (s_next (route), "u4@D");
    CHECK_STR (s_next (route), "-");
    stats = s_stats (route);
    CHECK (stats.queued == 0 && stats.groups == 0 && stats.awake == 0);

    //  An explicit target that registers later.
    CHECK (route_task_add (route, "e1", "low", 9, S_UNKNOWN, NULL, NULL) == 0);
    CHECK_STR (s_next (route), "-");
    CHECK_STR (route_task_reason (route, "e1"), "system " S_UNKNOWN " is not registered");
    CHECK (route_system_set (route, S_UNKNOWN, NULL, 1, true) == 0);
    CHECK_STR (s_next (route), "e1@" S_UNKNOWN);
    route_destroy (&route);
}

//  Waiting for capacity: a slot wakes only the groups that fit where it
//  came free, and the best waiting task takes it.
static void
s_test_capacity (void)
{
    route_t *route = route_new ();
    CHECK (route_system_set (route, "G", "[\"gpu\"]", 1, true) == 0);
    CHECK (route_system_set (route, "H", NULL, 1, true) == 0);
    CHECK (route_context_set (route, "G", "p", "active", NULL) == 0);
    CHECK (route_context_set (route, "H", "p", "active", NULL) == 0);
    CHECK (route_task_add (route, "g1", "normal", 1, NULL, "p", "{\"gpu\":\"true\"}") == 0);
    CHECK (route_task_add (route, "p2", "normal", 2, NULL, "p", NULL) == 0);
    CHECK (route_task_add (route, "g3", "normal", 3, NULL, "p", "{\"gpu\":\"true\"}") == 0);
    CHECK (route_task_add (route, "p4", "normal", 4, NULL, "p", NULL) == 0);
    CHECK (route_task_add (route, "p5", "urgent", 5, NULL, "p", NULL) == 0);
    CHECK_STR (s_next (route), "p5@G");  //  G and H tie: the lower id
    CHECK_STR (s_next (route), "p2@H");
    CHECK_STR (s_next (route), "-");
    CHECK_STR (route_task_reason (route, "g1"), "the only candidate (system G) is at capacity");
    CHECK_STR (route_task_reason (route, "p4"), "all 2 candidates at capacity");
    route_stats_t stats = s_stats (route);
    CHECK (stats.waiting == 3 && stats.groups == 2);
    uint64_t judged = stats.judged;

    //  A slot on H wakes no group: route_next finds the best waiting task
    //  that fits H (p4; the gpu group cannot use H) and judges only it.
    CHECK (route_release (route, "p2") == 0);
    CHECK (s_stats (route).awake == 0);
    CHECK_STR (s_next (route), "p4@H");
    CHECK_STR (s_next (route), "-");
    CHECK (s_stats (route).judged == judged + 1);
    //  A slot on G: the oldest gpu task takes it; g3 is not judged again,
    //  its reason still holds.
    CHECK (route_release (route, "p5") == 0);
    CHECK_STR (s_next (route), "g1@G");
    CHECK_STR (s_next (route), "-");
    CHECK (s_stats (route).judged == judged + 2);
    CHECK_STR (route_task_reason (route, "g3"), "the only candidate (system G) is at capacity");
    //  A better task that comes meanwhile takes the free slot first.
    CHECK (route_release (route, "g1") == 0);
    CHECK (route_task_add (route, "u6", "urgent", 6, NULL, "p", NULL) == 0);
    CHECK (route_task_add (route, "g7", "normal", 7, NULL, "p", "{\"gpu\":\"true\"}") == 0);
    CHECK_STR (s_next (route), "u6@G");
    CHECK_STR (s_next (route), "-");
    CHECK (s_stats (route).waiting == 2);  //  g3 and g7, g7 unjudged in g3's group
    CHECK (s_stats (route).judged == judged + 3);
    //  A decision not followed by route_assign (the task was cancelled)
    //  leaves the slot free for the next one.
    CHECK (route_release (route, "u6") == 0);
    route_decision_t decision;
    CHECK (route_next (route, &decision));
    CHECK_STR (decision.task_id, "g3");
    CHECK (route_task_remove (route, "g3") == 0);
    CHECK_STR (s_next (route), "g7@G");
    CHECK (s_stats (route).queued == 0);
    //  Offline is not a slot; back online is a change.
    CHECK (route_release (route, "g7") == 0);
    CHECK (route_system_set_online (route, "G", false) == 0);
    CHECK (route_task_add (route, "g8", "normal", 8, NULL, "p", "{\"gpu\":\"true\"}") == 0);
    CHECK_STR (s_next (route), "-");
    CHECK_STR (route_task_reason (route, "g8"),
               "no executor holding project p matches gpu=true");  //  H online, no gpu
    CHECK (route_system_set_online (route, "G", true) == 0);
    CHECK_STR (s_next (route), "g8@G");
    route_destroy (&route);
}

//  Removing executors and contexts; nothing stays behind once tasks end.
static void
s_test_forget (void)
{
    route_t *route = s_fleet ();
    route_stats_t stats = s_stats (route);
    CHECK (stats.systems == 3 && stats.contexts == 4 && stats.projects == 3);
    CHECK (route_task_add (route, "t1", "normal", 1, NULL, "api", NULL) == 0);
    CHECK_STR (s_next (route), "t1@B");
    CHECK (route_context_remove (route, "B", "api") == 0);
    CHECK (route_task_add (route, "t2", "normal", 2, NULL, "api", NULL) == 0);
    CHECK_STR (s_next (route), "-");
    CHECK_STR (route_task_reason (route, "t2"), "no executor holds project api");
    CHECK (route_task_add (route, "t3", "normal", 3, NULL, "web", "{\"os\":\"darwin\"}") == 0);
    CHECK_STR (s_next (route), "t3@B");  //  not stuck behind t2
    stats = s_stats (route);
    CHECK (stats.queued == 1 && stats.running == 2);

    //  Removing B forgets its contexts and its running tasks; the waiting
    //  group is judged again and names the new reason.
    CHECK (route_task_add (route, "t4", "normal", 4, NULL, "web", "{\"os\":\"darwin\"}") == 0);
    CHECK (route_system_remove (route, "B") == 0);
    CHECK (route_system_remove (route, "B") == -1);
    CHECK_STR (route_error (route), "system B is not registered");
    stats = s_stats (route);
    CHECK (stats.systems == 2 && stats.contexts == 2 && stats.projects == 2 && stats.running == 0);
    CHECK_STR (s_next (route), "-");
    CHECK_STR (route_task_reason (route, "t4"),
               "no executor holding project web matches os=darwin");
    CHECK (route_release (route, "t1") == 1);
    CHECK_STR (s_try (route, "B", NULL, NULL), "system B is not registered");
    CHECK (route_task_remove (route, "t2") == 0);
    CHECK (route_task_remove (route, "t4") == 0);

    //  A thousand tasks through: queue, groups and running all empty after.
    for (int i = 0; i < 1000; i++) {
        char id[16];
        snprintf (id, sizeof id, "k%d", i);
        CHECK (route_task_add (route, id, i % 3 ? "normal" : "high", 100 + i, NULL,
                               i % 2 ? "web" : NULL, i % 5 ? NULL : "{\"gpu\":\"true\"}")
               == 0);
    }
    int placed = 0;
    route_decision_t decision;
    while (true) {
        if (route_next (route, &decision)) {
            CHECK (route_assign (route, decision.task_id, decision.system_id) == 0);
            CHECK (route_release (route, decision.task_id) == 0);
            placed++;
        }
        else
            break;
    }
    CHECK (placed == 1000);
    stats = s_stats (route);
    CHECK (stats.queued == 0 && stats.ready == 0 && stats.waiting == 0 && stats.groups == 0
           && stats.awake == 0 && stats.running == 0);
    route_destroy (&route);
}

//  A random walk over every call, checked at each route_next against the
//  rules applied by brute force: the first queued task, in priority then
//  seq order, that route_decide places must be the one route_next returns,
//  on the same executor; none, when it returns false. And then every
//  waiting task's recorded reason must be the one route_decide gives now:
//  a task asleep is never stale.
#define S_WALK_TASKS 600

typedef struct {
    char id[16];
    int rank;
    int seq;
    bool queued;
    bool running;
} s_walk_task_t;

static uint32_t
s_walk_random (uint32_t *state)
{
    *state ^= *state << 13;
    *state ^= *state >> 17;
    *state ^= *state << 5;
    return *state;
}

static int
s_walk_compare (const void *a, const void *b)
{
    const s_walk_task_t *x = *(s_walk_task_t *const *) a, *y = *(s_walk_task_t *const *) b;
    if (x->rank != y->rank)
        return y->rank - x->rank;
    return x->seq - y->seq;
}

static void
s_test_walk (void)
{
    static const char *const priorities[] = {"low", "normal", "high", "urgent"};
    static const char *const tags[] = {"[]", "[\"gpu\"]", "[\"os=linux\"]",
                                       "[\"gpu\",\"os=linux\"]"};
    static const char *const statuses[] = {"active", "stale", "error"};
    static const char *const metadata[] = {NULL, "{\"lang\":\"c\"}", "{\"lang\":\"go\"}"};
    static const char *const needs[] = {NULL, NULL, "{\"gpu\":true}", "{\"lang\":\"c\"}",
                                        "{\"os\":\"linux\",\"lang\":\"go\"}"};
    static s_walk_task_t tasks[S_WALK_TASKS];
    s_walk_task_t *order[S_WALK_TASKS];
    int ntasks = 0, checks = 0, placed = 0, mismatches = 0, stale = 0;
    uint32_t rng = 2463534242u;
    route_t *route = route_new ();
    char system[8], project[8];
    for (int step = 0; step < 20000; step++) {
        int op = (int) (s_walk_random (&rng) % 12);
        snprintf (system, sizeof system, "s%u", s_walk_random (&rng) % 5);
        snprintf (project, sizeof project, "p%u", s_walk_random (&rng) % 4);
        if (op == 0 && ntasks < S_WALK_TASKS) {
            s_walk_task_t *task = &tasks[ntasks];
            snprintf (task->id, sizeof task->id, "t%d", ntasks);
            task->rank = (int) (s_walk_random (&rng) % 4);
            task->seq = (int) (s_walk_random (&rng) % 1000);  //  not in arrival order
            uint32_t shape = s_walk_random (&rng) % 10;
            CHECK (route_task_add (route, task->id, priorities[task->rank], task->seq,
                                   shape == 0 ? system : NULL, shape < 8 ? project : NULL,
                                   needs[s_walk_random (&rng) % 5])
                   == 0);
            task->queued = true;
            ntasks++;
        }
        else if (op == 1 && ntasks) {
            s_walk_task_t *task = &tasks[s_walk_random (&rng) % (uint32_t) ntasks];
            CHECK ((route_task_remove (route, task->id) == 0) == task->queued);
            task->queued = false;
        }
        else if ((op == 2 || op == 3) && ntasks) {
            s_walk_task_t *task = &tasks[s_walk_random (&rng) % (uint32_t) ntasks];
            CHECK (route_release (route, task->id) == (task->running ? 0 : 1));
            task->running = false;
        }
        else if (op == 4)
            route_system_set_load (route, system, (int) (s_walk_random (&rng) % 3));
        else if (op == 5)
            route_context_set (route, system, project, statuses[s_walk_random (&rng) % 3],
                               metadata[s_walk_random (&rng) % 3]);
        else if (op == 6 && s_walk_random (&rng) % 4 == 0)
            route_context_remove (route, system, project);
        else if (op == 7 && s_walk_random (&rng) % 3 == 0) {
            uint32_t pick = s_walk_random (&rng);
            route_system_set (route, system, tags[pick % 4], (int) (pick / 4 % 4),
                              pick / 16 % 5 != 0);
        }
        else if (op == 8 && s_walk_random (&rng) % 8 == 0)
            route_system_set_online (route, system, s_walk_random (&rng) % 2);
        else if (op == 9 && s_walk_random (&rng) % 40 == 0) {
            //  It forgets its running tasks; release the others too, to
            //  keep the model simple.
            route_system_remove (route, system);
            for (int i = 0; i < ntasks; i++) {
                route_release (route, tasks[i].id);
                tasks[i].running = false;
            }
        }
        else if (op >= 10) {
            //  The brute-force answer.
            int n = 0;
            for (int i = 0; i < ntasks; i++)
                if (tasks[i].queued)
                    order[n++] = &tasks[i];
            qsort (order, (size_t) n, sizeof order[0], s_walk_compare);
            route_decision_t expected = {0}, got;
            for (int i = 0; i < n && !expected.placed; i++)
                CHECK (route_decide (route, order[i]->id, &expected) == 0);
            bool found = route_next (route, &got);
            checks++;
            if (found != expected.placed
                || (found
                    && (strcmp (got.task_id, expected.task_id)
                        || strcmp (got.system_id, expected.system_id))))
                mismatches++;
            if (found && s_walk_random (&rng) % 4) {
                CHECK (route_assign (route, got.task_id, got.system_id) == 0);
                s_walk_task_t *task = &tasks[atoi (got.task_id + 1)];
                task->queued = false;
                task->running = true;
                placed++;
            }
            if (!found)
                for (int i = 0; i < n; i++) {
                    CHECK (route_decide (route, order[i]->id, &got) == 0);
                    const char *reason = route_task_reason (route, order[i]->id);
                    if (!reason || strcmp (reason, got.reason))
                        stale++;
                }
        }
    }
    CHECK (checks > 2000 && placed > 300);
    CHECK (mismatches == 0);
    CHECK (stale == 0);
    if (mismatches || stale)
        fprintf (stderr, "walk: %d of %d route_next differ from brute force; %d stale reasons\n",
                 mismatches, checks, stale);
    route_destroy (&route);
}

int
main (void)
{
    s_test_input ();
    s_test_explicit ();
    s_test_match ();
    s_test_prefer ();
    s_test_order ();
    s_test_waiting ();
    s_test_capacity ();
    s_test_forget ();
    s_test_walk ();
    return CCM_TEST_DONE ();
}

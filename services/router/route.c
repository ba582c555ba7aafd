/*  route: where queued tasks go. The rules and the reasons are in route.h;
    this file is about doing it cheaply.

    The index. Executors by id, each with its tags (a set of "key=value"
    strings, so a required key/value is one lookup) and its contexts by
    project; and every project to the contexts that hold it, so a task that
    names a project looks only at its holders. Nothing is kept about tasks
    once they leave the queue, so the cost of a decision does not depend on
    how many tasks ran before.

    The queue. New tasks wait in one FIFO list per priority (ordered by seq;
    a new task normally goes at the tail, O(1)). route_next looks at the
    best head. A task that cannot be placed moves aside into its group: the
    queued tasks with identical needs (target system, project, required
    key/values). All members of a group get the same answer from the same
    state, so the group, not each task, is judged:
      - the group sleeps with the verdict of the task that was judged, and
        a later task of a sleeping group joins it without being judged;
      - a group wakes only when something changes that it depends on: for a
        group naming system S, a change of S; for one naming project P, a
        change of an executor holding P; for one naming neither, a change of
        any executor. Re-registering an executor or refreshing a context
        with nothing changed is no change;
      - a slot coming free (a release, a lower load) wakes nobody: the
        executor goes on a short list instead. Of the groups stopped by
        capacity alone, the best head that fits it can surely go there, so
        route_next finds that one head (a scan of the groups that could use
        the executor, no judging) and leaves the others asleep. Waking them
        all would judge each again for a single slot. Groups stopped by
        anything else (no holder, offline, metadata) ignore slots;
      - route_next takes, in priority then seq order, the best of the heads
        of the ready lists, of the awake groups, and those found for free
        slots. A placed head leaves its group as it was, so its next member
        comes next; an unplaced one puts the whole group back to sleep.
    So a waiting task never blocks those behind it, no task is judged again
    while nothing it depends on changed, and the work of a change or of a
    free slot is bounded by the groups it concerns, not by the number of
    queued tasks. The price is a scan of the awake groups and of the
    groups that could use a free slot, per route_next: there are few (one
    per distinct set of needs), and structural changes are rare.

    Memory: like the czmq containers it is built on, allocation aborts when
    out of memory rather than leave a half-built index.                    */

#include "route.h"

#include <cjson/cJSON.h>
#include <czmq.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S_NPRIO 4  //  low, normal, high, urgent: the index is the rank

static const char *const s_priorities[S_NPRIO] = {"low", "normal", "high", "urgent"};
static char s_present[] = "";  //  the item of a set member (zhashx items are never NULL)

typedef struct _s_system_t s_system_t;

//  One project checked out on one executor.
typedef struct {
    s_system_t *system;  //  the executor holding it
    char *project;
    char *scope;         //  "p:<project>", the scope of groups it may serve
    const char *status;  //  "active", "stale" or "error" (static)
    bool active;
    zhashx_t *metadata;  //  key -> value as compared (char *, owned)
    void *handle;        //  in self->projects[project]
    void *walk_handle;   //  in system->walk
} s_context_t;

struct _s_system_t {
    char *id;
    char *scope;     //  "s:<id>", the scope of groups naming it
    zhashx_t *tags;  //  set of "key=value"; a bare tag "gpu" is kept as "gpu=true"
    int capacity;
    int load;  //  tasks running there
    bool online;
    zhashx_t *contexts;  //  project -> s_context_t (owned), for lookups
    //  The same contexts, for walks: zhashx_lookup moves a hash's cursor, so
    //  a hash that may be looked up during a walk is never walked itself.
    zlistx_t *walk;
    void *freed_handle;  //  in self->freed, or NULL
};

//  One required key/value, with the tag that would meet it.
typedef struct {
    char *key;
    char *value;
    char *tag;  //  "key=value"
} s_req_t;

typedef struct _s_group_t s_group_t;

typedef struct {
    char *id;
    int priority;  //  index in s_priorities
    int64_t seq;
    char *system_id;  //  or NULL
    char *project;    //  or NULL
    s_req_t *reqs;    //  sorted by key, so equal needs give equal group keys
    int nreqs;
    char *group_key;
    zlistx_t *list;    //  self->ready[priority], or its group's tasks
    void *handle;      //  in list
    s_group_t *group;  //  while it waits aside, else NULL
} s_task_t;

//  The waiting tasks of identical needs, judged as one.
struct _s_group_t {
    char *key;
    char *scope;      //  "s:<system>", "p:<project>" or "*": which changes concern it
    zlistx_t *tasks;  //  best first (s_task_t, not owned)
    bool full;        //  stopped only by full executors
    char reason[ROUTE_REASON_MAX];
    void *scope_handle;  //  in self->scopes[scope]
    void *awake_handle;  //  in self->awake, NULL while it sleeps
};

struct _route_t {
    zhashx_t *systems;         //  id -> s_system_t (owned)
    zhashx_t *projects;        //  project -> zlistx of its s_context_t (lists owned)
    zhashx_t *tasks;           //  id -> s_task_t (owned), every queued task
    zlistx_t *ready[S_NPRIO];  //  tasks not judged since they came, by seq
    zhashx_t *groups;          //  key -> s_group_t (owned)
    zhashx_t *scopes;          //  scope -> zlistx of s_group_t (lists owned)
    zlistx_t *awake;           //  groups to judge again (s_group_t)
    zlistx_t *freed;           //  executors where a slot came free (s_system_t)
    zhashx_t *running;         //  task id -> system id (char *, owned)
    size_t ncontexts;
    uint64_t judged;  //  s_decide calls by route_next, for route_stats
    char error[ROUTE_REASON_MAX];
};

//  How far a candidate got through the checks, in the order they are made.
typedef enum {
    S_OFFLINE,
    S_NO_PROJECT,
    S_MISMATCH,  //  a required key/value is not met
    S_FULL,      //  fits, but has no free slot
    S_FITS
} s_stage_t;

//  A candidate's result.
typedef struct {
    s_stage_t stage;
    s_context_t *context;  //  the context it would use, or NULL
    uint32_t unmet;        //  S_MISMATCH: bit i set if reqs[i] is not met
} s_fit_t;

//  What all candidates of a decision showed, for the choice or the reason.
typedef struct {
    size_t candidates;
    s_stage_t furthest;
    size_t offline;
    size_t full;
    s_system_t *full_one;  //  a full candidate, named when it is the only one
    uint32_t met;          //  bit i set if some candidate meets reqs[i]
    s_system_t *best;
    s_context_t *best_context;
} s_tally_t;

static int s_fail (route_t *self, const char *format, ...) CHECK_PRINTF (2);

static int
s_fail (route_t *self, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    vsnprintf (self->error, sizeof self->error, format, args);
    va_end (args);
    return -1;
}

static char *
s_strdup (const char *text)
{
    size_t size = strlen (text) + 1;
    char *copy = zmalloc (size);
    memcpy (copy, text, size);
    return copy;
}

//  Checks an id or project name: present, and short enough to copy into a
//  decision. NULL is fine where optional is true.
static int
s_check_name (route_t *self, const char *field, const char *value, bool optional)
{
    if (!value && optional)
        return 0;
    if (!value || !*value)
        return s_fail (self, "%s: must be a non-empty string", field);
    if (strlen (value) >= ROUTE_ID_MAX)
        return s_fail (self, "%s: longer than %d bytes", field, ROUTE_ID_MAX - 1);
    return 0;
}

//  The text a JSON value is compared by: a string's own text, any other
//  value's JSON text (so true is "true" and 8 is "8"). Caller owns.
static char *
s_value_text (const cJSON *item)
{
    if (cJSON_IsString (item))
        return s_strdup (item->valuestring);
    char *printed = cJSON_PrintUnformatted (item);
    char *text = s_strdup (printed ? printed : "null");
    cJSON_free (printed);
    return text;
}

//  Parses text (NULL meaning empty) as a JSON object. Caller owns.
static cJSON *
s_parse_object (route_t *self, const char *field, const char *text)
{
    cJSON *json = cJSON_Parse (text ? text : "{}");
    if (!cJSON_IsObject (json)) {
        cJSON_Delete (json);
        s_fail (self, "%s: not a JSON object", field);
        return NULL;
    }
    return json;
}

//  Parses a context's metadata into key -> compared text. Caller owns.
static zhashx_t *
s_metadata_parse (route_t *self, const char *text)
{
    cJSON *json = s_parse_object (self, "metadata", text);
    if (!json)
        return NULL;
    zhashx_t *metadata = zhashx_new ();
    zhashx_set_destructor (metadata, (zhashx_destructor_fn *) zstr_free);
    const cJSON *item;
    cJSON_ArrayForEach (item, json)
    {
        zhashx_update (metadata, item->string, s_value_text (item));
    }
    cJSON_Delete (json);
    return metadata;
}

//  Parses tags into a set of "key=value". Caller owns.
static zhashx_t *
s_tags_parse (route_t *self, const char *text)
{
    cJSON *json = cJSON_Parse (text ? text : "[]");
    if (!cJSON_IsArray (json)) {
        cJSON_Delete (json);
        s_fail (self, "tags: not a JSON array of strings");
        return NULL;
    }
    zhashx_t *tags = zhashx_new ();
    int index = 0;
    const cJSON *item;
    cJSON_ArrayForEach (item, json)
    {
        if (!cJSON_IsString (item) || !*item->valuestring) {
            s_fail (self, "tags: element %d is not a non-empty string", index);
            zhashx_destroy (&tags);
            break;
        }
        //  "gpu" means gpu=true: keeping both forms alike makes any required
        //  key/value one lookup of "key=value".
        if (strchr (item->valuestring, '='))
            zhashx_update (tags, item->valuestring, s_present);
        else {
            char *tag = zsys_sprintf ("%s=true", item->valuestring);
            zhashx_update (tags, tag, s_present);
            zstr_free (&tag);
        }
        index++;
    }
    cJSON_Delete (json);
    return tags;
}

//  True if the two hashes hold the same keys, and the same string values
//  when values is true. Tells a refresh from a change.
static bool
s_same_hash (zhashx_t *a, zhashx_t *b, bool values)
{
    if (zhashx_size (a) != zhashx_size (b))
        return false;
    for (const char *value = zhashx_first (a); value; value = zhashx_next (a)) {
        const char *other = zhashx_lookup (b, zhashx_cursor (a));
        if (!other || (values && strcmp (value, other) != 0))
            return false;
    }
    return true;
}

static void
s_context_destroy (s_context_t **self_p)
{
    if (self_p && *self_p) {
        s_context_t *self = *self_p;
        zhashx_destroy (&self->metadata);
        free (self->scope);
        free (self->project);
        free (self);
        *self_p = NULL;
    }
}

static void
s_system_destroy (s_system_t **self_p)
{
    if (self_p && *self_p) {
        s_system_t *self = *self_p;
        zlistx_destroy (&self->walk);
        zhashx_destroy (&self->contexts);
        zhashx_destroy (&self->tags);
        free (self->scope);
        free (self->id);
        free (self);
        *self_p = NULL;
    }
}

static void
s_task_destroy (s_task_t **self_p)
{
    if (self_p && *self_p) {
        s_task_t *self = *self_p;
        for (int i = 0; i < self->nreqs; i++) {
            free (self->reqs[i].key);
            free (self->reqs[i].value);
            free (self->reqs[i].tag);
        }
        free (self->reqs);
        free (self->group_key);
        free (self->system_id);
        free (self->project);
        free (self->id);
        free (self);
        *self_p = NULL;
    }
}

static void
s_group_destroy (s_group_t **self_p)
{
    if (self_p && *self_p) {
        s_group_t *self = *self_p;
        zlistx_destroy (&self->tasks);
        free (self->scope);
        free (self->key);
        free (self);
        *self_p = NULL;
    }
}

//  Queue order: higher priority first, then lower seq, then id, so that no
//  two tasks tie.
static int
s_task_compare (const void *item1, const void *item2)
{
    const s_task_t *a = item1, *b = item2;
    if (a->priority != b->priority)
        return a->priority > b->priority ? -1 : 1;
    if (a->seq != b->seq)
        return a->seq < b->seq ? -1 : 1;
    return strcmp (a->id, b->id);
}

static int
s_req_compare (const void *item1, const void *item2)
{
    const s_req_t *a = item1, *b = item2;
    int order = strcmp (a->key, b->key);
    return order ? order : strcmp (a->value, b->value);
}

//  The group key: every need, length-prefixed so that no two different
//  sets of needs can spell the same key.
static char *
s_group_key (const s_task_t *task)
{
    const char *system = task->system_id ? task->system_id : "";
    const char *project = task->project ? task->project : "";
    size_t size = 64 + strlen (system) + strlen (project);
    for (int i = 0; i < task->nreqs; i++)
        size += 48 + strlen (task->reqs[i].key) + strlen (task->reqs[i].value);
    char *key = zmalloc (size);
    int at =
        snprintf (key, size, "s%zu:%sp%zu:%s", strlen (system), system, strlen (project), project);
    for (int i = 0; i < task->nreqs; i++)
        at += snprintf (key + at, size - (size_t) at, "k%zu:%sv%zu:%s", strlen (task->reqs[i].key),
                        task->reqs[i].key, strlen (task->reqs[i].value), task->reqs[i].value);
    return key;
}

//  Writes into scope the scope of changes that concern a task.
static void
s_task_scope (const s_task_t *task, char *scope, size_t size)
{
    if (task->system_id)
        snprintf (scope, size, "s:%s", task->system_id);
    else if (task->project)
        snprintf (scope, size, "p:%s", task->project);
    else
        snprintf (scope, size, "*");
}

//  ---------------------------------------------------------------------
//  Deciding

//  The required key/values of task that neither the context's metadata
//  (when there is one) nor the executor's tags meet, as bits.
static uint32_t
s_unmet (const s_task_t *task, const s_system_t *system, const s_context_t *context)
{
    uint32_t unmet = 0;
    for (int i = 0; i < task->nreqs; i++) {
        const s_req_t *req = &task->reqs[i];
        const char *value = context ? zhashx_lookup (context->metadata, req->key) : NULL;
        if (value && streq (value, req->value))
            continue;
        if (zhashx_lookup (system->tags, req->tag))
            continue;
        unmet |= 1u << i;
    }
    return unmet;
}

//  Checks one candidate for one task, in the order of route.h's rules.
//  Walks system->walk only for a task without a project, so s_wake_system
//  may call it for project tasks while it walks that list itself.
static s_fit_t
s_fit (const s_task_t *task, s_system_t *system)
{
    s_fit_t fit = {S_OFFLINE, NULL, 0};
    if (!system->online)
        return fit;
    if (task->project) {
        fit.context = zhashx_lookup (system->contexts, task->project);
        if (!fit.context) {
            fit.stage = S_NO_PROJECT;
            return fit;
        }
        fit.unmet = s_unmet (task, system, fit.context);
    }
    else if (task->nreqs) {
        //  No project named: the tags alone may do, or else any context that
        //  completes them; an active one before a stale one, then by name.
        fit.unmet = s_unmet (task, system, NULL);
        if (fit.unmet) {
            uint32_t everywhere = fit.unmet;
            for (s_context_t *context = zlistx_first (system->walk); context;
                 context = zlistx_next (system->walk)) {
                uint32_t unmet = s_unmet (task, system, context);
                everywhere &= unmet;
                if (unmet == 0
                    && (!fit.context || context->active > fit.context->active
                        || (context->active == fit.context->active
                            && strcmp (context->project, fit.context->project) < 0)))
                    fit.context = context;
            }
            fit.unmet = fit.context ? 0 : everywhere;
        }
    }
    if (fit.unmet) {
        fit.stage = S_MISMATCH;
        return fit;
    }
    fit.stage = system->load < system->capacity ? S_FITS : S_FULL;
    return fit;
}

//  True if candidate a (using context ca) beats b (using cb): an active
//  context (or none needed) first, then load / capacity, compared by
//  cross-multiplication so 1/3 and 2/6 tie exactly, then fewer running
//  tasks, then the lower id.
static bool
s_better (const s_system_t *a, const s_context_t *ca, const s_system_t *b, const s_context_t *cb)
{
    bool a_active = !ca || ca->active, b_active = !cb || cb->active;
    if (a_active != b_active)
        return a_active;
    int64_t left = (int64_t) a->load * b->capacity;
    int64_t right = (int64_t) b->load * a->capacity;
    if (left != right)
        return left < right;
    if (a->load != b->load)
        return a->load < b->load;
    return strcmp (a->id, b->id) < 0;
}

static void
s_tally (s_tally_t *tally, const s_task_t *task, s_system_t *system)
{
    s_fit_t fit = s_fit (task, system);
    if (tally->candidates++ == 0 || fit.stage > tally->furthest)
        tally->furthest = fit.stage;
    if (fit.stage == S_OFFLINE)
        tally->offline++;
    else if (fit.stage == S_MISMATCH)
        tally->met |= ~fit.unmet;
    else if (fit.stage == S_FULL) {
        tally->full++;
        tally->full_one = system;
    }
    else if (fit.stage == S_FITS
             && (!tally->best
                 || s_better (system, fit.context, tally->best, tally->best_context))) {
        tally->best = system;
        tally->best_context = fit.context;
    }
}

//  Appends to a reason, cutting what does not fit.
static void s_append (char *reason, const char *format, ...) CHECK_PRINTF (2);

static void
s_append (char *reason, const char *format, ...)
{
    size_t len = strlen (reason);
    va_list args;
    va_start (args, format);
    vsnprintf (reason + len, ROUTE_REASON_MAX - len, format, args);
    va_end (args);
}

//  Writes the reason why no candidate fits, from what they showed. The
//  wording of each case is listed in route.h.
static void
s_reason (const s_task_t *task, const s_tally_t *tally, bool known_target, char *reason)
{
    reason[0] = 0;
    uint32_t first_unmet = 0;  //  index + 1 of the first need no candidate meets
    for (int i = 0; i < task->nreqs && !first_unmet; i++)
        if (!(tally->met & (1u << i)))
            first_unmet = (uint32_t) i + 1;
    if (task->system_id) {
        const char *id = task->system_id;
        if (!known_target)
            s_append (reason, "system %s is not registered", id);
        else if (tally->furthest == S_OFFLINE)
            s_append (reason, "system %s is offline", id);
        else if (tally->furthest == S_NO_PROJECT)
            s_append (reason, "system %s does not hold project %s", id, task->project);
        else if (tally->furthest == S_MISMATCH)
            s_append (reason, "system %s does not match %s", id, task->reqs[first_unmet - 1].tag);
        else
            s_append (reason, "system %s is at its capacity of %d tasks", id,
                      tally->full_one->capacity);
        return;
    }
    char where[ROUTE_ID_MAX + 32] = "";
    if (task->project)
        snprintf (where, sizeof where, " holding project %s", task->project);
    if (tally->candidates == 0) {
        if (task->project)
            s_append (reason, "no executor holds project %s", task->project);
        else
            s_append (reason, "no executor is registered");
    }
    else if (tally->furthest <= S_NO_PROJECT)
        s_append (reason, "no executor%s is online (%zu offline)", where, tally->offline);
    else if (tally->furthest == S_MISMATCH && first_unmet)
        s_append (reason, "no executor%s matches %s", where, task->reqs[first_unmet - 1].tag);
    else if (tally->furthest == S_MISMATCH) {
        //  Each need is met somewhere, never all on one executor: name them all.
        s_append (reason, "no executor%s matches all of ", where);
        for (int i = 0; i < task->nreqs; i++)
            s_append (reason, "%s%s", i ? ", " : "", task->reqs[i].tag);
    }
    else if (tally->full == 1)
        s_append (reason, "the only candidate (system %s) is at capacity", tally->full_one->id);
    else
        s_append (reason, "all %zu candidates at capacity", tally->full);
}

//  Decides for one task; returns how far the best candidate got (S_FITS
//  if placed).
static s_stage_t
s_decide (route_t *self, const s_task_t *task, route_decision_t *decision)
{
    s_tally_t tally = {0};
    bool known_target = true;
    if (task->system_id) {
        s_system_t *system = zhashx_lookup (self->systems, task->system_id);
        known_target = system != NULL;
        if (system)
            s_tally (&tally, task, system);
    }
    else if (task->project) {
        zlistx_t *holders = zhashx_lookup (self->projects, task->project);
        for (s_context_t *context = holders ? zlistx_first (holders) : NULL; context;
             context = zlistx_next (holders))
            s_tally (&tally, task, context->system);
    }
    else
        for (s_system_t *system = zhashx_first (self->systems); system;
             system = zhashx_next (self->systems))
            s_tally (&tally, task, system);

    //  Names are checked shorter than ROUTE_ID_MAX when they come in.
    decision->placed = tally.best != NULL;
    strcpy (decision->task_id, task->id);
    decision->system_id[0] = 0;
    decision->project[0] = 0;
    decision->context_status = "";
    decision->reason[0] = 0;
    if (tally.best) {
        strcpy (decision->system_id, tally.best->id);
        if (tally.best_context) {
            strcpy (decision->project, tally.best_context->project);
            decision->context_status = tally.best_context->status;
        }
        return S_FITS;
    }
    s_reason (task, &tally, known_target, decision->reason);
    return tally.candidates ? tally.furthest : S_OFFLINE;
}

//  ---------------------------------------------------------------------
//  Groups and waking

//  The group of the task's needs, made if there is none.
static s_group_t *
s_group_require (route_t *self, const s_task_t *task)
{
    s_group_t *group = zhashx_lookup (self->groups, task->group_key);
    if (group)
        return group;
    group = zmalloc (sizeof *group);
    group->key = s_strdup (task->group_key);
    char scope[ROUTE_ID_MAX + 4];
    s_task_scope (task, scope, sizeof scope);
    group->scope = s_strdup (scope);
    group->tasks = zlistx_new ();
    zlistx_set_comparator (group->tasks, s_task_compare);
    zhashx_insert (self->groups, group->key, group);
    zlistx_t *members = zhashx_lookup (self->scopes, group->scope);
    if (!members) {
        members = zlistx_new ();
        zhashx_insert (self->scopes, group->scope, members);
    }
    group->scope_handle = zlistx_add_end (members, group);
    return group;
}

//  Forgets an empty group, so groups do not pile up with history.
static void
s_group_drop (route_t *self, s_group_t *group)
{
    if (group->awake_handle)
        zlistx_detach (self->awake, group->awake_handle);
    zlistx_t *members = zhashx_lookup (self->scopes, group->scope);
    zlistx_detach (members, group->scope_handle);
    if (zlistx_size (members) == 0)
        zhashx_delete (self->scopes, group->scope);
    zhashx_delete (self->groups, group->key);
}

//  Takes the task off the ready list or its group.
static void
s_unqueue (route_t *self, s_task_t *task)
{
    zlistx_detach (task->list, task->handle);
    if (task->group && zlistx_size (task->group->tasks) == 0)
        s_group_drop (self, task->group);
    task->list = NULL;
    task->handle = NULL;
    task->group = NULL;
}

//  Puts the task aside in its group, and the group to sleep with the
//  verdict (full, reason) found for it, or kept if reason is NULL.
static void
s_park (route_t *self, s_task_t *task, bool full, const char *reason)
{
    s_group_t *group = task->group;
    if (!group) {
        group = s_group_require (self, task);
        zlistx_detach (task->list, task->handle);
        //  Tasks are judged best first, so they mostly go in at the tail.
        task->handle = zlistx_insert (group->tasks, task, false);
        task->list = group->tasks;
        task->group = group;
    }
    if (reason) {
        group->full = full;
        snprintf (group->reason, sizeof group->reason, "%s", reason);
    }
    if (group->awake_handle) {
        zlistx_detach (self->awake, group->awake_handle);
        group->awake_handle = NULL;
    }
}

//  With freed NULL, wakes every sleeping group of the scope. With freed
//  set, wakes nobody but finds, into *pick, the best head of the sleeping
//  groups stopped by capacity alone that freed fits now.
static void
s_scan_scope (route_t *self, const char *scope, s_system_t *freed, s_task_t **pick)
{
    zlistx_t *members = zhashx_lookup (self->scopes, scope);
    if (!members)
        return;
    for (s_group_t *group = zlistx_first (members); group; group = zlistx_next (members)) {
        if (group->awake_handle)
            continue;
        if (!freed)
            group->awake_handle = zlistx_add_end (self->awake, group);
        else if (group->full) {
            s_task_t *head = zlistx_head (group->tasks);
            //  The order first: it is cheaper than the fit.
            if ((!*pick || s_task_compare (head, *pick) < 0) && s_fit (head, freed).stage == S_FITS)
                *pick = head;
        }
    }
}

//  Scans (see s_scan_scope) the groups a change of system may concern:
//  those naming it, those taking any executor, and those naming project if
//  given, else any of the projects it holds.
static void
s_scan_system (route_t *self, s_system_t *system, const char *project, s_system_t *freed,
               s_task_t **pick)
{
    s_scan_scope (self, system->scope, freed, pick);
    s_scan_scope (self, "*", freed, pick);
    if (project) {
        char scope[ROUTE_ID_MAX + 4];
        snprintf (scope, sizeof scope, "p:%s", project);
        s_scan_scope (self, scope, freed, pick);
        return;
    }
    //  Groups of "p:" scopes name a project, so s_fit does not walk
    //  system->walk for them.
    for (s_context_t *context = zlistx_first (system->walk); context;
         context = zlistx_next (system->walk))
        s_scan_scope (self, context->scope, freed, pick);
}

//  Wakes the groups a change of system may concern.
static void
s_wake_system (route_t *self, s_system_t *system, const char *project)
{
    s_scan_system (self, system, project, NULL, NULL);
}

//  Notes that a slot came free on system, for route_next to fill.
static void
s_slot_freed (route_t *self, s_system_t *system)
{
    if (!system->freed_handle)
        system->freed_handle = zlistx_add_end (self->freed, system);
}

//  ---------------------------------------------------------------------
//  The object

route_t *
route_new (void)
{
    route_t *self = zmalloc (sizeof *self);
    self->systems = zhashx_new ();
    zhashx_set_destructor (self->systems, (zhashx_destructor_fn *) s_system_destroy);
    self->projects = zhashx_new ();
    zhashx_set_destructor (self->projects, (zhashx_destructor_fn *) zlistx_destroy);
    self->tasks = zhashx_new ();
    zhashx_set_destructor (self->tasks, (zhashx_destructor_fn *) s_task_destroy);
    for (int p = 0; p < S_NPRIO; p++) {
        self->ready[p] = zlistx_new ();
        zlistx_set_comparator (self->ready[p], s_task_compare);
    }
    self->groups = zhashx_new ();
    zhashx_set_destructor (self->groups, (zhashx_destructor_fn *) s_group_destroy);
    self->scopes = zhashx_new ();
    zhashx_set_destructor (self->scopes, (zhashx_destructor_fn *) zlistx_destroy);
    self->awake = zlistx_new ();
    self->freed = zlistx_new ();
    self->running = zhashx_new ();
    zhashx_set_destructor (self->running, (zhashx_destructor_fn *) zstr_free);
    return self;
}

void
route_destroy (route_t **self_p)
{
    if (self_p && *self_p) {
        route_t *self = *self_p;
        //  Lists that only point (ready, groups, scopes, awake, projects)
        //  go before the tasks and contexts they point to.
        zlistx_destroy (&self->awake);
        zlistx_destroy (&self->freed);
        zhashx_destroy (&self->scopes);
        zhashx_destroy (&self->groups);
        for (int p = 0; p < S_NPRIO; p++)
            zlistx_destroy (&self->ready[p]);
        zhashx_destroy (&self->tasks);
        zhashx_destroy (&self->projects);
        zhashx_destroy (&self->systems);
        zhashx_destroy (&self->running);
        free (self);
        *self_p = NULL;
    }
}

const char *
route_error (route_t *self)
{
    return self->error;
}

int
route_system_set (route_t *self, const char *id, const char *tags_json, int capacity, bool online)
{
    if (s_check_name (self, "system id", id, false))
        return -1;
    if (capacity < 0)
        return s_fail (self, "capacity: must be 0 or more, got %d", capacity);
    zhashx_t *tags = s_tags_parse (self, tags_json);
    if (!tags)
        return -1;
    s_system_t *system = zhashx_lookup (self->systems, id);
    if (!system) {
        system = zmalloc (sizeof *system);
        system->id = s_strdup (id);
        system->scope = zsys_sprintf ("s:%s", id);
        system->contexts = zhashx_new ();
        zhashx_set_destructor (system->contexts, (zhashx_destructor_fn *) s_context_destroy);
        system->walk = zlistx_new ();
        zhashx_insert (self->systems, system->id, system);
    }
    else if (capacity == system->capacity && online == system->online
             && s_same_hash (tags, system->tags, false)) {
        //  A heartbeat that changes nothing wakes nobody.
        zhashx_destroy (&tags);
        return 0;
    }
    zhashx_destroy (&system->tags);
    system->tags = tags;
    system->capacity = capacity;
    system->online = online;
    s_wake_system (self, system, NULL);
    return 0;
}

int
route_system_set_load (route_t *self, const char *id, int load)
{
    s_system_t *system = id ? zhashx_lookup (self->systems, id) : NULL;
    if (!system)
        return s_fail (self, "system %s is not registered", id ? id : "(null)");
    if (load < 0)
        return s_fail (self, "load: must be 0 or more, got %d", load);
    int was = system->load;
    system->load = load;
    if (load < was)
        s_slot_freed (self, system);
    return 0;
}

int
route_system_set_online (route_t *self, const char *id, bool online)
{
    s_system_t *system = id ? zhashx_lookup (self->systems, id) : NULL;
    if (!system)
        return s_fail (self, "system %s is not registered", id ? id : "(null)");
    if (system->online != online) {
        system->online = online;
        s_wake_system (self, system, NULL);
    }
    return 0;
}

int
route_system_remove (route_t *self, const char *id)
{
    s_system_t *system = id ? zhashx_lookup (self->systems, id) : NULL;
    if (!system)
        return s_fail (self, "system %s is not registered", id ? id : "(null)");
    if (system->freed_handle)
        zlistx_detach (self->freed, system->freed_handle);
    //  Its waiting groups are judged again, to name the new reason.
    s_wake_system (self, system, NULL);
    for (s_context_t *context = zlistx_first (system->walk); context;
         context = zlistx_next (system->walk)) {
        zlistx_t *holders = zhashx_lookup (self->projects, context->project);
        zlistx_detach (holders, context->handle);
        if (zlistx_size (holders) == 0)
            zhashx_delete (self->projects, context->project);
        self->ncontexts--;
    }
    //  Its running tasks are the caller's to requeue; keeping them would
    //  only make a later release of theirs count against nothing.
    zlistx_t *gone = zlistx_new ();
    for (const char *where = zhashx_first (self->running); where;
         where = zhashx_next (self->running))
        if (streq (where, id))
            zlistx_add_end (gone, (void *) zhashx_cursor (self->running));
    for (const char *task_id = zlistx_first (gone); task_id; task_id = zlistx_next (gone))
        zhashx_delete (self->running, task_id);
    zlistx_destroy (&gone);
    zhashx_delete (self->systems, id);
    return 0;
}

int
route_context_set (route_t *self, const char *system_id, const char *project, const char *status,
                   const char *metadata_json)
{
    if (s_check_name (self, "system id", system_id, false)
        || s_check_name (self, "project", project, false))
        return -1;
    static const char *const statuses[] = {"active", "stale", "error"};
    const char *known = NULL;
    for (int i = 0; i < 3 && status && !known; i++)
        if (streq (status, statuses[i]))
            known = statuses[i];
    if (!known)
        return s_fail (self, "status: must be active, stale or error, got '%s'",
                       status ? status : "(null)");
    s_system_t *system = zhashx_lookup (self->systems, system_id);
    if (!system)
        return s_fail (self, "system %s is not registered", system_id);
    zhashx_t *metadata = s_metadata_parse (self, metadata_json);
    if (!metadata)
        return -1;
    s_context_t *context = zhashx_lookup (system->contexts, project);
    if (context) {
        //  Executors refresh their contexts often; only a change wakes anyone.
        bool same = context->status == known && s_same_hash (context->metadata, metadata, true);
        zhashx_destroy (&context->metadata);
        context->metadata = metadata;
        context->status = known;
        context->active = known == statuses[0];
        if (same)
            return 0;
    }
    else {
        context = zmalloc (sizeof *context);
        context->system = system;
        context->project = s_strdup (project);
        context->scope = zsys_sprintf ("p:%s", project);
        context->status = known;
        context->active = known == statuses[0];
        context->metadata = metadata;
        zhashx_insert (system->contexts, project, context);
        context->walk_handle = zlistx_add_end (system->walk, context);
        zlistx_t *holders = zhashx_lookup (self->projects, project);
        if (!holders) {
            holders = zlistx_new ();
            zhashx_insert (self->projects, project, holders);
        }
        context->handle = zlistx_add_end (holders, context);
        self->ncontexts++;
    }
    s_wake_system (self, system, project);
    return 0;
}

int
route_context_remove (route_t *self, const char *system_id, const char *project)
{
    s_system_t *system = system_id ? zhashx_lookup (self->systems, system_id) : NULL;
    s_context_t *context = system && project ? zhashx_lookup (system->contexts, project) : NULL;
    if (!context)
        return s_fail (self, "system %s has no context for project %s",
                       system_id ? system_id : "(null)", project ? project : "(null)");
    zlistx_t *holders = zhashx_lookup (self->projects, project);
    zlistx_detach (holders, context->handle);
    if (zlistx_size (holders) == 0)
        zhashx_delete (self->projects, project);
    self->ncontexts--;
    s_wake_system (self, system, project);
    zlistx_detach (system->walk, context->walk_handle);
    zhashx_delete (system->contexts, project);
    return 0;
}

int
route_task_add (route_t *self, const char *id, const char *priority, int64_t seq,
                const char *system_id, const char *requires_project,
                const char *requires_metadata_json)
{
    if (s_check_name (self, "task id", id, false)
        || s_check_name (self, "system_id", system_id, true)
        || s_check_name (self, "requires_project", requires_project, true))
        return -1;
    int rank = -1;
    for (int p = 0; p < S_NPRIO && rank < 0; p++)
        if (streq (priority ? priority : "normal", s_priorities[p]))
            rank = p;
    if (rank < 0)
        return s_fail (self, "priority: must be low, normal, high or urgent, got '%s'", priority);
    cJSON *json = s_parse_object (self, "requires_context_metadata", requires_metadata_json);
    if (!json)
        return -1;
    int nreqs = cJSON_GetArraySize (json);
    if (nreqs > ROUTE_REQS_MAX) {
        cJSON_Delete (json);
        return s_fail (self, "requires_context_metadata: more than %d keys", ROUTE_REQS_MAX);
    }
    s_task_t *task = zmalloc (sizeof *task);
    task->id = s_strdup (id);
    task->priority = rank;
    task->seq = seq;
    task->system_id = system_id ? s_strdup (system_id) : NULL;
    task->project = requires_project ? s_strdup (requires_project) : NULL;
    task->reqs = zmalloc (sizeof (s_req_t) * (size_t) (nreqs ? nreqs : 1));
    const cJSON *item;
    cJSON_ArrayForEach (item, json)
    {
        s_req_t *req = &task->reqs[task->nreqs++];
        req->key = s_strdup (item->string);
        req->value = s_value_text (item);
        req->tag = zsys_sprintf ("%s=%s", req->key, req->value);
    }
    cJSON_Delete (json);
    qsort (task->reqs, (size_t) task->nreqs, sizeof (s_req_t), s_req_compare);
    task->group_key = s_group_key (task);

    s_task_t *old = zhashx_lookup (self->tasks, id);
    if (old) {
        s_unqueue (self, old);
        zhashx_delete (self->tasks, id);
    }
    zhashx_insert (self->tasks, task->id, task);
    task->list = self->ready[rank];
    //  New tasks have the highest seq as a rule: searching from the tail
    //  finds their place at once.
    task->handle = zlistx_insert (task->list, task, false);
    return 0;
}

int
route_task_remove (route_t *self, const char *id)
{
    s_task_t *task = id ? zhashx_lookup (self->tasks, id) : NULL;
    if (!task)
        return s_fail (self, "task %s is not queued", id ? id : "(null)");
    s_unqueue (self, task);
    zhashx_delete (self->tasks, id);
    return 0;
}

int
route_decide (route_t *self, const char *task_id, route_decision_t *decision)
{
    s_task_t *task = task_id ? zhashx_lookup (self->tasks, task_id) : NULL;
    if (!task)
        return s_fail (self, "task %s is not queued", task_id ? task_id : "(null)");
    s_decide (self, task, decision);
    return 0;
}

bool
route_next (route_t *self, route_decision_t *decision)
{
    while (true) {
        //  The best of: the head of the highest non-empty ready list, and
        //  the head of every awake group.
        s_task_t *task = NULL;
        for (int p = S_NPRIO - 1; p >= 0 && !task; p--)
            task = zlistx_head (self->ready[p]);
        for (s_group_t *group = zlistx_first (self->awake); group;
             group = zlistx_next (self->awake)) {
            s_task_t *head = zlistx_head (group->tasks);
            if (!task || s_task_compare (head, task) < 0)
                task = head;
        }
        //  And the best waiting task that fits an executor where a slot
        //  came free: it can surely go. An executor leaves the list once
        //  it is full again or no waiting group fits it.
        for (s_system_t *system = zlistx_first (self->freed); system;
             system = zlistx_next (self->freed)) {
            s_task_t *pick = NULL;
            if (system->online && system->load < system->capacity)
                s_scan_system (self, system, NULL, system, &pick);
            if (!pick) {
                zlistx_detach_cur (self->freed);
                system->freed_handle = NULL;
            }
            else if (!task || s_task_compare (pick, task) < 0)
                task = pick;
        }
        if (!task)
            return false;
        if (!task->group) {
            //  A sleeping group of the same needs already knows the answer.
            s_group_t *group = zhashx_lookup (self->groups, task->group_key);
            if (group && !group->awake_handle) {
                s_park (self, task, false, NULL);
                continue;
            }
        }
        self->judged++;
        s_stage_t stage = s_decide (self, task, decision);
        if (decision->placed)
            return true;
        s_park (self, task, stage == S_FULL, decision->reason);
    }
}

int
route_assign (route_t *self, const char *task_id, const char *system_id)
{
    if (s_check_name (self, "task id", task_id, false))
        return -1;
    s_system_t *system = system_id ? zhashx_lookup (self->systems, system_id) : NULL;
    if (!system)
        return s_fail (self, "system %s is not registered", system_id ? system_id : "(null)");
    const char *where = zhashx_lookup (self->running, task_id);
    if (where && !streq (where, system_id))
        return s_fail (self, "task %s already runs on system %s", task_id, where);
    s_task_t *task = zhashx_lookup (self->tasks, task_id);
    if (task) {
        s_unqueue (self, task);
        zhashx_delete (self->tasks, task_id);
    }
    if (!where) {
        zhashx_insert (self->running, task_id, s_strdup (system_id));
        system->load++;
    }
    return 0;
}

int
route_release (route_t *self, const char *task_id)
{
    const char *where = task_id ? zhashx_lookup (self->running, task_id) : NULL;
    if (!where)
        return 1;
    s_system_t *system = zhashx_lookup (self->systems, where);
    zhashx_delete (self->running, task_id);
    if (system && system->load > 0) {
        system->load--;
        s_slot_freed (self, system);
    }
    return 0;
}

const char *
route_task_reason (route_t *self, const char *task_id)
{
    s_task_t *task = task_id ? zhashx_lookup (self->tasks, task_id) : NULL;
    return task && task->group ? task->group->reason : NULL;
}

void
route_stats (route_t *self, route_stats_t *stats)
{
    memset (stats, 0, sizeof *stats);
    stats->systems = zhashx_size (self->systems);
    stats->contexts = self->ncontexts;
    stats->projects = zhashx_size (self->projects);
    stats->queued = zhashx_size (self->tasks);
    for (int p = 0; p < S_NPRIO; p++)
        stats->ready += zlistx_size (self->ready[p]);
    stats->waiting = stats->queued - stats->ready;
    stats->groups = zhashx_size (self->groups);
    stats->awake = zlistx_size (self->awake);
    stats->running = zhashx_size (self->running);
    stats->judged = self->judged;
}

/*  store_hooks: hook events, the hottest write path (hook.add), and their
    reader (hook.list).

    Every event of a request is validated before the first is written, so a
    bad event refuses its whole request and nothing of it lands; once valid,
    a row cannot fail a constraint, which is why hook.add needs no SAVEPOINT
    of its own (store_server.c). One prepared INSERT per event, with the
    times bound from C, and one events row (topic hook.added) per task of
    the request, summing up what it inserted for that task: a per-row event
    would double the rows written and halve what SQLite can take.                                 */

#include "store_internal.h"

#define S_BATCH_MAX 10000

//  One row as protocol.md's HOOK object, event_data as an object.
#define S_HOOK_JSON                                                                                \
    "json_object('id', id, 'uid', uid, 'task_id', task_id, 'agent_id', agent_id,"                  \
    " 'system_id', system_id, 'session_id', session_id, 'hook_type', hook_type,"                   \
    " 'hook_timestamp', hook_timestamp, 'tool_name', tool_name, 'file_path', file_path,"           \
    " 'success', CASE success WHEN 1 THEN json('true') WHEN 0 THEN json('false') END,"             \
    " 'event_data', json(event_data)) FROM hook_events"

typedef struct {
    const char *uid, *task_id, *agent_id, *system_id, *session_id;
    const char *hook_type, *hook_timestamp, *tool_name, *file_path;
    cJSON *event_data;
    int success;  //  -1 unknown
} s_hook_t;

//  Reads event i of the batch, naming the failing field as events[i].field.
static int
s_read (cJSON *item, int i, s_hook_t *hook, ccm_error_t *err)
{
    memset (hook, 0, sizeof *hook);
    hook->success = -1;
    if (!cJSON_IsObject (item))
        return ccm_fail (err, "bad_field", "events", "events[%d]: must be an object", i);
    bool success = false;
    bool has_success = cJSON_GetObjectItemCaseSensitive (item, "success")
                       && !cJSON_IsNull (cJSON_GetObjectItemCaseSensitive (item, "success"));
    if (ccm_get_string (item, "hook_type", true, 64, &hook->hook_type, err)
        || ccm_get_object (item, "event_data", true, &hook->event_data, err)
        || ccm_get_string (item, "uid", false, 128, &hook->uid, err)
        || ccm_get_string (item, "task_id", false, 64, &hook->task_id, err)
        || ccm_get_string (item, "agent_id", false, 128, &hook->agent_id, err)
        || ccm_get_string (item, "system_id", false, 128, &hook->system_id, err)
        || ccm_get_string (item, "session_id", false, 128, &hook->session_id, err)
        || ccm_get_string (item, "hook_timestamp", false, 64, &hook->hook_timestamp, err)
        || ccm_get_string (item, "tool_name", false, 256, &hook->tool_name, err)
        || ccm_get_string (item, "file_path", false, 4096, &hook->file_path, err)
        || ccm_get_bool (item, "success", false, &success, err)) {
        //  Prefix the field with the event's index, so the sender can find it.
        char field[sizeof err->field];
        snprintf (field, sizeof field, "events[%d].%.40s", i, err->field);
        char message[sizeof err->message];
        snprintf (message, sizeof message, "events[%d].%.400s", i, err->message);
        return ccm_fail (err, err->code, field, "%s", message);
    }
    if (has_success)
        hook->success = success;
    return 0;
}

//  What one request inserted for one task (or for none): one hook.added
//  event each, so a subscriber or events.since filtering by task sees it.
typedef struct {
    const char *task_id;  //  borrowed; NULL for rows without a task
    int64_t first, last, count;
    zhashx_t *types;  //  hook_type -> count
} s_group_t;

typedef struct {
    zhashx_t *index;  //  task id ("" for none) -> group index + 1
    s_group_t *groups;
    size_t ngroups;
    int64_t first, last, count;  //  over the whole request
} s_summary_t;

//  Counts an inserted row in its task's group. Returns 0, or -1 out of memory.
static int
s_summary_add (s_summary_t *summary, int64_t id, const s_hook_t *hook)
{
    if (!summary->first)
        summary->first = id;
    summary->last = id;
    summary->count++;
    const char *key = hook->task_id ? hook->task_id : "";
    size_t index = (size_t) (uintptr_t) zhashx_lookup (summary->index, key);
    if (index == 0) {
        s_group_t *group = &summary->groups[summary->ngroups];
        *group = (s_group_t){.task_id = hook->task_id, .first = id, .types = zhashx_new ()};
        if (!group->types)
            return -1;
        index = ++summary->ngroups;
        if (zhashx_insert (summary->index, key, (void *) (uintptr_t) index))
            return -1;
    }
    s_group_t *group = &summary->groups[index - 1];
    group->last = id;
    group->count++;
    uintptr_t seen = (uintptr_t) zhashx_lookup (group->types, hook->hook_type);
    if (seen)
        zhashx_update (group->types, hook->hook_type, (void *) (seen + 1));
    else if (zhashx_insert (group->types, hook->hook_type, (void *) (uintptr_t) 1))
        return -1;
    return 0;
}

static void
s_summary_destroy (s_summary_t *summary)
{
    for (size_t i = 0; i < summary->ngroups; i++)
        zhashx_destroy (&summary->groups[i].types);
    zhashx_destroy (&summary->index);
    free (summary->groups);
}

//  Appends one events row for a group: hook.added, with its id range, its
//  row count and its count per hook type.
static int
s_group_write (store_t *self, const s_group_t *group, const char *now, ccm_error_t *err)
{
    cJSON *data = cJSON_CreateObject ();
    cJSON_AddNumberToObject (data, "first_id", (double) group->first);
    cJSON_AddNumberToObject (data, "last_id", (double) group->last);
    cJSON_AddNumberToObject (data, "count", (double) group->count);
    cJSON *types = cJSON_AddObjectToObject (data, "types");
    for (void *count = zhashx_first (group->types); count; count = zhashx_next (group->types))
        cJSON_AddNumberToObject (types, (const char *) zhashx_cursor (group->types),
                                 (double) (uintptr_t) count);
    char *text = cJSON_PrintUnformatted (data);
    cJSON_Delete (data);
    if (!text)
        return ccm_fail (err, "internal", "", "out of memory");
    char first[24];
    snprintf (first, sizeof first, "%lld", (long long) group->first);
    sqlite3_stmt *stmt = self->hook_event;
    sqlite3_bind_text (stmt, 1, now, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 2, first, -1, SQLITE_STATIC);
    store_db_bind_text (stmt, 3, group->task_id);
    sqlite3_bind_text (stmt, 4, text, -1, free);
    int rc = store_db_run (stmt);
    return rc == SQLITE_DONE ? 0 : store_db_fail (self, err, "hook.add event");
}

int
store_hook_add (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    cJSON *events = NULL;
    if (ccm_get_array (body, "events", true, 1, S_BATCH_MAX, &events, err))
        return -1;
    int n = cJSON_GetArraySize (events);
    s_hook_t *hooks = calloc ((size_t) n, sizeof *hooks);
    s_summary_t summary = {.index = zhashx_new (),
                           .groups = calloc ((size_t) n, sizeof *summary.groups)};
    int rc = 0;
    if (!hooks || !summary.index || !summary.groups)
        rc = ccm_fail (err, "internal", "", "out of memory");
    int i = 0;
    cJSON *item;
    cJSON_ArrayForEach (item, events)
    {
        if (rc == 0 && s_read (item, i, &hooks[i], err))
            rc = -1;
        i++;
    }
    //  One time for the whole request: strftime per row costs more than the row.
    char now[32];
    store_db_now (now);
    sqlite3_stmt *stmt = self->hook_insert;
    for (i = 0; i < n && rc == 0; i++) {
        s_hook_t *hook = &hooks[i];
        char *data = cJSON_PrintUnformatted (hook->event_data);
        if (!data) {
            rc = ccm_fail (err, "internal", "", "out of memory");
            break;
        }
        store_db_bind_text (stmt, 1, hook->uid);
        store_db_bind_text (stmt, 2, hook->task_id);
        store_db_bind_text (stmt, 3, hook->agent_id);
        store_db_bind_text (stmt, 4, hook->system_id);
        store_db_bind_text (stmt, 5, hook->session_id);
        sqlite3_bind_text (stmt, 6, hook->hook_type, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 7, hook->hook_timestamp ? hook->hook_timestamp : now, -1,
                           SQLITE_STATIC);
        sqlite3_bind_text (stmt, 8, data, -1, free);
        store_db_bind_text (stmt, 9, hook->tool_name);
        store_db_bind_text (stmt, 10, hook->file_path);
        if (hook->success < 0)
            sqlite3_bind_null (stmt, 11);
        else
            sqlite3_bind_int (stmt, 11, hook->success);
        sqlite3_bind_text (stmt, 12, now, -1, SQLITE_STATIC);
        if (sqlite3_step (stmt) != SQLITE_DONE)
            rc = store_db_fail (self, err, "hook.add");
        else if (sqlite3_changes (self->db) > 0
                 && s_summary_add (&summary, sqlite3_last_insert_rowid (self->db), hook))
            rc = ccm_fail (err, "internal", "", "out of memory");
        sqlite3_reset (stmt);
        sqlite3_clear_bindings (stmt);
    }
    self->txn_rows += n;
    //  Nothing inserted (every uid already stored) changes nothing: no event.
    for (size_t g = 0; g < summary.ngroups && rc == 0; g++)
        rc = s_group_write (self, &summary.groups[g], now, err);
    if (rc == 0) {
        cJSON_AddNumberToObject (reply, "count", (double) summary.count);
        cJSON_AddNumberToObject (reply, "first_id", (double) summary.first);
        cJSON_AddNumberToObject (reply, "last_id", (double) summary.last);
    }
    s_summary_destroy (&summary);
    free (hooks);
    return rc;
}

int
store_hook_list (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    int64_t after = 0, limit = 1000;
    const char *task = NULL;
    if (ccm_get_int (body, "after_id", false, 0, INT64_C (1) << 53, &after, err)
        || ccm_get_string (body, "task", false, 64, &task, err)
        || ccm_get_int (body, "limit", false, 1, 10000, &limit, err))
        return -1;
    if (task && !*task)
        return ccm_fail (err, "bad_field", "task", "task: must not be empty");
    //  A task is named by its full id or a unique prefix, like everywhere else;
    //  an id no task has (an agent's own CCM_TASK_ID, say) is matched as it is.
    char full[65];
    if (task) {
        snprintf (full, sizeof full, "%s", task);
        sqlite3_stmt *find = store_db_prepare (
            self->db, "SELECT id FROM tasks WHERE id >= ?1 AND id < ?1 || 'g' ORDER BY id LIMIT 2");
        if (!find)
            return store_db_fail (self, err, "hook.list");
        sqlite3_bind_text (find, 1, task, -1, SQLITE_STATIC);
        int rows = 0;
        while (sqlite3_step (find) == SQLITE_ROW)
            if (rows++ == 0)
                snprintf (full, sizeof full, "%s", sqlite3_column_text (find, 0));
        sqlite3_finalize (find);
        if (rows > 1 && strcmp (full, task) != 0)
            return ccm_fail (err, "ambiguous", "task", "task: '%s' matches several tasks", task);
        task = full;
    }
    //  Two statements, so a task's rows come from its index, not a scan.
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, task ? "SELECT " S_HOOK_JSON
                         " WHERE task_id = ?2 AND id > ?1 ORDER BY id LIMIT ?3"
                       : "SELECT " S_HOOK_JSON " WHERE id > ?1 ORDER BY id LIMIT ?3");
    if (!stmt)
        return store_db_fail (self, err, "hook.list");
    sqlite3_bind_int64 (stmt, 1, after);
    if (task)
        sqlite3_bind_text (stmt, 2, task, -1, SQLITE_STATIC);
    sqlite3_bind_int64 (stmt, 3, limit);
    int rows = store_db_collect_json (stmt, cJSON_AddArrayToObject (reply, "hooks"));
    sqlite3_finalize (stmt);
    return rows < 0 ? store_db_fail (self, err, "hook.list") : 0;
}

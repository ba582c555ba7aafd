/*  store_hooks: batched hook events, the hottest write path.

    One prepared INSERT per event; the event-log trigger adds its events
    row. Every event of a batch is validated before the first is written, so
    a bad event refuses the whole batch and nothing half-lands.             */

#include "store_internal.h"

#define S_BATCH_MAX 10000

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

int
store_hook_add (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    cJSON *events = NULL;
    if (ccm_get_array (body, "events", true, 1, S_BATCH_MAX, &events, err))
        return -1;
    int n = cJSON_GetArraySize (events);
    s_hook_t *hooks = calloc ((size_t) n, sizeof *hooks);
    if (!hooks)
        return ccm_fail (err, "internal", "", "out of memory");
    int i = 0;
    cJSON *item;
    cJSON_ArrayForEach (item, events)
    {
        if (s_read (item, i, &hooks[i], err)) {
            free (hooks);
            return -1;
        }
        i++;
    }
    sqlite3_stmt *stmt = self->hook_insert;
    int64_t first = 0, last = 0, count = 0;
    int rc = 0;
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
        store_db_bind_text (stmt, 7, hook->hook_timestamp);
        sqlite3_bind_text (stmt, 8, data, -1, free);
        store_db_bind_text (stmt, 9, hook->tool_name);
        store_db_bind_text (stmt, 10, hook->file_path);
        if (hook->success < 0)
            sqlite3_bind_null (stmt, 11);
        else
            sqlite3_bind_int (stmt, 11, hook->success);
        if (sqlite3_step (stmt) != SQLITE_DONE)
            rc = store_db_fail (self, err, "hook.add");
        else if (sqlite3_changes (self->db) > 0) {
            last = sqlite3_last_insert_rowid (self->db);
            if (!first)
                first = last;
            count++;
        }
        sqlite3_reset (stmt);
        sqlite3_clear_bindings (stmt);
    }
    free (hooks);
    if (rc)
        return rc;
    cJSON_AddNumberToObject (reply, "count", (double) count);
    cJSON_AddNumberToObject (reply, "first_id", (double) first);
    cJSON_AddNumberToObject (reply, "last_id", (double) last);
    return 0;
}

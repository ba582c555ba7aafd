/*  store_state: sync connectivity and supervisory reports.

    sync.set_state records this machine's connectivity to its sync hub
    (LocalOnly, Online, Offline, Queuing, Syncing) in the one-row
    sync_state table; its trigger publishes sync.state. The router reads
    it to hold requires_supabase tasks in WaitConnection. Connected means
    Online or Syncing.

    report.add records a supervisory review of a task (quality_score 1-10,
    issues, recommendations, alert_level); report.list reads them.      */

#include "store_internal.h"

static const char *const s_sync_states[] = {"LocalOnly", "Online",  "Offline",
                                            "Queuing",   "Syncing", NULL};
static const char *const s_alert_levels[] = {"none", "info", "warning", "critical", NULL};
static const char *const s_scopes[] = {"task", "project", "system", NULL};

#define S_SYNC_STATE_JSON                                                                          \
    "SELECT json_object('state', state, 'detail', detail, 'updated_at', updated_at,"               \
    " 'connected', json(CASE WHEN state IN ('Online', 'Syncing') THEN 'true' ELSE 'false' END))"   \
    " FROM sync_state WHERE id = 1"

#define S_REPORT_JSON                                                                              \
    "SELECT json_object('id', r.id, 'task_id', r.task_id, 'agent_id', r.agent_id,"                 \
    " 'scope', r.scope, 'quality_score', r.quality_score, 'issues', json(r.issues),"               \
    " 'recommendations', json(r.recommendations), 'alert_level', r.alert_level,"                   \
    " 'created_at', r.created_at) FROM supervisory_reports r"

int
store_sync_state (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    (void) body;
    return store_db_row_json (self, store_db_prepare (self->db, S_SYNC_STATE_JSON), reply, "sync",
                              err);
}

int
store_sync_set_state (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *state = NULL, *detail = NULL;
    if (ccm_get_enum (body, "state", true, s_sync_states, &state, err)
        || ccm_get_string (body, "detail", false, 1024, &detail, err))
        return -1;
    //  An unchanged state writes nothing, so a steady engine adds no events.
    sqlite3_stmt *stmt =
        store_db_prepare (self->db, "UPDATE sync_state SET state = ?1, detail = ?2,"
                                    " updated_at = strftime('%Y-%m-%dT%H:%M:%fZ','now')"
                                    " WHERE id = 1 AND (state IS NOT ?1 OR detail IS NOT ?2)");
    if (!stmt)
        return store_db_fail (self, err, "sync.set_state");
    sqlite3_bind_text (stmt, 1, state, -1, SQLITE_STATIC);
    store_db_bind_text (stmt, 2, detail);
    int rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "sync.set_state");
    return store_db_row_json (self, store_db_prepare (self->db, S_SYNC_STATE_JSON), reply, "sync",
                              err);
}

//  Checks that every item of array (may be NULL) is a string of at most
//  max bytes; returns its JSON text, "[]" for NULL (caller frees).
static char *
s_strings (cJSON *array, const char *field, size_t max, ccm_error_t *err)
{
    int index = 0;
    cJSON *item;
    cJSON_ArrayForEach (item, array)
    {
        if (!cJSON_IsString (item) || strlen (item->valuestring) > max) {
            ccm_fail (err, "bad_field", field,
                      "%s: element %d is not a string of at most %zu bytes", field, index, max);
            return NULL;
        }
        index++;
    }
    return array ? cJSON_PrintUnformatted (array) : strdup ("[]");
}

int
store_report_add (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *task = NULL, *agent_id = NULL, *alert = "none", *scope = "task";
    int64_t score = 0;
    cJSON *issues = NULL, *recommendations = NULL;
    if (ccm_get_string (body, "task_id", true, 64, &task, err)
        || ccm_get_string (body, "agent_id", false, 64, &agent_id, err)
        || ccm_get_enum (body, "scope", false, s_scopes, &scope, err)
        || ccm_get_int (body, "quality_score", true, 1, 10, &score, err)
        || ccm_get_array (body, "issues", false, 0, 256, &issues, err)
        || ccm_get_array (body, "recommendations", false, 0, 256, &recommendations, err)
        || ccm_get_enum (body, "alert_level", false, s_alert_levels, &alert, err))
        return -1;
    char *issues_text = s_strings (issues, "issues", 4096, err);
    char *recs_text =
        issues_text ? s_strings (recommendations, "recommendations", 4096, err) : NULL;
    if (!issues_text || !recs_text) {
        free (issues_text);
        return -1;
    }
    char task_id[CCM_UUID_LEN + 1];
    if (store_task_resolve (self, "task_id", task, task_id, err)) {
        free (issues_text);
        free (recs_text);
        return -1;
    }
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "INSERT INTO supervisory_reports (task_id, agent_id, scope, quality_score,"
                  " issues, recommendations, alert_level) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)");
    int rc = SQLITE_ERROR;
    if (stmt) {
        sqlite3_bind_text (stmt, 1, task_id, -1, SQLITE_STATIC);
        store_db_bind_text (stmt, 2, agent_id);
        sqlite3_bind_text (stmt, 3, scope, -1, SQLITE_STATIC);
        sqlite3_bind_int64 (stmt, 4, score);
        sqlite3_bind_text (stmt, 5, issues_text, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 6, recs_text, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 7, alert, -1, SQLITE_STATIC);
        rc = sqlite3_step (stmt);
        sqlite3_finalize (stmt);
    }
    free (issues_text);
    free (recs_text);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "report.add");
    stmt = store_db_prepare (self->db, S_REPORT_JSON " WHERE r.id = last_insert_rowid()");
    return store_db_row_json (self, stmt, reply, "report", err);
}

int
store_report_list (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *task = NULL;
    if (ccm_get_string (body, "task", false, 64, &task, err))
        return -1;
    sqlite3_stmt *stmt =
        store_db_prepare (self->db, S_REPORT_JSON
                          " WHERE ?1 IS NULL OR r.task_id = ?1"
                          " OR (length(?1) < 36 AND r.task_id >= ?1 AND r.task_id < ?1 || 'g')"
                          " ORDER BY r.id");
    if (!stmt)
        return store_db_fail (self, err, "report.list");
    store_db_bind_text (stmt, 1, task);
    int rows = store_db_collect_json (stmt, cJSON_AddArrayToObject (reply, "reports"));
    sqlite3_finalize (stmt);
    return rows < 0 ? store_db_fail (self, err, "report.list") : 0;
}

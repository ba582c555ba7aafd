/*  store_auto: the audit trail of policies and automations.

    automation.add records one decision or action outcome. The hook event
    it concerns may be named by its uid, since the ingester decides before
    the event's row exists; the row is linked if it is there by then.     */

#include "store_internal.h"

#include "ccm_msg.h"

static const char *const s_outcomes[] = {"ok",      "failed",  "denied", "allowed",
                                         "skipped", "pending", NULL};

int
store_automation_add (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *automation = NULL, *action = NULL, *outcome = NULL;
    const char *task_id = NULL, *event_uid = NULL;
    cJSON *details = NULL;
    if (ccm_get_string (body, "automation", true, 256, &automation, err)
        || ccm_get_string (body, "action", true, 256, &action, err)
        || ccm_get_enum (body, "outcome", true, s_outcomes, &outcome, err)
        || ccm_get_string (body, "task_id", false, 64, &task_id, err)
        || ccm_get_string (body, "event_uid", false, 128, &event_uid, err)
        || ccm_get_object (body, "details", false, &details, err))
        return -1;
    char *details_text = details ? cJSON_PrintUnformatted (details) : NULL;
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "INSERT INTO automation_events (event_id, task_id, automation, action, outcome,"
                  " details) VALUES ((SELECT id FROM hook_events WHERE uid = ?1), ?2, ?3, ?4, ?5,"
                  " ?6)");
    int rc = SQLITE_ERROR;
    if (stmt) {
        const char *values[] = {event_uid, task_id, automation, action, outcome, details_text};
        for (int i = 0; i < 6; i++)
            store_db_bind_text (stmt, i + 1, values[i]);
        rc = sqlite3_step (stmt);
        sqlite3_finalize (stmt);
    }
    free (details_text);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "automation.add");
    cJSON_AddNumberToObject (reply, "id", (double) sqlite3_last_insert_rowid (self->db));
    return 0;
}

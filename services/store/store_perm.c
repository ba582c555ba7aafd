/*  store_perm: permission requests waiting for a human (migration 030).

    A PermissionRequest hook that a policy answers "ask" is parked by the
    ingester, which records it with permission.request. Anyone may answer
    it once with permission.answer (allow or deny): the ingester learns of
    it from the permission.answered event and releases the hook. The
    ingester closes what it can no longer deliver with permission.close
    (expired), and notes a delivered answer the same way (delivered).     */

#include "store_internal.h"

#include "ccm_id.h"
#include "ccm_msg.h"

#include <stdio.h>
#include <string.h>

#define S_PERM_JSON                                                                                \
    "json_object('id', id, 'owner', owner, 'task_id', task_id, 'short_id', substr(task_id, 1, 8)," \
    " 'agent_id', agent_id, 'system_id', system_id, 'session_id', session_id, 'event_uid',"        \
    " event_uid, 'tool_name', tool_name, 'tool_input', json(tool_input), 'rule', rule, 'reason',"  \
    " reason, 'status', status, 'answer', answer, 'answered_by', answered_by, 'created_at',"       \
    " created_at, 'expires_at', expires_at, 'answered_at', answered_at, 'delivered_at',"           \
    " delivered_at, 'close_reason', close_reason)"                                                 \
    " FROM permission_requests"

#define S_NOW "strftime('%Y-%m-%dT%H:%M:%fZ','now')"

static const char *const s_decisions[] = {"allow", "deny", NULL};
static const char *const s_closes[] = {"expired", "delivered", NULL};
static const char *const s_list_statuses[] = {"pending", "allowed", "denied",
                                              "expired", "any",     NULL};

//  Adds the request id as PERM under key; not_found names field.
static int
s_add_row (store_t *self, const char *id, cJSON *reply, const char *key, const char *field,
           ccm_error_t *err)
{
    sqlite3_stmt *stmt = store_db_prepare (self->db, "SELECT " S_PERM_JSON " WHERE id = ?");
    if (!stmt)
        return store_db_fail (self, err, key);
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step (stmt);
    if (rc == SQLITE_ROW)
        cJSON_AddItemToObject (reply, key,
                               cJSON_CreateRaw ((const char *) sqlite3_column_text (stmt, 0)));
    sqlite3_finalize (stmt);
    if (rc == SQLITE_ROW)
        return 0;
    if (rc == SQLITE_DONE)
        return ccm_fail (err, "not_found", field, "%s: no permission request %s", field, id);
    return store_db_fail (self, err, key);
}

//  Resolves a request id or a unique prefix (at least 4 characters) into
//  id (the full id) and status. Returns 0 or -1 with err naming field.
static int
s_resolve (store_t *self, const char *given, const char *field, char id[64], char status[16],
           ccm_error_t *err)
{
    if (strlen (given) < 4)
        return ccm_fail (err, "bad_field", field, "%s: at least 4 characters of an id", field);
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "SELECT id, status FROM permission_requests WHERE id = ?1"
                  " OR (id >= ?1 AND id < ?1 || 'g') ORDER BY id = ?1 DESC, id LIMIT 2");
    if (!stmt)
        return store_db_fail (self, err, "permission lookup");
    sqlite3_bind_text (stmt, 1, given, -1, SQLITE_STATIC);
    int rows = 0, rc;
    bool exact = false;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW) {
        if (rows++ == 0) {
            snprintf (id, 64, "%s", (const char *) sqlite3_column_text (stmt, 0));
            snprintf (status, 16, "%s", (const char *) sqlite3_column_text (stmt, 1));
            exact = strcmp (id, given) == 0;
        }
    }
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "permission lookup");
    if (rows == 0)
        return ccm_fail (err, "not_found", field, "%s: no permission request %s", field, given);
    if (rows > 1 && !exact)
        return ccm_fail (err, "ambiguous", field, "%s: '%s' matches several requests", field,
                         given);
    return 0;
}

int
store_permission_request (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *id = NULL, *owner = NULL, *task_id = NULL, *agent_id = NULL, *system_id = NULL;
    const char *session_id = NULL, *event_uid = NULL, *tool_name = NULL, *rule = NULL;
    const char *reason = NULL;
    cJSON *tool_input = NULL;
    int64_t timeout_ms = 0;
    if (ccm_get_string (body, "request", true, 64, &id, err)
        || ccm_get_string (body, "owner", true, 256, &owner, err)
        || ccm_get_string (body, "task_id", false, 64, &task_id, err)
        || ccm_get_string (body, "agent_id", false, 128, &agent_id, err)
        || ccm_get_string (body, "system_id", false, 64, &system_id, err)
        || ccm_get_string (body, "session_id", false, 128, &session_id, err)
        || ccm_get_string (body, "event_uid", false, 128, &event_uid, err)
        || ccm_get_string (body, "tool_name", false, 256, &tool_name, err)
        || ccm_get_object (body, "tool_input", false, &tool_input, err)
        || ccm_get_string (body, "rule", false, 300, &rule, err)
        || ccm_get_string (body, "reason", false, 1024, &reason, err)
        || ccm_get_int (body, "timeout_ms", true, 1, 86400000, &timeout_ms, err))
        return -1;
    if (!ccm_uuid_valid (id))
        return ccm_fail (err, "bad_field", "request", "request: must be a lowercase UUID");
    char *input_text = tool_input ? cJSON_PrintUnformatted (tool_input) : NULL;
    if (input_text && strlen (input_text) > 64 * 1024) {
        free (input_text);
        return ccm_fail (err, "bad_field", "tool_input", "tool_input: over 64 KiB as JSON");
    }
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "INSERT INTO permission_requests (id, owner, task_id, agent_id, system_id,"
                  " session_id, event_uid, tool_name, tool_input, rule, reason, expires_at)"
                  " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11,"
                  " strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?12))");
    int rc = SQLITE_ERROR;
    if (stmt) {
        const char *values[] = {id,        owner,     task_id,    agent_id, system_id, session_id,
                                event_uid, tool_name, input_text, rule,     reason};
        for (int i = 0; i < 11; i++)
            store_db_bind_text (stmt, i + 1, values[i]);
        char offset[48];
        snprintf (offset, sizeof offset, "+%.3f seconds", (double) timeout_ms / 1000.0);
        sqlite3_bind_text (stmt, 12, offset, -1, SQLITE_TRANSIENT);
        rc = sqlite3_step (stmt);
        sqlite3_finalize (stmt);
    }
    free (input_text);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "permission.request");
    return s_add_row (self, id, reply, "request", "request", err);
}

int
store_permission_answer (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *given = NULL, *decision = NULL, *reason = NULL, *by = NULL;
    if (ccm_get_string (body, "request", true, 64, &given, err)
        || ccm_get_enum (body, "decision", true, s_decisions, &decision, err)
        || ccm_get_string (body, "reason", false, 1024, &reason, err)
        || ccm_get_string (body, "by", false, 128, &by, err))
        return -1;
    char id[64], status[16];
    if (s_resolve (self, given, "request", id, status, err))
        return -1;
    if (strcmp (status, "pending") != 0)
        return ccm_fail (err, "illegal_transition", "request",
                         "permission request %.8s is already %s", id, status);
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "UPDATE permission_requests SET status = ?2, answer = ?3, answered_by = ?4,"
                  " answered_at = " S_NOW " WHERE id = ?1 AND status = 'pending'");
    int rc = SQLITE_ERROR;
    if (stmt) {
        const char *values[] = {id, strcmp (decision, "allow") == 0 ? "allowed" : "denied", reason,
                                by};
        for (int i = 0; i < 4; i++)
            store_db_bind_text (stmt, i + 1, values[i]);
        rc = sqlite3_step (stmt);
        sqlite3_finalize (stmt);
    }
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "permission.answer");
    return s_add_row (self, id, reply, "request", "request", err);
}

int
store_permission_close (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *given = NULL, *owner = NULL, *outcome = NULL, *reason = NULL;
    if (ccm_get_string (body, "request", false, 64, &given, err)
        || ccm_get_string (body, "owner", false, 256, &owner, err)
        || ccm_get_enum (body, "outcome", true, s_closes, &outcome, err)
        || ccm_get_string (body, "reason", false, 1024, &reason, err))
        return -1;
    bool expire = strcmp (outcome, "expired") == 0;
    if (!given && !owner)
        return ccm_fail (err, "missing_field", "request", "request: required (or owner)");
    if (given && owner)
        return ccm_fail (err, "bad_field", "owner", "owner: give request or owner, not both");
    if (owner && !expire)
        return ccm_fail (err, "bad_field", "outcome",
                         "outcome: only expired applies to every request of an owner");
    if (owner) {
        //  An ingester that starts again holds none of its old hooks: every
        //  request it left pending can no longer be delivered.
        sqlite3_stmt *stmt = store_db_prepare (
            self->db, "UPDATE permission_requests SET status = 'expired', close_reason = ?2"
                      " WHERE owner = ?1 AND status = 'pending' RETURNING id");
        if (!stmt)
            return store_db_fail (self, err, "permission.close");
        sqlite3_bind_text (stmt, 1, owner, -1, SQLITE_STATIC);
        store_db_bind_text (stmt, 2, reason);
        cJSON *ids = cJSON_AddArrayToObject (reply, "expired");
        int rc;
        while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
            cJSON_AddItemToArray (
                ids, cJSON_CreateString ((const char *) sqlite3_column_text (stmt, 0)));
        sqlite3_finalize (stmt);
        return rc == SQLITE_DONE ? 0 : store_db_fail (self, err, "permission.close");
    }
    char id[64], status[16];
    if (s_resolve (self, given, "request", id, status, err))
        return -1;
    const char *sql;
    if (expire) {
        //  Expiring an answered request changes nothing: the answer stands.
        sql = "UPDATE permission_requests SET status = 'expired', close_reason = ?2"
              " WHERE id = ?1 AND status = 'pending'";
    }
    else {
        if (strcmp (status, "pending") == 0 || strcmp (status, "expired") == 0)
            return ccm_fail (err, "illegal_transition", "request",
                             "permission request %.8s is %s: there is no answer to deliver", id,
                             status);
        sql = "UPDATE permission_requests SET delivered_at = coalesce(delivered_at, " S_NOW ")"
              " WHERE id = ?1";
    }
    sqlite3_stmt *stmt = store_db_prepare (self->db, sql);
    int rc = SQLITE_ERROR;
    if (stmt) {
        sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
        if (expire)
            store_db_bind_text (stmt, 2, reason);
        rc = sqlite3_step (stmt);
        sqlite3_finalize (stmt);
    }
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "permission.close");
    return s_add_row (self, id, reply, "request", "request", err);
}

int
store_permission_list (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *status = "pending", *task = NULL, *agent = NULL, *owner = NULL;
    cJSON *ids = NULL;
    int64_t limit = 100;
    if (ccm_get_enum (body, "status", false, s_list_statuses, &status, err)
        || ccm_get_string (body, "task", false, 64, &task, err)
        || ccm_get_string (body, "agent", false, 128, &agent, err)
        || ccm_get_string (body, "owner", false, 256, &owner, err)
        || ccm_get_array (body, "ids", false, 0, 1024, &ids, err)
        || ccm_get_int (body, "limit", false, 1, 1024, &limit, err))
        return -1;
    char *ids_text = NULL;
    if (ids) {
        int i = 0;
        cJSON *item;
        cJSON_ArrayForEach (item, ids)
        {
            if (!cJSON_IsString (item) || strlen (item->valuestring) > 64) {
                char field[32];
                snprintf (field, sizeof field, "ids[%d]", i);
                return ccm_fail (err, "bad_field", field, "%s: must be a request id", field);
            }
            i++;
        }
        ids_text = cJSON_PrintUnformatted (ids);
    }
    //  Oldest first: the one waiting longest is answered first.
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "SELECT " S_PERM_JSON " WHERE (?1 = 'any' OR status = ?1)"
                  " AND (?2 IS NULL OR task_id = ?2 OR (task_id >= ?2 AND task_id < ?2 || 'g'))"
                  " AND (?3 IS NULL OR agent_id = ?3) AND (?4 IS NULL OR owner = ?4)"
                  " AND (?5 IS NULL OR id IN (SELECT value FROM json_each(?5)))"
                  " ORDER BY created_at, id LIMIT ?6");
    if (!stmt) {
        free (ids_text);
        return store_db_fail (self, err, "permission.list");
    }
    store_db_bind_text (stmt, 1, status);
    store_db_bind_text (stmt, 2, task);
    store_db_bind_text (stmt, 3, agent);
    store_db_bind_text (stmt, 4, owner);
    store_db_bind_text (stmt, 5, ids_text);
    sqlite3_bind_int64 (stmt, 6, limit);
    int rows = store_db_collect_json (stmt, cJSON_AddArrayToObject (reply, "requests"));
    sqlite3_finalize (stmt);
    free (ids_text);
    return rows < 0 ? store_db_fail (self, err, "permission.list") : 0;
}

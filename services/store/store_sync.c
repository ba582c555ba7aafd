/*  store_sync: the store's side of ccm-sync (services/sync/).

    sync_queue is filled by triggers (migrations 003 and 020) in the
    transaction of each change. ccm-sync drains it through these verbs:

    sync.pending   the next records to push, urgent first. Rows of one record
                   collapse into one item carrying the newest row's data and
                   the id it goes up to, so a record's changes can never
                   arrive out of order, however their priorities differ.
    sync.mark      marks a record's rows up to an id synced (after a 2xx),
                   failed (a retry comes) or parked (a permanent refusal).
    sync.apply     writes rows pulled from the hub (tasks, task_results,
                   systems, skills) under the conflict rule of issue 7, and
                   drops the queue rows its own writes queued, so nothing
                   pulled is pushed back.
    sync.watch     tasks created here for another system: their status and
                   results are pulled back.
    sync.meta / sync.meta.set   ccm-sync's cursors and last success.
    sync.status    what `ccm sync status` shows.                          */

#include "store_internal.h"

#include "ccm_id.h"
#include "ccm_log.h"

#define S_NOW       "strftime('%Y-%m-%dT%H:%M:%fZ','now')"
#define S_ITEMS_MAX 10000
#define S_ERROR_MAX 4096
#define S_RANK                                                                                     \
    "CASE priority WHEN 'urgent' THEN 0 WHEN 'high' THEN 1 WHEN 'normal' THEN 2 ELSE 3 END"

static const char *const s_outcomes[] = {"synced", "failed", "parked", NULL};
static const char *const s_pull_tables[] = {"tasks", "task_results", "systems", "skills", NULL};
static const char *const s_statuses[] = {"created",  "queued", "assigned",  "executing",
                                         "complete", "failed", "cancelled", NULL};
static const char *const s_result_statuses[] = {"complete", "failed",  "cancelled",
                                                "timeout",  "crashed", NULL};

static bool
s_terminal (const char *status)
{
    return status
           && (!strcmp (status, "complete") || !strcmp (status, "failed")
               || !strcmp (status, "cancelled"));
}

//  The string value of obj[key], or NULL (borrowed).
static const char *
s_str (cJSON *obj, const char *key)
{
    cJSON *item = cJSON_GetObjectItemCaseSensitive (obj, key);
    return cJSON_IsString (item) ? item->valuestring : NULL;
}

//  Binds obj[key]: text as text, a number as an integer, an object or array
//  as its JSON text (fallback when absent or null), else NULL.
static void
s_bind (sqlite3_stmt *stmt, int index, cJSON *obj, const char *key, const char *fallback)
{
    cJSON *item = cJSON_GetObjectItemCaseSensitive (obj, key);
    if (cJSON_IsString (item))
        sqlite3_bind_text (stmt, index, item->valuestring, -1, SQLITE_TRANSIENT);
    else if (cJSON_IsNumber (item))
        sqlite3_bind_int64 (stmt, index, (sqlite3_int64) item->valuedouble);
    else if (cJSON_IsBool (item))
        sqlite3_bind_int (stmt, index, cJSON_IsTrue (item));
    else if (cJSON_IsObject (item) || cJSON_IsArray (item)) {
        char *text = cJSON_PrintUnformatted (item);
        sqlite3_bind_text (stmt, index, text ? text : fallback, -1, SQLITE_TRANSIENT);
        free (text);
    }
    else if (fallback)
        sqlite3_bind_text (stmt, index, fallback, -1, SQLITE_STATIC);
    else
        sqlite3_bind_null (stmt, index);
}

//  ---------------------------------------------------------------- pending

int
store_sync_pending (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    int64_t limit = 500;
    if (ccm_get_int (body, "limit", false, 1, S_ITEMS_MAX, &limit, err))
        return -1;
    //  One item per record: its best priority and oldest row decide its
    //  place; the newest row is what the hub must end up with.
    sqlite3_stmt *stmt = store_db_prepare (
        self->db,
        "SELECT g.table_name, g.record_id, g.upto, g.rows, g.retries, f.operation,"
        " q.priority, q.record_data FROM"
        " (SELECT table_name, record_id, max(id) AS upto, min(id) AS first, count(*) AS rows,"
        "  max(retry_count) AS retries, min(" S_RANK ") AS rank"
        "  FROM sync_queue WHERE synced_at IS NULL AND parked_at IS NULL"
        "  GROUP BY table_name, record_id ORDER BY rank, first LIMIT ?) g"
        " JOIN sync_queue q ON q.id = g.upto JOIN sync_queue f ON f.id = g.first"
        " ORDER BY g.rank, g.first");
    if (!stmt)
        return store_db_fail (self, err, "sync.pending");
    sqlite3_bind_int64 (stmt, 1, limit);
    cJSON *items = cJSON_AddArrayToObject (reply, "items");
    int rc;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW) {
        cJSON *item = cJSON_CreateObject ();
        cJSON_AddStringToObject (item, "table", (const char *) sqlite3_column_text (stmt, 0));
        cJSON_AddStringToObject (item, "record_id", (const char *) sqlite3_column_text (stmt, 1));
        cJSON_AddNumberToObject (item, "upto", (double) sqlite3_column_int64 (stmt, 2));
        cJSON_AddNumberToObject (item, "rows", (double) sqlite3_column_int64 (stmt, 3));
        cJSON_AddNumberToObject (item, "retry_count", (double) sqlite3_column_int64 (stmt, 4));
        cJSON_AddStringToObject (item, "first_op", (const char *) sqlite3_column_text (stmt, 5));
        cJSON_AddStringToObject (item, "priority", (const char *) sqlite3_column_text (stmt, 6));
        const char *data = (const char *) sqlite3_column_text (stmt, 7);
        cJSON_AddItemToObject (item, "data", data ? cJSON_CreateRaw (data) : cJSON_CreateNull ());
        cJSON_AddItemToArray (items, item);
    }
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "sync.pending");
    stmt = store_db_prepare (self->db, "SELECT count(*) FROM sync_queue"
                                       " WHERE synced_at IS NULL AND parked_at IS NULL");
    if (!stmt)
        return store_db_fail (self, err, "sync.pending");
    int64_t pending = sqlite3_step (stmt) == SQLITE_ROW ? sqlite3_column_int64 (stmt, 0) : 0;
    sqlite3_finalize (stmt);
    cJSON_AddNumberToObject (reply, "pending", (double) pending);
    return 0;
}

//  ------------------------------------------------------------------- mark

//  Sets sync_meta key to value (NULL deletes nothing: it stores NULL).
static int
s_meta_put (store_t *self, const char *key, const char *value)
{
    sqlite3_stmt *stmt =
        store_db_prepare (self->db, "INSERT INTO sync_meta (key, value, updated_at)"
                                    " VALUES (?1, ?2, " S_NOW ") ON CONFLICT (key) DO UPDATE"
                                    " SET value = ?2, updated_at = " S_NOW);
    if (!stmt)
        return -1;
    sqlite3_bind_text (stmt, 1, key, -1, SQLITE_STATIC);
    store_db_bind_text (stmt, 2, value);
    int rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    return rc == SQLITE_DONE ? 0 : -1;
}

int
store_sync_mark (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *outcome = NULL, *error = NULL;
    cJSON *items = NULL;
    if (ccm_get_enum (body, "outcome", true, s_outcomes, &outcome, err)
        || ccm_get_string (body, "error", false, S_ERROR_MAX, &error, err)
        || ccm_get_array (body, "items", true, 1, S_ITEMS_MAX, &items, err))
        return -1;
    if (strcmp (outcome, "synced") != 0 && !error)
        return ccm_fail (err, "missing_field", "error", "error: required when outcome is %s",
                         outcome);
    //  Check every item before the first write: a refusal writes nothing.
    int i = 0;
    cJSON *item;
    cJSON_ArrayForEach (item, items)
    {
        ccm_error_t sub = {0};
        const char *table = NULL, *record = NULL;
        int64_t upto = 0;
        if (!cJSON_IsObject (item) || ccm_get_string (item, "table", true, 64, &table, &sub)
            || ccm_get_string (item, "record_id", true, 128, &record, &sub)
            || ccm_get_int (item, "upto", true, 1, INT64_MAX, &upto, &sub)) {
            char field[64];
            snprintf (field, sizeof field, "items[%d]%s%.30s", i, sub.field[0] ? "." : "",
                      sub.field);
            return ccm_fail (err, sub.code ? sub.code : "bad_field", field, "%s: %s", field,
                             sub.code ? sub.message : "must be an object");
        }
        i++;
    }
    const char *sql =
        !strcmp (outcome, "synced") ? "UPDATE sync_queue SET synced_at = " S_NOW
                                      ", error_message = NULL"
                                      " WHERE table_name = ?1 AND record_id = ?2 AND id <= ?3"
                                      " AND synced_at IS NULL AND parked_at IS NULL"
        : !strcmp (outcome, "failed")
            ? "UPDATE sync_queue SET retry_count = retry_count + 1, error_message = ?4"
              " WHERE table_name = ?1 AND record_id = ?2 AND id <= ?3"
              " AND synced_at IS NULL AND parked_at IS NULL"
            : "UPDATE sync_queue SET parked_at = " S_NOW ", retry_count = retry_count + 1,"
              " error_message = ?4 WHERE table_name = ?1 AND record_id = ?2 AND id <= ?3"
              " AND synced_at IS NULL AND parked_at IS NULL";
    sqlite3_stmt *stmt = store_db_prepare (self->db, sql);
    if (!stmt)
        return store_db_fail (self, err, "sync.mark");
    int64_t marked = 0;
    cJSON_ArrayForEach (item, items)
    {
        sqlite3_bind_text (stmt, 1, s_str (item, "table"), -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 2, s_str (item, "record_id"), -1, SQLITE_STATIC);
        sqlite3_bind_int64 (stmt, 3,
                            (sqlite3_int64) cJSON_GetObjectItem (item, "upto")->valuedouble);
        store_db_bind_text (stmt, 4, error);
        if (sqlite3_step (stmt) != SQLITE_DONE) {
            sqlite3_finalize (stmt);
            return store_db_fail (self, err, "sync.mark");
        }
        marked += sqlite3_changes64 (self->db);
        sqlite3_reset (stmt);
    }
    sqlite3_finalize (stmt);
    char now[32];
    store_db_now (now);
    int rc = !strcmp (outcome, "synced") ? s_meta_put (self, "last_success_at", now)
                                         : (s_meta_put (self, "last_error", error)
                                            || s_meta_put (self, "last_error_at", now));
    if (rc)
        return store_db_fail (self, err, "sync.mark");
    cJSON_AddNumberToObject (reply, "marked", (double) marked);
    return 0;
}

//  ------------------------------------------------------------------ apply

//  The server's updated_at of row, as the store writes times (ms, Z), into
//  out; 0, or -1 if it is missing or not a time.
static int
s_norm_time (store_t *self, const char *text, char out[32])
{
    if (!text)
        return -1;
    sqlite3_stmt *stmt = store_db_prepare (self->db, "SELECT strftime('%Y-%m-%dT%H:%M:%fZ', ?)");
    if (!stmt)
        return -1;
    sqlite3_bind_text (stmt, 1, text, -1, SQLITE_STATIC);
    int rc = -1;
    if (sqlite3_step (stmt) == SQLITE_ROW && sqlite3_column_type (stmt, 0) == SQLITE_TEXT) {
        snprintf (out, 32, "%s", sqlite3_column_text (stmt, 0));
        rc = 0;
    }
    sqlite3_finalize (stmt);
    return rc;
}

//  Compares the server time upd with the one last applied for the record:
//  returns 1 if it is newer (and records it), 0 if not, -1 on error.
static int
s_newer (store_t *self, const char *table, const char *id, const char *upd)
{
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "INSERT INTO sync_seen (table_name, record_id, remote_updated_at)"
                  " VALUES (?1, ?2, ?3) ON CONFLICT (table_name, record_id) DO UPDATE"
                  " SET remote_updated_at = ?3 WHERE remote_updated_at < ?3");
    if (!stmt)
        return -1;
    sqlite3_bind_text (stmt, 1, table, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 2, id, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 3, upd, -1, SQLITE_STATIC);
    int rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE)
        return -1;
    return sqlite3_changes (self->db) > 0 ? 1 : 0;
}

//  One text column of a one-row query on id into out (empty if no row).
static int
s_lookup (store_t *self, const char *sql, const char *id, char *out, size_t size)
{
    out[0] = '\0';
    sqlite3_stmt *stmt = store_db_prepare (self->db, sql);
    if (!stmt)
        return -1;
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    int rc = sqlite3_step (stmt);
    if (rc == SQLITE_ROW && sqlite3_column_text (stmt, 0))
        snprintf (out, size, "%s", sqlite3_column_text (stmt, 0));
    sqlite3_finalize (stmt);
    return rc == SQLITE_ROW || rc == SQLITE_DONE ? (rc == SQLITE_ROW) : -1;
}

//  A task created on another system for this one enters the local queue.
static int
s_task_insert (store_t *self, cJSON *row, const char *upd)
{
    const char *status = s_str (row, "status");
    //  Assigned or executing elsewhere means nothing here: it runs afresh.
    if (!strcmp (status, "assigned") || !strcmp (status, "executing"))
        status = "queued";
    sqlite3_stmt *stmt = store_db_prepare (
        self->db,
        "INSERT INTO tasks (id, project_id, system_id, parent_task_id, requires_project,"
        " requires_context_metadata, task_type, status, status_reason, prompt, input_data,"
        " metadata, requires_supabase, priority, attempts, created_at, updated_at, completed_at,"
        " agent_profile, timeout_s, origin_system_id)"
        " VALUES (?1, (SELECT id FROM projects WHERE id = ?2 OR name = ?5"
        "  ORDER BY id = ?2 DESC LIMIT 1), ?3, (SELECT id FROM tasks WHERE id = ?4), ?5,"
        " coalesce(?6, '{}'), coalesce(?7, 'worker'), ?8, ?9, ?10, coalesce(?11, '{}'),"
        " coalesce(?12, '{}'), coalesce(?13, 0), coalesce(?14, 'normal'), coalesce(?15, 0),"
        " coalesce(?16, " S_NOW "), ?17, ?18, ?19, ?20, ?21)");
    if (!stmt)
        return -1;
    sqlite3_bind_text (stmt, 1, s_str (row, "id"), -1, SQLITE_STATIC);
    s_bind (stmt, 2, row, "project_id", NULL);
    s_bind (stmt, 3, row, "system_id", NULL);
    s_bind (stmt, 4, row, "parent_task_id", NULL);
    s_bind (stmt, 5, row, "requires_project", NULL);
    s_bind (stmt, 6, row, "requires_context_metadata", NULL);
    s_bind (stmt, 7, row, "task_type", NULL);
    sqlite3_bind_text (stmt, 8, status, -1, SQLITE_STATIC);
    s_bind (stmt, 9, row, "status_reason", NULL);
    s_bind (stmt, 10, row, "prompt", NULL);
    s_bind (stmt, 11, row, "input_data", NULL);
    s_bind (stmt, 12, row, "metadata", NULL);
    s_bind (stmt, 13, row, "requires_supabase", NULL);
    s_bind (stmt, 14, row, "priority", NULL);
    s_bind (stmt, 15, row, "attempts", NULL);
    s_bind (stmt, 16, row, "created_at", NULL);
    sqlite3_bind_text (stmt, 17, upd, -1, SQLITE_STATIC);
    s_bind (stmt, 18, row, "completed_at", NULL);
    s_bind (stmt, 19, row, "agent_profile", NULL);
    s_bind (stmt, 20, row, "timeout_s", NULL);
    s_bind (stmt, 21, row, "origin_system_id", NULL);
    int rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE) {
        ccm_warn ("sync.apply: task %s not inserted: %s", s_str (row, "id"),
                  sqlite3_errmsg (self->db));
        return 0;  //  skipped, not fatal: the rest of the page still applies
    }
    char event_id[CCM_UUID_LEN + 1];
    ccm_uuid (event_id);
    stmt = store_db_prepare (self->db, "INSERT INTO task_events (id, task_id, event_type,"
                                       " event_data) VALUES (?, ?, 'created',"
                                       " json_object('via', 'sync', 'origin_system_id', ?))");
    if (!stmt)
        return -1;
    sqlite3_bind_text (stmt, 1, event_id, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 2, s_str (row, "id"), -1, SQLITE_STATIC);
    s_bind (stmt, 3, row, "origin_system_id", NULL);
    rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    return rc == SQLITE_DONE ? 1 : -1;
}

//  Writes a task's status (and what goes with it) as the hub has it.
static int
s_task_update (store_t *self, cJSON *row, const char *upd, bool cancel_only)
{
    sqlite3_stmt *stmt = store_db_prepare (
        self->db,
        cancel_only
            ? "UPDATE tasks SET status = 'cancelled', status_reason = ?2, completed_at ="
              " coalesce(?6, " S_NOW "), locked_at = NULL, locked_by = NULL, retry_at = NULL,"
              " updated_at = ?9 WHERE id = ?1"
            //  Its runner, elsewhere, keeps its retry schedule: none here.
            : "UPDATE tasks SET status = ?3, status_reason = ?2, attempts = coalesce(?4, attempts),"
              " retry_at = NULL,"
              " started_at = ?5, completed_at = ?6, locked_at = ?7, locked_by = ?8,"
              " updated_at = ?9 WHERE id = ?1 AND (status IS NOT ?3 OR status_reason IS NOT ?2"
              " OR attempts IS NOT ?4 OR started_at IS NOT ?5 OR completed_at IS NOT ?6)");
    if (!stmt)
        return -1;
    sqlite3_bind_text (stmt, 1, s_str (row, "id"), -1, SQLITE_STATIC);
    s_bind (stmt, 2, row, "status_reason", NULL);
    s_bind (stmt, 3, row, "status", NULL);
    s_bind (stmt, 4, row, "attempts", NULL);
    s_bind (stmt, 5, row, "started_at", NULL);
    s_bind (stmt, 6, row, "completed_at", NULL);
    s_bind (stmt, 7, row, "locked_at", NULL);
    s_bind (stmt, 8, row, "locked_by", NULL);
    sqlite3_bind_text (stmt, 9, upd, -1, SQLITE_STATIC);
    int rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE)
        return -1;
    return sqlite3_changes (self->db) > 0 ? 1 : 0;
}

//  Tasks: one created elsewhere for this system is inserted; one created
//  here and run elsewhere takes the hub's status when that is newer than
//  what was last applied, except that a terminal local state is never
//  overwritten by an older remote one; one created elsewhere and run here
//  takes only a cancellation from the hub (its runner owns its status); one
//  created here for here is this store's alone.
static int
s_apply_task (store_t *self, const char *me, cJSON *row, const char *upd, ccm_error_t *err)
{
    const char *id = s_str (row, "id"), *status = s_str (row, "status");
    char local[16], origin[CCM_UUID_LEN + 64], target[CCM_UUID_LEN + 64], local_upd[32];
    int found = s_lookup (self, "SELECT status FROM tasks WHERE id = ?", id, local, sizeof local);
    if (found < 0)
        return store_db_fail (self, err, "sync.apply");
    if (!found) {
        const char *system_id = s_str (row, "system_id");
        if (!system_id || strcmp (system_id, me) != 0)
            return 0;
        if (s_newer (self, "tasks", id, upd) < 0)
            return store_db_fail (self, err, "sync.apply");
        int rc = s_task_insert (self, row, upd);
        return rc < 0 ? store_db_fail (self, err, "sync.apply") : rc;
    }
    if (s_lookup (self, "SELECT coalesce(origin_system_id, '') FROM tasks WHERE id = ?", id, origin,
                  sizeof origin)
            < 0
        || s_lookup (self, "SELECT coalesce(system_id, '') FROM tasks WHERE id = ?", id, target,
                     sizeof target)
               < 0
        || s_lookup (self, "SELECT updated_at FROM tasks WHERE id = ?", id, local_upd,
                     sizeof local_upd)
               < 0)
        return store_db_fail (self, err, "sync.apply");
    bool foreign = origin[0] && strcmp (origin, me) != 0;
    if (!foreign && (!target[0] || !strcmp (target, me)))
        return 0;  //  created here, run here: nobody else writes it
    int newer = s_newer (self, "tasks", id, upd);
    if (newer < 0)
        return store_db_fail (self, err, "sync.apply");
    if (!newer)
        return 0;
    int rc = 0;
    if (foreign) {
        if (!strcmp (status, "cancelled") && !s_terminal (local))
            rc = s_task_update (self, row, upd, true);
    }
    else if (!(s_terminal (local) && strcmp (local_upd, upd) >= 0))
        rc = s_task_update (self, row, upd, false);
    return rc < 0 ? store_db_fail (self, err, "sync.apply") : rc;
}

static int
s_apply_result (store_t *self, cJSON *row, ccm_error_t *err)
{
    (void) err;
    const char *status = s_str (row, "status");
    bool known = false;
    for (const char *const *s = s_result_statuses; *s && status; s++)
        known |= !strcmp (*s, status);
    if (!s_str (row, "task_id") || !known)
        return 0;
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "INSERT OR IGNORE INTO task_results (id, task_id, agent_id, status, output,"
                  " files_changed, exit_code, details, created_at)"
                  " SELECT ?1, ?2, ?3, ?4, ?5, coalesce(?6, '[]'), ?7, ?8, coalesce(?9, " S_NOW ")"
                  " WHERE EXISTS (SELECT 1 FROM tasks WHERE id = ?2)");
    if (!stmt)
        return store_db_fail (self, err, "sync.apply");
    sqlite3_bind_text (stmt, 1, s_str (row, "id"), -1, SQLITE_STATIC);
    s_bind (stmt, 2, row, "task_id", NULL);
    s_bind (stmt, 3, row, "agent_id", NULL);
    s_bind (stmt, 4, row, "status", NULL);
    s_bind (stmt, 5, row, "output", NULL);
    s_bind (stmt, 6, row, "files_changed", NULL);
    s_bind (stmt, 7, row, "exit_code", NULL);
    s_bind (stmt, 8, row, "details", NULL);
    s_bind (stmt, 9, row, "created_at", NULL);
    int rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "sync.apply");
    return sqlite3_changes (self->db) > 0 ? 1 : 0;
}

//  Other systems of the same user, so a task can name one (task.add
//  --system). This system's own row is never taken from the hub.
static int
s_apply_system (store_t *self, const char *me, cJSON *row, const char *upd, ccm_error_t *err)
{
    const char *id = s_str (row, "id");
    if (!strcmp (id, me) || !s_str (row, "hostname") || !s_str (row, "machine_id"))
        return 0;
    int newer = s_newer (self, "systems", id, upd);
    if (newer <= 0)
        return newer < 0 ? store_db_fail (self, err, "sync.apply") : 0;
    sqlite3_stmt *stmt = store_db_prepare (
        self->db,
        "INSERT INTO systems (id, hostname, machine_id, system_type, tags, status, capacity,"
        " created_at, last_seen) VALUES (?1, ?2, ?3, coalesce(?4, 'developer'),"
        " coalesce(?5, '[]'), coalesce(?6, 'online'), coalesce(?7, 4), coalesce(?8, " S_NOW "),"
        " ?9) ON CONFLICT (id) DO UPDATE SET hostname = ?2, machine_id = ?3,"
        " system_type = coalesce(?4, 'developer'), tags = coalesce(?5, '[]'),"
        " status = coalesce(?6, 'online'), capacity = coalesce(?7, 4), last_seen = ?9");
    if (!stmt)
        return store_db_fail (self, err, "sync.apply");
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    s_bind (stmt, 2, row, "hostname", NULL);
    s_bind (stmt, 3, row, "machine_id", NULL);
    s_bind (stmt, 4, row, "system_type", NULL);
    s_bind (stmt, 5, row, "tags", NULL);
    s_bind (stmt, 6, row, "status", NULL);
    s_bind (stmt, 7, row, "capacity", NULL);
    s_bind (stmt, 8, row, "created_at", NULL);
    s_bind (stmt, 9, row, "last_seen", NULL);
    int rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE) {
        //  A local machine already has this hostname or machine id.
        ccm_warn ("sync.apply: system %s not taken: %s", id, sqlite3_errmsg (self->db));
        return 0;
    }
    return 1;
}

//  True if name is safe as one path element: [A-Za-z0-9._-], 1-64 bytes,
//  not starting with '.' or '-'.
static bool
s_skill_name_ok (const char *name)
{
    size_t len = name ? strlen (name) : 0;
    return len >= 1 && len <= 64 && name[0] != '.' && name[0] != '-'
           && strspn (name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
                  == len;
}

static int
s_apply_skill (store_t *self, cJSON *row, const char *upd, cJSON *changed, ccm_error_t *err)
{
    const char *id = s_str (row, "id"), *name = s_str (row, "name");
    if (!s_skill_name_ok (name) || !s_str (row, "content")) {
        ccm_warn ("sync.apply: skill %s refused: its name must be 1-64 of [A-Za-z0-9._-]",
                  id ? id : "(no id)");
        return 0;
    }
    int newer = s_newer (self, "skills", name, upd);
    if (newer <= 0)
        return newer < 0 ? store_db_fail (self, err, "sync.apply") : 0;
    //  By name: a skill of that name made here is replaced, keeping its id.
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "INSERT INTO skills (id, name, version, content, file_path, created_at,"
                  " updated_at) VALUES (?1, ?2, ?3, ?4, ?5, coalesce(?6, " S_NOW "), ?7)"
                  " ON CONFLICT (name) DO UPDATE SET version = ?3, content = ?4,"
                  " file_path = ?5, updated_at = ?7");
    if (!stmt)
        return store_db_fail (self, err, "sync.apply");
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 2, name, -1, SQLITE_STATIC);
    s_bind (stmt, 3, row, "version", NULL);
    s_bind (stmt, 4, row, "content", NULL);
    s_bind (stmt, 5, row, "file_path", NULL);
    s_bind (stmt, 6, row, "created_at", NULL);
    sqlite3_bind_text (stmt, 7, upd, -1, SQLITE_STATIC);
    int rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE) {
        ccm_warn ("sync.apply: skill %s not taken: %s", name, sqlite3_errmsg (self->db));
        return 0;
    }
    cJSON_AddItemToArray (changed, cJSON_CreateString (name));
    return 1;
}

int
store_sync_apply (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *table = NULL, *me = NULL;
    cJSON *rows = NULL;
    if (ccm_get_enum (body, "table", true, s_pull_tables, &table, err)
        || ccm_get_string (body, "system_id", true, 128, &me, err)
        || ccm_get_array (body, "rows", true, 0, S_ITEMS_MAX, &rows, err))
        return -1;
    //  Every row is checked before the first write.
    int i = 0;
    cJSON *row;
    cJSON_ArrayForEach (row, rows)
    {
        char field[48];
        snprintf (field, sizeof field, "rows[%d]", i++);
        if (!cJSON_IsObject (row))
            return ccm_fail (err, "bad_field", field, "%s: must be an object", field);
        const char *id = s_str (row, "id");
        if (!id || !*id || strlen (id) > 128)
            return ccm_fail (err, "bad_field", field, "%s.id: must be a string of 1-128 bytes",
                             field);
        char upd[32];
        if (s_norm_time (self, s_str (row, "updated_at"), upd)
            && strcmp (table, "task_results") != 0)
            return ccm_fail (err, "bad_field", field, "%s.updated_at: must be a time", field);
        const char *status = NULL;
        ccm_error_t sub = {0};
        if (!strcmp (table, "tasks")
            && (ccm_get_enum (row, "status", true, s_statuses, &status, &sub)
                || !s_str (row, "prompt")))
            return ccm_fail (err, "bad_field", field,
                             "%s: a task needs a known status and a prompt", field);
    }
    //  Every queue row written from here on is this request's own echo.
    sqlite3_stmt *stmt = store_db_prepare (self->db, "SELECT coalesce(max(id), 0) FROM sync_queue");
    if (!stmt)
        return store_db_fail (self, err, "sync.apply");
    int64_t before = sqlite3_step (stmt) == SQLITE_ROW ? sqlite3_column_int64 (stmt, 0) : 0;
    sqlite3_finalize (stmt);

    int64_t applied = 0, skipped = 0;
    cJSON *changed = cJSON_AddArrayToObject (reply, "changed");
    cJSON_ArrayForEach (row, rows)
    {
        char upd[32] = "";
        s_norm_time (self, s_str (row, "updated_at"), upd);
        int rc;
        if (!strcmp (table, "tasks"))
            rc = s_apply_task (self, me, row, upd, err);
        else if (!strcmp (table, "task_results"))
            rc = s_apply_result (self, row, err);
        else if (!strcmp (table, "systems"))
            rc = s_apply_system (self, me, row, upd, err);
        else
            rc = s_apply_skill (self, row, upd, changed, err);
        if (rc < 0)
            return -1;
        if (rc > 0 && strcmp (table, "skills") != 0)
            cJSON_AddItemToArray (changed, cJSON_CreateString (s_str (row, "id")));
        applied += rc;
        skipped += rc == 0;
    }
    stmt = store_db_prepare (self->db, "DELETE FROM sync_queue WHERE id > ?");
    if (!stmt)
        return store_db_fail (self, err, "sync.apply");
    sqlite3_bind_int64 (stmt, 1, before);
    int rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "sync.apply");
    cJSON_AddNumberToObject (reply, "applied", (double) applied);
    cJSON_AddNumberToObject (reply, "skipped", (double) skipped);
    return 0;
}

//  ------------------------------------------------------------------ watch

int
store_sync_watch (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *me = NULL;
    int64_t limit = 200;
    if (ccm_get_string (body, "system_id", true, 128, &me, err)
        || ccm_get_int (body, "limit", false, 1, 1000, &limit, err))
        return -1;
    //  Until it is over and its result is in (a day at most past its end:
    //  a cancelled task may never get one).
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "SELECT t.id FROM tasks t WHERE t.system_id IS NOT NULL AND t.system_id != ?1"
                  " AND (t.origin_system_id IS NULL OR t.origin_system_id = ?1)"
                  " AND (t.status NOT IN ('complete', 'failed', 'cancelled')"
                  "  OR (NOT EXISTS (SELECT 1 FROM task_results r WHERE r.task_id = t.id)"
                  "      AND t.completed_at > strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-1 day')))"
                  " ORDER BY t.created_at DESC LIMIT ?2");
    if (!stmt)
        return store_db_fail (self, err, "sync.watch");
    sqlite3_bind_text (stmt, 1, me, -1, SQLITE_STATIC);
    sqlite3_bind_int64 (stmt, 2, limit);
    cJSON *tasks = cJSON_AddArrayToObject (reply, "tasks");
    int rc;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW)
        cJSON_AddItemToArray (tasks,
                              cJSON_CreateString ((const char *) sqlite3_column_text (stmt, 0)));
    sqlite3_finalize (stmt);
    return rc == SQLITE_DONE ? 0 : store_db_fail (self, err, "sync.watch");
}

//  ------------------------------------------------------------------- meta

int
store_sync_meta (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    (void) body;
    sqlite3_stmt *stmt = store_db_prepare (self->db, "SELECT key, value FROM sync_meta");
    if (!stmt)
        return store_db_fail (self, err, "sync.meta");
    cJSON *meta = cJSON_AddObjectToObject (reply, "meta");
    int rc;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW) {
        const char *value = (const char *) sqlite3_column_text (stmt, 1);
        cJSON_AddItemToObject (meta, (const char *) sqlite3_column_text (stmt, 0),
                               value ? cJSON_CreateString (value) : cJSON_CreateNull ());
    }
    sqlite3_finalize (stmt);
    return rc == SQLITE_DONE ? 0 : store_db_fail (self, err, "sync.meta");
}

int
store_sync_meta_set (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    cJSON *values = NULL;
    if (ccm_get_object (body, "values", true, &values, err))
        return -1;
    cJSON *item;
    int count = 0;
    cJSON_ArrayForEach (item, values)
    {
        char field[96];
        snprintf (field, sizeof field, "values.%.64s", item->string);
        if (strlen (item->string) < 1 || strlen (item->string) > 64)
            return ccm_fail (err, "bad_field", "values", "values: keys must be 1-64 bytes");
        if (!(cJSON_IsString (item) && strlen (item->valuestring) <= S_ERROR_MAX)
            && !cJSON_IsNull (item))
            return ccm_fail (err, "bad_field", field,
                             "%s: must be a string (at most %d bytes)"
                             " or null",
                             field, S_ERROR_MAX);
        count++;
    }
    if (count > 64)
        return ccm_fail (err, "bad_field", "values", "values: at most 64 keys");
    cJSON_ArrayForEach (item, values)
    {
        if (s_meta_put (self, item->string, cJSON_IsString (item) ? item->valuestring : NULL))
            return store_db_fail (self, err, "sync.meta.set");
    }
    cJSON_AddNumberToObject (reply, "count", count);
    return 0;
}

//  ----------------------------------------------------------------- status

int
store_sync_status (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    (void) body;
    sqlite3_stmt *stmt = store_db_prepare (
        self->db,
        "SELECT json_object("
        " 'pending', (SELECT count(*) FROM sync_queue WHERE synced_at IS NULL AND parked_at IS "
        "NULL),"
        " 'oldest_pending_at', (SELECT min(created_at) FROM sync_queue"
        "   WHERE synced_at IS NULL AND parked_at IS NULL),"
        " 'retrying', (SELECT count(*) FROM sync_queue WHERE synced_at IS NULL"
        "   AND parked_at IS NULL AND retry_count > 0),"
        " 'parked_count', (SELECT count(*) FROM sync_queue WHERE parked_at IS NOT NULL"
        "   AND synced_at IS NULL),"
        " 'parked', (SELECT json_group_array(json_object('id', id, 'table', table_name,"
        "   'record_id', record_id, 'error', error_message, 'parked_at', parked_at,"
        "   'retry_count', retry_count)) FROM (SELECT * FROM sync_queue"
        "   WHERE parked_at IS NOT NULL AND synced_at IS NULL ORDER BY parked_at DESC, id DESC"
        "   LIMIT 20)),"
        " 'synced', (SELECT count(*) FROM sync_queue WHERE synced_at IS NOT NULL),"
        " 'last_success_at', (SELECT value FROM sync_meta WHERE key = 'last_success_at'),"
        " 'last_error', (SELECT value FROM sync_meta WHERE key = 'last_error'),"
        " 'last_error_at', (SELECT value FROM sync_meta WHERE key = 'last_error_at'))");
    if (!stmt)
        return store_db_fail (self, err, "sync.status");
    int rc = sqlite3_step (stmt);
    if (rc == SQLITE_ROW) {
        cJSON *status = cJSON_Parse ((const char *) sqlite3_column_text (stmt, 0));
        cJSON *item;
        cJSON_ArrayForEach (item, status)
            cJSON_AddItemToObject (reply, item->string, cJSON_Duplicate (item, true));
        cJSON_Delete (status);
    }
    sqlite3_finalize (stmt);
    return rc == SQLITE_ROW ? 0 : store_db_fail (self, err, "sync.status");
}

/*  store_tasks: projects and tasks, and the task state machine's writes.   */

#include "store_internal.h"

#include "ccm_id.h"
#include "ccm_log.h"
#include "store_fsm.h"
#include "store_retry.h"

#include <unistd.h>

#define S_PROGRESS_MAX (64 * 1024)  //  a progress note, as JSON
#define S_NOW          "strftime('%Y-%m-%dT%H:%M:%fZ','now')"

#define S_PROJECT_JSON                                                                             \
    "json_object('id', id, 'name', name, 'path', path, 'repo_url', repo_url,"                      \
    " 'config', json(config), 'system_id', system_id, 'created_at', created_at)"                   \
    " FROM projects"

static const char *const s_priorities[] = {"low", "normal", "high", "urgent", NULL};
static const char *const s_task_types[] = {"worker", "supervisory", "manager", NULL};

//  Runs a one-row JSON query (first column) and adds it to reply under key.
//  Returns 0, or -1 with err set (not_found when there is no row).
static int
s_add_row (store_t *self, sqlite3_stmt *stmt, cJSON *reply, const char *key, ccm_error_t *err)
{
    int rc = sqlite3_step (stmt);
    if (rc == SQLITE_ROW) {
        cJSON_AddItemToObject (reply, key,
                               cJSON_CreateRaw ((const char *) sqlite3_column_text (stmt, 0)));
        return 0;
    }
    if (rc == SQLITE_DONE)
        return ccm_fail (err, "not_found", key, "%s: not found", key);
    return store_db_fail (self, err, key);
}

//  Adds task id, as protocol.md's TASK, to reply under "task"; what names
//  the request in an error. Returns 0, or -1 with err set.
static int
s_add_task (store_t *self, const char *id, cJSON *reply, const char *what, ccm_error_t *err)
{
    sqlite3_stmt *stmt = store_db_prepare (self->db, "SELECT " STORE_TASK_JSON " WHERE t.id = ?");
    if (!stmt)
        return store_db_fail (self, err, what);
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    int rc = s_add_row (self, stmt, reply, "task", err);
    sqlite3_finalize (stmt);
    return rc;
}

//  Refuses (illegal_transition) unless task id still waits to run: created
//  or queued. rule says what only a waiting task may have. Returns 0 or -1.
static int
s_require_waiting (store_t *self, const char *id, const char *rule, ccm_error_t *err)
{
    sqlite3_stmt *stmt = store_db_prepare (self->db, "SELECT status FROM tasks WHERE id = ?");
    if (!stmt)
        return store_db_fail (self, err, "task");
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    char status[16] = "";
    if (sqlite3_step (stmt) == SQLITE_ROW)
        snprintf (status, sizeof status, "%s", sqlite3_column_text (stmt, 0));
    sqlite3_finalize (stmt);
    if (strcmp (status, "created") != 0 && strcmp (status, "queued") != 0)
        return ccm_fail (err, "illegal_transition", "task", "task: %.8s is %s; %s", id, status,
                         rule);
    return 0;
}

int
store_task_resolve (store_t *self, const char *field, const char *ref, char out[CCM_UUID_LEN + 1],
                    ccm_error_t *err)
{
    size_t len = strlen (ref);
    if (len < 4 || len > CCM_UUID_LEN || strspn (ref, "0123456789abcdef-") != len)
        return ccm_fail (err, "bad_field", field,
                         "%s: '%s' is not a task id or a prefix of at least 4 hex characters",
                         field, ref);
    sqlite3_stmt *stmt =
        store_db_prepare (self->db, "SELECT id FROM tasks WHERE id >= ?1 AND id < ?1 || 'g'"
                                    " ORDER BY id LIMIT 2");
    if (!stmt)
        return store_db_fail (self, err, field);
    sqlite3_bind_text (stmt, 1, ref, -1, SQLITE_STATIC);
    int rows = 0;
    while (sqlite3_step (stmt) == SQLITE_ROW) {
        if (rows++ == 0)
            snprintf (out, CCM_UUID_LEN + 1, "%s", sqlite3_column_text (stmt, 0));
    }
    sqlite3_finalize (stmt);
    if (rows == 0)
        return ccm_fail (err, "not_found", field, "%s: no task '%s'", field, ref);
    if (rows > 1)
        return ccm_fail (err, "ambiguous", field, "%s: '%s' matches several tasks", field, ref);
    return 0;
}

//  Finds a project by name or id; writes its id and name.
static int
s_resolve_project (store_t *self, const char *field, const char *ref, char id[CCM_UUID_LEN + 1],
                   char name[65], ccm_error_t *err)
{
    sqlite3_stmt *stmt =
        store_db_prepare (self->db, "SELECT id, name FROM projects WHERE name = ?1 OR id = ?1");
    if (!stmt)
        return store_db_fail (self, err, field);
    sqlite3_bind_text (stmt, 1, ref, -1, SQLITE_STATIC);
    int rc = sqlite3_step (stmt);
    if (rc == SQLITE_ROW) {
        snprintf (id, CCM_UUID_LEN + 1, "%s", sqlite3_column_text (stmt, 0));
        snprintf (name, 65, "%s", sqlite3_column_text (stmt, 1));
    }
    sqlite3_finalize (stmt);
    if (rc != SQLITE_ROW)
        return ccm_fail (err, "not_found", field, "%s: no project '%s'", field, ref);
    return 0;
}

static char *
s_json_text (cJSON *item, const char *fallback)
{
    return item ? cJSON_PrintUnformatted (item) : strdup (fallback);
}

int
store_ping (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    (void) body;
    (void) err;
    cJSON_AddBoolToObject (reply, "pong", true);
    cJSON_AddNumberToObject (reply, "seq", (double) store_db_last_seq (self->db));
    cJSON_AddNumberToObject (reply, "pid", (double) getpid ());
    cJSON_AddStringToObject (reply, "version", "0.1.0");
    return 0;
}

int
store_stats (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    (void) body;
    sqlite3_stmt *stmt = store_db_prepare (
        self->db,
        "SELECT json_object("
        " 'tasks', (SELECT json_group_object(status, n) FROM"
        "   (SELECT status, count(*) AS n FROM tasks GROUP BY status)),"
        " 'projects', (SELECT count(*) FROM projects),"
        " 'hook_events', (SELECT count(*) FROM hook_events),"
        " 'sync_pending', (SELECT count(*) FROM sync_queue WHERE synced_at IS NULL),"
        " 'db_bytes', (SELECT page_count * page_size FROM pragma_page_count, pragma_page_size))");
    if (!stmt)
        return store_db_fail (self, err, "stats");
    int rc = sqlite3_step (stmt);
    if (rc == SQLITE_ROW) {
        cJSON *stats = cJSON_Parse ((const char *) sqlite3_column_text (stmt, 0));
        cJSON *item;
        cJSON_ArrayForEach (item, stats)
            cJSON_AddItemToObject (reply, item->string, cJSON_Duplicate (item, true));
        cJSON_Delete (stats);
    }
    sqlite3_finalize (stmt);
    cJSON_AddNumberToObject (reply, "seq", (double) store_db_last_seq (self->db));
    return rc == SQLITE_ROW ? 0 : store_db_fail (self, err, "stats");
}

int
store_project_add (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *name = NULL, *path = NULL, *repo_url = NULL;
    cJSON *config = NULL;
    if (ccm_get_string (body, "name", true, 64, &name, err)
        || ccm_get_string (body, "path", true, 4096, &path, err)
        || ccm_get_string (body, "repo_url", false, 4096, &repo_url, err)
        || ccm_get_object (body, "config", false, &config, err))
        return -1;
    if (strspn (name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
            != strlen (name)
        || name[0] == '.' || name[0] == '-')
        return ccm_fail (err, "bad_field", "name",
                         "name: '%s' must be letters, digits, '.', '_' or '-', not starting "
                         "with '.' or '-'",
                         name);
    if (path[0] != '/')
        return ccm_fail (err, "bad_field", "path", "path: '%s' must be absolute", path);
    char id[CCM_UUID_LEN + 1];
    ccm_uuid (id);
    char *config_text = s_json_text (config, "{}");
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "INSERT INTO projects (id, name, path, repo_url, config) VALUES (?,?,?,?,?)");
    int rc = -1;
    if (stmt) {
        sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 2, name, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 3, path, -1, SQLITE_STATIC);
        store_db_bind_text (stmt, 4, repo_url);
        sqlite3_bind_text (stmt, 5, config_text, -1, SQLITE_STATIC);
        rc = sqlite3_step (stmt) == SQLITE_DONE ? 0 : -1;
        sqlite3_finalize (stmt);
    }
    free (config_text);
    if (rc) {
        if ((sqlite3_extended_errcode (self->db) & 0xff) == SQLITE_CONSTRAINT)
            return ccm_fail (err, "conflict", "name", "name: a project '%s' already exists", name);
        return store_db_fail (self, err, "project.add");
    }
    stmt = store_db_prepare (self->db, "SELECT " S_PROJECT_JSON " WHERE id = ?");
    if (!stmt)
        return store_db_fail (self, err, "project.add");
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    rc = s_add_row (self, stmt, reply, "project", err);
    sqlite3_finalize (stmt);
    return rc;
}

int
store_project_list (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    (void) body;
    sqlite3_stmt *stmt = store_db_prepare (self->db, "SELECT " S_PROJECT_JSON " ORDER BY name");
    if (!stmt)
        return store_db_fail (self, err, "project.list");
    int rows = store_db_collect_json (stmt, cJSON_AddArrayToObject (reply, "projects"));
    sqlite3_finalize (stmt);
    return rows < 0 ? store_db_fail (self, err, "project.list") : 0;
}

//  Moves task id from its status to "to", records a task_events row, and
//  adds the updated TASK to reply.
static const char *const s_result_statuses[] = {"complete", "failed",  "cancelled",
                                                "timeout",  "crashed", NULL};

//  Records a task_results row for task id from result (validated here).
static int
s_add_result (store_t *self, const char *id, cJSON *result, ccm_error_t *err)
{
    const char *status = NULL, *output = NULL, *agent_id = NULL;
    cJSON *files = NULL, *details = NULL;
    int64_t exit_code = 0;
    bool has_exit = cJSON_GetObjectItemCaseSensitive (result, "exit_code") != NULL;
    if (ccm_get_enum (result, "status", true, s_result_statuses, &status, err)
        || ccm_get_string (result, "output", false, 1 << 20, &output, err)
        || ccm_get_string (result, "agent_id", false, 128, &agent_id, err)
        || ccm_get_array (result, "files_changed", false, 0, 100000, &files, err)
        || ccm_get_int (result, "exit_code", false, -1000, 1000, &exit_code, err)
        || ccm_get_object (result, "details", false, &details, err)) {
        char field[sizeof err->field];
        snprintf (field, sizeof field, "result.%.50s", err->field);
        snprintf (err->field, sizeof err->field, "%s", field);
        return -1;
    }
    char result_id[CCM_UUID_LEN + 1];
    ccm_uuid (result_id);
    char *files_text = files ? cJSON_PrintUnformatted (files) : strdup ("[]");
    char *details_text = details ? cJSON_PrintUnformatted (details) : NULL;
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "INSERT INTO task_results (id, task_id, agent_id, status, output, files_changed,"
                  " exit_code, details) VALUES (?, ?, ?, ?, ?, ?, ?, ?)");
    int rc = SQLITE_ERROR;
    if (stmt && files_text) {
        sqlite3_bind_text (stmt, 1, result_id, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 2, id, -1, SQLITE_STATIC);
        store_db_bind_text (stmt, 3, agent_id);
        sqlite3_bind_text (stmt, 4, status, -1, SQLITE_STATIC);
        store_db_bind_text (stmt, 5, output);
        sqlite3_bind_text (stmt, 6, files_text, -1, SQLITE_STATIC);
        if (has_exit)
            sqlite3_bind_int64 (stmt, 7, exit_code);
        else
            sqlite3_bind_null (stmt, 7);
        store_db_bind_text (stmt, 8, details_text);
        rc = sqlite3_step (stmt);
    }
    sqlite3_finalize (stmt);
    free (files_text);
    free (details_text);
    return rc == SQLITE_DONE ? 0 : store_db_fail (self, err, "result");
}

//  store_task_move, plus: expect, the status the task must be in (NULL: any),
//  read in the same transaction as the move, so that nothing can change it
//  in between; final, the caller's word that a failure is not worth a retry.
static int
s_move (store_t *self, const char *id, const char *to, const char *reason, cJSON *result,
        const char *locked_by, const char *expect, bool final, cJSON *reply, ccm_error_t *err)
{
    sqlite3_stmt *stmt =
        store_db_prepare (self->db, "SELECT status, attempts FROM tasks WHERE id = ?");
    if (!stmt)
        return store_db_fail (self, err, "task");
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    if (sqlite3_step (stmt) != SQLITE_ROW) {
        sqlite3_finalize (stmt);
        return ccm_fail (err, "not_found", "task", "task: no task '%s'", id);
    }
    char from[16];
    snprintf (from, sizeof from, "%s", sqlite3_column_text (stmt, 0));
    int attempts = sqlite3_column_int (stmt, 1);
    sqlite3_finalize (stmt);

    if (expect && strcmp (from, expect) != 0)
        return ccm_fail (err, "illegal_transition", "from", "from: task %.8s is %s, not %s", id,
                         from, expect);
    char why[256];
    if (store_fsm_check (from, to, attempts, self->max_attempts, why, sizeof why))
        return ccm_fail (err, "illegal_transition", "to", "%s", why);
    //  Whoever assigns it (router, executor, a client), a task runs only
    //  once every task it depends on is complete.
    if (strcmp (to, "assigned") == 0) {
        stmt = store_db_prepare (self->db,
                                 "SELECT u.id, u.status FROM task_dependencies d JOIN tasks u"
                                 " ON u.id = d.depends_on WHERE d.task_id = ?"
                                 " AND u.status != 'complete' ORDER BY u.created_at LIMIT 1");
        if (!stmt)
            return store_db_fail (self, err, "task");
        sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
        if (sqlite3_step (stmt) == SQLITE_ROW) {
            snprintf (why, sizeof why, "task %.8s waits for task %.8s (%s)", id,
                      sqlite3_column_text (stmt, 0), sqlite3_column_text (stmt, 1));
            sqlite3_finalize (stmt);
            return ccm_fail (err, "illegal_transition", "to", "%s", why);
        }
        sqlite3_finalize (stmt);
    }

    //  A failed run is tried again later: the store keeps when (retry_at,
    //  cleared by any other move), and the reason says so; the last failure
    //  says it was the last. An agent killed at its timeout_s had its time.
    char retry_at[32] = "", status_reason[4200];
    const char *stored_reason = reason;
    if (strcmp (to, "failed") == 0) {
        const char *ended =
            cJSON_GetStringValue (cJSON_GetObjectItemCaseSensitive (result, "status"));
        bool timed_out = ended && strcmp (ended, "timeout") == 0;
        if (store_retry_wanted (from, attempts, self->max_attempts, final || timed_out))
            store_retry_iso (ccm_wall_ms ()
                                 + store_retry_delay_ms (self->retry_base_ms, attempts, random ()),
                             retry_at);
        store_retry_reason (status_reason, sizeof status_reason, reason, from, attempts,
                            self->max_attempts, *retry_at ? retry_at : NULL);
        stored_reason = *status_reason ? status_reason : NULL;
    }

    stmt = store_db_prepare (
        self->db, "UPDATE tasks SET status = ?2, status_reason = ?3, retry_at = ?5,"
                  " attempts = attempts + (?2 = 'assigned'),"
                  " updated_at = " S_NOW ","
                  " started_at = CASE WHEN ?2 = 'executing' THEN " S_NOW " ELSE started_at END,"
                  " completed_at = CASE WHEN ?2 IN ('complete', 'failed', 'cancelled') THEN " S_NOW
                  " WHEN ?2 = 'queued' THEN NULL ELSE completed_at END,"
                  " locked_at = CASE WHEN ?2 = 'assigned' THEN " S_NOW
                  " WHEN ?2 IN ('queued', 'complete', 'failed', 'cancelled') THEN NULL"
                  " ELSE locked_at END,"
                  " locked_by = CASE WHEN ?2 = 'assigned' THEN ?4"
                  " WHEN ?2 IN ('queued', 'complete', 'failed', 'cancelled') THEN NULL"
                  " ELSE locked_by END"
                  " WHERE id = ?1");
    if (!stmt)
        return store_db_fail (self, err, "task.transition");
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 2, to, -1, SQLITE_STATIC);
    store_db_bind_text (stmt, 3, stored_reason);
    store_db_bind_text (stmt, 4, locked_by);
    store_db_bind_text (stmt, 5, *retry_at ? retry_at : NULL);
    int rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "task.transition");
    if (result && s_add_result (self, id, result, err))
        return -1;

    char event_id[CCM_UUID_LEN + 1];
    ccm_uuid (event_id);
    stmt = store_db_prepare (
        self->db, "INSERT INTO task_events (id, task_id, event_type, event_data)"
                  " SELECT ?1, ?2, ?3, CASE WHEN ?7 IS NULL"
                  " THEN json_object('from', ?4, 'to', ?5, 'reason', ?6, 'attempts', attempts)"
                  " ELSE json_object('from', ?4, 'to', ?5, 'reason', ?6, 'attempts', attempts,"
                  " 'retry_at', ?7) END FROM tasks WHERE id = ?2");
    if (!stmt)
        return store_db_fail (self, err, "task.transition");
    sqlite3_bind_text (stmt, 1, event_id, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 2, id, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 3, store_fsm_event_type (from, to), -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 4, from, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 5, to, -1, SQLITE_STATIC);
    store_db_bind_text (stmt, 6, reason);
    store_db_bind_text (stmt, 7, *retry_at ? retry_at : NULL);
    rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "task.transition");
    return reply ? s_add_task (self, id, reply, "task", err) : 0;
}

int
store_task_move (store_t *self, const char *id, const char *to, const char *reason, cJSON *result,
                 const char *locked_by, cJSON *reply, ccm_error_t *err)
{
    return s_move (self, id, to, reason, result, locked_by, NULL, false, reply, err);
}

//  Records that task_id depends on each task named in refs (ids or
//  prefixes), naming a bad one as depends_on[i]. Refuses a missing task and
//  a dependency that would close a cycle (the new one already, through its
//  own dependencies, waits for task_id).
static int
s_add_dependencies (store_t *self, const char *task_id, cJSON *refs, ccm_error_t *err)
{
    sqlite3_stmt *cycle = store_db_prepare (
        self->db, "WITH RECURSIVE up(id) AS (SELECT ?1 UNION"
                  " SELECT d.depends_on FROM task_dependencies d JOIN up ON d.task_id = up.id)"
                  " SELECT 1 FROM up WHERE id = ?2 LIMIT 1");
    sqlite3_stmt *insert = store_db_prepare (
        self->db, "INSERT OR IGNORE INTO task_dependencies (task_id, depends_on) VALUES (?, ?)");
    int rc = cycle && insert ? 0 : store_db_fail (self, err, "depends_on");
    int i = 0;
    cJSON *ref;
    cJSON_ArrayForEach (ref, refs)
    {
        if (rc)
            break;
        char field[32], dep[CCM_UUID_LEN + 1];
        snprintf (field, sizeof field, "depends_on[%d]", i++);
        if (!cJSON_IsString (ref)) {
            rc = ccm_fail (err, "bad_field", field, "%s: must be a task id", field);
            break;
        }
        if (store_task_resolve (self, field, ref->valuestring, dep, err)) {
            rc = -1;
            break;
        }
        sqlite3_bind_text (cycle, 1, dep, -1, SQLITE_STATIC);
        sqlite3_bind_text (cycle, 2, task_id, -1, SQLITE_STATIC);
        bool loops = sqlite3_step (cycle) == SQLITE_ROW;
        sqlite3_reset (cycle);
        if (loops) {
            rc = ccm_fail (err, "cycle", field,
                           "%s: task %.8s already waits for task %.8s; this dependency would "
                           "make a cycle",
                           field, dep, task_id);
            break;
        }
        sqlite3_bind_text (insert, 1, task_id, -1, SQLITE_STATIC);
        sqlite3_bind_text (insert, 2, dep, -1, SQLITE_STATIC);
        if (sqlite3_step (insert) != SQLITE_DONE)
            rc = store_db_fail (self, err, field);
        sqlite3_reset (insert);
    }
    sqlite3_finalize (cycle);
    sqlite3_finalize (insert);
    return rc;
}

//  The parent rules: a supervisory task names the task it reviews (not
//  another review); any other task may name a parent only if that parent
//  is a manager (its subtasks). Writes the parent's project name, if any.
static int
s_check_parent (store_t *self, const char *task_type, const char *parent_id, char project[65],
                ccm_error_t *err)
{
    bool review = strcmp (task_type, "supervisory") == 0;
    if (!parent_id)
        return review ? ccm_fail (err, "bad_field", "parent_task_id",
                                  "parent_task_id: a supervisory task names the task it reviews")
                      : 0;
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "SELECT t.task_type, coalesce(p.name, t.requires_project) FROM tasks t"
                  " LEFT JOIN projects p ON p.id = t.project_id WHERE t.id = ?");
    if (!stmt)
        return store_db_fail (self, err, "parent_task_id");
    sqlite3_bind_text (stmt, 1, parent_id, -1, SQLITE_STATIC);
    char type[16] = "";
    if (sqlite3_step (stmt) == SQLITE_ROW) {
        snprintf (type, sizeof type, "%s", sqlite3_column_text (stmt, 0));
        const unsigned char *name = sqlite3_column_text (stmt, 1);
        snprintf (project, 65, "%s", name ? (const char *) name : "");
    }
    sqlite3_finalize (stmt);
    if (review && strcmp (type, "supervisory") == 0)
        return ccm_fail (err, "bad_field", "parent_task_id",
                         "parent_task_id: task %.8s is itself a review; review its worker task",
                         parent_id);
    if (!review && strcmp (type, "manager") != 0)
        return ccm_fail (err, "bad_field", "parent_task_id",
                         "parent_task_id: task %.8s is a %s task; only a manager task has"
                         " subtasks (a review is task_type supervisory)",
                         parent_id, type);
    return 0;
}

int
store_task_add (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *prompt = NULL, *project = NULL, *priority = "normal", *task_type = "worker";
    const char *system_id = NULL, *requires_project = NULL, *parent = NULL;
    cJSON *metadata = NULL, *input_data = NULL, *requires_meta = NULL, *depends_on = NULL;
    const char *agent = NULL;
    int64_t timeout_s = 0;
    bool requires_supabase = false, hold = false;
    if (ccm_get_string (body, "prompt", true, 1 << 20, &prompt, err)
        || ccm_get_string (body, "project", false, 128, &project, err)
        || ccm_get_enum (body, "priority", false, s_priorities, &priority, err)
        || ccm_get_enum (body, "task_type", false, s_task_types, &task_type, err)
        || ccm_get_string (body, "system_id", false, 128, &system_id, err)
        || ccm_get_string (body, "requires_project", false, 128, &requires_project, err)
        || ccm_get_string (body, "parent_task_id", false, 64, &parent, err)
        || ccm_get_object (body, "requires_context_metadata", false, &requires_meta, err)
        || ccm_get_object (body, "metadata", false, &metadata, err)
        || ccm_get_object (body, "input_data", false, &input_data, err)
        || ccm_get_bool (body, "requires_supabase", false, &requires_supabase, err)
        || ccm_get_bool (body, "hold", false, &hold, err)
        || ccm_get_string (body, "agent", false, 64, &agent, err)
        || ccm_get_int (body, "timeout_s", false, 1, 30 * 86400, &timeout_s, err)
        || ccm_get_array (body, "depends_on", false, 0, 256, &depends_on, err))
        return -1;

    char project_id[CCM_UUID_LEN + 1] = "", project_name[65] = "", parent_id[CCM_UUID_LEN + 1];
    if (project && s_resolve_project (self, "project", project, project_id, project_name, err))
        return -1;
    if (parent && store_task_resolve (self, "parent_task_id", parent, parent_id, err))
        return -1;
    char parent_project[65] = "";
    if (s_check_parent (self, task_type, parent ? parent_id : NULL, parent_project, err))
        return -1;
    //  A review or a subtask works on its parent's project unless told otherwise.
    if (!project && !requires_project && *parent_project) {
        project = parent_project;
        if (s_resolve_project (self, "project", project, project_id, project_name, err))
            return -1;
    }
    if (system_id) {
        sqlite3_stmt *stmt = store_db_prepare (self->db, "SELECT 1 FROM systems WHERE id = ?");
        if (!stmt)
            return store_db_fail (self, err, "system_id");
        sqlite3_bind_text (stmt, 1, system_id, -1, SQLITE_STATIC);
        int found = sqlite3_step (stmt) == SQLITE_ROW;
        sqlite3_finalize (stmt);
        if (!found)
            return ccm_fail (err, "not_found", "system_id", "system_id: no system '%s'", system_id);
    }
    if (!requires_project && project)
        requires_project = project_name;

    char id[CCM_UUID_LEN + 1];
    ccm_uuid (id);
    char *meta_text = s_json_text (metadata, "{}");
    char *input_text = s_json_text (input_data, "{}");
    char *requires_text = s_json_text (requires_meta, "{}");
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "INSERT INTO tasks (id, project_id, system_id, parent_task_id, requires_project,"
                  " requires_context_metadata, task_type, status, prompt, input_data, metadata,"
                  " requires_supabase, priority, agent_profile, timeout_s)"
                  " VALUES (?, ?, ?, ?, ?, ?, ?, 'created', ?, ?, ?, ?, ?, ?, ?)");
    int rc = SQLITE_ERROR;
    if (stmt) {
        sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
        store_db_bind_text (stmt, 2, project ? project_id : NULL);
        store_db_bind_text (stmt, 3, system_id);
        store_db_bind_text (stmt, 4, parent ? parent_id : NULL);
        store_db_bind_text (stmt, 5, requires_project);
        sqlite3_bind_text (stmt, 6, requires_text, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 7, task_type, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 8, prompt, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 9, input_text, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 10, meta_text, -1, SQLITE_STATIC);
        sqlite3_bind_int (stmt, 11, requires_supabase);
        sqlite3_bind_text (stmt, 12, priority, -1, SQLITE_STATIC);
        store_db_bind_text (stmt, 13, agent);
        if (timeout_s)
            sqlite3_bind_int64 (stmt, 14, timeout_s);
        rc = sqlite3_step (stmt);
        sqlite3_finalize (stmt);
    }
    free (meta_text);
    free (input_text);
    free (requires_text);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "task.add");

    char event_id[CCM_UUID_LEN + 1];
    ccm_uuid (event_id);
    stmt = store_db_prepare (self->db, "INSERT INTO task_events (id, task_id, event_type)"
                                       " VALUES (?, ?, 'created')");
    if (!stmt)
        return store_db_fail (self, err, "task.add");
    sqlite3_bind_text (stmt, 1, event_id, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 2, id, -1, SQLITE_STATIC);
    rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "task.add");
    if (depends_on && s_add_dependencies (self, id, depends_on, err))
        return -1;
    //  A review waits for the task it reviews to complete.
    if (strcmp (task_type, "supervisory") == 0) {
        cJSON *reviewed = cJSON_CreateArray ();
        cJSON_AddItemToArray (reviewed, cJSON_CreateString (parent_id));
        rc = s_add_dependencies (self, id, reviewed, err);
        cJSON_Delete (reviewed);
        if (rc)
            return -1;
    }
    if (hold)
        return s_add_task (self, id, reply, "task.add", err);
    return store_task_move (self, id, "queued", NULL, NULL, NULL, reply, err);
}

int
store_task_depend (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *ref = NULL;
    cJSON *depends_on = NULL;
    char id[CCM_UUID_LEN + 1];
    if (ccm_get_string (body, "task", true, 64, &ref, err)
        || ccm_get_array (body, "depends_on", true, 1, 256, &depends_on, err)
        || store_task_resolve (self, "task", ref, id, err))
        return -1;
    //  Only a task that has not started can be made to wait.
    if (s_require_waiting (self, id, "only a created or queued task can get dependencies", err))
        return -1;
    if (s_add_dependencies (self, id, depends_on, err))
        return -1;
    return s_add_task (self, id, reply, "task.depend", err);
}

int
store_task_reason (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *ref = NULL, *reason = NULL;
    char id[CCM_UUID_LEN + 1];
    if (ccm_get_string (body, "task", true, 64, &ref, err)
        || ccm_get_string (body, "reason", true, 512, &reason, err)
        || store_task_resolve (self, "task", ref, id, err))
        return -1;
    //  Only a waiting task has a reason to show.
    if (s_require_waiting (self, id, "only a waiting task takes a reason", err))
        return -1;
    //  An unchanged reason is not written again, so a router may say it at
    //  every pass without growing the event log.
    sqlite3_stmt *stmt =
        store_db_prepare (self->db, "UPDATE tasks SET status_reason = ?2, updated_at = " S_NOW
                                    " WHERE id = ?1 AND status_reason IS NOT ?2");
    if (!stmt)
        return store_db_fail (self, err, "task.reason");
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 2, reason, -1, SQLITE_STATIC);
    int rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "task.reason");
    return s_add_task (self, id, reply, "task.reason", err);
}

int
store_task_get (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *ref = NULL;
    char id[CCM_UUID_LEN + 1];
    if (ccm_get_string (body, "task", true, 64, &ref, err)
        || store_task_resolve (self, "task", ref, id, err))
        return -1;
    if (s_add_task (self, id, reply, "task.get", err))
        return -1;
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "SELECT json_object('id', id, 'event_type', event_type,"
                  " 'event_data', json(event_data), 'created_at', created_at)"
                  " FROM task_events WHERE task_id = ? ORDER BY created_at, rowid");
    if (!stmt)
        return store_db_fail (self, err, "task.get");
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    int rows = store_db_collect_json (stmt, cJSON_AddArrayToObject (reply, "events"));
    sqlite3_finalize (stmt);
    if (rows < 0)
        return store_db_fail (self, err, "task.get");
    stmt = store_db_prepare (
        self->db, "SELECT json_object('id', id, 'status', status, 'agent_id', agent_id,"
                  " 'exit_code', exit_code, 'output', output, 'files_changed', json(files_changed),"
                  " 'details', json(details), 'created_at', created_at)"
                  " FROM task_results WHERE task_id = ? ORDER BY created_at, rowid");
    if (!stmt)
        return store_db_fail (self, err, "task.get");
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    rows = store_db_collect_json (stmt, cJSON_AddArrayToObject (reply, "results"));
    sqlite3_finalize (stmt);
    return rows < 0 ? store_db_fail (self, err, "task.get") : 0;
}

int
store_task_list (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *status = NULL, *project = NULL, *parent = NULL;
    int64_t limit = 100, offset = 0;
    bool retry_due = false;
    if (ccm_get_enum (body, "status", false, store_fsm_statuses, &status, err)
        || ccm_get_string (body, "project", false, 128, &project, err)
        || ccm_get_string (body, "parent", false, 64, &parent, err)
        || ccm_get_int (body, "limit", false, 1, 1000, &limit, err)
        || ccm_get_int (body, "offset", false, 0, INT32_MAX, &offset, err)
        || ccm_get_bool (body, "retry_due", false, &retry_due, err))
        return -1;
    char project_id[CCM_UUID_LEN + 1] = "", project_name[65], parent_id[CCM_UUID_LEN + 1];
    if (project && s_resolve_project (self, "project", project, project_id, project_name, err))
        return -1;
    if (parent && store_task_resolve (self, "parent", parent, parent_id, err))
        return -1;
    //  retry_due: the failed tasks whose retry is due, the longest due first
    //  (the router requeues them); retry_at is set only on failed tasks.
    //  Spelt out rather than bound, so that the router's poll each beat is a
    //  walk of the tasks_retry_due index, not a scan of every task.
    char where[512];
    snprintf (where, sizeof where,
              " WHERE (?1 IS NULL OR t.status = ?1) AND (?2 IS NULL OR t.project_id = ?2)"
              " AND (?5 IS NULL OR t.parent_task_id = ?5)%s",
              retry_due ? " AND t.retry_at <= " S_NOW " AND t.status = 'failed'" : "");
    char sql[4096];
    snprintf (sql, sizeof sql, "SELECT %s%s ORDER BY %s LIMIT ?3 OFFSET ?4", STORE_TASK_JSON, where,
              retry_due ? "t.retry_at, t.rowid" : "t.created_at DESC, t.rowid DESC");
    sqlite3_stmt *stmt = store_db_prepare (self->db, sql);
    if (!stmt)
        return store_db_fail (self, err, "task.list");
    store_db_bind_text (stmt, 1, status);
    store_db_bind_text (stmt, 2, project ? project_id : NULL);
    sqlite3_bind_int64 (stmt, 3, limit);
    sqlite3_bind_int64 (stmt, 4, offset);
    store_db_bind_text (stmt, 5, parent ? parent_id : NULL);
    int rows = store_db_collect_json (stmt, cJSON_AddArrayToObject (reply, "tasks"));
    sqlite3_finalize (stmt);
    if (rows < 0)
        return store_db_fail (self, err, "task.list");
    snprintf (sql, sizeof sql, "SELECT count(*) FROM tasks t%s", where);
    stmt = store_db_prepare (self->db, sql);
    if (!stmt)
        return store_db_fail (self, err, "task.list");
    store_db_bind_text (stmt, 1, status);
    store_db_bind_text (stmt, 2, project ? project_id : NULL);
    store_db_bind_text (stmt, 5, parent ? parent_id : NULL);
    int64_t total = sqlite3_step (stmt) == SQLITE_ROW ? sqlite3_column_int64 (stmt, 0) : 0;
    sqlite3_finalize (stmt);
    cJSON_AddNumberToObject (reply, "total", (double) total);
    return 0;
}

//  Refuses (conflict) a move by an executor that no longer holds the task:
//  it was requeued (its executor went offline) and maybe runs elsewhere.
//  With attempt (>= 0), the move must also be of the task's current
//  attempt: a stale attempt's agent, placed again since, speaks no more.
static int
s_check_holder (store_t *self, const char *id, const char *held_by, int64_t attempt,
                ccm_error_t *err)
{
    sqlite3_stmt *stmt =
        store_db_prepare (self->db, "SELECT locked_by, attempts FROM tasks WHERE id = ?");
    if (!stmt)
        return store_db_fail (self, err, "held_by");
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    char holder[129] = "";
    int64_t attempts = -1;
    if (sqlite3_step (stmt) == SQLITE_ROW) {
        if (sqlite3_column_text (stmt, 0))
            snprintf (holder, sizeof holder, "%s", sqlite3_column_text (stmt, 0));
        attempts = sqlite3_column_int64 (stmt, 1);
    }
    sqlite3_finalize (stmt);
    if (strcmp (holder, held_by) != 0)
        return ccm_fail (err, "conflict", "held_by",
                         "held_by: task %.8s is not held by system %.36s any more (%s%.36s)", id,
                         held_by, *holder ? "now by system " : "it was requeued", holder);
    if (attempt >= 0 && attempt != attempts)
        return ccm_fail (err, "conflict", "attempt",
                         "attempt: task %.8s is at attempt %lld; attempt %lld is stale (the task"
                         " was requeued and placed again)",
                         id, (long long) attempts, (long long) attempt);
    return 0;
}

//  Reads the optional held_by and attempt fencing of a write by an
//  executor and checks them; attempt needs held_by.
static int
s_fence (store_t *self, cJSON *body, const char *id, ccm_error_t *err)
{
    const char *held_by = NULL;
    int64_t attempt = -1;
    if (ccm_get_string (body, "held_by", false, 128, &held_by, err)
        || ccm_get_int (body, "attempt", false, 0, 1000000, &attempt, err))
        return -1;
    if (attempt >= 0 && !held_by)
        return ccm_fail (err, "missing_field", "held_by", "held_by: required with attempt");
    return held_by ? s_check_holder (self, id, held_by, attempt, err) : 0;
}

int
store_task_transition (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *ref = NULL, *to = NULL, *reason = NULL, *locked_by = NULL, *from = NULL;
    cJSON *result = NULL;
    bool final = false;
    char id[CCM_UUID_LEN + 1];
    if (ccm_get_string (body, "task", true, 64, &ref, err)
        || ccm_get_enum (body, "to", true, store_fsm_statuses, &to, err)
        || ccm_get_enum (body, "from", false, store_fsm_statuses, &from, err)
        || ccm_get_string (body, "reason", false, 4096, &reason, err)
        || ccm_get_object (body, "result", false, &result, err)
        || ccm_get_string (body, "locked_by", false, 128, &locked_by, err)
        || ccm_get_bool (body, "final", false, &final, err)
        || store_task_resolve (self, "task", ref, id, err) || s_fence (self, body, id, err))
        return -1;
    return s_move (self, id, to, reason, result, locked_by, from, final, reply, err);
}

int
store_task_result (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *ref = NULL;
    cJSON *result = NULL;
    char id[CCM_UUID_LEN + 1];
    if (ccm_get_string (body, "task", true, 64, &ref, err)
        || ccm_get_object (body, "result", true, &result, err)
        || store_task_resolve (self, "task", ref, id, err) || s_fence (self, body, id, err)
        || s_add_result (self, id, result, err))
        return -1;
    cJSON_AddStringToObject (reply, "task_id", id);
    return 0;
}

int
store_task_progress (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *ref = NULL;
    cJSON *data = NULL;
    char id[CCM_UUID_LEN + 1], event_id[CCM_UUID_LEN + 1];
    if (ccm_get_string (body, "task", true, 64, &ref, err)
        || ccm_get_object (body, "data", true, &data, err)
        || store_task_resolve (self, "task", ref, id, err))
        return -1;
    char *text = cJSON_PrintUnformatted (data);
    if (text && strlen (text) > S_PROGRESS_MAX) {
        free (text);
        return ccm_fail (err, "too_large", "data", "data: more than %d bytes as JSON",
                         S_PROGRESS_MAX);
    }
    sqlite3_stmt *stmt = store_db_prepare (self->db, "INSERT INTO task_events"
                                                     " (id, task_id, event_type, event_data)"
                                                     " VALUES (?, ?, 'progress', ?)");
    ccm_uuid (event_id);
    int rc = SQLITE_ERROR;
    if (stmt && text) {
        sqlite3_bind_text (stmt, 1, event_id, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 2, id, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 3, text, -1, SQLITE_STATIC);
        rc = sqlite3_step (stmt);
    }
    sqlite3_finalize (stmt);
    free (text);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "task.progress");
    cJSON_AddStringToObject (reply, "task_id", id);
    cJSON_AddStringToObject (reply, "event_id", event_id);
    return 0;
}

int
store_task_cancel (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *ref = NULL, *reason = "cancelled by request";
    char id[CCM_UUID_LEN + 1];
    if (ccm_get_string (body, "task", true, 64, &ref, err)
        || ccm_get_string (body, "reason", false, 4096, &reason, err)
        || store_task_resolve (self, "task", ref, id, err))
        return -1;
    return store_task_move (self, id, "cancelled", reason, NULL, NULL, reply, err);
}

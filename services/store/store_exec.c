/*  store_exec: what executors write: their system, the contexts (projects)
    they hold, task claims, agents and worktrees.

    task.claim is the executor's direct dispatch path until the router
    exists: it moves the best queued tasks for the caller's projects to
    "assigned" with the caller as lock holder, in one transaction, so two
    executors can never claim the same task.                                */

#include "store_internal.h"

#include "ccm_bus.h"
#include "ccm_id.h"

#define S_NOW "strftime('%Y-%m-%dT%H:%M:%fZ','now')"

static const char *const s_system_types[] = {"developer", "devops", "business", NULL};
static const char *const s_context_statuses[] = {"active", "stale", "error", NULL};
static const char *const s_agent_statuses[] = {"idle",   "running", "crashed",
                                               "exited", "waiting", NULL};
static const char *const s_worktree_statuses[] = {"active", "merged", "discarded", "stale", NULL};

static char *
s_print (cJSON *item, const char *fallback)
{
    return item ? cJSON_PrintUnformatted (item) : strdup (fallback);
}

int
store_check_peer (store_t *self, const char *system_id, ccm_error_t *err)
{
    //  Over ipc://, or the hub's own services (its own key): any system.
    if (!self->peer_key[0] || strcmp (self->peer_key, ccm_bus_public_key ()) == 0)
        return 0;
    sqlite3_stmt *stmt =
        store_db_prepare (self->db, "SELECT public_key FROM systems WHERE id = ?1");
    if (!stmt)
        return store_db_fail (self, err, "system_id");
    sqlite3_bind_text (stmt, 1, system_id, -1, SQLITE_STATIC);
    bool other = sqlite3_step (stmt) == SQLITE_ROW && sqlite3_column_text (stmt, 0)
                 && strcmp ((const char *) sqlite3_column_text (stmt, 0), self->peer_key) != 0;
    sqlite3_finalize (stmt);
    if (other)
        return ccm_fail (err, "forbidden", "system_id",
                         "system_id: system %.36s belongs to another key; a peer acts only as"
                         " its own system",
                         system_id);
    return 0;
}

int
store_system_register (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *id = NULL, *hostname = NULL, *machine_id = NULL, *type = "developer";
    cJSON *tags = NULL;
    int64_t capacity = 4;
    if (ccm_get_string (body, "system_id", false, 64, &id, err)
        || ccm_get_string (body, "hostname", true, 255, &hostname, err)
        || ccm_get_string (body, "machine_id", true, 128, &machine_id, err)
        || ccm_get_enum (body, "system_type", false, s_system_types, &type, err)
        || ccm_get_array (body, "tags", false, 0, 256, &tags, err)
        || ccm_get_int (body, "capacity", false, 0, 1024, &capacity, err))
        return -1;
    //  Over tcp://, a machine is bound to the key that first registered it.
    sqlite3_stmt *stmt =
        store_db_prepare (self->db, "SELECT id FROM systems WHERE machine_id = ?1 OR id = ?2");
    if (!stmt)
        return store_db_fail (self, err, "system.register");
    sqlite3_bind_text (stmt, 1, machine_id, -1, SQLITE_STATIC);
    store_db_bind_text (stmt, 2, id);
    int rc = 0;
    while (rc == 0 && sqlite3_step (stmt) == SQLITE_ROW) {
        char known[CCM_UUID_LEN + 1];
        snprintf (known, sizeof known, "%s", sqlite3_column_text (stmt, 0));
        rc = store_check_peer (self, known, err);
    }
    sqlite3_finalize (stmt);
    if (rc)
        return -1;
    char fresh[CCM_UUID_LEN + 1];
    ccm_uuid (fresh);
    char *tags_text = s_print (tags, "[]");
    //  One row per machine: a re-registration updates it and keeps its id.
    stmt = store_db_prepare (
        self->db, "INSERT INTO systems (id, hostname, machine_id, system_type, tags, capacity,"
                  " status, last_seen, public_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'online', " S_NOW
                  ", ?7) ON CONFLICT (machine_id) DO UPDATE SET hostname = ?2, system_type = ?4,"
                  " tags = ?5, capacity = ?6, status = 'online', last_seen = " S_NOW ","
                  " public_key = coalesce(public_key, ?7)");
    rc = SQLITE_ERROR;
    if (stmt) {
        store_db_bind_text (stmt, 7, self->peer_key[0] ? self->peer_key : NULL);
        sqlite3_bind_text (stmt, 1, id ? id : fresh, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 2, hostname, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 3, machine_id, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 4, type, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 5, tags_text, -1, SQLITE_STATIC);
        sqlite3_bind_int64 (stmt, 6, capacity);
        rc = sqlite3_step (stmt);
        sqlite3_finalize (stmt);
    }
    free (tags_text);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "system.register");
    stmt = store_db_prepare (
        self->db, "SELECT json_object('id', id, 'hostname', hostname, 'machine_id', machine_id,"
                  " 'system_type', system_type, 'tags', json(tags), 'capacity', capacity,"
                  " 'status', status, 'last_seen', last_seen) FROM systems WHERE machine_id = ?");
    if (stmt)
        sqlite3_bind_text (stmt, 1, machine_id, -1, SQLITE_STATIC);
    return store_db_row_json (self, stmt, reply, "system", err);
}

int
store_context_upsert (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *system_id = NULL, *name = NULL, *path = NULL, *repo_url = NULL, *branch = NULL;
    const char *status = "active", *verified = NULL, *pulled = NULL;
    cJSON *metadata = NULL;
    if (ccm_get_string (body, "system_id", true, 64, &system_id, err)
        || ccm_get_string (body, "project_name", true, 64, &name, err)
        || ccm_get_string (body, "project_path", true, 4096, &path, err)
        || ccm_get_string (body, "repo_url", false, 4096, &repo_url, err)
        || ccm_get_string (body, "repo_branch", false, 255, &branch, err)
        || ccm_get_enum (body, "status", false, s_context_statuses, &status, err)
        || ccm_get_string (body, "last_verified", false, 64, &verified, err)
        || ccm_get_string (body, "last_pulled", false, 64, &pulled, err)
        || ccm_get_object (body, "metadata", false, &metadata, err)
        || store_check_peer (self, system_id, err))
        return -1;
    char fresh[CCM_UUID_LEN + 1];
    ccm_uuid (fresh);
    char *meta_text = s_print (metadata, "{}");
    sqlite3_stmt *stmt = store_db_prepare (
        self->db,
        "INSERT INTO contexts (id, system_id, project_name, project_path, repo_url, repo_branch,"
        " status, last_verified, last_pulled, metadata)"
        " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, coalesce(?8, " S_NOW "), ?9, ?10)"
        " ON CONFLICT (system_id, project_name) DO UPDATE SET project_path = ?4,"
        " repo_url = ?5, repo_branch = ?6, status = ?7,"
        " last_verified = coalesce(?8, " S_NOW "), last_pulled = coalesce(?9, last_pulled),"
        " metadata = ?10, updated_at = " S_NOW);
    int rc = SQLITE_ERROR;
    if (stmt) {
        sqlite3_bind_text (stmt, 1, fresh, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 2, system_id, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 3, name, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 4, path, -1, SQLITE_STATIC);
        store_db_bind_text (stmt, 5, repo_url);
        store_db_bind_text (stmt, 6, branch);
        sqlite3_bind_text (stmt, 7, status, -1, SQLITE_STATIC);
        store_db_bind_text (stmt, 8, verified);
        store_db_bind_text (stmt, 9, pulled);
        sqlite3_bind_text (stmt, 10, meta_text, -1, SQLITE_STATIC);
        rc = sqlite3_step (stmt);
        sqlite3_finalize (stmt);
    }
    free (meta_text);
    if (rc != SQLITE_DONE) {
        if ((sqlite3_extended_errcode (self->db) & 0xff) == SQLITE_CONSTRAINT)
            return ccm_fail (err, "not_found", "system_id", "system_id: no system '%s'", system_id);
        return store_db_fail (self, err, "context.upsert");
    }
    stmt = store_db_prepare (
        self->db, "SELECT json_object('id', id, 'system_id', system_id, 'project_name',"
                  " project_name, 'project_path', project_path, 'repo_branch', repo_branch,"
                  " 'status', status, 'last_verified', last_verified) FROM contexts"
                  " WHERE system_id = ? AND project_name = ?");
    if (stmt) {
        sqlite3_bind_text (stmt, 1, system_id, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 2, name, -1, SQLITE_STATIC);
    }
    return store_db_row_json (self, stmt, reply, "context", err);
}

int
store_task_claim (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *system_id = NULL;
    cJSON *projects = NULL;
    int64_t limit = 1;
    if (ccm_get_string (body, "system_id", true, 64, &system_id, err)
        || ccm_get_array (body, "projects", true, 0, 1024, &projects, err)
        || ccm_get_int (body, "limit", false, 0, 256, &limit, err))
        return -1;
    cJSON *item;
    cJSON_ArrayForEach (item, projects) if (!cJSON_IsString (item)) return ccm_fail (
        err, "bad_field", "projects", "projects: must hold strings");
    char *names = cJSON_PrintUnformatted (projects);
    //  Priority first (urgent > high > normal > low), then oldest first.
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "SELECT t.id FROM tasks t LEFT JOIN projects p ON p.id = t.project_id"
                  " WHERE t.status = 'queued' AND (t.system_id IS NULL OR t.system_id = ?1)"
                  " AND coalesce(t.requires_project, p.name) IN (SELECT value FROM json_each(?2))"
                  " AND NOT EXISTS (SELECT 1 FROM task_dependencies d JOIN tasks u"
                  " ON u.id = d.depends_on WHERE d.task_id = t.id AND u.status != 'complete')"
                  " ORDER BY CASE t.priority WHEN 'urgent' THEN 0 WHEN 'high' THEN 1"
                  " WHEN 'normal' THEN 2 ELSE 3 END, t.created_at, t.rowid LIMIT ?3");
    cJSON *claimed = cJSON_AddArrayToObject (reply, "tasks");
    int rc = stmt && names ? 0 : store_db_fail (self, err, "task.claim");
    if (rc == 0) {
        sqlite3_bind_text (stmt, 1, system_id, -1, SQLITE_STATIC);
        sqlite3_bind_text (stmt, 2, names, -1, SQLITE_STATIC);
        sqlite3_bind_int64 (stmt, 3, limit);
        cJSON *ids = cJSON_CreateArray ();
        while (sqlite3_step (stmt) == SQLITE_ROW)
            cJSON_AddItemToArray (
                ids, cJSON_CreateString ((const char *) sqlite3_column_text (stmt, 0)));
        cJSON_ArrayForEach (item, ids)
        {
            cJSON *one = cJSON_CreateObject ();
            rc = store_task_move (self, item->valuestring, "assigned", "claimed by executor", NULL,
                                  system_id, one, err);
            if (rc == 0)
                cJSON_AddItemToArray (claimed, cJSON_DetachItemFromObject (one, "task"));
            cJSON_Delete (one);
            if (rc)
                break;
        }
        cJSON_Delete (ids);
    }
    sqlite3_finalize (stmt);
    free (names);
    return rc;
}

int
store_agent_upsert (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *id = NULL, *system_id = NULL, *project_id = NULL, *task_id = NULL;
    const char *profile = NULL, *window = NULL, *status = NULL, *source = NULL;
    if (ccm_get_string (body, "agent_id", true, 64, &id, err)
        || ccm_get_string (body, "system_id", false, 64, &system_id, err)
        || ccm_get_string (body, "project_id", false, 64, &project_id, err)
        || ccm_get_string (body, "task_id", false, 64, &task_id, err)
        || ccm_get_string (body, "profile", false, 64, &profile, err)
        || ccm_get_string (body, "tmux_window", false, 255, &window, err)
        || ccm_get_enum (body, "status", true, s_agent_statuses, &status, err)
        || ccm_get_string (body, "state_source", false, 64, &source, err))
        return -1;
    sqlite3_stmt *stmt = store_db_prepare (
        self->db,
        "INSERT INTO agents (id, system_id, project_id, task_id, profile, tmux_window, status,"
        " state_source, last_active) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, " S_NOW ")"
        " ON CONFLICT (id) DO UPDATE SET status = ?7, state_source = ?8,"
        " tmux_window = coalesce(?6, tmux_window), last_active = " S_NOW);
    int rc = SQLITE_ERROR;
    if (stmt) {
        const char *values[] = {id,      system_id, project_id, task_id,
                                profile, window,    status,     source};
        for (int i = 0; i < 8; i++)
            store_db_bind_text (stmt, i + 1, values[i]);
        rc = sqlite3_step (stmt);
        sqlite3_finalize (stmt);
    }
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "agent.upsert");
    stmt = store_db_prepare (self->db,
                             "SELECT json_object('id', id, 'task_id', task_id, 'status', status,"
                             " 'state_source', state_source, 'tmux_window', tmux_window,"
                             " 'spawned_at', spawned_at, 'last_active', last_active)"
                             " FROM agents WHERE id = ?");
    if (stmt)
        sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    return store_db_row_json (self, stmt, reply, "agent", err);
}

#define S_WORKTREE_JSON                                                                            \
    "json_object('task_id', w.task_id, 'short_id', substr(w.task_id, 1, 8), 'project_id',"         \
    " w.project_id, 'project', p.name, 'worktree_path', w.worktree_path, 'branch_name',"           \
    " w.branch_name, 'base_branch', w.base_branch, 'status', w.status, 'created_at',"              \
    " w.created_at, 'removed_at', w.removed_at, 'task_status', t.status, 'system_id', "            \
    "w.system_id)"                                                                                 \
    " FROM task_worktrees w LEFT JOIN projects p ON p.id = w.project_id"                           \
    " LEFT JOIN tasks t ON t.id = w.task_id"

int
store_worktree_upsert (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *task_id = NULL, *project_id = NULL, *path = NULL, *branch = NULL;
    const char *base = NULL, *status = NULL, *system_id = NULL;
    bool removed = false;
    if (ccm_get_string (body, "task_id", true, 64, &task_id, err)
        || ccm_get_string (body, "system_id", false, 64, &system_id, err)
        || ccm_get_string (body, "project_id", false, 64, &project_id, err)
        || ccm_get_string (body, "worktree_path", true, 4096, &path, err)
        || ccm_get_string (body, "branch_name", true, 255, &branch, err)
        || ccm_get_string (body, "base_branch", false, 255, &base, err)
        || ccm_get_enum (body, "status", true, s_worktree_statuses, &status, err)
        || ccm_get_bool (body, "removed", false, &removed, err))
        return -1;
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "INSERT INTO task_worktrees (task_id, project_id, worktree_path, branch_name,"
                  " base_branch, status, removed_at, system_id) VALUES (?1, ?2, ?3, ?4, ?5, ?6,"
                  " CASE WHEN ?7 THEN " S_NOW " END, ?8)"
                  " ON CONFLICT (task_id) DO UPDATE SET status = ?6,"
                  " removed_at = CASE WHEN ?7 THEN " S_NOW " ELSE removed_at END,"
                  " system_id = coalesce(?8, system_id)");
    int rc = SQLITE_ERROR;
    if (stmt) {
        const char *values[] = {task_id, project_id, path, branch, base, status};
        for (int i = 0; i < 6; i++)
            store_db_bind_text (stmt, i + 1, values[i]);
        sqlite3_bind_int (stmt, 7, removed);
        store_db_bind_text (stmt, 8, system_id);
        rc = sqlite3_step (stmt);
        sqlite3_finalize (stmt);
    }
    if (rc != SQLITE_DONE) {
        if ((sqlite3_extended_errcode (self->db) & 0xff) == SQLITE_CONSTRAINT)
            return system_id
                       ? ccm_fail (err, "not_found", "task_id",
                                   "task_id, system_id: no task '%s' or no system '%s'", task_id,
                                   system_id)
                       : ccm_fail (err, "not_found", "task_id", "task_id: no task '%s'", task_id);
        return store_db_fail (self, err, "worktree.upsert");
    }
    stmt = store_db_prepare (self->db, "SELECT " S_WORKTREE_JSON " WHERE w.task_id = ?");
    if (stmt)
        sqlite3_bind_text (stmt, 1, task_id, -1, SQLITE_STATIC);
    return store_db_row_json (self, stmt, reply, "worktree", err);
}

int
store_worktree_list (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *status = NULL, *task = NULL;
    if (ccm_get_enum (body, "status", false, s_worktree_statuses, &status, err)
        || ccm_get_string (body, "task", false, 64, &task, err))
        return -1;
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "SELECT " S_WORKTREE_JSON " WHERE (?1 IS NULL OR w.status = ?1)"
                  " AND (?2 IS NULL OR (w.task_id >= ?2 AND w.task_id < ?2 || 'g'))"
                  " ORDER BY w.created_at");
    if (!stmt)
        return store_db_fail (self, err, "worktree.list");
    store_db_bind_text (stmt, 1, status);
    store_db_bind_text (stmt, 2, task);
    int rows = store_db_collect_json (stmt, cJSON_AddArrayToObject (reply, "worktrees"));
    sqlite3_finalize (stmt);
    return rows < 0 ? store_db_fail (self, err, "worktree.list") : 0;
}

int
store_system_list (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    (void) body, (void) err;
    //  running: the tasks an executor holds now (assigned or executing).
    sqlite3_stmt *stmt = store_db_prepare (
        self->db,
        "SELECT json_object('id', s.id, 'hostname', s.hostname, 'machine_id', s.machine_id,"
        " 'system_type', s.system_type, 'tags', json(s.tags), 'status', s.status,"
        " 'capacity', s.capacity, 'last_seen', s.last_seen, 'created_at', s.created_at,"
        " 'public_key', s.public_key,"
        " 'running', (SELECT count(*) FROM tasks t WHERE t.locked_by = s.id"
        " AND t.status IN ('assigned', 'executing')),"
        " 'contexts', (SELECT count(*) FROM contexts c WHERE c.system_id = s.id),"
        " 'agents', (SELECT count(*) FROM agents a WHERE a.system_id = s.id"
        " AND a.status IN ('running', 'waiting', 'idle')))"
        " FROM systems s ORDER BY s.hostname");
    if (!stmt)
        return store_db_fail (self, err, "system.list");
    int rows = store_db_collect_json (stmt, cJSON_AddArrayToObject (reply, "systems"));
    sqlite3_finalize (stmt);
    return rows < 0 ? store_db_fail (self, err, "system.list") : 0;
}

int
store_context_list (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    const char *system_id = NULL, *project = NULL;
    if (ccm_get_string (body, "system_id", false, 128, &system_id, err)
        || ccm_get_string (body, "project", false, 128, &project, err))
        return -1;
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "SELECT json_object('id', c.id, 'system_id', c.system_id, 'hostname', s.hostname,"
                  " 'project_name', c.project_name, 'project_path', c.project_path,"
                  " 'repo_url', c.repo_url, 'repo_branch', c.repo_branch, 'status', c.status,"
                  " 'last_verified', c.last_verified, 'last_pulled', c.last_pulled,"
                  " 'metadata', json(c.metadata), 'updated_at', c.updated_at)"
                  " FROM contexts c JOIN systems s ON s.id = c.system_id"
                  " WHERE (?1 IS NULL OR c.system_id = ?1) AND (?2 IS NULL OR c.project_name = ?2)"
                  " ORDER BY c.project_name, s.hostname");
    if (!stmt)
        return store_db_fail (self, err, "context.list");
    store_db_bind_text (stmt, 1, system_id);
    store_db_bind_text (stmt, 2, project);
    int rows = store_db_collect_json (stmt, cJSON_AddArrayToObject (reply, "contexts"));
    sqlite3_finalize (stmt);
    return rows < 0 ? store_db_fail (self, err, "context.list") : 0;
}

int
store_system_status (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    static const char *const statuses[] = {"online", "offline", NULL};
    const char *id = NULL, *status = NULL, *reason = NULL;
    if (ccm_get_string (body, "system_id", true, 64, &id, err)
        || ccm_get_enum (body, "status", true, statuses, &status, err)
        || ccm_get_string (body, "reason", false, 512, &reason, err)
        || store_check_peer (self, id, err))
        return -1;
    //  Online refreshes last_seen (a heartbeat); offline keeps the last one.
    sqlite3_stmt *stmt = store_db_prepare (
        self->db, "UPDATE systems SET status = ?2, last_seen = CASE WHEN ?2 = 'online' THEN " S_NOW
                  " ELSE last_seen END WHERE id = ?1");
    if (!stmt)
        return store_db_fail (self, err, "system.status");
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    sqlite3_bind_text (stmt, 2, status, -1, SQLITE_STATIC);
    int rc = sqlite3_step (stmt);
    sqlite3_finalize (stmt);
    if (rc != SQLITE_DONE)
        return store_db_fail (self, err, "system.status");
    if (sqlite3_changes (self->db) == 0)
        return ccm_fail (err, "not_found", "system_id", "system_id: no system '%s'", id);

    //  The tasks a lost executor held go back to the queue for another
    //  (their next assignment counts an attempt), or fail once out of them.
    cJSON *requeued = cJSON_AddArrayToObject (reply, "requeued");
    cJSON *failed = cJSON_AddArrayToObject (reply, "failed");
    if (strcmp (status, "offline") != 0)
        return 0;
    stmt =
        store_db_prepare (self->db, "SELECT id, attempts FROM tasks WHERE locked_by = ?"
                                    " AND status IN ('assigned', 'executing') ORDER BY created_at");
    if (!stmt)
        return store_db_fail (self, err, "system.status");
    sqlite3_bind_text (stmt, 1, id, -1, SQLITE_STATIC);
    cJSON *held = cJSON_CreateArray ();
    while (sqlite3_step (stmt) == SQLITE_ROW) {
        cJSON *task = cJSON_CreateObject ();
        cJSON_AddStringToObject (task, "id", (const char *) sqlite3_column_text (stmt, 0));
        cJSON_AddNumberToObject (task, "attempts", sqlite3_column_int (stmt, 1));
        cJSON_AddItemToArray (held, task);
    }
    sqlite3_finalize (stmt);
    char why[600];
    snprintf (why, sizeof why, "its executor went offline%s%s", reason ? ": " : "",
              reason ? reason : "");
    rc = 0;
    cJSON *task;
    cJSON_ArrayForEach (task, held)
    {
        const char *task_id = cJSON_GetStringValue (cJSON_GetObjectItem (task, "id"));
        bool spent =
            cJSON_GetNumberValue (cJSON_GetObjectItem (task, "attempts")) >= self->max_attempts;
        rc = store_task_move (self, task_id, spent ? "failed" : "queued", why, NULL, NULL, NULL,
                              err);
        if (rc)
            break;
        cJSON_AddItemToArray (spent ? failed : requeued, cJSON_CreateString (task_id));
    }
    cJSON_Delete (held);
    return rc;
}

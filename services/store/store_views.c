/*  store_views: read verbs for the gateway's snapshots that no other
    module owns: agent.list (the agents, their state and its source).     */

#include "store_internal.h"

int
store_agent_list (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    static const char *const statuses[] = {"idle", "running", "crashed", "exited", "waiting", NULL};
    const char *task = NULL, *status = NULL, *agent = NULL;
    int64_t limit = 1000;
    if (ccm_get_string (body, "task", false, 64, &task, err)
        || ccm_get_enum (body, "status", false, statuses, &status, err)
        || ccm_get_string (body, "agent", false, 64, &agent, err)
        || ccm_get_int (body, "limit", false, 1, 10000, &limit, err))
        return -1;
    //  A task is named by its id or a prefix of it, as everywhere.
    sqlite3_stmt *stmt = store_db_prepare (
        self->db,
        "SELECT json_object('id', id, 'task_id', task_id, 'system_id', system_id, 'project_id',"
        " project_id, 'profile', profile, 'tmux_window', tmux_window, 'status', status,"
        " 'state_source', state_source, 'spawned_at', spawned_at, 'last_active', last_active)"
        " FROM agents WHERE (?1 IS NULL OR (task_id >= ?1 AND task_id < ?1 || 'g'))"
        " AND (?2 IS NULL OR status = ?2) AND (?3 IS NULL OR id = ?3)"
        " ORDER BY coalesce(last_active, spawned_at) DESC LIMIT ?4");
    if (!stmt)
        return store_db_fail (self, err, "agent.list");
    store_db_bind_text (stmt, 1, task);
    store_db_bind_text (stmt, 2, status);
    store_db_bind_text (stmt, 3, agent);
    sqlite3_bind_int64 (stmt, 4, limit);
    int rows = store_db_collect_json (stmt, cJSON_AddArrayToObject (reply, "agents"));
    sqlite3_finalize (stmt);
    return rows < 0 ? store_db_fail (self, err, "agent.list") : 0;
}

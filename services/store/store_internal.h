/*  store_internal: what the store's modules share. Not for other services. */

#ifndef STORE_INTERNAL_H_INCLUDED
#define STORE_INTERNAL_H_INCLUDED

#include "ccm_config.h"
#include "ccm_id.h"
#include "ccm_msg.h"
#include "store.h"

#include <czmq.h>
#include <sqlite3.h>
#include <stdbool.h>

//  One embedded migration (generated from schema/migrations by CMake).
typedef struct {
    const char *name;
    const char *sql;
} store_migration_t;

extern const store_migration_t store_migrations[];

//  A request handler: reads body, adds its result to reply, or fills err and
//  returns -1. Write handlers run inside the batch's transaction.
typedef int (store_handler_fn) (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err);

struct _store_t {
    ccm_config_t *config;  //  borrowed
    sqlite3 *db;
    zsock_t *router;
    zsock_t *pub;
    int lock_fd;            //  flock on run/store.lock: one store per home
    int64_t published_seq;  //  newest seq sent on the PUB socket
    int max_attempts;
    int64_t retry_base_ms;  //  first backoff of a failed task (router.retry_base_ms)
    size_t max_body;
    int batch_max;
    int64_t batch_rows;  //  most hook rows in one group commit
    int64_t txn_rows;    //  hook rows in the open transaction so far
    bool poisoned;       //  a write failed without a SAVEPOINT: roll the batch back
    //  Statements prepared once, used on every request.
    sqlite3_stmt *begin, *commit, *rollback;
    sqlite3_stmt *savepoint, *release, *rollback_to;
    sqlite3_stmt *idem_get, *idem_put;
    sqlite3_stmt *hook_insert, *hook_event;
    sqlite3_stmt *events_after;
    //  The CurveZMQ public key of the peer whose request runs now (its
    //  frames' User-Id, over tcp://), "" over ipc://.
    char peer_key[41];
    //  Counters, logged at shutdown.
    uint64_t requests, errors, commits, dropped;
};

//  store_db: opening, pragmas, migrations, statements.

//  Opens path (created with mode 0600), sets WAL and the pragmas, and applies
//  pending migrations. Returns the handle or NULL with *error set.
sqlite3 *store_db_open (const char *path, const char *synchronous, char **error);

//  Prepares sql on db; logs and returns NULL on failure.
sqlite3_stmt *store_db_prepare (sqlite3 *db, const char *sql);

//  Steps a statement that returns no rows and resets it; returns the SQLite code.
int store_db_run (sqlite3_stmt *stmt);

//  Binds text, or NULL when text is NULL.
void store_db_bind_text (sqlite3_stmt *stmt, int index, const char *text);

//  Maps a failed SQLite call to a protocol error (conflict, bad_field, internal).
int store_db_fail (store_t *self, ccm_error_t *err, const char *what);

//  Writes the current UTC time as protocol.md's times, e.g. 2026-11-23T10:15:02.123Z.
void store_db_now (char now[32]);

//  The newest committed seq, 0 for an empty log.
int64_t store_db_last_seq (sqlite3 *db);

//  One task as protocol.md's TASK object, from tasks t LEFT JOIN projects p.
//  ccm_max_attempts() is the store's store.max_attempts (a function of the
//  store's own connection, see store_new).
#define STORE_TASK_JSON                                                                            \
    "json_object('id', t.id, 'short_id', substr(t.id, 1, 8), 'project_id', t.project_id,"          \
    " 'project', p.name, 'system_id', t.system_id, 'parent_task_id', t.parent_task_id,"            \
    " 'task_type', t.task_type, 'status', t.status, 'status_reason', t.status_reason,"             \
    " 'prompt', t.prompt, 'priority', t.priority, 'attempts', t.attempts,"                         \
    " 'max_attempts', ccm_max_attempts(), 'retry_at', t.retry_at,"                                 \
    " 'requires_project', t.requires_project,"                                                     \
    " 'requires_context_metadata', json(t.requires_context_metadata),"                             \
    " 'metadata', json(t.metadata), 'input_data', json(t.input_data),"                             \
    " 'requires_supabase', json(CASE t.requires_supabase WHEN 1 THEN 'true' ELSE 'false' END),"    \
    " 'locked_at', t.locked_at, 'locked_by', t.locked_by,"                                         \
    " 'created_at', t.created_at, 'updated_at', t.updated_at, 'started_at', t.started_at,"         \
    " 'completed_at', t.completed_at, 'agent_profile', t.agent_profile, 'timeout_s', t.timeout_s," \
    " 'depends_on', (SELECT json_group_array(depends_on) FROM task_dependencies"                   \
    " WHERE task_id = t.id),"                                                                      \
    " 'review_system_id', CASE t.task_type WHEN 'supervisory' THEN (SELECT w.system_id"            \
    " FROM task_worktrees w WHERE w.task_id = t.parent_task_id) END)"                              \
    " FROM tasks t LEFT JOIN projects p ON p.id = t.project_id"

//  Moves task id to status to (the state machine decides), records a
//  task_events row, optionally a task_results row (result, borrowed) and the
//  lock holder (locked_by, for "assigned"), and adds the TASK to reply if not NULL.
int store_task_move (store_t *self, const char *id, const char *to, const char *reason,
                     cJSON *result, const char *locked_by, cJSON *reply, ccm_error_t *err);

//  Finds a task by full id or unique prefix of at least 4 hex characters;
//  writes the full id into out. Errors name field.
int store_task_resolve (store_t *self, const char *field, const char *ref,
                        char out[CCM_UUID_LEN + 1], ccm_error_t *err);

//  Refuses (forbidden) a request over tcp:// about system_id from a peer
//  whose key is not the one that system registered with. Returns 0 or -1.
int store_check_peer (store_t *self, const char *system_id, ccm_error_t *err);

//  Handlers, by module.
store_handler_fn store_ping, store_stats;
store_handler_fn store_project_add, store_project_list;
store_handler_fn store_task_add, store_task_get, store_task_list, store_task_transition,
    store_task_cancel, store_task_result, store_task_progress, store_task_depend, store_task_reason;
store_handler_fn store_hook_add, store_hook_list;
store_handler_fn store_automation_add;
store_handler_fn store_events_since;
store_handler_fn store_system_list, store_context_list, store_system_status;
store_handler_fn store_system_register, store_context_upsert, store_task_claim, store_agent_upsert,
    store_worktree_upsert, store_worktree_list;
store_handler_fn store_sync_state, store_sync_set_state, store_report_add, store_report_list;
store_handler_fn store_agent_list;
store_handler_fn store_permission_request, store_permission_answer, store_permission_close,
    store_permission_list;
store_handler_fn store_sync_pending, store_sync_mark, store_sync_apply, store_sync_watch,
    store_sync_meta, store_sync_meta_set, store_sync_status;  //  store_sync.c

//  Publishes every event committed since the last call on the PUB socket.
void store_events_publish (store_t *self);

//  Steps stmt (finalized here; NULL counts as a failed prepare), a query of
//  one JSON row, and adds that row under key. Returns 0, or -1 with err:
//  not_found (no row) or the database's error.
int store_db_row_json (store_t *self, sqlite3_stmt *stmt, cJSON *reply, const char *key,
                       ccm_error_t *err);

//  Adds the JSON text of each row of stmt's first column to array as raw items;
//  returns the number of rows, or -1 on a database error.
int store_db_collect_json (sqlite3_stmt *stmt, cJSON *array);

#endif

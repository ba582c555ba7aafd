/*  store_db: the SQLite file, its pragmas and its migrations.              */

#include "store_internal.h"

#include "ccm_log.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static char *
s_error (sqlite3 *db, const char *what)
{
    char *text = NULL;
    if (asprintf (&text, "%s: %s", what, db ? sqlite3_errmsg (db) : "out of memory") < 0)
        text = NULL;
    return text;
}

//  Counts the rows of PRAGMA foreign_key_check (sqlite3_exec callback).
static int
s_count_row (void *arg, int columns, char **values, char **names)
{
    (void) columns, (void) values, (void) names;
    (*(int *) arg)++;
    return 0;
}

//  Applies every embedded migration not yet in schema_migrations, each in
//  its own transaction, in name order. Foreign keys are off meanwhile, as
//  SQLite's ALTER TABLE guide asks, so a migration may rebuild a table that
//  others refer to; each one must leave none broken, or it is rolled back.
static int
s_migrate (sqlite3 *db, char **error)
{
    if (sqlite3_exec (db,
                      "PRAGMA foreign_keys = OFF;"
                      "CREATE TABLE IF NOT EXISTS schema_migrations ("
                      " name TEXT PRIMARY KEY,"
                      " applied_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ','now')))",
                      NULL, NULL, NULL)
        != SQLITE_OK) {
        *error = s_error (db, "schema_migrations");
        return -1;
    }
    sqlite3_stmt *seen = NULL;
    sqlite3_prepare_v2 (db, "SELECT 1 FROM schema_migrations WHERE name = ?", -1, &seen, NULL);
    for (const store_migration_t *m = store_migrations; m->name; m++) {
        sqlite3_reset (seen);
        sqlite3_bind_text (seen, 1, m->name, -1, SQLITE_STATIC);
        if (sqlite3_step (seen) == SQLITE_ROW)
            continue;
        char *sql = NULL;
        if (asprintf (&sql, "BEGIN IMMEDIATE;\n%s\n;", m->sql) < 0) {
            *error = strdup ("out of memory");
            break;
        }
        char *message = NULL;
        int broken = 0;
        int rc = sqlite3_exec (db, sql, NULL, NULL, &message);
        free (sql);
        if (rc == SQLITE_OK)
            rc = sqlite3_exec (db, "PRAGMA foreign_key_check", s_count_row, &broken, &message);
        if (rc == SQLITE_OK && broken) {
            message = sqlite3_mprintf ("%d foreign key(s) left broken", broken);
            rc = SQLITE_CONSTRAINT;
        }
        if (rc == SQLITE_OK) {
            sql = sqlite3_mprintf ("INSERT INTO schema_migrations (name) VALUES (%Q); COMMIT;",
                                   m->name);
            rc = sql ? sqlite3_exec (db, sql, NULL, NULL, &message) : SQLITE_NOMEM;
            sqlite3_free (sql);
        }
        if (rc != SQLITE_OK) {
            if (asprintf (error, "migration %s: %s", m->name, message ? message : "failed") < 0)
                *error = strdup ("migration failed");
            sqlite3_free (message);
            sqlite3_exec (db, "ROLLBACK", NULL, NULL, NULL);
            break;
        }
        ccm_info ("applied migration %s", m->name);
    }
    sqlite3_finalize (seen);
    if (!*error && sqlite3_exec (db, "PRAGMA foreign_keys = ON", NULL, NULL, NULL) != SQLITE_OK)
        *error = s_error (db, "foreign_keys");
    return *error ? -1 : 0;
}

sqlite3 *
store_db_open (const char *path, const char *synchronous, char **error)
{
    *error = NULL;
    if (strcmp (synchronous, "full") && strcmp (synchronous, "normal")) {
        if (asprintf (error, "store.synchronous: must be full or normal, got '%s'", synchronous)
            < 0)
            *error = NULL;
        return NULL;
    }
    //  Create the file ourselves so it is 0600 from its first byte; SQLite
    //  gives the -wal and -shm files the same mode.
    int fd = open (path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        if (asprintf (error, "%s: %s", path, strerror (errno)) < 0)
            *error = NULL;
        return NULL;
    }
    fchmod (fd, 0600);
    close (fd);

    sqlite3 *db = NULL;
    if (sqlite3_open_v2 (path, &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX, NULL)
        != SQLITE_OK) {
        *error = s_error (db, path);
        sqlite3_close (db);
        return NULL;
    }
    char pragmas[512];
    snprintf (pragmas, sizeof pragmas,
              "PRAGMA journal_mode = WAL;"
              "PRAGMA synchronous = %s;"
              "PRAGMA foreign_keys = ON;"
              "PRAGMA busy_timeout = 5000;"
              "PRAGMA temp_store = MEMORY;"
              "PRAGMA cache_size = -65536;",
              synchronous);
    if (sqlite3_exec (db, pragmas, NULL, NULL, NULL) != SQLITE_OK) {
        *error = s_error (db, "pragmas");
        sqlite3_close (db);
        return NULL;
    }
    if (s_migrate (db, error)) {
        sqlite3_close (db);
        return NULL;
    }
    return db;
}

sqlite3_stmt *
store_db_prepare (sqlite3 *db, const char *sql)
{
    sqlite3_stmt *stmt = NULL;
    if (sqlite3_prepare_v3 (db, sql, -1, SQLITE_PREPARE_PERSISTENT, &stmt, NULL) != SQLITE_OK) {
        ccm_error ("prepare failed: %s: %s", sqlite3_errmsg (db), sql);
        return NULL;
    }
    return stmt;
}

int
store_db_run (sqlite3_stmt *stmt)
{
    int rc = sqlite3_step (stmt);
    sqlite3_reset (stmt);
    sqlite3_clear_bindings (stmt);
    return rc == SQLITE_ROW ? SQLITE_DONE : rc;
}

void
store_db_bind_text (sqlite3_stmt *stmt, int index, const char *text)
{
    if (text)
        sqlite3_bind_text (stmt, index, text, -1, SQLITE_TRANSIENT);
    else
        sqlite3_bind_null (stmt, index);
}

int
store_db_fail (store_t *self, ccm_error_t *err, const char *what)
{
    int code = sqlite3_extended_errcode (self->db);
    const char *message = sqlite3_errmsg (self->db);
    if (code == SQLITE_CONSTRAINT_UNIQUE || code == SQLITE_CONSTRAINT_PRIMARYKEY)
        return ccm_fail (err, "conflict", "", "%s: already exists (%s)", what, message);
    if ((code & 0xff) == SQLITE_CONSTRAINT)
        return ccm_fail (err, "bad_field", "", "%s: %s", what, message);
    ccm_error ("%s: sqlite error %d: %s", what, code, message);
    return ccm_fail (err, "internal", "", "%s: database error: %s", what, message);
}

void
store_db_now (char now[32])
{
    struct timespec ts;
    clock_gettime (CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r (&ts.tv_sec, &tm);
    size_t len = strftime (now, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf (now + len, 32 - len, ".%03dZ", (int) (ts.tv_nsec / 1000000) % 1000);
}

int64_t
store_db_last_seq (sqlite3 *db)
{
    sqlite3_stmt *stmt = NULL;
    int64_t seq = 0;
    if (sqlite3_prepare_v2 (db, "SELECT coalesce(max(seq), 0) FROM events", -1, &stmt, NULL)
            == SQLITE_OK
        && sqlite3_step (stmt) == SQLITE_ROW)
        seq = sqlite3_column_int64 (stmt, 0);
    sqlite3_finalize (stmt);
    return seq;
}

int
store_db_collect_json (sqlite3_stmt *stmt, cJSON *array)
{
    int rows = 0;
    int rc;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW) {
        cJSON *raw = cJSON_CreateRaw ((const char *) sqlite3_column_text (stmt, 0));
        if (!raw)
            break;
        cJSON_AddItemToArray (array, raw);
        rows++;
    }
    return rc == SQLITE_DONE ? rows : -1;
}

int
store_db_row_json (store_t *self, sqlite3_stmt *stmt, cJSON *reply, const char *key,
                   ccm_error_t *err)
{
    int rc = stmt ? sqlite3_step (stmt) : SQLITE_ERROR;
    if (rc == SQLITE_ROW)
        cJSON_AddItemToObject (reply, key,
                               cJSON_CreateRaw ((const char *) sqlite3_column_text (stmt, 0)));
    sqlite3_finalize (stmt);
    if (rc == SQLITE_ROW)
        return 0;
    if (rc == SQLITE_DONE)
        return ccm_fail (err, "not_found", key, "%s: not found", key);
    return store_db_fail (self, err, key);
}

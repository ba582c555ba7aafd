/*  store_events: the event log's two readers, replay and publish.

    Triggers in schema/migrations append an events row for every change, in
    the transaction that makes it. After COMMIT the store publishes each new
    row as [topic][seq][json]; events.since replays any range, so a
    subscriber that missed a PUB catches up (zguide's Clone pattern).       */

#include "store_internal.h"

#include "ccm_log.h"

#define S_EVENT_JSON                                                                               \
    "json_object('v', 1, 'seq', seq, 'topic', topic, 'ts', ts, 'entity', entity,"                  \
    " 'entity_id', entity_id, 'task_id', task_id, 'data', json(data))"

int
store_events_since (store_t *self, cJSON *body, cJSON *reply, ccm_error_t *err)
{
    int64_t seq = 0, limit = 1000;
    const char *task = NULL, *topic = NULL;
    if (ccm_get_int (body, "seq", true, 0, INT64_C (1) << 53, &seq, err)
        || ccm_get_int (body, "limit", false, 1, 10000, &limit, err)
        || ccm_get_string (body, "task", false, 64, &task, err)
        || ccm_get_string (body, "topic", false, 128, &topic, err))
        return -1;
    //  A task filter takes a full id or a unique prefix, like everywhere else.
    sqlite3_stmt *stmt = store_db_prepare (
        self->db,
        "SELECT " S_EVENT_JSON " FROM events"
        " WHERE seq > ?1"
        " AND (?2 IS NULL OR task_id = (SELECT id FROM tasks WHERE id >= ?2 AND id < ?2 || 'g'"
        "      ORDER BY id LIMIT 1) OR task_id = ?2)"
        " AND (?3 IS NULL OR substr(topic, 1, length(?3)) = ?3)"
        " ORDER BY seq LIMIT ?4");
    if (!stmt)
        return store_db_fail (self, err, "events.since");
    sqlite3_bind_int64 (stmt, 1, seq);
    store_db_bind_text (stmt, 2, task);
    store_db_bind_text (stmt, 3, topic);
    sqlite3_bind_int64 (stmt, 4, limit + 1);
    cJSON *events = cJSON_AddArrayToObject (reply, "events");
    int rows = store_db_collect_json (stmt, events);
    sqlite3_finalize (stmt);
    if (rows < 0)
        return store_db_fail (self, err, "events.since");
    //  One row past the limit was asked for only to learn whether there is more.
    bool more = rows > limit;
    if (more)
        cJSON_DeleteItemFromArray (events, rows - 1);
    cJSON_AddNumberToObject (reply, "last_seq", (double) store_db_last_seq (self->db));
    cJSON_AddBoolToObject (reply, "more", more);
    return 0;
}

void
store_events_publish (store_t *self)
{
    sqlite3_stmt *stmt = self->events_after;
    sqlite3_bind_int64 (stmt, 1, self->published_seq);
    void *pub = zsock_resolve (self->pub);
    int rc;
    while ((rc = sqlite3_step (stmt)) == SQLITE_ROW) {
        int64_t seq = sqlite3_column_int64 (stmt, 0);
        const char *topic = (const char *) sqlite3_column_text (stmt, 1);
        const char *json = (const char *) sqlite3_column_text (stmt, 2);
        char seq_text[24];
        int seq_len = snprintf (seq_text, sizeof seq_text, "%lld", (long long) seq);
        //  PUB never blocks: at the high-water mark it drops, and subscribers replay.
        zmq_send (pub, topic, strlen (topic), ZMQ_SNDMORE);
        zmq_send (pub, seq_text, (size_t) seq_len, ZMQ_SNDMORE);
        zmq_send (pub, json, strlen (json), 0);
        self->published_seq = seq;
    }
    if (rc != SQLITE_DONE)
        ccm_error ("publish: %s", sqlite3_errmsg (self->db));
    sqlite3_reset (stmt);
}

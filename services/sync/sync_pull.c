/*  sync_pull: one pull pass, one GET at a time, each page applied by the
    store (sync.apply) before the next is asked for.

    1. systems     the user's other systems (so a task can name one)
    2. tasks       those whose system_id is this system: made elsewhere,
                   they enter the local queue and run through the router
    3. watched     tasks made here for other systems (sync.watch): their
                   status comes back ...
    4. results     ... and their task_results
    5. skills      pulled only; each new or changed one is written to
                   <sync.skills_dir>/<name>/SKILL.md for agents started
                   from now on (write to a temporary file, then rename:
                   an agent reading it sees the old file or the new one)

    Steps 1, 2 and 5 read with a keyset cursor on (updated_at, id), kept in
    sync_meta, using only eq and gt filters:
        updated_at=eq.C&id=gt.I&order=id.asc            the rest of C's ties
        updated_at=gt.C&order=updated_at.asc,id.asc     then what follows
    and move it only after the store applied the page.                    */

#include "sync_internal.h"

#include "ccm_log.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#define S_PAGE 500

enum { S_SYSTEMS, S_TASKS, S_WATCHED, S_RESULTS, S_SKILLS, S_STEPS };

static const char *const s_step_table[] = {"systems", "tasks", "tasks", "task_results", "skills"};

struct _sync_pull_t {
    sync_t *owner;
    int step;
    int sub;  //  keyset: 0 the ties of the cursor's time, 1 what follows it
    char *cur_upd, *cur_id;
    char *watch;      //  "id1,id2,...": the watched tasks, for in.(...)
    bool watch_read;  //  sync.watch was answered in this pass
    cJSON *rows;      //  the page the store is applying
};

void
sync_pull_destroy (sync_pull_t **pull_p)
{
    if (pull_p && *pull_p) {
        sync_pull_t *pull = *pull_p;
        free (pull->cur_upd);
        free (pull->cur_id);
        free (pull->watch);
        cJSON_Delete (pull->rows);
        free (pull);
        *pull_p = NULL;
    }
}

static bool
s_keyset (int step)
{
    return step == S_SYSTEMS || step == S_TASKS || step == S_SKILLS;
}

//  Loads the step's cursor from sync_meta ("cursor.<table>" = "UPD\tID").
static void
s_load_cursor (sync_pull_t *pull)
{
    free (pull->cur_upd);
    free (pull->cur_id);
    pull->cur_upd = pull->cur_id = NULL;
    pull->sub = 1;
    char key[64];
    snprintf (key, sizeof key, "cursor.%s", s_step_table[pull->step]);
    cJSON *value = cJSON_GetObjectItemCaseSensitive (pull->owner->meta, key);
    if (!cJSON_IsString (value))
        return;
    const char *tab = strchr (value->valuestring, '\t');
    if (!tab)
        return;
    pull->cur_upd = strndup (value->valuestring, (size_t) (tab - value->valuestring));
    pull->cur_id = strdup (tab + 1);
    pull->sub = 0;
}

static int s_request (sync_pull_t *pull);

//  The pass is over (verdict OK) or stops (any other).
static void
s_end (sync_pull_t *pull, sync_verdict_t verdict, const char *why)
{
    sync_t *self = pull->owner;
    self->pull = NULL;
    sync_pull_destroy (&pull);
    sync_after (self, verdict, why);
}

static void s_enter (sync_pull_t *pull);

//  sync.watch answered: the tasks made here for other systems.
static void
s_watched (void *arg, int rc, cJSON *reply)
{
    sync_pull_t *pull = (sync_pull_t *) arg;
    if (rc == CCM_ECLOSED)
        return;
    free (pull->watch);
    pull->watch = NULL;
    cJSON *tasks = sync_ok ("sync.watch", rc, reply)
                       ? cJSON_GetObjectItemCaseSensitive (reply, "tasks")
                       : NULL;
    if (cJSON_GetArraySize (tasks) > 0) {
        size_t len = 0;
        FILE *stream = open_memstream (&pull->watch, &len);
        cJSON *id;
        int i = 0;
        cJSON_ArrayForEach (id, tasks) if (cJSON_IsString (id))
            fprintf (stream, "%s%s", i++ ? "," : "", id->valuestring);
        fclose (stream);
    }
    pull->watch_read = true;
    s_enter (pull);
}

//  Goes from pull->step to the first step that has something to ask (the
//  watched tasks are asked of the store first); ends the pass after the last.
static void
s_enter (sync_pull_t *pull)
{
    sync_t *self = pull->owner;
    for (; pull->step < S_STEPS; pull->step++) {
        if (pull->step == S_TASKS && !*self->me)
            continue;
        if (pull->step == S_WATCHED) {
            if (!*self->me)
                continue;
            if (!pull->watch_read) {
                cJSON *body = cJSON_CreateObject ();
                cJSON_AddStringToObject (body, "system_id", self->me);
                sync_read (self, "sync.watch", body, s_watched, pull);
                return;  //  s_watched comes back here
            }
            if (!pull->watch)
                pull->step = S_RESULTS;  //  nothing watched: no results either
            else
                break;
            continue;
        }
        if (pull->step == S_RESULTS && !pull->watch)
            continue;
        break;
    }
    if (pull->step >= S_STEPS) {
        s_end (pull, SYNC_OK, "");
        return;
    }
    if (s_keyset (pull->step))
        s_load_cursor (pull);
    if (s_request (pull))
        s_end (pull, SYNC_TRANSIENT, "cannot start a request to the hub");
}

//  Moves to the next step that has something to ask; ends the pass after
//  the last.
static void
s_next_step (sync_pull_t *pull)
{
    pull->step++;
    s_enter (pull);
}

//  Writes one skill as <dir>/<name>/SKILL.md, atomically.
static void
s_write_skill (sync_t *self, const char *name, const char *content)
{
    size_t len = strlen (name);
    if (len < 1 || len > 64 || name[0] == '.' || name[0] == '-'
        || strspn (name, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")
               != len)
        return;
    char dir[4096], path[4200], tmp[4300];
    snprintf (dir, sizeof dir, "%s/%s", self->skills_dir, name);
    snprintf (path, sizeof path, "%s/SKILL.md", dir);
    snprintf (tmp, sizeof tmp, "%s/.SKILL.md.%d.tmp", dir, (int) getpid ());
    //  The skills directory itself may not exist yet.
    char parent[4096];
    snprintf (parent, sizeof parent, "%s", self->skills_dir);
    for (char *p = parent + 1; *p; p++)
        if (*p == '/') {
            *p = '\0';
            mkdir (parent, 0755);
            *p = '/';
        }
    mkdir (parent, 0755);
    mkdir (dir, 0755);
    int fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    size_t size = strlen (content);
    bool ok = fd >= 0 && write (fd, content, size) == (ssize_t) size;
    if (fd >= 0 && close (fd))
        ok = false;
    if (ok && rename (tmp, path) == 0)
        ccm_info ("skill %s written to %s", name, path);
    else {
        ccm_error ("cannot write skill %s to %s: %s", name, path, strerror (errno));
        unlink (tmp);
    }
}

static void s_page_done (sync_pull_t *pull, cJSON *rows);

//  sync.apply answered: the page is in the store (skills written), or the
//  pass stops.
static void
s_applied (void *arg, int rc, cJSON *reply)
{
    sync_pull_t *pull = (sync_pull_t *) arg;
    if (rc == CCM_ECLOSED)
        return;
    sync_t *self = pull->owner;
    cJSON *rows = pull->rows;
    pull->rows = NULL;
    if (!sync_ok ("sync.apply", rc, reply)) {
        cJSON_Delete (rows);
        s_end (pull, SYNC_TRANSIENT, "the store refused a pulled page");
        return;
    }
    cJSON *applied = cJSON_GetObjectItemCaseSensitive (reply, "applied");
    if (cJSON_IsNumber (applied))
        self->pulled += (uint64_t) applied->valuedouble;
    if (pull->step == S_SKILLS) {
        cJSON *name;
        cJSON_ArrayForEach (name, cJSON_GetObjectItemCaseSensitive (reply, "changed"))
        {
            cJSON *row;
            cJSON_ArrayForEach (row, rows)
            {
                cJSON *n = cJSON_GetObjectItemCaseSensitive (row, "name");
                cJSON *content = cJSON_GetObjectItemCaseSensitive (row, "content");
                if (cJSON_IsString (name) && cJSON_IsString (n) && cJSON_IsString (content)
                    && !strcmp (n->valuestring, name->valuestring))
                    s_write_skill (self, n->valuestring, content->valuestring);
            }
        }
    }
    s_page_done (pull, rows);
}

static void
s_done (const sync_http_resp_t *resp, void *arg)
{
    sync_pull_t *pull = (sync_pull_t *) arg;
    sync_t *self = pull->owner;
    self->requests++;
    char why[512];
    sync_verdict_t verdict = sync_judge (resp, why, sizeof why);
    if (verdict != SYNC_OK) {
        s_end (pull, verdict == SYNC_PARENT ? SYNC_TRANSIENT : verdict, why);
        return;
    }
    cJSON *rows = cJSON_ParseWithLength (resp->body, resp->size);
    if (!cJSON_IsArray (rows)) {
        cJSON_Delete (rows);
        snprintf (why, sizeof why, "bad response from the hub: GET %s: %s",
                  s_step_table[pull->step],
                  resp->size ? "the body is not a JSON array" : "empty body");
        s_end (pull, SYNC_TRANSIENT, why);
        return;
    }
    if (cJSON_GetArraySize (rows) == 0) {
        s_page_done (pull, rows);
        return;
    }
    //  The store applies the page; the pass goes on in s_applied.
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "table", s_step_table[pull->step]);
    cJSON_AddStringToObject (body, "system_id", *self->me ? self->me : "-");
    cJSON_AddItemReferenceToObject (body, "rows", rows);
    pull->rows = rows;
    sync_write (self, "sync.apply", body, s_applied, pull);
}

//  A page is applied (rows taken): the cursor moves, and the next page, or
//  the next step, is asked for.
static void
s_page_done (sync_pull_t *pull, cJSON *rows)
{
    sync_t *self = pull->owner;
    int count = cJSON_GetArraySize (rows);
    if (!s_keyset (pull->step) || count == 0) {
        cJSON_Delete (rows);
        if (s_keyset (pull->step) && pull->sub == 0) {
            pull->sub = 1;
            if (s_request (pull))
                s_end (pull, SYNC_TRANSIENT, "cannot start a request to the hub");
        }
        else
            s_next_step (pull);
        return;
    }
    //  Keyset: the cursor moves to the page's last row, kept in the store.
    cJSON *last = cJSON_GetArrayItem (rows, count - 1);
    cJSON *upd = cJSON_GetObjectItemCaseSensitive (last, "updated_at");
    cJSON *id = cJSON_GetObjectItemCaseSensitive (last, "id");
    if (!cJSON_IsString (upd) || !cJSON_IsString (id)) {
        cJSON_Delete (rows);
        s_end (pull, SYNC_TRANSIENT, "bad response from the hub: a row without updated_at or id");
        return;
    }
    free (pull->cur_upd);
    free (pull->cur_id);
    pull->cur_upd = strdup (upd->valuestring);
    pull->cur_id = strdup (id->valuestring);
    cJSON_Delete (rows);
    char key[64], *value = NULL;
    snprintf (key, sizeof key, "cursor.%s", s_step_table[pull->step]);
    if (asprintf (&value, "%s\t%s", pull->cur_upd, pull->cur_id) >= 0) {
        cJSON *body = cJSON_CreateObject ();
        cJSON *values = cJSON_AddObjectToObject (body, "values");
        cJSON_AddStringToObject (values, key, value);
        //  Before the next page's sync.apply: one request at a time, in order.
        sync_write (self, "sync.meta.set", body, NULL, NULL);
        if (cJSON_GetObjectItemCaseSensitive (self->meta, key))
            cJSON_ReplaceItemInObjectCaseSensitive (self->meta, key, cJSON_CreateString (value));
        else
            cJSON_AddStringToObject (self->meta, key, value);
    }
    free (value);
    if (count >= S_PAGE)
        pull->sub = 0;  //  a full page: the ties of its last time may go on
    else if (pull->sub == 0)
        pull->sub = 1;
    else {
        s_next_step (pull);
        return;
    }
    if (s_request (pull))
        s_end (pull, SYNC_TRANSIENT, "cannot start a request to the hub");
}

//  Starts the GET of the current step. Returns 0 or -1.
static int
s_request (sync_pull_t *pull)
{
    sync_t *self = pull->owner;
    const char *table = s_step_table[pull->step];
    char *query = NULL;
    size_t len = 0;
    FILE *stream = open_memstream (&query, &len);
    fprintf (stream, "%s/rest/v1/%s?select=*", self->cred.url, table);
    if (pull->step == S_TASKS) {
        char *me = sync_escape (self->me);
        fprintf (stream, "&system_id=eq.%s", me ? me : "");
        free (me);
    }
    if (s_keyset (pull->step)) {
        char *upd = pull->cur_upd ? sync_escape (pull->cur_upd) : NULL;
        char *id = pull->cur_id ? sync_escape (pull->cur_id) : NULL;
        if (pull->sub == 0 && upd && id)
            fprintf (stream, "&updated_at=eq.%s&id=gt.%s&order=id.asc", upd, id);
        else if (upd)
            fprintf (stream, "&updated_at=gt.%s&order=updated_at.asc,id.asc", upd);
        else
            fprintf (stream, "&order=updated_at.asc,id.asc");
        free (upd);
        free (id);
    }
    else {
        char *ids = sync_escape (pull->watch);
        fprintf (stream, "&%s=in.(%s)&order=%s", pull->step == S_WATCHED ? "id" : "task_id",
                 ids ? ids : "", pull->step == S_WATCHED ? "id.asc" : "created_at.asc,id.asc");
        free (ids);
    }
    fprintf (stream, "&limit=%d", S_PAGE);
    fclose (stream);
    int rc =
        sync_http_start (self->http, "GET", query, sync_headers (self, NULL), NULL, s_done, pull);
    free (query);
    return rc;
}

//  sync.meta answered: the cursors; the pass begins.
static void
s_meta_read (void *arg, int rc, cJSON *reply)
{
    sync_pull_t *pull = (sync_pull_t *) arg;
    if (rc == CCM_ECLOSED)
        return;
    sync_t *self = pull->owner;
    if (!sync_ok ("sync.meta", rc, reply)) {
        self->pull = NULL;
        sync_pull_destroy (&pull);
        self->phase = SYNC_IDLE;
        self->next_try_ms = zclock_mono () + self->backoff_base_ms;
        return;
    }
    cJSON_Delete (self->meta);
    self->meta = cJSON_DetachItemFromObject (reply, "meta");
    if (!self->meta)
        self->meta = cJSON_CreateObject ();
    s_next_step (pull);
}

void
sync_pull_start (sync_t *self)
{
    sync_pull_t *pull = calloc (1, sizeof *pull);
    if (!pull) {
        self->next_try_ms = zclock_mono () + self->backoff_base_ms;
        return;
    }
    pull->owner = self;
    pull->step = -1;
    self->pull = pull;
    self->phase = SYNC_PULLING;
    sync_read (self, "sync.meta", cJSON_CreateObject (), s_meta_read, pull);
}

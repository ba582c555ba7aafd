/*  exec_review: supervisory tasks. A review runs in the worktree of the task
    it reviews (never a worktree of its own, never changing it) and ends
    with a report: one JSON object {quality_score 1-10, issues [...],
    recommendations [...], alert_level none|info|warning|critical}. The
    agent writes it to $CCM_REPORT_FILE; failing that, the last such object
    in its output counts (headless Claude Code prints its answer there).
    The store checks the report (report.add) and says what is wrong.       */

#include "exec_internal.h"

#include "ccm_log.h"
#include "ccm_msg.h"

#include <string.h>
#include <sys/stat.h>

#define S_REPORT_MAX (256 * 1024)  //  largest report file read

int
exec_review_worktree (exec_t *self, const char *reviewed, cJSON *worktree, char **path, char **base,
                      char **error)
{
    const char *where = cJSON_GetStringValue (cJSON_GetObjectItem (worktree, "worktree_path"));
    const char *status = cJSON_GetStringValue (cJSON_GetObjectItem (worktree, "status"));
    const char *from = cJSON_GetStringValue (cJSON_GetObjectItem (worktree, "base_branch"));
    struct stat st;
    if (!where)
        ccm_set_error (error, "task %.8s has no worktree to review", reviewed);
    else if (!status || strcmp (status, "active") != 0)
        ccm_set_error (error, "the worktree of task %.8s was %s; nothing left to review", reviewed,
                       status ? status : "removed");
    else if (stat (where, &st) || !S_ISDIR (st.st_mode))
        ccm_set_error (error, "the worktree of task %.8s (%s) is not on %s", reviewed, where,
                       self->hostname);
    else {
        *path = strdup (where);
        *base = strdup (from ? from : "HEAD");
    }
    return *path ? 0 : -1;
}

//  The last JSON object in text that has a quality_score, or NULL.
static cJSON *
s_last_report (const char *text)
{
    for (const char *at = text ? strrchr (text, '{') : NULL; at;) {
        cJSON *json = cJSON_ParseWithOpts (at, NULL, false);
        if (cJSON_IsObject (json) && cJSON_GetObjectItemCaseSensitive (json, "quality_score"))
            return json;
        cJSON_Delete (json);
        //  The previous '{' before at.
        const char *prev = NULL;
        for (const char *p = text; p < at; p++)
            if (*p == '{')
                prev = p;
        at = prev;
    }
    return NULL;
}

//  Reads the report the agent wrote, or finds it in output; NULL + *error.
static cJSON *
s_read_report (exec_agent_t *agent, const char *output, char **error)
{
    char *path = NULL;
    if (asprintf (&path, "%s.report", agent->log_path) < 0) {
        ccm_set_error (error, "out of memory");
        return NULL;
    }
    FILE *file = fopen (path, "rb");
    cJSON *report = NULL;
    if (file) {
        char *text = calloc (1, S_REPORT_MAX + 1);
        size_t size = text ? fread (text, 1, S_REPORT_MAX + 1, file) : 0;
        fclose (file);
        if (size > S_REPORT_MAX)
            ccm_set_error (error, "%s is larger than %d bytes", path, S_REPORT_MAX);
        else if (!(report = cJSON_ParseWithLength (text, size)) || !cJSON_IsObject (report)) {
            cJSON_Delete (report);
            report = NULL;
            ccm_set_error (error, "%s is not a JSON object", path);
        }
        free (text);
        free (path);
        return report;
    }
    free (path);
    report = s_last_report (output);
    if (!report)
        ccm_set_error (error, "no report: nothing in $CCM_REPORT_FILE and no JSON object with a"
                              " quality_score in the output");
    return report;
}

cJSON *
exec_review_report (exec_agent_t *agent, const char *output, char **error)
{
    cJSON *report = s_read_report (agent, output, error);
    if (!report)
        return NULL;
    cJSON *body = cJSON_CreateObject ();
    const char *keys[] = {"quality_score", "issues", "recommendations", "alert_level"};
    for (size_t i = 0; i < sizeof keys / sizeof keys[0]; i++) {
        cJSON *item = cJSON_DetachItemFromObjectCaseSensitive (report, keys[i]);
        if (item)
            cJSON_AddItemToObject (body, keys[i], item);
    }
    cJSON_Delete (report);
    cJSON_AddStringToObject (body, "task_id", agent->review_of);
    cJSON_AddStringToObject (body, "agent_id", agent->agent_id);
    char key[CCM_UUID_LEN + 8];
    snprintf (key, sizeof key, "report-%s", agent->agent_id);
    cJSON_AddStringToObject (body, "idem", key);
    return body;
}

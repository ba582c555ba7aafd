/*  cli_tasks: ccm project, ccm task and ccm events.                        */

#include "cli.h"

#include "ccm_bus.h"
#include "ccm_id.h"

#include <czmq.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

//  Returns the value after option argv[*i] or NULL (and a usage message).
static const char *
s_value (int argc, char **argv, int *i)
{
    if (*i + 1 >= argc) {
        cli_usage ("%s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

static int
s_project_add (cli_t *cli, int argc, char **argv)
{
    const char *name = NULL, *path = NULL, *repo_url = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp (argv[i], "--repo-url") == 0) {
            if (!(repo_url = s_value (argc, argv, &i)))
                return 2;
        }
        else if (!name)
            name = argv[i];
        else if (!path)
            path = argv[i];
        else
            return cli_usage ("project add: unexpected argument '%s'", argv[i]);
    }
    if (!name || !path)
        return cli_usage ("usage: ccm project add NAME PATH [--repo-url URL]");
    //  The store wants an absolute path; resolve a relative one here.
    char absolute[PATH_MAX];
    if (!realpath (path, absolute))
        return cli_fail ("project add: %s: %s", path, strerror (errno));
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "name", name);
    cJSON_AddStringToObject (body, "path", absolute);
    if (repo_url)
        cJSON_AddStringToObject (body, "repo_url", repo_url);
    ccm_client_add_idem (body);
    cJSON *reply;
    int rc = cli_call (cli, "project.add", body, &reply);
    cJSON_Delete (body);
    if (rc)
        return rc;
    cJSON *project = cJSON_GetObjectItemCaseSensitive (reply, "project");
    if (cli->json)
        cli_print_json (project);
    else
        puts (cli_str (project, "id"));
    cJSON_Delete (reply);
    return 0;
}

static int
s_project_list (cli_t *cli, int argc, char **argv)
{
    if (argc > 0)
        return cli_usage ("project list: unexpected argument '%s'", argv[0]);
    cJSON *body = cJSON_CreateObject ();
    cJSON *reply;
    int rc = cli_call (cli, "project.list", body, &reply);
    cJSON_Delete (body);
    if (rc)
        return rc;
    cJSON *projects = cJSON_GetObjectItemCaseSensitive (reply, "projects");
    if (cli->json)
        cli_print_json (projects);
    else {
        printf ("%-24s %-8s %s\n", "NAME", "ID", "PATH");
        cJSON *project;
        cJSON_ArrayForEach (project, projects)
        {
            cli_print_cell (cli_str (project, "name"), 24);
            printf (" %.8s %s\n", cli_str (project, "id"), cli_str (project, "path"));
        }
    }
    cJSON_Delete (reply);
    return 0;
}

int
cli_cmd_project (cli_t *cli, int argc, char **argv)
{
    if (argc >= 1 && strcmp (argv[0], "add") == 0)
        return s_project_add (cli, argc - 1, argv + 1);
    if (argc >= 1 && strcmp (argv[0], "list") == 0)
        return s_project_list (cli, argc - 1, argv + 1);
    return cli_usage ("usage: ccm project add NAME PATH | ccm project list");
}

int
cli_cmd_systems (cli_t *cli, int argc, char **argv)
{
    if (argc > 0)
        return cli_usage ("systems: unexpected argument '%s'; usage: ccm systems [--json]",
                          argv[0]);
    cJSON *body = cJSON_CreateObject ();
    cJSON *reply;
    int rc = cli_call (cli, "system.list", body, &reply);
    cJSON_Delete (body);
    if (rc)
        return rc;
    cJSON *systems = cJSON_GetObjectItemCaseSensitive (reply, "systems");
    if (cli->json)
        cli_print_json (systems);
    else {
        printf ("%-8s %-20s %-30s %-9s %-8s %-6s %s\n", "ID", "HOSTNAME", "STATUS", "TYPE",
                "RUNNING", "AGENTS", "TAGS");
        cJSON *system;
        cJSON_ArrayForEach (system, systems)
        {
            printf ("%.8s ", cli_str (system, "id"));
            cli_print_cell (cli_str (system, "hostname"), 20);
            char *tags = cJSON_PrintUnformatted (cJSON_GetObjectItem (system, "tags"));
            //  An offline machine says since when: its last heartbeat.
            char status[64];
            const char *seen = cli_str (system, "last_seen");
            if (strcmp (cli_str (system, "status"), "offline") == 0 && seen)
                snprintf (status, sizeof status, "offline since %.19s", seen);
            else
                snprintf (status, sizeof status, "%s", cli_str (system, "status"));
            printf (" %-30s %-9s %3d/%-4d %-6d %s\n", status, cli_str (system, "system_type"),
                    (int) cJSON_GetNumberValue (cJSON_GetObjectItem (system, "running")),
                    (int) cJSON_GetNumberValue (cJSON_GetObjectItem (system, "capacity")),
                    (int) cJSON_GetNumberValue (cJSON_GetObjectItem (system, "agents")),
                    tags ? tags : "[]");
            free (tags);
        }
    }
    cJSON_Delete (reply);
    return 0;
}

int
cli_cmd_contexts (cli_t *cli, int argc, char **argv)
{
    cJSON *body = cJSON_CreateObject ();
    for (int i = 0; i < argc; i++) {
        const char *key = strcmp (argv[i], "--system") == 0    ? "system_id"
                          : strcmp (argv[i], "--project") == 0 ? "project"
                                                               : NULL;
        if (!key || i + 1 >= argc) {
            cJSON_Delete (body);
            return cli_usage ("usage: ccm contexts [--system ID] [--project NAME] [--json]");
        }
        cJSON_AddStringToObject (body, key, argv[++i]);
    }
    cJSON *reply;
    int rc = cli_call (cli, "context.list", body, &reply);
    cJSON_Delete (body);
    if (rc)
        return rc;
    cJSON *contexts = cJSON_GetObjectItemCaseSensitive (reply, "contexts");
    if (cli->json)
        cli_print_json (contexts);
    else {
        printf ("%-20s %-20s %-7s %-16s %-24s %s\n", "PROJECT", "HOSTNAME", "STATUS", "BRANCH",
                "VERIFIED", "PATH");
        cJSON *context;
        cJSON_ArrayForEach (context, contexts)
        {
            cli_print_cell (cli_str (context, "project_name"), 20);
            printf (" ");
            cli_print_cell (cli_str (context, "hostname"), 20);
            printf (" %-7s ", cli_str (context, "status"));
            cli_print_cell (cli_str (context, "repo_branch"), 16);
            printf (" %-24s %s\n", cli_str (context, "last_verified"),
                    cli_str (context, "project_path"));
        }
    }
    cJSON_Delete (reply);
    return 0;
}

//  Joins argv words with single spaces; one word is taken byte for byte.
static char *
s_join (int argc, char **argv)
{
    size_t size = 1;
    for (int i = 0; i < argc; i++)
        size += strlen (argv[i]) + 1;
    char *text = calloc (1, size);
    for (int i = 0; text && i < argc; i++) {
        if (i)
            strcat (text, " ");
        strcat (text, argv[i]);
    }
    return text;
}

//  The prompt of a review given no prompt of its own.
#define S_REVIEW_PROMPT                                                                            \
    "Review the work of task %s, in this worktree: read its changes (git diff against the"         \
    " branch it started from, and git log), judge their correctness, tests and style, and fix"     \
    " nothing. Then write your review as one JSON object to the file named by the"                 \
    " CCM_REPORT_FILE environment variable: {\"quality_score\": 1 to 10, \"issues\": [strings],"   \
    " \"recommendations\": [strings], \"alert_level\": \"none\", \"info\", \"warning\" or"         \
    " \"critical\"}."

static int
s_task_add (cli_t *cli, int argc, char **argv)
{
    cJSON *body = cJSON_CreateObject ();
    int i = 0;
    for (; i < argc; i++) {
        const char *option = argv[i], *key = NULL;
        if (strcmp (option, "--") == 0) {
            i++;
            break;
        }
        if (strcmp (option, "--requires-supabase") == 0) {
            cJSON_DeleteItemFromObjectCaseSensitive (body, "requires_supabase");
            cJSON_AddTrueToObject (body, "requires_supabase");
            continue;
        }
        if (strcmp (option, "--project") == 0)
            key = "project";
        else if (strcmp (option, "--priority") == 0)
            key = "priority";
        else if (strcmp (option, "--type") == 0)
            key = "task_type";
        else if (strcmp (option, "--agent") == 0)
            key = "agent";
        else if (strcmp (option, "--timeout") == 0)
            key = "timeout_s";
        else if (strcmp (option, "--system") == 0)
            key = "system_id";
        else if (strcmp (option, "--requires") == 0)
            key = "requires_context_metadata";
        else if (strcmp (option, "--depends-on") == 0)
            key = "depends_on";
        else if (strcmp (option, "--parent") == 0)
            key = "parent_task_id";
        else if (strcmp (option, "--review") == 0)
            key = "review";
        else if (strncmp (option, "--", 2) == 0) {
            cJSON_Delete (body);
            return cli_usage ("task add: unknown option '%s'", option);
        }
        else
            break;  //  the prompt starts here
        const char *value = s_value (argc, argv, &i);
        if (!value) {
            cJSON_Delete (body);
            return 2;
        }
        if (strcmp (key, "requires_context_metadata") == 0) {
            //  KEY=VALUE, repeatable: one constraint each.
            const char *equals = strchr (value, '=');
            if (!equals || equals == value || !equals[1]) {
                cJSON_Delete (body);
                return cli_usage ("--requires: '%s' is not KEY=VALUE", value);
            }
            cJSON *requires = cJSON_GetObjectItemCaseSensitive (body, key);
            if (!requires)
            requires = cJSON_AddObjectToObject (body, key);
            char *name = strndup (value, (size_t) (equals - value));
            cJSON_DeleteItemFromObjectCaseSensitive (requires, name);
            cJSON_AddStringToObject (requires, name, equals + 1);
            free (name);
            continue;
        }
        if (strcmp (key, "depends_on") == 0) {
            cJSON *depends = cJSON_GetObjectItemCaseSensitive (body, key);
            if (!depends)
                depends = cJSON_AddArrayToObject (body, key);
            cJSON_AddItemToArray (depends, cJSON_CreateString (value));
            continue;
        }
        if (strcmp (key, "review") == 0) {
            //  --review ID: a supervisory task whose parent is the task reviewed.
            cJSON_DeleteItemFromObjectCaseSensitive (body, "task_type");
            cJSON_DeleteItemFromObjectCaseSensitive (body, "parent_task_id");
            cJSON_AddStringToObject (body, "task_type", "supervisory");
            cJSON_AddStringToObject (body, "parent_task_id", value);
            continue;
        }
        cJSON_DeleteItemFromObjectCaseSensitive (body, key);
        if (strcmp (key, "timeout_s") == 0) {
            char *end;
            long seconds = strtol (value, &end, 10);
            if (*end || seconds <= 0) {
                cJSON_Delete (body);
                return cli_usage ("--timeout: '%s' is not a number of seconds", value);
            }
            cJSON_AddNumberToObject (body, key, (double) seconds);
        }
        else
            cJSON_AddStringToObject (body, key, value);
    }
    const char *reviewed =
        cli_str (body, "task_type") && strcmp (cli_str (body, "task_type"), "supervisory") == 0
            ? cli_str (body, "parent_task_id")
            : NULL;
    if (i >= argc && !reviewed) {
        cJSON_Delete (body);
        return cli_usage (
            "usage: ccm task add [--project P] [--priority low|normal|high|urgent] "
            "[--type worker|supervisory|manager] [--agent PROFILE] [--timeout SECONDS] "
            "[--system ID] [--requires KEY=VALUE]... [--depends-on ID]... [--parent ID] "
            "[--review ID] [--requires-supabase] -- PROMPT...\n"
            "(--review ID adds a supervisory task that reviews task ID; its prompt is optional)");
    }
    char *prompt = i < argc ? s_join (argc - i, argv + i) : NULL;
    if (!prompt && asprintf (&prompt, S_REVIEW_PROMPT, reviewed) < 0)
        prompt = NULL;
    cJSON_AddStringToObject (body, "prompt", prompt);
    free (prompt);
    ccm_client_add_idem (body);
    cJSON *reply;
    int rc = cli_call (cli, "task.add", body, &reply);
    cJSON_Delete (body);
    if (rc)
        return rc;
    cJSON *task = cJSON_GetObjectItemCaseSensitive (reply, "task");
    if (cli->json)
        cli_print_json (task);
    else
        puts (cli_str (task, "id"));
    cJSON_Delete (reply);
    return 0;
}

static int
s_task_list (cli_t *cli, int argc, char **argv)
{
    cJSON *body = cJSON_CreateObject ();
    for (int i = 0; i < argc; i++) {
        const char *key = strcmp (argv[i], "--status") == 0    ? "status"
                          : strcmp (argv[i], "--project") == 0 ? "project"
                          : strcmp (argv[i], "--limit") == 0   ? "limit"
                                                               : NULL;
        const char *value = key ? s_value (argc, argv, &i) : NULL;
        if (!value) {
            cJSON_Delete (body);
            return key ? 2 : cli_usage ("task list: unknown argument '%s'", argv[i]);
        }
        if (strcmp (key, "limit") == 0)
            cJSON_AddNumberToObject (body, key, atof (value));
        else
            cJSON_AddStringToObject (body, key, value);
    }
    cJSON *reply;
    int rc = cli_call (cli, "task.list", body, &reply);
    cJSON_Delete (body);
    if (rc)
        return rc;
    cJSON *tasks = cJSON_GetObjectItemCaseSensitive (reply, "tasks");
    if (cli->json)
        cli_print_json (tasks);
    else {
        printf ("%-8s  %-9s  %-6s  %-16s  %-19s  %s\n", "ID", "STATUS", "PRIO", "PROJECT",
                "CREATED", "PROMPT");
        cJSON *task;
        cJSON_ArrayForEach (task, tasks)
        {
            printf ("%.8s  %-9s  %-6s  ", cli_str (task, "id"), cli_str (task, "status"),
                    cli_str (task, "priority"));
            cli_print_cell (cli_str (task, "project"), 16);
            printf ("  %.19s  ", cli_str (task, "created_at"));
            cli_print_cell (cli_str (task, "prompt"), 60);
            putchar ('\n');
        }
    }
    cJSON_Delete (reply);
    return 0;
}

//  Calls verb {key: id} and moves the reply's array field into reply
//  (task.list's "tasks" lands as "subtasks"); leaves reply as is on error.
static void
s_attach (cli_t *cli, cJSON *reply, const char *verb, const char *key, const char *id,
          const char *field)
{
    if (!id)
        return;
    cJSON *body = cJSON_CreateObject (), *answer = NULL;
    cJSON_AddStringToObject (body, key, id);
    if (cli_call (cli, verb, body, &answer) == 0) {
        cJSON *items = cJSON_DetachItemFromObjectCaseSensitive (answer, field);
        if (items)
            cJSON_AddItemToObject (reply, strcmp (field, "tasks") == 0 ? "subtasks" : field, items);
    }
    cJSON_Delete (body);
    cJSON_Delete (answer);
}

//  A failed task that will be tried again says when, in this machine's
//  local time (status_reason has it in UTC) and from now.
static void
s_print_retry (cJSON *task)
{
    const char *retry_at =
        cJSON_GetStringValue (cJSON_GetObjectItemCaseSensitive (task, "retry_at"));
    int64_t due_ms;
    if (!retry_at || ccm_iso_ms (retry_at, &due_ms))
        return;
    time_t secs = (time_t) (due_ms / 1000);
    struct tm tm;
    char clock[16];
    strftime (clock, sizeof clock, "%H:%M:%S", localtime_r (&secs, &tm));
    int64_t wait_s = (due_ms - ccm_wall_ms () + 999) / 1000;
    char when[32];
    if (wait_s > 0)
        snprintf (when, sizeof when, "in %lld s", (long long) wait_s);
    else
        snprintf (when, sizeof when, "due now");
    cJSON *attempts = cJSON_GetObjectItemCaseSensitive (task, "attempts");
    cJSON *max = cJSON_GetObjectItemCaseSensitive (task, "max_attempts");
    printf ("%-14s attempt %d of %d at %s local time (%s), %s\n", "retry",
            cJSON_IsNumber (attempts) ? attempts->valueint + 1 : 0,
            cJSON_IsNumber (max) ? max->valueint : 0, clock, retry_at, when);
}

static int
s_task_show (cli_t *cli, int argc, char **argv)
{
    if (argc != 1)
        return cli_usage ("usage: ccm task show ID");
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", argv[0]);
    cJSON *reply;
    int rc = cli_call (cli, "task.get", body, &reply);
    cJSON_Delete (body);
    if (rc)
        return rc;
    //  Its reviews and its subtasks, from their own verbs.
    const char *id = cli_str (cJSON_GetObjectItemCaseSensitive (reply, "task"), "id");
    s_attach (cli, reply, "report.list", "task", id, "reports");
    s_attach (cli, reply, "task.list", "parent", id, "tasks");
    if (cli->json) {
        cJSON_DeleteItemFromObjectCaseSensitive (reply, "v");
        cJSON_DeleteItemFromObjectCaseSensitive (reply, "id");
        cli_print_json (reply);
        cJSON_Delete (reply);
        return 0;
    }
    cJSON *task = cJSON_GetObjectItemCaseSensitive (reply, "task");
    const char *fields[] = {"id",        "status",     "status_reason", "priority",
                            "task_type", "project",    "system_id",     "parent_task_id",
                            "attempts",  "created_at", "started_at",    "completed_at",
                            NULL};
    for (const char **f = fields; *f; f++) {
        cJSON *item = cJSON_GetObjectItemCaseSensitive (task, *f);
        cJSON *max = cJSON_GetObjectItemCaseSensitive (task, "max_attempts");
        if (strcmp (*f, "attempts") == 0 && cJSON_IsNumber (item) && cJSON_IsNumber (max))
            printf ("%-14s %d of %d\n", *f, item->valueint, max->valueint);
        else if (cJSON_IsString (item))
            printf ("%-14s %s\n", *f, item->valuestring);
        else if (cJSON_IsNumber (item))
            printf ("%-14s %d\n", *f, item->valueint);
        if (strcmp (*f, "status") == 0)
            s_print_retry (task);
    }
    //  What the task waits for, and what it must run on.
    cJSON *dep;
    cJSON_ArrayForEach (dep, cJSON_GetObjectItemCaseSensitive (task, "depends_on"))
        printf ("%-14s %s\n", "depends_on", cJSON_GetStringValue (dep));
    cJSON *requires = cJSON_GetObjectItemCaseSensitive (task, "requires_context_metadata");
    cJSON_ArrayForEach (dep, requires)
    {
        char *value = cJSON_IsString (dep) ? NULL : cJSON_PrintUnformatted (dep);
        printf ("%-14s %s=%s\n", "requires", dep->string, value ? value : dep->valuestring);
        free (value);
    }
    if (cJSON_IsTrue (cJSON_GetObjectItemCaseSensitive (task, "requires_supabase")))
        printf ("%-14s %s\n", "requires", "a connected sync hub (requires_supabase)");
    cJSON *sub;
    cJSON_ArrayForEach (sub, cJSON_GetObjectItemCaseSensitive (reply, "subtasks"))
        printf ("%-14s %.8s %s\n", "subtask", cli_str (sub, "id"), cli_str (sub, "status"));
    cJSON *report;
    cJSON_ArrayForEach (report, cJSON_GetObjectItemCaseSensitive (reply, "reports"))
    {
        printf ("%-14s quality %d/10, alert %s\n", "review",
                cJSON_GetObjectItemCaseSensitive (report, "quality_score")->valueint,
                cli_str (report, "alert_level"));
        const char *lists[] = {"issues", "recommendations"};
        for (int l = 0; l < 2; l++) {
            cJSON *line;
            cJSON_ArrayForEach (line, cJSON_GetObjectItemCaseSensitive (report, lists[l]))
                printf ("  %s: %s\n", l ? "recommends" : "issue", cJSON_GetStringValue (line));
        }
    }
    printf ("prompt:\n%s\n", cli_str (task, "prompt"));
    printf ("events:\n");
    cJSON *event;
    cJSON_ArrayForEach (event, cJSON_GetObjectItemCaseSensitive (reply, "events"))
    {
        char *data =
            cJSON_PrintUnformatted (cJSON_GetObjectItemCaseSensitive (event, "event_data"));
        printf ("  %s  %-10s %s\n", cli_str (event, "created_at"), cli_str (event, "event_type"),
                data ? data : "");
        free (data);
    }
    cJSON_Delete (reply);
    return 0;
}

static int
s_task_cancel (cli_t *cli, int argc, char **argv)
{
    if (argc != 1)
        return cli_usage ("usage: ccm task cancel ID");
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", argv[0]);
    cJSON_AddStringToObject (body, "reason", "cancelled from the CLI");
    ccm_client_add_idem (body);
    cJSON *reply;
    int rc = cli_call (cli, "task.cancel", body, &reply);
    cJSON_Delete (body);
    if (rc)
        return rc;
    cJSON *task = cJSON_GetObjectItemCaseSensitive (reply, "task");
    if (cli->json)
        cli_print_json (task);
    else
        printf ("%s %s\n", cli_str (task, "id"), cli_str (task, "status"));
    cJSON_Delete (reply);
    return 0;
}

//  Puts a failed task back in the queue now. The store checks that it is
//  failed in the same transaction as the move: a task that runs (or that
//  the router has just requeued) is refused, never queued twice.
static int
s_task_retry (cli_t *cli, int argc, char **argv)
{
    if (argc != 1)
        return cli_usage ("usage: ccm task retry ID");
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "task", argv[0]);
    cJSON_AddStringToObject (body, "from", "failed");
    cJSON_AddStringToObject (body, "to", "queued");
    cJSON_AddStringToObject (body, "reason", "retried from the CLI");
    ccm_client_add_idem (body);
    cJSON *reply;
    int rc = cli_call (cli, "task.transition", body, &reply);
    cJSON_Delete (body);
    if (rc)
        return rc;
    cJSON *task = cJSON_GetObjectItemCaseSensitive (reply, "task");
    if (cli->json)
        cli_print_json (task);
    else
        printf ("%s %s\n", cli_str (task, "id"), cli_str (task, "status"));
    cJSON_Delete (reply);
    return 0;
}

int
cli_cmd_task (cli_t *cli, int argc, char **argv)
{
    const char *sub = argc >= 1 ? argv[0] : "";
    if (strcmp (sub, "add") == 0)
        return s_task_add (cli, argc - 1, argv + 1);
    if (strcmp (sub, "list") == 0)
        return s_task_list (cli, argc - 1, argv + 1);
    if (strcmp (sub, "show") == 0)
        return s_task_show (cli, argc - 1, argv + 1);
    if (strcmp (sub, "cancel") == 0)
        return s_task_cancel (cli, argc - 1, argv + 1);
    if (strcmp (sub, "retry") == 0)
        return s_task_retry (cli, argc - 1, argv + 1);
    return cli_usage ("usage: ccm task add|list|show|cancel|retry ...");
}

static void
s_print_event (cli_t *cli, cJSON *event, const char *text)
{
    if (cli->json) {
        puts (text);
    }
    else {
        char *data = cJSON_PrintUnformatted (cJSON_GetObjectItemCaseSensitive (event, "data"));
        cJSON *seq = cJSON_GetObjectItemCaseSensitive (event, "seq");
        printf ("%-8.0f %s  %-22s %.8s  %s\n", cJSON_IsNumber (seq) ? seq->valuedouble : 0,
                cli_str (event, "ts"), cli_str (event, "topic"), cli_str (event, "task_id"),
                data ? data : "");
        free (data);
    }
    fflush (stdout);
}

//  Replays events after *last (filtered by task) and prints them; returns 0 or 1.
static int
s_replay (cli_t *cli, int64_t *last, const char *task)
{
    while (true) {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddNumberToObject (body, "seq", (double) *last);
        cJSON_AddNumberToObject (body, "limit", 5000);
        if (task)
            cJSON_AddStringToObject (body, "task", task);
        cJSON *reply;
        int rc = cli_call (cli, "events.since", body, &reply);
        cJSON_Delete (body);
        if (rc)
            return rc;
        cJSON *event;
        cJSON_ArrayForEach (event, cJSON_GetObjectItemCaseSensitive (reply, "events"))
        {
            char *text = cJSON_PrintUnformatted (event);
            s_print_event (cli, event, text ? text : "{}");
            free (text);
            *last = (int64_t) cJSON_GetObjectItemCaseSensitive (event, "seq")->valuedouble;
        }
        bool more = cJSON_IsTrue (cJSON_GetObjectItemCaseSensitive (reply, "more"));
        //  With a task filter the replay may end before the head; move to it.
        cJSON *head = cJSON_GetObjectItemCaseSensitive (reply, "last_seq");
        if (!more && task && cJSON_IsNumber (head) && head->valuedouble > *last)
            *last = (int64_t) head->valuedouble;
        cJSON_Delete (reply);
        if (!more)
            return 0;
    }
}

int
cli_cmd_events (cli_t *cli, int argc, char **argv)
{
    int64_t since = 0;
    bool follow = false;
    const char *task_ref = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp (argv[i], "--follow") == 0 || strcmp (argv[i], "-f") == 0)
            follow = true;
        else if (strcmp (argv[i], "--since") == 0) {
            const char *value = s_value (argc, argv, &i);
            char *end;
            if (!value)
                return 2;
            since = strtoll (value, &end, 10);
            if (*end || since < 0)
                return cli_usage ("--since: '%s' is not a sequence number", value);
        }
        else if (strcmp (argv[i], "--task") == 0) {
            if (!(task_ref = s_value (argc, argv, &i)))
                return 2;
        }
        else
            return cli_usage ("events: unknown argument '%s'", argv[i]);
    }
    //  Resolve a task prefix once, so live events can be matched exactly.
    char task[64] = "";
    if (task_ref) {
        cJSON *body = cJSON_CreateObject ();
        cJSON_AddStringToObject (body, "task", task_ref);
        cJSON *reply;
        int rc = cli_call (cli, "task.get", body, &reply);
        cJSON_Delete (body);
        if (rc)
            return rc;
        snprintf (task, sizeof task, "%s",
                  cli_str (cJSON_GetObjectItemCaseSensitive (reply, "task"), "id"));
        cJSON_Delete (reply);
    }
    //  Clone pattern: subscribe first, then replay, then read live, filling gaps.
    zsock_t *sub = NULL;
    if (follow) {
        sub = ccm_bus_sub_connect (ccm_config_str (cli->config, "store.pub_endpoint"), "");
        if (!sub)
            return cli_fail ("cannot subscribe to %s",
                             ccm_config_str (cli->config, "store.pub_endpoint"));
        zclock_sleep (100);  //  let the subscription reach the publisher
    }
    int64_t last = since;
    int rc = s_replay (cli, &last, task_ref ? task : NULL);
    while (rc == 0 && follow && !zsys_interrupted) {
        zmq_pollitem_t item = {zsock_resolve (sub), 0, ZMQ_POLLIN, 0};
        if (zmq_poll (&item, 1, 500) <= 0)
            continue;
        zmsg_t *msg = zmsg_recv (sub);
        if (!msg)
            break;
        zframe_t *topic = zmsg_pop (msg), *seq_frame = zmsg_pop (msg), *json = zmsg_pop (msg);
        char *seq_text = seq_frame ? zframe_strdup (seq_frame) : NULL;
        int64_t seq = seq_text ? strtoll (seq_text, NULL, 10) : 0;
        if (seq > last + 1 && !task_ref)
            rc = s_replay (cli, &last, NULL);  //  a gap: PUB dropped something
        if (rc == 0 && json && seq == last + 1) {
            char *text = zframe_strdup (json);
            cJSON *event = cJSON_Parse (text);
            last = seq;
            if (event && (!task_ref || strcmp (cli_str (event, "task_id"), task) == 0))
                s_print_event (cli, event, text);
            cJSON_Delete (event);
            free (text);
        }
        else if (rc == 0 && task_ref && seq > last)
            rc = s_replay (cli, &last, task);
        free (seq_text);
        zframe_destroy (&topic);
        zframe_destroy (&seq_frame);
        zframe_destroy (&json);
        zmsg_destroy (&msg);
    }
    zsock_destroy (&sub);
    return rc;
}

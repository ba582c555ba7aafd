/*  Unit tests of the executor's logic (ccm_executor_lib), without a process:
    the headless result read as data (keys in any order, other lines around
    it), the agents' lease files, and profile argv expansion.             */

#include "ccm_test.h"
#include "exec_internal.h"

#include <stdlib.h>
#include <unistd.h>

static char s_dir[] = "/tmp/ccm-test-exec-XXXXXX";

static char *
s_write (const char *name, const char *text)
{
    char *path = NULL;
    if (asprintf (&path, "%s/%s", s_dir, name) < 0)
        return NULL;
    FILE *file = fopen (path, "w");
    fputs (text, file);
    fclose (file);
    return path;
}

//  A headless run's log: what Claude Code prints with --output-format
//  stream-json, around its result, as the pinned version orders its keys.
static const char *s_log_ordered =
    "starting...\n"
    "{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"s-1\",\"tools\":[]}\n"
    "{\"type\":\"assistant\",\"message\":{\"content\":[{\"type\":\"text\",\"text\":\"hi\"}]}}\n"
    "{\"type\":\"result\",\"subtype\":\"success\",\"is_error\":false,\"num_turns\":2,"
    "\"result\":\"done\",\"session_id\":\"s-1\",\"total_cost_usd\":0.0123,"
    "\"usage\":{\"input_tokens\":10,\"output_tokens\":5}}\n";

//  The same result with its keys in another order, extra keys, a terminal
//  escape before it and a line of noise after: as a newer CLI may print it.
static const char *s_log_shuffled =
    "{\"type\":\"system\",\"subtype\":\"init\",\"session_id\":\"s-2\"}\n"
    "\x1b[0m{\"usage\":{\"output_tokens\":7,\"input_tokens\":3,\"cache_read_input_tokens\":1},"
    "\"total_cost_usd\":0.5,\"modelUsage\":{},\"session_id\":\"s-2\",\"num_turns\":4,"
    "\"result\":\"ok\",\"is_error\":false,\"subtype\":\"success\",\"type\":\"result\","
    "\"uuid\":\"u\"}\n"
    "not json {at all\n";

static void
test_claude_result (void)
{
    char *path = s_write ("ordered.log", s_log_ordered);
    cJSON *details = exec_claude_result (path);
    CHECK (details != NULL);
    CHECK_STR (cJSON_GetStringValue (cJSON_GetObjectItem (details, "session_id")), "s-1");
    CHECK (cJSON_GetNumberValue (cJSON_GetObjectItem (details, "num_turns")) == 2);
    CHECK (cJSON_GetNumberValue (cJSON_GetObjectItem (details, "total_cost_usd")) == 0.0123);
    CHECK_STR (cJSON_GetStringValue (cJSON_GetObjectItem (details, "result")), "done");
    cJSON_Delete (details);
    free (path);

    path = s_write ("shuffled.log", s_log_shuffled);
    details = exec_claude_result (path);
    CHECK (details != NULL);
    CHECK_STR (cJSON_GetStringValue (cJSON_GetObjectItem (details, "session_id")), "s-2");
    CHECK (cJSON_GetNumberValue (cJSON_GetObjectItem (details, "num_turns")) == 4);
    CHECK (cJSON_GetNumberValue (cJSON_GetObjectItem (details, "total_cost_usd")) == 0.5);
    cJSON *usage = cJSON_GetObjectItem (details, "usage");
    CHECK (cJSON_GetNumberValue (cJSON_GetObjectItem (usage, "output_tokens")) == 7);
    CHECK (cJSON_IsFalse (cJSON_GetObjectItem (details, "is_error")));
    cJSON_Delete (details);
    free (path);

    //  No result line at all: no details, not a guess.
    path = s_write ("none.log", "{\"type\":\"assistant\"}\n{\"type\":\"results\"}\nplain\n");
    CHECK (exec_claude_result (path) == NULL);
    free (path);
    CHECK (exec_claude_result ("/nonexistent/ccm.log") == NULL);
}

static void
test_lease (void)
{
    char path[256];
    snprintf (path, sizeof path, "%s/task.lease", s_dir);
    CHECK (exec_lease_read (path) == 0);  //  none yet
    int64_t deadline = ccm_boot_ms () + 1500;
    CHECK (exec_lease_write (path, deadline) == 0);
    CHECK (exec_lease_read (path) == deadline);
    CHECK (exec_lease_write (path, deadline + 10) == 0);  //  replaced whole
    CHECK (exec_lease_read (path) == deadline + 10);
    char tmp[300];
    snprintf (tmp, sizeof tmp, "%s.tmp", path);
    CHECK (access (tmp, F_OK) != 0);  //  no half-written file left beside it
    CHECK (exec_lease_write ("/nonexistent/dir/x.lease", deadline) == -1);
}

static void
test_profile_argv (void)
{
    exec_profile_t profile = {.name = "p"};
    profile.argv = cJSON_Parse ("[\"agent\",\"--task\",\"{task_id}\",\"-C\",\"{worktree}\","
                                "\"do: {prompt}\"]");
    const char *prompt = "it's $(rm -rf /) `x` \"q\"\nline 2 ünï";
    char **argv = exec_profile_argv (&profile, prompt, "t-1", "/w/t");
    CHECK (argv != NULL);
    CHECK_STR (argv[0], "agent");
    CHECK_STR (argv[2], "t-1");
    CHECK_STR (argv[4], "/w/t");
    char expected[256];
    snprintf (expected, sizeof expected, "do: %s", prompt);
    CHECK_STR (argv[5], expected);  //  one argv element, byte for byte
    CHECK (argv[6] == NULL);
    argv = exec_argv_insert (argv, 1, "--settings", "/s.json");
    CHECK_STR (argv[1], "--settings");
    CHECK_STR (argv[2], "/s.json");
    CHECK_STR (argv[3], "--task");
    exec_argv_free (argv);
    cJSON_Delete (profile.argv);
}

int
main (void)
{
    if (!mkdtemp (s_dir))
        return 1;
    test_claude_result ();
    test_lease ();
    test_profile_argv ();
    char command[128];
    snprintf (command, sizeof command, "rm -rf %s", s_dir);
    if (system (command) != 0)
        fprintf (stderr, "could not remove %s\n", s_dir);
    return CCM_TEST_DONE ();
}

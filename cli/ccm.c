/*  ccm: the command line. Talks to the services only over the bus.         */

#include "cli.h"

#include "ccm_bus.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char s_help[] =
    "usage: ccm COMMAND [ARGS] [--json]\n"
    "\n"
    "  up [--detach] [--role hub|worker|all]\n"
    "                                start and supervise this machine's services (hub: store,\n"
    "                                router, gateway, sync; worker: executor, hooks)\n"
    "  down                          stop them\n"
    "  status                        show the services and task counts\n"
    "  config                        show every setting, its value and its CCM_* variable\n"
    "  project add NAME PATH         register a project\n"
    "  project list\n"
    "  task add [--project P] [--priority low|normal|high|urgent]\n"
    "           [--type worker|supervisory|manager] [--agent PROFILE] [--timeout S]\n"
    "           [--system ID] [--requires KEY=VALUE]... [--depends-on ID]...\n"
    "           [--parent ID] [--requires-supabase] -- PROMPT...\n"
    "                                submit a task; prints its id\n"
    "  task add --review ID [...] [-- PROMPT...]\n"
    "                                a supervisory task reviewing task ID in its worktree\n"
    "  task list [--status S] [--project P] [--limit N]\n"
    "  task show ID                  a task and its events (ID: a unique prefix works)\n"
    "  task cancel ID\n"
    "  task retry ID                 a failed task (with attempts left) back to the queue\n"
    "  events [--since SEQ] [--follow] [--task ID]\n"
    "  worktree list [--status S] | merge ID | discard ID [--force] | prune\n"
    "  logs ID [--follow]            the agent's full output\n"
    "  attach ID                     attach to the agent's tmux window\n"
    "  send ID TEXT [--wait S]       type TEXT into a running agent; confirmed by its hooks\n"
    "  hooks install|uninstall [--project PATH [--local] | --user] [--timeout S]\n"
    "                                put ccm-hook in Claude Code's settings (default --user)\n"
    "  systems                       the machines (executors) known, their load and tags\n"
    "  contexts [--system ID] [--project NAME]\n"
    "                                the projects each machine holds, and how fresh\n"
    "  keys gen [--force] | trust FILE [--name NAME] | list\n"
    "                                CurveZMQ keys for tcp:// endpoints between machines\n"
    "  gateway token                 a new token for the web gateway (file mode 0600)\n"
    "  sync login --url URL --anon-key KEY --email E [--password-stdin]\n"
    "                                connect this machine to a Supabase hub\n"
    "  sync logout | sync status     forget the hub; show state, queue, parked errors\n"
    "\n"
    "Every listing takes --json. CCM_HOME (default ~/.ccm) selects the instance.\n";

static const struct {
    const char *name;
    int (*run) (cli_t *cli, int argc, char **argv);
} s_commands[] = {
    {"up", cli_cmd_up},           {"down", cli_cmd_down},         {"status", cli_cmd_status},
    {"config", cli_cmd_config},   {"project", cli_cmd_project},   {"task", cli_cmd_task},
    {"events", cli_cmd_events},   {"worktree", cli_cmd_worktree}, {"logs", cli_cmd_logs},
    {"attach", cli_cmd_attach},   {"send", cli_cmd_send},         {"hooks", cli_cmd_hooks},
    {"systems", cli_cmd_systems}, {"contexts", cli_cmd_contexts}, {"keys", cli_cmd_keys},
    {"gateway", cli_cmd_gateway}, {"sync", cli_cmd_sync},
};

int
main (int argc, char **argv)
{
    if (argc < 2 || strcmp (argv[1], "help") == 0 || strcmp (argv[1], "--help") == 0
        || strcmp (argv[1], "-h") == 0) {
        fputs (s_help, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    //  --json may stand anywhere before "--"; take it out of the arguments.
    cli_t cli = {0};
    int kept = 1;
    bool after_dashes = false;
    for (int i = 1; i < argc; i++) {
        if (!after_dashes && strcmp (argv[i], "--json") == 0) {
            cli.json = true;
            continue;
        }
        if (strcmp (argv[i], "--") == 0)
            after_dashes = true;
        argv[kept++] = argv[i];
    }
    argc = kept;
    char *error = NULL;
    cli.config = ccm_config_load (NULL, &error);
    if (!cli.config) {
        int rc = cli_fail ("%s", error ? error : "cannot load config");
        free (error);
        return rc;
    }
    //  Every command but keys and config talks over the bus, maybe over
    //  tcp://; those two must work before the keys do.
    if (strcmp (argv[1], "keys") != 0 && strcmp (argv[1], "config") != 0
        && ccm_bus_secure (cli.config, &error)) {
        int rc = cli_fail ("%s", error ? error : "out of memory");
        free (error);
        ccm_config_destroy (&cli.config);
        return rc;
    }
    int rc = -1;
    for (size_t i = 0; i < sizeof s_commands / sizeof s_commands[0]; i++)
        if (strcmp (argv[1], s_commands[i].name) == 0)
            rc = s_commands[i].run (&cli, argc - 2, argv + 2);
    if (rc == -1)
        rc = cli_usage ("unknown command '%s'", argv[1]);
    ccm_config_destroy (&cli.config);
    return rc;
}

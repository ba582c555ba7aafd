/*  cli_hooks: ccm hooks install | uninstall [--project PATH [--local] | --user]

    Puts ccm-hook into a Claude Code settings.json for every hook event (or
    takes it out), keeping everything else in the file (ccm_hookcfg.h).     */

#include "cli.h"

#include "ccm_hookcfg.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define S_TIMEOUT_S 10  //  Claude Code's timeout for each ccm-hook run

static const char s_usage[] =
    "usage: ccm hooks install|uninstall [--project PATH [--local] | --user] [--timeout S]";

//  The settings file the options name; 0 or a usage error.
static int
s_settings_path (int argc, char **argv, char *path, size_t size, int *timeout_s)
{
    const char *project = NULL;
    bool user = false, local = false;
    for (int i = 0; i < argc; i++) {
        if (strcmp (argv[i], "--project") == 0 && i + 1 < argc)
            project = argv[++i];
        else if (strcmp (argv[i], "--user") == 0)
            user = true;
        else if (strcmp (argv[i], "--local") == 0)
            local = true;
        else if (strcmp (argv[i], "--timeout") == 0 && i + 1 < argc) {
            *timeout_s = atoi (argv[++i]);
            if (*timeout_s < 1 || *timeout_s > 3600)
                return cli_usage ("--timeout: 1 to 3600 seconds");
        }
        else
            return cli_usage ("%s", s_usage);
    }
    if (project && user)
        return cli_usage ("--project and --user exclude each other");
    if (project) {
        char resolved[PATH_MAX];
        if (!realpath (project, resolved))
            return cli_fail ("project %s: %s", project, strerror (errno));
        snprintf (path, size, "%s/.claude/%s", resolved,
                  local ? "settings.local.json" : "settings.json");
        return 0;
    }
    const char *dir = getenv ("CLAUDE_CONFIG_DIR");
    if (dir && *dir)
        snprintf (path, size, "%s/settings.json", dir);
    else
        snprintf (path, size, "%s/.claude/settings.json",
                  getenv ("HOME") ? getenv ("HOME") : "/root");
    return 0;
}

int
cli_cmd_hooks (cli_t *cli, int argc, char **argv)
{
    if (argc < 1 || (strcmp (argv[0], "install") && strcmp (argv[0], "uninstall")))
        return cli_usage ("%s", s_usage);
    char path[PATH_MAX + 64];
    int timeout_s = S_TIMEOUT_S;
    int rc = s_settings_path (argc - 1, argv + 1, path, sizeof path, &timeout_s);
    if (rc)
        return rc;
    char *error = NULL;
    if (strcmp (argv[0], "uninstall") == 0) {
        if (ccm_hookcfg_uninstall (path, &error)) {
            rc = cli_fail ("%s", error ? error : "cannot uninstall");
            free (error);
            return rc;
        }
        printf ("ccm hooks removed from %s\n", path);
        return 0;
    }
    //  ccm-hook sits next to this ccm binary.
    char self[PATH_MAX];
    ssize_t len = readlink ("/proc/self/exe", self, sizeof self - 1);
    if (len <= 0)
        return cli_fail ("cannot find the ccm binary: %s", strerror (errno));
    self[len] = 0;
    char hook[PATH_MAX + 16];
    snprintf (hook, sizeof hook, "%.*s/ccm-hook", (int) (strrchr (self, '/') - self), self);
    if (access (hook, X_OK))
        return cli_fail ("no ccm-hook binary at %s", hook);
    char *command = ccm_hookcfg_command (hook, ccm_config_home (cli->config));
    if (!command || ccm_hookcfg_install (path, command, timeout_s, &error)) {
        rc = cli_fail ("%s", error ? error : "cannot install");
        free (error);
        free (command);
        return rc;
    }
    printf ("ccm hooks installed in %s (%s)\n", path, command);
    free (command);
    return 0;
}

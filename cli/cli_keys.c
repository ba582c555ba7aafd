/*  ccm keys: this machine's CurveZMQ certificate and the peers it trusts.

    ccm keys gen [--force]        writes bus.cert (public) and bus.cert_secret
                                  (mode 0600); prints the public key
    ccm keys trust FILE [--name N] copies the public part of a peer's
                                  certificate into bus.trusted
    ccm keys list                 this machine's key and the trusted ones

    tcp:// servers accept only the keys in bus.trusted (zauth); tcp://
    clients need the hub's public key in bus.server_key (see ccm_bus.h).  */

#include "cli.h"

#include <czmq.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

//  Makes every missing directory of path, mode 0700. Returns 0 or -1.
static int
s_mkdirs (const char *path)
{
    char dir[PATH_MAX];
    snprintf (dir, sizeof dir, "%s", path);
    for (char *p = dir + 1; *p; p++)
        if (*p == '/') {
            *p = 0;
            if (mkdir (dir, 0700) && errno != EEXIST)
                return -1;
            *p = '/';
        }
    return mkdir (dir, 0700) && errno != EEXIST ? -1 : 0;
}

//  The directory part of path, in out.
static void
s_dirname (const char *path, char *out, size_t size)
{
    snprintf (out, size, "%s", path);
    char *slash = strrchr (out, '/');
    if (slash && slash != out)
        *slash = 0;
}

static int
s_gen (cli_t *cli, int argc, char **argv)
{
    bool force = argc == 1 && strcmp (argv[0], "--force") == 0;
    if (argc > 1 || (argc == 1 && !force))
        return cli_usage ("usage: ccm keys gen [--force]");
    const char *path = ccm_config_str (cli->config, "bus.cert");
    char dir[PATH_MAX];
    s_dirname (path, dir, sizeof dir);
    struct stat st;
    if (stat (path, &st) == 0 && !force)
        return cli_fail ("%s exists; 'ccm keys gen --force' replaces it (peers that trust the"
                         " old key must then trust the new one)",
                         path);
    if (s_mkdirs (dir) || s_mkdirs (ccm_config_str (cli->config, "bus.trusted")))
        return cli_fail ("cannot create %s: %s", dir, strerror (errno));
    zcert_t *cert = zcert_new ();
    char host[256] = "";
    gethostname (host, sizeof host - 1);
    zcert_set_meta (cert, "hostname", "%s", host);
    mode_t old = umask (077);
    int rc = zcert_save (cert, path);
    umask (old);
    char secret[PATH_MAX + 8], self[PATH_MAX];
    snprintf (secret, sizeof secret, "%s_secret", path);
    //  A machine trusts itself: its own services may meet over tcp:// too.
    snprintf (self, sizeof self, "%s/this-machine.cert",
              ccm_config_str (cli->config, "bus.trusted"));
    if (rc || chmod (secret, 0600) || chmod (path, 0644) || zcert_save_public (cert, self)) {
        zcert_destroy (&cert);
        return cli_fail ("cannot write %s: %s", path, strerror (errno));
    }
    if (cli->json) {
        cJSON *out = cJSON_CreateObject ();
        cJSON_AddStringToObject (out, "public_key", zcert_public_txt (cert));
        cJSON_AddStringToObject (out, "certificate", path);
        cli_print_json (out);
        cJSON_Delete (out);
    }
    else
        printf ("public key  %s\ncertificate %s (give it to peers: ccm keys trust FILE)\n"
                "secret      %s (mode 0600; never share it)\n",
                zcert_public_txt (cert), path, secret);
    zcert_destroy (&cert);
    return 0;
}

static int
s_trust (cli_t *cli, int argc, char **argv)
{
    const char *file = NULL, *name = NULL;
    for (int i = 0; i < argc; i++) {
        if (strcmp (argv[i], "--name") == 0 && i + 1 < argc)
            name = argv[++i];
        else if (!file && strncmp (argv[i], "--", 2) != 0)
            file = argv[i];
        else
            return cli_usage ("usage: ccm keys trust FILE [--name NAME]");
    }
    if (!file)
        return cli_usage ("usage: ccm keys trust FILE [--name NAME]");
    struct stat st;
    zcert_t *cert = stat (file, &st) == 0 && S_ISREG (st.st_mode) ? zcert_load (file) : NULL;
    if (!cert || strlen (zcert_public_txt (cert)) != 40) {
        zcert_destroy (&cert);
        return cli_fail ("%s is not a ZeroMQ certificate (as 'ccm keys gen' writes)", file);
    }
    if (!name) {
        const char *base = strrchr (file, '/') ? strrchr (file, '/') + 1 : file;
        name = base;
    }
    if (!*name || strchr (name, '/') || name[0] == '.' || strlen (name) > 128) {
        zcert_destroy (&cert);
        return cli_fail ("--name: '%s' is not a plain file name", name);
    }
    const char *dir = ccm_config_str (cli->config, "bus.trusted");
    if (s_mkdirs (dir)) {
        zcert_destroy (&cert);
        return cli_fail ("cannot create %s: %s", dir, strerror (errno));
    }
    char path[PATH_MAX];
    snprintf (path, sizeof path, "%s/%s%s", dir, name,
              strlen (name) > 5 && strcmp (name + strlen (name) - 5, ".cert") == 0 ? "" : ".cert");
    //  Only the public part is kept, whatever the file held.
    int rc = zcert_save_public (cert, path);
    if (rc == 0)
        printf ("trusted %s (%s)\n", zcert_public_txt (cert), path);
    zcert_destroy (&cert);
    return rc ? cli_fail ("cannot write %s: %s", path, strerror (errno)) : 0;
}

static int
s_list (cli_t *cli)
{
    const char *path = ccm_config_str (cli->config, "bus.cert");
    zcert_t *mine = access (path, R_OK) == 0 ? zcert_load (path) : NULL;
    cJSON *out = cJSON_CreateObject ();
    cJSON *self = cJSON_AddObjectToObject (out, "this_machine");
    cJSON_AddStringToObject (self, "certificate", path);
    if (mine)
        cJSON_AddStringToObject (self, "public_key", zcert_public_txt (mine));
    else
        cJSON_AddNullToObject (self, "public_key");
    zcert_destroy (&mine);
    cJSON *trusted = cJSON_AddArrayToObject (out, "trusted");
    zdir_t *dir = zdir_new (ccm_config_str (cli->config, "bus.trusted"), NULL);
    zlist_t *files = dir ? zdir_list (dir) : NULL;
    for (zfile_t *file = files ? zlist_first (files) : NULL; file; file = zlist_next (files)) {
        zcert_t *cert = zcert_load (zfile_filename (file, NULL));
        cJSON *item = cJSON_CreateObject ();
        cJSON_AddStringToObject (item, "file", zfile_filename (file, NULL));
        if (cert) {
            cJSON_AddStringToObject (item, "public_key", zcert_public_txt (cert));
            const char *host = zcert_meta (cert, "hostname");
            cJSON_AddStringToObject (item, "hostname", host ? host : "");
        }
        else
            cJSON_AddStringToObject (item, "error", "not a certificate; zauth ignores it");
        cJSON_AddItemToArray (trusted, item);
        zcert_destroy (&cert);
    }
    zlist_destroy (&files);
    zdir_destroy (&dir);
    if (cli->json)
        cli_print_json (out);
    else {
        printf ("this machine  %s  %s\n",
                cli_str (self, "public_key") ? cli_str (self, "public_key")
                                             : "(none: ccm keys gen)",
                path);
        cJSON *item;
        cJSON_ArrayForEach (item, trusted)
            printf ("trusted       %s  %s%s%s\n",
                    cli_str (item, "public_key") ? cli_str (item, "public_key") : "(unreadable)",
                    cli_str (item, "file"), cli_str (item, "hostname") ? "  " : "",
                    cli_str (item, "hostname") ? cli_str (item, "hostname") : "");
    }
    cJSON_Delete (out);
    return 0;
}

int
cli_cmd_keys (cli_t *cli, int argc, char **argv)
{
    if (argc >= 1 && strcmp (argv[0], "gen") == 0)
        return s_gen (cli, argc - 1, argv + 1);
    if (argc >= 1 && strcmp (argv[0], "trust") == 0)
        return s_trust (cli, argc - 1, argv + 1);
    if (argc == 1 && strcmp (argv[0], "list") == 0)
        return s_list (cli);
    return cli_usage ("usage: ccm keys gen [--force] | trust FILE [--name NAME] | list");
}

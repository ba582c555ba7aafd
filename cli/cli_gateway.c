/*  cli_gateway: ccm gateway token.

    Writes a new random token (32 bytes from the kernel's CSPRNG, as 64 hex
    characters) to gateway.token_file, mode 0600, through a temporary file
    renamed into place, so the gateway never reads half a token. It prints
    where the token is, never the token itself: a terminal's scrollback,
    a shell history or a CI log is not a place for it.                   */

#include "cli.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static int
s_token (cli_t *cli)
{
    const char *path = ccm_config_str (cli->config, "gateway.token_file");
    unsigned char bytes[32];
    size_t got = 0;
    while (got < sizeof bytes) {
        ssize_t n = getrandom (bytes + got, sizeof bytes - got, 0);
        if (n < 0 && errno != EINTR)
            return cli_fail ("cannot get random bytes: %s", strerror (errno));
        if (n > 0)
            got += (size_t) n;
    }
    char hex[2 * sizeof bytes + 2];
    for (size_t i = 0; i < sizeof bytes; i++)
        snprintf (hex + 2 * i, 3, "%02x", bytes[i]);
    explicit_bzero (bytes, sizeof bytes);
    strcat (hex, "\n");

    char tmp[PATH_MAX + 16];
    snprintf (tmp, sizeof tmp, "%s.tmp", path);
    unlink (tmp);
    int fd = open (tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0) {
        explicit_bzero (hex, sizeof hex);
        return cli_fail ("cannot write %s: %s", tmp, strerror (errno));
    }
    size_t len = strlen (hex);
    bool ok = fchmod (fd, 0600) == 0 && write (fd, hex, len) == (ssize_t) len && fsync (fd) == 0;
    explicit_bzero (hex, sizeof hex);
    if (close (fd) || !ok || rename (tmp, path)) {
        int saved = errno;
        unlink (tmp);
        return cli_fail ("cannot write %s: %s", path, strerror (saved));
    }
    if (cli->json) {
        cJSON *out = cJSON_CreateObject ();
        cJSON_AddStringToObject (out, "token_file", path);
        cli_print_json (out);
        cJSON_Delete (out);
    }
    else
        printf ("a new gateway token is in %s (mode 0600); the gateway uses it at once.\n"
                "Give it to the web UI's login form, or to a client as the WebSocket "
                "subprotocol token.<hex>.\n",
                path);
    return 0;
}

int
cli_cmd_gateway (cli_t *cli, int argc, char **argv)
{
    if (argc == 1 && strcmp (argv[0], "token") == 0)
        return s_token (cli);
    return cli_usage ("usage: ccm gateway token");
}

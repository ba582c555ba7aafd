/*  cli_sync: `ccm sync login|logout|status`.

    login asks the hub's auth API for the user's tokens
    (POST /auth/v1/token?grant_type=password) and keeps them, with the
    hub's URL and anon key, in sync.credentials (mode 0600), where ccm-sync
    reads them and refreshes them. The password is read from the terminal
    without echo, or from stdin with --password-stdin; no token is ever
    printed. Plain http:// is accepted for loopback hosts only.          */

#include "cli.h"

#include "ccm_cred.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#define S_PASSWORD_MAX 1024

typedef struct {
    char *data;
    size_t size;
} s_buf_t;

static size_t
s_collect (char *data, size_t size, size_t count, void *arg)
{
    s_buf_t *buf = (s_buf_t *) arg;
    size_t len = size * count;
    if (buf->size + len > 1024 * 1024)
        return 0;
    char *grown = realloc (buf->data, buf->size + len + 1);
    if (!grown)
        return 0;
    buf->data = grown;
    memcpy (buf->data + buf->size, data, len);
    buf->size += len;
    buf->data[buf->size] = '\0';
    return len;
}

//  Reads one line (without its newline) into out; from the terminal with
//  echo off when tty is true. Returns 0 or -1.
static int
s_read_password (bool from_stdin, char *out, size_t size)
{
    FILE *in = stdin;
    struct termios old, quiet;
    bool restore = false;
    if (!from_stdin) {
        in = fopen ("/dev/tty", "r+");
        if (!in)
            return -1;
        fputs ("Password: ", in);
        fflush (in);
        if (tcgetattr (fileno (in), &old) == 0) {
            quiet = old;
            quiet.c_lflag &= ~(tcflag_t) ECHO;
            restore = tcsetattr (fileno (in), TCSAFLUSH, &quiet) == 0;
        }
    }
    char *line = fgets (out, (int) size, in);
    if (restore) {
        tcsetattr (fileno (in), TCSAFLUSH, &old);
        fputc ('\n', in);
    }
    if (in != stdin)
        fclose (in);
    if (!line)
        return -1;
    out[strcspn (out, "\r\n")] = '\0';
    return 0;
}

//  True if url is https://, or http:// to a loopback host.
static bool
s_url_ok (const char *url)
{
    if (!strncmp (url, "https://", 8))
        return url[8] != '\0';
    if (strncmp (url, "http://", 7))
        return false;
    const char *host = url + 7;
    const char *loopback[] = {"127.0.0.1", "localhost", "[::1]", NULL};
    for (const char **l = loopback; *l; l++) {
        size_t n = strlen (*l);
        if (!strncmp (host, *l, n) && (host[n] == '\0' || host[n] == ':' || host[n] == '/'))
            return true;
    }
    return false;
}

static int
s_login (cli_t *cli, int argc, char **argv)
{
    const char *url = NULL, *anon = NULL, *email = NULL;
    bool from_stdin = false;
    for (int i = 0; i < argc; i++) {
        if (!strcmp (argv[i], "--url") && i + 1 < argc)
            url = argv[++i];
        else if (!strcmp (argv[i], "--anon-key") && i + 1 < argc)
            anon = argv[++i];
        else if (!strcmp (argv[i], "--email") && i + 1 < argc)
            email = argv[++i];
        else if (!strcmp (argv[i], "--password-stdin"))
            from_stdin = true;
        else
            return cli_usage ("sync login: unexpected '%s'", argv[i]);
    }
    if (!url || !anon || !email)
        return cli_usage ("usage: ccm sync login --url URL --anon-key KEY --email EMAIL "
                          "[--password-stdin]");
    if (!s_url_ok (url))
        return cli_fail ("sync login: --url must be https://HOST (http:// only for 127.0.0.1, "
                         "localhost or [::1]): '%s'",
                         url);
    if (strlen (anon) > 8192 || strlen (email) > 320)
        return cli_fail ("sync login: --anon-key or --email is too long");
    char password[S_PASSWORD_MAX];
    if (s_read_password (from_stdin, password, sizeof password))
        return cli_fail ("sync login: no password given (%s)",
                         from_stdin ? "stdin is empty" : "no terminal: use --password-stdin");

    ccm_cred_t cred = {0};
    cred.url = strndup (url, strlen (url) - (url[strlen (url) - 1] == '/'));
    cred.anon_key = strdup (anon);
    cred.email = strdup (email);
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddStringToObject (body, "email", email);
    cJSON_AddStringToObject (body, "password", password);
    char *text = cJSON_PrintUnformatted (body);
    cJSON_Delete (body);
    memset (password, 0, sizeof password);

    char *endpoint = NULL, *apikey = NULL;
    s_buf_t buf = {0};
    long status = 0;
    CURLcode rc = CURLE_OUT_OF_MEMORY;
    char error[CURL_ERROR_SIZE] = "";
    CURL *easy = curl_easy_init ();
    struct curl_slist *headers = NULL;
    if (easy && text && asprintf (&endpoint, "%s/auth/v1/token?grant_type=password", cred.url) >= 0
        && asprintf (&apikey, "apikey: %s", anon) >= 0) {
        headers = curl_slist_append (headers, apikey);
        headers = curl_slist_append (headers, "Content-Type: application/json");
        curl_easy_setopt (easy, CURLOPT_URL, endpoint);
        curl_easy_setopt (easy, CURLOPT_POSTFIELDS, text);
        curl_easy_setopt (easy, CURLOPT_HTTPHEADER, headers);
        curl_easy_setopt (easy, CURLOPT_WRITEFUNCTION, s_collect);
        curl_easy_setopt (easy, CURLOPT_WRITEDATA, &buf);
        curl_easy_setopt (easy, CURLOPT_ERRORBUFFER, error);
        curl_easy_setopt (easy, CURLOPT_TIMEOUT, 30L);
        curl_easy_setopt (easy, CURLOPT_PROTOCOLS_STR, "http,https");
        rc = curl_easy_perform (easy);
        curl_easy_getinfo (easy, CURLINFO_RESPONSE_CODE, &status);
    }
    curl_slist_free_all (headers);
    curl_easy_cleanup (easy);
    if (text)
        memset (text, 0, strlen (text));
    free (text);
    free (endpoint);
    free (apikey);

    int exit_code = 0;
    cJSON *reply = buf.data ? cJSON_Parse (buf.data) : NULL;
    if (rc != CURLE_OK)
        exit_code = cli_fail ("sync login: cannot reach %s: %s", cred.url,
                              *error ? error : curl_easy_strerror (rc));
    else if (status != 200) {
        const char *why = cli_str (reply, "error_description");
        if (!*why)
            why = cli_str (reply, "msg");
        if (!*why)
            why = cli_str (reply, "message");
        exit_code = cli_fail ("sync login: the hub refused (HTTP %ld): %s", status,
                              *why ? why : "no reason given");
    }
    else if (ccm_cred_take_tokens (&cred, reply))
        exit_code = cli_fail ("sync login: the hub's answer holds no tokens");
    else if (ccm_cred_save (ccm_config_str (cli->config, "sync.credentials"), &cred))
        exit_code = cli_fail ("sync login: cannot write %s: %s",
                              ccm_config_str (cli->config, "sync.credentials"), strerror (errno));
    else
        printf ("logged in to %s as %s (user %s); credentials in %s\n", cred.url, email,
                cred.user_id ? cred.user_id : "?",
                ccm_config_str (cli->config, "sync.credentials"));
    cJSON_Delete (reply);
    if (buf.data)
        memset (buf.data, 0, buf.size);
    free (buf.data);
    ccm_cred_clear (&cred);
    return exit_code;
}

static int
s_logout (cli_t *cli)
{
    const char *path = ccm_config_str (cli->config, "sync.credentials");
    if (unlink (path) != 0) {
        if (errno == ENOENT) {
            printf ("not logged in\n");
            return 0;
        }
        return cli_fail ("sync logout: %s: %s", path, strerror (errno));
    }
    printf ("logged out: %s removed; ccm-sync goes LocalOnly\n", path);
    return 0;
}

static int
s_status (cli_t *cli)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON *status = NULL;
    int rc = cli_call (cli, "sync.status", body, &status);
    cJSON_Delete (body);
    if (rc)
        return rc;
    //  The connectivity state ccm-sync publishes (absent: never set).
    body = cJSON_CreateObject ();
    cJSON *state = NULL;
    cJSON *reply = NULL;
    if (cli_call (cli, "sync.state", body, &reply) == 0)
        state = cJSON_DetachItemFromObject (reply, "sync");
    cJSON_Delete (reply);
    cJSON_Delete (body);
    ccm_cred_t cred;
    char why[600];
    int have =
        ccm_cred_load (ccm_config_str (cli->config, "sync.credentials"), &cred, why, sizeof why);
    cJSON *hub = cJSON_CreateObject ();
    if (have == 0) {
        cJSON_AddStringToObject (hub, "url", cred.url);
        cJSON_AddStringToObject (hub, "email", cred.email ? cred.email : "");
        cJSON_AddStringToObject (hub, "user_id", cred.user_id ? cred.user_id : "");
        ccm_cred_clear (&cred);
    }
    else if (have < 0)
        cJSON_AddStringToObject (hub, "error", why);
    cJSON_AddItemToObject (status, "hub", hub);
    const char *state_name = cli_str (state, "state");
    if (!*state_name)
        state_name = have == 0 ? "unknown (is ccm-sync running?)" : "LocalOnly";
    cJSON_AddStringToObject (status, "state", state_name);
    cJSON_AddStringToObject (status, "detail", cli_str (state, "detail"));
    cJSON_DeleteItemFromObject (status, "v");
    cJSON_Delete (state);
    state_name = cli_str (status, "state");
    if (cli->json) {
        cli_print_json (status);
        cJSON_Delete (status);
        return 0;
    }
    const char *detail = cli_str (status, "detail");
    printf ("state          %s%s%s\n", state_name, *detail ? ": " : "", detail);
    if (have == 0)
        printf ("hub            %s as %s\n", cli_str (hub, "url"), cli_str (hub, "email"));
    else
        printf ("hub            %s\n",
                have < 0 ? cli_str (hub, "error") : "not configured (ccm sync login)");
    cJSON *pending = cJSON_GetObjectItem (status, "pending");
    const char *oldest = cli_str (status, "oldest_pending_at");
    printf ("queue          %d change(s) waiting%s%s\n", pending ? pending->valueint : 0,
            *oldest ? ", oldest from " : "", oldest);
    cJSON *retrying = cJSON_GetObjectItem (status, "retrying");
    if (retrying && retrying->valueint > 0)
        printf ("retrying       %d change(s); last error: %s\n", retrying->valueint,
                cli_str (status, "last_error"));
    cJSON *parked_count = cJSON_GetObjectItem (status, "parked_count");
    printf ("parked         %d change(s) refused by the hub\n",
            parked_count ? parked_count->valueint : 0);
    cJSON *row;
    cJSON_ArrayForEach (row, cJSON_GetObjectItem (status, "parked"))
    {
        printf ("  %-14s %.8s  %s  ", cli_str (row, "table"), cli_str (row, "record_id"),
                cli_str (row, "parked_at"));
        cli_print_cell (cli_str (row, "error"), 120);
        putchar ('\n');
    }
    const char *success = cli_str (status, "last_success_at");
    printf ("last success   %s\n", *success ? success : "never");
    cJSON_Delete (status);
    return 0;
}

int
cli_cmd_sync (cli_t *cli, int argc, char **argv)
{
    if (argc < 1)
        return cli_usage ("usage: ccm sync login|logout|status");
    if (!strcmp (argv[0], "login"))
        return s_login (cli, argc - 1, argv + 1);
    if (!strcmp (argv[0], "logout") && argc == 1)
        return s_logout (cli);
    if (!strcmp (argv[0], "status") && argc == 1)
        return s_status (cli);
    return cli_usage ("usage: ccm sync login|logout|status");
}

/*  cli_util: errors, store calls and output helpers of the ccm command.    */

#include "cli.h"

#include "ccm_bus.h"
#include "ccm_id.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

int
cli_fail (const char *format, ...)
{
    va_list args;
    va_start (args, format);
    fputs ("ccm: ", stderr);
    vfprintf (stderr, format, args);
    fputc ('\n', stderr);
    va_end (args);
    return 1;
}

int
cli_usage (const char *format, ...)
{
    va_list args;
    va_start (args, format);
    fputs ("ccm: ", stderr);
    vfprintf (stderr, format, args);
    fputs ("\n(see 'ccm help')\n", stderr);
    va_end (args);
    return 2;
}

int
cli_call (cli_t *cli, const char *verb, cJSON *body, cJSON **reply_p)
{
    *reply_p = NULL;
    const char *endpoint = ccm_config_str (cli->config, "store.endpoint");
    if (ccm_bus_reachable (endpoint))
        return cli_fail ("ccm is not running (no store at %s); start it with 'ccm up'", endpoint);
    ccm_client_t *client =
        ccm_client_new (endpoint, (int) ccm_config_int (cli->config, "bus.timeout_ms"),
                        (int) ccm_config_int (cli->config, "bus.retries"));
    if (!client)
        return cli_fail ("cannot connect to %s", endpoint);
    cJSON *reply = NULL;
    int rc = ccm_client_call (client, verb, body, &reply);
    ccm_client_destroy (&client);
    if (rc == CCM_ETIMEOUT && strncmp (endpoint, "tcp://", 6) == 0) {
        //  Over tcp:// a refused handshake looks like silence: say what to check.
        cli_fail ("no answer from the store at %s: the hub may be down or out of reach,"
                  " bus.server_key may not be the hub's key, or this machine's key may not be"
                  " trusted there ('ccm keys trust' on the hub)",
                  endpoint);
        return 1;
    }
    if (rc) {
        cli_fail ("%s", ccm_client_strerror (rc, reply));
        cJSON_Delete (reply);
        return 1;
    }
    *reply_p = reply;
    return 0;
}

void
cli_print_json (cJSON *item)
{
    char *text = cJSON_Print (item);
    if (text) {
        puts (text);
        free (text);
    }
}

const char *
cli_str (cJSON *obj, const char *key)
{
    cJSON *item = cJSON_GetObjectItemCaseSensitive (obj, key);
    return cJSON_IsString (item) ? item->valuestring : "";
}

//  Returns the byte length of the UTF-8 sequence starting with lead.
static size_t
s_utf8_len (unsigned char lead)
{
    return lead < 0x80 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

void
cli_print_cell (const char *text, int width)
{
    //  Count code points, not bytes, so a column of emoji lines up roughly.
    int points = 0;
    for (const unsigned char *p = (const unsigned char *) text; *p; p += s_utf8_len (*p)) {
        points++;
        if (strnlen ((const char *) p, s_utf8_len (*p)) < s_utf8_len (*p))
            break;
    }
    int keep = points <= width ? points : width - 3;
    const unsigned char *p = (const unsigned char *) text;
    for (int i = 0; i < keep && *p; i++) {
        size_t len = s_utf8_len (*p);
        if (strnlen ((const char *) p, len) < len)
            break;
        if (*p < 0x20 || *p == 0x7f)
            fputc (' ', stdout);
        else
            fwrite (p, 1, len, stdout);
        p += len;
    }
    if (keep < points)
        fputs ("...", stdout);
    for (int used = keep < points ? width : keep; used < width; used++)
        fputc (' ', stdout);
}

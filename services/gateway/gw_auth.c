/*  gw_auth: who may open the WebSocket (protocol.md, "Security").

    The token lives in gateway.token_file (mode 0600, written by `ccm
    gateway token`); it is read again whenever the file changes, so a new
    token takes effect without a restart. It is compared in constant time
    and never logged. Origins: the gateway's own, and gateway.origins.    */

#include "gw_internal.h"

#include "ccm_log.h"

#include <string.h>
#include <sys/stat.h>

#define S_TOKEN_MAX 256

struct _gw_auth_t {
    char path[4096];
    char token[S_TOKEN_MAX + 1];
    struct timespec mtime;
    off_t size;
    ino_t inode;
    bool loaded;
    char bind[256];
    int port;
    char *extra;  //  gateway.origins, comma-separated
    zlistx_t *origins;
};

bool
gw_auth_loopback (const char *bind)
{
    return strcmp (bind, "127.0.0.1") == 0 || strcmp (bind, "::1") == 0
           || strcmp (bind, "localhost") == 0 || strncmp (bind, "127.", 4) == 0;
}

static void
s_origins (gw_auth_t *self)
{
    zlistx_purge (self->origins);
    char origin[600];
    const char *hosts[] = {"127.0.0.1", "localhost", "[::1]"};
    for (int i = 0; i < 3; i++) {
        snprintf (origin, sizeof origin, "http://%s:%d", hosts[i], self->port);
        zlistx_add_end (self->origins, origin);
    }
    if (strchr (self->bind, ':'))
        snprintf (origin, sizeof origin, "http://[%s]:%d", self->bind, self->port);
    else
        snprintf (origin, sizeof origin, "http://%s:%d", self->bind, self->port);
    zlistx_add_end (self->origins, origin);
    char *list = strdup (self->extra), *save = NULL;
    for (char *one = list ? strtok_r (list, ", ", &save) : NULL; one;
         one = strtok_r (NULL, ", ", &save)) {
        size_t len = strlen (one);
        while (len > 0 && one[len - 1] == '/')
            one[--len] = 0;  //  an origin has no path
        zlistx_add_end (self->origins, one);
    }
    free (list);
}

gw_auth_t *
gw_auth_new (ccm_config_t *config, const char *bind, int port)
{
    gw_auth_t *self = calloc (1, sizeof *self);
    if (!self)
        return NULL;
    snprintf (self->path, sizeof self->path, "%s", ccm_config_str (config, "gateway.token_file"));
    snprintf (self->bind, sizeof self->bind, "%s", bind);
    self->port = port;
    self->extra = strdup (ccm_config_str (config, "gateway.origins"));
    self->origins = zlistx_new ();
    zlistx_set_duplicator (self->origins, (zhashx_duplicator_fn *) strdup);
    zlistx_set_destructor (self->origins, (zhashx_destructor_fn *) zstr_free);
    s_origins (self);
    return self;
}

void
gw_auth_destroy (gw_auth_t **self_p)
{
    if (self_p && *self_p) {
        gw_auth_t *self = *self_p;
        explicit_bzero (self->token, sizeof self->token);
        zlistx_destroy (&self->origins);
        free (self->extra);
        free (self);
        *self_p = NULL;
    }
}

void
gw_auth_set_port (gw_auth_t *self, int port)
{
    self->port = port;
    s_origins (self);
}

bool
gw_auth_has_token (gw_auth_t *self)
{
    struct stat st;
    if (stat (self->path, &st)) {
        if (self->token[0])
            ccm_info ("the token file %s is gone: no token", self->path);
        explicit_bzero (self->token, sizeof self->token);
        self->loaded = false;
        return false;
    }
    if (self->loaded && st.st_mtim.tv_sec == self->mtime.tv_sec
        && st.st_mtim.tv_nsec == self->mtime.tv_nsec && st.st_size == self->size
        && st.st_ino == self->inode)
        return self->token[0] != 0;
    if (st.st_mode & 077)
        ccm_warn ("%s is readable by others (mode %o): run 'ccm gateway token' again", self->path,
                  (unsigned) (st.st_mode & 0777));
    char text[S_TOKEN_MAX + 2] = "";
    FILE *file = fopen (self->path, "r");
    size_t n = file ? fread (text, 1, sizeof text - 1, file) : 0;
    if (file)
        fclose (file);
    text[n] = 0;
    while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
        text[--n] = 0;
    bool good = n >= 16 && n <= S_TOKEN_MAX;
    for (size_t i = 0; good && i < n; i++)
        good = (text[i] >= '0' && text[i] <= '9') || (text[i] >= 'a' && text[i] <= 'f')
               || (text[i] >= 'A' && text[i] <= 'F');
    if (!good) {
        ccm_error ("%s does not hold a token (16-256 hex characters): no WebSocket "
                   "connection can be authorized until 'ccm gateway token' writes one",
                   self->path);
        //  A broken token file must not turn into "no token needed".
        snprintf (self->token, sizeof self->token, "!");
    }
    else
        memcpy (self->token, text, n + 1);
    explicit_bzero (text, sizeof text);
    self->mtime = st.st_mtim;
    self->size = st.st_size;
    self->inode = st.st_ino;
    self->loaded = true;
    return true;
}

bool
gw_auth_token_ok (gw_auth_t *self, const char *text, size_t len)
{
    size_t want = strlen (self->token);
    if (want < 16 || len != want)
        return false;
    unsigned char diff = 0;
    for (size_t i = 0; i < want; i++)
        diff |= (unsigned char) (text[i] ^ self->token[i]);
    return diff == 0;
}

bool
gw_auth_origin_ok (gw_auth_t *self, const char *origin)
{
    for (const char *one = zlistx_first (self->origins); one; one = zlistx_next (self->origins))
        if (strcasecmp (one, origin) == 0)
            return true;
    return false;
}

/*  ccm_cred: the hub credentials file (see ccm_cred.h).                    */

#include "ccm_cred.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define S_MAX_FILE (256 * 1024)

static char *
s_dup (cJSON *obj, const char *key)
{
    cJSON *item = cJSON_GetObjectItemCaseSensitive (obj, key);
    return cJSON_IsString (item) && *item->valuestring ? strdup (item->valuestring) : NULL;
}

int
ccm_cred_load (const char *path, ccm_cred_t *cred, char *why, size_t size)
{
    memset (cred, 0, sizeof *cred);
    int fd = open (path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 1;
        snprintf (why, size, "%s: %s", path, strerror (errno));
        return -1;
    }
    char *text = malloc (S_MAX_FILE + 1);
    ssize_t got = text ? read (fd, text, S_MAX_FILE + 1) : -1;
    close (fd);
    if (got < 0 || got > S_MAX_FILE) {
        snprintf (why, size, "%s: %s", path, got < 0 ? strerror (errno) : "larger than 256 KiB");
        free (text);
        return -1;
    }
    text[got] = '\0';
    cJSON *json = cJSON_Parse (text);
    free (text);
    if (!cJSON_IsObject (json)) {
        snprintf (why, size, "%s: not a JSON object (run ccm sync login again)", path);
        cJSON_Delete (json);
        return -1;
    }
    cred->url = s_dup (json, "url");
    cred->anon_key = s_dup (json, "anon_key");
    cred->email = s_dup (json, "email");
    cred->user_id = s_dup (json, "user_id");
    cred->access_token = s_dup (json, "access_token");
    cred->refresh_token = s_dup (json, "refresh_token");
    cJSON *expires = cJSON_GetObjectItemCaseSensitive (json, "expires_at");
    cred->expires_at = cJSON_IsNumber (expires) ? (int64_t) expires->valuedouble : 0;
    cJSON_Delete (json);
    if (!cred->url || !cred->anon_key || !cred->access_token || !cred->refresh_token) {
        snprintf (why, size, "%s: url, anon_key or a token is missing (run ccm sync login again)",
                  path);
        ccm_cred_clear (cred);
        return -1;
    }
    return 0;
}

int
ccm_cred_save (const char *path, const ccm_cred_t *cred)
{
    cJSON *json = cJSON_CreateObject ();
    if (!json)
        return -1;
    cJSON_AddStringToObject (json, "url", cred->url ? cred->url : "");
    cJSON_AddStringToObject (json, "anon_key", cred->anon_key ? cred->anon_key : "");
    cJSON_AddStringToObject (json, "email", cred->email ? cred->email : "");
    cJSON_AddStringToObject (json, "user_id", cred->user_id ? cred->user_id : "");
    cJSON_AddStringToObject (json, "access_token", cred->access_token ? cred->access_token : "");
    cJSON_AddStringToObject (json, "refresh_token", cred->refresh_token ? cred->refresh_token : "");
    cJSON_AddNumberToObject (json, "expires_at", (double) cred->expires_at);
    char *text = cJSON_Print (json);
    cJSON_Delete (json);
    char *tmp = NULL;
    if (!text || asprintf (&tmp, "%s.tmp.%d", path, (int) getpid ()) < 0) {
        free (text);
        errno = ENOMEM;
        return -1;
    }
    int rc = -1;
    int fd = open (tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd >= 0) {
        size_t len = strlen (text);
        //  The mode is set explicitly: an existing file's mode is not reused.
        if (fchmod (fd, 0600) == 0 && write (fd, text, len) == (ssize_t) len && fsync (fd) == 0)
            rc = 0;
        int saved = errno;
        close (fd);
        errno = saved;
        if (rc == 0 && rename (tmp, path) != 0)
            rc = -1;
        if (rc != 0)
            unlink (tmp);
    }
    free (tmp);
    free (text);
    return rc;
}

int
ccm_cred_take_tokens (ccm_cred_t *cred, cJSON *response)
{
    char *access = s_dup (response, "access_token");
    char *refresh = s_dup (response, "refresh_token");
    if (!access || !refresh) {
        free (access);
        free (refresh);
        return -1;
    }
    free (cred->access_token);
    free (cred->refresh_token);
    cred->access_token = access;
    cred->refresh_token = refresh;
    cJSON *at = cJSON_GetObjectItemCaseSensitive (response, "expires_at");
    cJSON *in = cJSON_GetObjectItemCaseSensitive (response, "expires_in");
    if (cJSON_IsNumber (at))
        cred->expires_at = (int64_t) at->valuedouble;
    else if (cJSON_IsNumber (in))
        cred->expires_at = (int64_t) time (NULL) + (int64_t) in->valuedouble;
    else
        cred->expires_at = 0;
    cJSON *user = cJSON_GetObjectItemCaseSensitive (response, "user");
    char *id = s_dup (user, "id");
    if (id) {
        free (cred->user_id);
        cred->user_id = id;
    }
    return 0;
}

void
ccm_cred_clear (ccm_cred_t *cred)
{
    free (cred->url);
    free (cred->anon_key);
    free (cred->email);
    free (cred->user_id);
    if (cred->access_token)
        memset (cred->access_token, 0, strlen (cred->access_token));
    if (cred->refresh_token)
        memset (cred->refresh_token, 0, strlen (cred->refresh_token));
    free (cred->access_token);
    free (cred->refresh_token);
    memset (cred, 0, sizeof *cred);
}

/*  ccm_cred: the hub credentials of ccm sync, in one JSON file of mode 0600
    (sync.credentials, $CCM_HOME/sync.json by default): the hub's URL, its
    anon key, the user's email and id, and the access and refresh tokens.
    `ccm sync login` writes it, ccm-sync rewrites it on each token refresh,
    `ccm sync logout` removes it. Tokens are never printed or logged.     */

#ifndef CCM_CRED_H_INCLUDED
#define CCM_CRED_H_INCLUDED

#include <cjson/cJSON.h>
#include <stdint.h>

typedef struct {
    char *url;       //  https://PROJECT.supabase.co, without a trailing slash
    char *anon_key;  //  the project's anon (public) key
    char *email;
    char *user_id;
    char *access_token;   //  the user's JWT
    char *refresh_token;  //  for /auth/v1/token?grant_type=refresh_token
    int64_t expires_at;   //  seconds since the epoch; 0 if unknown
} ccm_cred_t;

//  Reads path into cred. Returns 0, 1 if there is no such file, or -1 with
//  a message in why (never quoting the file's contents).
int ccm_cred_load (const char *path, ccm_cred_t *cred, char *why, size_t size);

//  Writes cred to path atomically (a 0600 temporary file, then rename).
//  Returns 0 or -1 with errno set.
int ccm_cred_save (const char *path, const ccm_cred_t *cred);

//  Takes the tokens of an auth response ({access_token, refresh_token,
//  expires_in or expires_at, user: {id, email}}) into cred. Returns 0, or
//  -1 if the response lacks an access or refresh token.
int ccm_cred_take_tokens (ccm_cred_t *cred, cJSON *response);

//  Frees the strings of cred and zeroes it.
void ccm_cred_clear (ccm_cred_t *cred);

#endif

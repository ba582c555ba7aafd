/*  ccm_config: every setting of every service, in one table of keys with
    types and defaults (see ccm_config.c). An optional $CCM_HOME/config.json
    and CCM_* environment variables override the defaults; an unknown key in
    config.json is an error that names the key.                             */

#ifndef CCM_CONFIG_H_INCLUDED
#define CCM_CONFIG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct _ccm_config_t ccm_config_t;

typedef enum { CCM_CFG_STRING, CCM_CFG_INT, CCM_CFG_BOOL } ccm_config_type_t;

//  One row of the table of keys.
typedef struct {
    const char *key;  //  "store.endpoint"
    ccm_config_type_t type;
    const char *fallback;  //  default; "{home}" expands to CCM_HOME
    const char *help;
} ccm_config_key_t;

//  Loads the config for home (NULL: $CCM_HOME, else ~/.ccm). Returns NULL on
//  error, with *error set to a message naming the key (caller frees it).
ccm_config_t *ccm_config_load (const char *home, char **error);

//  Destroys the config and sets *self_p to NULL.
void ccm_config_destroy (ccm_config_t **self_p);

//  Returns CCM_HOME (borrowed).
const char *ccm_config_home (ccm_config_t *self);

//  Returns a string setting (borrowed); the key must be in the table.
const char *ccm_config_str (ccm_config_t *self, const char *key);

//  Returns an integer setting; the key must be in the table.
int64_t ccm_config_int (ccm_config_t *self, const char *key);

//  Returns a boolean setting; the key must be in the table.
bool ccm_config_bool (ccm_config_t *self, const char *key);

//  Returns the table of keys, terminated by a row with a NULL key (borrowed).
const ccm_config_key_t *ccm_config_keys (void);

//  Returns the environment variable that overrides key, e.g. CCM_STORE_ENDPOINT
//  for store.endpoint, into buf of size len.
void ccm_config_env_name (const char *key, char *buf, size_t len);

#endif

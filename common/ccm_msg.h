/*  ccm_msg: the message codec. A message is a verb frame and one JSON body
    frame with "v": 1. Decoding validates the frames, the size and the JSON;
    the field readers validate types and ranges. Every failure fills a
    ccm_error_t whose code and field name the problem (see protocol.md).    */

#ifndef CCM_MSG_H_INCLUDED
#define CCM_MSG_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <cjson/cJSON.h>

#define CCM_PROTOCOL_VERSION 1
#define CCM_VERB_MAX         64

//  A protocol error: code is one of protocol.md's error codes (static string).
typedef struct {
    const char *code;
    char field[64];
    char message[512];
} ccm_error_t;

//  Fills err and returns -1, so a reader can `return ccm_fail (...)`.
int ccm_fail (ccm_error_t *err, const char *code, const char *field, const char *format, ...)
    __attribute__ ((format (printf, 4, 5)));

//  Sets *error to a new string (caller frees; NULL if out of memory) and
//  returns -1: the error style of functions that take char **error.
int ccm_set_error (char **error, const char *format, ...) __attribute__ ((format (printf, 2, 3)));

//  True if verb (of size bytes, not NUL-terminated) is 1-64 bytes of [a-z0-9._-].
bool ccm_verb_valid (const char *verb, size_t size);

//  Parses a body frame: checks the size against max, the JSON, that it is an
//  object, and that "v" is 1. Returns the object (caller owns) or NULL with err set.
cJSON *ccm_msg_parse_body (const void *data, size_t size, size_t max, ccm_error_t *err);

//  Builds an error reply body {"v":1,"error":{code,field,message}}; caller owns.
cJSON *ccm_msg_error_body (const ccm_error_t *err);

//  Reads the file at path as one JSON value. Returns it (caller owns), or
//  NULL with *error_no set: errno if the file cannot be opened (ENOENT: it
//  does not exist), 0 if it is not valid JSON.
cJSON *ccm_json_read_file (const char *path, int *error_no);

//  True if bytes are valid UTF-8 (no overlongs, no surrogates).
bool ccm_utf8_valid (const char *bytes, size_t size);

//  A NUL-terminated copy of bytes as valid UTF-8 text: each byte that does
//  not start a valid sequence, and each NUL, becomes '?'. Caller frees.
char *ccm_utf8_clean (const char *bytes, size_t size);

//  Field readers. Each returns 0 and sets *out (borrowed from obj; left
//  untouched when the field is absent and optional), or -1 with err naming
//  the field. max is the largest byte length allowed (0: no limit).
int ccm_get_string (cJSON *obj, const char *field, bool required, size_t max, const char **out,
                    ccm_error_t *err);

//  Reads a string that must be one of allowed (a NULL-terminated list).
int ccm_get_enum (cJSON *obj, const char *field, bool required, const char *const *allowed,
                  const char **out, ccm_error_t *err);

//  Reads an integer within [min, max].
int ccm_get_int (cJSON *obj, const char *field, bool required, int64_t min, int64_t max,
                 int64_t *out, ccm_error_t *err);

//  Reads a boolean.
int ccm_get_bool (cJSON *obj, const char *field, bool required, bool *out, ccm_error_t *err);

//  Reads an object (borrowed).
int ccm_get_object (cJSON *obj, const char *field, bool required, cJSON **out, ccm_error_t *err);

//  Reads an array (borrowed) of min..max items.
int ccm_get_array (cJSON *obj, const char *field, bool required, int min, int max, cJSON **out,
                   ccm_error_t *err);

#endif

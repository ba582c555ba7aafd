/*  ccm_msg: decoding and validating [verb][json] messages.                 */

#include "ccm_msg.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

cJSON *
ccm_json_read_file (const char *path, int *error_no)
{
    *error_no = 0;
    FILE *file = fopen (path, "rb");
    if (!file) {
        *error_no = errno;
        return NULL;
    }
    char *text = NULL;
    size_t size = 0;
    FILE *mem = open_memstream (&text, &size);
    char chunk[8192];
    size_t n;
    while (mem && (n = fread (chunk, 1, sizeof chunk, file)) > 0)
        fwrite (chunk, 1, n, mem);
    if (mem)
        fclose (mem);
    fclose (file);
    cJSON *json = text ? cJSON_Parse (text) : NULL;
    free (text);
    return json;
}

int
ccm_fail (ccm_error_t *err, const char *code, const char *field, const char *format, ...)
{
    err->code = code;
    snprintf (err->field, sizeof err->field, "%s", field ? field : "");
    va_list args;
    va_start (args, format);
    vsnprintf (err->message, sizeof err->message, format, args);
    va_end (args);
    return -1;
}

int
ccm_set_error (char **error, const char *format, ...)
{
    va_list args;
    va_start (args, format);
    if (vasprintf (error, format, args) < 0)
        *error = NULL;
    va_end (args);
    return -1;
}

bool
ccm_verb_valid (const char *verb, size_t size)
{
    if (size == 0 || size > CCM_VERB_MAX)
        return false;
    for (size_t i = 0; i < size; i++) {
        char c = verb[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return false;
    }
    return true;
}

cJSON *
ccm_msg_parse_body (const void *data, size_t size, size_t max, ccm_error_t *err)
{
    if (size > max) {
        ccm_fail (err, "too_large", "body", "body: %zu bytes is over the limit of %zu bytes", size,
                  max);
        return NULL;
    }
    if (size == 0) {
        ccm_fail (err, "bad_json", "body", "body: empty, expected a JSON object");
        return NULL;
    }
    const char *end = NULL;
    cJSON *body = cJSON_ParseWithLengthOpts (data, size, &end, false);
    if (!body) {
        size_t at = end ? (size_t) (end - (const char *) data) : 0;
        ccm_fail (err, "bad_json", "body", "body: invalid JSON near byte %zu", at);
        return NULL;
    }
    //  Anything but whitespace after the object is malformed too.
    for (const char *p = end; p && p < (const char *) data + size; p++)
        if (*p != ' ' && *p != '\n' && *p != '\r' && *p != '\t' && *p != 0) {
            cJSON_Delete (body);
            ccm_fail (err, "bad_json", "body", "body: trailing bytes after the JSON value");
            return NULL;
        }
    if (!cJSON_IsObject (body)) {
        cJSON_Delete (body);
        ccm_fail (err, "bad_json", "body", "body: must be a JSON object");
        return NULL;
    }
    cJSON *v = cJSON_GetObjectItemCaseSensitive (body, "v");
    if (!cJSON_IsNumber (v) || v->valuedouble != CCM_PROTOCOL_VERSION) {
        cJSON_Delete (body);
        ccm_fail (err, "bad_version", "v", "v: must be %d", CCM_PROTOCOL_VERSION);
        return NULL;
    }
    return body;
}

cJSON *
ccm_msg_error_body (const ccm_error_t *err)
{
    cJSON *body = cJSON_CreateObject ();
    cJSON_AddNumberToObject (body, "v", CCM_PROTOCOL_VERSION);
    cJSON *error = cJSON_AddObjectToObject (body, "error");
    cJSON_AddStringToObject (error, "code", err->code ? err->code : "internal");
    if (err->field[0])
        cJSON_AddStringToObject (error, "field", err->field);
    cJSON_AddStringToObject (error, "message", err->message);
    return body;
}

char *
ccm_utf8_clean (const char *bytes, size_t size)
{
    char *text = malloc (size + 1);
    if (!text)
        return NULL;
    size_t out = 0;
    for (size_t i = 0; i < size;) {
        unsigned char c = (unsigned char) bytes[i];
        size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
        if (c == 0 || i + len > size || !ccm_utf8_valid (bytes + i, len)) {
            text[out++] = '?';
            i++;
            continue;
        }
        memcpy (text + out, bytes + i, len);
        out += len;
        i += len;
    }
    text[out] = 0;
    return text;
}

bool
ccm_utf8_valid (const char *bytes, size_t size)
{
    const unsigned char *s = (const unsigned char *) bytes;
    size_t i = 0;
    while (i < size) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t n;
        unsigned int cp;
        if ((c & 0xE0) == 0xC0) {
            n = 1;
            cp = c & 0x1F;
        }
        else if ((c & 0xF0) == 0xE0) {
            n = 2;
            cp = c & 0x0F;
        }
        else if ((c & 0xF8) == 0xF0) {
            n = 3;
            cp = c & 0x07;
        }
        else
            return false;
        if (i + n >= size)
            return false;  //  truncated sequence
        for (size_t k = 1; k <= n; k++) {
            if ((s[i + k] & 0xC0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000)
            || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            return false;
        i += n + 1;
    }
    return true;
}

//  Looks up field; returns 1 if present, 0 if absent and optional, -1 if
//  absent and required. JSON null counts as absent.
static int
s_lookup (cJSON *obj, const char *field, bool required, cJSON **item, ccm_error_t *err)
{
    *item = cJSON_GetObjectItemCaseSensitive (obj, field);
    if (*item && !cJSON_IsNull (*item))
        return 1;
    if (required)
        return ccm_fail (err, "missing_field", field, "%s: required", field);
    return 0;
}

int
ccm_get_string (cJSON *obj, const char *field, bool required, size_t max, const char **out,
                ccm_error_t *err)
{
    cJSON *item;
    int found = s_lookup (obj, field, required, &item, err);
    if (found <= 0)
        return found;
    if (!cJSON_IsString (item))
        return ccm_fail (err, "bad_field", field, "%s: must be a string", field);
    size_t len = strlen (item->valuestring);
    if (required && len == 0)
        return ccm_fail (err, "bad_field", field, "%s: must not be empty", field);
    if (max && len > max)
        return ccm_fail (err, "bad_field", field, "%s: %zu bytes is over the limit of %zu", field,
                         len, max);
    if (!ccm_utf8_valid (item->valuestring, len))
        return ccm_fail (err, "bad_field", field, "%s: not valid UTF-8", field);
    *out = item->valuestring;
    return 0;
}

int
ccm_get_enum (cJSON *obj, const char *field, bool required, const char *const *allowed,
              const char **out, ccm_error_t *err)
{
    const char *text = NULL;
    if (ccm_get_string (obj, field, required, 64, &text, err))
        return -1;
    if (!text)
        return 0;
    for (const char *const *a = allowed; *a; a++)
        if (strcmp (*a, text) == 0) {
            *out = *a;
            return 0;
        }
    char list[256] = "";
    for (const char *const *a = allowed; *a; a++)
        snprintf (list + strlen (list), sizeof list - strlen (list), "%s%s",
                  a == allowed ? "" : ", ", *a);
    return ccm_fail (err, "bad_field", field, "%s: must be one of %s", field, list);
}

int
ccm_get_int (cJSON *obj, const char *field, bool required, int64_t min, int64_t max, int64_t *out,
             ccm_error_t *err)
{
    cJSON *item;
    int found = s_lookup (obj, field, required, &item, err);
    if (found <= 0)
        return found;
    double d = cJSON_IsNumber (item) ? item->valuedouble : NAN;
    if (!cJSON_IsNumber (item) || d != floor (d) || d < -9.0e15 || d > 9.0e15)
        return ccm_fail (err, "bad_field", field, "%s: must be an integer", field);
    if ((int64_t) d < min || (int64_t) d > max)
        return ccm_fail (err, "bad_field", field, "%s: must be between %lld and %lld", field,
                         (long long) min, (long long) max);
    *out = (int64_t) d;
    return 0;
}

int
ccm_get_bool (cJSON *obj, const char *field, bool required, bool *out, ccm_error_t *err)
{
    cJSON *item;
    int found = s_lookup (obj, field, required, &item, err);
    if (found <= 0)
        return found;
    if (!cJSON_IsBool (item))
        return ccm_fail (err, "bad_field", field, "%s: must be true or false", field);
    *out = cJSON_IsTrue (item);
    return 0;
}

int
ccm_get_object (cJSON *obj, const char *field, bool required, cJSON **out, ccm_error_t *err)
{
    cJSON *item;
    int found = s_lookup (obj, field, required, &item, err);
    if (found <= 0)
        return found;
    if (!cJSON_IsObject (item))
        return ccm_fail (err, "bad_field", field, "%s: must be an object", field);
    *out = item;
    return 0;
}

int
ccm_get_array (cJSON *obj, const char *field, bool required, int min, int max, cJSON **out,
               ccm_error_t *err)
{
    cJSON *item;
    int found = s_lookup (obj, field, required, &item, err);
    if (found <= 0)
        return found;
    if (!cJSON_IsArray (item))
        return ccm_fail (err, "bad_field", field, "%s: must be an array", field);
    int n = cJSON_GetArraySize (item);
    if (n < min || n > max)
        return ccm_fail (err, "bad_field", field, "%s: must hold %d to %d items, has %d", field,
                         min, max, n);
    *out = item;
    return 0;
}

/*  Unit tests of the message codec (common/ccm_msg.c).                     */

#include "ccm_msg.h"
#include "ccm_test.h"

#include <stdlib.h>

static cJSON *
s_parse (const char *text, ccm_error_t *err)
{
    memset (err, 0, sizeof *err);
    return ccm_msg_parse_body (text, strlen (text), 1024, err);
}

int
main (void)
{
    ccm_error_t err;
    //  Verbs
    CHECK (ccm_verb_valid ("task.add", 8));
    CHECK (ccm_verb_valid ("events.since", 12));
    CHECK (!ccm_verb_valid ("", 0));
    CHECK (!ccm_verb_valid ("Task.Add", 8));
    CHECK (!ccm_verb_valid ("task add", 8));
    CHECK (!ccm_verb_valid ("task\0add", 8));
    char long_verb[80];
    memset (long_verb, 'a', sizeof long_verb);
    CHECK (!ccm_verb_valid (long_verb, 65));
    CHECK (ccm_verb_valid (long_verb, 64));

    //  Bodies
    cJSON *body = s_parse ("{\"v\":1,\"prompt\":\"hi\"}", &err);
    CHECK (body != NULL);
    cJSON_Delete (body);
    CHECK (s_parse ("{\"v\":1", &err) == NULL);
    CHECK_STR (err.code, "bad_json");
    CHECK_STR (err.field, "body");
    CHECK (s_parse ("[1,2]", &err) == NULL);
    CHECK_STR (err.code, "bad_json");
    CHECK (s_parse ("{\"prompt\":\"x\"}", &err) == NULL);
    CHECK_STR (err.code, "bad_version");
    CHECK_STR (err.field, "v");
    CHECK (s_parse ("{\"v\":2}", &err) == NULL);
    CHECK_STR (err.code, "bad_version");
    CHECK (s_parse ("{\"v\":1} trailing", &err) == NULL);
    CHECK_STR (err.code, "bad_json");
    CHECK (s_parse ("", &err) == NULL);
    CHECK_STR (err.code, "bad_json");
    char *big = malloc (2000);
    memset (big, ' ', 2000);
    memcpy (big, "{\"v\":1}", 7);
    memset (&err, 0, sizeof err);
    CHECK (ccm_msg_parse_body (big, 2000, 1024, &err) == NULL);
    CHECK_STR (err.code, "too_large");
    CHECK (strstr (err.message, "2000 bytes") != NULL);
    free (big);
    CHECK (s_parse ("\xff\xfe{}", &err) == NULL);
    CHECK_STR (err.code, "bad_json");

    //  Field readers name the field
    body = s_parse ("{\"v\":1,\"prompt\":5,\"priority\":\"soon\",\"n\":1.5,\"big\":7,"
                    "\"flag\":\"yes\",\"obj\":[],\"arr\":[1,2,3],\"empty\":\"\"}",
                    &err);
    const char *text = NULL;
    CHECK (ccm_get_string (body, "prompt", true, 0, &text, &err) == -1);
    CHECK_STR (err.code, "bad_field");
    CHECK_STR (err.field, "prompt");
    CHECK (ccm_get_string (body, "missing", true, 0, &text, &err) == -1);
    CHECK_STR (err.code, "missing_field");
    CHECK_STR (err.field, "missing");
    CHECK (ccm_get_string (body, "missing", false, 0, &text, &err) == 0 && text == NULL);
    CHECK (ccm_get_string (body, "empty", true, 0, &text, &err) == -1);
    CHECK_STR (err.field, "empty");
    const char *const allowed[] = {"low", "normal", "high", "urgent", NULL};
    CHECK (ccm_get_enum (body, "priority", false, allowed, &text, &err) == -1);
    CHECK_STR (err.message, "priority: must be one of low, normal, high, urgent");
    int64_t n = 0;
    CHECK (ccm_get_int (body, "n", true, 0, 10, &n, &err) == -1);
    CHECK_STR (err.field, "n");
    CHECK (ccm_get_int (body, "big", true, 0, 5, &n, &err) == -1);
    CHECK (strstr (err.message, "between 0 and 5") != NULL);
    CHECK (ccm_get_int (body, "big", true, 0, 10, &n, &err) == 0 && n == 7);
    bool flag;
    CHECK (ccm_get_bool (body, "flag", true, &flag, &err) == -1);
    CHECK_STR (err.field, "flag");
    cJSON *obj;
    CHECK (ccm_get_object (body, "obj", true, &obj, &err) == -1);
    CHECK_STR (err.field, "obj");
    CHECK (ccm_get_array (body, "arr", true, 1, 2, &obj, &err) == -1);
    CHECK (strstr (err.message, "has 3") != NULL);
    CHECK (ccm_get_array (body, "arr", true, 1, 3, &obj, &err) == 0);
    cJSON_Delete (body);

    //  Oversized strings and invalid UTF-8
    body = s_parse ("{\"v\":1,\"name\":\"abcdef\"}", &err);
    CHECK (ccm_get_string (body, "name", true, 5, &text, &err) == -1);
    CHECK (strstr (err.message, "6 bytes") != NULL);
    CHECK (ccm_get_string (body, "name", true, 6, &text, &err) == 0);
    CHECK_STR (text, "abcdef");
    cJSON_Delete (body);
    CHECK (ccm_utf8_valid ("h\xc3\xa9llo \xf0\x9f\x9a\x80", 11));
    CHECK (!ccm_utf8_valid ("\xc3", 1));
    CHECK (!ccm_utf8_valid ("\xc0\xaf", 2));          //  overlong
    CHECK (!ccm_utf8_valid ("\xed\xa0\x80", 3));      //  surrogate
    CHECK (!ccm_utf8_valid ("\xf4\x90\x80\x80", 4));  //  above U+10FFFF

    //  Error bodies
    ccm_fail (&err, "bad_field", "priority", "priority: nope");
    cJSON *reply = ccm_msg_error_body (&err);
    char *printed = cJSON_PrintUnformatted (reply);
    CHECK_STR (printed, "{\"v\":1,\"error\":{\"code\":\"bad_field\",\"field\":\"priority\","
                        "\"message\":\"priority: nope\"}}");
    free (printed);
    cJSON_Delete (reply);
    return CCM_TEST_DONE ();
}

/*  ccm_id: UUIDs from libuuid, and clocks.                                 */

#include "ccm_id.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <uuid/uuid.h>

void
ccm_uuid (char out[CCM_UUID_LEN + 1])
{
    uuid_t uu;
    uuid_generate_random (uu);
    uuid_unparse_lower (uu, out);
}

bool
ccm_uuid_valid (const char *text)
{
    if (!text || strlen (text) != CCM_UUID_LEN)
        return false;
    for (int i = 0; i < CCM_UUID_LEN; i++) {
        bool dash = i == 8 || i == 13 || i == 18 || i == 23;
        if (dash ? text[i] != '-'
                 : !(isdigit ((unsigned char) text[i]) || (text[i] >= 'a' && text[i] <= 'f')))
            return false;
    }
    return true;
}

void
ccm_now_iso (char out[25])
{
    struct timeval tv;
    gettimeofday (&tv, NULL);
    struct tm tm;
    gmtime_r (&tv.tv_sec, &tm);
    //  A roomy buffer first: the compiler cannot know the fields' ranges.
    char text[64];
    snprintf (text, sizeof text, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
              tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
              (int) (tv.tv_usec / 1000));
    snprintf (out, 25, "%.24s", text);
}

int
ccm_iso_ms (const char *text, int64_t *ms)
{
    struct tm tm = {0};
    int millis = 0, used = 0;
    if (!text
        || sscanf (text, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                   &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &used)
               != 6)
        return -1;
    const char *rest = text + used;
    if (*rest == '.') {
        int digits = 0;
        for (rest++; isdigit ((unsigned char) *rest); rest++, digits++)
            if (digits < 3)
                millis = millis * 10 + (*rest - '0');
        for (; digits < 3; digits++)
            millis *= 10;
    }
    if (strcmp (rest, "Z") != 0)
        return -1;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    *ms = (int64_t) timegm (&tm) * 1000 + millis;
    return 0;
}

static int64_t
s_clock_ms (clockid_t clock)
{
    struct timespec ts;
    clock_gettime (clock, &ts);
    return (int64_t) ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t
ccm_wall_ms (void)
{
    return s_clock_ms (CLOCK_REALTIME);
}

int64_t
ccm_mono_ms (void)
{
    return s_clock_ms (CLOCK_MONOTONIC);
}

int64_t
ccm_boot_ms (void)
{
    return s_clock_ms (CLOCK_BOOTTIME);
}

/*  ccm_log: leveled logging to stderr (journald picks it up).              */

#include "ccm_log.h"

#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>

ccm_log_level_t ccm_log_threshold = CCM_LOG_INFO;
static const char *s_ident = "ccm";
static const char *s_level_names[] = {"error", "warn", "info", "debug"};

void
ccm_log_init (const char *ident, ccm_log_level_t level)
{
    s_ident = ident;
    ccm_log_threshold = level;
}

int
ccm_log_level_parse (const char *name)
{
    for (int i = 0; i <= CCM_LOG_DEBUG; i++)
        if (name && strcmp (name, s_level_names[i]) == 0)
            return i;
    return -1;
}

void
ccm_log_write (ccm_log_level_t level, const char *format, ...)
{
    struct timeval tv;
    gettimeofday (&tv, NULL);
    struct tm tm;
    gmtime_r (&tv.tv_sec, &tm);
    char line[2048];
    int n = snprintf (line, sizeof line,
                      "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %s %s: ", tm.tm_year + 1900,
                      tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                      (int) (tv.tv_usec / 1000), s_ident, s_level_names[level]);
    va_list args;
    va_start (args, format);
    int m = vsnprintf (line + n, sizeof line - n - 1, format, args);
    va_end (args);
    size_t len = (size_t) n + (m < 0 ? 0 : (size_t) m);
    if (len > sizeof line - 2)
        len = sizeof line - 2;  //  truncated: one event stays one line
    //  Newlines inside a message would split one event over several lines.
    for (size_t i = (size_t) n; i < len; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[len++] = '\n';
    fwrite (line, 1, len, stderr);
}

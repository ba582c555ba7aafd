/*  ccm_log: one line per event to stderr, with the service name as ident.

    A disabled level costs nothing: the macros test the level before their
    arguments are evaluated. Never log a token, key or password.            */

#ifndef CCM_LOG_H_INCLUDED
#define CCM_LOG_H_INCLUDED

#include <stdarg.h>

typedef enum { CCM_LOG_ERROR = 0, CCM_LOG_WARN, CCM_LOG_INFO, CCM_LOG_DEBUG } ccm_log_level_t;

extern ccm_log_level_t ccm_log_threshold;

//  Sets the ident printed on every line (borrowed; keep it alive) and the level.
void ccm_log_init (const char *ident, ccm_log_level_t level);

//  Parses "error", "warn", "info" or "debug"; returns -1 for anything else.
int ccm_log_level_parse (const char *name);

//  Writes one line; use the macros below instead, so disabled levels are free.
void ccm_log_write (ccm_log_level_t level, const char *format, ...)
    __attribute__ ((format (printf, 2, 3)));

#define ccm_log(level, ...)                                                                        \
    do {                                                                                           \
        if ((level) <= ccm_log_threshold)                                                          \
            ccm_log_write ((level), __VA_ARGS__);                                                  \
    } while (0)

#define ccm_error(...) ccm_log (CCM_LOG_ERROR, __VA_ARGS__)
#define ccm_warn(...)  ccm_log (CCM_LOG_WARN, __VA_ARGS__)
#define ccm_info(...)  ccm_log (CCM_LOG_INFO, __VA_ARGS__)
#define ccm_debug(...) ccm_log (CCM_LOG_DEBUG, __VA_ARGS__)

#endif

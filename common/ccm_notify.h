/*  ccm_notify: the systemd notify protocol (READY=1, WATCHDOG=1), spoken
    directly over $NOTIFY_SOCKET so no libsystemd is needed. Without
    systemd these calls do nothing.                                         */

#ifndef CCM_NOTIFY_H_INCLUDED
#define CCM_NOTIFY_H_INCLUDED

#include <stdint.h>

//  Sends state (e.g. "READY=1") to systemd; returns 0, or -1 if it could not be sent.
int ccm_notify (const char *state);

//  Returns the watchdog interval in ms that systemd asked for, or 0 if none.
int64_t ccm_notify_watchdog_ms (void);

#endif

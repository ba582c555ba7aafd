/*  hook_wire: how ccm-hook hands an event to ccm-hooks, and how both spool.

    ccm-hook links nothing but libc (a process that loads libzmq pays ~2 ms
    before main), so the hand-over is a plain unix stream socket. A record:

        "CCMH"  u32 head_len  u32 body_len  (both big-endian)
        head    "key=value\n" lines: uid, ts, cli, task, agent, system,
                truncated (the original size, if the body was cut)
        body    the event as the CLI gave it, at most HOOK_BODY_MAX bytes

    The reply is a u32 length and that many bytes, which ccm-hook prints on
    stdout for the CLI to read: a policy decision, or nothing (length 0).
    The ingester replies only once the record is in its journal.

    A PermissionRequest that a policy asks a human about is parked: the
    first reply is HOOK_REPLY_PARKED and a u32 of how many ms the ingester
    will wait for an answer (the record is journaled: this is its ack).
    Later, on the same connection, comes the real reply as above (a
    decision, or length 0 when nobody answered in time). If the ingester
    goes away meanwhile, the connection closes: no decision.

    A spooled event (ingester down) is one file holding exactly one record,
    written under a temporary name and renamed into place.                 */

#ifndef HOOK_WIRE_H_INCLUDED
#define HOOK_WIRE_H_INCLUDED

#include <stddef.h>
#include <stdint.h>

#define HOOK_MAGIC        "CCMH"
#define HOOK_PREFIX_LEN   12            //  magic + two lengths
#define HOOK_HEAD_MAX     4096          //  the head of a record
#define HOOK_BODY_MAX     (8 << 20)     //  8 MiB of event; longer ones are cut
#define HOOK_REPLY_MAX    (64 * 1024)   //  a decision
#define HOOK_SPOOL_SUFFIX ".ev"         //  spooled records; others are ignored
#define HOOK_SOCKET_NAME  "hooks.sock"  //  under $CCM_HOME/run/
#define HOOK_REPLY_PARKED 0xFFFFFFFFu   //  a first reply: a decision will follow

static inline void
hook_put_u32 (unsigned char *out, uint32_t value)
{
    out[0] = (unsigned char) (value >> 24);
    out[1] = (unsigned char) (value >> 16);
    out[2] = (unsigned char) (value >> 8);
    out[3] = (unsigned char) value;
}

static inline uint32_t
hook_get_u32 (const unsigned char *in)
{
    return (uint32_t) in[0] << 24 | (uint32_t) in[1] << 16 | (uint32_t) in[2] << 8 | in[3];
}

#endif

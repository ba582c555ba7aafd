/*  hooks_internal: what the modules of ccm-hooks, the hook ingester, share.

    ccm-hook processes hand records (hook_wire.h) to the ingester over a
    unix socket. The ingester appends each to its journal before it acks,
    normalizes it into a hook_events row, and writes rows to the store in
    batches, one batch in flight at a time. A journal segment is deleted
    once every event in it is committed, so a kill -9 at any moment loses
    nothing: the restart replays the journal and the spool, and the store
    skips events it already has (by uid).                                   */

#ifndef HOOKS_INTERNAL_H_INCLUDED
#define HOOKS_INTERNAL_H_INCLUDED

#include "ccm_config.h"
#include "hook_wire.h"

#include <cjson/cJSON.h>
#include <limits.h>
#include <czmq.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/stat.h>
#include <time.h>

//  One record, parsed; pointers into the record's bytes.
typedef struct {
    char uid[64];
    char cli[16];
    char task[64];
    char agent[64];
    char system[64];
    char worktree[PATH_MAX];  //  the task's worktree (CCM_WORKTREE), for policies
    int64_t ts_ms;
    int64_t truncated;  //  the original size if the body was cut, else 0
    const char *body;
    size_t body_len;
} hooks_record_t;

//  Checks and parses one whole record (prefix included) of len bytes.
//  Returns 0, or -1 with *why set to a static reason.
int hooks_record_parse (const unsigned char *data, size_t len, hooks_record_t *record,
                        const char **why);

//  How many bytes the record starting at data needs in all, once at least
//  HOOK_PREFIX_LEN are there. Returns 0 and sets *why if the prefix is bad.
size_t hooks_record_size (const unsigned char *data, const char **why);

//  What the ingester remembers across events: which task and agent each
//  Claude Code session belongs to (for events whose environment lacks them).
typedef struct hooks_sessions_t hooks_sessions_t;

//  Links persist in the file at path (NULL: in memory only).
hooks_sessions_t *hooks_sessions_new (const char *path);
void hooks_sessions_destroy (hooks_sessions_t **self_p);

//  Turns a record into a hook.add event object (caller owns): every event
//  is kept, unknown types, broken JSON and cut ones included.
cJSON *hooks_event_new (hooks_sessions_t *sessions, const hooks_record_t *record);

//  The agent state an event implies, or NULL if it implies none:
//  running, waiting, idle or exited.
const char *hooks_event_state (cJSON *event);

//  What tells one version of a config file from another: the whole mtime
//  (a second save within the same second differs in nanoseconds), the size
//  and the inode (a rename-over is a new inode). A missing file is all
//  zeros. (Timestamps tick at the kernel's clock granularity, a few ms: two
//  writes of the same size within one tick still look alike.)
typedef struct {
    bool exists;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtim;
} hooks_stamp_t;

//  The stamp of the file at path now.
static inline hooks_stamp_t
hooks_stamp (const char *path)
{
    hooks_stamp_t stamp = {0};
    struct stat st;
    if (stat (path, &st) == 0) {
        stamp.exists = true;
        stamp.dev = st.st_dev;
        stamp.ino = st.st_ino;
        stamp.size = st.st_size;
        stamp.mtim = st.st_mtim;
    }
    return stamp;
}

//  True if both stamps are of the same version of a file.
static inline bool
hooks_stamp_same (const hooks_stamp_t *a, const hooks_stamp_t *b)
{
    return a->exists == b->exists && a->dev == b->dev && a->ino == b->ino && a->size == b->size
           && a->mtim.tv_sec == b->mtim.tv_sec && a->mtim.tv_nsec == b->mtim.tv_nsec;
}

//  Policies (hooks_policy.c): rules from a file, decisions for tool uses.
typedef struct hooks_policy_t hooks_policy_t;

//  Loads the rules at path. NULL without *error if there is no such file;
//  NULL with *error (caller frees) if it is not valid.
hooks_policy_t *hooks_policy_load (const char *path, char **error);
void hooks_policy_destroy (hooks_policy_t **self_p);

//  True if policies fail closed: no decision possible means deny.
bool hooks_policy_fail_closed (hooks_policy_t *self);

//  For a PreToolUse, PermissionRequest (Claude Code) or BeforeTool (Gemini
//  CLI) event: the decision JSON to print for the CLI (caller frees), at
//  most HOOK_REPLY_MAX bytes, or NULL if no rule matched or the CLI cannot
//  be told the rule's action. On a match, *rule_name and *action (borrowed)
//  and *reason (caller frees) are set.
char *hooks_policy_decide (hooks_policy_t *self, cJSON *event, const char *worktree,
                           const char **rule_name, const char **action, char **reason);

//  A human's answer to a parked PermissionRequest, in Claude Code's shape:
//  {"hookSpecificOutput":{"hookEventName":"PermissionRequest","decision":
//  {"behavior":"allow"}}}, or "deny" with message. Caller frees.
char *hooks_policy_answer (bool allow, const char *message);

//  Automations (hooks_auto.c): rules from a file; actions in an actor thread.
typedef struct hooks_auto_t hooks_auto_t;

//  Starts the actor, which records outcomes through store_endpoint.
hooks_auto_t *hooks_auto_new (const char *store_endpoint);
void hooks_auto_destroy (hooks_auto_t **self_p);

//  (Re)loads the rules at path if the file changed; a broken file keeps the
//  rules in force.
void hooks_auto_refresh (hooks_auto_t *self, const char *path);

//  Hands every action whose rule matches event to the actor.
void hooks_auto_event (hooks_auto_t *self, cJSON *event);

#endif

/*  exec_internal: what the executor's modules share.

    The executor runs each task's agent in its own tmux window (on ccm's
    own tmux socket, a session per project) inside its own git worktree,
    watches the pane for its death and exit status, and records results.   */

#ifndef EXEC_INTERNAL_H_INCLUDED
#define EXEC_INTERNAL_H_INCLUDED

#include "ccm_client.h"
#include "ccm_config.h"
#include "ccm_id.h"

#include <czmq.h>

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#define EXEC_SHORT_LEN 8

//  An agent profile: how to start one kind of agent.
typedef struct {
    char *name;
    cJSON *argv;  //  array of strings, with {prompt} {task_id} {worktree}
    cJSON *env;   //  object of strings
    bool headless;
    bool exit_on_idle;  //  "on_idle": "exit"
} exec_profile_t;

//  One agent the executor watches.
typedef struct {
    char task_id[CCM_UUID_LEN + 1];
    char short_id[EXEC_SHORT_LEN + 1];
    char agent_id[CCM_UUID_LEN + 1];
    char *project_id;
    char *project;
    char *worktree;
    char *base;       //  the base branch the worktree started from
    char *review_of;  //  a supervisory task: the task it reviews (its worktree), else NULL
    char *log_path;
    char *profile;
    bool headless;
    char window[32];         //  tmux window id, e.g. "@3"
    int64_t deadline_ms;     //  0: no timeout
    int64_t term_sent_ms;    //  when SIGTERM went to the agent, 0 if not yet
    const char *end_reason;  //  "timeout" or "cancelled" once a kill is under way
    bool exit_on_idle;       //  its profile's "on_idle": "exit"
    bool exit_sent;          //  /exit typed once its turn was over
    int64_t dead_seen_ms;    //  when its pane was first seen dead, its exit status unknown
} exec_agent_t;

typedef struct {
    ccm_config_t *config;  //  borrowed
    ccm_client_t *store;
    char system_id[CCM_UUID_LEN + 1];
    char hostname[256];
    exec_agent_t **agents;
    int nagents;
    int capacity;
    cJSON *projects;               //  project.list of the store: name -> {id, path, ...}
    zhashx_t *contexts;            //  project name -> "status\tbranch" last recorded
    int64_t contexts_verified_ms;  //  when every context was last recorded
    cJSON *profiles;               //  user profiles from executor.profiles_file
    char *claude_settings;         //  Claude Code settings that run ccm-hook, or NULL
    //  With executor.dispatch "router": the router gives the tasks.
    zsock_t *router;            //  DEALER to router.endpoint, or NULL (direct claim)
    int64_t router_beat_ms;     //  heartbeat interval
    int64_t router_heard_ms;    //  last message from the router, or last reconnect
    int64_t router_contact_ms;  //  last message from the router (fencing)
    int64_t fenced_ms;          //  last fencing check
    bool hub_quiet;             //  the router silent for 2 beats: the hub is away
    //  Writes the store did not answer (hub unreachable), resent in order
    //  with their idempotency keys until it does: [verb][body JSON].
    zlistx_t *outbox;
    int64_t outbox_tried_ms;  //  last resend attempt
    int64_t router_sent_ms;   //  last heartbeat sent
} exec_t;

//  exec_profile: built-in profiles and the user's.

//  Finds profile name (user profiles override built-ins). Returns 0 and fills
//  profile (borrowed pointers into static or exec data) or -1.
int exec_profile_find (exec_t *self, const char *name, exec_profile_t *profile);

//  Builds the argv of profile for a task; caller frees with exec_argv_free.
//  Placeholders are replaced inside each element: no shell ever sees them.
char **exec_profile_argv (const exec_profile_t *profile, const char *prompt, const char *task_id,
                          const char *worktree);

//  Inserts first and second at index at of argv (which it reallocates and
//  returns; NULL with argv freed if out of memory).
char **exec_argv_insert (char **argv, int at, const char *first, const char *second);

void exec_argv_free (char **argv);

//  True if the program argv0 can be found (in PATH unless it has a slash).
bool exec_program_exists (const char *argv0);

//  Marks worktree as trusted in Claude Code's config (config_dir/.claude.json),
//  keeping everything else in that file. Returns 0 or -1.
int exec_claude_trust (const char *config_dir, const char *worktree);

//  exec_git: worktrees.

//  Creates (or reuses) the worktree of a task; fills *path and *base (caller
//  frees). Returns 0, or -1 with *error set (caller frees).
int exec_git_worktree (exec_t *self, const char *project, const char *repo, const char *short_id,
                       char **path, char **base, char **error);

//  The branch checked out in repo (caller frees), or NULL (detached, or not a repo).
char *exec_git_branch (const char *repo);

//  How many commits HEAD is behind its upstream (as last fetched), or -1
//  when the branch has no upstream or repo is not a repository.
int exec_git_behind (const char *repo);

//  Returns the files changed in worktree against base, committed or not, as
//  a JSON array (caller owns).
cJSON *exec_git_changed (const char *worktree, const char *base);

//  exec_review: supervisory tasks.

//  The worktree of the task reviewed, if still active and on this machine:
//  fills *path and *base (caller frees). Returns 0, or -1 with *error set.
int exec_review_worktree (exec_t *self, const char *reviewed, char **path, char **base,
                          char **error);

//  Records the report of the review agent (its $CCM_REPORT_FILE, else the
//  last JSON object with a quality_score in output) with the store.
//  Returns 0, or -1 with *error saying what is wrong (caller frees).
int exec_review_record (exec_t *self, exec_agent_t *agent, const char *output, char **error);

//  exec_tmux: the tmux server.

//  Runs tmux on ccm's socket with args (NULL-terminated); returns its exit
//  status and, if out is not NULL, its stdout (caller frees).
int exec_tmux (exec_t *self, char **out, const char *first, ...);

//  Starts argv in a new window named short_id in project's session, with
//  output piped to log_path. Writes the window id. Returns 0 or -1 + *error.
int exec_tmux_spawn (exec_t *self, exec_agent_t *agent, char **argv, char **error);

#endif

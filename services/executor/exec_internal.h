/*  exec_internal: what the executor's modules share.

    The executor runs each task's agent in its own tmux window (on ccm's
    own tmux socket, a session per project) inside its own git worktree,
    watches the pane for its death and exit status, and records results.   */

#ifndef EXEC_INTERNAL_H_INCLUDED
#define EXEC_INTERNAL_H_INCLUDED

#include "ccm_client.h"
#include "ccm_config.h"
#include "ccm_id.h"
#include "ccm_req.h"
#include "executor.h"

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

typedef struct _exec_work_t exec_work_t;

//  One agent the executor watches.
typedef struct {
    char task_id[CCM_UUID_LEN + 1];
    char short_id[EXEC_SHORT_LEN + 1];
    char agent_id[CCM_UUID_LEN + 1];
    int attempt;  //  the task's attempt this agent runs (fencing)
    char *project_id;
    char *project;
    char *worktree;
    char *base;       //  the base branch the worktree started from
    char *review_of;  //  a supervisory task: the task it reviews (its worktree), else NULL
    char *log_path;
    char *lease_path;     //  its lease (ccm-agent), or NULL without a router
    int64_t lease_until;  //  the deadline last written there (boot ms)
    char *profile;
    bool headless;
    char window[32];         //  tmux window id, e.g. "@3"
    int64_t deadline_ms;     //  0: no timeout
    int64_t term_sent_ms;    //  when SIGTERM went to the agent, 0 if not yet
    const char *end_reason;  //  "timeout", "cancelled" or "lease" once it is being stopped
    bool exit_on_idle;       //  its profile's "on_idle": "exit"
    bool exit_sent;          //  /exit typed once its turn was over
    bool finishing;          //  its end is being recorded
    uint64_t seq;            //  the order it was started in (exec_t.spawned)
    int64_t dead_seen_ms;    //  when its pane was first seen dead, its exit status unknown
} exec_agent_t;

typedef struct {
    ccm_config_t *config;  //  borrowed
    zloop_t *loop;
    ccm_req_t *store;   //  asynchronous requests, on the loop
    exec_work_t *work;  //  git and tmux, off the loop
    char system_id[CCM_UUID_LEN + 1];
    char hostname[256];
    char *agent_bin;  //  ccm-agent, next to this binary
    char *lease_dir;  //  run/lease: one file per agent
    exec_agent_t **agents;
    int nagents;
    int capacity;
    zhashx_t *attempts;            //  task id -> exec_attempt_t: what this executor did with it
    zhashx_t *after;               //  task id -> (int) an attempt waiting for an older one to stop
    uint64_t spawned;              //  agents started so far
    cJSON *projects;               //  project.list of the store: name -> {id, path, ...}
    zhashx_t *contexts;            //  project name -> "status\tbranch" last recorded
    int64_t contexts_verified_ms;  //  when every context was last recorded
    cJSON *profiles;               //  user profiles from executor.profiles_file
    char *claude_settings;         //  Claude Code settings that run ccm-hook, or NULL
    bool refreshing, watching, claiming, retrying;  //  such a round is under way
    int checking;                                   //  cancellation checks in flight
    //  With executor.dispatch "router": the router gives the tasks.
    zsock_t *router;          //  DEALER to router.endpoint, or NULL (direct claim)
    int64_t router_beat_ms;   //  heartbeat interval
    int64_t lease_ms;         //  how long a confirmed beat keeps agents' leases
    int64_t poll_ms;          //  the loop's tick
    int64_t router_heard_ms;  //  last message from the router, or last reconnect
    int64_t router_sent_ms;   //  last heartbeat sent
    uint64_t beat_seq;        //  the last heartbeat's number
    int64_t beat_sent[16];    //  boot ms each recent beat was sent, by seq % 16
    int64_t lease_until;      //  boot ms: the lease the router last confirmed
    //  Writes not yet acknowledged, in order: [verb]\n[body JSON]. Kept in
    //  executor.outbox (0600) once one is overdue, so that a restart
    //  while the hub is away loses none; sent first at the next start.
    zlistx_t *unacked;
    bool outbox_saved;  //  the file holds what unacked holds
} exec_t;

//  What this executor did with a task's attempt, so that a repeated RUN
//  (or a repeated confirmation) never starts a second agent.
typedef struct {
    int attempt;
    const char *state;  //  "starting", "running", "done"
    int64_t at_ms;
} exec_attempt_t;

//  exec_work: jobs off the loop.
typedef void (exec_work_fn) (void *arg);

//  Creates the worker of loop (borrowed). Returns NULL on failure.
exec_work_t *exec_work_new (zloop_t *loop);

//  Waits for the jobs under way (their done callbacks run), runs the
//  queued ones here, and frees the worker.
void exec_work_destroy (exec_work_t **self_p);

//  Runs run (arg) in a thread, then done (arg) on the loop.
void exec_work_submit (exec_work_t *self, exec_work_fn *run, exec_work_fn *done, void *arg);

//  How many jobs are queued or running.
size_t exec_work_pending (exec_work_t *self);

//  exec_store: the executor's requests to the store.

//  Sends a read; fn (may be NULL) gets the outcome on the loop.
void exec_store_read (exec_t *self, const char *verb, cJSON *body, ccm_req_fn *fn, void *arg);

//  Sends a write (an idem is added), journaled until acknowledged and
//  retried until the store answers; a refusal is logged and dropped.
//  body is taken; fn (may be NULL) gets the outcome on the loop.
void exec_store_write (exec_t *self, const char *verb, cJSON *body, ccm_req_fn *fn, void *arg);

//  Loads the writes a previous run left unacknowledged in executor.outbox,
//  and sends them first. Tasks they move are marked done in attempts.
void exec_store_load (exec_t *self);

//  Saves the unacknowledged writes if one is overdue (a timer's work).
void exec_store_check (exec_t *self);

//  At shutdown: sends what it can within 2 s, keeps the rest in
//  executor.outbox, and closes the requester.
void exec_store_close (exec_t *self);

//  Moves a task as its holder at attempt; result (taken) may be NULL.
void exec_store_move (exec_t *self, const char *task_id, int attempt, const char *to,
                      const char *reason, cJSON *result);

//  exec_agents: starting, watching and finishing agents.

//  Starts attempt of task_id unless this executor already started it, runs
//  it, or ran it (a RUN repeated, or a confirmation of one it never got).
void exec_agents_run (exec_t *self, const char *task_id, int attempt);

//  Reads every pane (off the loop) and finishes the agents whose pane died,
//  enforces timeouts, cancellations and leases.
void exec_agents_watch (exec_t *self);

//  Asks the store whether the agents' tasks were cancelled meanwhile.
void exec_agents_check_cancelled (exec_t *self);

//  An agents.updated event: types /exit into an agent whose turn is over.
void exec_agents_changed (exec_t *self, const char *json, size_t size);

//  After a restart: adopts live windows, records ended ones, starts the
//  never started (synchronous, before the loop: client is the start-up
//  client).
void exec_agents_reconcile (exec_t *self, ccm_client_t *client);

//  The agent watching task_id, or NULL.
exec_agent_t *exec_agents_of (exec_t *self, const char *task_id);

//  Forgets attempts long done that the router no longer names.
void exec_agents_forget (exec_t *self);

void exec_agent_destroy (exec_agent_t **agent_p);

//  exec_dispatch: the router.

//  Connects (again) to router.endpoint.
void exec_dispatch_connect (exec_t *self);

//  Beats when due, reconnects to a silent router, ends agents whose lease
//  ran out (a timer's work).
void exec_dispatch_tick (exec_t *self);

//  Handles what the router sent (the loop's reader of self->router).
int exec_dispatch_readable (zloop_t *loop, zsock_t *reader, void *arg);

//  Writes a lease file (path) with deadline (boot ms). Returns 0 or -1.
int exec_lease_write (const char *path, int64_t deadline);

//  The deadline in a lease file, or 0 if it cannot be read.
int64_t exec_lease_read (const char *path);

//  exec_claude: Claude Code's start-up and its headless result.

//  Writes the settings file that runs ccm-hook at every hook event.
void exec_claude_settings (exec_t *self);

//  Where Claude Code keeps .claude.json for profile (out: len bytes).
void exec_claude_dir (exec_t *self, exec_profile_t *profile, char *out, size_t len);

//  Whether program is Claude Code.
bool exec_is_claude (const char *program);

//  For headless Claude Code: the result object in the log, found by its
//  "type" whatever the order of keys, as details (caller owns), or NULL.
cJSON *exec_claude_result (const char *path);

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

//  The worktree of the task reviewed (worktree: its worktree.list row,
//  or NULL), if still active and on this machine: fills *path and *base
//  (caller frees). Returns 0, or -1 with *error set.
int exec_review_worktree (exec_t *self, const char *reviewed, cJSON *worktree, char **path,
                          char **base, char **error);

//  The report.add body (caller owns) for the review agent's report: its
//  $CCM_REPORT_FILE, else the last JSON object with a quality_score in
//  output. NULL with *error saying what is wrong (caller frees).
cJSON *exec_review_report (exec_agent_t *agent, const char *output, char **error);

//  exec_tmux: the tmux server.

//  Runs tmux on ccm's socket with args (NULL-terminated); returns its exit
//  status and, if out is not NULL, its stdout (caller frees).
int exec_tmux (exec_t *self, char **out, const char *first, ...);

//  Starts argv in a new window named short_id in project's session, with
//  output piped to log_path. Writes the window id. Returns 0 or -1 + *error.
int exec_tmux_spawn (exec_t *self, exec_agent_t *agent, char **argv, char **error);

#endif

-- ccm's hub schema for a Supabase project (PostgreSQL 15), applied once with
-- the SQL editor or `psql -f`. The synced tables of ccm's local schema
-- (schema/migrations), in PostgreSQL types, plus on every table:
--   * user_id uuid DEFAULT auth.uid() (tasks also created_by): ccm-sync never
--     sends them, so each row belongs to the user whose JWT wrote it;
--   * updated_at, set by the server on every write (ccm_touch): pulls read
--     with a keyset cursor on (updated_at, id), and last writer wins by it;
--   * row-level security: a user reads and writes only rows whose user_id is
--     auth.uid().
-- hook_events, automation_events, task_worktrees, agents, events and
-- idempotency are local only and have no table here.
--
-- supervisory_reports have integer ids local to each machine, so their key
-- here is (origin_system_id, id). systems.hostname and projects.name are
-- unique per machine locally, not across a user's machines, so not here.
-- auth.uid() and the roles anon/authenticated are Supabase's own.

CREATE OR REPLACE FUNCTION public.ccm_touch () RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    -- clock_timestamp, not now(): rows of one transaction still differ.
    NEW.updated_at := clock_timestamp();
    RETURN NEW;
END $$;

CREATE TABLE public.systems (
    id          uuid PRIMARY KEY,
    hostname    text NOT NULL,
    machine_id  text NOT NULL,
    system_type text NOT NULL DEFAULT 'developer'
                CHECK (system_type IN ('developer', 'devops', 'business')),
    tags        jsonb NOT NULL DEFAULT '[]' CHECK (jsonb_typeof(tags) = 'array'),
    status      text NOT NULL DEFAULT 'online' CHECK (status IN ('online', 'offline')),
    capacity    integer NOT NULL DEFAULT 4 CHECK (capacity >= 0),
    created_at  timestamptz NOT NULL DEFAULT now(),
    last_seen   timestamptz,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    user_id     uuid NOT NULL DEFAULT auth.uid()
);
CREATE INDEX systems_sync ON public.systems (updated_at, id);

CREATE TABLE public.projects (
    id         uuid PRIMARY KEY,
    system_id  uuid REFERENCES public.systems (id),
    name       text NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    path       text NOT NULL,
    repo_url   text,
    config     jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(config) = 'object'),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    user_id    uuid NOT NULL DEFAULT auth.uid()
);
CREATE INDEX projects_system ON public.projects (system_id);

CREATE TABLE public.contexts (
    id            uuid PRIMARY KEY,
    system_id     uuid NOT NULL REFERENCES public.systems (id) ON DELETE CASCADE,
    project_name  text NOT NULL,
    project_path  text NOT NULL,
    repo_url      text,
    repo_branch   text,
    last_pulled   timestamptz,
    last_verified timestamptz,
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'stale', 'error')),
    metadata      jsonb NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    user_id       uuid NOT NULL DEFAULT auth.uid(),
    UNIQUE (system_id, project_name)
);

CREATE TABLE public.tasks (
    id                        uuid PRIMARY KEY,
    project_id                uuid REFERENCES public.projects (id),
    system_id                 uuid REFERENCES public.systems (id),   -- the target system
    origin_system_id          uuid,                                  -- the system that made it
    parent_task_id            uuid REFERENCES public.tasks (id),
    requires_project          text,
    requires_context_metadata jsonb NOT NULL DEFAULT '{}'
                              CHECK (jsonb_typeof(requires_context_metadata) = 'object'),
    task_type                 text NOT NULL DEFAULT 'worker'
                              CHECK (task_type IN ('worker', 'supervisory', 'manager')),
    status                    text NOT NULL DEFAULT 'created'
                              CHECK (status IN ('created', 'queued', 'assigned', 'executing',
                                                'complete', 'failed', 'cancelled')),
    status_reason             text,
    prompt                    text NOT NULL,
    input_data                jsonb NOT NULL DEFAULT '{}',
    metadata                  jsonb NOT NULL DEFAULT '{}',
    requires_supabase         boolean NOT NULL DEFAULT false,
    priority                  text NOT NULL DEFAULT 'normal'
                              CHECK (priority IN ('low', 'normal', 'high', 'urgent')),
    attempts                  integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    locked_at                 timestamptz,
    locked_by                 text,
    agent_profile             text CHECK (agent_profile IS NULL OR length(agent_profile) BETWEEN 1 AND 64),
    timeout_s                 integer CHECK (timeout_s IS NULL OR timeout_s > 0),
    created_at                timestamptz NOT NULL DEFAULT now(),
    updated_at                timestamptz NOT NULL DEFAULT now(),
    started_at                timestamptz,
    completed_at              timestamptz,
    created_by                uuid NOT NULL DEFAULT auth.uid(),
    user_id                   uuid NOT NULL DEFAULT auth.uid()
);
CREATE INDEX tasks_target_sync ON public.tasks (system_id, updated_at, id);
CREATE INDEX tasks_project ON public.tasks (project_id);

CREATE TABLE public.task_results (
    id            uuid PRIMARY KEY,
    task_id       uuid NOT NULL REFERENCES public.tasks (id) ON DELETE CASCADE,
    agent_id      text,
    status        text NOT NULL
                  CHECK (status IN ('complete', 'failed', 'cancelled', 'timeout', 'crashed')),
    output        text,
    files_changed jsonb NOT NULL DEFAULT '[]',
    exit_code     integer,
    details       jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    user_id       uuid NOT NULL DEFAULT auth.uid()
);
CREATE INDEX task_results_task ON public.task_results (task_id);

CREATE TABLE public.task_events (
    id         uuid PRIMARY KEY,
    task_id    uuid NOT NULL REFERENCES public.tasks (id) ON DELETE CASCADE,
    event_type text NOT NULL
               CHECK (event_type IN ('created', 'queued', 'assigned', 'started', 'progress',
                                     'completed', 'failed', 'cancelled', 'requeued')),
    event_data jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    user_id    uuid NOT NULL DEFAULT auth.uid()
);
CREATE INDEX task_events_task ON public.task_events (task_id, created_at);

CREATE TABLE public.supervisory_reports (
    origin_system_id uuid NOT NULL,
    id               bigint NOT NULL,
    task_id          uuid NOT NULL REFERENCES public.tasks (id) ON DELETE CASCADE,
    agent_id         text,
    scope            text NOT NULL DEFAULT 'task' CHECK (scope IN ('task', 'project', 'system')),
    quality_score    integer CHECK (quality_score IS NULL OR quality_score BETWEEN 1 AND 10),
    issues           jsonb NOT NULL DEFAULT '[]',
    recommendations  jsonb NOT NULL DEFAULT '[]',
    alert_level      text NOT NULL DEFAULT 'none'
                     CHECK (alert_level IN ('none', 'info', 'warning', 'critical')),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    user_id          uuid NOT NULL DEFAULT auth.uid(),
    PRIMARY KEY (origin_system_id, id)
);

-- Skills are written here (by a user, from any client) and pulled by every
-- machine of that user; ccm-sync never pushes them.
CREATE TABLE public.skills (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name       text NOT NULL CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$'),
    version    text,
    content    text NOT NULL,
    file_path  text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    user_id    uuid NOT NULL DEFAULT auth.uid(),
    UNIQUE (user_id, name)
);
CREATE INDEX skills_sync ON public.skills (updated_at, id);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['systems', 'projects', 'contexts', 'tasks', 'task_results',
                             'task_events', 'supervisory_reports', 'skills']
    LOOP
        EXECUTE format('CREATE TRIGGER %I BEFORE INSERT OR UPDATE ON public.%I'
                       ' FOR EACH ROW EXECUTE FUNCTION public.ccm_touch ()', t || '_touch', t);
        EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE public.%I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format('CREATE POLICY %I ON public.%I FOR ALL TO authenticated'
                       ' USING (user_id = (SELECT auth.uid()))'
                       ' WITH CHECK (user_id = (SELECT auth.uid()))', t || '_own', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON public.%I TO authenticated', t);
        EXECUTE format('REVOKE ALL ON public.%I FROM anon', t);
    END LOOP;
END $$;

"""synchub: a real PostgreSQL 15 with schema/supabase/ applied, behind
tests/fake_postgrest.py, for ccm-sync's tests and bench/sync.py.

    hub = synchub.Hub()          # initdb + pg_ctl in a temp dir, the schema, the server
    alice = hub.add_user("alice@example.com", "pw-alice")
    hub.rest("GET", "/rest/v1/tasks?select=*", token=hub.login(...)["access_token"])
    hub.stop_server(); hub.start_server()   # the same port: "offline" and back
    hub.close()

PostgreSQL runs as the `postgres` user when the tests run as root (initdb
refuses root), listens on a unix socket in the temp dir only, with
fsync off (nothing here must survive a crash of the machine), and is
stopped and removed at close.
"""

import glob
import json
import os
import pwd
import random
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

import psycopg2

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCE_DIR = os.environ.get("CCM_SOURCE_DIR") or os.path.dirname(os.path.dirname(HERE))
PYTHON = os.environ.get("CCM_PYTHON") or "/usr/bin/python3"
PG_BIN = os.environ.get("CCM_PG_BIN") or "/usr/lib/postgresql/15/bin"
SERVER = os.path.join(SOURCE_DIR, "tests", "fake_postgrest.py")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Postgres:
    """A throwaway PostgreSQL cluster."""

    def __init__(self):
        if not os.access(os.path.join(PG_BIN, "initdb"), os.X_OK):
            raise AssertionError(f"PostgreSQL 15 is missing ({PG_BIN}/initdb): "
                                 "run scripts/deps.sh --test")
        self.dir = tempfile.mkdtemp(prefix="ccm-pg-", dir="/tmp")
        self.data = os.path.join(self.dir, "data")
        self.port = random.randint(20000, 60000)
        self.as_user = []
        if os.geteuid() == 0:
            pw = pwd.getpwnam("postgres")
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run([f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres", "--auth=trust",
                   "-E", "UTF8", "--locale=C", "--no-sync"], 60)
        self._run([f"{PG_BIN}/pg_ctl", "-D", self.data, "-l", os.path.join(self.dir, "pg.log"),
                   "-w", "-t", "30", "-o",
                   f"-k {self.dir} -p {self.port} -c listen_addresses='' -c fsync=off"
                   " -c synchronous_commit=off -c full_page_writes=off", "start"], 60)
        self.started = True

    def _run(self, argv, timeout):
        done = subprocess.run(self.as_user + argv, capture_output=True, timeout=timeout,
                              cwd=self.dir)
        if done.returncode != 0:
            raise AssertionError(f"{argv[0]} failed ({done.returncode}): "
                                 f"{done.stdout.decode()[-800:]}{done.stderr.decode()[-800:]}")

    def connect(self):
        con = psycopg2.connect(host=self.dir, port=self.port, dbname="postgres", user="postgres")
        con.autocommit = True
        return con

    def psql_file(self, path):
        done = subprocess.run(["psql", "-h", self.dir, "-p", str(self.port), "-U", "postgres",
                               "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-f", path],
                              capture_output=True, timeout=60)
        if done.returncode != 0:
            raise AssertionError(f"psql -f {path}: {done.stderr.decode()[-1500:]}")

    def close(self):
        if self.started:
            self.started = False
            try:
                self._run([f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "immediate", "-w", "-t",
                           "30", "stop"], 60)
            except (AssertionError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


class Hub:
    """PostgreSQL + schema + the PostgREST-protocol server."""

    def __init__(self, token_ttl=3600):
        self.pg = Postgres()
        self.proc = None
        try:
            for path in sorted(glob.glob(os.path.join(SOURCE_DIR, "tests", "supabase", "*.sql"))):
                self.pg.psql_file(path)
            for path in sorted(glob.glob(os.path.join(SOURCE_DIR, "schema", "supabase", "*.sql"))):
                self.pg.psql_file(path)
            self.db = self.pg.connect()
            self.secret = "test-secret-" + os.urandom(16).hex()
            self.port = free_port()
            self.token_ttl = token_ttl
            self.start_server()
        except BaseException:
            self.close()
            raise

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start_server(self):
        self.log = open(os.path.join(self.pg.dir, "postgrest.log"), "ab")
        self.proc = subprocess.Popen(
            [PYTHON, SERVER, "--port", str(self.port), "--pg-host", self.pg.dir, "--pg-port",
             str(self.pg.port), "--jwt-secret", self.secret, "--token-ttl", str(self.token_ttl),
             "--control"], stdout=subprocess.PIPE, stderr=self.log, stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline().decode().split()
        if len(line) != 3 or line[0] != "READY":
            raise AssertionError(f"fake_postgrest did not start: {line}")
        self.anon_key = line[2]

    def stop_server(self):
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
            self.proc.stdout.close()
            self.proc = None
            self.log.close()

    def close(self):
        self.stop_server()
        if getattr(self, "db", None) is not None:
            self.db.close()
        self.pg.close()

    # ------------------------------------------------------------- helpers

    def add_user(self, email, password):
        with self.db.cursor() as cur:
            cur.execute("INSERT INTO auth.users (email, encrypted_password) VALUES"
                        " (%s, crypt(%s, gen_salt('bf', 4))) RETURNING id::text",
                        (email, password))
            return cur.fetchone()[0]

    def sql(self, query, *args):
        """As the superuser (no RLS): what is really on the hub."""
        with self.db.cursor() as cur:
            cur.execute(query, args)
            return cur.fetchall() if cur.description else None

    def http(self, method, path, body=None, headers=None, timeout=10):
        """(status, parsed JSON or raw bytes, headers)."""
        data = None if body is None else (body if isinstance(body, bytes)
                                          else json.dumps(body).encode())
        req = urllib.request.Request(self.url + path, data=data, method=method)
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
        except urllib.error.HTTPError as e:
            raw, status, hdrs = e.read(), e.code, dict(e.headers)
        try:
            return status, json.loads(raw) if raw else None, hdrs
        except ValueError:
            return status, raw, hdrs

    def rest(self, method, path, token=None, body=None, prefer=None):
        headers = {"apikey": self.anon_key}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        if prefer:
            headers["Prefer"] = prefer
        return self.http(method, path, body, headers)

    def login(self, email, password):
        status, body, _ = self.http("POST", "/auth/v1/token?grant_type=password",
                                    {"email": email, "password": password},
                                    {"apikey": self.anon_key})
        if status != 200:
            raise AssertionError(f"login {email}: {status} {body}")
        return body

    def faults(self, *faults):
        status, body, _ = self.http("POST", "/__test__/faults", list(faults))
        assert status == 200, body

    def stats(self):
        return self.http("GET", "/__test__/stats")[1]


def wait_until(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)

#!/usr/bin/env python3
"""fake_postgrest: a PostgREST-protocol server (plus Supabase's token
endpoint) in front of a real PostgreSQL, for ccm's sync tests and bench.

There is no PostgREST or Supabase package on these machines, so this stands
in for both, following PostgREST's documentation (docs.postgrest.org, v12)
for the subset ccm-sync uses. Every request runs in its own transaction on
PostgreSQL, as PostgREST does: `SET LOCAL ROLE <the JWT's role>`, the claims
in `request.jwt.claims`, then the statement PostgREST would generate, so
row-level security, defaults (auth.uid()), triggers and constraints are
PostgreSQL's own.

What it implements
  * Auth (Supabase GoTrue): POST /auth/v1/token?grant_type=password
    {email, password} and ?grant_type=refresh_token {refresh_token}. Both
    need the `apikey` header. Answers {access_token, token_type, expires_in,
    expires_at, refresh_token, user: {id, email}}; a refresh token is used
    once (rotated), as Supabase does. Errors: 400 {error, error_description}.
  * JWT: HS256 only, checked per request (signature, exp, role); the anon
    key is itself a JWT with role anon. A bad or expired JWT gets 401
    {"code": "PGRST301", "message": "JWT expired" | ...} and a
    WWW-Authenticate header.
  * GET /rest/v1/<table>: select=* or a column list; filters col=op.value
    with eq, neq, gt, gte, lt, lte, in.(a,b) and is.null; order=col.asc|desc,...;
    limit, offset. Body: a JSON array (PostgreSQL's json_agg of the rows).
  * POST /rest/v1/<table>: a JSON object or array (all objects with the
    same keys, else PGRST102), `on_conflict=cols`, `Prefer:
    resolution=merge-duplicates|ignore-duplicates` and `return=minimal|
    representation`; rows go through json_populate_recordset as PostgREST's.
    A key that is not a column: 400 PGRST204.
  * PATCH /rest/v1/<table> with filters: a JSON object; 204 (minimal).
  * Errors: {code, details, hint, message} with PostgREST's status mapping
    (23503/23505 409, 42501 403 (401 for anon), 42P01 404, 40xxx/57xxx 500,
    08xxx 503, other 4xx classes 400...).

What it does not implement
  * DELETE, PUT, RPC, embedded resources, or/and/not filters, Range
    headers, count, CSV, schemas other than public, JWT algorithms other
    than HS256, JWKS, the rest of GoTrue (sign-up, magic links...).

Test controls (only with --control): POST /__test__/faults with a list of
{"method", "path" (a prefix), "kind": "status"|"garbage"|"truncate"|"close",
"status", "body", "times"} answers the next matching requests badly;
POST /__test__/ttl {"seconds"} sets the lifetime of new access tokens;
GET /__test__/stats counts requests by "METHOD /path" and tokens issued.

Usage: fake_postgrest.py --port P --pg-host SOCKETDIR --pg-port N --dbname D
       --jwt-secret S [--control]. Prints "READY <port> <anon key>" when up.
"""

import argparse
import base64
import hashlib
import hmac
import json
import secrets
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2
import psycopg2.errors
import psycopg2.extensions
from psycopg2 import sql

ARGS = None
LOCAL = threading.local()
LOCK = threading.Lock()
FAULTS = []
STATS = {"requests": {}, "tokens": 0, "refreshes": 0}
TTL = {"seconds": 3600}
COLUMNS = {}  # table -> [column names], read once per table


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def jwt_encode(claims):
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    signing = f"{header}.{payload}".encode()
    sig = hmac.new(ARGS.jwt_secret.encode(), signing, hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


class JwtError(Exception):
    pass


def jwt_decode(token):
    parts = token.split(".")
    if len(parts) != 3:
        raise JwtError("Expected 3 parts in JWT; got %d" % len(parts))
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims = json.loads(b64url_decode(parts[1]))
        sig = b64url_decode(parts[2])
    except (ValueError, TypeError):
        raise JwtError("JWT cryptographic operation failed")
    if header.get("alg") != "HS256":
        raise JwtError("Wrong or unsupported encoding algorithm")
    want = hmac.new(ARGS.jwt_secret.encode(), f"{parts[0]}.{parts[1]}".encode(),
                    hashlib.sha256).digest()
    if not hmac.compare_digest(want, sig):
        raise JwtError("JWSInvalidSignature")
    if not isinstance(claims, dict):
        raise JwtError("JWT claims are not an object")
    if "exp" in claims and time.time() >= float(claims["exp"]):
        raise JwtError("JWT expired")
    return claims


def anon_key():
    return jwt_encode({"role": "anon", "iss": "ccm-test", "iat": 0, "exp": 4102444800})


def db():
    """This thread's connection (PostgREST keeps a pool; one per thread here)."""
    con = getattr(LOCAL, "con", None)
    if con is None or con.closed:
        con = psycopg2.connect(host=ARGS.pg_host, port=ARGS.pg_port, dbname=ARGS.dbname,
                               user=ARGS.pg_user)
        con.set_session(autocommit=False)
        with con.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
        con.commit()
        LOCAL.con = con
    return con


def columns_of(table):
    with LOCK:
        if table in COLUMNS:
            return COLUMNS[table]
    con = db()
    with con.cursor() as cur:
        cur.execute("SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = 'public' AND table_name = %s ORDER BY ordinal_position",
                    (table,))
        cols = [r[0] for r in cur.fetchall()]
    con.rollback()
    with LOCK:
        COLUMNS[table] = cols
    return cols


def pg_status(code, authenticated):
    """PostgREST's table of PostgreSQL error codes to HTTP statuses."""
    if code == "42501":
        return 403 if authenticated else 401
    exact = {"23503": 409, "23505": 409, "25006": 405, "42883": 404, "42P01": 404,
             "42P17": 500, "P0001": 400, "53400": 500}
    if code in exact:
        return exact[code]
    prefix = {"08": 503, "09": 500, "0L": 403, "0P": 403, "25": 500, "28": 403, "2D": 500,
              "38": 500, "39": 500, "3B": 500, "40": 500, "53": 503, "54": 500, "55": 500,
              "57": 500, "58": 500, "F0": 500, "HV": 500, "P0": 500, "XX": 500}
    return prefix.get(code[:2], 400)


class ApiError(Exception):
    def __init__(self, status, code, message, details=None, hint=None, headers=None):
        super().__init__(message)
        self.status = status
        self.body = {"code": code, "details": details, "hint": hint, "message": message}
        self.headers = headers or {}


OPS = {"eq": "=", "neq": "<>", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
RESERVED = {"select", "order", "limit", "offset", "on_conflict", "columns"}


def where_clause(table, params):
    cols = columns_of(table)
    parts = []
    values = []
    for key, value in params:
        if key in RESERVED:
            continue
        if key not in cols:
            raise ApiError(400, "42703", f"column {table}.{key} does not exist")
        op, _, arg = value.partition(".")
        if op in OPS:
            parts.append(sql.SQL("{} {} %s").format(sql.Identifier(table, key), sql.SQL(OPS[op])))
            values.append(arg)
        elif op == "in":
            if not (arg.startswith("(") and arg.endswith(")")):
                raise ApiError(400, "PGRST100", f'"failed to parse filter ({value})"',
                               "unexpected end of input expecting \"(\"")
            items = [i.strip().strip('"') for i in arg[1:-1].split(",") if i.strip()]
            parts.append(sql.SQL("{}::text = ANY(%s)").format(sql.Identifier(table, key)))
            values.append(items)
        elif op == "is" and arg in ("null", "true", "false"):
            parts.append(sql.SQL("{} IS " + arg.upper()).format(sql.Identifier(table, key)))
        else:
            raise ApiError(400, "PGRST100", f'"failed to parse filter ({value})"',
                           f"unknown operator {op!r}")
    if not parts:
        return sql.SQL(""), values
    return sql.SQL(" WHERE ") + sql.SQL(" AND ").join(parts), values


def order_clause(table, text):
    cols = columns_of(table)
    terms = []
    for term in text.split(","):
        name, _, direction = term.partition(".")
        if name not in cols:
            raise ApiError(400, "42703", f"column {table}.{name} does not exist")
        direction = direction or "asc"
        if direction not in ("asc", "desc"):
            raise ApiError(400, "PGRST100", f'"failed to parse order ({text})"')
        terms.append(sql.SQL("{} " + direction.upper()).format(sql.Identifier(name)))
    return sql.SQL(" ORDER BY ") + sql.SQL(", ").join(terms)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "fake-postgrest/12"

    def log_message(self, fmt, *args):  # quiet; errors are in the responses
        if ARGS.verbose:
            sys.stderr.write("%s\n" % (fmt % args))

    # ------------------------------------------------------------- plumbing

    def reply(self, status, body=None, headers=None):
        data = b"" if body is None else (body if isinstance(body, bytes)
                                         else json.dumps(body).encode())
        self.send_response(status)
        if body is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if data:
            self.wfile.write(data)

    def read_body(self):
        """The request body, read once: it is read before any answer, so an
        early error never leaves it on a kept-alive connection."""
        if getattr(self, "_body", None) is None:
            length = int(self.headers.get("Content-Length") or 0)
            self._body = self.rfile.read(length) if length else b""
        return self._body

    def fault(self, method, path):
        """Applies the first matching fault, if any; True if it answered."""
        with LOCK:
            for fault in FAULTS:
                if fault.get("method", method) == method and path.startswith(fault.get("path", "")):
                    fault["times"] = fault.get("times", 1) - 1
                    if fault["times"] <= 0:
                        FAULTS.remove(fault)
                    break
            else:
                return False
        self.read_body()
        kind = fault.get("kind", "status")
        if kind == "status":
            self.reply(fault.get("status", 503), fault.get("body"))
        elif kind == "garbage":
            self.wfile.write(b"\x00\x17garbage, not HTTP at all\r\n\r\n")
            self.close_connection = True
        elif kind == "truncate":
            self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: 1000\r\n\r\n[{\"id\": \"cut")
            self.close_connection = True
        else:  # close: no answer at all
            self.close_connection = True
        return True

    def count(self, method, path):
        key = f"{method} {path}"
        with LOCK:
            STATS["requests"][key] = STATS["requests"].get(key, 0) + 1

    def dispatch(self, method):
        url = urllib.parse.urlsplit(self.path)
        path = url.path
        params = urllib.parse.parse_qsl(url.query, keep_blank_values=True)
        self.count(method, path)
        self._body = None
        self.read_body()
        try:
            if path.startswith("/__test__/") and ARGS.control:
                return self.control(method, path)
            if self.fault(method, path):
                return
            if path == "/auth/v1/token" and method == "POST":
                return self.token(dict(params))
            if path.startswith("/rest/v1/"):
                return self.rest(method, path[len("/rest/v1/"):], params)
            self.reply(404, {"code": "PGRST125", "details": None, "hint": None,
                             "message": f"Invalid path specified in request URL: {path}"})
        except ApiError as e:
            self.reply(e.status, e.body, e.headers)
        except (BrokenPipeError, ConnectionResetError):
            pass

    def do_GET(self):
        self.dispatch("GET")

    def do_POST(self):
        self.dispatch("POST")

    def do_PATCH(self):
        self.dispatch("PATCH")

    def do_DELETE(self):
        self.dispatch("DELETE")

    # -------------------------------------------------------------- control

    def control(self, method, path):
        body = self.read_body()
        if path == "/__test__/faults" and method == "POST":
            with LOCK:
                FAULTS.extend(json.loads(body or b"[]"))
            return self.reply(200, {"ok": True})
        if path == "/__test__/ttl" and method == "POST":
            TTL["seconds"] = json.loads(body)["seconds"]
            return self.reply(200, {"ok": True})
        if path == "/__test__/stats":
            with LOCK:
                return self.reply(200, json.loads(json.dumps(STATS)))
        self.reply(404, {"message": "no such control"})

    # ----------------------------------------------------------------- auth

    def check_apikey(self):
        key = self.headers.get("apikey")
        if not key:
            raise ApiError(401, "PGRST302", "No API key found in request",
                           hint="No `apikey` request header or url param was found.")
        try:
            jwt_decode(key)
        except JwtError:
            raise ApiError(401, "PGRST301", "Invalid API key")

    def issue(self, cur, user_id, email):
        now = int(time.time())
        ttl = int(TTL["seconds"])
        token = jwt_encode({"sub": user_id, "email": email, "role": "authenticated",
                            "aud": "authenticated", "iat": now, "exp": now + ttl})
        refresh = secrets.token_urlsafe(24)
        cur.execute("INSERT INTO auth.refresh_tokens (token, user_id) VALUES (%s, %s)",
                    (refresh, user_id))
        with LOCK:
            STATS["tokens"] += 1
        return {"access_token": token, "token_type": "bearer", "expires_in": ttl,
                "expires_at": now + ttl, "refresh_token": refresh,
                "user": {"id": user_id, "email": email, "role": "authenticated"}}

    def token(self, params):
        self.check_apikey()
        try:
            body = json.loads(self.read_body() or b"{}")
        except ValueError:
            return self.reply(400, {"error": "invalid_request",
                                    "error_description": "Could not read the body as JSON"})
        grant = params.get("grant_type")
        con = db()
        try:
            with con.cursor() as cur:
                if grant == "password":
                    cur.execute("SELECT id::text, email FROM auth.users WHERE email = %s AND"
                                " encrypted_password = crypt(%s, encrypted_password)",
                                (body.get("email", ""), body.get("password", "")))
                    row = cur.fetchone()
                    if not row:
                        con.rollback()
                        return self.reply(400, {"error": "invalid_grant",
                                                "error_description": "Invalid login credentials"})
                elif grant == "refresh_token":
                    cur.execute("UPDATE auth.refresh_tokens SET revoked = true WHERE token = %s"
                                " AND NOT revoked RETURNING user_id::text",
                                (body.get("refresh_token", ""),))
                    found = cur.fetchone()
                    if not found:
                        con.rollback()
                        return self.reply(400, {"error": "invalid_grant",
                                                "error_description":
                                                    "Invalid Refresh Token: Refresh Token Not Found"})
                    cur.execute("SELECT id::text, email FROM auth.users WHERE id = %s", found)
                    row = cur.fetchone()
                    with LOCK:
                        STATS["refreshes"] += 1
                else:
                    con.rollback()
                    return self.reply(400, {"error": "unsupported_grant_type",
                                            "error_description": "unsupported grant type"})
                answer = self.issue(cur, row[0], row[1])
            con.commit()
        except psycopg2.Error:
            con.rollback()
            raise
        self.reply(200, answer)

    def claims(self):
        self.check_apikey()
        auth = self.headers.get("Authorization", "")
        token = auth[7:] if auth.lower().startswith("bearer ") else self.headers.get("apikey")
        try:
            claims = jwt_decode(token)
        except JwtError as e:
            raise ApiError(401, "PGRST301", str(e), headers={
                "WWW-Authenticate": f'Bearer error="invalid_token", error_description="{e}"'})
        role = claims.get("role", "anon")
        if role not in ("anon", "authenticated", "service_role"):
            raise ApiError(401, "PGRST301", f'role "{role}" does not exist')
        return claims, role

    # ----------------------------------------------------------------- rest

    def rest(self, method, table, params):
        claims, role = self.claims()
        if not columns_of(table):
            raise ApiError(404, "PGRST205",
                           f"Could not find the table 'public.{table}' in the schema cache")
        con = db()
        try:
            with con.cursor() as cur:
                cur.execute("SET LOCAL ROLE " + role)
                cur.execute("SELECT set_config('request.jwt.claims', %s, true)",
                            (json.dumps(claims),))
                if method == "GET":
                    status, body = self.rest_get(cur, table, params)
                elif method == "POST":
                    status, body = self.rest_post(cur, table, params)
                elif method == "PATCH":
                    status, body = self.rest_patch(cur, table, params)
                else:
                    raise ApiError(405, "PGRST117", f"Unsupported HTTP method: {method}")
            con.commit()
        except ApiError:
            con.rollback()
            raise
        except psycopg2.Error as e:
            con.rollback()
            if e.pgcode is None:  # the connection itself failed
                LOCAL.con = None
                raise ApiError(503, "PGRST001", "Database client error. Retrying the connection.")
            diag = e.diag
            raise ApiError(pg_status(e.pgcode, role != "anon"), e.pgcode,
                           diag.message_primary or str(e), diag.message_detail, diag.message_hint)
        headers = {}
        if method == "GET":
            headers["Content-Range"] = f"0-{max(len(body) - 1, 0)}/*" if body else "*/*"
        self.reply(status, body, headers)

    def rest_get(self, cur, table, params):
        p = dict(params)
        cols = columns_of(table)
        select = p.get("select", "*")
        if select == "*":
            target = sql.SQL("*")
        else:
            names = select.split(",")
            for n in names:
                if n not in cols:
                    raise ApiError(400, "42703", f"column {table}.{n} does not exist")
            target = sql.SQL(", ").join(map(sql.Identifier, names))
        where, values = where_clause(table, params)
        query = sql.SQL("SELECT {} FROM public.{}").format(target, sql.Identifier(table)) + where
        if "order" in p:
            query += order_clause(table, p["order"])
        for word in ("limit", "offset"):
            if word in p:
                if not p[word].isdigit():
                    raise ApiError(400, "PGRST100", f'"failed to parse {word} ({p[word]})"')
                query += sql.SQL(f" {word.upper()} %s")
                values.append(int(p[word]))
        query = sql.SQL("SELECT coalesce(json_agg(_t), '[]') FROM (") + query + sql.SQL(") _t")
        cur.execute(query, values)
        return 200, cur.fetchone()[0]

    def prefer(self):
        prefs = {}
        for part in self.headers.get("Prefer", "").split(","):
            k, _, v = part.strip().partition("=")
            if k:
                prefs[k] = v
        return prefs

    def parse_json(self):
        raw = self.read_body()
        try:
            payload = json.loads(raw)
        except ValueError as e:
            raise ApiError(400, "PGRST102", "Empty or invalid json", str(e))
        return payload

    def rest_post(self, cur, table, params):
        payload = self.parse_json()
        rows = payload if isinstance(payload, list) else [payload]
        if not rows or not all(isinstance(r, dict) for r in rows):
            raise ApiError(400, "PGRST102", "Empty or invalid json")
        keys = list(rows[0].keys())
        if any(set(r.keys()) != set(keys) for r in rows):
            raise ApiError(400, "PGRST102", "All object keys must match")
        cols = columns_of(table)
        for k in keys:
            if k not in cols:
                raise ApiError(400, "PGRST204",
                               f"Could not find the '{k}' column of '{table}' in the schema cache")
        prefs = self.prefer()
        ident = sql.SQL(", ").join(map(sql.Identifier, keys))
        query = sql.SQL("INSERT INTO public.{} ({}) SELECT {} FROM"
                        " json_populate_recordset(NULL::public.{}, %s) _").format(
            sql.Identifier(table), ident, ident, sql.Identifier(table))
        resolution = prefs.get("resolution")
        if resolution in ("merge-duplicates", "ignore-duplicates"):
            conflict = dict(params).get("on_conflict")
            if conflict:
                targets = conflict.split(",")
                for t in targets:
                    if t not in cols:
                        raise ApiError(400, "42703", f"column {table}.{t} does not exist")
            else:
                cur.execute("SELECT a.attname FROM pg_index i JOIN pg_attribute a ON"
                            " a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)"
                            " WHERE i.indrelid = %s::regclass AND i.indisprimary",
                            (f"public.{table}",))
                targets = [r[0] for r in cur.fetchall()]
            query += sql.SQL(" ON CONFLICT ({})").format(
                sql.SQL(", ").join(map(sql.Identifier, targets)))
            if resolution == "ignore-duplicates":
                query += sql.SQL(" DO NOTHING")
            else:
                query += sql.SQL(" DO UPDATE SET ") + sql.SQL(", ").join(
                    sql.SQL("{} = EXCLUDED.{}").format(sql.Identifier(k), sql.Identifier(k))
                    for k in keys)
        if prefs.get("return") == "representation":
            query = sql.SQL("WITH _ins AS (") + query + sql.SQL(
                " RETURNING *) SELECT coalesce(json_agg(_ins), '[]') FROM _ins")
            cur.execute(query, (json.dumps(rows),))
            return 201, cur.fetchone()[0]
        cur.execute(query, (json.dumps(rows),))
        return 201, None

    def rest_patch(self, cur, table, params):
        payload = self.parse_json()
        if not isinstance(payload, dict) or not payload:
            raise ApiError(400, "PGRST102", "Empty or invalid json")
        cols = columns_of(table)
        for k in payload:
            if k not in cols:
                raise ApiError(400, "PGRST204",
                               f"Could not find the '{k}' column of '{table}' in the schema cache")
        where, values = where_clause(table, params)
        keys = list(payload)
        sets = sql.SQL(", ").join(sql.SQL("{} = _.{}").format(sql.Identifier(k), sql.Identifier(k))
                                  for k in keys)
        query = (sql.SQL("UPDATE public.{} SET ").format(sql.Identifier(table)) + sets
                 + sql.SQL(" FROM (SELECT * FROM json_populate_record(NULL::public.{}, %s)) _")
                 .format(sql.Identifier(table)))
        query += where
        cur.execute(query, [json.dumps(payload)] + values)
        return 204, None


def main():
    global ARGS
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--pg-host", required=True)
    parser.add_argument("--pg-port", type=int, required=True)
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--dbname", default="postgres")
    parser.add_argument("--jwt-secret", required=True)
    parser.add_argument("--token-ttl", type=int, default=3600)
    parser.add_argument("--control", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    ARGS = parser.parse_args()
    TTL["seconds"] = ARGS.token_ttl
    server = ThreadingHTTPServer(("127.0.0.1", ARGS.port), Handler)
    server.daemon_threads = True
    print(f"READY {server.server_address[1]} {anon_key()}", flush=True)
    try:
        server.serve_forever(poll_interval=0.1)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()

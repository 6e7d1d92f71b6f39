-- etcd's auth store: users, roles with their key permissions, and settings (whether auth is
-- enabled, the key that signs this node's tokens). Each user and role is one object that
-- replicas merge (src/shim/auth/objects.py): `state` holds what merging needs (when it was
-- created, deleted, and each grant set or revoked); the other columns show it to people.
-- A deleted user or role stays as a tombstone (deleted = 1) so that older writes arriving
-- later from a peer cannot bring it back.

CREATE TABLE auth_user (
    name        TEXT    PRIMARY KEY,
    password    TEXT    NOT NULL,     -- salted scrypt hash; '' without password (shim sql shows NULL)
    roles       TEXT    NOT NULL,     -- JSON array of the user's role names, sorted
    no_password INTEGER NOT NULL,     -- 1: created with --no-password (certificate users)
    deleted     INTEGER NOT NULL,     -- 1: a tombstone
    hlc         INTEGER NOT NULL,     -- hybrid logical clock of the latest write
    origin      TEXT    NOT NULL,     -- node id of the node that made it
    state       TEXT    NOT NULL      -- JSON: stamps of creation, deletion, password and grants
) WITHOUT ROWID;

CREATE TABLE auth_role (
    name        TEXT    PRIMARY KEY,
    permissions TEXT    NOT NULL,     -- JSON array, etcd's order: "READ /k", "READWRITE [/p/, /p0)"
    deleted     INTEGER NOT NULL,
    hlc         INTEGER NOT NULL,
    origin      TEXT    NOT NULL,
    state       TEXT    NOT NULL      -- JSON: stamps of creation, deletion and every grant
) WITHOUT ROWID;

-- 'enabled' ('0' or '1', replicated) and 'token_key' (hex, this node's own; shim sql shows NULL).
CREATE TABLE auth_setting (
    name   TEXT    PRIMARY KEY,
    value  TEXT    NOT NULL,
    hlc    INTEGER NOT NULL,
    origin TEXT    NOT NULL
) WITHOUT ROWID;

-- This node's auth revision (etcd's: 1 on a new store, +1 with every change) and the version
-- readers compare to know whether the auth tables changed (any change, enabling included).
INSERT OR IGNORE INTO meta (name, value) VALUES ('auth_revision', 1), ('auth_version', 1);

-- For people: the users and their roles, without the password hash.
CREATE VIEW auth_users AS
    SELECT name, roles, no_password FROM auth_user WHERE deleted = 0;

-- Replication carries auth objects as entries of their own kind ('auth'; '' for key-value
-- writes): the key names the object ('user/alice', 'role/app', 'setting/enabled'), the value
-- is its state, and a user's password hash travels apart, in `secret` (shim sql shows NULL).
ALTER TABLE repl_entry ADD COLUMN kind TEXT NOT NULL DEFAULT '';
ALTER TABLE repl_entry ADD COLUMN secret TEXT;

DROP VIEW replication_log;
CREATE VIEW replication_log AS
    SELECT e.ingest, e.origin, e.seq, e.hlc, (e.hlc >> 16) AS wall_ms, CAST(e.key AS TEXT) AS key,
           CASE e.deleted WHEN 1 THEN 'DELETE' ELSE 'PUT' END AS event,
           CASE WHEN e.kind != '' THEN e.kind WHEN e.ops IS NULL THEN 'whole' ELSE 'fields' END
               AS kind,
           CAST(CASE WHEN e.value_in_log = 0 THEN e.value
                     ELSE (SELECT l.value FROM log l WHERE l.key = e.key AND l.hlc = e.hlc)
                END AS TEXT) AS value,
           e.ops, e.uid, COALESCE(e.received_from, 'local') AS received_from, e.skewed, e.outcome
    FROM repl_entry e;

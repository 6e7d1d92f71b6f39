-- etcd's auth store: users, roles with their key permissions, whether auth is enabled, and the
-- key that signs tokens. Each user, role and setting is one object written whole, stamped with
-- the hybrid clock of the write and the node that made it, so replicas resolve concurrent
-- writes the same way (the later stamp wins); a deleted user or role stays as a tombstone
-- (deleted = 1) so that an older write arriving later cannot bring it back.

CREATE TABLE auth_user (
    name        TEXT    PRIMARY KEY,
    password    TEXT    NOT NULL,     -- salted scrypt hash; '' without password (hidden by shim sql)
    no_password INTEGER NOT NULL,     -- 1: created with --no-password (certificate users)
    roles       TEXT    NOT NULL,     -- JSON array of role names, sorted
    epoch       TEXT    NOT NULL,     -- random; new on creation and password change: tokens name it
    deleted     INTEGER NOT NULL,     -- 1: a tombstone
    hlc         INTEGER NOT NULL,     -- hybrid logical clock of the write
    origin      TEXT    NOT NULL      -- node id of the node that wrote it
) WITHOUT ROWID;

CREATE TABLE auth_role (
    name        TEXT    PRIMARY KEY,
    permissions TEXT    NOT NULL,     -- JSON array of {"type", "key", "range_end"} (hex), in etcd's order
    deleted     INTEGER NOT NULL,
    hlc         INTEGER NOT NULL,
    origin      TEXT    NOT NULL
) WITHOUT ROWID;

-- 'enabled' ('0' or '1') and 'token_key' (hex; hidden by shim sql).
CREATE TABLE auth_setting (
    name   TEXT    PRIMARY KEY,
    value  TEXT    NOT NULL,
    hlc    INTEGER NOT NULL,
    origin TEXT    NOT NULL
) WITHOUT ROWID;

-- This node's auth revision (etcd's: 1 on a new store, +1 with every change) and the version
-- readers compare to know whether the auth tables changed (any change, enabling included).
INSERT OR IGNORE INTO meta (name, value) VALUES ('auth_revision', 1), ('auth_version', 1);

-- For people: users and their roles, without the password hash.
CREATE VIEW auth_users AS
    SELECT name, roles, no_password FROM auth_user WHERE deleted = 0;

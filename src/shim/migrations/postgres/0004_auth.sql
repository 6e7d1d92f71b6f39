-- etcd's auth store (see the SQLite migration 0007_auth for the meaning of every column).

CREATE TABLE auth_user (
    name        text    PRIMARY KEY,
    password    text    NOT NULL,
    roles       text    NOT NULL,
    no_password boolean NOT NULL,
    deleted     boolean NOT NULL,
    hlc         bigint  NOT NULL,
    origin      text    NOT NULL,
    state       text    NOT NULL
);

CREATE TABLE auth_role (
    name        text    PRIMARY KEY,
    permissions text    NOT NULL,
    deleted     boolean NOT NULL,
    hlc         bigint  NOT NULL,
    origin      text    NOT NULL,
    state       text    NOT NULL
);

CREATE TABLE auth_setting (
    name   text   PRIMARY KEY,
    value  text   NOT NULL,
    hlc    bigint NOT NULL,
    origin text   NOT NULL
);

INSERT INTO meta (name, value) VALUES ('auth_revision', '1'), ('auth_version', '1')
    ON CONFLICT (name) DO NOTHING;

CREATE VIEW auth_users AS
    SELECT name, roles, no_password FROM auth_user WHERE NOT deleted;

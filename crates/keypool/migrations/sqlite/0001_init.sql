-- Upstream API keys. `secret` is the key material; it never leaves the server
-- except in the Authorization header sent upstream. Counters are totals that the
-- running server adds to asynchronously (never per request).
CREATE TABLE keys (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    secret            TEXT    NOT NULL UNIQUE,
    label             TEXT,
    rpm               INTEGER,
    tpm               INTEGER,
    enabled           INTEGER NOT NULL DEFAULT 1,
    requests          INTEGER NOT NULL DEFAULT 0,
    successes         INTEGER NOT NULL DEFAULT 0,
    failures          INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created_at        INTEGER NOT NULL,
    last_used_at      INTEGER
);

-- Gateway tokens callers present as their api_key. Only the SHA-256 of a token
-- is kept; `prefix` lets an operator recognise one in `tokens list`.
CREATE TABLE tokens (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL,
    hash        TEXT    NOT NULL UNIQUE,
    prefix      TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

-- A single counter bumped whenever an operator changes keys or tokens, so a
-- running server notices a CLI's change with one tiny query instead of
-- re-reading every key. Counter flushes do not touch the watched columns.
CREATE TABLE revision (
    id    INTEGER PRIMARY KEY CHECK (id = 1),
    value INTEGER NOT NULL
);
INSERT INTO revision (id, value) VALUES (1, 0);

CREATE TRIGGER keys_insert AFTER INSERT ON keys
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER keys_delete AFTER DELETE ON keys
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER keys_update AFTER UPDATE OF secret, label, rpm, tpm, enabled ON keys
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER tokens_insert AFTER INSERT ON tokens
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER tokens_delete AFTER DELETE ON tokens
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;
CREATE TRIGGER tokens_update AFTER UPDATE OF name, hash, revoked_at ON tokens
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;

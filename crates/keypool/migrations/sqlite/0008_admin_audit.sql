-- What operators changed through the admin API: who (the admin token's
-- fingerprint and the client's address), what (an action on a target, and
-- the fields it set) and when (Unix milliseconds). Never key material or
-- gateway tokens: keys and tokens by id, changed fields by name and value
-- only for settings.
CREATE TABLE admin_audit (
    id          INTEGER PRIMARY KEY,
    at          INTEGER NOT NULL,
    actor       TEXT    NOT NULL,
    client_addr TEXT,
    action      TEXT    NOT NULL,  -- e.g. keys.add, keys.edit, tokens.revoke
    target_id   INTEGER,           -- the key's or token's id
    details     TEXT    NOT NULL   -- JSON object: the fields set, counts
);

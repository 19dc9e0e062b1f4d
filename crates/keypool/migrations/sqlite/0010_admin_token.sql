-- The admin token used when none is configured (`admin_token`,
-- KEYPOOL_ADMIN_TOKEN): only its SHA-256 digest (hex), never the token.
-- One row at most: `keypool serve` inserts it the first time,
-- `keypool admin token` replaces it; running servers reread it.
CREATE TABLE admin_token (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    sha256     TEXT    NOT NULL,
    created_at INTEGER NOT NULL   -- Unix milliseconds
);

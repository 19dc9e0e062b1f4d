-- Further admin tokens beside the one in `admin_token` (or the configured
-- `admin_token` setting): `keypool admin tokens create NAME [--read-only]`.
-- Only each token's SHA-256 digest (hex) is kept, never the token.
--   read_only:  TRUE for a viewer's token: it reads the admin API and the
--               dashboard and changes nothing
--   revoked_at: Unix milliseconds; a revoked token is refused at the running
--               servers' next sync
CREATE TABLE admin_tokens (
    id         BIGSERIAL PRIMARY KEY,
    name       TEXT    NOT NULL UNIQUE,
    sha256     TEXT    NOT NULL UNIQUE,
    read_only  BOOLEAN NOT NULL,
    created_at BIGINT  NOT NULL,   -- Unix milliseconds
    revoked_at BIGINT
);

-- PostgreSQL's copy of migrations/sqlite/0007_keys_encrypted.sql (the
-- reasons are there). Upstream keys encrypted at rest: `secret` holds
-- base64(nonce || ciphertext) when `secret_version` is not 0, and
-- `fingerprint` (HMAC) finds duplicates without the plaintext.
ALTER TABLE keys ADD COLUMN secret_version BIGINT NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN fingerprint TEXT;
CREATE UNIQUE INDEX keys_fingerprint ON keys (fingerprint);

-- Upstream keys encrypted at rest (src/crypt). With a master key set,
-- `secret` holds base64(nonce || AES-256-GCM ciphertext) sealed under the
-- master key whose version is `secret_version`, with the row's id as
-- associated data; 0 means `secret` is the key in clear (no master key).
-- Text in the same column, not a BLOB: the column stays NOT NULL UNIQUE
-- and every query reads it the same way on both backends, and a SQLite
-- table rebuild (to drop the column) is avoided.
-- `fingerprint` is HMAC-SHA256 of the key under a subkey of the master
-- key: `keys add` finds a duplicate by it when keys are encrypted. NULL
-- for clear rows (both backends allow many NULLs in a UNIQUE index).
-- The keys_update trigger already watches `secret`, which changes with
-- every encryption and rotation, so a running server re-reads its keys.
ALTER TABLE keys ADD COLUMN secret_version INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN fingerprint TEXT;
CREATE UNIQUE INDEX keys_fingerprint ON keys (fingerprint);

-- Per-key account headers: sent upstream as OpenAI-Organization and
-- OpenAI-Project with the key (a key can belong to several organizations).
ALTER TABLE keys ADD COLUMN organization TEXT;
ALTER TABLE keys ADD COLUMN project TEXT;

DROP TRIGGER keys_update ON keys;
CREATE TRIGGER keys_update
AFTER UPDATE OF secret, label, rpm, tpm, enabled, rpd, max_inflight, weight, budget_micros, expires_at,
                organization, project ON keys
    FOR EACH ROW EXECUTE FUNCTION bump_revision();

-- What the running server learned about each key, in wall-clock time
-- (Unix milliseconds), written by its background writer and read back at
-- start, so a restart neither sends a known-dead key a request nor
-- over-sends a key used in the last minute; `keys list` reads it too.
-- A table of its own: the server's writes never bump `revision`.
CREATE TABLE key_state (
    key_id          BIGINT  PRIMARY KEY REFERENCES keys (id) ON DELETE CASCADE,
    health          TEXT    NOT NULL,          -- active, invalid or exhausted
    reason          TEXT,                      -- why the key is not active
    cooling_until   BIGINT,                    -- no request before this
    next_probe_at   BIGINT,                    -- invalid/exhausted: next probe
    probe_every_ms  BIGINT,
    rpm_learned     BIGINT,                    -- x-ratelimit-limit-requests
    rpm_used        BIGINT  NOT NULL DEFAULT 0, -- requests counted against the key...
    rpm_used_until  BIGINT,                    -- ...until this instant
    tpm_learned     BIGINT,
    tpm_used        BIGINT  NOT NULL DEFAULT 0,
    tpm_used_until  BIGINT,
    day             BIGINT  NOT NULL DEFAULT 0, -- UTC day (Unix days) of day_count
    day_count       BIGINT  NOT NULL DEFAULT 0, -- requests sent that day (for rpd)
    updated_at      BIGINT  NOT NULL
);

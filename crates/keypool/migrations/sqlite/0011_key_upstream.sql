-- The upstream (an `[[upstreams]]` name) a key belongs to; NULL: the
-- default upstream (the first configured, or the single `upstream`), which
-- is what every key added before upstreams existed belongs to.
ALTER TABLE keys ADD COLUMN upstream TEXT;

DROP TRIGGER keys_update;
CREATE TRIGGER keys_update
AFTER UPDATE OF secret, label, rpm, tpm, enabled, rpd, max_inflight, weight, budget_micros, expires_at,
                organization, project, upstream ON keys
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;

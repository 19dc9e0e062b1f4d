-- Scheduler settings per key, and spend tracked against a budget.
-- Money is kept in micro-USD integers so sums never drift.
ALTER TABLE keys ADD COLUMN rpd INTEGER;
ALTER TABLE keys ADD COLUMN max_inflight INTEGER;
ALTER TABLE keys ADD COLUMN weight INTEGER;
ALTER TABLE keys ADD COLUMN budget_micros INTEGER;
ALTER TABLE keys ADD COLUMN spent_micros INTEGER NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN expires_at INTEGER;

DROP TRIGGER keys_update;
CREATE TRIGGER keys_update
AFTER UPDATE OF secret, label, rpm, tpm, enabled, rpd, max_inflight, weight, budget_micros, expires_at ON keys
BEGIN UPDATE revision SET value = value + 1 WHERE id = 1; END;

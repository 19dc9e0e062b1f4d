-- Scheduler settings per key, and spend tracked against a budget.
-- Money is kept in micro-USD integers so sums never drift.
ALTER TABLE keys ADD COLUMN rpd BIGINT;
ALTER TABLE keys ADD COLUMN max_inflight BIGINT;
ALTER TABLE keys ADD COLUMN weight BIGINT;
ALTER TABLE keys ADD COLUMN budget_micros BIGINT;
ALTER TABLE keys ADD COLUMN spent_micros BIGINT NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN expires_at BIGINT;

DROP TRIGGER keys_update ON keys;
CREATE TRIGGER keys_update
AFTER UPDATE OF secret, label, rpm, tpm, enabled, rpd, max_inflight, weight, budget_micros, expires_at ON keys
    FOR EACH ROW EXECUTE FUNCTION bump_revision();

-- Gateway tokens become tenants: what each may use and spend.
--   models:        JSON array of model globs the token may use; NULL: every model
--   networks:      JSON array of CIDRs the token may be used from; NULL: anywhere
--   rpm, tpm, rpd: the token's own limits (requests per minute, tokens per
--                  minute, requests per day in the configured time zone); NULL: none
--   max_inflight:  most requests of the token in flight at once; NULL: no cap
--   budget_micros: spend allowed per budget_period, micro-USD; NULL: no budget
--   budget_period: total, daily or monthly (days and months begin in `time_zone`)
--   expires_at:    Unix seconds; NULL: never
--   priority:      its place in the wait queue: higher is served first
--   enabled:       a disabled token is refused (401) until enabled again
ALTER TABLE tokens ADD COLUMN models        TEXT;
ALTER TABLE tokens ADD COLUMN networks      TEXT;
ALTER TABLE tokens ADD COLUMN rpm           BIGINT;
ALTER TABLE tokens ADD COLUMN tpm           BIGINT;
ALTER TABLE tokens ADD COLUMN rpd           BIGINT;
ALTER TABLE tokens ADD COLUMN max_inflight  BIGINT;
ALTER TABLE tokens ADD COLUMN budget_micros BIGINT;
ALTER TABLE tokens ADD COLUMN budget_period TEXT    NOT NULL DEFAULT 'total';
ALTER TABLE tokens ADD COLUMN expires_at    BIGINT;
ALTER TABLE tokens ADD COLUMN priority      BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN enabled       BOOLEAN NOT NULL DEFAULT TRUE;

DROP TRIGGER tokens_update ON tokens;
CREATE TRIGGER tokens_update
AFTER UPDATE OF name, hash, revoked_at, models, networks, rpm, tpm, rpd, max_inflight, budget_micros,
                budget_period, expires_at, priority, enabled ON tokens
    FOR EACH ROW EXECUTE FUNCTION bump_revision();

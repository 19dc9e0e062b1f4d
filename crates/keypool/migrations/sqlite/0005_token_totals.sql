-- Each gateway token's totals, added by the request log's writer in the
-- same transaction as the records they count (so they always agree with
-- the log, after a crash too). Not in the tokens_update trigger's columns:
-- usage never bumps `revision`.
ALTER TABLE tokens ADD COLUMN requests          INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN successes         INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN failures          INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN prompt_tokens     INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN completion_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN spent_micros      INTEGER NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN last_used_at      INTEGER;  -- Unix seconds

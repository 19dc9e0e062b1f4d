-- Each gateway token's totals, added by the request log's writer in the
-- same transaction as the records they count (so they always agree with
-- the log, after a crash too). Not in the tokens_update trigger's columns:
-- usage never bumps `revision`.
ALTER TABLE tokens ADD COLUMN requests          BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN successes         BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN failures          BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN prompt_tokens     BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN completion_tokens BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN spent_micros      BIGINT  NOT NULL DEFAULT 0;
ALTER TABLE tokens ADD COLUMN last_used_at      BIGINT;   -- Unix seconds

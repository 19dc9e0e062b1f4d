-- Statistics kept beside the request log, so reading them never scans it:
-- one row per (dimension, span, bucket, subject), added to by the record
-- writer, which sums them in memory and adds them at most every second
-- (they lag the log by that much, never lead it).
--   dimension: key, token or model
--   span:      minute, hour or day
--   bucket:    the span's start, Unix seconds; hours and days begin at the
--              configured time zone's hour and midnight
--   subject:   the key's or token's id, or the model's name ('' for none)
-- Per key, each attempt counts for its key (so a 429 on one key and a
-- success on another show on both); usage, spend and latency count for the
-- key that answered. Errors are counted by kind (see records::rollup).
CREATE TABLE rollups (
    dimension         TEXT    NOT NULL,
    span              TEXT    NOT NULL,
    bucket            INTEGER NOT NULL,
    subject           TEXT    NOT NULL,
    requests          INTEGER NOT NULL DEFAULT 0,
    successes         INTEGER NOT NULL DEFAULT 0,
    failures          INTEGER NOT NULL DEFAULT 0,
    errors_caller       INTEGER NOT NULL DEFAULT 0,
    errors_rate_limited INTEGER NOT NULL DEFAULT 0,
    errors_key          INTEGER NOT NULL DEFAULT 0,
    errors_timeout      INTEGER NOT NULL DEFAULT 0,
    errors_upstream     INTEGER NOT NULL DEFAULT 0,
    errors_gateway      INTEGER NOT NULL DEFAULT 0,
    errors_cancelled    INTEGER NOT NULL DEFAULT 0,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    cached_tokens     INTEGER NOT NULL DEFAULT 0,
    reasoning_tokens  INTEGER NOT NULL DEFAULT 0,
    cost_micros       INTEGER NOT NULL DEFAULT 0,
    answered          INTEGER NOT NULL DEFAULT 0,  -- requests with a time to first byte
    duration_us_sum   INTEGER NOT NULL DEFAULT 0,
    ttfb_us_sum       INTEGER NOT NULL DEFAULT 0,
    queue_wait_us_sum INTEGER NOT NULL DEFAULT 0,
    -- a histogram of durations: requests that took at most 50 ms, ... 30 s, more
    le_50ms  INTEGER NOT NULL DEFAULT 0,
    le_100ms INTEGER NOT NULL DEFAULT 0,
    le_250ms INTEGER NOT NULL DEFAULT 0,
    le_500ms INTEGER NOT NULL DEFAULT 0,
    le_1s    INTEGER NOT NULL DEFAULT 0,
    le_2500ms INTEGER NOT NULL DEFAULT 0,
    le_5s    INTEGER NOT NULL DEFAULT 0,
    le_10s   INTEGER NOT NULL DEFAULT 0,
    le_30s   INTEGER NOT NULL DEFAULT 0,
    over_30s INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (dimension, span, bucket, subject)
) WITHOUT ROWID;

-- Bodies, when `records.bodies` is on: the caller's request and the
-- answer (a streamed one as its assembled text), each cut to
-- `records.body_max_bytes`. NULL when off.
ALTER TABLE requests ADD COLUMN request_body TEXT;
ALTER TABLE requests ADD COLUMN response_body TEXT;

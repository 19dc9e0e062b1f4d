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
    bucket            BIGINT NOT NULL,
    subject           TEXT    NOT NULL,
    requests          BIGINT NOT NULL DEFAULT 0,
    successes         BIGINT NOT NULL DEFAULT 0,
    failures          BIGINT NOT NULL DEFAULT 0,
    errors_caller       BIGINT NOT NULL DEFAULT 0,
    errors_rate_limited BIGINT NOT NULL DEFAULT 0,
    errors_key          BIGINT NOT NULL DEFAULT 0,
    errors_timeout      BIGINT NOT NULL DEFAULT 0,
    errors_upstream     BIGINT NOT NULL DEFAULT 0,
    errors_gateway      BIGINT NOT NULL DEFAULT 0,
    errors_cancelled    BIGINT NOT NULL DEFAULT 0,
    prompt_tokens     BIGINT NOT NULL DEFAULT 0,
    completion_tokens BIGINT NOT NULL DEFAULT 0,
    cached_tokens     BIGINT NOT NULL DEFAULT 0,
    reasoning_tokens  BIGINT NOT NULL DEFAULT 0,
    cost_micros       BIGINT NOT NULL DEFAULT 0,
    answered          BIGINT NOT NULL DEFAULT 0,  -- requests with a time to first byte
    duration_us_sum   BIGINT NOT NULL DEFAULT 0,
    ttfb_us_sum       BIGINT NOT NULL DEFAULT 0,
    queue_wait_us_sum BIGINT NOT NULL DEFAULT 0,
    -- a histogram of durations: requests that took at most 50 ms, ... 30 s, more
    le_50ms  BIGINT NOT NULL DEFAULT 0,
    le_100ms BIGINT NOT NULL DEFAULT 0,
    le_250ms BIGINT NOT NULL DEFAULT 0,
    le_500ms BIGINT NOT NULL DEFAULT 0,
    le_1s    BIGINT NOT NULL DEFAULT 0,
    le_2500ms BIGINT NOT NULL DEFAULT 0,
    le_5s    BIGINT NOT NULL DEFAULT 0,
    le_10s   BIGINT NOT NULL DEFAULT 0,
    le_30s   BIGINT NOT NULL DEFAULT 0,
    over_30s BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (dimension, span, bucket, subject)
);

-- Bodies, when `records.bodies` is on: the caller's request and the
-- answer (a streamed one as its assembled text), each cut to
-- `records.body_max_bytes`. NULL when off.
ALTER TABLE requests ADD COLUMN request_body TEXT;
ALTER TABLE requests ADD COLUMN response_body TEXT;

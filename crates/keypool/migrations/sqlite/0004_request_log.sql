-- The request log: one row per caller request, written in batches by the
-- server's record writer (src/records), never on the request path. Times
-- are Unix milliseconds, durations microseconds, money micro-USD. No key
-- or gateway token is stored: keys by id, tokens by id.
-- No foreign keys: a record outlives the key or token it names.
CREATE TABLE requests (
    id                  INTEGER PRIMARY KEY,
    request_id          TEXT    NOT NULL,  -- x-keypool-request-id (the caller's X-Client-Request-Id when given)
    started_at          INTEGER NOT NULL,  -- when the request arrived
    token_id            INTEGER,           -- the gateway token's id (none with auth = "none")
    client_addr         TEXT,
    user_agent          TEXT,
    end_user            TEXT,              -- the body's `user` field
    method              TEXT    NOT NULL,
    path                TEXT    NOT NULL,
    model               TEXT,
    stream              BOOLEAN NOT NULL,
    status              INTEGER NOT NULL,  -- the status the caller got (0: none, the caller left first)
    error_type          TEXT,              -- why it failed, in keypool's words (see records::ErrorKind)
    key_id              INTEGER,           -- the key of the last attempt
    attempts            INTEGER NOT NULL,
    attempt_log         TEXT    NOT NULL,  -- JSON: [{key_id, status, reason, duration_us}]
    queue_wait_us       INTEGER NOT NULL,
    ttfb_us             INTEGER,           -- to the upstream's answer head
    duration_us         INTEGER NOT NULL,
    prompt_tokens       INTEGER,
    completion_tokens   INTEGER,
    cached_tokens       INTEGER,
    reasoning_tokens    INTEGER,
    usage_estimated     BOOLEAN NOT NULL,  -- no usage reported, estimated from the text
    cost_micros         INTEGER,
    cancelled           BOOLEAN NOT NULL,  -- the caller went away first
    upstream_request_id TEXT               -- the upstream's own x-request-id
);
CREATE INDEX requests_started ON requests (started_at);
CREATE INDEX requests_request_id ON requests (request_id);
CREATE INDEX requests_key ON requests (key_id, started_at);
CREATE INDEX requests_token ON requests (token_id, started_at);
CREATE INDEX requests_model ON requests (model, started_at);

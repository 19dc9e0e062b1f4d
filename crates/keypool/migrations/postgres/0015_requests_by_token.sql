-- SQLite's migration 0015 replaces its per-token index of the request log
-- with a map of the record writer's batches (`requests_by_token`), which
-- costs SQLite far less to write with many tenants. PostgreSQL keeps its
-- index `requests_token (token_id, started_at)`: nothing changes here. The
-- file keeps the two directories' migrations numbered alike.
SELECT 1;

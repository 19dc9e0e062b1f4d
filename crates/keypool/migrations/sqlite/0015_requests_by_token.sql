-- A token's rows of the request log, found through a map of the record
-- writer's batches instead of an index entry per row. With a thousand
-- tenants, the per-row index `requests_token (token_id, started_at)` took
-- an insert into a random page of its B-tree for every request: the largest
-- part of what 1,000 tenants cost the gateway over one (docs/benchmarks.md,
-- issue 17). The writer now writes each batch sorted by token, so a token's
-- rows in a batch are one run of ids, and adds one row here per token per
-- batch. PostgreSQL keeps its index (migration 0004).
--   token_id:  the gateway token whose run this is
--   last_id:   the run's largest `requests.id`
--   first_id:  the run's smallest `requests.id` (rows between them with
--              another token_id are skipped by the query)
--   oldest_ms: the earliest `started_at` among the run's rows (Unix ms)
--   bound_ms:  no row of this token with an id up to `last_id` started after
--              this (Unix ms): never falls as `last_id` grows, so a page of
--              a token's log, read newest run first, stops at the first run
--              whose bound is below what the page still needs
CREATE TABLE requests_by_token (
    token_id  INTEGER NOT NULL,
    last_id   INTEGER NOT NULL,
    first_id  INTEGER NOT NULL,
    oldest_ms INTEGER NOT NULL,
    bound_ms  INTEGER NOT NULL,
    PRIMARY KEY (token_id, last_id)
) WITHOUT ROWID;

-- The log already written: one run per row, each bound the running
-- maximum of its token's `started_at` in id order.
INSERT INTO requests_by_token (token_id, last_id, first_id, oldest_ms, bound_ms)
SELECT token_id, id, id, started_at,
       MAX(started_at) OVER (PARTITION BY token_id ORDER BY id ROWS UNBOUNDED PRECEDING)
  FROM requests WHERE token_id IS NOT NULL;

DROP INDEX requests_token;

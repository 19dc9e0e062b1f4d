-- The request log is written in the order its records arrive again, not
-- sorted by token. Sorting made each token's rows in a batch one run of
-- ids (migration 0015), but it filled the log's other indexes
-- (`started_at`, `request_id`, `(key_id, started_at)`, `(model,
-- started_at)`) out of order: with a thousand tenants every insert
-- descended from the root and split pages in the middle, where rows in
-- arrival order append (docs/benchmarks.md, issue 17). A token's rows in a
-- batch may now be spread over the batch's ids, so a row of the map may
-- list them:
--   ids: NULL when the token's rows are at least half the ids from
--        `first_id` to `last_id` (the range is read, others' rows
--        skipped; a single busy token's batch stays a small row); else a
--        JSON array of the token's row ids, each as its offset from
--        `first_id` (the row is `first_id + value`), ascending
-- `first_id` and `last_id` bound the token's ids in the batch.

ALTER TABLE requests_by_token ADD COLUMN ids TEXT;

-- The runs already written: listed where their token's rows are fewer
-- than half their range (others' rows, or ids that are gone).
UPDATE requests_by_token SET ids = (
    SELECT json_group_array(r.id - requests_by_token.first_id ORDER BY r.id)
      FROM requests AS r
     WHERE r.id BETWEEN requests_by_token.first_id AND requests_by_token.last_id
       AND r.token_id = requests_by_token.token_id
)
 WHERE 2 * (SELECT COUNT(*) FROM requests AS r
             WHERE r.id BETWEEN requests_by_token.first_id AND requests_by_token.last_id
               AND r.token_id = requests_by_token.token_id)
       < requests_by_token.last_id - requests_by_token.first_id + 1;

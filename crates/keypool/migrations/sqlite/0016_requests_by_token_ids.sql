-- The request log is written in the order its records arrive again, not
-- sorted by token. Sorting made each token's rows in a batch one run of
-- ids (migration 0015), but it filled the log's other indexes
-- (`started_at`, `request_id`, `(key_id, started_at)`, `(model,
-- started_at)`) out of order: with a thousand tenants every insert
-- descended from the root and split pages in the middle, where rows in
-- arrival order append (docs/benchmarks.md, issue 17). A token's rows in a
-- batch are now spread over the batch's ids, so each row of the map lists
-- them:
--   ids: a JSON array of the token's row ids in the batch, each as its
--        offset from `first_id` (so `first_id + value`), ascending
-- `first_id` and `last_id` stay the smallest and largest of them.

ALTER TABLE requests_by_token ADD COLUMN ids TEXT NOT NULL DEFAULT '[]';

-- The runs already written: the rows of their token between their first
-- and last ids.
UPDATE requests_by_token SET ids = (
    SELECT json_group_array(r.id - requests_by_token.first_id ORDER BY r.id)
      FROM requests AS r
     WHERE r.id BETWEEN requests_by_token.first_id AND requests_by_token.last_id
       AND r.token_id = requests_by_token.token_id
);

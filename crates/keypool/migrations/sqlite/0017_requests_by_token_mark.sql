-- The map of the request log by token (`requests_by_token`, migrations
-- 0015 and 0016) is written with the statistics: every second with few
-- tokens, every 5 s with many (records::writer::ROLLUP_EVERY_MANY), not with
-- every batch of the log. With a thousand tenants each batch added a row to
-- a thousand random pages of the map; every 5 s it is a fifth of the pages
-- (docs/benchmarks.md, issue 17). The rows after the mark are not mapped
-- yet: a token's page reads them from the log's tail.
--   last_id:    every row of the log with an id up to this is in the map
--               (if it has a token); the rows after it are read by scanning
--   generation: counts the mappings and the prunes of the log's newest
--               rows, so a process that kept the rows it wrote since the
--               mark knows whether they are still the log's
-- A keypool from before this migration, still running on the same file,
-- would go on mapping each batch past the mark: stop it before starting
-- this one (it cannot start again once the migration has run).
CREATE TABLE requests_by_token_mark (
    only       INTEGER PRIMARY KEY CHECK (only = 1),
    last_id    INTEGER NOT NULL,
    generation INTEGER NOT NULL
);

-- Until now each batch was mapped as it was written: all of the log is.
INSERT INTO requests_by_token_mark (only, last_id, generation) SELECT 1, COALESCE(MAX(id), 0), 0 FROM requests;

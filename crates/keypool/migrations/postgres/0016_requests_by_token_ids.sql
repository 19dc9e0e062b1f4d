-- SQLite's migration 0016 lists each token's ids per batch in its map of
-- the request log (`requests_by_token`), which PostgreSQL does not have:
-- it indexes the log by token (migration 0004). Nothing changes here. The
-- file keeps the two directories' migrations numbered alike.
SELECT 1;

-- SQLite's migration 0017 adds the mark up to which its map of the request
-- log by token is written, which PostgreSQL does not have: it indexes the
-- log by token (migration 0004). Nothing changes here. The file keeps the
-- two directories' migrations numbered alike.
SELECT 1;

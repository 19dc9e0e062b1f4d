#!/usr/bin/env python3
"""What a deep page of one token's request log costs on SQLite since
migrations 0015 and 0016 (issue 17): the page query walks the token's map of batches
(`requests_by_token`) from the newest run down to the cursor, skipping runs
newer than it inside SQLite. Builds the map alone for one token with a run
every second for DAYS days (the record writer's default 1 s batches, the
token busy every second, its ten rows a batch among other tokens' rows, so
each run lists its ids as migration 0016 does), then times the query that finds the first runs
at or below a cursor HALF and ALL the way down. Needs only Python's sqlite3.
Usage: python3 bench/deep_page.py [DAYS]   (default 30; a temporary file)"""
import os
import sqlite3
import sys
import tempfile
import time

days = int(sys.argv[1]) if len(sys.argv) > 1 else 30
runs = days * 86_400
with tempfile.TemporaryDirectory() as d:
    db = sqlite3.connect(os.path.join(d, "map.db"))
    # The table as crates/keypool/migrations/sqlite/0015_requests_by_token.sql
    # and 0016_requests_by_token_ids.sql make it.
    db.execute(
        "CREATE TABLE requests_by_token (token_id INTEGER NOT NULL, last_id INTEGER NOT NULL,"
        " first_id INTEGER NOT NULL, oldest_ms INTEGER NOT NULL, bound_ms INTEGER NOT NULL,"
        " ids TEXT, PRIMARY KEY (token_id, last_id)) WITHOUT ROWID"
    )
    # 10,000 log rows a batch; this token's run is ten of them, spread over it.
    ids = "[" + ",".join(str(k * 1_000) for k in range(10)) + "]"
    db.executemany(
        "INSERT INTO requests_by_token VALUES (7, ?, ?, ?, ?, ?)",
        ((i * 10_000 + 9_001, i * 10_000 + 1, i * 1_000, i * 1_000 + 999, ids) for i in range(runs)),
    )
    db.commit()
    print(f"one token, {runs:,} runs ({days} days of 1 s batches), SQLite {sqlite3.sqlite_version}")
    # The query of crates/keypool/src/store/log_query.rs, token_page_sqlite.
    query = (
        "SELECT last_id, bound_ms FROM requests_by_token WHERE token_id = 7 AND last_id < ?"
        " AND oldest_ms < ? AND oldest_ms <= ? ORDER BY last_id DESC LIMIT 2"
    )
    for depth in (0.0, 0.5, 0.99):
        cursor_ms = int(runs * (1 - depth)) * 1_000
        best = None
        for _ in range(3):
            t = time.perf_counter()
            db.execute(query, (2**63 - 1, 2**63 - 1, cursor_ms)).fetchall()
            took = time.perf_counter() - t
            best = took if best is None else min(best, took)
        print(f"a cursor {depth:.0%} of the way back: the first runs found in {best * 1000:.1f} ms (best of 3)")

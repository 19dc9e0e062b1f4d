#!/usr/bin/env python3
"""A token's pages of the request log, read through the admin API of a
running gateway (issue 17): how long the first page and the next ones take,
and whether walking every page finds each of the token's requests once.

Usage: token_pages.py PORT ADMIN_TOKEN TOKEN_ID [TOKEN_ID...] [--limit N] [--check]

Prints, per token: the first page's time, the median of the next pages'
times (ms), the rows walked, and with --check the token's request count
from /admin/api/tokens (the statistics, written up to 5 s after the log:
run --check once the load has stopped and 6 s have passed). Exits non-zero
when a row is found twice, or (--check) the rows walked differ from the
count. Only loopback is ever contacted (the port is on 127.0.0.1).
"""
import json
import statistics
import sys
import time
import urllib.request


def get(port, admin, path):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers={"authorization": f"Bearer {admin}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.load(r)


def walk(port, admin, token, limit):
    """(first page ms, [next pages' ms], ids) of every page of `token`."""
    times, ids, cursor = [], [], None
    while True:
        path = f"/admin/api/requests?token_id={token}&limit={limit}"
        if cursor:
            path += f"&cursor={cursor}"
        began = time.perf_counter()
        page = get(port, admin, path)
        times.append((time.perf_counter() - began) * 1000)
        ids.extend(r["id"] for r in page["data"])
        cursor = page.get("next_cursor")
        if not cursor:
            return times[0], times[1:], ids


def main():
    args = sys.argv[1:]
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    limit = 100
    if "--limit" in args:
        i = args.index("--limit")
        limit = int(args[i + 1])
        del args[i : i + 2]
    if len(args) < 3:
        sys.exit(__doc__)
    port, admin, tokens = args[0], args[1], [int(t) for t in args[2:]]
    counts = {t["id"]: t["requests"] for t in get(port, admin, "/admin/api/tokens")} if check else {}
    bad = False
    for token in tokens:
        first, rest, ids = walk(port, admin, token, limit)
        dup = len(ids) - len(set(ids))
        line = f"token {token}: first page {first:.1f} ms, next pages median {statistics.median(rest) if rest else 0:.1f} ms ({len(rest)}), rows {len(ids)}"
        if dup:
            line += f", {dup} found twice"
            bad = True
        if check:
            line += f", the token's requests {counts.get(token)}"
            bad |= counts.get(token) != len(ids)
        print(line)
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()

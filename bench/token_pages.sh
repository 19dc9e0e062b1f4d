#!/usr/bin/env bash
# A token's pages of the request log with N tenants (issue 17), on the MANY
# gateway of bench/tenants_setup.sh (SQLite): SECS seconds of load spread
# over the N tokens, then the pages of tokens 1-5 read through the admin API
# while the load still runs (so the log's tail is not yet mapped, migration
# 0017), and again once it stopped and the statistics were written, each
# page walk checked against the token's request count (bench/token_pages.py).
# Usage: [NO_BUILD=1] [C=64] bash bench/token_pages.sh [N] [SECS]
# All traffic is on loopback; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000} SECS=${2:-30}
PIN=1
# shellcheck source=bench/tenants_setup.sh
. bench/tenants_setup.sh
taskset -c 0 "$LOAD" "http://127.0.0.1:$pb/v1/chat/completions" "$work/many.tokens" "${C:-64}" "$SECS" > "$work/load" &
load=$!
sleep $(( SECS / 2 + 1 ))
echo "during the load:"
python3 bench/token_pages.py "$pb" "$KEYPOOL_ADMIN_TOKEN" 1 2 3 4 5
wait "$load"
echo "load: $(cat "$work/load")  (requests/s p50_us p99_us failed)"
sleep 6
echo "after it, against each token's count:"
python3 bench/token_pages.py "$pb" "$KEYPOOL_ADMIN_TOKEN" 1 2 3 4 5 --check

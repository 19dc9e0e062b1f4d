#!/usr/bin/env bash
# Alternating A/B rounds of two keypool binaries over the same simulator
# (closed loop, oha -c 64), for differences of a few percent that one run
# cannot tell from noise. Usage:
#   bash bench/ab.sh OLD_KEYPOOL NEW_KEYPOOL [ROUNDS] [DURATION]
# e.g. build the old one with `git worktree add /tmp/old REV` and
# `CARGO_TARGET_DIR=target cargo build --release --locked -p keypool` there
# (it shares this tree's dependencies), then compare with ./target/release/keypool.
# Prints every round and the median and spread of each side's requests/s.
# A_ENV / B_ENV add settings to one side only, e.g. the request log off:
#   B_ENV=KEYPOOL_RECORDS__ENABLED=false bash bench/ab.sh BIN BIN
# Each gateway's log goes to a file (as in production), not to /dev/null.
# The telemetry comparison of issue 15 (metrics and the per-request log line
# on, against no recorder and log level warn) is:
#   A_ENV="KEYPOOL_METRICS=false RUST_LOG=warn" B_ENV=RUST_LOG=info bash bench/ab.sh BIN BIN
# All traffic is on loopback; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
A=$1 B=$2 ROUNDS=${3:-10} DURATION=${4:-10s}
command -v oha >/dev/null || cargo install oha --locked
cargo build --release --locked -p keypool-sim >&2
SIM=${SIM:-${CARGO_TARGET_DIR:-./target}/release/keypool-sim}
work=$(mktemp -d)
pids=()
# start() runs in a subshell (its output is read), so the servers it starts
# leave their pids in $work/*.pid rather than in pids.
cleanup() {
  for p in "${pids[@]}" $(cat "$work"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true; rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }
ps=$(port)
$SIM --listen 127.0.0.1:$ps --accept-any-key --latency 0ms >/dev/null & pids+=($!)
export RUST_LOG=warn
start() { # binary name [env] -> "port token"
  local db="sqlite://$work/$2.db" p
  for i in $(seq 10); do KEYPOOL_DATABASE_URL=$db "$1" keys add "sk-bench-key-$i-0123456789abcdef" >/dev/null 2>&1; done
  local token; token=$(KEYPOOL_DATABASE_URL=$db "$1" tokens create bench 2>/dev/null)
  p=$(port)
  env ${3:-} KEYPOOL_DATABASE_URL=$db "$1" serve --listen 127.0.0.1:$p --upstream http://127.0.0.1:$ps/v1 >"$work/$2.log" 2>&1 &
  echo $! > "$work/$2.pid"
  wait_up "http://127.0.0.1:$p/healthz"
  echo "$p $token"
}
read -r pa ta < <(start "$A" a "${A_ENV:-}")
read -r pb tb < <(start "$B" b "${B_ENV:-}")
BODY='{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"Say hello in one short sentence."}]}'
rps() { oha --no-tui --output-format json -z "$DURATION" -c 64 -m POST -H "Authorization: Bearer $2" \
  -H 'Content-Type: application/json' -d "$BODY" "http://127.0.0.1:$1/v1/chat/completions" |
  python3 -c 'import json,sys; print("%.0f" % json.load(sys.stdin)["summary"]["requestsPerSec"])'; }
rps "$pa" "$ta" >/dev/null; rps "$pb" "$tb" >/dev/null   # warm both
: > "$work/rounds"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then a=$(rps "$pa" "$ta"); b=$(rps "$pb" "$tb"); else b=$(rps "$pb" "$tb"); a=$(rps "$pa" "$ta"); fi
  echo "round $r: A $a req/s, B $b req/s"; echo "$a $b" >> "$work/rounds"
done
python3 - "$work/rounds" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
a, b = [r[0] for r in rows], [r[1] for r in rows]
ratio = [y / x for x, y in rows]
print("A median %.0f req/s (%.0f-%.0f); B median %.0f req/s (%.0f-%.0f); B/A per round median %.3f (%.3f-%.3f)" % (
    statistics.median(a), min(a), max(a), statistics.median(b), min(b), max(b),
    statistics.median(ratio), min(ratio), max(ratio)))
PY

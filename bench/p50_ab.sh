#!/usr/bin/env bash
# The latency keypool adds at 1,000 requests/s, with one setting on and off
# (issue 14: the request log must add ≤ 10 µs to the added p50). Starts the
# in-repo simulator (zero latency) and two keypools of the same binary over
# it, A with the default settings and B with $B_ENV (default: the request log
# off), then runs alternating rounds of oha's open loop (-q 1000 -c 64 for
# $DURATION): direct, A, B. Each round's added p50 is keypool's p50 minus the
# direct call's in that round; prints every round, then the medians and
# spread of A's and B's added p50 and of A − B.
# Usage: bash bench/p50_ab.sh [KEYPOOL_BINARY] [ROUNDS] [DURATION]
# All traffic is on loopback; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
KP=${1:-./target/release/keypool} ROUNDS=${2:-10} DURATION=${3:-10s}
B_ENV=${B_ENV:-KEYPOOL_RECORDS__ENABLED=false}
command -v oha >/dev/null || cargo install oha --locked
[ -n "${1:-}" ] || cargo build --release --locked -p keypool >&2
cargo build --release --locked -p keypool-sim >&2
SIM=./target/release/keypool-sim
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true; rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }

ps=$(port)
$SIM --listen 127.0.0.1:$ps --accept-any-key --latency 0ms >/dev/null & pids+=($!)
# start NAME [ENV…]: a keypool with its own database, 10 keys and a token; prints "port token".
start() {
  local name=$1; shift
  local db="sqlite://$work/$name.db" p
  p=$(port)
  for i in $(seq 10); do KEYPOOL_DATABASE_URL=$db $KP keys add "sk-bench-key-$i-0123456789abcdef" >/dev/null 2>&1; done
  local token
  token=$(KEYPOOL_DATABASE_URL=$db $KP tokens create bench 2>/dev/null)
  env KEYPOOL_DATABASE_URL=$db RUST_LOG=warn "$@" $KP serve --listen 127.0.0.1:$p --upstream http://127.0.0.1:$ps/v1 \
    >/dev/null 2>&1 &
  echo $! > "$work/$name.pid"
  echo "$p $token"
}
read -r pa ta < <(start a)
read -r pb tb < <(start b $B_ENV)
pids+=("$(cat "$work/a.pid")" "$(cat "$work/b.pid")")
wait_up "http://127.0.0.1:$pa/healthz"; wait_up "http://127.0.0.1:$pb/healthz"

BODY='{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"Say hello in one short sentence."}]}'
p50() { # url token: the p50 in ms of an open loop at 1,000 requests/s
  oha --no-tui --output-format json -z "$DURATION" -c 64 -q 1000 -m POST -H "Authorization: Bearer $2" \
    -H "content-type: application/json" -d "$BODY" "$1" |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.4f" % (d["latencyPercentiles"]["p50"]*1e3))'
}
direct="http://127.0.0.1:$ps/v1/chat/completions"
# Warm up both (keys learned, tokenizers loaded).
for p in $pa $pb; do oha --no-tui -z 2s -c 8 -m POST -H "content-type: application/json" -d "$BODY" \
  -H "Authorization: Bearer $([ $p = $pa ] && echo $ta || echo $tb)" "http://127.0.0.1:$p/v1/chat/completions" >/dev/null; done
: > "$work/rounds.txt"
for r in $(seq "$ROUNDS"); do
  # A and B take turns going first, so neither always follows the direct run.
  d=$(p50 "$direct" sk-direct)
  if [ $((r % 2)) = 1 ]; then
    a=$(p50 "http://127.0.0.1:$pa/v1/chat/completions" "$ta"); b=$(p50 "http://127.0.0.1:$pb/v1/chat/completions" "$tb")
  else
    b=$(p50 "http://127.0.0.1:$pb/v1/chat/completions" "$tb"); a=$(p50 "http://127.0.0.1:$pa/v1/chat/completions" "$ta")
  fi
  echo "$d $a $b" >> "$work/rounds.txt"
  python3 -c "d,a,b=$d,$a,$b; print('round $r: direct p50 %.0f µs; added p50 A %.0f µs, B %.0f µs' % (d*1e3,(a-d)*1e3,(b-d)*1e3))"
done
python3 - "$work/rounds.txt" "$B_ENV" <<'PY'
import statistics, sys
rows = [[float(x) for x in l.split()] for l in open(sys.argv[1]) if l.strip()]
a = [1e3 * (r[1] - r[0]) for r in rows]; b = [1e3 * (r[2] - r[0]) for r in rows]
diff = [x - y for x, y in zip(a, b)]
f = lambda v: "median %.0f µs (%.0f to %.0f)" % (statistics.median(v), min(v), max(v))
print("added p50, A (defaults): " + f(a))
print("added p50, B (%s): " % sys.argv[2] + f(b))
print("A - B per round: " + f(diff))
PY

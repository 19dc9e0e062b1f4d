#!/usr/bin/env bash
# keypool's instructions per proxied request: the stable figure for small
# differences (docs/benchmarks.md). Runs `keypool serve` with one worker under
# valgrind's callgrind over the in-repo simulator, sends 200 chat requests at
# concurrency 4 to warm up, then counts only the next N (default 3,000).
# Usage: [KEYS=10] [TOKENS=1] [TOKEN_OPTS="--rpm 60 ..."] [SPREAD=1] [THREADS=1] [CACHE=1] bash bench/callgrind.sh [KEYPOOL_BINARY] [N]
# (CACHE=1: valgrind's cache simulation too, and its misses per request)
# (SPREAD=1: the requests go to all TOKENS tokens in turn, not only the first;
# THREADS=1: also instructions per request for each thread, named by the
# first of its functions the script knows: the request path, the records
# writer's runtime, SQLite's thread)
# (default binary: this tree's release build). Prints instructions/request and
# leaves the profile in $OUT (default /tmp/keypool.cg) for callgrind_annotate.
# RUST_LOG (default warn) and KEYPOOL_* settings pass through, e.g. the
# telemetry off: KEYPOOL_METRICS=false; on: RUST_LOG=info.
# Needs valgrind (Debian: apt-get install valgrind). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
T=${CARGO_TARGET_DIR:-./target}
BIN=${1:-$T/release/keypool} N=${2:-3000} OUT=${OUT:-/tmp/keypool.cg}
command -v valgrind >/dev/null || { echo "valgrind is needed (apt-get install valgrind)" >&2; exit 1; }
[ -n "${1:-}" ] || cargo build --release --locked -p keypool >&2
cargo build --release --locked -p keypool-sim >&2
SIM=${SIM:-$T/release/keypool-sim}
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 300); do curl -s -o /dev/null "$1" && return 0; sleep 0.2; done; echo "not up: $1" >&2; return 1; }
# N requests at concurrency 4 over kept-alive connections (python: oha's own
# work would be profiled nowhere, but it needs no build here).
load() {
  python3 - "$1" "$2" "$3" <<'PY'
import http.client, sys, threading
port, tokens, n = int(sys.argv[1]), open(sys.argv[2]).read().split(), int(sys.argv[3])
body = b'{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"Say hello in one short sentence."}]}'
bad = []
def run(k, first):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for i in range(k):
        token = tokens[(first + i * 4) % len(tokens)]
        hdr = {"Authorization": "Bearer " + token, "Content-Type": "application/json"}
        conn.request("POST", "/v1/chat/completions", body, hdr)
        r = conn.getresponse(); r.read()
        if r.status != 200: bad.append(r.status)
ts = [threading.Thread(target=run, args=(n // 4, t)) for t in range(4)]
[t.start() for t in ts]; [t.join() for t in ts]
if bad: sys.exit("non-200 answers: %d" % len(bad))
PY
}
ps=$(port)
$SIM --listen 127.0.0.1:$ps --accept-any-key --latency 0ms >/dev/null & pids+=($!)
export KEYPOOL_DATABASE_URL="sqlite://$work/k.db"
# KEYS keys in the pool (default 10), as one import.
for i in $(seq "${KEYS:-10}"); do echo "sk-bench-key-$i-0123456789abcdef"; done | "$BIN" keys import - >/dev/null 2>&1
# TOKEN_OPTS: the bench token's settings (e.g. its limits and budget);
# TOKENS=N: N-1 more tokens with the same settings in the store.
"$BIN" tokens create bench ${TOKEN_OPTS:-} 2>/dev/null > "$work/load.tokens"; : > "$work/all.tokens"
for i in $(seq 2 "${TOKENS:-1}"); do "$BIN" tokens create "other-$i" ${TOKEN_OPTS:-} 2>/dev/null >> "$work/all.tokens"; done
[ "${SPREAD:-}" = 1 ] && cat "$work/all.tokens" >> "$work/load.tokens"
p=$(port)
rm -f "$OUT" "$OUT".* "$OUT"-*
threads=(); [ "${THREADS:-}" = 1 ] && threads=(--separate-threads=yes)
[ "${CACHE:-}" = 1 ] && threads+=(--cache-sim=yes)
KEYPOOL_WORKERS=1 RUST_LOG=${RUST_LOG:-warn} valgrind --tool=callgrind --instr-atstart=no ${threads[@]+"${threads[@]}"} --callgrind-out-file="$OUT" \
  "$BIN" serve --listen 127.0.0.1:$p --upstream http://127.0.0.1:$ps/v1 >/dev/null 2>"$work/vg.log" & vg=$!; pids+=($vg)
wait_up "http://127.0.0.1:$p/healthz"
load "$p" "$work/load.tokens" 200
callgrind_control -i on $vg >/dev/null 2>&1
load "$p" "$work/load.tokens" "$N"
callgrind_control -i off $vg >/dev/null 2>&1
callgrind_control -d $vg >/dev/null 2>&1
sleep 1
# awk reads to the end (a reader that stops early would fail the pipe).
instructions() { callgrind_annotate "$1" 2>/dev/null | awk '/PROGRAM TOTALS/ && !seen {gsub(",","",$1); print $1; seen=1}'; }
# CACHE=1: the simulated cache's misses per request, instruction level 1,
# data level 1 (reads and writes) and last level (instructions and data), from the totals'
# columns as named by its "Events shown:" line (each total is followed by
# its share, "(100.0%)", so event k is field 2k-1).
misses() {
  [ "${CACHE:-}" = 1 ] || return 0
  callgrind_annotate "$1" 2>/dev/null | awk -v n="$2" '
    /^Events shown:/ { for (i = 3; i <= NF; i++) col[$i] = 2 * (i - 2) - 1 }
    /PROGRAM TOTALS/ && !seen { gsub(",", ""); seen = 1
      d1 = $col["D1mr"] + $col["D1mw"]; ll = $col["ILmr"] + $col["DLmr"] + $col["DLmw"]
      printf ", cache misses per request: I1 %.0f, D1 %.0f, LL %.1f", $col["I1mr"] / n, d1 / n, ll / n }'
}
if [ "${THREADS:-}" != 1 ]; then
  f=$(ls -t "$OUT".* | head -1)
  echo "instructions per request: $(($(instructions "$f") / (N / 4 * 4)))$(misses "$f" $((N / 4 * 4))) ($f)"
  exit 0
fi
# One file per thread from the dump ($OUT.1-TID); the whole
# program is their sum.
files=$(ls "$OUT".*-* 2>/dev/null || true)
[ -n "$files" ] || { echo "no per-thread profiles $OUT.*-*: see valgrind's log" >&2; exit 1; }
sum=0
for f in $files; do
  n=$(instructions "$f" || true); [ -n "$n" ] && [ "$n" != . ] || continue
  role=$(callgrind_annotate --inclusive=yes "$f" 2>/dev/null \
    | grep -oE 'serve_connection|records::writer::Writer::run|sqlite3_step' | head -1 || true)
  case $role in serve_connection) role="request path";; records*) role="records writer's runtime";; sqlite3_step) role="SQLite";; *) role="other";; esac
  echo "  thread ${f##*-} ($role): $((n / (N / 4 * 4))) per request$(misses "$f" $((N / 4 * 4)))"
  sum=$((sum + n))
done
echo "instructions per request: $((sum / (N / 4 * 4))) (all threads, $OUT.*)"

#!/usr/bin/env bash
# Resident memory per open stream through one fresh keypool, for comparing two
# binaries (load.sh measures the same at 9,750 / 10,000 streams beside its other
# figures). Usage: bash bench/streams_rss.sh [KEYPOOL_BINARY] [N] [h1|h2]
# (defaults: this tree's release build, 4000, h1). The simulator streams 30
# chunks 1 s apart; N streams are held open for 12 s and RSS is read after 10 s.
# Loopback only; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-./target/release/keypool} N=${2:-4000} PROTO=${3:-h1}
[ -n "${1:-}" ] || cargo build --release --locked -p keypool >&2
cargo build --release --locked -p keypool-sim -p keypool --example streams >&2
work=$(mktemp -d); pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
ulimit -n "$(( N * 2 + 1000 ))" 2>/dev/null || echo "note: could not raise the open-file limit to $(( N * 2 + 1000 ))" >&2
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }
rss_kb() { awk '/VmRSS/{print $2}' "/proc/$1/status"; }
ps=$(port)
./target/release/keypool-sim --listen 127.0.0.1:$ps --accept-any-key --stream-chunks 30 --chunk-interval 1s >/dev/null & pids+=($!)
export KEYPOOL_DATABASE_URL="sqlite://$work/k.db"
for i in $(seq 10); do "$BIN" keys add "sk-bench-key-$i-0123456789abcdef" >/dev/null 2>&1; done
token=$("$BIN" tokens create bench 2>/dev/null)
p=$(port)
RUST_LOG=error "$BIN" serve --listen 127.0.0.1:$p --upstream http://127.0.0.1:$ps/v1 >/dev/null 2>&1 & k=$!; pids+=($k)
wait_up "http://127.0.0.1:$p/healthz"; sleep 1
before=$(rss_kb $k)
./target/release/examples/streams hold "http://127.0.0.1:$p/v1/chat/completions" "$token" "$N" 12 "$PROTO" > "$work/hold.txt" &
h=$!; sleep 10
during=$(rss_kb $k)
wait $h || true
echo "$N $PROTO streams: $((before / 1024)) MB before, $((during / 1024)) MB open, $(( (during - before) / N )) KB a stream ($(head -n1 "$work/hold.txt"))"

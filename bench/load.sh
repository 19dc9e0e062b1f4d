#!/usr/bin/env bash
# keypool's overhead, measured beside a direct call to the same upstream in the
# same run (issue 5). Starts the in-repo simulator (zero latency, any key
# accepted), a keypool over it with 10 keys and its SQLite database, then with
# oha (installed from crates.io if missing):
#   - closed loop at concurrency 16, 64, 256: direct, then through keypool, each
#     for $DURATION: requests/s, p50, p99, p99.9;
#   - open loop at 1,000 requests/s, $ROUNDS rounds (medians): added latency
#     p50/p99, beside nginx as a plain reverse proxy over the same simulator
#     (the floor any proxy pays on this machine: two more sockets and two more
#     wake-ups per request);
#   - keypool's CPU time and resident memory, idle and under load;
#   - streaming time to first byte (20 chunks 10 ms apart), direct and through keypool;
#   - keypool's resident memory with $STREAMS concurrent open streams, callers
#     on HTTP/1.1 (as many as the open-file limit allows) and on HTTP/2.
# All traffic is on loopback, bounded in time; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-10s}
STREAMS=${STREAMS:-10000}
ROUNDS=${ROUNDS:-5}
command -v oha >/dev/null || cargo install oha --locked
# nginx is only a reference row; it is installed from Debian's packages when it can be.
command -v nginx >/dev/null || PATH=$PATH:/usr/sbin command -v nginx >/dev/null ||
  { command -v apt-get >/dev/null && [ "$(id -u)" = 0 ] && apt-get install -y -qq nginx-light >/dev/null 2>&1; } || true
export PATH=$PATH:/usr/sbin
cargo build --release --locked -p keypool -p keypool-sim --bins --examples >&2
echo "machine: $(nproc) cores, $(awk -F: '/model name/ {print $2; exit}' /proc/cpuinfo | xargs), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
echo
ulimit -Hn 70000 2>/dev/null || true
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
# With callers on HTTP/1.1 each open stream holds two descriptors in keypool
# (caller and upstream); with callers on HTTP/2, one (upstream) plus a share of
# a caller connection.
STREAMS_H1=$STREAMS
fd_room=$(( ($(ulimit -n) - 500) / 2 ))
if [ "$STREAMS_H1" -gt "$fd_room" ]; then
  echo "note: the open-file limit ($(ulimit -n)) allows $fd_room HTTP/1.1 streams through one keypool, not $STREAMS" >&2
  STREAMS_H1=$fd_room
fi
SIM=./target/release/keypool-sim
KP=./target/release/keypool
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  [ -f "$work/nginx.pid" ] && kill "$(cat "$work/nginx.pid")" 2>/dev/null || true
  wait 2>/dev/null || true; rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }
rss_kb() { awk '/VmRSS/ {print $2}' "/proc/$1/status"; }
hwm_kb() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
TCK=$(getconf CLK_TCK)

ps_fast=$(port); ps_stream=$(port); ps_slow=$(port)
$SIM --listen 127.0.0.1:$ps_fast --accept-any-key --latency 0ms >/dev/null & pids+=($!)
$SIM --listen 127.0.0.1:$ps_stream --accept-any-key --stream-chunks 20 --chunk-interval 10ms >/dev/null & pids+=($!)
$SIM --listen 127.0.0.1:$ps_slow --accept-any-key --stream-chunks 30 --chunk-interval 1s >/dev/null & pids+=($!)

export KEYPOOL_DATABASE_URL="sqlite://$work/keypool.db" RUST_LOG=warn
for i in $(seq 10); do $KP keys add "sk-bench-key-$i-0123456789abcdef" >/dev/null 2>&1; done
TOKEN=$($KP tokens create bench 2>/dev/null)
pk_fast=$(port); pk_stream=$(port)
$KP serve --listen 127.0.0.1:$pk_fast --upstream http://127.0.0.1:$ps_fast/v1 & kp=$!; pids+=($kp)
$KP serve --listen 127.0.0.1:$pk_stream --upstream http://127.0.0.1:$ps_stream/v1 & pids+=($!)
for p in $pk_fast $pk_stream; do wait_up "http://127.0.0.1:$p/healthz"; done
pn=""
if command -v nginx >/dev/null; then
  pn=$(port)
  cat > "$work/nginx.conf" <<NGX
worker_processes 2;
pid $work/nginx.pid;
error_log $work/nginx.err;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work; proxy_temp_path $work; fastcgi_temp_path $work; uwsgi_temp_path $work; scgi_temp_path $work;
  upstream sim { server 127.0.0.1:$ps_fast; keepalive 256; }
  server {
    listen 127.0.0.1:$pn;
    location / { proxy_pass http://sim; proxy_http_version 1.1; proxy_set_header Connection ""; proxy_buffering off; }
  }
}
NGX
  nginx -c "$work/nginx.conf"
  wait_up "http://127.0.0.1:$pn/v1/models"
else
  echo "note: nginx not found; the reference rows are left out" >&2
fi
sleep 1
start_rss=$(rss_kb $kp)
# The same with a TPM limit on every key, as trial keys have: prompts are then
# counted with the real tokenizer, which is built in the background at start.
pk_tpm=$(port)
KEYPOOL_LIMITS__TPM=40000 $KP serve --listen 127.0.0.1:$pk_tpm --upstream http://127.0.0.1:$ps_fast/v1 & kp_tpm=$!; pids+=($kp_tpm)
wait_up "http://127.0.0.1:$pk_tpm/healthz"
sleep 4
tpm_rss=$(rss_kb $kp_tpm)
kill $kp_tpm

BODY='{"model":"gpt-4o-mini","max_tokens":16,"messages":[{"role":"user","content":"Say hello in one short sentence."}]}'
direct="http://127.0.0.1:$ps_fast/v1/chat/completions"
through="http://127.0.0.1:$pk_fast/v1/chat/completions"
load() { # url token concurrency duration [extra oha args]
  local url=$1 token=$2 c=$3 d=$4; shift 4
  oha --no-tui --output-format json -z "$d" -c "$c" -m POST -H "Authorization: Bearer $token" \
    -H "content-type: application/json" -d "$BODY" "$@" "$url"
}
summary() { python3 -c '
import json,sys
d=json.load(sys.stdin); s=d["summary"]; p=d["latencyPercentiles"]
codes=d.get("statusCodeDistribution",{})
ok=sum(v for k,v in codes.items() if k.startswith("2")); total=sum(codes.values()) or 1
print("%.0f %.3f %.3f %.3f %.4f" % (s["requestsPerSec"], p["p50"]*1e3, p["p99"]*1e3, p["p99.9"]*1e3, ok/total))'; }

# Warm up (first answers teach keypool the keys announce no limits; tokenizers load).
load "$through" "$TOKEN" 8 2s >/dev/null
sleep 2
idle_rss=$(rss_kb $kp)

echo "## Closed loop (oha -c N for $DURATION), direct vs through keypool"
echo
echo "| concurrency | direct req/s | keypool req/s | ratio | direct p50 / p99 / p99.9 ms | keypool p50 / p99 / p99.9 ms | keypool CPU s per 1k req | keypool RSS peak MB | keypool 2xx |"
echo "|---|---|---|---|---|---|---|---|---|"
for c in 16 64 256; do
  read -r d_rps d50 d99 d999 _ < <(load "$direct" sk-direct "$c" "$DURATION" | summary)
  t0=$(cpu_ticks $kp)
  read -r k_rps k50 k99 k999 k_ok < <(load "$through" "$TOKEN" "$c" "$DURATION" | summary)
  t1=$(cpu_ticks $kp)
  secs=${DURATION%s}
  cpu_per_k=$(python3 -c "print('%.3f' % ((($t1-$t0)/$TCK) / ($k_rps*$secs/1000)))")
  ratio=$(python3 -c "print('%.0f%%' % (100*$k_rps/$d_rps))")
  echo "| $c | $d_rps | $k_rps | $ratio | $d50 / $d99 / $d999 | $k50 / $k99 / $k999 | $cpu_per_k | $(( $(hwm_kb $kp) / 1024 )) | $k_ok |"
done
echo
echo "## Open loop at 1,000 requests/s (oha -q 1000 -c 64 for $DURATION, $ROUNDS rounds)"
echo
# One round is direct, keypool, nginx in turn; each figure is the median over
# the rounds (a single round's p50 moves by tens of microseconds on a VM).
nginx_url=""
[ -n "$pn" ] && nginx_url="http://127.0.0.1:$pn/v1/chat/completions"
: > "$work/open.txt"
for r in $(seq "$ROUNDS"); do
  read -r _ d50 d99 d999 _ < <(load "$direct" sk-direct 64 "$DURATION" -q 1000 | summary)
  read -r _ k50 k99 k999 _ < <(load "$through" "$TOKEN" 64 "$DURATION" -q 1000 | summary)
  n50=nan n99=nan n999=nan
  if [ -n "$nginx_url" ]; then
    read -r _ n50 n99 n999 _ < <(load "$nginx_url" sk-direct 64 "$DURATION" -q 1000 | summary)
  fi
  echo "$d50 $d99 $d999 $k50 $k99 $k999 $n50 $n99 $n999" >> "$work/open.txt"
done
python3 - "$work/open.txt" <<'PY'
import math, statistics, sys
rows = [[float(x) for x in line.split()] for line in open(sys.argv[1]) if line.strip()]
col = lambda i: [r[i] for r in rows]
med = lambda i: statistics.median(col(i))
added = lambda a, b: [r[a] - r[b] for r in rows]
print("| | p50 ms | p99 ms | p99.9 ms |")
print("|---|---|---|---|")
print("| direct | %.3f | %.3f | %.3f |" % (med(0), med(1), med(2)))
print("| keypool | %.3f | %.3f | %.3f |" % (med(3), med(4), med(5)))
print("| added by keypool | %.3f | %.3f | %.3f |" % tuple(statistics.median(added(3 + i, i)) for i in range(3)))
if not math.isnan(rows[0][6]):
    print("| nginx (reference: plain reverse proxy, keep-alive upstream) | %.3f | %.3f | %.3f |" % (med(6), med(7), med(8)))
    print("| added by nginx | %.3f | %.3f | %.3f |" % tuple(statistics.median(added(6 + i, i)) for i in range(3)))
print()
print("Medians over %d rounds. Added p50 in each round, in microseconds: keypool %s" % (
    len(rows), ", ".join("%.0f" % (1000 * x) for x in added(3, 0))), end="")
if not math.isnan(rows[0][6]):
    print("; nginx %s" % ", ".join("%.0f" % (1000 * x) for x in added(6, 0)), end="")
print(".")
PY
if [ -n "$nginx_url" ]; then
  read -r n_rps _ < <(load "$nginx_url" sk-direct 64 "$DURATION" | summary)
  echo
  echo "nginx closed loop at concurrency 64 for reference: $n_rps requests/s"
fi
echo
echo "## Memory and streaming"
echo
echo "- keypool resident memory idle, 10 keys: $((start_rss / 1024)) MB at start; $((idle_rss / 1024)) MB idle again after a 2 s warm-up at concurrency 8; $((tpm_rss / 1024)) MB idle with a TPM limit on the keys (tokenizer built)"
read -r dt < <(./target/release/examples/streams ttfb "http://127.0.0.1:$ps_stream/v1/chat/completions" sk-direct 200)
read -r kt < <(./target/release/examples/streams ttfb "http://127.0.0.1:$pk_stream/v1/chat/completions" "$TOKEN" 200)
echo "- streaming time to first byte at concurrency 1 (20 chunks 10 ms apart): direct $dt; through keypool $kt"
# Open streams (30 chunks 1 s apart), each count through a fresh keypool.
hold() { # protocol streams label
  local p k h before during
  p=$(port)
  $KP serve --listen 127.0.0.1:$p --upstream http://127.0.0.1:$ps_slow/v1 & k=$!; pids+=($k)
  wait_up "http://127.0.0.1:$p/healthz"
  sleep 1
  before=$(rss_kb $k)
  ./target/release/examples/streams hold "http://127.0.0.1:$p/v1/chat/completions" "$TOKEN" "$2" 12 "$1" > "$work/hold.txt" &
  h=$!
  sleep 10
  during=$(rss_kb $k)
  wait $h || true
  kill $k 2>/dev/null || true
  echo "- $2 concurrent open streams through one keypool, $3: resident memory $((before / 1024)) MB before, $((during / 1024)) MB with them open, $(( (during - before) / $2 )) KB per stream ($(head -n1 "$work/hold.txt"))"
}
if [ "$STREAMS_H1" -gt 0 ]; then hold h1 "$STREAMS_H1" "callers on HTTP/1.1 (a connection each)"; fi
hold h2 "$STREAMS" "callers on HTTP/2 (100 streams per connection)"

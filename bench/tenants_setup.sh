# Sourced by bench/tenants.sh, bench/tenants_cpu.sh and
# bench/tenants_same_core.sh (not run on its own):
# builds (unless NO_BUILD=1), starts the simulator and two gateways on
# SQLite, ONE with a single gateway token and MANY with $N, every token with
# RPM, TPM, RPD, an in-flight cap and a monthly budget (all far above what
# the load reaches), and sets: $LOAD (examples/tenants_load), $work (the
# tokens files $work/one.tokens and $work/many.tokens, the gateways' pid
# files), $pa and $pb (the two gateways' ports). Everything started is
# stopped on exit. The admin token lets /metrics be read.
# PIN=1: each gateway on CPU 1, the simulator and the load on CPU 0 ($ON_LOAD
# prefixes the load's command), so the gateway's own CPU is what limits
# throughput; otherwise all share both cores, as on a small host. Pinned, a
# gateway sees one CPU and so runs one request worker (workers follow the
# CPUs it may use), against two when shared.
T=${CARGO_TARGET_DIR:-./target}
# The gateway on its own: built with the example, it would get the
# features the example's dev-dependencies ask for (tokio's test-util among
# them), and be slower than the one users run.
if [ "${NO_BUILD:-}" != 1 ]; then
  cargo build --release --locked -p keypool -p keypool-sim --bins >&2
  cargo build --release --locked -p keypool --example tenants_load >&2
fi
BIN=$T/release/keypool SIM=$T/release/keypool-sim LOAD=$T/release/examples/tenants_load
ON_LOAD=() ON_GATEWAY=()
if [ "${PIN:-}" = 1 ]; then ON_LOAD=(taskset -c 0) ON_GATEWAY=(taskset -c 1); fi
work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}" $(cat "$work"/*.pid 2>/dev/null); do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true; rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_up() { for _ in $(seq 100); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done; echo "not up: $1" >&2; return 1; }
ps=$(port)
${ON_LOAD[@]+"${ON_LOAD[@]}"} $SIM --listen 127.0.0.1:$ps --accept-any-key --latency 0ms >/dev/null & pids+=($!)
export RUST_LOG=warn
export KEYPOOL_ADMIN_TOKEN=bench-admin-0123456789abcdef0123456789
LIMITS="--rpm 100000000 --tpm 100000000000 --rpd 100000000000 --max-inflight 10000 --budget 1000000 --period monthly"
start() { # side tokens -> port (the tokens go to $work/SIDE.tokens)
  local db="sqlite://$work/$1.db" p
  for i in $(seq 10); do KEYPOOL_DATABASE_URL=$db "$BIN" keys add "sk-bench-key-$i-0123456789abcdef" >/dev/null 2>&1; done
  for i in $(seq "$2"); do
    KEYPOOL_DATABASE_URL=$db "$BIN" tokens create "tenant-$i" $LIMITS 2>/dev/null >> "$work/$1.tokens"
  done
  p=$(port)
  KEYPOOL_DATABASE_URL=$db ${ON_GATEWAY[@]+"${ON_GATEWAY[@]}"} "$BIN" serve --listen 127.0.0.1:$p --upstream http://127.0.0.1:$ps/v1 >"$work/$1.log" 2>&1 &
  echo $! > "$work/$1.pid"
  wait_up "http://127.0.0.1:$p/healthz"
  echo "$p"
}
# Requests a gateway has counted (/metrics, read with the admin token).
served() { curl -fsS -H "authorization: Bearer $KEYPOOL_ADMIN_TOKEN" "http://127.0.0.1:$1/metrics" | awk '/^keypool_requests_total/ {s += $2} END {printf "%d\n", s}'; }
pa=$(start one 1)
pb=$(start many "$N")

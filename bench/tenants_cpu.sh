#!/usr/bin/env bash
# The gateway's CPU time per request, one gateway token against N (default
# 1,000), by thread: the request path (`keypool-worker`), the main runtime
# (the records writer and the rest of the background work) and SQLite's
# thread. Same setup and load as bench/tenants.sh (every token with every
# limit and a budget, load spread over all N); alternating rounds. CPU per
# request is steadier than requests/s on a shared machine (a neighbour's
# load slows both sides' clocks, not their work), and it says which part
# of the gateway grows with the number of tenants.
# Usage: [C=64] [PIN=1] bash bench/tenants_cpu.sh [N] [ROUNDS] [SECS]   (NO_BUILD=1: use
# the release binaries already built in $CARGO_TARGET_DIR or ./target)
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000} ROUNDS=${2:-10} SECS=${3:-5}
# shellcheck source=bench/tenants_setup.sh
. bench/tenants_setup.sh
# CPU ticks by thread group: worker main sqlite other
ticks() {
  python3 - "$1" <<'PY'
import os, sys
pid = sys.argv[1]
g = {"worker": 0, "main": 0, "sqlite": 0, "other": 0}
for t in os.listdir(f"/proc/{pid}/task"):
    try:
        s = open(f"/proc/{pid}/task/{t}/stat").read()
    except OSError:
        continue
    comm = s[s.index("(") + 1:s.rindex(")")]
    f = s[s.rindex(")") + 2:].split()
    n = int(f[11]) + int(f[12])
    k = "worker" if comm.startswith("keypool-worker") else "main" if comm.startswith("tokio-rt") else "sqlite" if comm.startswith("sqlx-sqlite") else "other"
    g[k] += n
print(g["worker"], g["main"], g["sqlite"], g["other"])
PY
}
run() { # side port -> "req/s worker_us main_us sqlite_us other_us" (CPU per request)
  local before after n0 n1 out
  before=$(ticks "$(cat "$work/$1.pid")"); n0=$(served "$2")
  out=$(${ON_LOAD[@]+"${ON_LOAD[@]}"} "$LOAD" "http://127.0.0.1:$2/v1/chat/completions" "$work/$1.tokens" "${C:-64}" "$SECS")
  # The round's last batch (1 s) and statistics (every 5 s with many
  # tokens) are written before the CPU is read again.
  sleep 7
  after=$(ticks "$(cat "$work/$1.pid")"); n1=$(served "$2")
  python3 -c "
import sys
b = list(map(int, '$before'.split())); a = list(map(int, '$after'.split())); n = $n1 - $n0
if n <= 0: sys.exit('no requests counted in /metrics: is the admin token accepted?')
tick = 1e6 / $(getconf CLK_TCK)
print('$out'.split()[0], *('%.1f' % ((y - x) * tick / max(n, 1)) for x, y in zip(b, a)))"
}
run one "$pa" >/dev/null; run many "$pb" >/dev/null   # warm both
: > "$work/rounds"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then a=$(run one "$pa"); b=$(run many "$pb"); else b=$(run many "$pb"); a=$(run one "$pa"); fi
  echo "round $r: one: $a | $N: $b   (req/s, CPU µs per request: request path, main runtime, SQLite, other)"
  echo "$a $b" >> "$work/rounds"
done
python3 - "$work/rounds" "$N" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
names = ["request path", "main runtime", "SQLite", "other"]
med = lambda i: statistics.median(r[i] for r in rows)
tot = lambda r, o: sum(r[o + 1:o + 5])
print("CPU µs per request, medians over %d rounds: one token | %s tokens | added" % (len(rows), sys.argv[2]))
for i, name in enumerate(names):
    print("  %-13s %7.1f | %7.1f | %+6.1f" % (name, med(1 + i), med(6 + i), med(6 + i) - med(1 + i)))
a = statistics.median(tot(r, 0) for r in rows); b = statistics.median(tot(r, 5) for r in rows)
ratio = statistics.median(tot(r, 0) / tot(r, 5) for r in rows)
print("  %-13s %7.1f | %7.1f | %+6.1f   (one's total / N's: of the medians %.3f; per round, median %.3f)" % ("total", a, b, b - a, a / b, ratio))
PY

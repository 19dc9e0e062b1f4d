#!/usr/bin/env bash
# The cost of tenants (issue 17): one keypool with ONE gateway token against
# one with N (default 1,000), every token with RPM, TPM, RPD, an in-flight cap
# and a monthly budget (all far above what the load reaches, so every request
# is admitted: what is measured is the counting, not refusals), over the same
# simulator. Load comes from examples/tenants_load.rs (closed loop, c64),
# which on the N side sends request i with token i mod N. Alternating rounds;
# prints each round and the medians of requests/s and p50 latency.
# Usage: [C=64] [PIN=1] bash bench/tenants.sh [N] [ROUNDS] [SECS]  (C: concurrency; C=1
# for latency, where p50 is one request's time through the gateway)   (NO_BUILD=1: use the
# release binaries already built in $CARGO_TARGET_DIR or ./target)
# All traffic is on loopback; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000} ROUNDS=${2:-10} SECS=${3:-10}
# shellcheck source=bench/tenants_setup.sh
. bench/tenants_setup.sh
echo "tokens: one side $(wc -l < "$work/one.tokens"), many side $(wc -l < "$work/many.tokens")" >&2
run() { ${ON_LOAD[@]+"${ON_LOAD[@]}"} "$LOAD" "http://127.0.0.1:$1/v1/chat/completions" "$work/$2.tokens" "${C:-64}" "$SECS"; }
run "$pa" one >/dev/null; run "$pb" many >/dev/null   # warm both
: > "$work/rounds"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then a=$(run "$pa" one); b=$(run "$pb" many); else b=$(run "$pb" many); a=$(run "$pa" one); fi
  echo "round $r: one tenant: $a | $N tenants: $b   (req/s p50_us p99_us failed)"
  echo "$a $b" >> "$work/rounds"
done
python3 - "$work/rounds" "$N" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
n = sys.argv[2]
a_rps, a_p50 = [r[0] for r in rows], [r[1] for r in rows]
b_rps, b_p50 = [r[4] for r in rows], [r[5] for r in rows]
failed = sum(r[3] + r[7] for r in rows)
ratio = [r[4] / r[0] for r in rows]
added = [r[5] - r[1] for r in rows]
print("one tenant: %.0f req/s (%.0f-%.0f), p50 %.0f us; %s tenants: %.0f req/s (%.0f-%.0f), p50 %.0f us" % (
    statistics.median(a_rps), min(a_rps), max(a_rps), statistics.median(a_p50), n,
    statistics.median(b_rps), min(b_rps), max(b_rps), statistics.median(b_p50)))
print("throughput %s/one per round: median %.3f (%.3f-%.3f); added p50 per round: median %+.0f us (%+.0f..%+.0f); failed requests: %d" % (
    n, statistics.median(ratio), min(ratio), max(ratio), statistics.median(added), min(added), max(added), failed))
sys.path.insert(0, "bench")
from median_ci import median_ci
lo, hi = median_ci(ratio)
alo, ahi = median_ci(added)
print("95%% CI of the median: throughput ratio %.3f-%.3f; added p50 %+.0f..%+.0f us (%d rounds)" % (lo, hi, alo, ahi, len(rows)))
PY

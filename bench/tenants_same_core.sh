#!/usr/bin/env bash
# The cost of tenants (issue 17), measured with both gateways running at
# once on the same core: ONE (a single gateway token) and MANY (N tokens,
# default 1,000), every token with RPM, TPM, RPD, an in-flight cap and a
# monthly budget, as in bench/tenants.sh. Both gateways are pinned to CPU 1,
# each in a CPU control group of its own with the same weight, so they split
# the core evenly while both have work; the simulator and the two loads
# (examples/tenants_load, started together) run on CPU 0.
#
# Why: on a shared VM the speed of a core drifts by 10-30% from one round
# to the next (other guests), so rounds that alternate the two gateways
# (bench/tenants.sh) measure the drift as much as the gateways. Here both
# see the same core at the same moments; what differs is the work each does
# a request. Per round it reads each gateway's requests served (/metrics)
# and CPU time (all its threads, /proc/PID/stat, in clock ticks) from the
# end of the round before (so nothing done between rounds goes uncounted), and
# prints requests/s, CPU µs a request and p50 latency for both. The figure
# for "throughput" is the ratio of requests served per CPU-second (MANY ÷
# ONE): what one core delivers with N tenants against one; the ratio of
# requests/s is printed too (it also moves with how evenly the scheduler
# split the core). C=1: one request in flight on each side, for the added
# p50 latency (µs, MANY − ONE).
#
# Needs root and a writable cpu cgroup (v1: /sys/fs/cgroup/cpu, cpu.shares;
# v2: /sys/fs/cgroup with the cpu controller, cpu.weight), and 2 CPUs.
# PERF=S: also `perf record -F 1999 -g -C 1` for S seconds, starting 2 s
# into the second counted round, into $PERF_OUT (default
# /tmp/keypool-same-core.perf), with the two gateways' pids and requests
# served before and after in $PERF_OUT.pids; bench/perf_split.py reads
# both (CPU µs a request by thread and by function, one against many).
# Usage: [C=64] [NO_BUILD=1] [PERF=8] bash bench/tenants_same_core.sh [N] [ROUNDS] [SECS]
# All traffic is on loopback; everything started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000} ROUNDS=${2:-20} SECS=${3:-5}
PIN=1
if [ -n "${PERF:-}" ]; then
  # Recorded inside the second counted round, from its 2nd second.
  command -v perf >/dev/null || { echo "PERF needs perf (Debian: linux-perf)" >&2; exit 1; }
  [ "$ROUNDS" -ge 2 ] && [ "$PERF" -le $(( SECS - 2 )) ] || {
    echo "PERF=$PERF needs at least 2 rounds of at least $(( PERF + 2 )) s" >&2; exit 1; }
fi
# shellcheck source=bench/tenants_setup.sh
. bench/tenants_setup.sh
if [ -w /sys/fs/cgroup/cpu ]; then
  cg=/sys/fs/cgroup/cpu weight=cpu.shares w=1024
elif grep -qw cpu /sys/fs/cgroup/cgroup.controllers 2>/dev/null && [ -w /sys/fs/cgroup ]; then
  cg=/sys/fs/cgroup weight=cpu.weight w=100
  # v2: a child group has cpu.weight only once the parent hands the cpu
  # controller down (refused while the root itself holds processes, as in
  # some containers).
  grep -qw cpu "$cg/cgroup.subtree_control" || echo +cpu > "$cg/cgroup.subtree_control" || {
    echo "could not enable the cpu controller in $cg/cgroup.subtree_control" >&2; exit 1; }
else
  echo "no writable cpu cgroup (run as root on a machine that has one)" >&2; exit 1
fi
groups=()
# A group can go once its processes have exited (the gateways are not this
# shell's children, so cleanup's wait does not wait for them).
drop_groups() {
  cleanup
  for g in ${groups[@]+"${groups[@]}"}; do
    for _ in $(seq 100); do [ -n "$(cat "$g/cgroup.procs")" ] || break; sleep 0.1; done
    rmdir "$g" 2>/dev/null || echo "could not remove $g" >&2
  done
}
trap drop_groups EXIT
for side in one many; do
  g="$cg/keypool-bench-$side-$$"
  mkdir "$g"; groups+=("$g")
  echo "$w" > "$g/$weight"
  cat "$work/$side.pid" > "$g/cgroup.procs"
done
cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }   # clock ticks, all threads
ida=$(cat "$work/one.pid") idb=$(cat "$work/many.pid")
# Readings "served_one served_many cpu_one cpu_many", kept in a file: each
# round starts from where the last one ended, so the work done between
# rounds (the last batch of records, the statistics written every few
# seconds) is counted too, in the next round.
read_now() { echo "$(served "$pa") $(served "$pb") $(cpu "$ida") $(cpu "$idb")"; }
round() { # -> "a_rps a_cpu_us a_p50 b_rps b_cpu_us b_p50" (CPU µs a request)
  local before after
  before=$(cat "$work/readings")
  taskset -c 0 "$LOAD" "http://127.0.0.1:$pa/v1/chat/completions" "$work/one.tokens" "${C:-64}" "$SECS" > "$work/a" & local la=$!
  taskset -c 0 "$LOAD" "http://127.0.0.1:$pb/v1/chat/completions" "$work/many.tokens" "${C:-64}" "$SECS" > "$work/b" & local lb=$!
  wait "$la"; wait "$lb"
  sleep 1
  after=$(read_now)
  echo "$after" > "$work/readings"
  python3 -c "
import sys
tick = 1e6 / $(getconf CLK_TCK)
b0, b1 = list(map(int, '$before'.split())), list(map(int, '$after'.split()))
n = (b1[0] - b0[0], b1[1] - b0[1])
c = ((b1[2] - b0[2]) * tick, (b1[3] - b0[3]) * tick)
if min(n) <= 0: sys.exit('no requests counted in /metrics')
a, b = open('$work/a').read().split(), open('$work/b').read().split()
if int(a[3]) + int(b[3]): sys.exit('failed requests: %s %s' % (a[3], b[3]))
print(a[0], '%.1f' % (c[0] / n[0]), a[1], b[0], '%.1f' % (c[1] / n[1]), b[1])"
}
read_now > "$work/readings"
round >/dev/null   # warm both
if [ -n "${PERF:-}" ]; then
  out=${PERF_OUT:-/tmp/keypool-same-core.perf}
  # The second counted round starts one round (and the ~1 s after it) from now.
  ( sleep $(( SECS + 3 ))
    echo "one=$ida many=$idb one0=$(served "$pa") many0=$(served "$pb")" > "$out.pids"
    perf record -q -F 1999 -g -C 1 -o "$out" -- sleep "$PERF" >/dev/null
    echo "one_end=$(served "$pa") many_end=$(served "$pb")" >> "$out.pids" ) &
fi
: > "$work/rounds"
for r in $(seq "$ROUNDS"); do
  x=$(round)
  echo "round $r: one tenant: $(echo "$x" | cut -d' ' -f1-3) | $N tenants: $(echo "$x" | cut -d' ' -f4-6)   (req/s, CPU µs a request, p50 µs)"
  echo "$x" >> "$work/rounds"
done
python3 - "$work/rounds" "$N" <<'PY'
import statistics, sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
n = sys.argv[2]
sys.path.insert(0, "bench")
from median_ci import median_ci
def show(name, values, fmt):
    lo, hi = median_ci(values)
    print(("  %-34s median " + fmt + ", 95%% CI " + fmt + " to " + fmt + " (range " + fmt + " to " + fmt + ")") % (
        name, statistics.median(values), lo, hi, min(values), max(values)))
med = lambda i: statistics.median(r[i] for r in rows)
print("one tenant: %.0f req/s, %.1f CPU µs a request, p50 %.0f µs; %s tenants: %.0f req/s, %.1f CPU µs a request, p50 %.0f µs (medians, %d rounds)" % (
    med(0), med(1), med(2), n, med(3), med(4), med(5), len(rows)))
print("per round, %s tenants against one:" % n)
show("requests per CPU-second, ratio", [r[1] / r[4] for r in rows], "%.3f")
show("requests/s, ratio", [r[3] / r[0] for r in rows], "%.3f")
show("CPU a request, added (µs)", [r[4] - r[1] for r in rows], "%+.1f")
show("p50 latency, added (µs)", [r[5] - r[2] for r in rows], "%+.0f")
PY

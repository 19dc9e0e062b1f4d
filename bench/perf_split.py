#!/usr/bin/env python3
"""CPU µs a request of the one-token and the many-token gateway, by thread
and by function, from a `perf record` of both at once
(`PERF=8 bash bench/tenants_same_core.sh`). Functions are listed by what
the many-token gateway spends more, most first. Each sample stands for
1/1999 s of the core; `perf` itself costs both sides alike, so read the
rows as shares rather than totals.
Usage: python3 bench/perf_split.py [PERF_DATA] [TOP] [THREAD_PREFIX]
(default /tmp/keypool-same-core.perf, 30, all threads)"""
import collections
import re
import subprocess
import sys

data = sys.argv[1] if len(sys.argv) > 1 else "/tmp/keypool-same-core.perf"
top = int(sys.argv[2]) if len(sys.argv) > 2 else 30
only = sys.argv[3] if len(sys.argv) > 3 else ""
HZ = 1999.0
kv = dict(x.split("=") for x in open(data + ".pids").read().split())
if "one_end" not in kv or "many_end" not in kv:
    sys.exit("%s.pids has no end counts: the recording did not finish" % data)
side_of = {kv["one"]: "one", kv["many"]: "many"}
served = {s: int(kv[s + "_end"]) - int(kv[s + "0"]) for s in ("one", "many")}
if min(served.values()) <= 0:
    sys.exit("no requests counted while recording (%s): was the recording inside a round?" % served)
out = subprocess.run(
    ["perf", "script", "-i", data, "-F", "pid,tid,comm,ip,sym,dso", "--hide-call-graph"],
    capture_output=True, text=True, check=True,
).stdout
by_sym = {s: collections.Counter() for s in served}
by_thread = {s: collections.Counter() for s in served}
for line in out.splitlines():
    m = re.match(r"\s*(\S+)\s+(\d+)/(\d+)\s+\S+\s+(.*)$", line)
    if not m or m.group(2) not in side_of or not m.group(1).startswith(only):
        continue
    side = side_of[m.group(2)]
    by_sym[side][re.sub(r"\+0x[0-9a-f]+", "", m.group(4).strip())] += 1
    by_thread[side][re.sub(r"\d+$", "", m.group(1))] += 1


def us(side, n):
    return n * 1e6 / HZ / served[side]


print("requests served while recording:", served)
for side in ("one", "many"):
    threads = ", ".join("%s %.2f" % (t, us(side, n)) for t, n in by_thread[side].most_common())
    print("%-4s %.2f µs a request (%s)" % (side, us(side, sum(by_sym[side].values())), threads))
print("%8s %8s %8s  %s" % ("one", "many", "added", "function"))
names = set(by_sym["one"]) | set(by_sym["many"])
added = {k: us("many", by_sym["many"][k]) - us("one", by_sym["one"][k]) for k in names}
for k in sorted(names, key=lambda k: -added[k])[:top]:
    print("%8.3f %8.3f %+8.3f  %s" % (us("one", by_sym["one"][k]), us("many", by_sym["many"][k]), added[k], k[:110]))

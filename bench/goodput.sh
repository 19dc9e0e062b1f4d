#!/usr/bin/env bash
# The scheduler's goodput benchmark (issue 3): 10 simulated keys at 30 requests/min,
# offered 8 requests/s (1.6× the pool's capacity) for 60 s, keypool's max_wait 60 s,
# against a simulator counting a rolling 60 s window, then a token bucket, then
# Azure OpenAI's shape (requests over 10 s spans, only `remaining` headers);
# keys' limits configured in keypool, then only learned from the upstream's headers.
# All traffic stays on loopback; each run ends by itself (about 90 s each).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p keypool --example goodput
echo "| simulator | limits | offered | succeeded | upstream 429s | busiest/least busy key | last answer | ideal time (requests ÷ capacity) | goodput |"
echo "|---|---|---|---|---|---|---|---|---|"
for sim in window bucket azure; do
  for limits in configured learned; do
    "${CARGO_TARGET_DIR:-./target}"/release/examples/goodput --sim "$sim" --limits "$limits" "$@"
  done
done

#!/usr/bin/env bash
# The TPM-bound goodput benchmark (issue 13, the origin's own case): 5 simulated
# keys at 40,000 tokens/min, chat prompts of 400-6,000 characters with max_tokens
# 256-2,048, offered 1.3x the pool's token capacity (counted as the upstream
# charges: a token per 4 characters plus max_tokens) for 60 s; against a
# simulator counting a rolling 60 s window, then a token bucket; keys' limits
# configured in keypool, then only learned from the upstream's headers.
# All traffic stays on loopback; each run ends by itself (about 90 s each).
# Extra arguments go to every run (e.g. --duration 10s, --charge max).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --locked -p keypool --example goodput_tpm
echo "| simulator | charge | limits | offered | succeeded | upstream 429s (per key) | last answer | ideal time |"
echo "|---|---|---|---|---|---|---|---|"
for sim in window bucket; do
  for limits in configured learned; do
    "${CARGO_TARGET_DIR:-./target}"/release/examples/goodput_tpm --sim "$sim" --limits "$limits" "$@"
  done
done

#!/usr/bin/env bash
# Bounded soak test of the release proxy (issue #6): mixed load through it for SOAK_SECS
# (default 600) against the sandbox, tokens that expire every minute, one injected fault
# every 20-40 s (token endpoint 500 / 503 / 429 / slow / HTML, all tokens revoked, API 503 /
# reset mid-body / stall), the proxy's RSS sampled every 2 s. Prints requests sent, succeeded
# and failed by cause, latency, tokens fetched, what the sandbox's API refused, and RSS drift.
# Exits 1 when a failure is not explained by an injected fault, the API saw an expired,
# unknown or wrong-tenant token, the proxy died or did not exit cleanly, or RSS drifted over
# both SOAK_RSS_PCT (20) % and SOAK_RSS_MIB (8) MiB after warm-up.
#
#   bench/soak.sh                 # 10 minutes
#   SOAK_SECS=120 bench/soak.sh   # or: bench/soak.sh 120
#   SOAK_SEED=42 bench/soak.sh    # repeat a load mix and fault schedule
#   SOAK_RUNTIME=per-core bench/soak.sh   # server.runtime (default multi-thread)
#
# The proxy's config and log are left in target/soak/.
set -euo pipefail
cd "$(dirname "$0")/.."

SOAK_SECS=${1:-${SOAK_SECS:-600}}
args=(--secs "$SOAK_SECS" --work target/soak
      --rss-pct "${SOAK_RSS_PCT:-20}" --rss-mib "${SOAK_RSS_MIB:-8}")
[ -n "${SOAK_SEED:-}" ] && args+=(--seed "$SOAK_SEED")
args+=(--runtime "${SOAK_RUNTIME:-multi-thread}")

cargo build --release --quiet --bin defender-proxy --example soak
exec target/release/examples/soak --bin target/release/defender-proxy "${args[@]}"

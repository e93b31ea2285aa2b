#!/usr/bin/env bash
# What the shared rate-limit store costs, in one run, against a generous limit (a million a
# minute, so nothing ever queues):
#   req/s         wrk -c64 for DURATION, the route limited, with the local and the Redis store
#   Redis calls   per request, from `INFO commandstats` before and after the Redis run (the
#                 script's EVALSHA and any ZREM; commands run inside the script are not calls)
#   p99           at a fixed RATE req/s for RATE_SECS (examples/loadgen `rate`, open loop) with
#                 each store: the difference is the latency the store adds
# The upstream is nginx (static token endpoint and a 1 KiB JSON body); redis-server runs on
# loopback with no persistence.
#
#   bench/store.sh            # DURATION=10s RATE=1000 RATE_SECS=10 by default
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

DURATION=${DURATION:-10s}
RATE=${RATE:-1000}
RATE_SECS=${RATE_SECS:-10}

if ! command -v wrk >/dev/null 2>&1 || ! command -v nginx >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
fi
if ! command -v redis-server >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null
fi
ulimit -n 20000 2>/dev/null || true
cargo build --release --quiet --bin defender-proxy --example loadgen
BIN=${CARGO_TARGET_DIR:-$PWD/target}/release/defender-proxy
LOADGEN=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/loadgen

WORK=$(mktemp -d)
PIDS=()
trap 'stop_all up' EXIT
UP=18301; LOCAL=18302; SHARED=18303; REDIS=18304
ports_free $UP $LOCAL $SHARED
BODY=$(json_body)
BODY=${BODY//\'/}

upstream_conf $UP "$WORK" "$BODY" 1 > "$WORK/upstream.conf"
nginx -c "$WORK/upstream.conf"
redis-server --port $REDIS --bind 127.0.0.1 --save '' --appendonly no >"$WORK/redis.log" 2>&1 &
PIDS+=($!)

ROUTE='rate_limit = "bench"'
LIMIT='[rate_limit.bench]
per_minute = 1000000
per_hour = 60000000'
STORE="[rate_limit_store]
type = \"redis\"
url = \"redis://127.0.0.1:$REDIS\"
timeout_ms = 250"
dp_config $LOCAL $UP "$ROUTE" false "$LIMIT" > "$WORK/local.toml"
dp_config $SHARED $UP "$ROUTE" false "$LIMIT
$STORE" > "$WORK/shared.toml"
for name in local shared; do
  setsid "$BIN" run --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!)
done
for port in $LOCAL $SHARED; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/api/alerts" && break; sleep 0.1; done
done

# Commands the proxy sent (a script's own redis.call()s are counted under their names too).
redis_calls() {
  redis-cli -p $REDIS INFO commandstats | tr -d '\r' |
    awk -F'[:=,]' '/^cmdstat_(evalsha|eval|zrem|script)(\||:)/ { n += $3 } END { print n + 0 }'
}

printf '%-8s %10s %12s %10s %10s\n' store req/s redis/req p50_ms p99_ms
for name in local shared; do
  port=$LOCAL; [ $name = shared ] && port=$SHARED
  before=$(redis_calls)
  out=$(wrk -t2 -c64 -d"$DURATION" "http://127.0.0.1:$port/api/alerts")
  after=$(redis_calls)
  rps=$(awk '/Requests\/sec/ { print $2 }' <<<"$out")
  n=$(awk '/requests in/ { print $1 }' <<<"$out")
  per=$(awk -v a="$after" -v b="$before" -v n="$n" 'BEGIN { printf "%.3f", (a - b) / n }')
  rate=$("$LOADGEN" rate "http://127.0.0.1:$port/api/alerts" "$RATE" "$RATE_SECS")
  p50=$(tr ' ' '\n' <<<"$rate" | awk -F= '$1 == "p50_ms" { print $2 }')
  p99=$(tr ' ' '\n' <<<"$rate" | awk -F= '$1 == "p99_ms" { print $2 }')
  printf '%-8s %10s %12s %10s %10s\n' "$name" "$rps" "$per" "$p50" "$p99"
  echo "  wrk: $n requests; at $RATE req/s: $rate" >&2
done
grep -h "rate_limit_store" "$WORK/shared.log" | head -3 >&2 || true

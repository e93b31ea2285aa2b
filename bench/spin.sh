#!/usr/bin/env bash
# How the request rate of a proxy of defender-proxy's shape falls with its user time alone:
# the tokio floor (examples/floor.rs) with FLOOR_SPIN rounds of pure computation added per
# request (no memory, no system call), then defender-proxy, under the same load. For each: the
# request rate, the proxy's user and system time per request, and the time the upstream
# spent per request (on two cores shared by all three, what one proxy costs the others).
#
#   bench/spin.sh        # SPINS="0 1000 2000 4000" DURATION=8 (seconds) CONNECTIONS=64
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
SPINS=${SPINS:-0 1000 2000 4000}; DURATION=${DURATION:-8}; CONNECTIONS=${CONNECTIONS:-64}
need_wrk_nginx
cargo build --release --quiet --bin defender-proxy --example floor
BIN=$PWD/target/release/defender-proxy; FLOOR=$PWD/target/release/examples/floor
WORK=$(mktemp -d); chmod 755 "$WORK"
UP=18171; PX=18172
PIDS=()
trap 'stop_all up' EXIT
ports_free $UP $PX
BODY=$(json_body)
upstream_conf $UP "$WORK" "$BODY" > "$WORK/up.conf"
nginx -c "$WORK/up.conf" -p "$WORK"
dp_config $PX $UP > "$WORK/dp.toml"
UPPIDS=$(pgrep -P "$(cat "$WORK/up.pid")" | paste -sd' ')
ticks() { # user and system ticks of all threads of the given processes
  local p t
  for p in "$@"; do for t in /proc/"$p"/task/*; do sed 's/^.*) //' "$t/stat"; done; done |
    awk '{u+=$12; s+=$13} END {print u+0, s+0}'
}
TCK=$(getconf CLK_TCK)
measure() { # NAME PID: one wrk run against the proxy on $PX
  local name=$1 pid=$2 u0 s0 u1 s1 o0 o1 req
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PX/api/incidents" && break; sleep 0.05; done
  own_session "$pid"  # as nginx's daemon (lib.sh)
  wrk -t2 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$PX/api/incidents" >/dev/null # warm-up
  read -r u0 s0 < <(ticks "$pid"); read -r o0 < <(ticks $UPPIDS | awk '{print $1 + $2}')
  wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$PX/api/incidents" >"$WORK/wrk.out"
  read -r u1 s1 < <(ticks "$pid"); read -r o1 < <(ticks $UPPIDS | awk '{print $1 + $2}')
  req=$(awk '/requests in/ {print $1}' "$WORK/wrk.out")
  awk -v n="$name" -v req="$req" -v d="$DURATION" -v t="$TCK" -v u=$((u1 - u0)) -v s=$((s1 - s0)) \
      -v o=$((o1 - o0)) \
    'BEGIN { printf "%-16s %9.0f %10.2f %10.2f %12.2f\n", n, req / d, u * 1e6 / t / req, s * 1e6 / t / req, o * 1e6 / t / req }'
}
printf '%-16s %9s %10s %10s %12s\n' name req/s user_us sys_us upstream_us
for spin in $SPINS; do
  FLOOR_SPIN=$spin setsid "$FLOOR" 127.0.0.1:$PX 127.0.0.1:$UP "$(nproc)" & PIDS+=($!); P=$!
  measure "floor+spin$spin" $P
  kill $P; wait $P 2>/dev/null || true
done
setsid "$BIN" run --config "$WORK/dp.toml" >/dev/null 2>"$WORK/dp.log" & PIDS+=($!); P=$!
measure dp $P
echo "(per request; times in µs; upstream: the nginx upstream's user + system time; wrk -t2 -c$CONNECTIONS -d${DURATION}s each)"

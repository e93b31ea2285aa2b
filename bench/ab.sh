#!/usr/bin/env bash
# A/B of two defender-proxy binaries: one at a time against the same nginx upstream, each
# driven by wrk for DURATION, ROUNDS times alternately; prints req/s and the user and system
# CPU time the proxy spent per request (from /proc/PID/task/*/stat).
#
#   bench/ab.sh OLD_BINARY NEW_BINARY      # ROUNDS=2 DURATION=5s CONNECTIONS=64
set -euo pipefail
[ $# -eq 2 ] || { echo "usage: bench/ab.sh BINARY_A BINARY_B" >&2; exit 64; }
ROUNDS=${ROUNDS:-2}; DURATION=${DURATION:-5s}; CONNECTIONS=${CONNECTIONS:-64}
. "$(dirname "$0")/lib.sh"
need_debian wrk:wrk nginx:nginx-light
WORK=$(mktemp -d); chmod 755 "$WORK"
UP=18121; PX=18122
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; [ -f "$WORK/up.pid" ] && kill "$(cat "$WORK/up.pid")"; rm -rf "$WORK"; }
trap cleanup EXIT
upstream_conf $UP "$WORK" '{"value":[{"id":1,"title":"xxxxxxxxxxxxxxxxxxxx"}]}' > "$WORK/up.conf"
dp_config $PX $UP > "$WORK/dp.toml"
nginx -c "$WORK/up.conf" -p "$WORK"
ticks() { cat /proc/"$1"/task/*/stat | awk '{ sub(/^.*\) /, ""); u += $12; s += $13 } END { print u, s }'; }
hz=$(getconf CLK_TCK)
for _ in $(seq "$ROUNDS"); do
  for bin in "$1" "$2"; do
    if curl -s -o /dev/null "http://127.0.0.1:$PX/"; then echo "port $PX is taken" >&2; exit 1; fi
    setsid "$bin" run --config "$WORK/dp.toml" 2>/dev/null & PID=$!
    for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PX/api/incidents" && break; sleep 0.05; done
    own_session "$PID"  # as nginx's daemon (lib.sh)
    read -r u0 s0 < <(ticks "$PID")
    out=$(wrk -t2 -c"$CONNECTIONS" -d"$DURATION" "http://127.0.0.1:$PX/api/incidents")
    read -r u1 s1 < <(ticks "$PID")
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    printf '%-50s req/s %9.0f  user_us/req %6.2f  sys_us/req %6.2f\n' "$bin" \
      "$(echo "$out" | awk '/Requests\/sec/ {print $2}')" \
      "$(echo "($u1-$u0)*1000000/$hz/$n" | bc -l)" "$(echo "($s1-$s0)*1000000/$hz/$n" | bc -l)"
    kill "$PID"; wait "$PID" 2>/dev/null || true; PID=""
  done
done

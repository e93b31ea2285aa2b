#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind, side by side in one run:
#   nginx        nginx as a reverse proxy adding the bearer (one process: master_process off)
#   hyper-floor  examples/hyperfloor.rs, hyper-util's server and client with no policy
#   dp           defender-proxy, server.runtime = "multi-thread" (the default)
#   dp-per-core  defender-proxy, server.runtime = "per-core"
# each in front of the same nginx upstream (1 KiB of JSON), with a warm token for
# defender-proxy. After WARM requests, the counters are zeroed, REQUESTS more are sent
# (oha, CONNECTIONS at a time), and the instructions the process ran meanwhile, divided by
# REQUESTS, are printed.
#
# Why: bench/run.sh's request rates on this shared 2-core machine move by 20 % and more
# between runs of the same binary. An instruction count is the same for the same binary and
# input whatever else the machine does, so it shows what a change to the request path costs
# or saves. It counts user space only: the system calls' kernel time is not in it, nor are
# cache misses or the scheduler's work, so it ranks request paths; it does not predict
# req/s. Under valgrind every process runs one thread at a time.
#
#   bench/instructions.sh                     # about 2 minutes
#   REQUESTS=5000 bench/instructions.sh
#   DP_BIN=/path/to/defender-proxy bench/instructions.sh   # another binary (not built here)
#
# Settings (defaults): REQUESTS=2000 WARM=300 CONNECTIONS=8 DP_BIN= OHA_VERSION=1.16.0
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

REQUESTS=${REQUESTS:-2000}
WARM=${WARM:-300}
CONNECTIONS=${CONNECTIONS:-8}
OHA_VERSION=${OHA_VERSION:-1.16.0}

need_debian valgrind:valgrind nginx:nginx-light
OHA=$(need_oha "$OHA_VERSION")
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
if [ -n "${DP_BIN:-}" ]; then
  nice -n 19 cargo build --release --quiet --example hyperfloor
  BIN=$(realpath "$DP_BIN")
  BUILT="given as DP_BIN"
else
  nice -n 19 cargo build --release --quiet --bin defender-proxy --example hyperfloor
  BIN=$TARGET_DIR/release/defender-proxy
  BUILT="built from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo '+uncommitted changes')"
fi
FLOOR=$TARGET_DIR/release/examples/hyperfloor

WORK=$(mktemp -d)
chmod 755 "$WORK"
PIDS=()
trap 'stop_all up' EXIT

UP=18141; NGX=18142; FLR=18143; DP=18144; DPP=18145
ports_free $UP $NGX $FLR $DP $DPP
BODY=$(json_body)
upstream_conf $UP "$WORK" "${BODY//\'/}" 1 > "$WORK/upstream.conf"
nginx -c "$WORK/upstream.conf" -p "$WORK"
nginx_proxy_conf $NGX $UP "$WORK" nginx |
  sed 's/^worker_processes auto;/worker_processes 1; master_process off; daemon off;/' > "$WORK/nginx.conf"
dp_config $DP $UP > "$WORK/dp.toml"
dp_config $DPP $UP "" false "" "" 2 per-core > "$WORK/dpp.toml"

# Starts NAME under callgrind, serving on PORT.
#   counted NAME PORT CMD...
declare -A PID PORT
counted() {
  local name=$1 port=$2
  shift 2
  setsid valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$name" "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=($!); PID[$name]=$!; PORT[$name]=$port
}
counted nginx $NGX nginx -c "$WORK/nginx.conf" -p "$WORK"
counted hyper-floor $FLR "$FLOOR" 127.0.0.1:$FLR 127.0.0.1:$UP 2
counted dp $DP "$BIN" run --config "$WORK/dp.toml"
counted dp-per-core $DPP "$BIN" run --config "$WORK/dpp.toml"

NAMES=(nginx hyper-floor dp dp-per-core)
for name in "${NAMES[@]}"; do
  # Under valgrind a start takes seconds.
  wait_ok "http://127.0.0.1:${PORT[$name]}/api/x" 60 || { cat "$WORK/$name.log" >&2; exit 1; }
done

# Sends N requests to PORT; fails unless every one was answered 200.
#   load PORT N
load() {
  local out
  out=$("$OHA" --no-tui -n "$2" -c "$CONNECTIONS" "http://127.0.0.1:$1/api/x")
  grep -q "^  \[200\] $2 responses" <<<"$out" || { echo "not every request to port $1 got a 200:" >&2; echo "$out" >&2; exit 1; }
}

echo "defender-proxy: $BUILT; valgrind: $(valgrind --version); nginx: $(nginx -v 2>&1 | sed 's/.*: //')"
echo "$REQUESTS requests after $WARM, $CONNECTIONS at a time, 1 KiB JSON; user-space instructions per request"
printf '%-12s %12s %8s\n' proxy instr/req '÷ nginx'
NGINX_IR=
for name in "${NAMES[@]}"; do
  load "${PORT[$name]}" "$WARM"
  callgrind_control -z "${PID[$name]}" >/dev/null 2>&1
  load "${PORT[$name]}" "$REQUESTS"
  callgrind_control -d "${PID[$name]}" >/dev/null 2>&1
  # The dump is written to cg.NAME.N (the highest N is this one's).
  dump=$(ls -v "$WORK"/cg."$name".* | tail -1)
  ir=$(awk '/^summary:/ {print $2}' "$dump")
  per=$((ir / REQUESTS))
  NGINX_IR=${NGINX_IR:-$per}
  printf '%-12s %12s %8s\n' "$name" "$per" "$(python3 -c "print(f'{$per / $NGINX_IR:.2f}')")"
done

#!/usr/bin/env bash
# Instructions per request, counted by callgrind: the proxy's cost with no noise from the other
# processes on the machine (the load generator and the upstream share its two cores, so the
# timings of bench/run.sh swing by ±15 %). One worker, an nginx upstream answering a 1 KiB JSON
# body with a warm token, wrk -t1 -c8 for DURATION; prints the instructions per request and the
# functions (inclusive) that cost most of them. Every answer must be a 200: a run that counted
# error answers would measure the error path.
#
#   bench/callgrind.sh [BINARY]     # DURATION=5s TOP=25; BINARY defaults to the release build
#   KEEP=FILE bench/callgrind.sh    # also keeps the callgrind output (for callgrind_annotate)
#   UP_HEADERS=10 bench/callgrind.sh  # the upstream's answer has 10 more fields
#   LOCKED=1 bench/callgrind.sh     # also counts locked instructions (bench/locked.py)
#   PROXY=nginx bench/callgrind.sh  # nginx-proxy instead (one worker process, same load)
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
DURATION=${DURATION:-5s}; TOP=${TOP:-25}
need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx || ! need valgrind; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light valgrind >/dev/null
fi
if [ $# -ge 1 ]; then BIN=$1; else
  cargo build --release --quiet --bin defender-proxy; BIN=$PWD/target/release/defender-proxy
fi
WORK=$(mktemp -d); chmod 755 "$WORK"
UP=18131; PX=18132
PID=""
cleanup() { [ -n "$PID" ] && kill "$PID" 2>/dev/null; [ -f "$WORK/up.pid" ] && kill "$(cat "$WORK/up.pid")"; [ -n "${KEEP:-}" ] && cp "$WORK"/cg.out.* "$KEEP"; rm -rf "$WORK"; }
trap cleanup EXIT
ports_free $UP $PX
BODY=$(json_body)
upstream_conf $UP "$WORK" "$BODY" 1 "${UP_HEADERS:-0}" > "$WORK/up.conf"
dp_config $PX $UP "" false "" "" 1 > "$WORK/dp.toml"
nginx -c "$WORK/up.conf" -p "$WORK"
VG=(valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.out")
[ -n "${LOCKED:-}" ] && VG+=(--dump-instr=yes)
if [ "${PROXY:-dp}" = nginx ]; then
  # One worker process in the foreground, so that valgrind follows it.
  nginx_proxy_conf $PX $UP "$WORK" ngx |
    sed 's/^worker_processes auto;/worker_processes 1; daemon off; master_process off;/' > "$WORK/ngx.conf"
  BIN=$(command -v nginx)
  "${VG[@]}" "$BIN" -c "$WORK/ngx.conf" -p "$WORK" >/dev/null 2>"$WORK/valgrind.log" & PID=$!
else
  "${VG[@]}" "$BIN" run --config "$WORK/dp.toml" >/dev/null 2>"$WORK/valgrind.log" & PID=$!
fi
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$PX/api/incidents" && break; sleep 0.2; done
curl -sf -o /dev/null "http://127.0.0.1:$PX/api/incidents" || { echo "the proxy does not answer 200" >&2; exit 1; }
callgrind_control -z "$PID" >/dev/null 2>&1     # count from here: warm token, warm pool
out=$(wrk -t1 -c8 -d"$DURATION" "http://127.0.0.1:$PX/api/incidents")
callgrind_control -d "$PID" >/dev/null 2>&1
sleep 1
if echo "$out" | grep -qi 'non-2xx'; then echo "$out" >&2; echo "some answers were not 200" >&2; exit 1; fi
n=$(echo "$out" | awk '/requests in/ {print $1}')
file=$(ls -t "$WORK"/cg.out.* | head -1)
total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1}')
echo "binary: $BIN"
echo "requests: $n  instructions: $total  per request: $((total / n))"
[ -n "${LOCKED:-}" ] && python3 bench/locked.py "$file" "$n" "${TOP_LOCKED:-12}"
echo "most expensive functions of the proxy (inclusive instructions per request):"
callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$file" 2>/dev/null | sed 's/,//g' |
  awk -v n="$n" '$1 ~ /^[0-9]+$/ && /defender_proxy::/ {
    name = $0; sub(/^.*defender_proxy::/, "", name); sub(/ \[.*$/, "", name)
    if (!(name in seen)) { seen[name] = 1; printf "%8d  %s\n", $1 / n, name }
  }' | head -"$TOP"

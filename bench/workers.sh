#!/usr/bin/env bash
# defender-proxy with several worker counts beside nginx-proxy, under the same load: how the
# rate, the tail and the CPU time per request move with `server.workers` when the proxy shares
# its two cores with the load generator and the upstream. For each run: requests per second,
# p99, the proxy's user and system time per request (µs, /proc/PID/task/*/stat) and its
# voluntary (went to sleep) and involuntary (preempted) context switches per request.
# Interleaved rounds: every proxy runs once per round, in the same order.
#
#   bench/workers.sh        # WS="2 3 4 6" ROUNDS=3 DURATION=5 (seconds) CONNECTIONS=64
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
WS=${WS:-"2 3 4 6"}; ROUNDS=${ROUNDS:-3}; DURATION=${DURATION:-5}; CONNECTIONS=${CONNECTIONS:-64}
need_wrk_nginx
cargo build --release --quiet --bin defender-proxy
BIN=$PWD/target/release/defender-proxy
WORK=$(mktemp -d); chmod 755 "$WORK"
PIDS=()
trap 'stop_all up ngx' EXIT
UP=18151; NGX=18152; BASE=18160
ports_free $UP $NGX
BODY=$(json_body)
upstream_conf $UP "$WORK" "$BODY" > "$WORK/up.conf"
nginx_proxy_conf $NGX $UP "$WORK" ngx > "$WORK/ngx.conf"
nginx -c "$WORK/up.conf" -p "$WORK"; nginx -c "$WORK/ngx.conf" -p "$WORK"
declare -A PORT PID
for w in $WS; do
  PORT[$w]=$((BASE + w))
  dp_config "${PORT[$w]}" $UP "" false "" "" "$w" > "$WORK/dp$w.toml"
  "$BIN" run --config "$WORK/dp$w.toml" >/dev/null 2>"$WORK/dp$w.log" & PIDS+=($!); PID[$w]=$!
done
for port in $NGX "${PORT[@]}"; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/api/incidents" && break; sleep 0.05; done
done
snap() { # ticks of user and system time, voluntary and involuntary switches, of all threads
  local t
  for t in /proc/"$1"/task/*; do
    echo "$(sed 's/^.*) //' "$t/stat" | awk '{print $12, $13}') $(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {i=$2} END {print v, i}' "$t/status")"
  done | awk '{u+=$1; s+=$2; v+=$3; i+=$4} END {print u, s, v, i}'
}
TCK=$(getconf CLK_TCK)
run() { # name port [pid]
  sleep 1
  local u0 s0 v0 i0 u1 s1 v1 i1 out req p99
  if [ -n "${3:-}" ]; then read -r u0 s0 v0 i0 < <(snap "$3"); fi
  out=$(wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "http://127.0.0.1:$2/api/incidents")
  req=$(echo "$out" | awk '/requests in/ {print $1}'); p99=$(echo "$out" | awk '$1=="99%" {print $2}')
  if [ -n "${3:-}" ]; then
    read -r u1 s1 v1 i1 < <(snap "$3")
    awk -v n="$1" -v r="$req" -v d="$DURATION" -v p="$p99" -v t="$TCK" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v v=$((v1 - v0)) -v i=$((i1 - i0)) \
      'BEGIN { printf "%-12s %9.0f %9s %9.2f %9.2f %9.3f %9.3f\n", n, r / d, p, u * 1e6 / t / r, s * 1e6 / t / r, v / r, i / r }'
  else
    awk -v n="$1" -v r="$req" -v d="$DURATION" -v p="$p99" 'BEGIN { printf "%-12s %9.0f %9s\n", n, r / d, p }'
  fi
}
printf '%-12s %9s %9s %9s %9s %9s %9s\n' name req/s p99 user_us sys_us vol_cs invol_cs
for _ in $(seq "$ROUNDS"); do
  run nginx-proxy $NGX
  for w in $WS; do run "dp-w$w" "${PORT[$w]}" "${PID[$w]}"; done
done
echo "(per request; wrk -t2 -c$CONNECTIONS -d${DURATION}s each; $(nproc) cores)"

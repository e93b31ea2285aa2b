#!/usr/bin/env bash
# defender-proxy with several worker counts beside nginx-proxy, under the same load: how the
# rate, the tail and the CPU time per request move with `server.workers` when the proxy shares
# its two cores with the load generator and the upstream. For each run: requests per second,
# p99, the proxy's user and system time per request (µs, /proc/PID/task/*/stat) and its
# voluntary (went to sleep) and involuntary (preempted) context switches per request; the same
# for nginx-proxy's workers. Interleaved rounds: every proxy runs once per round, in an order
# that changes from round to round (see below).
#
#   bench/workers.sh        # WS="2 3 4 6" ROUNDS=3 DURATION=5 (seconds) CONNECTIONS=64
#
# An entry of WS is a worker count, optionally with a scheduling change made to all of the
# proxy's threads once it runs, and optionally another binary:
#   6:pin          threads pinned round-robin to the CPUs the proxy may use (taskset)
#   6:batch        SCHED_BATCH: no wakeup preemption (chrt -b)
#   6:slice=NS     an EEVDF slice of NS nanoseconds (sched_setattr; Linux 6.12 or later)
#   6:shared       started in this script's session, so scheduled as one group with wrk (as
#                  every benchmark here ran it until session 10; see own_session in lib.sh);
#                  the others each run in a session of their own, as nginx's daemons do
#   6@/path/bin    that binary (to compare builds: another allocator, LTO, a branch)
#   WS="6 6:pin 6:batch 6:slice=100000" bench/workers.sh
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
# Sets the scheduling change TWEAK (see above) on every thread of process PID.
tweak() { # pid tweak
  local cpus t i=0
  case $2 in
    ""|shared) ;;
    pin)
      read -r -a cpus < <(taskset -pc "$1" | sed 's/.*: //' | python3 -c 'import sys
out = []
for part in sys.stdin.read().strip().split(","):
    a, _, b = part.partition("-")
    out += range(int(a), int(b or a) + 1)
print(*out)')
      for t in /proc/"$1"/task/*; do taskset -pc "${cpus[$((i % ${#cpus[@]}))]}" "${t##*/}" >/dev/null; i=$((i + 1)); done ;;
    batch) for t in /proc/"$1"/task/*; do chrt -b -p 0 "${t##*/}"; done ;;
    slice=*)
      python3 - "${2#slice=}" /proc/"$1"/task/* <<'PY'
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
# struct sched_attr {size, policy, flags, nice, priority, runtime, deadline, period}:
# SCHED_OTHER with a runtime asks for that slice (Linux 6.12 and later).
for task in sys.argv[2:]:
    attr = ctypes.create_string_buffer(struct.pack("IIQiIQQQ", 48, 0, 0, 0, 0, int(sys.argv[1]), 0, 0))
    if libc.syscall(314, int(os.path.basename(task)), attr, 0) != 0:
        sys.exit(f"sched_setattr: {os.strerror(ctypes.get_errno())}")
PY
      ;;
    *) echo "unknown change: $2" >&2; exit 64 ;;
  esac
}
declare -A PORT PID NAME
port=$BASE
for e in $WS; do
  bin=$BIN; spec=$e
  case $e in *@*) bin=${e#*@}; spec=${e%%@*} ;; esac
  w=${spec%%:*}; change=""; [ "$spec" != "$w" ] && change=${spec#*:}
  PORT[$e]=$port; port=$((port + 1)); NAME[$e]="dp-w$spec"
  [ "$bin" != "$BIN" ] && NAME[$e]+="@$(basename "$bin")"
  dp_config "${PORT[$e]}" $UP "" false "" "" "$w" > "$WORK/dp$port.toml"
  launch=(setsid); [ "$change" = shared ] && launch=()
  "${launch[@]}" "$bin" run --config "$WORK/dp$port.toml" >/dev/null 2>"$WORK/dp$port.log" & PIDS+=($!); PID[$e]=$!
  # Served once before the change, so that every worker thread exists when it is made.
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:${PORT[$e]}/api/incidents" && break; sleep 0.05; done
  [ "$change" = shared ] || own_session "${PID[$e]}"
  tweak "${PID[$e]}" "$change"
done
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$NGX/api/incidents" && break; sleep 0.05; done
snap() { # ticks of user and system time, voluntary and involuntary switches, of all threads
  local p t
  for p in $1; do for t in /proc/"$p"/task/*; do
    echo "$(sed 's/^.*) //' "$t/stat" | awk '{print $12, $13}') $(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {i=$2} END {print v, i}' "$t/status")"
  done; done | awk '{u+=$1; s+=$2; v+=$3; i+=$4} END {print u, s, v, i}'
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
      'BEGIN { printf "%-20s %9.0f %9s %9.2f %9.2f %9.3f %9.3f\n", n, r / d, p, u * 1e6 / t / r, s * 1e6 / t / r, v / r, i / r }'
  else
    awk -v n="$1" -v r="$req" -v d="$DURATION" -v p="$p99" 'BEGIN { printf "%-20s %9.0f %9s\n", n, r / d, p }'
  fi
}
printf '%-20s %9s %9s %9s %9s %9s %9s\n' name req/s p99 user_us sys_us vol_cs invol_cs
# The order changes every round (round_order in lib.sh, as bench/run.sh's). Until session 10
# the rounds only rotated: each entry kept its predecessor, and with two entries the first ran
# right after nginx-proxy in three rounds of four, which made the second look 3-14 % faster
# than the same or an equal build.
read -r -a ALL <<< "nginx-proxy $WS"
for r in $(seq 0 $((ROUNDS - 1))); do
  for i in $(round_order ${#ALL[@]} "$r"); do
    e=${ALL[$i]}
    if [ "$e" = nginx-proxy ]; then
      run nginx-proxy $NGX "$(pgrep -P "$(cat "$WORK/ngx.pid")" | tr '\n' ' ')"
    else
      run "${NAME[$e]}" "${PORT[$e]}" "${PID[$e]}"
    fi
  done
done
echo "(per request; wrk -t2 -c$CONNECTIONS -d${DURATION}s each; $(nproc) cores)"

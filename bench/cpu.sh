#!/usr/bin/env bash
# Where each proxy's CPU time per request goes, under the same load: nginx as a proxy,
# defender-proxy and the tokio floor (examples/floor.rs), one after the other, ROUNDS times.
# For each run: the request rate, user and system time per request (/proc/PID/task/*/stat),
# voluntary and involuntary context switches per request (/proc/PID/task/*/status) and system
# calls per request (perf stat -e raw_syscalls:sys_enter, when perf is there), and TCP segments
# sent per request on the whole machine (nstat: client, proxy and upstream together); and the
# CPU time (user + system) the upstream's workers and wrk spent per request: a proxy can make
# the others' work dearer or cheaper (how it spreads requests over upstream connections, how
# its answers arrive), and on two shared cores that time is taken from the proxy's rate.
#
#   bench/cpu.sh        # ROUNDS=2 DURATION=8 (seconds) CONNECTIONS=64
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh
ROUNDS=${ROUNDS:-2}; DURATION=${DURATION:-8}; CONNECTIONS=${CONNECTIONS:-64}
need() { command -v "$1" >/dev/null 2>&1; }
need_wrk_nginx
cargo build --release --quiet --bin defender-proxy --example floor
BIN=$PWD/target/release/defender-proxy; FLOOR=$PWD/target/release/examples/floor
WORK=$(mktemp -d); chmod 755 "$WORK"
UP=18141; NGX=18142; DP=18143; FL=18144
PIDS=()
trap 'stop_all up ngx' EXIT
ports_free $UP $NGX $DP $FL
BODY=$(json_body)
upstream_conf $UP "$WORK" "$BODY" > "$WORK/up.conf"
nginx_proxy_conf $NGX $UP "$WORK" ngx > "$WORK/ngx.conf"
nginx -c "$WORK/up.conf" -p "$WORK"; nginx -c "$WORK/ngx.conf" -p "$WORK"
dp_config $DP $UP > "$WORK/dp.toml"
# Each in a session of its own, as nginx's daemon (see own_session in lib.sh).
setsid "$BIN" run --config "$WORK/dp.toml" >/dev/null 2>"$WORK/dp.log" & PIDS+=($!); DPPID=$!
# As many workers as defender-proxy has by default (one per core).
setsid "$FLOOR" 127.0.0.1:$FL 127.0.0.1:$UP "$(nproc)" & PIDS+=($!); FLPID=$!
for port in $UP $NGX $DP $FL; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/api/incidents" && break; sleep 0.05; done
done
own_session $DPPID; own_session $FLPID
pids() { case $1 in upstream) pgrep -P "$(cat "$WORK/up.pid")" ;; nginx-proxy) pgrep -P "$(cat "$WORK/ngx.pid")" ;; dp) echo $DPPID ;; tokio-floor) echo $FLPID ;; esac; }
port() { case $1 in nginx-proxy) echo $NGX ;; dp) echo $DP ;; tokio-floor) echo $FL ;; esac; }
snap() { # ticks of user and system time, voluntary and involuntary switches, of all threads
  local p t
  for p in $(pids "$1"); do for t in /proc/"$p"/task/*; do
    echo "$(sed 's/^.*) //' "$t/stat" | awk '{print $12, $13}') $(awk '/^voluntary_ctxt/ {v=$2} /^nonvoluntary_ctxt/ {i=$2} END {print v, i}' "$t/status")"
  done; done | awk '{u+=$1; s+=$2; v+=$3; i+=$4} END {print u, s, v, i}'
}
perf_ok=false
if need perf && perf stat -e raw_syscalls:sys_enter -p $DPPID -- sleep 0.1 >/dev/null 2>&1; then perf_ok=true; fi
TCK=$(getconf CLK_TCK)
nstat_ok=false; need nstat && nstat -n >/dev/null 2>&1 && nstat_ok=true
printf '%-12s %9s %10s %10s %9s %9s %9s %9s %8s %8s %8s %8s\n' name req/s user_us sys_us vol_cs invol_cs syscalls tcp_segs up_us wrk_us up_vcs wrk_vcs
for _ in $(seq "$ROUNDS"); do
  for n in nginx-proxy dp tokio-floor; do
    sleep 2
    read -r u0 s0 v0 i0 < <(snap $n)
    read -r uu0 us0 uv0 _ < <(snap upstream)
    if $nstat_ok; then nstat -n >/dev/null; fi
    if $perf_ok; then
      perf stat -x, -e raw_syscalls:sys_enter -p "$(pids $n | paste -sd,)" -o "$WORK/perf" -- sleep "$DURATION" >/dev/null 2>&1 &
      PP=$!
    fi
    out=$(/usr/bin/time -f 'wrk-cpu %U %S %w' wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" "http://127.0.0.1:$(port $n)/api/incidents" 2>&1)
    sc=-1
    if $perf_ok; then wait $PP; sc=$(grep raw_syscalls "$WORK/perf" | cut -d, -f1); fi
    read -r u1 s1 v1 i1 < <(snap $n)
    read -r uu1 us1 uv1 _ < <(snap upstream)
    wrk_s=$(echo "$out" | awk '$1 == "wrk-cpu" {print $2 + $3}')
    wrk_v=$(echo "$out" | awk '$1 == "wrk-cpu" {print $4}')
    segs=-1
    if $nstat_ok; then segs=$(nstat -z TcpOutSegs | awk '$1 == "TcpOutSegs" {print $2}'); fi
    req=$(echo "$out" | awk '/requests in/ {print $1}')
    awk -v n=$n -v req="$req" -v d="$DURATION" -v t="$TCK" -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v v=$((v1 - v0)) -v i=$((i1 - i0)) -v sc="$sc" -v sg="$segs" -v up=$((uu1 + us1 - uu0 - us0)) -v w="$wrk_s" -v uv=$((uv1 - uv0)) -v wv="$wrk_v" \
      'BEGIN { printf "%-12s %9.0f %10.2f %10.2f %9.3f %9.3f %9s %9s %8.2f %8.2f %8.3f %8.3f\n", n, req / d, u * 1e6 / t / req, s * 1e6 / t / req, v / req, i / req, (sc < 0 ? "-" : sprintf("%.2f", sc / req)), (sg < 0 ? "-" : sprintf("%.2f", sg / req)), up * 1e6 / t / req, w * 1e6 / req, uv / req, wv / req }'
  done
done
echo "(per request; user and system time in µs; wrk -t2 -c$CONNECTIONS -d${DURATION}s each)"

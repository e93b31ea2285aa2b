#!/usr/bin/env bash
# The benchmark of issue 21, on loopback, in one run.
#
# 1. Throughput, side by side. An nginx upstream answers 1 KiB of JSON (and serves a static
#    token endpoint); wrk -c64 (one thread) drives each of these in turn, interleaved over ROUNDS rounds:
#      direct      the upstream itself
#      nginx       nginx as a reverse proxy adding `Authorization: Bearer ...`
#      haproxy     haproxy doing the same
#      caddy       Caddy doing the same
#      dp          defender-proxy (release build, warm token, access log off)
#      dp-percore  the same with server.runtime = "per-core"
#      hyper-floor examples/hyperfloor.rs: hyper-util's server and client with no policy at all,
#                  the same libraries and runtime as defender-proxy (what the stack costs)
#      floor-per-core  the same, with a current-thread runtime and client per thread, as dp-percore
#    EXTRA=1 adds dp-limit (a generous rate limit on the route) and dp-log (access log on).
#    Prints req/s, p50, p99, peak RSS and CPU time per request (medians over the rounds), and
#    defender-proxy's targets with each runtime: >= 0.75x nginx's rate, >= 3x Caddy's, p99 <=
#    2x nginx's, peak RSS <= 32 MiB.
# 2. Added latency at a paced load: oha at PACED_RATE req/s for PACED_DURATION, direct and
#    through defender-proxy (each runtime), in turn, ROUNDS times. Added: defender-proxy's p50
#    (p99) minus the direct one in the same round, the median over the rounds. Targets: p50 added <= 0.2
#    ms, p99 added <= 1 ms.
# 3. Each on a fresh proxy: TENANTS tenants (peak RSS < 40 MiB), a cold burst of BURST requests
#    (1 token request), a 1 GiB download and a 256 MiB upload (flat memory), start-up time.
#
# Every proxy runs in a session of its own (see own_session in lib.sh). Missing tools are
# installed: wrk, nginx-light, haproxy and caddy from Debian, oha from crates.io into
# target/tools. Exits 0 when everything ran, whether or not the targets are met (STRICT=1:
# exits 2 when one is not).
#
#   bench/run.sh                              # the full run, about 13 minutes
#   DURATION=2s ROUNDS=1 PACED_DURATION=3s bench/run.sh   # a smoke run, about a minute
#   DP_BIN=/path/to/defender-proxy bench/run.sh           # another binary (not built here)
#
# Settings (defaults): ROUNDS=3 DURATION=10s THREADS=1 CONNECTIONS=64 WARMUP=2s PAUSE=3
# PACED_RATE=1000 PACED_DURATION=30s PACED_CONNECTIONS=16 TENANTS=10000 BURST=1000 WORKERS=0
# EXTRA= STRICT= DP_BIN= OHA_VERSION=1.16.0
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-1}
CONNECTIONS=${CONNECTIONS:-64}
WARMUP=${WARMUP:-2s}
PAUSE=${PAUSE:-3}
PACED_RATE=${PACED_RATE:-1000}
PACED_DURATION=${PACED_DURATION:-30s}
PACED_CONNECTIONS=${PACED_CONNECTIONS:-16}
TENANTS=${TENANTS:-10000}
BURST=${BURST:-1000}
WORKERS=${WORKERS:-0}   # defender-proxy's server.workers (0: one per core)
OHA_VERSION=${OHA_VERSION:-1.16.0}

# Tools.
need_debian wrk:wrk nginx:nginx-light haproxy:haproxy caddy:caddy
OHA=$(need_oha "$OHA_VERSION")
TARGET_DIR=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
if [ -n "${DP_BIN:-}" ]; then
  nice -n 19 cargo build --release --quiet --example loadgen --example hyperfloor
  BIN=$(realpath "$DP_BIN")
  BUILT="given as DP_BIN"
else
  nice -n 19 cargo build --release --quiet --bin defender-proxy --example loadgen --example hyperfloor
  BIN=$TARGET_DIR/release/defender-proxy
  BUILT="built from $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src Cargo.toml Cargo.lock || echo '+uncommitted changes')"
fi
LOADGEN=$TARGET_DIR/release/examples/loadgen
FLOOR=$TARGET_DIR/release/examples/hyperfloor
ulimit -n 20000 2>/dev/null || true

WORK=$(mktemp -d)
chmod 755 "$WORK"
PIDS=()
trap 'stop_all nginx upstream' EXIT

UP=18101; NGX=18102; DP=18103; DPL=18104; DPLOG=18105; DPT=18106; DPC=18107; DPCA=18108
DPS=18109; DPM=18110; HAP=18112; CAD=18113; DPTA=18114; FLR=18115; DPP=18116; FLP=18117
ports_free $UP $NGX $DP $DPL $DPLOG $DPT $DPC $DPCA $DPS $DPM $HAP $CAD $DPTA $FLR $DPP $FLP
BODY=$(json_body)
BODY=${BODY//\'/}

# The upstream, and nginx as a proxy in an instance of its own, so that, like the other
# proxies, it runs in processes of its own and reaches the upstream over loopback.
cat > "$WORK/upstream.conf" <<NGINX
worker_processes auto;
pid $WORK/upstream.pid;
error_log $WORK/upstream-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP;
    client_max_body_size 0;
    location /big/ { root $WORK; default_type application/octet-stream; }
    # The whole body is read (buffered to a file) before the response, as a real API does.
    location /upload { client_body_temp_path $WORK/body; proxy_pass http://127.0.0.1:$UP/uploaded; }
    location /uploaded { return 200 '{"ok":true}'; }
    $TOKEN_LOCATION
    location / { default_type application/json; return 200 '$BODY'; }
  }
}
NGINX
nginx_proxy_conf $NGX $UP "$WORK" nginx > "$WORK/nginx.conf"
haproxy_conf $HAP $UP > "$WORK/haproxy.cfg"
caddy_conf $CAD $UP > "$WORK/Caddyfile"
nginx -c "$WORK/upstream.conf" -p "$WORK"
nginx -c "$WORK/nginx.conf" -p "$WORK"
declare -A PID
setsid haproxy -db -f "$WORK/haproxy.cfg" >"$WORK/haproxy.log" 2>&1 &
PIDS+=($!); PID[haproxy]=$!
XDG_CONFIG_HOME=$WORK XDG_DATA_HOME=$WORK setsid caddy run --adapter caddyfile --config "$WORK/Caddyfile" >"$WORK/caddy.log" 2>&1 &
PIDS+=($!); PID[caddy]=$!
setsid "$FLOOR" 127.0.0.1:$FLR 127.0.0.1:$UP "$(nproc)" >"$WORK/floor.log" 2>&1 &
PIDS+=($!); PID[floor]=$!
setsid "$FLOOR" 127.0.0.1:$FLP 127.0.0.1:$UP "$(nproc)" per-core >"$WORK/floor-per-core.log" 2>&1 &
PIDS+=($!); PID[floor-pc]=$!

config() { # port, extra route lines, access_log, extra tables, admin port, runtime
  dp_config "$1" "$UP" "$2" "$3" "$4" "${5:-}" "$WORKERS" "${6:-multi-thread}"
}
GENEROUS=$'[rate_limit.generous]\nper_minute = 1000000000\nper_hour = 1000000000\nmax_wait_secs = 0'
start_dp() { # name, port, config lines...: starts defender-proxy in a session of its own
  local name=$1 port=$2; shift 2
  config "$port" "$@" > "$WORK/$name.toml"
  setsid "$BIN" run --config "$WORK/$name.toml" >/dev/null 2>"$WORK/$name.log" &
  PIDS+=($!)
  PID[$name]=$!
}
start_dp dp $DP "" false ""
start_dp dp-percore $DPP "" false "" "" per-core
if [ -n "${EXTRA:-}" ]; then
  start_dp dp-limit $DPL 'rate_limit = "generous"' false "$GENEROUS"
  start_dp dp-log $DPLOG "" true ""
fi
# Ready, and for defender-proxy with its token fetched.
for port in $UP $NGX $HAP $CAD $FLR $FLP $DP $DPP ${EXTRA:+$DPL $DPLOG}; do wait_ok "http://127.0.0.1:$port/api/incidents"; done
for p in "${PIDS[@]}"; do own_session "$p"; done

rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
nginx_rss_kib() { # the largest worker's peak
  local max=0 p v
  for p in $(pgrep -P "$(cat "$WORK/$1.pid")"); do v=$(rss_kib "$p"); [ "$v" -gt "$max" ] && max=$v; done
  echo "$max"
}
pids_of() { # name: the processes whose CPU time counts for it
  case $1 in
    direct) pgrep -P "$(cat "$WORK/upstream.pid")" ;;
    nginx) pgrep -P "$(cat "$WORK/nginx.pid")" ;;
    *) echo "${PID[$1]}" ;;
  esac
}
peak_rss_kib() { # name
  case $1 in
    direct) echo - ;;
    nginx) nginx_rss_kib nginx ;;
    *) rss_kib "$(pids_of "$1")" ;;
  esac
}
ticks() { # name: user + system clock ticks of all its threads
  local p
  for p in $(pids_of "$1"); do cat /proc/"$p"/task/*/stat; done | awk '{ sub(/^.*\) /, ""); t += $12 + $13 } END { print t + 0 }'
}
to_ms() { # wrk's 1.23ms / 800.00us / 1.02s -> ms
  awk '{ v=$1; if (v ~ /us$/) { sub(/us/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms/,"",v) } else if (v ~ /s$/) { sub(/s/,"",v); v=v*1000 } print v }'
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
NOT_MET=0
target() { # what, value, condition (for bc): prints a line saying met or not met, and counts
  local v=met
  [ "$(echo "$3" | bc -l)" = 1 ] || { v="not met"; NOT_MET=$((NOT_MET + 1)); }
  printf '  %-34s %12s  %s\n' "$1" "$2" "$v"
}

# 1. Throughput.
read -r -a NAMES <<< "direct nginx haproxy caddy floor floor-pc dp dp-percore${EXTRA:+ dp-limit dp-log}"
declare -A PORT=([direct]=$UP [nginx]=$NGX [haproxy]=$HAP [caddy]=$CAD [floor]=$FLR [floor-pc]=$FLP [dp]=$DP [dp-percore]=$DPP [dp-limit]=$DPL [dp-log]=$DPLOG)
declare -A LABEL=([direct]=direct [nginx]=nginx [haproxy]=haproxy [caddy]=caddy [floor]=hyper-floor [floor-pc]=floor-per-core [dp]=defender-proxy [dp-percore]=dp-per-core [dp-limit]=dp+ratelimit [dp-log]=dp+accesslog)
declare -A RPS P50 P99 CPU_US REQS ERRS
run_wrk() { # name
  local before out
  before=$(ticks "$1")
  out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:${PORT[$1]}/api/incidents")
  CPU_US[$1]=$(( ${CPU_US[$1]:-0} + ($(ticks "$1") - before) * 1000000 / $(getconf CLK_TCK) ))
  REQS[$1]=$(( ${REQS[$1]:-0} + $(echo "$out" | awk '/requests in/ {print $1}') ))
  ERRS[$1]=$(( ${ERRS[$1]:-0} + $(echo "$out" | awk '/Non-2xx/ {n += $NF} /Socket errors/ {gsub(",", ""); n += $4 + $6 + $8 + $10} END {print n + 0}') ))
  RPS[$1]="${RPS[$1]:-} $(echo "$out" | awk '/Requests\/sec/ {print $2}')"
  P50[$1]="${P50[$1]:-} $(echo "$out" | awk '$1=="50%" {print $2}' | to_ms)"
  P99[$1]="${P99[$1]:-} $(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)"
}
echo "throughput: wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved round(s) after a $WARMUP warm-up each" >&2
# A short unmeasured run on each first warms its pools and buffers. A pause before each run
# lets the previous run's connections close and its processes go idle: without it the run
# right after nginx's showed a p99 several times higher, whichever proxy it was.
for n in "${NAMES[@]}"; do wrk -t"$THREADS" -c"$CONNECTIONS" -d"$WARMUP" "http://127.0.0.1:${PORT[$n]}/api/incidents" >/dev/null; done
for r in $(seq 0 $((ROUNDS - 1))); do
  for i in $(round_order ${#NAMES[@]} "$r"); do
    sleep "$PAUSE"; run_wrk "${NAMES[$i]}"
  done
done

mib() { if [ "$1" = - ]; then echo -; else echo "scale=1; $1 / 1024" | bc -l; fi; }
declare -A M_RPS M_P50 M_P99 M_RSS
for n in "${NAMES[@]}"; do
  M_RPS[$n]=$(echo "${RPS[$n]}" | median)
  M_P50[$n]=$(echo "${P50[$n]}" | median)
  M_P99[$n]=$(echo "${P99[$n]}" | median)
  M_RSS[$n]=$(mib "$(peak_rss_kib "$n")")
done

echo
echo "machine: $(nproc) cores ($(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r), loopback"
echo "defender-proxy: $BIN, $BUILT ($(date -u -r "$BIN" '+%F %H:%M UTC'))"
echo "others: $(nginx -v 2>&1 | sed 's/.*: //'), haproxy $(haproxy -v | awk 'NR == 1 {print $3}'), caddy $(caddy version | awk '{print $1}'), $(wrk -v 2>&1 | awk 'NR == 1 {print $1, $2}'), $("$OHA" --version)"
echo
echo "1. throughput: wrk -t$THREADS -c$CONNECTIONS -d$DURATION --latency, 1 KiB JSON, $ROUNDS interleaved round(s), medians"
printf '%-15s %9s %8s %8s %13s %11s %10s %10s %7s\n' name req/s p50_ms p99_ms peak_RSS_MiB cpu_us/req rps/nginx p99/nginx errors
for n in "${NAMES[@]}"; do
  printf '%-15s %9.0f %8.3f %8.3f %13s %11.1f %10.2f %10.2f %7s\n' "${LABEL[$n]}" "${M_RPS[$n]}" "${M_P50[$n]}" "${M_P99[$n]}" "${M_RSS[$n]}" \
    "$(echo "${CPU_US[$n]} / ${REQS[$n]}" | bc -l)" "$(echo "${M_RPS[$n]} / ${M_RPS[nginx]}" | bc -l)" \
    "$(echo "${M_P99[$n]} / ${M_P99[nginx]}" | bc -l)" "${ERRS[$n]}"
done
echo "(cpu_us/req: user + system time of the proxy's processes per request; for direct, the upstream's)"
echo
for n in dp dp-percore; do
  r_nginx=$(echo "${M_RPS[$n]} / ${M_RPS[nginx]}" | bc -l)
  r_caddy=$(echo "${M_RPS[$n]} / ${M_RPS[caddy]}" | bc -l)
  p_nginx=$(echo "${M_P99[$n]} / ${M_P99[nginx]}" | bc -l)
  echo "targets (${LABEL[$n]}, medians above):"
  target "req/s >= 0.75x nginx's" "$(printf '%.2fx' "$r_nginx")" "$r_nginx >= 0.75"
  target "req/s >= 3x Caddy's" "$(printf '%.2fx' "$r_caddy")" "$r_caddy >= 3"
  target "p99 <= 2x nginx's" "$(printf '%.2fx' "$p_nginx")" "$p_nginx <= 2"
  target "peak RSS <= 32 MiB" "${M_RSS[$n]} MiB" "${M_RSS[$n]} <= 32"
done

# 2. Added latency at a paced load: direct and through defender-proxy with each runtime, in
# turn (the order reversed every other round); the added latency is each round's difference
# from direct, the median of those.
run_oha() { # port: prints "req/s p50_ms p99_ms errors"
  "$OHA" --no-tui --output-format json -q "$PACED_RATE" -z "$PACED_DURATION" -c "$PACED_CONNECTIONS" --latency-correction --wait-ongoing-requests-after-deadline \
    "http://127.0.0.1:$1/api/incidents" | python3 -c '
import json, sys
r = json.load(sys.stdin)
codes = r.get("statusCodeDistribution", {})
errors = sum(v for k, v in codes.items() if k != "200") + sum(r.get("errorDistribution", {}).values())
p = r["latencyPercentiles"]
print("%.0f %.4f %.4f %d" % (r["summary"]["requestsPerSec"], p["p50"] * 1000, p["p99"] * 1000, errors))'
}
echo "paced: oha -q $PACED_RATE -z $PACED_DURATION -c $PACED_CONNECTIONS, $ROUNDS round(s)" >&2
declare -A ADD50 ADD99 Q_RPS Q_P50 Q_P99 Q_ERR LAST50 LAST99
for r in $(seq 0 $((ROUNDS - 1))); do
  order="direct dp dp-percore"; [ $((r % 2)) = 1 ] && order="dp-percore dp direct"
  for n in $order; do
    sleep "$PAUSE"
    out=$(run_oha "${PORT[$n]}")
    read -r rps p50 p99 err <<< "$out"
    Q_RPS[$n]="${Q_RPS[$n]:-} $rps"; Q_P50[$n]="${Q_P50[$n]:-} $p50"; Q_P99[$n]="${Q_P99[$n]:-} $p99"
    Q_ERR[$n]=$(( ${Q_ERR[$n]:-0} + err ))
    LAST50[$n]=$p50; LAST99[$n]=$p99
  done
  for n in dp dp-percore; do
    ADD50[$n]="${ADD50[$n]:-} $(echo "${LAST50[$n]} - ${LAST50[direct]}" | bc -l)"
    ADD99[$n]="${ADD99[$n]:-} $(echo "${LAST99[$n]} - ${LAST99[direct]}" | bc -l)"
  done
done
echo
echo "2. added latency: oha -q $PACED_RATE -z $PACED_DURATION -c $PACED_CONNECTIONS --latency-correction, $ROUNDS round(s) alternating, medians"
printf '%-15s %9s %8s %8s %7s\n' name req/s p50_ms p99_ms errors
for n in direct dp dp-percore; do
  printf '%-15s %9.0f %8.3f %8.3f %7s\n' "${LABEL[$n]}" "$(echo "${Q_RPS[$n]}" | median)" "$(echo "${Q_P50[$n]}" | median)" "$(echo "${Q_P99[$n]}" | median)" "${Q_ERR[$n]}"
done
for n in dp dp-percore; do
  add50=$(echo "${ADD50[$n]}" | median); add99=$(echo "${ADD99[$n]}" | median)
  echo "targets (${LABEL[$n]}):"
  target "p50 added <= 0.2 ms" "$(printf '%.3f ms' "$add50")" "$add50 <= 0.2"
  target "p99 added <= 1 ms" "$(printf '%.3f ms' "$add99")" "$add99 <= 1"
done

echo
echo "3. unchanged goals (each on a fresh defender-proxy)"
# Memory with many tenants: TENANTS requests, each naming another tenant GUID, so each gets its
# own token (fetched from the static endpoint) and its own rate-limit bucket.
start_dp dp-tenants $DPT 'rate_limit = "generous"' false "$GENEROUS" $DPTA
wait_ok "http://127.0.0.1:$DPT/api/incidents"
before=$(awk '/VmRSS/ {print $2}' "/proc/${PID[dp-tenants]}/status")
tenants=$("$LOADGEN" tenants "http://127.0.0.1:$DPT/api/incidents" "$TENANTS" 16)
after=$(awk '/VmRSS/ {print $2}' "/proc/${PID[dp-tenants]}/status")
fetches() { curl -s "http://127.0.0.1:$1/metrics" | awk '/^defender_proxy_token_fetches_total/ {s+=$2} END {print s+0}'; }
tenant_fetches=$(fetches $DPTA)
tenants_ok=${tenants#*ok=}; tenants_ok=${tenants_ok%% *}
peak=$(rss_kib "${PID[dp-tenants]}")
echo "  tenants: $tenants token_requests=$tenant_fetches, RSS $((before/1024)) -> $((after/1024)) MiB, peak $((peak/1024)) MiB"

# A cold burst: a fresh proxy with no token yet gets BURST requests at once, each on its own
# connection. One token request should serve them all.
start_dp dp-burst $DPC "" false "" $DPCA
wait_ok "http://127.0.0.1:$DPCA/healthz"
burst=$("$LOADGEN" burst "http://127.0.0.1:$DPC/api/incidents" "$BURST")
burst_fetches=$(fetches $DPCA)
burst_ok=${burst#*ok=}; burst_ok=${burst_ok%% *}
echo "  cold burst: $burst token_requests=$burst_fetches"

# Streaming memory, on a proxy of its own: a 1 GiB download and a 256 MiB upload (chunked:
# curl counts the chunks' framing in its size). Flat: the peak RSS grows by at most 16 MiB
# (1/64 of the download) over each.
mkdir -p "$WORK/big" && truncate -s 1G "$WORK/big/file1g" && chmod -R a+rX "$WORK/big"
start_dp dp-stream $DPM "" false ""
wait_ok "http://127.0.0.1:$DPM/api/incidents"
rss_before=$(rss_kib "${PID[dp-stream]}")
read -r dl_code dl_bytes dl_secs < <(curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}\n' "http://127.0.0.1:$DPM/big/file1g" || echo "curl-failed 0 0")
rss_dl=$(rss_kib "${PID[dp-stream]}")
read -r ul_code ul_bytes ul_secs < <(head -c 268435456 /dev/zero | curl -sS -o /dev/null -w '%{http_code} %{size_upload} %{time_total}\n' -H 'content-type: application/octet-stream' -X POST -T - "http://127.0.0.1:$DPM/upload" || echo "curl-failed 0 0")
rss_ul=$(rss_kib "${PID[dp-stream]}")
echo "  1 GiB download: status $dl_code, $dl_bytes bytes in $dl_secs s, peak RSS $((rss_before/1024)) -> $((rss_dl/1024)) MiB"
echo "  256 MiB upload: status $ul_code, $ul_bytes bytes in $ul_secs s, peak RSS $((rss_dl/1024)) -> $((rss_ul/1024)) MiB"

# Start-up: from exec to the first request served (which includes fetching the first token).
config $DPS "" false "" > "$WORK/dp-startup.toml"
for _ in 1 2 3; do
  "$LOADGEN" startup "http://127.0.0.1:$DPS/api/incidents" -- "$BIN" run --config "$WORK/dp-startup.toml"
done | awk -F= '{print $2}' | sort -g | awk '{a[NR]=$1} END {printf "  start-up to the first served request: median %s ms of 3 (%s, %s, %s)\n", a[2], a[1], a[2], a[3]}'
ok() { [ "$1" = "$2" ] && echo 1 || echo 0; } # for bc: whether two words are equal
target "$TENANTS tenants: peak RSS < 40 MiB" "$((peak/1024)) MiB" "$tenant_fetches >= $TENANTS && $tenants_ok == $TENANTS && $peak < 40 * 1024"
target "cold burst: 1 token request" "$burst_fetches" "$burst_fetches == 1 && $burst_ok == $BURST"
target "1 GiB download in flat memory" "+$(( (rss_dl - rss_before) / 1024 )) MiB" "$(ok "$dl_code" 200) && $dl_bytes == 1073741824 && $rss_dl - $rss_before <= 16384"
target "256 MiB upload in flat memory" "+$(( (rss_ul - rss_dl) / 1024 )) MiB" "$(ok "$ul_code" 200) && $ul_bytes >= 268435456 && $rss_ul - $rss_dl <= 16384"

echo
if [ "$NOT_MET" = 0 ]; then echo "all targets met"; else echo "$NOT_MET target(s) not met"; fi
[ -n "${STRICT:-}" ] && [ "$NOT_MET" != 0 ] && exit 2
exit 0

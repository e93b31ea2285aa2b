#!/usr/bin/env bash
# Side-by-side benchmark on loopback, in one run:
#   upstream      nginx answering a 1 KiB JSON body (and a static token endpoint for the proxy)
#   nginx-proxy   nginx as a reverse proxy injecting `Authorization: Bearer ...`
#   dp            defender-proxy (release build, warm token, access log off)
#   dp-limit      the same with a generous rate limit on the route (the limiter's cost)
#   dp-log        the same with the access log on (written to /dev/null)
#   dp-x3         dp with three workers per core (server.workers = 3 × nproc), the default
#                 until session 10: what more workers than cores bring, in the same run
#   tokio-floor   examples/floor.rs: a tokio proxy that only forwards (no checks, no token
#                 lookup, GET and Content-Length only), the ceiling for defender-proxy's design
# Every proxy runs in a session of its own, as nginx's daemon does (see own_session in lib.sh).
# Each is driven by wrk (-c64), interleaved over ROUNDS rounds (each round starting with the
# next one); prints req/s, p50, p99 and peak RSS side by side with ratios to nginx, and the CPU
# time (user + system) each proxy spent per request. Then memory with 10,000 tenants.
#
# Then, each on a fresh proxy: a cold burst of 1,000 concurrent requests (token requests made,
# time to the last answer), a 1 GiB download and a 256 MiB upload (peak RSS), and the time from
# start to the first served request.
#
#   bench/run.sh                 # ROUNDS=3 DURATION=10s CONNECTIONS=64 WORKERS=0 by default
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/lib.sh

ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
CONNECTIONS=${CONNECTIONS:-64}
THREADS=${THREADS:-2}
TENANTS=${TENANTS:-10000}
WORKERS=${WORKERS:-0}   # defender-proxy server.workers (0: one per core)

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx-light >/dev/null
fi
ulimit -n 20000 2>/dev/null || true
cargo build --release --quiet --bin defender-proxy --example loadgen --example floor
BIN=$PWD/target/release/defender-proxy
LOADGEN=$PWD/target/release/examples/loadgen
FLOOR=$PWD/target/release/examples/floor

WORK=$(mktemp -d)
PIDS=()
trap 'stop_all nginx upstream' EXIT

FL=18111; DPW=18112; UP=18101; NGX=18102; DP=18103; DPL=18104; DPLOG=18105; DPT=18106; DPC=18107; DPCA=18108
BURST=${BURST:-1000}
BODY=$(json_body)
BODY=${BODY//\'/}

# Two nginx instances, so that nginx as a proxy, like defender-proxy, runs in processes of its
# own and reaches the upstream over loopback (in one instance a worker may serve both ends).
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
    # The whole body is read (buffered to a file) before the answer, as a real API does.
    location /upload { client_body_temp_path $WORK/body; proxy_pass http://127.0.0.1:$UP/uploaded; }
    location /uploaded { return 200 '{"ok":true}'; }
    location ~ /oauth2/v2.0/token { default_type application/json; return 200 '{"token_type":"Bearer","expires_in":3600,"access_token":"bench-token"}'; }
    location / { default_type application/json; return 200 '$BODY'; }
  }
}
NGINX
nginx_proxy_conf $NGX $UP "$WORK" nginx > "$WORK/nginx.conf"
chmod 755 "$WORK"
nginx -c "$WORK/upstream.conf" -p "$WORK"
nginx -c "$WORK/nginx.conf" -p "$WORK"

config() { # port, extra route lines, access_log, extra tables, admin port
  dp_config "$1" "$UP" "$2" "$3" "$4" "${5:-}" "$WORKERS"
}
config $DP "" false "" > "$WORK/dp.toml"
config $DPL 'rate_limit = "generous"' false $'[rate_limit.generous]\nper_minute = 1000000000\nper_hour = 1000000000\nmax_wait_secs = 0' > "$WORK/dpl.toml"
config $DPLOG "" true "" > "$WORK/dplog.toml"
dp_config $DPW "$UP" "" false "" "" "$(( $(nproc) * 3 ))" > "$WORK/dpw.toml"
config $DPT 'rate_limit = "generous"' false $'[rate_limit.generous]\nper_minute = 1000000000\nmax_wait_secs = 0' > "$WORK/dpt.toml"

start() { # name, config
  setsid "$BIN" run --config "$2" >/dev/null 2>"$WORK/$1.log" &
  PIDS+=($!)
  eval "PID_$1=$!"
}
start dp "$WORK/dp.toml"; start dpl "$WORK/dpl.toml"; start dplog "$WORK/dplog.toml"; start dpt "$WORK/dpt.toml"
start dpw "$WORK/dpw.toml"
# The floor with as many workers as defender-proxy (its default: one per core).
setsid "$FLOOR" 127.0.0.1:$FL 127.0.0.1:$UP "$( [ "$WORKERS" = 0 ] && nproc || echo "$WORKERS")" &
PIDS+=($!); PID_floor=$!
for port in $UP $NGX $DP $DPL $DPLOG $DPT $DPW $FL; do
  for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$port/api/incidents" && break; sleep 0.05; done
done
for p in "${PIDS[@]}"; do own_session "$p"; done

rss_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
nginx_rss_kib() { # the largest worker's peak
  local max=0
  for p in $(pgrep -P "$(cat "$WORK/nginx.pid")"); do v=$(rss_kib "$p"); [ "$v" -gt "$max" ] && max=$v; done
  echo "$max"
}

declare -A RPS P50 P99 CPU_US REQS
# CPU time (user + system, in clock ticks) of a proxy's processes: nginx's workers, or the one
# process (all threads) otherwise.
ticks() { # name
  local pids
  case $1 in
    nginx-proxy) pids=$(pgrep -P "$(cat "$WORK/nginx.pid")") ;;
    dp) pids=$PID_dp ;; dp-limit) pids=$PID_dpl ;; dp-log) pids=$PID_dplog ;; dp-x3) pids=$PID_dpw ;; tokio-floor) pids=$PID_floor ;;
  esac
  for p in $pids; do cat /proc/"$p"/task/*/stat; done | awk '{ sub(/^.*\) /, ""); t += $12 + $13 } END { print t }'
}
run_wrk() { # name, port
  local before; before=$(ticks "$1")
  local out; out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency "http://127.0.0.1:$2/api/incidents")
  CPU_US[$1]=$(( ${CPU_US[$1]:-0} + ($(ticks "$1") - before) * 1000000 / $(getconf CLK_TCK) ))
  REQS[$1]=$(( ${REQS[$1]:-0} + $(echo "$out" | awk '/requests in/ {print $1}') ))
  RPS[$1]="${RPS[$1]:-} $(echo "$out" | awk '/Requests\/sec/ {print $2}')"
  P50[$1]="${P50[$1]:-} $(echo "$out" | awk '$1=="50%" {print $2}')"
  P99[$1]="${P99[$1]:-} $(echo "$out" | awk '$1=="99%" {print $2}')"
}
# ORDER="..." runs them in another cyclic order (to see whether a proxy's place matters).
read -r -a NAMES <<< "${ORDER:-nginx-proxy dp dp-limit dp-log dp-x3 tokio-floor}"
declare -A PORT=([nginx-proxy]=$NGX [dp]=$DP [dp-limit]=$DPL [dp-log]=$DPLOG [dp-x3]=$DPW [tokio-floor]=$FL)
# A pause before each run lets the previous run's connections close and its processes go
# idle; without it the run right after nginx-proxy's showed a p99 several times higher,
# whichever proxy it was.
# The order changes every round so that no proxy always runs right after the same one
# (round_order in lib.sh; with six proxies steps 2, 3 and 4 become 5). Rotating alone
# kept each proxy's predecessor: dp ran right after nginx-proxy in two rounds of three, and
# whichever variant ran there came out 10-20 % slower (dp-limit too, when ORDER put it there).
# A short unmeasured run on each first warms its pools and buffers.
for n in "${NAMES[@]}"; do wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "http://127.0.0.1:${PORT[$n]}/api/incidents" >/dev/null; done
for r in $(seq 0 $((ROUNDS - 1))); do
  for i in $(round_order ${#NAMES[@]} "$r"); do
    n=${NAMES[$i]}
    sleep "${PAUSE:-3}"; run_wrk "$n" "${PORT[$n]}"
  done
done

to_ms() { # wrk latency like 1.23ms / 800.00us / 1.02s -> ms
  awk '{ v=$1; if (v ~ /us$/) { sub(/us/,"",v); v=v/1000 } else if (v ~ /ms$/) { sub(/ms/,"",v) } else if (v ~ /s$/) { sub(/s/,"",v); v=v*1000 } print v }'
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo
echo "machine: $(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo); wrk -t$THREADS -c$CONNECTIONS -d$DURATION, $ROUNDS interleaved rounds (median)"
printf '%-12s %12s %10s %10s %12s %10s %10s %12s\n' name req/s p50_ms p99_ms peak_RSS_MiB rps/nginx p99/nginx cpu_us/req
base_rps=$(echo "${RPS[nginx-proxy]}" | median)
base_p99=$(for v in ${P99[nginx-proxy]}; do echo "$v" | to_ms; done | tr '\n' ' ' | median)
for n in "${NAMES[@]}"; do
  rps=$(echo "${RPS[$n]}" | median)
  p50=$(for v in ${P50[$n]}; do echo "$v" | to_ms; done | tr '\n' ' ' | median)
  p99=$(for v in ${P99[$n]}; do echo "$v" | to_ms; done | tr '\n' ' ' | median)
  case $n in
    nginx-proxy) rss=$(nginx_rss_kib) ;;
    dp) rss=$(rss_kib "$PID_dp") ;;
    dp-limit) rss=$(rss_kib "$PID_dpl") ;;
    dp-log) rss=$(rss_kib "$PID_dplog") ;;
    dp-x3) rss=$(rss_kib "$PID_dpw") ;;
    tokio-floor) rss=$(rss_kib "$PID_floor") ;;
  esac
  printf '%-12s %12.0f %10.2f %10.2f %12.1f %10.2f %10.2f %12.1f\n' "$n" "$rps" "$p50" "$p99" "$(echo "$rss/1024" | bc -l)" \
    "$(echo "$rps/$base_rps" | bc -l)" "$(echo "$p99/$base_p99" | bc -l)" "$(echo "${CPU_US[$n]}/${REQS[$n]}" | bc -l)"
done

# Memory with many tenants: every request names another tenant GUID, so each gets its own
# token (fetched from the static endpoint) and its own rate-limit bucket.
cat > "$WORK/tenants.lua" <<'LUA'
local i = 0
request = function()
  i = i + 1
  local guid = string.format("00000000-0000-0000-0000-%012d", i % TENANTS)
  return wrk.format("GET", "/api/incidents", { ["x-tenant-id"] = guid })
end
LUA
sed -i "s/TENANTS/$TENANTS/" "$WORK/tenants.lua"
before=$(awk '/VmRSS/ {print $2}' "/proc/$PID_dpt/status")
wrk -t2 -c16 -d5s -s "$WORK/tenants.lua" "http://127.0.0.1:$DPT" >/dev/null
after=$(awk '/VmRSS/ {print $2}' "/proc/$PID_dpt/status")
echo
echo "tenants: $TENANTS distinct tenants with cached tokens and rate-limit buckets: RSS $((before/1024)) MiB -> $((after/1024)) MiB (peak $(( $(rss_kib "$PID_dpt") / 1024 )) MiB)"

# A cold burst: a fresh proxy with no token yet gets BURST requests at once, each on its own
# connection. One token request should serve them all.
config $DPC "" false "" $DPCA > "$WORK/dpc.toml"
setsid "$BIN" run --config "$WORK/dpc.toml" >/dev/null 2>"$WORK/dpc.log" &
PIDS+=($!); PID_dpc=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$DPCA/healthz" && break; sleep 0.05; done
burst=$("$LOADGEN" burst "http://127.0.0.1:$DPC/api/incidents" "$BURST")
fetches=$(curl -s "http://127.0.0.1:$DPCA/metrics" | awk '/^defender_proxy_token_fetches_total/ {s+=$2} END {print s+0}')
echo "cold burst: $burst token_requests=$fetches"

# Streaming memory, on a proxy of its own: a 1 GiB download and a 256 MiB upload.
mkdir -p "$WORK/big" && truncate -s 1G "$WORK/big/file1g" && chmod -R a+rX "$WORK/big"
DPC=18110
config $DPC "" false "" > "$WORK/dpm.toml"
setsid "$BIN" run --config "$WORK/dpm.toml" >/dev/null 2>"$WORK/dpm.log" &
PIDS+=($!); PID_dpc=$!
for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$DPC/api/incidents" && break; sleep 0.05; done
rss_before=$(rss_kib "$PID_dpc")
dl=$(curl -sS -o /dev/null -w '%{http_code} %{size_download} %{time_total}' "http://127.0.0.1:$DPC/big/file1g" || echo "curl exit $?")
rss_dl=$(rss_kib "$PID_dpc")
ul=$(head -c 268435456 /dev/zero | curl -sS -o /dev/null -w '%{http_code} %{size_upload} %{time_total}' -H 'content-type: application/octet-stream' -X POST -T - "http://127.0.0.1:$DPC/upload" || echo "curl exit $?")
rss_ul=$(rss_kib "$PID_dpc")
echo "1 GiB download: status/bytes/seconds $dl; peak RSS $((rss_before/1024)) MiB before -> $((rss_dl/1024)) MiB after"
echo "256 MiB upload: status/bytes/seconds $ul; peak RSS -> $((rss_ul/1024)) MiB after"

# Startup: from exec to the first request served (which includes fetching the first token).
config 18109 "" false "" > "$WORK/dps.toml"
for i in 1 2 3; do
  "$LOADGEN" startup "http://127.0.0.1:18109/api/incidents" -- "$BIN" run --config "$WORK/dps.toml"
done | awk -F= '{print $2}' | sort -g | awk '{a[NR]=$1} END {printf "startup to first served request: median %s ms of 3 (%s, %s, %s)\n", a[2], a[1], a[2], a[3]}'

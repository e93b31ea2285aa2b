# shellcheck shell=bash
# Shared by the bench scripts (sourced, not run).

# A defender-proxy config for the benchmarks: listen on 127.0.0.1:PORT, one client-secret
# credential and one catch-all route, both against the nginx upstream on UP_PORT (which also
# serves the token endpoint).
#   dp_config PORT UP_PORT [ROUTE_LINES] [ACCESS_LOG=false] [TABLES] [ADMIN_PORT] [WORKERS=0] [RUNTIME=multi-thread]
dp_config() {
  cat <<TOML
[server]
listen = "127.0.0.1:$1"
admin_listen = "${6:+127.0.0.1:$6}"
max_request_body_bytes = 1073741824
workers = ${7:-0}
runtime = "${8:-multi-thread}"
[cloud]
authority_host = "http://127.0.0.1:$2"
[log]
access_log = ${4:-false}
[credentials.app]
type = "client_secret"
tenant_id = "11111111-1111-1111-1111-111111111111"
client_id = "bench"
client_secret = "bench-secret"
[credentials.app.tenants]
any = "*"
[[route]]
name = "bench"
prefix = "/"
upstream = "http://127.0.0.1:$2"
scope = "https://api.security.microsoft.com/.default"
credential = "app"
${3:-}
${5:-}
TOML
}

# The static token endpoint every upstream below serves (an nginx location).
TOKEN_LOCATION='location ~ /oauth2/v2.0/token { default_type application/json; return 200 '"'"'{"token_type":"Bearer","expires_in":3600,"access_token":"bench-token"}'"'"'; }'

# An nginx upstream on 127.0.0.1:PORT with PROCESSES workers, its pid file in WORK: a static
# token endpoint, and BODY (JSON) for every other path, with HEADERS more response fields (a
# real API's response has more than nginx's five: request-id, odata-version,
# strict-transport-security).
#   upstream_conf PORT WORK BODY [PROCESSES=auto] [HEADERS=0]
upstream_conf() {
  local extra="" i
  for i in $(seq "${5:-0}"); do extra+="add_header x-bench-field-$i 'value-$i-0123456789abcdef';"; done
  cat <<NGINX
worker_processes ${4:-auto}; pid $2/up.pid; error_log $2/up.err warn;
events { worker_connections 4096; }
http { access_log off; keepalive_requests 1000000; server { listen 127.0.0.1:$1;
  $TOKEN_LOCATION
  location / { default_type application/json; $extra return 200 '$3'; } } }
NGINX
}

# The reverse proxies defender-proxy is compared with, each on 127.0.0.1:PORT in front of the
# upstream on UP_PORT, each adding the same bearer and Host as defender-proxy does, with a
# keep-alive pool to the upstream and no access log.

# nginx; its pid file WORK/PIDNAME.pid.
#   nginx_proxy_conf PORT UP_PORT WORK PIDNAME
nginx_proxy_conf() {
  cat <<NGINX
worker_processes auto; pid $3/$4.pid; error_log $3/$4-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream api { server 127.0.0.1:$2; keepalive 128; }
  server {
    listen 127.0.0.1:$1;
    location / {
      proxy_pass http://api;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Authorization "Bearer bench-token";
      proxy_set_header Host 127.0.0.1:$2;
    }
  }
}
NGINX
}

# haproxy (run in the foreground with -db: one process, one thread per core by default).
#   haproxy_conf PORT UP_PORT
haproxy_conf() {
  cat <<HAPROXY
global
  maxconn 4096
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
frontend bench
  bind 127.0.0.1:$1
  default_backend api
backend api
  http-request set-header Authorization "Bearer bench-token"
  http-request set-header Host 127.0.0.1:$2
  server up 127.0.0.1:$2
HAPROXY
}

# Caddy (Go's net/http reverse proxy), a Caddyfile: no admin endpoint, no automatic HTTPS.
#   caddy_conf PORT UP_PORT
caddy_conf() {
  cat <<CADDY
{
  admin off
  auto_https off
}
http://127.0.0.1:$1 {
  reverse_proxy 127.0.0.1:$2 {
    header_up Authorization "Bearer bench-token"
    header_up Host 127.0.0.1:$2
  }
}
CADDY
}

# The proxies under test each run in a session of their own, as nginx's daemon puts itself
# (setsid): with the kernel's autogroup scheduling (kernel.sched_autogroup_enabled), the CPUs
# are shared between sessions first and between a session's threads after, so a proxy started
# in the script's session would share one share with the load generator. Start a proxy with
# `setsid CMD ... &` and, once it serves, check with `own_session PID`.
own_session() { # pid
  local sid
  sid=$(ps -o sid= -p "$1" | tr -d ' ')
  [ "$sid" = "$1" ] || { echo "process $1 is not in a session of its own (session ${sid:-gone})" >&2; exit 1; }
}

# The order of round R (from 0) over N entries, as indices: the run right after another tends
# to come out slower or faster, so no entry may always follow the same one. Round R steps
# through the list by R + 1 (wrapping to 1 after N - 1; a step sharing a factor with N, which
# would not visit them all, becomes the next that does), starting at the R-th.
#   round_order N R     # prints e.g. "2 0 1"
round_order() {
  local n=$1 r=$2 step i a b t
  step=$(( r % (n > 1 ? n - 1 : 1) + 1 ))
  while :; do
    a=$step; b=$n; while [ "$b" -ne 0 ]; do t=$((a % b)); a=$b; b=$t; done
    [ "$a" = 1 ] && break
    step=$(( step % (n - 1) + 1 ))
  done
  for i in $(seq 0 $((n - 1))); do printf '%s ' $(( (r + i * step) % n )); done
  echo
}

# Exits with an error if anything answers on one of the ports on 127.0.0.1.
#   ports_free PORT...
ports_free() {
  local port
  for port in "$@"; do
    if curl -s -o /dev/null "http://127.0.0.1:$port/"; then echo "port $port is taken" >&2; exit 1; fi
  done
}

# Waits (at most SECONDS) until URL answers 200; fails (which ends a script under set -e)
# if it does not.
#   wait_ok URL [SECONDS=10]
wait_ok() {
  local _
  for _ in $(seq $((${2:-10} * 20))); do curl -sf -o /dev/null "$1" && return 0; sleep 0.05; done
  echo "no 200 from $1" >&2; return 1
}

# The upstream's response in the benchmarks: 1 KiB of JSON.
json_body() {
  python3 -c 'import json; print(json.dumps({"value":[{"id":i,"title":"x"*20} for i in range(24)]})[:1024].ljust(1024), end="")'
}

# Installs from Debian the packages whose commands are missing.
#   need_debian COMMAND:PACKAGE...      e.g. need_debian wrk:wrk nginx:nginx-light
need_debian() {
  local missing=() p
  for p in "$@"; do command -v "${p%%:*}" >/dev/null 2>&1 || missing+=("${p#*:}"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  echo "installing ${missing[*]} (apt-get)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
}

# Prints the path of oha, installing VERSION from crates.io into target/tools if it is missing.
#   OHA=$(need_oha 1.16.0)
need_oha() {
  local oha
  oha=$(command -v oha || echo "$PWD/target/tools/bin/oha")
  if [ ! -x "$oha" ]; then
    echo "installing oha $1 into target/tools (cargo install)" >&2
    nice -n 19 cargo install --quiet --locked --root target/tools --version "$1" oha >&2
  fi
  echo "$oha"
}

# An EXIT trap for the bench scripts: kills the processes in PIDS and the nginx instances whose
# pid files WORK/NAME.pid it is given, then removes WORK.
#   trap 'stop_all up ngx' EXIT
stop_all() {
  local p f
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$@"; do if [ -f "$WORK/$f.pid" ]; then kill "$(cat "$WORK/$f.pid")" 2>/dev/null || true; fi; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}

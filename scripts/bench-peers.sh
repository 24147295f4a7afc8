#!/usr/bin/env bash
# planelink against its peers, side by side in one run, on one nginx TLS upstream:
#
#   direct     wrk/curl -> nginx upstream (TLS)
#   planelink  -> gateway internal listener (TLS) -> agent tunnel (mTLS WebSocket) -> upstream
#   rathole    -> rathole server (TCP) -> rathole tunnel (TLS) -> rathole client -> upstream
#              (the caller's TLS goes end to end to the upstream)
#   nginx      -> nginx as an L7 reverse proxy (TLS, upstream keepalive) -> upstream
#
# Rounds are interleaved (every path once per round) and each column is the median of the
# rounds, printed with its ratio to direct. Columns: 1 KiB GET requests/s at 1 and at 64
# connections (wrk), 64 MiB download MB/s (curl), and the p99 of 1 KiB GETs on one
# connection while 64 MiB downloads run on the same path, over the p99 when idle.
#
# Then the gateway's memory per idle agent: its RSS before and after --idle-agents agent
# processes connect (default 100; 0 skips it).
#
# Usage: scripts/bench-peers.sh [--rounds N] [--seconds S] [--perf DIR] [--only PATHS]
#                               [--idle-agents N]
#   --perf DIR    also record the gateway and the agent with `perf record -g` during the
#                 first round's 1- and 64-connection runs, and print their top symbols
#   --only PATHS  comma-separated subset of direct,planelink,rathole,nginx
# Peers are installed on first use: nginx, wrk, curl, openssl from Debian; rathole 0.5.0
# with `cargo install` into ${PLANELINK_CACHE:-~/.cache/planelink}/peers.
set -euo pipefail

ROUNDS=3
SECONDS_PER_RUN=5
PERF_DIR=""
ONLY="direct,planelink,rathole,nginx"
IDLE_AGENTS=100
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS="$2"; shift 2 ;;
    --seconds) SECONDS_PER_RUN="$2"; shift 2 ;;
    --perf) PERF_DIR="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --idle-agents) IDLE_AGENTS="$2"; shift 2 ;;
    -h|--help) sed -n '2,24p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench-peers.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done

REPO="$(cd "$(dirname "$0")/.." && pwd)"
CACHE="${PLANELINK_CACHE:-$HOME/.cache/planelink}/peers"
RATHOLE_VERSION=0.5.0

need_apt=()
for tool in nginx:nginx wrk:wrk curl:curl openssl:openssl pkg-config:pkg-config; do
  command -v "${tool%%:*}" >/dev/null || need_apt+=("${tool#*:}")
done
dpkg -s libssl-dev >/dev/null 2>&1 || need_apt+=(libssl-dev)
if [[ -n "$PERF_DIR" ]] && ! command -v perf >/dev/null; then need_apt+=(linux-perf); fi
if [[ ${#need_apt[@]} -gt 0 ]]; then
  echo "installing ${need_apt[*]} from Debian" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi
RATHOLE="$CACHE/rathole-$RATHOLE_VERSION/bin/rathole"
if [[ ",$ONLY," == *,rathole,* && ! -x "$RATHOLE" ]]; then
  echo "installing rathole $RATHOLE_VERSION into $CACHE (once)" >&2
  # Not --locked: its lock file pins time 0.3.29, which current Rust no longer compiles.
  cargo install --quiet rathole --version "$RATHOLE_VERSION" \
    --root "$CACHE/rathole-$RATHOLE_VERSION" --no-default-features --features server,client,tls
fi

(cd "$REPO" && cargo build --quiet --release)
PLANELINK="$REPO/target/release/planelink"

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  done
  [[ -n "${KEEP_WORK:-}" ]] || rm -rf "$WORK"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Waits (at most 10 s) until a TCP port accepts connections.
wait_port() {
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "bench-peers.sh: nothing listens on 127.0.0.1:$1 after 10 s ($2)" >&2
  exit 1
}

# Waits (at most 10 s) until a path serves the 1 KiB file; else shows why and its logs.
await_answer() { # path log...
  local path=$1
  shift
  for _ in $(seq 100); do
    curl -sf --cacert "${CACERT[$path]}" "${URL[$path]}/1k" -o /dev/null && return 0
    sleep 0.1
  done
  echo "bench-peers.sh: the $path path does not answer:" >&2
  curl -sS --cacert "${CACERT[$path]}" "${URL[$path]}/1k" >&2 || true
  echo "its logs:" >&2
  cat "$@" >&2
  exit 1
}

# --- certificates -------------------------------------------------------------------
"$PLANELINK" register certs gateway --out "$WORK/up" --ip-address 127.0.0.1 --dns-name localhost >/dev/null
"$PLANELINK" register certs gateway --out "$WORK/gw" --ip-address 127.0.0.1 --dns-name localhost >/dev/null
"$PLANELINK" register certs agent --out "$WORK/agent" --plane-id bench >/dev/null
openssl pkcs12 -export -out "$WORK/gw/identity.pfx" -inkey "$WORK/gw/tls.key" \
  -in "$WORK/gw/tls.crt" -certfile "$WORK/gw/ca.crt" -passout pass:bench

# --- the upstream: nginx serving two files over TLS ----------------------------------
UP=$(free_port)
mkdir -p "$WORK/www" "$WORK/nginx-up/logs" "$WORK/nginx-proxy/logs"
head -c 1024 /dev/urandom > "$WORK/www/1k"
head -c $((64 * 1024 * 1024)) /dev/urandom > "$WORK/www/64m"
# nginx started by root serves as nobody.
chmod a+rx "$WORK" "$WORK/www" && chmod a+r "$WORK"/www/*
nginx_common='daemon off; error_log stderr warn; pid nginx.pid;
events { worker_connections 4096; }'
cat > "$WORK/nginx-up/nginx.conf" <<EOF
$nginx_common
worker_processes 1;
http {
  access_log off; sendfile on; tcp_nodelay on;
  keepalive_requests 1000000; keepalive_timeout 300s;
  server {
    listen 127.0.0.1:$UP ssl;
    ssl_certificate $WORK/up/tls.crt; ssl_certificate_key $WORK/up/tls.key;
    root $WORK/www;
  }
}
EOF
nginx -p "$WORK/nginx-up" -c nginx.conf 2>"$WORK/nginx-up/stderr" &
PIDS+=($!)
wait_port "$UP" "nginx upstream"

declare -A URL CACERT
URL[direct]="https://127.0.0.1:$UP"
CACERT[direct]="$WORK/up/ca.crt"

# --- planelink: gateway and agent, a route to the upstream --------------------------
if [[ ",$ONLY," == *,planelink,* ]]; then
  GW_PORT=$(free_port) GW_INTERNAL=$(free_port) GW_HEALTH=$(free_port) AGENT_HEALTH=$(free_port)
  mkdir -p "$WORK/planes"
  cat > "$WORK/planes/bench.yaml" <<EOF
apiVersion: openchoreo.dev/v1alpha1
kind: DataPlane
metadata: {name: bench, namespace: default}
spec:
  planeID: bench
  agent:
    enabled: true
    clientCA:
      value: |
$(sed 's/^/        /' "$WORK/agent/ca.crt")
  gateway: {publicVirtualHost: localhost, organizationVirtualHost: localhost}
EOF
  cat > "$WORK/routes.yaml" <<EOF
routes:
- name: svc
  url: https://127.0.0.1:$UP
  caFile: $WORK/up/ca.crt
EOF
  "$PLANELINK" gateway --bind-address=127.0.0.1 --internal-mtls=false --log-level=warn \
    --port="$GW_PORT" --internal-port="$GW_INTERNAL" --health-port="$GW_HEALTH" \
    --server-cert="$WORK/gw/tls.crt" --server-key="$WORK/gw/tls.key" \
    --planes-dir="$WORK/planes" --allowed-targets=svc,agent --max-agents-per-plane=100000 \
    2>"$WORK/gateway.log" &
  GATEWAY_PID=$!
  PIDS+=($GATEWAY_PID)
  wait_port "$GW_INTERNAL" "planelink gateway"
  env -u KUBECONFIG "$PLANELINK" agent --plane-id=bench --log-level=warn --health-port="$AGENT_HEALTH" \
    --bind-address=127.0.0.1 --server-url="wss://127.0.0.1:$GW_PORT/ws" \
    --client-cert="$WORK/agent/tls.crt" --client-key="$WORK/agent/tls.key" \
    --server-ca="$WORK/gw/ca.crt" --routes="$WORK/routes.yaml" 2>"$WORK/agent.log" &
  AGENT_PID=$!
  PIDS+=($AGENT_PID)
  URL[planelink]="https://127.0.0.1:$GW_INTERNAL/api/proxy/dataplane/bench/default/bench/svc"
  CACERT[planelink]="$WORK/gw/ca.crt"
  await_answer planelink "$WORK/gateway.log" "$WORK/agent.log"
fi

# --- rathole: server (visitors) and client (next to the upstream), TLS transport ----
if [[ ",$ONLY," == *,rathole,* ]]; then
  RH_CONTROL=$(free_port) RH_VISIT=$(free_port)
  cat > "$WORK/rathole-server.toml" <<EOF
[server]
bind_addr = "127.0.0.1:$RH_CONTROL"
default_token = "bench"
[server.transport]
type = "tls"
[server.transport.tls]
pkcs12 = "$WORK/gw/identity.pfx"
pkcs12_password = "bench"
[server.services.up]
bind_addr = "127.0.0.1:$RH_VISIT"
EOF
  cat > "$WORK/rathole-client.toml" <<EOF
[client]
remote_addr = "localhost:$RH_CONTROL"
default_token = "bench"
[client.transport]
type = "tls"
[client.transport.tls]
trusted_root = "$WORK/gw/ca.crt"
hostname = "localhost"
[client.services.up]
local_addr = "127.0.0.1:$UP"
EOF
  RUST_LOG=warn "$RATHOLE" --server "$WORK/rathole-server.toml" 2>"$WORK/rathole-server.log" &
  PIDS+=($!)
  wait_port "$RH_CONTROL" "rathole server"
  RUST_LOG=warn "$RATHOLE" --client "$WORK/rathole-client.toml" 2>"$WORK/rathole-client.log" &
  PIDS+=($!)
  URL[rathole]="https://127.0.0.1:$RH_VISIT"
  CACERT[rathole]="$WORK/up/ca.crt"
  await_answer rathole "$WORK/rathole-server.log" "$WORK/rathole-client.log"
fi

# --- nginx as an L7 reverse proxy ----------------------------------------------------
if [[ ",$ONLY," == *,nginx,* ]]; then
  PROXY=$(free_port)
  cat > "$WORK/nginx-proxy/nginx.conf" <<EOF
$nginx_common
worker_processes auto;
http {
  access_log off; tcp_nodelay on;
  keepalive_requests 1000000; keepalive_timeout 300s;
  upstream up { server 127.0.0.1:$UP; keepalive 128; }
  server {
    listen 127.0.0.1:$PROXY ssl;
    ssl_certificate $WORK/gw/tls.crt; ssl_certificate_key $WORK/gw/tls.key;
    location / {
      proxy_pass https://up;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_ssl_trusted_certificate $WORK/up/ca.crt;
      proxy_ssl_verify on;
      proxy_ssl_name localhost; # nginx checks IP SANs only as names
      proxy_ssl_session_reuse on;
      proxy_max_temp_file_size 0;
    }
  }
}
EOF
  nginx -p "$WORK/nginx-proxy" -c nginx.conf 2>"$WORK/nginx-proxy/stderr" &
  PIDS+=($!)
  wait_port "$PROXY" "nginx proxy"
  URL[nginx]="https://127.0.0.1:$PROXY"
  CACERT[nginx]="$WORK/gw/ca.crt"
fi

# --- measures ------------------------------------------------------------------------
# wrk's latency figures in microseconds.
to_us() {
  awk -v v="$1" 'BEGIN {
    n = v + 0; u = v; sub(/^[0-9.]+/, "", u)
    if (u == "us") print n; else if (u == "ms") print n * 1000; else if (u == "s") print n * 1000000;
    else if (u == "m") print n * 60000000; else print n }'
}
wrk_rps() { awk '/^Requests\/sec:/ { print $2 }' <<<"$1"; }
wrk_p99() { to_us "$(awk '$1 == "99%" { print $2 }' <<<"$1")"; }

run_wrk() { # path connections
  local path=$1 conns=$2 threads=1 out
  [[ $conns -gt 1 ]] && threads=2
  out=$(wrk -t"$threads" -c"$conns" -d"${SECONDS_PER_RUN}s" --latency "${URL[$path]}/1k")
  # A path that answers errors fast must not look fast.
  if grep -qE 'Non-2xx|Socket errors' <<<"$out"; then
    echo "bench-peers.sh: $path answered errors under wrk -c$conns:" >&2
    echo "$out" >&2
    exit 1
  fi
  echo "$out"
}

PERF_PIDS=()
perf_record() { # name seconds -> records gateway and agent in the background
  [[ -n "$PERF_DIR" && -n "${GATEWAY_PID:-}" ]] || return 0
  mkdir -p "$PERF_DIR"
  perf record -q -F 999 -g -p "$GATEWAY_PID" -o "$PERF_DIR/gateway-$1.data" -- sleep "$2" 2>/dev/null &
  PERF_PIDS+=($!)
  perf record -q -F 999 -g -p "$AGENT_PID" -o "$PERF_DIR/agent-$1.data" -- sleep "$2" 2>/dev/null &
  PERF_PIDS+=($!)
}
perf_wait() {
  [[ ${#PERF_PIDS[@]} -eq 0 ]] || wait "${PERF_PIDS[@]}"
  PERF_PIDS=()
}

bulk_loop() { # path: 64 MiB downloads back to back until killed
  while true; do
    curl -s --cacert "${CACERT[$1]}" -o /dev/null "${URL[$1]}/64m" || true
  done
}

declare -A RPS1 RPS64 MBS P99IDLE P99BUSY
IFS=, read -r -a PATHS <<<"$ONLY"
PATHS=(direct "${PATHS[@]/direct/}")
for round in $(seq "$ROUNDS"); do
  for path in "${PATHS[@]}"; do
    [[ -n "$path" ]] || continue
    echo "round $round/$ROUNDS: $path" >&2
    [[ $round == 1 && $path == planelink ]] && perf_record c1 "$SECONDS_PER_RUN"
    out=$(run_wrk "$path" 1)
    perf_wait
    RPS1[$path]+="$(wrk_rps "$out") "
    P99IDLE[$path]+="$(wrk_p99 "$out") "
    [[ $round == 1 && $path == planelink ]] && perf_record c64 "$SECONDS_PER_RUN"
    out=$(run_wrk "$path" 64)
    perf_wait
    RPS64[$path]+="$(wrk_rps "$out") "
    best=0
    for _ in 1 2; do
      mbs=$(curl -sf --cacert "${CACERT[$path]}" -o /dev/null -w '%{speed_download}' "${URL[$path]}/64m") || {
        echo "bench-peers.sh: the 64 MiB download through $path failed" >&2
        exit 1
      }
      best=$(awk -v a="$best" -v b="$mbs" 'BEGIN { print (b > a ? b : a) }')
    done
    MBS[$path]+="$(awk -v b="$best" 'BEGIN { printf "%.1f", b / 1e6 }') "
    bulk_loop "$path" &
    BULK=$!
    sleep 0.5 # the download under way before the small requests start
    out=$(run_wrk "$path" 1)
    kill "$BULK"
    pkill -P "$BULK" curl 2>/dev/null || true
    wait "$BULK" 2>/dev/null || true
    P99BUSY[$path]+="$(wrk_p99 "$out") "
  done
done

median() { tr ' ' '\n' <<<"$1" | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }'; }

echo
echo "Side by side, median of $ROUNDS interleaved rounds of ${SECONDS_PER_RUN}s runs; ratio to direct in ()"
printf '| %-10s | %-22s | %-22s | %-20s | %-14s | %-14s | %-7s |\n' path "1 KiB req/s, 1 conn" "1 KiB req/s, 64 conns" "64 MiB MB/s" "p99 idle (ms)" "p99 bulk (ms)" growth
printf '|%s|%s|%s|%s|%s|%s|%s|\n' ------------ ------------------------ ------------------------ ---------------------- ---------------- ---------------- ---------
d1=$(median "${RPS1[direct]}") d64=$(median "${RPS64[direct]}") dm=$(median "${MBS[direct]}")
for path in "${PATHS[@]}"; do
  [[ -n "$path" ]] || continue
  r1=$(median "${RPS1[$path]}") r64=$(median "${RPS64[$path]}") m=$(median "${MBS[$path]}")
  idle=$(median "${P99IDLE[$path]}") busy=$(median "${P99BUSY[$path]}")
  printf '| %-10s | %-22s | %-22s | %-20s | %-14s | %-14s | %-7s |\n' "$path" \
    "$(printf '%.0f (%s)' "$r1" "$(ratio "$r1" "$d1")")" \
    "$(printf '%.0f (%s)' "$r64" "$(ratio "$r64" "$d64")")" \
    "$m ($(ratio "$m" "$dm"))" \
    "$(awk -v u="$idle" 'BEGIN { printf "%.3f", u / 1000 }')" \
    "$(awk -v u="$busy" 'BEGIN { printf "%.3f", u / 1000 }')" \
    "$(ratio "$busy" "$idle")x"
done

if [[ -n "$PERF_DIR" && -n "${GATEWAY_PID:-}" ]]; then
  for data in "$PERF_DIR"/*.data; do
    echo
    echo "== top self time: $(basename "$data" .data)"
    perf report -i "$data" --stdio --no-children --sort dso,symbol -g none --percent-limit 0.7 2>/dev/null \
      | grep -E '^ +[0-9.]+%' | sed 's/ *$//' | head -25
  done
fi

# --- the gateway's memory per idle agent ---------------------------------------------
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
connected_agents() {
  curl -sf --cacert "$WORK/gw/ca.crt" \
    "https://127.0.0.1:$GW_INTERNAL/api/v1/planes/dataplane/bench/status" |
    python3 -c 'import json, sys; print(json.load(sys.stdin)["connectedAgents"])'
}
if [[ -n "${GATEWAY_PID:-}" && "$IDLE_AGENTS" -gt 0 ]]; then
  before=$(rss_kib "$GATEWAY_PID")
  IDLE_PIDS=()
  for i in $(seq "$IDLE_AGENTS"); do
    env -u KUBECONFIG "$PLANELINK" agent --plane-id=bench --log-level=error --health-port=0 \
      --server-url="wss://127.0.0.1:$GW_PORT/ws" \
      --client-cert="$WORK/agent/tls.crt" --client-key="$WORK/agent/tls.key" \
      --server-ca="$WORK/gw/ca.crt" 2>/dev/null &
    IDLE_PIDS+=($!)
    PIDS+=($!)
  done
  want=$((IDLE_AGENTS + 1))
  for _ in $(seq 600); do
    [[ "$(connected_agents)" == "$want" ]] && break
    sleep 0.1
  done
  got=$(connected_agents)
  [[ "$got" == "$want" ]] || {
    echo "bench-peers.sh: $got of $want agents connected within 60 s" >&2
    exit 1
  }
  sleep 2 # heartbeats and handshakes settled
  after=$(rss_kib "$GATEWAY_PID")
  echo
  awk -v b="$before" -v a="$after" -v n="$IDLE_AGENTS" 'BEGIN {
    printf "gateway RSS per idle agent (%d agents): %.1f KiB (%d KiB -> %d KiB)\n", n, (a - b) / n, b, a }'
fi

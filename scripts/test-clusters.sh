#!/usr/bin/env bash
# Two isolated Kubernetes API servers on loopback, for the integration tests (and for trying
# planelink by hand): one etcd, two kube-apiservers with different --etcd-prefix, so the
# "control-plane" and "remote" contexts of DIR/kubeconfig are separate clusters (a bearer
# token; the contexts control-plane-mtls and remote-mtls use a client certificate instead).
#
#   scripts/test-clusters.sh up DIR [--owner-pid PID]   start; print DIR/kubeconfig when ready
#   scripts/test-clusters.sh down DIR                   stop what `up` started
#
# With --owner-pid everything stops when that process exits (a test binary). The API
# servers have no controller-manager: namespaces never finish deleting, pods never run.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
log() { echo "test-clusters.sh: $*" >&2; }

stop() {
  local dir=$1
  for pidfile in "$dir"/*.pid; do
    [ -f "$pidfile" ] || continue
    kill "$(cat "$pidfile")" 2>/dev/null || true
    rm -f "$pidfile"
  done
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case "${1:-}" in
  down) stop "${2:?usage: $0 down DIR}"; exit 0 ;;
  up) ;;
  *) echo "usage: $0 up DIR [--owner-pid PID] | down DIR" >&2; exit 64 ;;
esac
dir="${2:?usage: $0 up DIR [--owner-pid PID]}"
owner=""
if [ "${3:-}" = "--owner-pid" ]; then owner="${4:?--owner-pid needs a PID}"; fi

apiserver=$("$here/kube-apiserver.sh")
for tool in etcd openssl curl python3; do
  command -v "$tool" >/dev/null || { log "$tool is required and not on PATH"; exit 1; }
done

mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
stop "$dir"

token=$(openssl rand -hex 16)
echo "$token,planelink-test-admin,1,system:masters" >"$dir/tokens.csv"
[ -f "$dir/sa.key" ] || openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
openssl rsa -in "$dir/sa.key" -pubout -out "$dir/sa.pub" 2>/dev/null

# Client certificates are accepted too (contexts *-mtls): a client CA both API servers
# trust, and an administrator's certificate from it (group system:masters).
if [ ! -f "$dir/client-ca.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=planelink-test-client-ca" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$dir/client-ca.key" -out "$dir/client-ca.crt" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/O=system:masters/CN=planelink-test-mtls-admin" \
    -keyout "$dir/mtls-admin.key" -out "$dir/mtls-admin.csr" 2>/dev/null
  printf 'basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n' \
    >"$dir/mtls-admin.ext"
  openssl x509 -req -in "$dir/mtls-admin.csr" -CA "$dir/client-ca.crt" -CAkey "$dir/client-ca.key" \
    -CAcreateserial -days 3650 -extfile "$dir/mtls-admin.ext" -out "$dir/mtls-admin.crt" 2>/dev/null
fi

etcd_port=$(free_port)
peer_port=$(free_port)
rm -rf "$dir/etcd"
etcd --name planelink-test --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-cluster "planelink-test=http://127.0.0.1:$peer_port" \
  --log-level warn >"$dir/etcd.log" 2>&1 &
echo $! >"$dir/etcd.pid"

contexts=(control-plane remote)
declare -A ports
for name in "${contexts[@]}"; do
  port=$(free_port)
  ports[$name]=$port
  mkdir -p "$dir/$name"
  "$apiserver" \
    --etcd-servers "http://127.0.0.1:$etcd_port" --etcd-prefix "/$name" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$port" --insecure-port 0 \
    --cert-dir "$dir/$name" --token-auth-file "$dir/tokens.csv" --authorization-mode RBAC \
    --client-ca-file "$dir/client-ca.crt" \
    --service-account-key-file "$dir/sa.pub" --service-account-signing-key-file "$dir/sa.key" \
    --service-account-issuer "https://$name.planelink.test" \
    --service-cluster-ip-range 10.0.0.0/24 --logtostderr --v 0 >"$dir/$name.log" 2>&1 &
  echo $! >"$dir/$name.pid"
done

if [ -n "$owner" ]; then
  # Stops everything once the owning process is gone; bounded by that process's life.
  (
    while kill -0 "$owner" 2>/dev/null; do sleep 0.5; done
    stop "$dir"
  ) </dev/null >/dev/null 2>&1 &
  echo $! >"$dir/watchdog.pid.keep"
fi

for name in "${contexts[@]}"; do
  ready=""
  for _ in $(seq 1 120); do
    if curl -sfk -H "Authorization: Bearer $token" "https://127.0.0.1:${ports[$name]}/readyz" >/dev/null 2>&1; then
      ready=1
      break
    fi
    kill -0 "$(cat "$dir/$name.pid")" 2>/dev/null || break
    sleep 0.25
  done
  if [ -z "$ready" ]; then
    log "the $name API server did not become ready; its log ends:"
    tail -n 20 "$dir/$name.log" >&2
    stop "$dir"
    exit 1
  fi
done

{
  echo "apiVersion: v1"
  echo "kind: Config"
  echo "clusters:"
  for name in "${contexts[@]}"; do
    echo "- name: $name"
    echo "  cluster:"
    echo "    server: https://127.0.0.1:${ports[$name]}"
    echo "    certificate-authority: $dir/$name/apiserver.crt"
  done
  echo "users:"
  echo "- name: admin"
  echo "  user:"
  echo "    token: $token"
  echo "- name: mtls-admin"
  echo "  user:"
  echo "    client-certificate: $dir/mtls-admin.crt"
  echo "    client-key: $dir/mtls-admin.key"
  echo "contexts:"
  for name in "${contexts[@]}"; do
    echo "- name: $name"
    echo "  context: {cluster: $name, user: admin}"
    echo "- name: $name-mtls"
    echo "  context: {cluster: $name, user: mtls-admin}"
  done
  echo "current-context: control-plane"
} >"$dir/kubeconfig"
echo "$dir/kubeconfig"

#!/usr/bin/env bash
# Verifies the static binary where a scratch image would run it: in an empty root
# with no shared libraries and no NSS modules. Host names must resolve both from
# /etc/hosts and through DNS (a loopback responder), and a TLS check must pass.
#
#   packaging/verify-static.sh [BINARY]      (needs root for chroot; CI runs as root)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/x86_64-unknown-linux-gnu/release/planelink}
[ -x "$bin" ] || { echo "error: $bin missing; run packaging/build-static.sh first" >&2; exit 1; }
for tool in openssl python3 chroot; do
  command -v "$tool" >/dev/null || { echo "error: $tool is required (apt-get install openssl python3 coreutils)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
"$bin" register certs gateway --out "$work/gw" --dns-name gw.hosts.test --dns-name gw.dns.test >/dev/null
openssl s_server -quiet -www -accept "127.0.0.1:$port" -cert "$work/gw/tls.crt" -key "$work/gw/tls.key" \
  </dev/null >/dev/null 2>&1 &
pids+=($!)
python3 packaging/tiny-dns.py 127.83.0.53:53 gw.dns.test 127.0.0.1 "$work/dns-ready" &
dns_pid=$!
pids+=($dns_pid)
# Both servers must be up before the checks: a cold python3 can take seconds to start.
for _ in $(seq 100); do
  [ -e "$work/dns-ready" ] && (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  kill -0 "$dns_pid" 2>/dev/null || { echo "error: the DNS responder exited before binding 127.83.0.53:53" >&2; exit 1; }
  sleep 0.1
done
[ -e "$work/dns-ready" ] || { echo "error: the DNS responder did not bind 127.83.0.53:53 within 10 s" >&2; exit 1; }
(exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "error: openssl s_server did not listen on 127.0.0.1:$port within 10 s" >&2; exit 1; }

root="$work/root"
mkdir -p "$root/etc"
cp "$bin" "$root/planelink"
cp "$work/gw/ca.crt" "$root/ca.crt"
echo "127.0.0.1 gw.hosts.test" > "$root/etc/hosts"
echo "nameserver 127.83.0.53" > "$root/etc/resolv.conf"
echo "empty root holds: $(cd "$root" && find . -type f | sort | tr '\n' ' ')"

for host in gw.hosts.test gw.dns.test; do
  echo "== resolving $host from the empty root"
  chroot "$root" /planelink register check --server-url "wss://$host:$port/ws" --server-ca /ca.crt --timeout 5s
done
echo "static binary verified: no shared libraries, /etc/hosts and DNS resolution, TLS handshake"

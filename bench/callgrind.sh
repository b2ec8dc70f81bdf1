#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: repeatable where wall-clock
# figures on a shared machine are not. Runs the proxy under valgrind with a `trustgate echo`
# backend, sends N and then 4N requests with h2load, and prints (I(4N) - I(N)) / 3N, so startup,
# handshakes and the entropy source cancel out.
#   bench/callgrind.sh [BIN] [h1|h2] [N]      # defaults: target/release/trustgate h2 1000
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
bin=${1:-$root/target/release/trustgate}
mode=${2:-h2}
n=${3:-1000}
for tool in valgrind h2load openssl curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install valgrind nghttp2-client openssl curl)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
ec() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; openssl pkcs8 -topk8 -nocrypt -in "$1" -out "$1.p8"; mv "$1.p8" "$1"; }
ec root.key
openssl req -x509 -new -key root.key -days 2 -subj "/CN=callgrind internal root" \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" -out ca.pem
ec be.key
openssl req -new -key be.key -subj "/CN=backend-api" -out be.csr
printf 'subjectAltName=DNS:backend-api\nextendedKeyUsage=serverAuth\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' >be.ext
openssl x509 -req -in be.csr -CA ca.pem -CAkey root.key -CAcreateserial -days 1 -extfile be.ext -out be.pem 2>/dev/null
ec pub.key
openssl req -x509 -new -key pub.key -days 1 -subj "/CN=localhost" \
  -addext "subjectAltName=DNS:localhost" -addext "extendedKeyUsage=serverAuth" -out pub.pem
cat >tg.toml <<CONF
[server]
listen = "127.0.0.1:19443"
cert = "pub.pem"
key = "pub.key"
workers = 1

[upstream_tls]
ca = "ca.pem"

[log]
access = false

[[route]]
prefix = "/api"
upstream = "https://backend-api:19444/"
address = "127.0.0.1:19444"
CONF
"$bin" echo --listen 127.0.0.1:19444 --cert be.pem --key be.key >echo.log 2>&1 &
count() {
  local requests=$1
  RUST_LOG=warn valgrind --tool=callgrind --callgrind-out-file="$work/cg.$requests" "$bin" run -c tg.toml >proxy.log 2>&1 &
  local pid=$!
  for _ in $(seq 1 200); do
    curl -s -o /dev/null --cacert pub.pem https://localhost:19443/api/ready && break
    sleep 0.3
  done
  if [ "$mode" = h2 ]; then
    h2load -n "$requests" -c 10 -m 5 https://localhost:19443/api/small >h2load.log 2>&1
  else
    h2load --h1 -n "$requests" -c 10 https://localhost:19443/api/small >h2load.log 2>&1
  fi
  grep -q "$requests succeeded" h2load.log || { cat h2load.log >&2; exit 1; }
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  sed -n 's/^totals: //p' "$work/cg.$requests"
}
small=$(count "$n")
large=$(count $((4 * n)))
echo "$mode: $(( (large - small) / (3 * n) )) instructions per request ($(basename "$bin"), $n and $((4 * n)) requests)"

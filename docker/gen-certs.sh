#!/usr/bin/env bash
# Creates every certificate docker/compose.yml mounts, with `trustgate pki`, on the host: CA
# operations never run inside Docker, and no CA key ever lands in this folder.
#
#   docker/gen-certs.sh [--ca-dir DIR] [--deploy DIR] [--bin PATH]
#
# CA folders (they hold keys) go to DIR (default: $TRUSTGATE_CA_DIR or ~/trustgate-ca), which is
# never mounted into a container:
#   DIR/root          the offline root: move it to offline storage once the intermediate exists
#   DIR/intermediate  signs one certificate per service; constrained to the service names
#   DIR/public-ca     a stand-in for your public CA, so the example runs without one
# Mounted folders (compose.yml mounts each folder, not its files, so renewals reach the running
# containers), written under certs/ of the deployment folder (--deploy, default: docker/, the
# folder holding compose.yml and trustgate.toml):
#   certs/<service>/server.crt, server.key   one certificate per backend, SAN = service name
#   certs/public/server.crt, server.key      the proxy's public certificate (localhost)
#   certs/internal/ca.pem                    the internal root's certificate: the proxy's only anchor
#   certs/public-ca.pem                      for clients: curl --cacert docker/certs/public-ca.pem
# Safe to run again: what exists is kept. Renew with `trustgate pki renew` (see the README): the
# proxy and the backends reload the new files by themselves.
set -euo pipefail

deploy=$(cd "$(dirname "$0")" && pwd)
ca_dir=${TRUSTGATE_CA_DIR:-$HOME/trustgate-ca}
bin=${TRUSTGATE_BIN:-trustgate}
while [ $# -gt 0 ]; do
  case "$1" in
    --ca-dir) ca_dir=$2; shift 2 ;;
    --deploy) deploy=$(cd "$2" && pwd); shift 2 ;;
    --bin) bin=$2; shift 2 ;;
    *) echo "usage: $0 [--ca-dir DIR] [--deploy DIR] [--bin PATH]" >&2; exit 2 ;;
  esac
done
services=(backend-api backend-reports)
certs="$deploy/certs"

# --proxy-config makes every pki command refuse to put a CA key where the proxy reads.
pki() { "$bin" pki --proxy-config "$deploy/trustgate.toml" "$@"; }

[ -f "$ca_dir/root/ca.key" ] ||
  pki init-root --out "$ca_dir/root" --cn "trustgate example root CA"
if [ ! -f "$ca_dir/intermediate/ca.key" ]; then
  permit=()
  for service in "${services[@]}"; do permit+=(--permit-dns "$service"); done
  pki init-intermediate --root "$ca_dir/root" --out "$ca_dir/intermediate" \
    --cn "trustgate example intermediate CA" "${permit[@]}"
fi
[ -f "$ca_dir/public-ca/ca.key" ] ||
  pki init-root --out "$ca_dir/public-ca" --cn "trustgate example public CA" --days 825

for service in "${services[@]}"; do
  [ -f "$certs/$service/server.crt" ] ||
    pki issue --ca "$ca_dir/intermediate" --name "$service" --out "$certs/$service"
done
[ -f "$certs/public/server.crt" ] ||
  pki issue --ca "$ca_dir/public-ca" --name localhost --ip 127.0.0.1 --out "$certs/public"
mkdir -p "$certs/internal"
cp "$ca_dir/root/ca.crt" "$certs/internal/ca.pem"
cp "$ca_dir/public-ca/ca.crt" "$certs/public-ca.pem"

# The containers run as uid 65532 and must read their own key (mode 0600).
keys=("$certs/public/server.key")
for service in "${services[@]}"; do keys+=("$certs/$service/server.key"); done
if [ "$(id -u)" = 0 ]; then
  chown 65532:65532 "${keys[@]}"
else
  echo "The containers run as uid 65532; give them their keys with:"
  echo "  sudo chown 65532:65532 ${keys[*]}"
fi
echo "certificates ready in $certs; CA folders in $ca_dir (move $ca_dir/root offline)"

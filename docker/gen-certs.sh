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
#   certs/proxy-client/client.crt, client.key  the proxy's client certificate (CN trustgate-proxy,
#                                            clientAuth): its identity towards the backends (mTLS)
#   certs/internal/ca.pem                    the internal root's certificate: the proxy's only anchor,
#                                            and the CA the backends demand client certificates from
#   certs/internal/intermediate.crl.pem      the CRLs the proxy checks every upstream chain against
#   certs/internal/root.crl.pem              ([upstream_tls] crl; without them it refuses upstreams)
#   certs/public-ca.pem                      for clients: curl --cacert docker/certs/public-ca.pem
# Safe to run again: what exists is kept, and the CRLs are re-published. Renew with `trustgate pki
# renew` (see the README): the proxy and the backends reload the new files by themselves.
# The intermediate's CRL is valid 7 days and the proxy refuses every upstream once it has expired
# (crl_expired = "deny"): re-publish it well before, e.g. daily from cron (the proxy reloads it):
#   0 3 * * *  trustgate pki crl --ca DIR/intermediate --out DEPLOY/certs/internal/intermediate.crl.pem
# The root's CRL is valid 180 days, as its key is offline: re-sign it with the root twice a year,
# and at once after revoking an intermediate (pki revoke --root DIR/root --serial S).
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
# The proxy's identity towards the backends (mutual TLS).
client=trustgate-proxy
certs="$deploy/certs"

# --proxy-config makes every pki command refuse to put a CA key where the proxy reads.
pki() { "$bin" pki --proxy-config "$deploy/trustgate.toml" "$@"; }

[ -f "$ca_dir/root/ca.key" ] ||
  pki init-root --out "$ca_dir/root" --cn "trustgate example root CA"
if [ ! -f "$ca_dir/intermediate/ca.key" ]; then
  permit=()
  # The client certificate carries its name in the SAN too, so the constraints must permit it.
  for service in "${services[@]}" "$client"; do permit+=(--permit-dns "$service"); done
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
# An intermediate created by an older version of this script does not permit the name: pki
# refuses here and names the constraint; create a new intermediate to turn on mutual TLS.
[ -f "$certs/proxy-client/client.crt" ] ||
  pki issue --ca "$ca_dir/intermediate" --client "$client" --out "$certs/proxy-client"
mkdir -p "$certs/internal"
cp "$ca_dir/root/ca.crt" "$certs/internal/ca.pem"
# revocation = "chain": every CA in an upstream's chain must have a CRL here, or the proxy refuses.
pki crl --ca "$ca_dir/intermediate" --out "$certs/internal/intermediate.crl.pem"
pki crl --root "$ca_dir/root" --days 180 --out "$certs/internal/root.crl.pem"
cp "$ca_dir/public-ca/ca.crt" "$certs/public-ca.pem"

# The containers run as uid 65532 and must read their own key (mode 0600).
keys=("$certs/public/server.key" "$certs/proxy-client/client.key")
for service in "${services[@]}"; do keys+=("$certs/$service/server.key"); done
if [ "$(id -u)" = 0 ]; then
  chown 65532:65532 "${keys[@]}"
else
  echo "The containers run as uid 65532; give them their keys with:"
  echo "  sudo chown 65532:65532 ${keys[*]}"
fi
echo "certificates ready in $certs; CA folders in $ca_dir (move $ca_dir/root offline)"

# Sourced by callgrind.sh and flamegraph.sh: a throw-away internal PKI (P-256 root -> `backend-api`
# leaf, and a public `localhost` leaf), a `trustgate echo` backend on 127.0.0.1:19444 and `tg.toml`,
# a one-route proxy config on 127.0.0.1:19443 (one worker, access log off, strict verification as
# always). Needs $bin; leaves the shell in the scratch folder $work, removed on exit.
for tool in openssl curl; do
  command -v "$tool" >/dev/null || { echo "needs $tool" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cd "$work"
ec() { openssl ecparam -name prime256v1 -genkey -noout -out "$1" 2>/dev/null; openssl pkcs8 -topk8 -nocrypt -in "$1" -out "$1.p8"; mv "$1.p8" "$1"; }
ec root.key
openssl req -x509 -new -key root.key -days 2 -subj "/CN=bench internal root" \
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
workers = ${LAB_WORKERS:-1}

[upstream_tls]
ca = "ca.pem"

[log]
access = false

[[route]]
prefix = "/api"
upstream = "https://backend-api:19444/"
address = "127.0.0.1:19444"
CONF
${LAB_BACKEND_CPU:+taskset -c $LAB_BACKEND_CPU} "$bin" echo --listen 127.0.0.1:19444 --cert be.pem --key be.key >echo.log 2>&1 &

# Waits until the proxy answers (up to a minute: valgrind starts slowly).
lab_wait_ready() {
  for _ in $(seq 1 200); do
    curl -s -o /dev/null --cacert pub.pem https://localhost:19443/api/ready && return 0
    sleep 0.3
  done
  echo "the proxy did not come up" >&2
  return 1
}

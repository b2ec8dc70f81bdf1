#!/usr/bin/env bash
# End-to-end test of the Docker deployment on a real engine, with no registry: a static binary,
# an image FROM scratch, certificates from `trustgate pki`, and docker/compose.yml brought up
# as shipped (mutual TLS to both backends, CRLs checked, backend-api scaled to 3 replicas: every
# replica answers, one stopped and started again under load with no failed request), then every
# certificate renewed with `trustgate pki renew` while a client keeps requesting: new serials
# served, no request failed, no container restarted; then a backend's certificate revoked and its
# CRL re-published: that backend refused, the other still served. Fails when Docker is missing.
# Cleans up on success and on failure.
#
#   docker/e2e.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo"
say() { printf '== %s\n' "$*"; }
fail() { printf 'E2E FAILED: %s\n' "$*" >&2; exit 1; }

command -v docker >/dev/null || fail "docker is not installed"
docker info >/dev/null 2>&1 || fail "the Docker engine is not running (docker info failed)"
if command -v docker-compose >/dev/null; then
  compose_cmd=(docker-compose)
elif docker compose version >/dev/null 2>&1; then
  compose_cmd=(docker compose)
else
  fail "neither docker-compose nor docker compose is available"
fi

work=$(mktemp -d)
project="trustgate-e2e-$$"
image="trustgate:e2e-$$"
compose() { "${compose_cmd[@]}" -p "$project" -f "$work/deploy/compose.yml" "$@"; }
loop=""
# A container started outside compose on the project's networks (removed before compose down).
noclient=""
cleanup() {
  local status=$?
  [ -n "$loop" ] && kill "$loop" 2>/dev/null || true
  if [ $status -ne 0 ] && [ -f "$work/deploy/compose.yml" ]; then
    echo "--- proxy logs ---" >&2
    compose logs --no-color proxy 2>&1 | tail -40 >&2 || true
  fi
  [ -n "$noclient" ] && docker rm -f "$noclient" >/dev/null 2>&1 || true
  [ -f "$work/deploy/compose.yml" ] && compose down -v --remove-orphans >/dev/null 2>&1 || true
  docker image rm -f "$image" >/dev/null 2>&1 || true
  rm -rf "$work"
  exit $status
}
trap cleanup EXIT

say "building the static binary"
triple="$(uname -m)-unknown-linux-gnu"
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --quiet --bin trustgate --target "$triple"
bin="$repo/target/$triple/release/trustgate"
file "$bin" 2>/dev/null | grep -q "static" || ldd "$bin" 2>&1 | grep -q "not a dynamic" ||
  fail "$bin is not statically linked"

say "building the image from the Dockerfile's runtime stage (FROM scratch, nothing pulled)"
mkdir -p "$work/context"
cp "$bin" "$work/context/trustgate"
# The runtime stage of the real Dockerfile, fed the prebuilt binary instead of the build stage.
sed -n '/^FROM scratch AS runtime/,$p' Dockerfile |
  sed 's#^COPY --from=build /trustgate /trustgate#COPY trustgate /trustgate#' > "$work/context/Dockerfile"
grep -q '^COPY trustgate /trustgate' "$work/context/Dockerfile" || fail "Dockerfile runtime stage changed shape"
DOCKER_BUILDKIT=0 docker build --quiet -t "$image" "$work/context" >/dev/null 2>"$work/build.err" ||
  { cat "$work/build.err" >&2; fail "docker build"; }
size=$(docker image inspect "$image" --format '{{.Size}}')
echo "image $image: $((size / 1024 / 1024)) MiB ($size bytes)"
[ "$size" -lt $((15 * 1024 * 1024)) ] || echo "warning: image is over 15 MiB"
[ "$(docker image inspect "$image" --format '{{.Config.User}}')" = "65532:65532" ] || fail "image does not run as 65532"
[ "$(docker image inspect "$image" --format '{{json .Config.Entrypoint}}')" = '["/trustgate"]' ] || fail "entrypoint"

say "generating certificates with trustgate pki (CA folders outside the deployment)"
mkdir -p "$work/deploy"
cp docker/compose.yml docker/trustgate.toml "$work/deploy/"
bash docker/gen-certs.sh --ca-dir "$work/ca" --deploy "$work/deploy" --bin "$bin" >/dev/null

say "compose up"
# A port nothing listens on (bash's /dev/tcp connect fails), tried a bounded number of times.
free_port() {
  local candidate
  for _ in $(seq 1 50); do
    candidate=$((20000 + RANDOM % 40000))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then echo "$candidate"; return 0; fi
  done
  return 1
}
port=$(free_port) || fail "no free port found"
export TRUSTGATE_IMAGE="$image" TRUSTGATE_PORT="$port"
# compose.yml says deploy.replicas: 3 (docker compose v2 and docker-compose 1.29 both apply it);
# --scale sets the same count explicitly, whichever compose runs.
replicas=3
compose up -d --scale "backend-api=$replicas" >/dev/null 2>"$work/up.err" || { cat "$work/up.err" >&2; fail "compose up"; }

cacert="$work/deploy/certs/public-ca.pem"
# Polls `curl` until it prints the wanted status, for at most $2 seconds; $4: another proxy port.
wait_status() {
  local want=$1 seconds=$2 path=$3 to=${4:-$port} got=""
  for _ in $(seq 1 $((seconds * 4))); do
    got=$(curl -s -o "$work/body" -w '%{http_code}' --max-time 5 --cacert "$cacert" "https://localhost:$to$path" || true)
    [ "$got" = "$want" ] && return 0
    sleep 0.25
  done
  fail "https://localhost:$to$path answered ${got:-nothing}, wanted $want"
}
# The line the echo writes for the client certificate it verified: the proxy's identity.
mtls_line="tls client certificate: CN=trustgate-proxy"

say "a request through the proxy reaches backend-api over verified mutual TLS"
wait_status 200 60 "/api/hello?from=e2e"
grep -q "tls sni: backend-api" "$work/body" || fail "backend did not see SNI backend-api: $(cat "$work/body")"
grep -q "^GET /hello?from=e2e HTTP" "$work/body" || fail "backend saw another path: $(cat "$work/body")"
grep -qi "^x-forwarded-proto: https" "$work/body" || fail "no X-Forwarded-Proto"
grep -qxF "$mtls_line" "$work/body" || fail "backend-api did not see the proxy's client certificate: $(cat "$work/body")"
grep -xF "$mtls_line" "$work/body" | sed 's/^/backend-api: /'
wait_status 200 10 "/reports/q1"
grep -q "tls sni: backend-reports" "$work/body" || fail "reports backend did not see its SNI"
grep -qxF "$mtls_line" "$work/body" || fail "backend-reports did not see the proxy's client certificate: $(cat "$work/body")"
grep -xF "$mtls_line" "$work/body" | sed 's/^/backend-reports: /'
wait_status 404 5 "/nothing-here"

say "backend-api scaled to $replicas replicas: requests reach all three, one stopped under load, no failed GET"
api_ids=$(compose ps -q backend-api)
[ "$(printf '%s\n' "$api_ids" | grep -c .)" = "$replicas" ] ||
  fail "compose runs $(printf '%s\n' "$api_ids" | grep -c .) backend-api containers, wanted $replicas"
proxy_id=$(compose ps -q proxy)
# The echo names its host (HOSTNAME, which Docker sets to the container's hostname: the short id).
hostname_of() { docker inspect --format '{{.Config.Hostname}}' "$1"; }
name_of() { docker inspect --format '{{.Name}}' "$1" | sed 's#^/##'; }
for id in $api_ids; do echo "$(name_of "$id"): hostname $(hostname_of "$id")"; done
# The echo host that answered a GET of $1 (nothing when none did).
echo_host() {
  { curl -s --max-time 5 --cacert "$cacert" "https://localhost:$port$1" || true; } | sed -n 's/^echo host: //p'
}
: > "$work/who"
for i in $(seq 1 60); do echo_host "/api/who?n=$i" >> "$work/who"; done
answered=$(grep -c . "$work/who" || true)
sort "$work/who" | uniq -c | awk '{ print "answers from " $2 ": " $1 }'
[ "$answered" = 60 ] || fail "$((60 - answered)) of 60 GETs to /api/who got no echo answer"
for host in $(sort -u "$work/who"); do
  for id in $api_ids; do [ "$(hostname_of "$id")" = "$host" ] && continue 2; done
  fail "an answer came from $host, which is no backend-api replica"
done
distinct=$(sort -u "$work/who" | grep -c . || true)
[ "$distinct" = "$replicas" ] || fail "60 GETs to /api/who reached $distinct backend-api replicas, wanted $replicas"

# A new client connection per request, for at most 90 s or until told to stop; each answer's echo
# host goes to load.hosts, each failure with its status to load.failures.
rm -f "$work/stop" "$work/load.failures"
: > "$work/load.hosts"
(
  ok=0 failed=0 end=$((SECONDS + 90))
  while [ "$SECONDS" -lt "$end" ] && [ ! -f "$work/stop" ]; do
    code=$(curl -s -o "$work/load.body" -w '%{http_code}' --max-time 5 --cacert "$cacert" "https://localhost:$port/api/load" || true)
    if [ "$code" = 200 ]; then
      ok=$((ok + 1))
      sed -n 's/^echo host: //p' "$work/load.body" >> "$work/load.hosts"
    else
      failed=$((failed + 1))
      echo "/api/load at ${SECONDS}s: ${code:-no answer}" >> "$work/load.failures"
    fi
  done
  echo "$ok $failed" > "$work/load.counts"
) &
loop=$!
sleep 2

victim=$(printf '%s\n' "$api_ids" | head -1)
victim_host=$(hostname_of "$victim")
victim_ip=$(docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$victim")
since=$(date +%s.%N)
stop_start=$SECONDS
docker stop "$victim" >/dev/null || fail "docker stop $victim"
echo "stopped $(name_of "$victim") (host $victim_host, $victim_ip) in $((SECONDS - stop_start)) s," \
  "exit code $(docker inspect --format '{{.State.ExitCode}}' "$victim")"
# The echo exits on SIGTERM (closes its listener, drains): 137 would mean docker stop had to SIGKILL it.
[ "$(docker inspect --format '{{.State.ExitCode}}' "$victim")" = 0 ] || fail "the echo did not exit on SIGTERM"
sleep 12
# Out of rotation either way: ejected (failed connects, failed health checks), or gone from
# Docker's DNS, which drops a stopped container's address at once.
down_line=$(docker logs --since "$since" "$proxy_id" 2>&1 |
  grep -E "upstream endpoint down.*endpoint=$victim_ip:8443|upstream endpoints changed.*removed=.*$victim_ip:8443" |
  tail -1 || true)
[ -n "$down_line" ] || fail "no proxy log line with: upstream endpoint down (or removed) ... $victim_ip:8443"
echo "$down_line"

# Restarted, it keeps its hostname; Docker may give it another address on internal_net, which the
# proxy finds when it re-resolves backend-api. Its answers are matched by hostname, not address.
since=$(date +%s.%N)
mark=$(wc -l < "$work/load.hosts")
docker start "$victim" >/dev/null || fail "docker start $victim"
[ "$(hostname_of "$victim")" = "$victim_host" ] || fail "the restarted replica changed its hostname"
victim_ip=$(docker inspect --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' "$victim")
echo "started $(name_of "$victim") again (host $victim_host, $victim_ip)"
up_line="" back="" end=$((SECONDS + 30))
while [ "$SECONDS" -lt "$end" ]; do
  [ -n "$up_line" ] || up_line=$(docker logs --since "$since" "$proxy_id" 2>&1 |
    grep -E "upstream endpoint up.*endpoint=$victim_ip:8443|upstream endpoints changed.*added=[^=]*$victim_ip:8443" |
    tail -1 || true)
  [ -n "$back" ] || back=$(tail -n "+$((mark + 1))" "$work/load.hosts" | grep -xF "$victim_host" | head -1 || true)
  [ -n "$up_line" ] && [ -n "$back" ] && break
  sleep 0.25
done
[ -n "$up_line" ] || fail "no proxy log line with: upstream endpoint up (or added) ... $victim_ip:8443 within 30 s of the start"
echo "$up_line"
[ -n "$back" ] || fail "no GET answered by the restarted replica ($victim_host) within 30 s of the start"
echo "the restarted replica ($victim_host) answers again"

touch "$work/stop"
wait "$loop"
loop=""
read -r ok failed < "$work/load.counts"
echo "client loop while a replica stopped and started: $ok requests answered 200, $failed failed"
sort "$work/load.hosts" | uniq -c | awk '{ print "answers from " $2 ": " $1 }'
[ "$failed" = 0 ] || fail "requests failed while a replica stopped: $(sort "$work/load.failures" | uniq -c | tr '\n' ' ')"
[ "$ok" -gt 0 ] || fail "the client loop made no request"

say "only the proxy publishes a port"
for service in backend-api backend-reports; do
  ids=$(compose ps -q "$service")
  [ -n "$ids" ] || fail "no $service container"
  for id in $ids; do
    published=$(docker port "$id")
    [ -z "$published" ] || fail "$service ($(name_of "$id")) publishes $published"
  done
done
[ -n "$(docker port "$(compose ps -q proxy)")" ] || fail "the proxy publishes nothing"
internal=$(docker network inspect "${project}_internal_net" --format '{{.Internal}}')
[ "$internal" = "true" ] || fail "internal_net is not internal"

say "the backends refuse a client without a client certificate"
# Nothing but the proxy reaches internal_net, and the image FROM scratch has no client to exec:
# the client here is a second proxy from the same image, config and certificates minus
# client_cert/client_key, attached to both networks with a port of its own.
certs="$work/deploy/certs"
mkdir -p "$work/noclient/certs/public" "$work/noclient/certs/internal"
grep -v '^client_\(cert\|key\) = ' "$work/deploy/trustgate.toml" > "$work/noclient/trustgate.toml"
grep -q '^client_' "$work/noclient/trustgate.toml" && fail "the client certificate is still in the no-client config"
grep -q '^client_cert = ' "$work/deploy/trustgate.toml" || fail "the shipped config has no client_cert"
port2=$(free_port) || fail "no free port found"
noclient="$project-noclient"
docker create --name "$noclient" --read-only --cap-drop ALL --security-opt no-new-privileges:true \
  --network "${project}_public" -p "127.0.0.1:$port2:8443" \
  -v "$work/noclient:/etc/trustgate:ro" \
  -v "$certs/public:/etc/trustgate/certs/public:ro" \
  -v "$certs/internal:/etc/trustgate/certs/internal:ro" \
  "$image" run -c /etc/trustgate/trustgate.toml >/dev/null || fail "docker create (proxy without client certificate)"
docker network connect "${project}_internal_net" "$noclient" || fail "docker network connect"
docker start "$noclient" >/dev/null || fail "docker start (proxy without client certificate)"
demanded="the upstream demanded a client certificate"
for path in /api/no-client-cert /reports/no-client-cert; do
  wait_status 502 30 "$path" "$port2"
  grep -qx "502 Bad Gateway" "$work/body" || fail "the client got internal detail: $(cat "$work/body")"
done
for _ in $(seq 1 20); do
  [ "$(docker logs "$noclient" 2>&1 | grep -cF "$demanded")" -ge 2 ] && break
  sleep 0.25
done
[ "$(docker logs "$noclient" 2>&1 | grep -cF "$demanded")" -ge 2 ] ||
  { docker logs "$noclient" 2>&1 | tail -20 >&2; fail "no two log lines with: $demanded"; }
docker logs "$noclient" 2>&1 | grep -F "$demanded" | tail -1
docker rm -f "$noclient" >/dev/null
noclient=""

say "the proxy image holds no private key"
docker export "$(compose ps -q proxy)" > "$work/proxy.tar"
mkdir -p "$work/export"
tar -xf "$work/proxy.tar" -C "$work/export" 2>/dev/null || true
if grep -rlI "PRIVATE KEY" "$work/export" >/dev/null 2>&1; then
  fail "private key material in the proxy container's filesystem: $(grep -rlI 'PRIVATE KEY' "$work/export")"
fi
tar -tf "$work/proxy.tar" | grep -E '\.(key|pem)$' | grep -v '^etc/trustgate/' &&
  fail "unexpected key or PEM files in the image"
echo "files in the proxy container: $(tar -tf "$work/proxy.tar" | grep -v '/$' | tr '\n' ' ')"

say "trustgate audit passes on the shipped setup"
"$bin" audit -c "$work/deploy/trustgate.toml" --compose "$work/deploy/compose.yml" > "$work/audit.txt" ||
  { cat "$work/audit.txt" >&2; fail "audit failed on the shipped setup"; }
tail -1 "$work/audit.txt"

say "trustgate audit fails when a backend publishes a port"
mkdir -p "$work/bad"
cp -r "$work/deploy/certs" "$work/deploy/trustgate.toml" "$work/bad/"
awk '{ print } /^  backend-api:$/ { print "    ports: [\"9443:8443\"]" }' "$work/deploy/compose.yml" > "$work/bad/compose.yml"
if "$bin" audit -c "$work/bad/trustgate.toml" --compose "$work/bad/compose.yml" > "$work/audit-bad.txt"; then
  cat "$work/audit-bad.txt" >&2
  fail "audit passed although backend-api publishes a port"
fi
grep -q "backend-publishes-port" "$work/audit-bad.txt" || fail "audit did not name the published port"

say "renewal without restart: trustgate pki renew on the host while a client keeps requesting"
# Serials as lowercase hex without leading zeros, whichever tool printed them.
norm() { tr 'A-F' 'a-f' | sed 's/^0*//'; }
file_serial() { openssl x509 -in "$1" -noout -serial | cut -d= -f2 | norm; }
# The certificate a fresh TLS handshake with the proxy gets.
public_serial() {
  openssl s_client -connect "localhost:$port" -servername localhost </dev/null 2>/dev/null |
    openssl x509 -noout -serial 2>/dev/null | cut -d= -f2 | norm
}
# The serial the echo behind $1 names in its answer (the certificate it serves new connections).
echo_serial() {
  curl -s --max-time 5 --cacert "$cacert" "https://localhost:$port$1" |
    sed -n 's/^tls certificate serial: //p' | norm
}
# The client certificate the echo behind $1 verified.
echo_client() {
  curl -s --max-time 5 --cacert "$cacert" "https://localhost:$port$1" | sed -n 's/^tls client certificate: //p'
}
containers() {
  for id in $(compose ps -q); do docker inspect --format '{{.Name}} restarts={{.RestartCount}} started={{.State.StartedAt}}' "$id"; done | sort
}
old_public=$(file_serial "$certs/public/server.crt")
old_api=$(file_serial "$certs/backend-api/server.crt")
old_reports=$(file_serial "$certs/backend-reports/server.crt")
old_client=$(file_serial "$certs/proxy-client/client.crt")
[ "$(public_serial)" = "$old_public" ] || fail "the proxy does not serve certs/public/server.crt"
[ "$(echo_serial /api/serial)" = "$old_api" ] || fail "backend-api does not name its certificate"
[ "$(echo_serial /reports/serial)" = "$old_reports" ] || fail "backend-reports does not name its certificate"
containers > "$work/containers.before"

# A new client connection per request, for at most 60 s or until told to stop.
rm -f "$work/stop"
(
  ok=0 failed=0 end=$((SECONDS + 60))
  while [ "$SECONDS" -lt "$end" ] && [ ! -f "$work/stop" ]; do
    for path in /api/loop /reports/loop; do
      code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 5 --cacert "$cacert" "https://localhost:$port$path" || true)
      if [ "$code" = 200 ]; then ok=$((ok + 1)); else failed=$((failed + 1)); echo "$path: ${code:-no answer}" >> "$work/loop.failures"; fi
    done
  done
  echo "$ok $failed" > "$work/loop.counts"
) &
loop=$!
sleep 2

pki_host() { "$bin" pki --proxy-config "$work/deploy/trustgate.toml" "$@"; }
# Every leaf, the proxy's client certificate included: the window is longer than any
# certificate's remaining life.
pki_host renew --ca "$work/ca/intermediate" --certs "$certs" --within 3650d | grep '^renewed' || fail "pki renew"
pki_host renew --ca "$work/ca/public-ca" --certs "$certs/public" --within 3650d | grep '^renewed' || fail "pki renew"
# Nothing else: renew keeps each replaced file's owner, so the containers (uid 65532) read the new keys.
new_public=$(file_serial "$certs/public/server.crt")
new_api=$(file_serial "$certs/backend-api/server.crt")
new_reports=$(file_serial "$certs/backend-reports/server.crt")
new_client=$(file_serial "$certs/proxy-client/client.crt")
[ "$new_public" != "$old_public" ] && [ "$new_api" != "$old_api" ] && [ "$new_reports" != "$old_reports" ] &&
  [ "$new_client" != "$old_client" ] || fail "pki renew did not renew every leaf"

# Polls until `$1` prints `$2`, for at most 20 s.
wait_for() {
  local got=""
  for _ in $(seq 1 80); do
    got=$($1) && [ "$got" = "$2" ] && return 0
    sleep 0.25
  done
  fail "$1 gave ${got:-nothing}, wanted $2"
}
wait_for public_serial "$new_public"
echo "proxy public certificate: serial $old_public -> $new_public (fresh handshake on localhost:$port)"
wait_for "echo_serial /api/serial" "$new_api"
wait_for "echo_serial /reports/serial" "$new_reports"
sleep 2
touch "$work/stop"
wait "$loop"
loop=""
read -r ok failed < "$work/loop.counts"
echo "client loop during the renewal: $ok requests answered 200, $failed failed"
[ "$failed" = 0 ] || fail "requests failed during the renewal: $(sort "$work/loop.failures" | uniq -c | tr '\n' ' ')"
[ "$ok" -gt 0 ] || fail "the client loop made no request"

# The proxy's pooled connections to the backends were opened before the renewal; a backend closes
# a connection idle for 60 s ([timeouts] idle), so past that every request handshakes afresh and
# the serial the echo names is the one that handshake presented and the proxy verified.
echo "waiting 62 s for the proxy's upstream connections to go idle and close"
sleep 62
# backend-api's replicas share one certificate folder: whichever answers names the renewed one.
api_serials=$(for _ in $(seq 1 12); do echo_serial /api/serial; done | sort -u)
[ "$api_serials" = "$new_api" ] || fail "backend-api does not present its new certificate: $(echo $api_serials)"
[ "$(echo_serial /reports/serial)" = "$new_reports" ] || fail "backend-reports does not present its new certificate"
echo "backend-api certificate: serial $old_api -> $new_api (new upstream connection, verified by the proxy)"
echo "backend-reports certificate: serial $old_reports -> $new_reports (new upstream connection, verified by the proxy)"
# Those new connections presented the renewed client certificate (new key), and both backends took it.
for path in /api/client /reports/client; do
  [ "$(echo_client "$path")" = "CN=trustgate-proxy" ] || fail "$path: the backend no longer sees the proxy's client certificate"
done
echo "proxy client certificate: serial $old_client -> $new_client (accepted by both backends)"
containers > "$work/containers.after"
diff "$work/containers.before" "$work/containers.after" >&2 || fail "a container restarted during the renewal"
sed 's/^/unchanged: /' "$work/containers.after"
compose logs --no-color proxy 2>&1 | grep -F "reload applied" | tail -1
# Each backend-api replica reloaded the renewed pair from the shared folder on its own.
for id in $(compose ps -q backend-api); do
  reloaded=$(docker logs "$id" 2>&1 | grep -F "echo certificate reloaded" | tail -1)
  printf '%s\n' "$reloaded" | grep -qF "$new_api" || fail "backend-api replica $(name_of "$id") did not reload the renewed pair"
  echo "$(name_of "$id"): $reloaded"
done
compose logs --no-color backend-reports 2>&1 | grep -F "echo certificate reloaded" | tail -1

say "revocation: backend-reports' certificate revoked and the intermediate's CRL re-published, no restart"
# Leaves the proxy a pooled (keep-alive) connection to each backend, opened before the CRL.
wait_status 200 5 "/reports/before-revocation"
wait_status 200 5 "/api/before-revocation"
pki_host revoke --ca "$work/ca/intermediate" --name backend-reports --reason key-compromise | grep '^revoked' ||
  fail "pki revoke"
# Into the folder the proxy mounts; written atomically, so the proxy's file watch reloads it.
pki_host crl --ca "$work/ca/intermediate" --out "$certs/internal/intermediate.crl.pem" || fail "pki crl"
# The proxy's pooled connection to backend-reports predates the CRL: it must not serve this.
wait_status 502 30 "/reports/after-revocation"
grep -qx "502 Bad Gateway" "$work/body" || fail "the client got internal detail: $(cat "$work/body")"
revoked_line=""
for _ in $(seq 1 40); do
  revoked_line=$(compose logs --no-color proxy 2>&1 | grep -F "certificate revoked (serial 0x" | tail -1)
  [ -n "$revoked_line" ] && break
  sleep 0.25
done
[ -n "$revoked_line" ] || fail "no proxy log line with: certificate revoked (serial"
echo "$revoked_line"
revoked_serial=$(printf '%s\n' "$revoked_line" | sed 's/.*certificate revoked (serial 0x\([0-9a-fA-F]*\).*/\1/' | norm)
[ "$revoked_serial" = "$new_reports" ] ||
  fail "the proxy names serial ${revoked_serial:-none} revoked, backend-reports serves $new_reports"
compose logs --no-color proxy 2>&1 | grep -F "reload applied" | grep -F "CRLs now" | tail -1 ||
  fail "no reload line naming the new CRL"
# The connection opened before the CRL is closed at the reload, not left to serve; backend-api's stays.
closed="closed an upstream connection: its certificate no longer verifies"
compose logs --no-color proxy 2>&1 | grep -F "$closed" > "$work/closed.log" || true
grep -F "backend-reports:8443" "$work/closed.log" | grep -qF "certificate revoked (serial 0x" ||
  fail "no log line saying the pooled connection to backend-reports was closed: $closed"
grep -F "backend-reports:8443" "$work/closed.log" | tail -1
grep -F "backend-api:8443" "$work/closed.log" >&2 && fail "a connection to backend-api was closed at the CRL reload"
wait_status 200 10 "/api/after-revocation"
grep -qxF "$mtls_line" "$work/body" || fail "backend-api lost mutual TLS after the CRL reload"
containers | diff "$work/containers.after" - >&2 || fail "a container restarted during the revocation"

say "a backend with a certificate for the wrong name gets 502 and a log line saying why"
"$bin" pki --proxy-config "$work/deploy/trustgate.toml" issue --ca "$work/ca/intermediate" \
  --name backend-api --out "$work/deploy/certs/backend-reports" --renew >/dev/null
[ "$(id -u)" = 0 ] && chown 65532:65532 "$work/deploy/certs/backend-reports/server.key"
compose restart backend-reports >/dev/null 2>&1
wait_status 502 60 "/reports/q2"
grep -qx "502 Bad Gateway" "$work/body" || fail "the client got internal detail: $(cat "$work/body")"
reason='certificate not valid for name "backend-reports"; it is valid for "backend-api"'
# /reports was already refused (revoked): a request per try, so a handshake with the new
# certificate gets logged once the restarted echo listens.
for _ in $(seq 1 40); do
  curl -s -o /dev/null --max-time 5 --cacert "$cacert" "https://localhost:$port/reports/q3" || true
  compose logs --no-color proxy 2>&1 | grep -qF "$reason" && break
  sleep 0.25
done
compose logs --no-color proxy 2>&1 | grep -F "$reason" | tail -1 ||
  fail "no proxy log line with: $reason"
wait_status 200 10 "/api/still-fine"

say "compose down"
compose down -v --remove-orphans >/dev/null 2>&1
echo "E2E PASSED (image $((size / 1024 / 1024)) MiB)"

#!/usr/bin/env bash
# Runs LocalStack in the foreground on 127.0.0.1:PORT until killed (SIGTERM its PID).
#   tests/localstack/run.sh PORT WORKDIR      env: LOCALSTACK_VENV, SERVICES (default sns)
# Ready when GET http://127.0.0.1:PORT/_localstack/health answers 200. SigningCertURL and
# SubscribeURL then point at http://127.0.0.1:PORT/ (LOCALSTACK_HOST below), so a gateway
# under test trusts them with --sns-dev-url-prefix http://127.0.0.1:PORT/. Its account is
# 000000000000; any access key is accepted.
set -euo pipefail
port=${1:?usage: run.sh PORT WORKDIR}; dir=${2:?usage: run.sh PORT WORKDIR}
venv=${LOCALSTACK_VENV:-$HOME/.cache/webhook-relay/localstack-venv}
mkdir -p "$dir/fs"
# LocalStack's own self-signed certificate generator fails with pyOpenSSL 26: hand it one.
if [ ! -s "$dir/server.pem" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj /CN=localhost \
    -keyout "$dir/key.pem" -out "$dir/cert.pem" >/dev/null 2>&1
  cat "$dir/key.pem" "$dir/cert.pem" >"$dir/server.pem"
fi
cd "$dir"
# OVERRIDE_IN_DOCKER=0: /.dockerenv exists on these machines; without it LocalStack assumes a
#   container (state under /var/lib/localstack, binds 0.0.0.0).
# GATEWAY_SERVER=hypercorn: the default server ignores the listen host and binds 0.0.0.0.
# LOCALSTACK_HOST: the host written into SigningCertURL/SubscribeURL (else
#   localhost.localstack.cloud, which does not resolve without DNS).
exec env OVERRIDE_IN_DOCKER=0 GATEWAY_SERVER=hypercorn \
  GATEWAY_LISTEN="127.0.0.1:$port" LOCALSTACK_HOST="127.0.0.1:$port" \
  SERVICES="${SERVICES:-sns}" DNS_ADDRESS=0 DISABLE_EVENTS=1 SKIP_SSL_CERT_DOWNLOAD=1 \
  CUSTOM_SSL_CERT_PATH="$dir/server.pem" FILESYSTEM_ROOT="$dir/fs" \
  "$venv/bin/python" -m localstack.runtime.main

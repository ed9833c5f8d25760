#!/usr/bin/env bash
# Installs LocalStack (a real SNS API and sender) into a venv, without Docker, pinned.
#   tests/localstack/install.sh [VENV_DIR]     default: ${LOCALSTACK_VENV:-$HOME/.cache/webhook-relay/localstack-venv}
# LocalStack needs Python >= 3.12: python3.12/3.13 on PATH or under ~/.pyenv is used. Safe
# to re-run (exits at once when the venv already works).
set -euo pipefail
venv=${1:-${LOCALSTACK_VENV:-$HOME/.cache/webhook-relay/localstack-venv}}
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import localstack, boto3' 2>/dev/null; then
  echo "localstack venv ok: $venv"; exit 0
fi
py=""
for c in python3.13 python3.12 "$HOME"/.pyenv/versions/3.13*/bin/python "$HOME"/.pyenv/versions/3.12*/bin/python; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    py=$(command -v "$c"); break
  fi
done
[ -n "$py" ] || { echo "install.sh: need Python >= 3.12 (python3.12/3.13 on PATH or under ~/.pyenv)" >&2; exit 1; }
mkdir -p "$(dirname "$venv")"
"$py" -m venv "$venv"
# cbor2 6.x lacks cbor2._decoder, which LocalStack's plugin loader imports: without the pin
# it starts with "No component plugins found". Twisted needs service_identity.
"$venv/bin/pip" install -q --disable-pip-version-check \
  'localstack-core[runtime]==2026.3.0' 'cbor2<5.7' service_identity 'boto3<2'
echo "localstack venv ok: $venv"

#!/usr/bin/env bash
# Runs the proxy on its embedded default: development certificates, the
# built-in development identity provider, a SecantusDB backend, all on
# loopback. Installs what it needs first (SecantusDB and pymongo into
# .tools/venv, mongosh into .tools/npm). Extra arguments go to
# the demo binary `mongo-oidc-proxy-demo` (devkit/; see its `--help`), e.g.
# --listen 127.0.0.1:28017.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-tools.sh
export MOP_TOOLS="$PWD/.tools"
echo "==> building mongo-oidc-proxy (release; the first build takes a few minutes, cargo shows its progress)"
exec cargo run --release -p mongo-oidc-proxy-devkit --bin mongo-oidc-proxy-demo -- "$@"

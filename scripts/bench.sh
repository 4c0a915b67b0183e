#!/usr/bin/env bash
# Benchmarks, from a fresh clone:
#   1. installs SecantusDB (scripts/setup-tools.sh) and haproxy (apt, when root);
#   2. cargo bench --bench jwt   (criterion: token verification micro-benchmarks);
#   3. cargo bench --bench e2e   (direct vs haproxy vs mongo-oidc-proxy, ~3 min).
# Environment: E2E_QUICK=1 for a short e2e run; E2E_OPS, E2E_WARMUP, E2E_SETUPS,
# E2E_ROUNDS, E2E_CONCURRENCY (e.g. 1,8), E2E_WORKLOADS (e.g. ping,find_one),
# E2E_OUT=FILE to also write the e2e tables (markdown) to FILE.
# SKIP_JWT=1 skips the criterion bench.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing SecantusDB (skipped when already present)"
bash scripts/setup-tools.sh
export MOP_TOOLS="$PWD/.tools"

if ! command -v haproxy >/dev/null 2>&1 && [ ! -x /usr/sbin/haproxy ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        step "installing haproxy (apt-get)"
        apt-get update -qq && apt-get install -y -qq haproxy
    else
        echo "bench: haproxy is not installed and this is not a root Debian shell;" >&2
        echo "bench: install it (sudo apt-get install -y haproxy) or the e2e bench skips the haproxy path." >&2
    fi
fi

step "machine"
echo "date:  $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu:   $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "os:    $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
echo "rust:  $(rustc --version)"
echo "git:   $(git rev-parse --short HEAD 2>/dev/null || echo '?')"

if [ "${SKIP_JWT:-0}" != 1 ]; then
    step "cargo bench --bench jwt"
    cargo bench --bench jwt
fi

step "cargo bench --bench e2e"
cargo bench --bench e2e

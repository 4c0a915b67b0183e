#!/usr/bin/env bash
# Benchmarks, from a fresh clone (about 10 minutes on 2 cores, build included):
#   1. installs SecantusDB (scripts/setup-tools.sh) and haproxy (apt, when root);
#   2. cargo bench --bench jwt and --bench decode: criterion micro-benchmarks;
#   3. cargo bench --bench e2e: direct vs haproxy vs the mongo-oidc-proxy binary
#      against a canned-reply backend (round-trip matrix, connection storms,
#      memory per idle connection) and against SecantusDB. Writes
#      benches/results/latest.{md,svg} (E2E_QUICK=1: quick.{md,svg}).
# Environment: E2E_QUICK=1 for a short run (not a measurement); E2E_PARTS,
# E2E_CELL_MS, E2E_ROUNDS, E2E_CONCURRENCY, E2E_WORKLOADS, E2E_STORM, E2E_MEM,
# ... (benches/README.md). SKIP_CRITERION=1 skips the criterion benches.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing SecantusDB (skipped when already present)"
SETUP_ONLY=python bash scripts/setup-tools.sh
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

# The memory test holds 10,000 connections: about 40,000 descriptors in the
# bench and the relays together. The bench raises its own limit as well; as
# root this also lifts the hard limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

step "machine"
echo "date:  $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "cpu:   $(nproc) x $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
echo "os:    $(. /etc/os-release && echo "$PRETTY_NAME"), kernel $(uname -r)"
echo "rust:  $(rustc --version)"
echo "git:   $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo "nofile: $(ulimit -n)"

step "building the benches (release)"
cargo bench --no-run --bench e2e --bench jwt --bench decode

if [ "${SKIP_CRITERION:-${SKIP_JWT:-0}}" != 1 ]; then
    # Shorter than criterion's 3 s + 5 s per bench: the script must fit in 10 minutes.
    criterion_args=(--warm-up-time 0.5 --measurement-time 1.5)
    step "cargo bench --bench jwt"
    cargo bench --bench jwt -- "${criterion_args[@]}"
    step "cargo bench --bench decode"
    cargo bench --bench decode -- "${criterion_args[@]}"
fi

step "cargo bench --bench e2e"
e2e_start=$SECONDS
cargo bench --bench e2e
echo "e2e bench took $((SECONDS - e2e_start)) s; the whole script ${SECONDS} s"

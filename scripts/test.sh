#!/usr/bin/env bash
# The whole test suite, from a fresh clone: installs the real third-party
# parts the tests use (SecantusDB + pymongo in .tools/venv; the Node driver,
# mongosh and MongoDB's oidc-mock-provider in .tools/npm), then runs every
# Rust test (unit, integration, client end-to-end) and the lint gates.
# Everything the tests start listens on free 127.0.0.1 ports.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "installing test tools (skipped when already present)"
bash scripts/setup-tools.sh
export MOP_TOOLS="$PWD/.tools"
# A fresh clone builds everything once: incremental state would only cost time.
if [ "${CI:-}" = true ]; then
    export CARGO_INCREMENTAL=0
fi

step "cargo fmt --check"
cargo fmt --all -- --check

# Clippy lints the workspace while the tests compile: as the compiler of the
# workspace's own crates (which is how `cargo clippy` runs it too), it builds
# every dependency once, where `cargo clippy` followed by `cargo test` checks
# them all and then compiles them all again.
export RUSTC_WORKSPACE_WRAPPER="$(rustup which clippy-driver 2>/dev/null || command -v clippy-driver)"
if [ ! -x "$RUSTC_WORKSPACE_WRAPPER" ]; then
    echo "test.sh: clippy-driver not found; install it with: rustup component add clippy" >&2
    exit 1
fi
export CLIPPY_ARGS="-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__"
step "compiling every target with clippy's lints (-D warnings)"
cargo test --workspace --all-targets --no-run

step "benchmarks, each run once as a smoke test"
cargo test --workspace --bench jwt --bench wire --bench e2e --bench decode

step "cargo test (unit, integration and client end-to-end tests)"
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Client end-to-end tests start real servers; two at a time suits 2-core CI.
# Every test binary runs even after a failure, so one run shows them all.
status=0
cargo test --workspace --no-fail-fast --lib --bins --tests -- --test-threads=2 2>&1 | tee "$log" || status=$?
echo "test command took ${SECONDS} s"
awk '/^test result:/ { p += $4; f += $6 } END { printf "\ntests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"

#!/usr/bin/env bash
# Installs the real third-party software the integration tests run against,
# inside the repository (nothing global):
#   .tools/venv  python venv with SecantusDB (backend, `secantusd-py`) and pymongo,
#                kubernetes-validate (checks deploy/kubernetes/ in tests/deploy.rs),
#                and pytest with pymongo's other test dependencies
#   .tools/pymongo-suite/pymongo-<version>  pymongo's sdist, unpacked: its own test
#                suite, whose OIDC modules tests/pymongo_suite.rs runs
#   .tools/npm   the Node `mongodb` driver, mongosh and @mongodb-js/oidc-mock-provider
#   .tools/prometheus/promtool  from Debian's `prometheus` package, extracted
#                alone (checks deploy/prometheus/ in tests/observability.rs)
# and, with apt-get as root, Debian's haproxy (the TCP load balancer of
# tests/failover.rs) system-wide.
#   tinyproxy    (Debian package, the one global install, as root only) the
#                forward proxy tests/idp_network.rs sends IdP fetches through
# Idempotent: each step writes a stamp file holding its pinned versions and is
# skipped when the stamp matches. Needs python3 (with venv), node and npm.
# Installs into $MOP_TOOLS when that is set, else <repo>/.tools. Ends by
# printing the environment the test suite reads (MOP_TOOLS).
set -euo pipefail

SECANTUS_VERSION="0.7.0b3"
PYMONGO_VERSION="4.20.0"
KUBERNETES_VALIDATE_VERSION="1.37.0"
# The npm tree is pinned by scripts/tools-npm/package-lock.json (mongodb 7.9.0,
# mongosh 2.12.0, @mongodb-js/oidc-mock-provider 0.13.18 and every transitive
# dependency): resolving ranges afresh can pick versions the registry lacks.
NPM_PACKAGES="mongodb@7.9.0 mongosh@2.12.0 @mongodb-js/oidc-mock-provider@0.13.18"

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="${MOP_TOOLS:-$REPO/.tools}"

log() { echo "setup-tools: $*"; }
die() {
    echo "setup-tools: error: $*" >&2
    exit 1
}

for cmd in python3 node npm; do
    command -v "$cmd" >/dev/null 2>&1 ||
        die "'$cmd' not found on PATH; install it first (Debian 12: apt-get install python3 python3-venv nodejs npm)"
done
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 9) else 1)' ||
    die "python3 >= 3.9 is required (found $(python3 --version 2>&1))"
node_major="$(node -p 'process.versions.node.split(".")[0]')"
[ "$node_major" -ge 18 ] || die "node >= 18 is required (found $(node --version))"

# SETUP_ONLY="python haproxy" installs just those parts (scripts/bench.sh
# needs only SecantusDB and haproxy); unset, everything.
want() { [ -z "${SETUP_ONLY:-}" ] || [[ " $SETUP_ONLY " == *" $1 "* ]]; }

mkdir -p "$TOOLS"
# keep the installed tools out of git without touching the repo's .gitignore
[ -f "$TOOLS/.gitignore" ] || echo "*" >"$TOOLS/.gitignore"

# --- python venv: SecantusDB + pymongo ------------------------------------
PY_PINS="SecantusDB==$SECANTUS_VERSION pymongo==$PYMONGO_VERSION"
PY_REQS="$REPO/scripts/tools-requirements.txt"
[ -f "$PY_REQS" ] || die "$PY_REQS is missing"
grep -qx "SecantusDB==$SECANTUS_VERSION" "$PY_REQS" && grep -qx "pymongo==$PYMONGO_VERSION" "$PY_REQS" ||
    die "$PY_REQS does not pin $PY_PINS"
PY_PINS="$PY_PINS reqs:$(sha256sum "$PY_REQS" | cut -c1-16)"
PY_STAMP="$TOOLS/venv/.mop-stamp"
if ! want python; then
    log "python: skipped (SETUP_ONLY=$SETUP_ONLY)"
elif [ -x "$TOOLS/venv/bin/secantusd-py" ] && [ "$(cat "$PY_STAMP" 2>/dev/null)" = "$PY_PINS" ]; then
    log "python venv up to date (SecantusDB==$SECANTUS_VERSION pymongo==$PYMONGO_VERSION)"
else
    if [ ! -x "$TOOLS/venv/bin/python" ]; then
        log "creating python venv in $TOOLS/venv ..."
        python3 -m venv "$TOOLS/venv" ||
            die "python3 -m venv failed (Debian: apt-get install python3-venv)"
    fi
    log "installing SecantusDB==$SECANTUS_VERSION pymongo==$PYMONGO_VERSION (scripts/tools-requirements.txt) into $TOOLS/venv ..."
    rm -f "$PY_STAMP"
    "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$PY_REQS" ||
        die "pip install -r $PY_REQS failed"
    "$TOOLS/venv/bin/python" -c 'import secantus, pymongo' ||
        die "the venv cannot import secantus/pymongo after the install"
    [ -x "$TOOLS/venv/bin/secantusd-py" ] || die "secantusd-py missing from $TOOLS/venv/bin after the install"
    echo "$PY_PINS" >"$PY_STAMP"
fi

# --- python venv: kubernetes-validate (deployment manifests) ----------------
KV_REQS="$REPO/scripts/tools-requirements-deploy.txt"
[ -f "$KV_REQS" ] || die "$KV_REQS is missing"
grep -qx "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION" "$KV_REQS" ||
    die "$KV_REQS does not pin kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
KV_PINS="kubernetes-validate==$KUBERNETES_VALIDATE_VERSION reqs:$(sha256sum "$KV_REQS" | cut -c1-16)"
KV_STAMP="$TOOLS/venv/.mop-stamp-deploy"
if ! want deploy; then
    log "deploy: skipped (SETUP_ONLY=$SETUP_ONLY)"
elif [ -x "$TOOLS/venv/bin/kubernetes-validate" ] && [ "$(cat "$KV_STAMP" 2>/dev/null)" = "$KV_PINS" ]; then
    log "kubernetes-validate up to date ($KUBERNETES_VALIDATE_VERSION)"
else
    log "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION (scripts/tools-requirements-deploy.txt) into $TOOLS/venv ..."
    rm -f "$KV_STAMP"
    "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$KV_REQS" ||
        die "pip install -r $KV_REQS failed"
    [ "$("$TOOLS/venv/bin/kubernetes-validate" --version 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ] ||
        die "kubernetes-validate $KUBERNETES_VALIDATE_VERSION missing from $TOOLS/venv/bin after the install"
    echo "$KV_PINS" >"$KV_STAMP"
fi

# --- pymongo's own test suite (sdist) and its test dependencies ------------
SUITE_REQS="$REPO/scripts/tools-requirements-pymongo-suite.txt"
[ -f "$SUITE_REQS" ] || die "$SUITE_REQS is missing"
SUITE_DIR="$TOOLS/pymongo-suite"
SUITE_SRC="$SUITE_DIR/pymongo-$PYMONGO_VERSION"
SUITE_PINS="pymongo-sdist==$PYMONGO_VERSION reqs:$(sha256sum "$SUITE_REQS" | cut -c1-16)"
# In the venv, so that a re-created venv gets the test dependencies again.
SUITE_STAMP="$TOOLS/venv/.mop-stamp-pymongo-suite"
if ! want suite; then
    log "suite: skipped (SETUP_ONLY=$SETUP_ONLY)"
elif [ -f "$SUITE_SRC/test/test_auth_oidc.py" ] && [ "$(cat "$SUITE_STAMP" 2>/dev/null)" = "$SUITE_PINS" ]; then
    log "pymongo $PYMONGO_VERSION test suite up to date"
else
    log "installing pymongo $PYMONGO_VERSION's test suite (its sdist) into $SUITE_DIR and its test dependencies (scripts/tools-requirements-pymongo-suite.txt) into $TOOLS/venv ..."
    rm -f "$SUITE_STAMP"
    rm -rf "$SUITE_SRC" "$SUITE_DIR/download"
    mkdir -p "$SUITE_DIR/download"
    "$TOOLS/venv/bin/python" -m pip download --quiet --disable-pip-version-check \
        --no-binary :all: --no-deps "pymongo==$PYMONGO_VERSION" -d "$SUITE_DIR/download" ||
        die "pip download of the pymongo $PYMONGO_VERSION sdist failed"
    tar -xzf "$SUITE_DIR/download/pymongo-$PYMONGO_VERSION.tar.gz" -C "$SUITE_DIR" ||
        die "cannot unpack $SUITE_DIR/download/pymongo-$PYMONGO_VERSION.tar.gz"
    rm -rf "$SUITE_DIR/download"
    "$TOOLS/venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$SUITE_REQS" ||
        die "pip install -r $SUITE_REQS failed"
    [ -f "$SUITE_SRC/test/test_auth_oidc.py" ] && [ -f "$SUITE_SRC/test/asynchronous/test_auth_oidc.py" ] ||
        die "the pymongo $PYMONGO_VERSION sdist has no test/test_auth_oidc.py"
    "$TOOLS/venv/bin/python" -c 'import pytest, pytest_asyncio' ||
        die "the venv cannot import pytest/pytest_asyncio after the install"
    echo "$SUITE_PINS" >"$SUITE_STAMP"
fi

# --- npm: node driver, mongosh, mock IdP ------------------------------------
NPM_SRC="$REPO/scripts/tools-npm"
[ -f "$NPM_SRC/package-lock.json" ] || die "$NPM_SRC/package-lock.json is missing"
NPM_PINS="$NPM_PACKAGES lock:$(sha256sum "$NPM_SRC/package-lock.json" | cut -c1-16)"
NPM_STAMP="$TOOLS/npm/.mop-stamp"
if ! want npm; then
    log "npm: skipped (SETUP_ONLY=$SETUP_ONLY)"
elif [ -x "$TOOLS/npm/node_modules/.bin/mongosh" ] && [ "$(cat "$NPM_STAMP" 2>/dev/null)" = "$NPM_PINS" ]; then
    log "npm packages up to date ($NPM_PACKAGES)"
else
    log "installing $NPM_PACKAGES into $TOOLS/npm (npm ci from scripts/tools-npm; about a minute) ..."
    mkdir -p "$TOOLS/npm"
    cp "$NPM_SRC/package.json" "$NPM_SRC/package-lock.json" "$TOOLS/npm/"
    rm -f "$NPM_STAMP"
    npm ci --prefix "$TOOLS/npm" --no-audit --no-fund --loglevel=error ||
        die "npm ci in $TOOLS/npm failed"
    [ -x "$TOOLS/npm/node_modules/.bin/mongosh" ] || die "mongosh missing from $TOOLS/npm after the install"
    [ -f "$TOOLS/npm/node_modules/@mongodb-js/oidc-mock-provider/package.json" ] ||
        die "@mongodb-js/oidc-mock-provider missing from $TOOLS/npm after the install"
    echo "$NPM_PINS" >"$NPM_STAMP"
fi

# --- promtool (alert rules) --------------------------------------------------
# Only promtool is needed, not the server: take it out of Debian's package
# instead of installing the package (which would add a prometheus service
# and a web UI's JavaScript libraries). apt-get download needs no root.
PROMETHEUS_DEB="prometheus"
PROM_DIR="$TOOLS/prometheus"
PROM_STAMP="$PROM_DIR/.mop-stamp"
prom_version="$(apt-cache policy "$PROMETHEUS_DEB" 2>/dev/null | awk '/Candidate:/ { print $2 }')"
if ! want promtool; then
    log "promtool: skipped (SETUP_ONLY=$SETUP_ONLY)"
elif [ -x "$PROM_DIR/promtool" ] && { [ -z "$prom_version" ] || [ "$(cat "$PROM_STAMP" 2>/dev/null)" = "$prom_version" ]; }; then
    log "promtool up to date ($("$PROM_DIR/promtool" --version 2>&1 | head -1))"
else
    if [ -z "$prom_version" ] || [ "$prom_version" = "(none)" ]; then
        [ "$(id -u)" = 0 ] && apt-get update -qq
        prom_version="$(apt-cache policy "$PROMETHEUS_DEB" 2>/dev/null | awk '/Candidate:/ { print $2 }')"
    fi
    [ -n "$prom_version" ] && [ "$prom_version" != "(none)" ] ||
        die "Debian's $PROMETHEUS_DEB package is not known to apt (run apt-get update as root first)"
    log "extracting promtool from Debian's $PROMETHEUS_DEB $prom_version into $PROM_DIR ..."
    rm -rf "$PROM_DIR" && mkdir -p "$PROM_DIR/deb"
    (cd "$PROM_DIR/deb" && apt-get download -qq "$PROMETHEUS_DEB=$prom_version" 2>/dev/null) ||
        die "apt-get download $PROMETHEUS_DEB=$prom_version failed"
    dpkg-deb --fsys-tarfile "$PROM_DIR"/deb/*.deb | tar -x -C "$PROM_DIR/deb" ./usr/bin/promtool ||
        die "cannot extract usr/bin/promtool from the $PROMETHEUS_DEB package"
    mv "$PROM_DIR/deb/usr/bin/promtool" "$PROM_DIR/promtool"
    rm -rf "$PROM_DIR/deb"
    "$PROM_DIR/promtool" --version >/dev/null 2>&1 || die "$PROM_DIR/promtool does not run"
    echo "$prom_version" >"$PROM_STAMP"
fi

# --- haproxy (system package) ----------------------------------------------
haproxy_bin="$(command -v haproxy 2>/dev/null || echo /usr/sbin/haproxy)"
if ! want haproxy; then
    log "haproxy: skipped (SETUP_ONLY=$SETUP_ONLY)"
elif [ -x "$haproxy_bin" ]; then
    log "haproxy present ($("$haproxy_bin" -v 2>/dev/null | head -1))"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing haproxy (apt-get install haproxy) ..."
    apt-get update -qq || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends haproxy >/dev/null ||
        die "apt-get install haproxy failed"
else
    die "haproxy is not installed and this is not a root shell with apt-get; install it (sudo apt-get install haproxy)"
fi

# --- tinyproxy: a real HTTPS forward proxy for the IdP egress tests ---------
if ! want tinyproxy; then
    log "tinyproxy: skipped (SETUP_ONLY=$SETUP_ONLY)"
elif command -v tinyproxy >/dev/null 2>&1; then
    log "tinyproxy present ($(tinyproxy -v 2>&1 | head -n 1))"
elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    log "installing tinyproxy (apt-get) ..."
    # The package lists may be missing on a fresh machine: update once, then retry.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tinyproxy >/dev/null 2>&1 ||
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tinyproxy >/dev/null; } ||
        die "apt-get install tinyproxy failed"
    command -v tinyproxy >/dev/null 2>&1 || die "tinyproxy missing from PATH after the install"
else
    # Everything else installs without root: say so, and let tests/idp_network.rs fail naming it.
    echo "setup-tools: warning: tinyproxy is not installed and this is not a root Debian shell;" \
        "install it (sudo apt-get install -y tinyproxy) or tests/idp_network.rs fails" >&2
fi

log "done. Environment for the test suite:"
echo "export MOP_TOOLS=$TOOLS"

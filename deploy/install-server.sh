#!/usr/bin/env bash
# Install (or upgrade, or roll back) themis-daemon on a Debian/Ubuntu server, as README.md's
# "Install on a server" describes. Run as root from a checkout of this repository:
#
#   deploy/install-server.sh               install this checkout as a new release and switch to it
#   deploy/install-server.sh --rollback    switch back to the release before the current one
#
# Layout: every release is a venv of its own, /opt/themis-daemon/releases/<time>-<version>;
# /opt/themis-daemon/current points at the one in use and is what the systemd unit runs, so an
# upgrade or a rollback is one symlink switch and a restart. Debian's python3 refuses a bare
# `pip install` into the system Python (PEP 668), hence the venv.
#
# Settings (environment): STORAGE (/srv/themis: storage.path of a new config, and the unit's
# ReadOnlyPaths=), PORT (8080), PREFIX (/opt/themis-daemon), CONFIG_DIR (/etc/themis-daemon),
# UNIT_DIR (/etc/systemd/system), PYTHON (python3), ROOT (empty: stage everything below this
# directory instead of /, for packaging and for the test that runs this script).
set -euo pipefail

SRC=$(cd "$(dirname "$0")/.." && pwd)
ROOT=${ROOT:-}
PREFIX=${PREFIX:-/opt/themis-daemon}
CONFIG_DIR=${CONFIG_DIR:-/etc/themis-daemon}
UNIT_DIR=${UNIT_DIR:-/etc/systemd/system}
STORAGE=${STORAGE:-/srv/themis}
PORT=${PORT:-8080}
PYTHON=${PYTHON:-python3}
UNIT=themis-daemon.service

say() { printf '==> %s\n' "$*"; }
die() { printf 'install-server: error: %s\n' "$*" >&2; exit 1; }

if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo $0), or set ROOT to stage the files below a directory"
fi
RELEASES="$ROOT$PREFIX/releases"
CURRENT="$ROOT$PREFIX/current"

switch_to() {  # atomically: a new (relative) symlink renamed over the old one
    ln -sfn "releases/$1" "$CURRENT.new"
    mv -T "$CURRENT.new" "$CURRENT"
    say "current release: $1"
}

if [ "${1:-}" = "--rollback" ]; then
    now=$(basename "$(readlink "$CURRENT" 2>/dev/null || true)")
    [ -n "$now" ] || die "no current release under $CURRENT"
    previous=$(ls -1 "$RELEASES" | sort | awk -v now="$now" '$0 == now { print prev; exit } { prev = $0 }')
    [ -n "$previous" ] || die "no release before $now in $RELEASES"
    switch_to "$previous"
    say "now restart it: systemctl restart themis-daemon"
    exit 0
fi
[ $# -eq 0 ] || die "unknown argument: $1 (use --rollback, or nothing to install)"

# 1. A venv of its own for this release.
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null \
    || die "$PYTHON cannot create venvs; on Debian/Ubuntu: apt-get install python3-venv"
version=$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$SRC/themis_daemon/__init__.py")
[ -n "$version" ] || die "$SRC is not a themis-daemon checkout"
release="$(date -u +%Y%m%dT%H%M%SZ)-$version"
say "installing themis-daemon $version into $PREFIX/releases/$release"
mkdir -p "$RELEASES"
"$PYTHON" -m venv "$RELEASES/$release"
"$RELEASES/$release/bin/pip" install --quiet "$SRC"
"$RELEASES/$release/bin/themis-daemon" --version

# 2. The configuration, written once: an upgrade keeps the one in place.
install -d -m 0755 "$ROOT$CONFIG_DIR"
if [ ! -e "$ROOT$CONFIG_DIR/config.yaml" ]; then
    say "writing $CONFIG_DIR/config.yaml (storage.path: $STORAGE); see config.yaml in the checkout for every key"
    cat > "$ROOT$CONFIG_DIR/config.yaml" <<EOF
# themis-daemon: every key and its default are in config.yaml of the source tree.
server:
  host: 127.0.0.1
  port: $PORT
storage:
  path: $STORAGE
logging:
  level: info
EOF
    chmod 0644 "$ROOT$CONFIG_DIR/config.yaml"
fi
# API keys: one per line, handed to the service by LoadCredential= (never world-readable).
if [ ! -e "$ROOT$CONFIG_DIR/api_keys" ]; then
    say "writing a new API key to $CONFIG_DIR/api_keys (mode 0600)"
    (umask 077 && "$PYTHON" -c 'import secrets; print(secrets.token_urlsafe(32))' > "$ROOT$CONFIG_DIR/api_keys")
fi

# 3. The new release checks the configuration before it is switched to.
check=(env THEMIS_CONFIG="$ROOT$CONFIG_DIR/config.yaml" CREDENTIALS_DIRECTORY="$ROOT$CONFIG_DIR"
       "$RELEASES/$release/bin/themis-daemon" check-config)
configured=$("$RELEASES/$release/bin/python" -c 'import sys, yaml
doc = yaml.safe_load(open(sys.argv[1])) or {}
print((doc.get("storage") or {}).get("path") or "")' "$ROOT$CONFIG_DIR/config.yaml")
if [ -n "$ROOT" ] && [ -n "$configured" ]; then
    check+=(--storage "$ROOT$configured")  # staged: the store is below ROOT too
fi
if ! "${check[@]}" > /dev/null; then
    rm -rf "${RELEASES:?}/$release"
    die "the configuration is refused (see above); nothing was switched"
fi
say "configuration checked: $CONFIG_DIR/config.yaml"

# 4. Switch, then the unit (its ExecStart runs $PREFIX/current) and, for another storage path,
#    a drop-in that makes that path read-only instead of /srv/themis.
switch_to "$release"
install -d -m 0755 "$ROOT$UNIT_DIR"
sed "s#^ExecStart=/opt/themis-daemon/current/#ExecStart=$PREFIX/current/#" "$SRC/systemd/$UNIT" > "$ROOT$UNIT_DIR/$UNIT"
chmod 0644 "$ROOT$UNIT_DIR/$UNIT"
dropin="$ROOT$UNIT_DIR/$UNIT.d/storage.conf"
storage_path=${configured:-$STORAGE}
if [ "$storage_path" != "/srv/themis" ] && [ "${storage_path#*://}" = "$storage_path" ]; then
    install -d -m 0755 "$(dirname "$dropin")"
    printf '[Service]\n# the storage root (storage.path), read-only for the service\nReadOnlyPaths=\nReadOnlyPaths=-%s\n' \
        "$storage_path" > "$dropin"
    say "storage is $storage_path: ReadOnlyPaths= set in $UNIT_DIR/$UNIT.d/storage.conf"
fi
if ! command -v systemd-analyze > /dev/null; then
    say "systemd-analyze not found: the unit was not verified"
elif [ -z "$ROOT" ]; then
    systemd-analyze verify "$UNIT_DIR/$UNIT"
    say "systemd-analyze verify: $UNIT_DIR/$UNIT is valid"
elif [ -e "$ROOT/usr/lib/systemd/system/sysinit.target" ]; then
    # Staged: ExecStart= and ExecReload= are looked up below ROOT, which needs systemd's units.
    systemd-analyze verify --root="$ROOT" "$UNIT_DIR/$UNIT"
    say "systemd-analyze verify --root=$ROOT: $UNIT_DIR/$UNIT is valid"
else
    say "staged without systemd's own units below $ROOT: the unit was not verified"
fi
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    if systemctl is-active --quiet themis-daemon; then
        systemctl restart themis-daemon
        say "themis-daemon restarted on $release"
    else
        say "start it: systemctl enable --now themis-daemon"
    fi
fi

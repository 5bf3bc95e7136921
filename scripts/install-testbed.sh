#!/usr/bin/env bash
# Installs what the integration tests need: OpenLDAP (slapd + ldap-utils, from Debian, with no
# system instance configured or started), 389 Directory Server (389-ds-base, from Debian; no
# instance is created: the tests write their own and run ns-slapd without systemd), Samba AD DC (samba, samba-ad-dc, samba-ad-provision,
# ldb-tools, openssl, from Debian; no system DC is provisioned, and the samba-ad-dc service the
# package may start is stopped) and Synapse with the synapse-ldap3 login module (from PyPI, into
# .testbed/venv in the repo).
# Idempotent, and fast (well under a second) when everything is already there.
#
# Usage: scripts/install-testbed.sh
# Env:   SYNAPSE_VERSION  Synapse version to install (default: the one the tests were last run
#                         against; "latest" for the newest on PyPI). A venv with another version
#                         is rebuilt.
#        SYNAPSE_LDAP3_VERSION  matrix-synapse-ldap3 version (default: the one the login tests
#                         were last run against)
#        PYTHON           interpreter for the venv (default: /usr/bin/python3, else python3)
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$repo/.testbed/venv"
start=$SECONDS

say() { echo "install-testbed: $*"; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

# apt-get update only when the package lists do not know the packages, or when an install from
# stale lists fails (a 404 on a superseded .deb).
apt_install() {
    export DEBIAN_FRONTEND=noninteractive
    local pkg
    for pkg in "$@"; do
        if ! apt-cache show "$pkg" >/dev/null 2>&1; then
            say "apt lists do not know $pkg: apt-get update"
            as_root apt-get update -q
            break
        fi
    done
    if ! as_root apt-get install -y -q --no-install-recommends "$@"; then
        say "apt-get install failed; apt-get update and trying again"
        as_root apt-get update -q
        as_root apt-get install -y -q --no-install-recommends "$@"
    fi
}

# --- OpenLDAP ---------------------------------------------------------------------------------
need_apt=()
command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ] || need_apt+=(slapd)
command -v ldapadd >/dev/null 2>&1 || need_apt+=(ldap-utils)
command -v setpriv >/dev/null 2>&1 || need_apt+=(util-linux)
# systemd-analyze, to verify the service unit (no system instance is started).
command -v systemd-analyze >/dev/null 2>&1 || need_apt+=(systemd)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing ${need_apt[*]} from Debian (no system slapd instance)"
    echo "slapd slapd/no_configuration boolean true" | as_root debconf-set-selections
    apt_install "${need_apt[@]}"
else
    say "slapd and ldap-utils already installed"
fi
for m in back_mdb syncprov; do
    [ -e "/usr/lib/ldap/$m.so" ] || [ -e "/usr/lib/ldap/$m.la" ] \
        || { say "missing slapd module /usr/lib/ldap/$m"; exit 1; }
done
say "$(/usr/sbin/slapd -VV 2>&1 | sed -n 's/^.*\(slapd [0-9][^ ]*\).*$/\1/p' | head -n1)"

# --- 389 Directory Server --------------------------------------------------------------------
# The package creates no instance (that is dscreate's job, which the tests do not use: they
# write the instance's dse.ldif from the package's template and run ns-slapd in the foreground).
if [ -x /usr/sbin/ns-slapd ] && [ -e /usr/share/dirsrv/data/template-dse.ldif ]; then
    say "389-ds-base already installed"
else
    say "installing 389-ds-base from Debian (no instance is created)"
    ds_start=$SECONDS
    apt_install 389-ds-base
    say "389-ds-base installed in $((SECONDS - ds_start)) s"
fi
[ -e /usr/lib/x86_64-linux-gnu/dirsrv/plugins/libcontentsync-plugin.so ] \
    || ls /usr/lib/*/dirsrv/plugins/libcontentsync-plugin.so >/dev/null 2>&1 \
    || { say "389-ds-base has no content sync plugin"; exit 1; }
ds_version="$(/usr/sbin/ns-slapd -v 2>&1 || true)"
say "$(printf '%s\n' "$ds_version" | sed -n 's/.*\(389-Directory\/[^ ]*\).*/\1/p' | head -n1)"

# --- Samba AD DC -----------------------------------------------------------------------------
# The tests provision their own domain (tests/common/samba.rs); the package's own service is not
# used. It needs the fixed ports 389, 636 and 3268, so a system DC must not hold them.
need_apt=()
command -v samba >/dev/null 2>&1 || [ -x /usr/sbin/samba ] || need_apt+=(samba)
[ -e /usr/share/samba/setup/provision.ldif ] || need_apt+=(samba-ad-provision)
dpkg-query -W -f='${Status}' samba-ad-dc 2>/dev/null | grep -q 'ok installed' || need_apt+=(samba-ad-dc)
command -v ldbsearch >/dev/null 2>&1 || need_apt+=(ldb-tools)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
if [ ${#need_apt[@]} -gt 0 ]; then
    say "installing ${need_apt[*]} from Debian"
    samba_start=$SECONDS
    apt_install "${need_apt[@]}"
    # Debian may enable a system DC unit; the tests need its ports.
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now samba-ad-dc smbd nmbd winbind >/dev/null 2>&1 || true
    fi
    say "Samba installed in $((SECONDS - samba_start)) s"
else
    say "Samba AD DC packages already installed"
fi
say "$(/usr/sbin/samba -V 2>/dev/null | head -n1)"

# --- Synapse ----------------------------------------------------------------------------------
python="${PYTHON:-}"
if [ -z "$python" ]; then
    if [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import venv, ensurepip' 2>/dev/null; then
        python=/usr/bin/python3
    else
        python=python3
    fi
fi
SYNAPSE_VERSION="${SYNAPSE_VERSION:-1.163.2}"
[ "$SYNAPSE_VERSION" = latest ] && SYNAPSE_VERSION=""
spec="matrix-synapse${SYNAPSE_VERSION:+==$SYNAPSE_VERSION}"
synapse_version() {
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("matrix-synapse"))' 2>/dev/null
}
have="$( [ -x "$venv/bin/python" ] && synapse_version || true)"
if [ -n "$have" ] && { [ -z "${SYNAPSE_VERSION:-}" ] || [ "$have" = "$SYNAPSE_VERSION" ]; }; then
    say "Synapse $have already in $venv"
else
    if ! "$python" -c 'import venv, ensurepip' 2>/dev/null; then
        say "installing python3-venv from Debian"
        apt_install python3-venv
        python=/usr/bin/python3
    fi
    say "creating $venv with $python and installing $spec from PyPI"
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$spec"
    "$venv/bin/python" -c 'import synapse.app.homeserver' \
        || { say "Synapse installed but does not import"; exit 1; }
    say "installed Synapse $(synapse_version)"
fi

# The login module most Synapse + LDAP deployments use: tests/login.rs and the demo configure it.
SYNAPSE_LDAP3_VERSION="${SYNAPSE_LDAP3_VERSION:-0.4.0}"
ldap3_version() {
    "$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("matrix-synapse-ldap3"))' 2>/dev/null
}
have="$(ldap3_version || true)"
if [ "$have" = "$SYNAPSE_LDAP3_VERSION" ]; then
    say "matrix-synapse-ldap3 $have already in $venv"
else
    say "installing matrix-synapse-ldap3==$SYNAPSE_LDAP3_VERSION from PyPI"
    "$venv/bin/pip" install --quiet --disable-pip-version-check \
        "matrix-synapse-ldap3==$SYNAPSE_LDAP3_VERSION"
    "$venv/bin/python" -c 'import ldap_auth_provider' \
        || { say "matrix-synapse-ldap3 installed but does not import"; exit 1; }
fi
say "done in $((SECONDS - start)) s"

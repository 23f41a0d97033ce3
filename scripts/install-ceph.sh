#!/usr/bin/env bash
# Install Ceph RGW from Debian (ceph-mon, ceph-osd, radosgw): the second real store of the test suite
# (tests start a one-node cluster on loopback, broker/dev/rgw.py) and `make run STORE=rgw`.
# Idempotent: safe to run again. Nothing is started or enabled here; the packages' services stay off.
set -euo pipefail

PACKAGES=(ceph-mon ceph-osd radosgw)
PROGRAMS=(ceph-mon ceph-osd radosgw radosgw-admin ceph ceph-authtool monmaptool)

missing=()
for program in "${PROGRAMS[@]}"; do
    command -v "$program" >/dev/null 2>&1 || missing+=("$program")
done
if [ ${#missing[@]} -eq 0 ]; then
    echo "install-ceph: Ceph RGW already installed ($(ceph-mon --version 2>/dev/null | cut -d' ' -f1-3)), nothing to do"
    exit 0
fi

echo "install-ceph: ${missing[*]} missing (a minute or two)"
. "$(dirname "$0")/apt.sh"
apt_install install-ceph "${missing[*]} missing and apt-get is not available; install Ceph's ${PACKAGES[*]} packages (version 16.2 or later) with this system's package manager: the store tests run on Ceph RGW as well as SeaweedFS and fail without it" \
    --no-install-recommends -- "${PACKAGES[@]}"

for program in "${PROGRAMS[@]}"; do
    if ! command -v "$program" >/dev/null 2>&1; then
        echo "install-ceph: apt-get finished but $program is still missing" >&2
        exit 1
    fi
done
echo "install-ceph: installed $(ceph-mon --version 2>/dev/null | cut -d' ' -f1-3)"

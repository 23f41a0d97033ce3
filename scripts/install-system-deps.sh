#!/usr/bin/env bash
# Install the system packages the browser tests need (Debian's Chromium). Idempotent: safe to run again.
# Playwright drives this Chromium through executable_path=/usr/bin/chromium; never run `playwright install`.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install-system-deps: chromium already installed at $CHROMIUM, nothing to do"
    exit 0
fi

if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-system-deps: $CHROMIUM is missing and apt-get is not available;" \
         "install Chromium with this system's package manager" >&2
    exit 1
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then
        SUDO="sudo"
    else
        echo "install-system-deps: installing chromium needs root; run this script as root" >&2
        exit 1
    fi
fi

export DEBIAN_FRONTEND=noninteractive
echo "install-system-deps: $CHROMIUM is missing; running apt-get update"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
echo "install-system-deps: running apt-get install -y chromium (takes about a minute)"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium

if [ ! -x "$CHROMIUM" ]; then
    echo "install-system-deps: apt-get finished but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "install-system-deps: installed $("$CHROMIUM" --version 2>/dev/null | head -n 1)"

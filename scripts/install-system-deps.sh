#!/usr/bin/env bash
# Install the system packages the browser tests need (Debian's Chromium). Idempotent: safe to run again.
# Playwright drives this Chromium through executable_path=/usr/bin/chromium; never run `playwright install`.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ -x "$CHROMIUM" ]; then
    echo "install-system-deps: chromium already installed at $CHROMIUM, nothing to do"
    exit 0
fi

echo "install-system-deps: $CHROMIUM is missing (about a minute)"
. "$(dirname "$0")/apt.sh"
apt_install install-system-deps "$CHROMIUM is missing and apt-get is not available; install Chromium with this system's package manager" \
    -- chromium

if [ ! -x "$CHROMIUM" ]; then
    echo "install-system-deps: apt-get finished but $CHROMIUM is still missing" >&2
    exit 1
fi
echo "install-system-deps: installed $("$CHROMIUM" --version 2>/dev/null | head -n 1)"

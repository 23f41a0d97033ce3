#!/usr/bin/env bash
# Install Node.js and npm from Debian when they are missing (dynalite, the DynamoDB-API server the
# ledger tests start, comes from the npm registry). Idempotent: safe to run again.
set -euo pipefail

if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install-node: node and npm are missing and apt-get is not available; install Node.js (18+)" \
         "with this system's package manager" >&2
    exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "install-node: installing nodejs and npm needs root; run this as root" >&2
        exit 1
    fi
fi
echo "install-node: node/npm missing; running apt-get install -y nodejs npm"
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -q
$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -q nodejs npm
echo "install-node: installed node $(node --version), npm $(npm --version)"

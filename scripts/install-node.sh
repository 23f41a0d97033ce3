#!/usr/bin/env bash
# Install Node.js and npm from Debian when they are missing (dynalite, the DynamoDB-API server the
# ledger tests start, comes from the npm registry). Idempotent: safe to run again.
set -euo pipefail

if command -v npm >/dev/null 2>&1 && command -v node >/dev/null 2>&1; then
    exit 0
fi
echo "install-node: node/npm missing"
. "$(dirname "$0")/apt.sh"
apt_install install-node "node and npm are missing and apt-get is not available; install Node.js (18+) with this system's package manager" \
    -- nodejs npm
echo "install-node: installed node $(node --version), npm $(npm --version)"

#!/usr/bin/env bash
# Refresh the vendored browser bundles from the npm registry.
# Usage: bash broker/web/vendor/refresh.sh [FINE_UPLOADER_VERSION] [UPPY_VERSION]
# Then update the versions and checksums in broker/web/vendor/README.md (the script prints them).
set -euo pipefail

FINE_UPLOADER_VERSION="${1:-5.16.2}"
UPPY_VERSION="${2:-6.0.1}"
VENDOR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

echo "packing fine-uploader@$FINE_UPLOADER_VERSION and uppy@$UPPY_VERSION in $WORK"
(cd "$WORK" && npm pack --silent "fine-uploader@$FINE_UPLOADER_VERSION" "uppy@$UPPY_VERSION" >/dev/null)
mkdir -p "$WORK/fu" "$WORK/uppy"
tar -xzf "$WORK/fine-uploader-$FINE_UPLOADER_VERSION.tgz" -C "$WORK/fu"
tar -xzf "$WORK/uppy-$UPPY_VERSION.tgz" -C "$WORK/uppy"

fu_src="$WORK/fu/package"
fu_dst="$VENDOR/fine-uploader"
rm -rf "$fu_dst" && mkdir -p "$fu_dst/templates"
cp "$fu_src/s3.fine-uploader/s3.fine-uploader.min.js" "$fu_dst/"
cp "$fu_src/s3.fine-uploader/fine-uploader-new.min.css" "$fu_dst/"
# the images that stylesheet refers to
cp "$fu_src/s3.fine-uploader/edit.gif" "$fu_src/s3.fine-uploader/loading.gif" \
   "$fu_src/s3.fine-uploader/processing.gif" "$fu_dst/"
cp "$fu_src/s3.fine-uploader/templates/default.html" "$fu_dst/templates/"
cp "$fu_src/LICENSE" "$fu_dst/LICENSE"

uppy_src="$WORK/uppy/package"
uppy_dst="$VENDOR/uppy"
rm -rf "$uppy_dst" && mkdir -p "$uppy_dst"
cp "$uppy_src/dist/uppy.min.js" "$uppy_src/dist/uppy.min.css" "$uppy_dst/"
cp "$uppy_src/LICENSE" "$uppy_dst/LICENSE"

echo "vendored: fine-uploader $(node -p "require('$fu_src/package.json').version"), uppy $(node -p "require('$uppy_src/package.json').version")"
(cd "$VENDOR" && find fine-uploader uppy -type f | sort | xargs sha256sum)

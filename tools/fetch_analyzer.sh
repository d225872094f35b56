#!/usr/bin/env bash
# Fetches QEMU 7.2's scripts/analyze-migration.py from Debian's source archive
# (the qemu_7.2+dfsg orig tarball, checked by its SHA-256) into .cache/qemu-7.2/,
# so tests/e2e/analyzer_test.ts can check ferry's file: streams with QEMU's own
# analyzer. Nothing of it is committed. A re-run reuses the cached copy.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=.cache/qemu-7.2/analyze-migration.py
[ -f "$OUT" ] && { echo "analyzer: cached $OUT"; exit 0; }
URL="http://deb.debian.org/debian/pool/main/q/qemu/qemu_7.2+dfsg.orig.tar.xz"
SHA256=91aca71520040edc40b8d437aa3004dae614f58e286cf653ee8996c07af2962f
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -fsSL --retry 2 -o "$tmp/qemu.tar.xz" "$URL"
echo "$SHA256  $tmp/qemu.tar.xz" | sha256sum -c --quiet
tar -xJf "$tmp/qemu.tar.xz" -C "$tmp" qemu-7.2.0/scripts/analyze-migration.py
mkdir -p "$(dirname "$OUT")"
mv "$tmp/qemu-7.2.0/scripts/analyze-migration.py" "$OUT"
echo "analyzer: fetched $OUT"

#!/usr/bin/env bash
# Installs the pinned JS reference packages into a cache dir outside the repo:
# $DAZAAR_JS_DIR, default ~/.cache/dazaar-js. Idempotent. The whole tree is pinned by
# tests/js/package-lock.json (every package's version and integrity hash, `npm ci`), so
# the reference cannot drift under a new transitive release. To change a pin: edit
# package.json, run `npm install` in a scratch copy, and commit the new lock file.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${DAZAAR_JS_DIR:-$HOME/.cache/dazaar-js}"
mkdir -p "$dest"
if [ -f "$dest/package.json" ] && cmp -s "$here/package.json" "$dest/package.json" \
  && [ -f "$dest/.installed-lock.json" ] && cmp -s "$here/package-lock.json" "$dest/.installed-lock.json" \
  && [ -d "$dest/node_modules/hypercore" ]; then
  echo "JS reference already installed in $dest"
  exit 0
fi
rm -f "$dest/.installed-lock.json"
cp "$here/package.json" "$dest/package.json"
cp "$here/package-lock.json" "$dest/package-lock.json"
cd "$dest"
npm ci --no-audit --no-fund --loglevel=error
# noise-protocol 3.0.2 crashes hypercore-protocol@8 on load: make sure the override held.
node -e "const v=require('noise-protocol/package.json').version; if(v!=='3.0.1'){console.error('noise-protocol is '+v+', expected 3.0.1');process.exit(1)}"
cp "$here/package-lock.json" "$dest/.installed-lock.json"
echo "JS reference installed in $dest"

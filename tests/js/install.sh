#!/usr/bin/env bash
# Installs the pinned JS reference packages (tests/js/package.json) into a cache dir
# outside the repo: $DAZAAR_JS_DIR, default ~/.cache/dazaar-js. Idempotent.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
dest="${DAZAAR_JS_DIR:-$HOME/.cache/dazaar-js}"
mkdir -p "$dest"
if [ -f "$dest/package.json" ] && cmp -s "$here/package.json" "$dest/package.json" && [ -d "$dest/node_modules/hypercore" ]; then
  echo "JS reference already installed in $dest"
  exit 0
fi
cp "$here/package.json" "$dest/package.json"
cd "$dest"
npm install --no-audit --no-fund --loglevel=error
# noise-protocol 3.0.2 crashes hypercore-protocol@8 on load: make sure the override held.
node -e "const v=require('noise-protocol/package.json').version; if(v!=='3.0.1'){console.error('noise-protocol is '+v+', expected 3.0.1');process.exit(1)}"
echo "JS reference installed in $dest"

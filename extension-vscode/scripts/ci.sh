#!/usr/bin/env bash
# What CI runs for the VS Code extension (called by .ci/run after the Python install, which made
# <repo>/.venv with nextls in it): install, typecheck + lint + unit tests + .vsix + manifest check,
# then the end-to-end test in a real VS Code (code-server + headless Chromium, see scripts/e2e.sh).
# Measured on 2 cores: cold (no cache, no node_modules, Chromium installed) about 5.5 minutes; warm about 2.5.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "== $(date -u +%FT%TZ) extension-vscode: npm ci"
npm ci --no-audit --no-fund --loglevel=error
echo "== $(date -u +%FT%TZ) extension-vscode: npm run check (typecheck, lint, unit tests, .vsix, manifest)"
npm run check
echo "== $(date -u +%FT%TZ) extension-vscode: end-to-end (scripts/e2e.sh)"
bash scripts/e2e.sh

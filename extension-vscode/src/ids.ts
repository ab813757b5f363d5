/** Command ids (no `vscode` import, so tests and the e2e driver can use them). */

export const CLIENT_COMMANDS = {
  trace: 'nextls.traceAtCursor',
  explain: 'nextls.explainAtCursor',
  fix: 'nextls.fixAtCursor',
  restart: 'nextls.restartServer',
  showOutput: 'nextls.showOutput',
  installServer: 'nextls.installServer',
  rebuildForGpu: 'nextls.rebuildForGpu',
  showRationale: 'nextls.client.showRationale',
} as const;

/** Server command ids (server/nextls/lsp/commands.py). */
export const SERVER_COMMANDS = {
  trace: 'nextls.traceFunction',
  explain: 'nextls.explainFunction',
  fix: 'nextls.fixFunction',
  runTests: 'nextls.runTests',
  clearCache: 'nextls.clearCache',
  showRationale: 'nextls.showRationale',
  showMessage: 'nextls.showMessage',
} as const;

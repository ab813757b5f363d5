import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { beforeEach, describe, test } from 'node:test';
import type * as Commands from '../src/commands';
import { Position, Uri, createVscodeStub, installVscodeStub } from './vscode-stub';

const { vscode, recorded, state } = createVscodeStub();
installVscodeStub(vscode);
// loaded after the stub is in place
// eslint-disable-next-line @typescript-eslint/no-require-imports
const commands = require('../src/commands') as typeof Commands;

const ROOT = path.resolve(__dirname, '..', '..');
const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));

interface Call {
  command: string;
  args: unknown[];
}

function host(result: unknown = 'def f(x):  # (0) x=1\n', fail?: Error) {
  const calls: Call[] = [];
  const shown: unknown[][] = [];
  const errors: string[] = [];
  const events: string[] = [];
  return {
    calls,
    shown,
    errors,
    events,
    host: {
      executeOnServer: async (command: string, args: unknown[]) => {
        calls.push({ command, args });
        if (fail) {
          throw fail;
        }
        return result;
      },
      restart: async () => void events.push('restart'),
      installServer: async () => void events.push('install'),
      rebuildForGpu: async () => void events.push('gpu'),
      showOutput: () => void events.push('output'),
      showResult: async (kind: string, uri: unknown, value: unknown) => void shown.push([kind, String(uri), value]),
      showRationale: async (arg: unknown) => void events.push(`rationale:${JSON.stringify(arg)}`),
      reportError: (message: string) => void errors.push(message),
    },
  };
}

function pythonEditor(line: number, character: number, languageId = 'python') {
  state.activeTextEditor = {
    document: { uri: Uri.file('/ws/remove_occ.py'), languageId, getText: () => '' },
    selection: { active: new Position(line, character) },
  };
}

describe('command wiring', () => {
  let disposables: { dispose(): void }[] = [];
  beforeEach(() => {
    for (const d of disposables) d.dispose();
    disposables = [];
    recorded.warnings.length = 0;
    state.activeTextEditor = undefined;
  });

  test('every contributed command is registered, and no server command id is taken', () => {
    const h = host();
    disposables = commands.registerCommands(h.host as never);
    const contributed: string[] = manifest.contributes.commands.map((c: { command: string }) => c.command);
    for (const id of contributed) {
      assert.ok(recorded.commands.has(id), `${id} registered`);
    }
    for (const id of Object.values(commands.SERVER_COMMANDS)) {
      assert.equal(recorded.commands.has(id), false, `${id} is left to vscode-languageclient`);
    }
    assert.deepEqual(
      [...recorded.commands.keys()].sort(),
      [...contributed, commands.CLIENT_COMMANDS.showRationale].sort(),
      'nothing else registered',
    );
  });

  for (const [kind, serverId] of [
    ['trace', 'nextls.traceFunction'],
    ['explain', 'nextls.explainFunction'],
    ['fix', 'nextls.fixFunction'],
  ] as const) {
    test(`${kind} at the cursor runs ${serverId} with the document URI and the position`, async () => {
      const h = host();
      disposables = commands.registerCommands(h.host as never);
      pythonEditor(4, 8);
      await vscode.commands.executeCommand(commands.CLIENT_COMMANDS[kind]);
      const target = { uri: 'file:///ws/remove_occ.py', line: 4, position: { line: 4, character: 8 }, ...(kind === 'fix' ? { apply: true } : {}) };
      assert.deepEqual(h.calls, [{ command: serverId, args: [target] }]);
      assert.deepEqual(h.shown, [[kind, 'file:///ws/remove_occ.py', 'def f(x):  # (0) x=1\n']]);
    });
  }

  test('an explicit (uri, position) wins over the active editor', async () => {
    const h = host();
    disposables = commands.registerCommands(h.host as never);
    pythonEditor(0, 0, 'markdown');
    await vscode.commands.executeCommand(commands.CLIENT_COMMANDS.fix, Uri.file('/ws/shop/pricing.py'), new Position(9, 2));
    assert.deepEqual(h.calls[0].args, [{ uri: 'file:///ws/shop/pricing.py', line: 9, position: { line: 9, character: 2 }, apply: true }]);
  });

  test('no editor, or not Python: a warning and no server call', async () => {
    const h = host();
    disposables = commands.registerCommands(h.host as never);
    await vscode.commands.executeCommand(commands.CLIENT_COMMANDS.trace);
    pythonEditor(1, 1, 'markdown');
    await vscode.commands.executeCommand(commands.CLIENT_COMMANDS.explain);
    assert.equal(h.calls.length, 0);
    assert.equal(recorded.warnings.length, 2);
  });

  test('a server error is reported, not thrown', async () => {
    const h = host(undefined, new Error('no function at 3:0'));
    disposables = commands.registerCommands(h.host as never);
    pythonEditor(3, 0);
    await vscode.commands.executeCommand(commands.CLIENT_COMMANDS.trace);
    assert.deepEqual(h.errors, ['Trace failed: no function at 3:0']);
    assert.equal(h.shown.length, 0);
  });

  test('restart, install, GPU rebuild, show output and show rationale reach the host', async () => {
    const h = host();
    disposables = commands.registerCommands(h.host as never);
    await vscode.commands.executeCommand(commands.CLIENT_COMMANDS.restart);
    await vscode.commands.executeCommand(commands.CLIENT_COMMANDS.installServer);
    await vscode.commands.executeCommand(commands.CLIENT_COMMANDS.rebuildForGpu);
    await vscode.commands.executeCommand(commands.CLIENT_COMMANDS.showOutput);
    await vscode.commands.executeCommand(commands.CLIENT_COMMANDS.showRationale, { info: { rationale: 'r' } });
    assert.deepEqual(h.events, ['restart', 'install', 'gpu', 'output', 'rationale:{"info":{"rationale":"r"}}']);
  });
});

describe('manifest', () => {
  test('activates on Python files only: no start-up activation', () => {
    assert.deepEqual(manifest.activationEvents, ['onLanguage:python']);
  });

  test('trace / explain / fix are in the palette and the editor context menu for Python', () => {
    const cursorIds = [commands.CLIENT_COMMANDS.trace, commands.CLIENT_COMMANDS.explain, commands.CLIENT_COMMANDS.fix];
    const context = manifest.contributes.menus['editor/context'] as { command: string; when: string }[];
    assert.deepEqual(context.map((m) => m.command), cursorIds);
    for (const m of context) {
      assert.equal(m.when, 'editorLangId == python');
    }
    const contributed = manifest.contributes.commands.map((c: { command: string }) => c.command);
    for (const id of [...cursorIds, commands.CLIENT_COMMANDS.restart, commands.CLIENT_COMMANDS.showOutput]) {
      assert.ok(contributed.includes(id), id);
    }
  });

  test('engines.vscode and @types/vscode satisfy vscode-languageclient', () => {
    const lc = JSON.parse(fs.readFileSync(path.join(ROOT, 'node_modules', 'vscode-languageclient', 'package.json'), 'utf8'));
    const min = (range: string) => (/(\d+)\.(\d+)/.exec(range) ?? []).slice(1).map(Number);
    const [lcMajor, lcMinor] = min(lc.engines.vscode);
    const [major, minor] = min(manifest.engines.vscode);
    assert.ok(major === lcMajor && minor >= lcMinor, `engines.vscode ${manifest.engines.vscode} >= ${lc.engines.vscode}`);
    const types = JSON.parse(fs.readFileSync(path.join(ROOT, 'node_modules', '@types', 'vscode', 'package.json'), 'utf8'));
    const [tMajor, tMinor] = min(types.version);
    assert.ok(tMajor === major && tMinor <= minor, `@types/vscode ${types.version} <= engines.vscode ${manifest.engines.vscode}`);
  });
});

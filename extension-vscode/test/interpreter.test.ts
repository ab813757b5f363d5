import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import {
  DEFAULT_PYTHON,
  type PythonExtensionApi,
  type Runner,
  describe as describeInterpreter,
  probeServer,
  resolveInterpreter,
  serverCommand,
} from '../src/interpreter';

const REPO_PYTHON = path.resolve(__dirname, '..', '..', '..', '.venv', 'bin', 'python');

const newApi = (active: string | undefined, resolved?: string): PythonExtensionApi => ({
  environments: {
    getActiveEnvironmentPath: () => (active === undefined ? undefined : { id: active, path: active }),
    resolveEnvironment: async () => (resolved === undefined ? undefined : { executable: { uri: { fsPath: resolved } } }),
  },
});

describe('interpreter resolution', () => {
  test('the nextls.serverPython setting wins, without asking the Python extension', async () => {
    let asked = false;
    const python = await resolveInterpreter({
      setting: '/opt/venv/bin/python',
      pythonExtension: async () => {
        asked = true;
        return newApi('/other/python');
      },
    });
    assert.deepEqual(python, { command: '/opt/venv/bin/python', prefixArgs: [], source: 'setting' });
    assert.equal(asked, false);
  });

  test("else the Python extension's active environment, resolved to its executable", async () => {
    const python = await resolveInterpreter({ setting: '  ', pythonExtension: async () => newApi('/envs/conda-env', '/envs/conda-env/bin/python') });
    assert.deepEqual(python, { command: '/envs/conda-env/bin/python', prefixArgs: [], source: 'python-extension' });
  });

  test("the extension's private venv (when chosen and made) comes after the setting, before the Python extension", async () => {
    const api = async () => newApi('/envs/other/bin/python');
    const venv = '/storage/venv/bin/python';
    assert.equal((await resolveInterpreter({ setting: '/mine/python', privateVenv: venv, pythonExtension: api })).source, 'setting');
    assert.deepEqual(await resolveInterpreter({ setting: '', privateVenv: venv, pythonExtension: api }), { command: venv, prefixArgs: [], source: 'private-venv' });
    assert.equal(describeInterpreter({ command: venv, prefixArgs: [], source: 'private-venv' }), `${venv} (the extension's private venv)`);
  });

  test('the active path itself when the environment does not resolve', async () => {
    const python = await resolveInterpreter({ setting: '', pythonExtension: async () => newApi('/ws/.venv/bin/python') });
    assert.equal(python.command, '/ws/.venv/bin/python');
    assert.equal(python.source, 'python-extension');
  });

  test("the legacy API's execution details keep their prefix arguments", async () => {
    const api: PythonExtensionApi = { settings: { getExecutionDetails: () => ({ execCommand: ['conda', 'run', '-n', 'ml', 'python'] }) } };
    const python = await resolveInterpreter({ setting: '', pythonExtension: async () => api });
    assert.deepEqual(python, { command: 'conda', prefixArgs: ['run', '-n', 'ml', 'python'], source: 'python-extension' });
    assert.deepEqual(serverCommand(python).args, ['run', '-n', 'ml', 'python', '-m', 'nextls', 'serve', '--stdio']);
  });

  test('else python3: no Python extension, no interpreter selected, or its API failing', async () => {
    const logs: string[] = [];
    const log = (m: string) => logs.push(m);
    assert.equal((await resolveInterpreter({ setting: '' })).command, DEFAULT_PYTHON);
    assert.equal((await resolveInterpreter({ setting: '', pythonExtension: async () => undefined, log })).source, 'default');
    assert.equal((await resolveInterpreter({ setting: '', pythonExtension: async () => newApi(undefined), log })).source, 'default');
    const failing = await resolveInterpreter({
      setting: '',
      pythonExtension: async () => {
        throw new Error('activation failed');
      },
      log,
    });
    assert.deepEqual(failing, { command: 'python3', prefixArgs: [], source: 'default' });
    assert.equal(logs.length, 2);
    assert.match(logs[1], /activation failed/);
  });

  test('the server command line is <python> -m nextls serve --stdio', () => {
    assert.deepEqual(serverCommand({ command: '/v/bin/python', prefixArgs: [], source: 'setting' }), {
      command: '/v/bin/python',
      args: ['-m', 'nextls', 'serve', '--stdio'],
    });
    assert.equal(describeInterpreter({ command: 'python3', prefixArgs: [], source: 'default' }), 'python3 (default)');
  });
});

describe('probing the server package', () => {
  const py = { command: 'python3', prefixArgs: [], source: 'default' as const };
  const fake = (result: Awaited<ReturnType<Runner>>): Runner => async () => result;

  test('ok with the version and where pip installed it from', async () => {
    const stdout = JSON.stringify({ version: '0.1.0', origin: { url: 'file:///x/nextls-0.1.0-py3-none-any.whl' } });
    assert.deepEqual(await probeServer(py, fake({ code: 0, stdout, stderr: '' })), {
      ok: true,
      version: '0.1.0',
      origin: { url: 'file:///x/nextls-0.1.0-py3-none-any.whl' },
    });
  });
  test('a missing interpreter', async () => {
    const result = await probeServer(py, fake({ code: null, stdout: '', stderr: '', error: { code: 'ENOENT', message: 'spawn python3 ENOENT' } }));
    assert.equal(result.ok === false && result.reason, 'no-python');
  });
  test('a missing package', async () => {
    const stderr = "Traceback (most recent call last):\n  File \"<string>\", line 1\nModuleNotFoundError: No module named 'nextls'\n";
    const result = await probeServer(py, fake({ code: 1, stdout: '', stderr, error: { code: 1, message: 'exit 1' } }));
    assert.equal(result.ok === false && result.reason, 'no-package');
  });
  test('any other failure keeps its message', async () => {
    const result = await probeServer(py, fake({ code: 1, stdout: '', stderr: 'ImportError: libllama.so: cannot open', error: { code: 1, message: '' } }));
    assert.deepEqual(result, { ok: false, reason: 'error', detail: 'ImportError: libllama.so: cannot open' });
  });

  test('real processes: a missing executable, and a Python without nextls', async () => {
    const missing = await probeServer({ command: path.join(os.tmpdir(), 'no-such-python-here'), prefixArgs: [], source: 'setting' });
    assert.equal(missing.ok === false && missing.reason, 'no-python');
    // isolated, without site-packages: nextls cannot be imported
    const isolated = await probeServer({ command: 'python3', prefixArgs: ['-I', '-S'], source: 'setting' });
    assert.equal(isolated.ok === false && isolated.reason, 'no-package');
  });

  test("a real server: the repository's editable install is recorded as such", { skip: !fs.existsSync(REPO_PYTHON) && 'no <repo>/.venv' }, async () => {
    const result = await probeServer({ command: REPO_PYTHON, prefixArgs: [], source: 'setting' });
    assert.ok(result.ok, JSON.stringify(result));
    assert.equal(result.ok && result.origin?.dir_info?.editable, true);
  });
});

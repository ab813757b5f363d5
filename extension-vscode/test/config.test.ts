import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import { SERVER_COMMANDS } from '../src/ids';
import {
  CLIENT_ONLY_KEYS,
  DEFAULTS,
  SCHEMA,
  SECTION,
  SERVER_KEYS,
  classifyChange,
  configurationItem,
  expandPath,
  objectReader,
  toServerConfiguration,
} from '../src/config';

const ROOT = path.resolve(__dirname, '..', '..');
const REPO = path.resolve(ROOT, '..');
const manifest = JSON.parse(fs.readFileSync(path.join(ROOT, 'package.json'), 'utf8'));
const properties: Record<string, Record<string, unknown>> = manifest.contributes.configuration.properties;

describe('settings -> server configuration', () => {
  test('nothing set gives every server key with its default', () => {
    const config = toServerConfiguration(() => undefined);
    assert.deepEqual(config, DEFAULTS);
    assert.deepEqual(Object.keys(config).sort(), [...SERVER_KEYS].sort());
  });

  test('each setting maps 1:1 onto the key of the same name', () => {
    const values = {
      modelPath: '/m/model.gguf',
      loraPath: '/m/lora.gguf',
      k: 8,
      temperature: 0.2,
      topP: 0.5,
      maxTokens: 256,
      gpuLayers: 20,
      threads: 2,
      contextSize: 2048,
      seed: 7,
      stopAtFirstVerified: false,
      search: false,
      searchBudget: 5,
      python: '/usr/bin/python3.12',
      testDiscovery: 'pytest',
      testTimeout: 2.5,
      maxTestProcesses: 2,
      maxTestMemoryMb: 512,
      traceBackend: 'inprocess',
      diagnostics: 'onDemand',
      debounceMs: 50,
      traceFailing: 0,
      inlayHints: false,
      hover: false,
      explainOnHover: false,
      hoverBudgetMs: 1000,
      codeActions: false,
    };
    assert.deepEqual(new Set(Object.keys(values)), new Set(SERVER_KEYS), 'the test covers every key');
    assert.deepEqual(toServerConfiguration(objectReader(values)), values);
  });

  test('client-only settings are not sent', () => {
    const config = toServerConfiguration(objectReader({ serverPython: '/venv/bin/python', k: 2 })) as unknown as Record<string, unknown>;
    for (const key of CLIENT_ONLY_KEYS) {
      assert.equal(key in config, false);
    }
    assert.equal(config.k, 2);
  });

  test('invalid values fall back to the default', () => {
    const config = toServerConfiguration(
      objectReader({
        k: 0,
        temperature: 'hot',
        maxTokens: -5,
        gpuLayers: -2,
        testTimeout: 0,
        diagnostics: 'always',
        traceBackend: 'pdb',
        testDiscovery: 'everything',
        inlayHints: 'yes',
        threads: 0,
        contextSize: 100,
        modelPath: 42,
      }),
    );
    assert.deepEqual(config, DEFAULTS);
  });

  test('whole numbers are truncated, numeric strings accepted, threads may be null', () => {
    const config = toServerConfiguration(objectReader({ k: 3.7, maxTokens: '128', threads: null, testTimeout: '1.5' }));
    assert.equal(config.k, 3);
    assert.equal(config.maxTokens, 128);
    assert.equal(config.threads, null);
    assert.equal(config.testTimeout, 1.5);
    assert.equal(toServerConfiguration(objectReader({ threads: 4 })).threads, 4);
  });

  test('paths expand ~, ${userHome} and ${workspaceFolder}', () => {
    const vars = { home: '/home/u', workspaceFolder: '/ws' };
    assert.equal(expandPath('~/models/a.gguf', vars), path.join('/home/u', 'models/a.gguf'));
    assert.equal(expandPath('${userHome}/a.gguf', vars), '/home/u/a.gguf');
    assert.equal(expandPath('${workspaceFolder}/.venv/bin/python', vars), '/ws/.venv/bin/python');
    assert.equal(expandPath('  ', vars), '');
    const config = toServerConfiguration(objectReader({ modelPath: '${workspaceFolder}/m.gguf', python: '~/py' }), vars);
    assert.equal(config.modelPath, '/ws/m.gguf');
    assert.equal(config.python, path.join('/home/u', 'py'));
  });

  test('serverPython restarts, server keys refresh, others nothing', () => {
    const affects = (changed: string[]) => (section: string) => changed.some((c) => c === section || c.startsWith(section + '.'));
    assert.equal(classifyChange(affects(['nextls.serverPython'])), 'restart');
    assert.equal(classifyChange(affects(['nextls.k'])), 'refresh');
    assert.equal(classifyChange(affects(['nextls.inlayHints'])), 'refresh');
    assert.equal(classifyChange(affects(['python.defaultInterpreterPath'])), 'none');
  });

  test('workspace/configuration items: the section, one key, or not ours', () => {
    const config = toServerConfiguration(objectReader({ k: 9 }));
    assert.equal(configurationItem(SECTION, config), config);
    assert.equal(configurationItem('nextls.k', config), 9);
    assert.equal(configurationItem('nextls.serverPython', config), null);
    assert.equal(configurationItem('python', config), undefined);
    assert.equal(configurationItem(undefined, config), undefined);
  });
});

describe('package.json contributes the same settings', () => {
  test('one contributed setting per server key, plus the client-only ones', () => {
    const expected = [...SERVER_KEYS, ...CLIENT_ONLY_KEYS].map((key) => `${SECTION}.${key}`).sort();
    assert.deepEqual(Object.keys(properties).sort(), expected);
  });

  test('defaults, types, enums and minimums agree with the schema', () => {
    const typeOf = { path: 'string', int: 'integer', intOrNull: ['integer', 'null'], number: 'number', bool: 'boolean', enum: 'string' };
    for (const key of SERVER_KEYS) {
      const spec = SCHEMA[key] as { kind: keyof typeof typeOf; default: unknown; min?: number; values?: readonly string[] };
      const prop = properties[`${SECTION}.${key}`];
      assert.deepEqual(prop.default, spec.default, `${key} default`);
      assert.deepEqual(prop.type, typeOf[spec.kind], `${key} type`);
      assert.deepEqual(prop.enum, spec.values === undefined ? undefined : [...spec.values], `${key} enum`);
      assert.equal(prop.minimum, spec.min, `${key} minimum`);
      assert.ok(typeof prop.markdownDescription === 'string' && prop.markdownDescription.length > 10, `${key} described`);
    }
  });
});

/** The Python that has the server (the repo's venv, or $NEXTLS_TEST_PYTHON); undefined to skip. */
function serverPython(): string | undefined {
  const candidates = [process.env.NEXTLS_TEST_PYTHON, path.join(REPO, '.venv', 'bin', 'python')];
  for (const candidate of candidates) {
    if (candidate && fs.existsSync(candidate)) {
      try {
        execFileSync(candidate, ['-c', 'import nextls.lsp.config'], { stdio: 'ignore', timeout: 60000 });
        return candidate;
      } catch {
        // not this one
      }
    }
  }
  return undefined;
}

const python = serverPython();

describe('agrees with the server (server/nextls/lsp/config.py)', { skip: python === undefined && 'no Python with nextls.lsp here' }, () => {
  test('same keys, defaults, choices and minimums', () => {
    const script = `
import json, dataclasses
from nextls.lsp import config as c
d = c.Settings()
out = {}
for key, name in c._NAMES.items():
    out[key] = {"default": getattr(d, name), "choices": list(c._CHOICES.get(name, [])) or None, "min": c._MINIMUM.get(name)}
print(json.dumps(out))
`;
    const server = JSON.parse(execFileSync(python as string, ['-c', script], { encoding: 'utf8', timeout: 60000 })) as Record<
      string,
      { default: unknown; choices: string[] | null; min: number | null }
    >;
    assert.deepEqual(Object.keys(server).sort(), [...SERVER_KEYS].sort(), 'same setting names');
    for (const key of SERVER_KEYS) {
      const spec = SCHEMA[key] as { default: unknown; min?: number; values?: readonly string[] };
      // the server's None for an unset path is the client's ""
      const serverDefault = server[key].default === null && spec.default === '' ? '' : server[key].default;
      assert.deepEqual(spec.default, serverDefault, `${key} default`);
      assert.deepEqual(spec.values ? [...spec.values].sort() : null, server[key].choices ? [...server[key].choices].sort() : null, `${key} choices`);
      assert.equal(spec.min ?? null, server[key].min ?? (spec.min === -1 ? -1 : null), `${key} minimum`);
    }
  });
});

describe('agrees with the server (server/nextls/lsp/commands.py)', { skip: python === undefined && 'no Python with nextls.lsp here' }, () => {
  test('the server command ids the client sends exist', () => {
    const ids = JSON.parse(
      execFileSync(python as string, ['-c', 'import json; from nextls.lsp.commands import COMMANDS; print(json.dumps(list(COMMANDS)))'], {
        encoding: 'utf8',
        timeout: 60000,
      }),
    ) as string[];
    for (const id of Object.values(SERVER_COMMANDS)) {
      assert.ok(ids.includes(id), `${id} is a server command`);
    }
  });
});

/**
 * Settings -> server configuration. Pure: no `vscode` import, so it is unit-tested without VS Code.
 *
 * The server pulls the section `nextls` with `workspace/configuration` and pulls it again on
 * `workspace/didChangeConfiguration`. Every key of `ServerConfiguration` is one contributed setting
 * `nextls.<key>` (1:1); `serverPython` is the only client-side setting and is never sent.
 */
import * as os from 'node:os';
import * as path from 'node:path';

export const SECTION = 'nextls';

export const DIAGNOSTICS_MODES = ['onOpenAndSave', 'onSave', 'onDemand', 'off'] as const;
export const TEST_DISCOVERY_MODES = ['auto', 'file', 'pytest'] as const;
export const TRACE_BACKENDS = ['debugpy', 'inprocess'] as const;

type Spec =
  | { kind: 'path'; default: string }
  | { kind: 'int'; default: number; min?: number }
  | { kind: 'intOrNull'; default: null; min?: number }
  | { kind: 'number'; default: number; min?: number }
  | { kind: 'bool'; default: boolean }
  | { kind: 'enum'; default: string; values: readonly string[] };

/**
 * Every server setting (the `_NAMES` of server/nextls/lsp/config.py), its type, default and minimum.
 * package.json's `contributes.configuration` declares the same keys with the same defaults (a unit
 * test checks both against this table, and against the Python module when it can import it).
 */
export const SCHEMA = {
  // the model
  modelPath: { kind: 'path', default: '' },
  loraPath: { kind: 'path', default: '' },
  k: { kind: 'int', default: 4, min: 1 },
  temperature: { kind: 'number', default: 0.8, min: 0 },
  topP: { kind: 'number', default: 0.95, min: 0 },
  maxTokens: { kind: 'int', default: 512, min: 1 },
  gpuLayers: { kind: 'int', default: -1, min: -1 },
  threads: { kind: 'intOrNull', default: null, min: 1 },
  contextSize: { kind: 'int', default: 4096, min: 256 },
  seed: { kind: 'int', default: 0 },
  stopAtFirstVerified: { kind: 'bool', default: true },
  search: { kind: 'bool', default: true },
  searchBudget: { kind: 'number', default: 20 },
  // running the user's tests
  python: { kind: 'path', default: '' },
  testDiscovery: { kind: 'enum', default: 'auto', values: TEST_DISCOVERY_MODES },
  testTimeout: { kind: 'number', default: 5, min: 0.1 },
  maxTestProcesses: { kind: 'intOrNull', default: null, min: 1 },
  maxTestMemoryMb: { kind: 'intOrNull', default: null, min: 64 },
  traceBackend: { kind: 'enum', default: 'debugpy', values: TRACE_BACKENDS },
  // features
  diagnostics: { kind: 'enum', default: 'onOpenAndSave', values: DIAGNOSTICS_MODES },
  debounceMs: { kind: 'int', default: 300, min: 0 },
  traceFailing: { kind: 'int', default: 3, min: 0 },
  inlayHints: { kind: 'bool', default: true },
  hover: { kind: 'bool', default: true },
  explainOnHover: { kind: 'bool', default: true },
  hoverBudgetMs: { kind: 'int', default: 300, min: 0 },
  codeActions: { kind: 'bool', default: true },
} as const satisfies Record<string, Spec>;

export type ServerKey = keyof typeof SCHEMA;
type ValueOf<S> = S extends { kind: 'path' } ? string
  : S extends { kind: 'int' | 'number' } ? number
  : S extends { kind: 'intOrNull' } ? number | null
  : S extends { kind: 'bool' } ? boolean
  : S extends { values: readonly (infer V)[] } ? V
  : never;
/** What the server reads from the `nextls` section. */
export type ServerConfiguration = { [K in ServerKey]: ValueOf<(typeof SCHEMA)[K]> };

export const SERVER_KEYS = Object.keys(SCHEMA) as ServerKey[];

export const DEFAULTS: Readonly<ServerConfiguration> = Object.freeze(
  Object.fromEntries(SERVER_KEYS.map((key) => [key, SCHEMA[key].default])) as ServerConfiguration,
);

/** Settings the client keeps to itself (never sent: the server warns about unknown keys). */
export const CLIENT_ONLY_KEYS = ['serverPython', 'serverInstall'] as const;
/** Settings whose change needs a new server process rather than a configuration refresh. */
export const RESTART_KEYS = ['serverPython', 'serverInstall'] as const;

/** Reads one setting of the section (`get('k')` for `nextls.k`); undefined when unset. */
export type SettingsReader = (key: string) => unknown;

export interface Variables {
  /** `${workspaceFolder}` */
  workspaceFolder?: string;
  /** `~` */
  home?: string;
}

/** `~` and `${workspaceFolder}` / `${userHome}` in a path setting; "" stays "". */
export function expandPath(value: string, vars: Variables = {}): string {
  let out = value.trim();
  if (out === '') {
    return out;
  }
  const home = vars.home ?? os.homedir();
  out = out.replace(/\$\{userHome\}/g, home);
  if (vars.workspaceFolder !== undefined) {
    out = out.replace(/\$\{workspaceFolder\}/g, vars.workspaceFolder);
  }
  if (out === '~' || out.startsWith('~/') || out.startsWith('~' + path.sep)) {
    out = path.join(home, out.slice(1));
  }
  return out;
}

function asNumber(value: unknown, fallback: number, min?: number, integer = false): number {
  const raw = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
  if (typeof raw !== 'number' || !Number.isFinite(raw)) {
    return fallback;
  }
  const n = integer ? Math.trunc(raw) : raw;
  if (min !== undefined && n < min) {
    return fallback;
  }
  return n;
}

function convert(spec: Spec, value: unknown, vars: Variables): unknown {
  switch (spec.kind) {
    case 'path':
      return typeof value === 'string' ? expandPath(value, vars) : spec.default;
    case 'int':
      return asNumber(value, spec.default, spec.min, true);
    case 'intOrNull':
      return value === null || value === undefined || value === '' ? null : asNumber(value, NaN, spec.min, true) || null;
    case 'number':
      return asNumber(value, spec.default, spec.min);
    case 'bool':
      return typeof value === 'boolean' ? value : spec.default;
    case 'enum':
      return typeof value === 'string' && spec.values.includes(value) ? value : spec.default;
  }
}

/**
 * The `nextls` section as the server should see it: every server key present, typed, paths expanded,
 * invalid values replaced by the default (the server would warn and keep its default anyway),
 * client-only keys dropped.
 */
export function toServerConfiguration(get: SettingsReader, vars: Variables = {}): ServerConfiguration {
  const out: Record<string, unknown> = {};
  for (const key of SERVER_KEYS) {
    out[key] = convert(SCHEMA[key] as Spec, get(key), vars);
  }
  return out as ServerConfiguration;
}

/** A reader over a plain object such as `{k: 2}` (tests, `initializationOptions`). */
export function objectReader(values: Record<string, unknown>): SettingsReader {
  return (key) => values[key];
}

/** Which part of a configuration change matters: restart the server, refresh it, or neither. */
export function classifyChange(affects: (section: string) => boolean): 'restart' | 'refresh' | 'none' {
  if (RESTART_KEYS.some((key) => affects(`${SECTION}.${key}`))) {
    return 'restart';
  }
  if (SERVER_KEYS.some((key) => affects(`${SECTION}.${key}`))) {
    return 'refresh';
  }
  return 'none';
}

/**
 * Answer one `workspace/configuration` item for the `nextls` section or one of its keys
 * (`nextls.k`); undefined for other sections (the caller lets the default handler answer).
 */
export function configurationItem(section: string | undefined, config: ServerConfiguration): unknown {
  if (section === SECTION) {
    return config;
  }
  if (section !== undefined && section.startsWith(SECTION + '.')) {
    const key = section.slice(SECTION.length + 1);
    if ((SERVER_KEYS as string[]).includes(key)) {
      return config[key as ServerKey];
    }
    return null;
  }
  return undefined;
}

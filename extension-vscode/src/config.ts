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

export const DIAGNOSTICS_MODES = ['onSave', 'onOpenAndSave', 'onDemand', 'off'] as const;
export type DiagnosticsMode = (typeof DIAGNOSTICS_MODES)[number];
export const TRACE_BACKENDS = ['inprocess', 'debugpy'] as const;
export type TraceBackend = (typeof TRACE_BACKENDS)[number];

/** What the server reads from the `nextls` section (names as in server/nextls/lsp/config.py). */
export interface ServerConfiguration {
  modelPath: string;
  loraPath: string;
  k: number;
  temperature: number;
  maxTokens: number;
  gpuLayers: number;
  python: string;
  testDiscovery: string;
  testTimeout: number;
  diagnostics: DiagnosticsMode;
  inlayHints: boolean;
  hoverBudgetMs: number;
  traceBackend: TraceBackend;
}

export const DEFAULTS: Readonly<ServerConfiguration> = Object.freeze({
  modelPath: '',
  loraPath: '',
  k: 4,
  temperature: 0.8,
  maxTokens: 512,
  gpuLayers: -1,
  python: '',
  testDiscovery: 'auto',
  testTimeout: 5,
  diagnostics: 'onOpenAndSave',
  inlayHints: true,
  hoverBudgetMs: 300,
  traceBackend: 'inprocess',
});

/** Settings the client keeps to itself. */
export const CLIENT_ONLY_KEYS = ['serverPython'] as const;
/** Settings whose change needs a new server process rather than a configuration refresh. */
export const RESTART_KEYS = ['serverPython'] as const;

export const SERVER_KEYS = Object.keys(DEFAULTS) as (keyof ServerConfiguration)[];

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

function asString(value: unknown, fallback: string): string {
  return typeof value === 'string' ? value : fallback;
}

function asNumber(value: unknown, fallback: number, min?: number, integer = false): number {
  let n = typeof value === 'string' && value.trim() !== '' ? Number(value) : value;
  if (typeof n !== 'number' || !Number.isFinite(n)) {
    return fallback;
  }
  if (integer) {
    n = Math.trunc(n);
  }
  if (min !== undefined && n < min) {
    return fallback;
  }
  return n;
}

function asEnum<T extends string>(value: unknown, allowed: readonly T[], fallback: T): T {
  return typeof value === 'string' && (allowed as readonly string[]).includes(value) ? (value as T) : fallback;
}

function asBoolean(value: unknown, fallback: boolean): boolean {
  return typeof value === 'boolean' ? value : fallback;
}

/**
 * The `nextls` section as the server should see it: every key present, typed, paths expanded,
 * invalid values replaced by the default, client-only keys dropped.
 */
export function toServerConfiguration(get: SettingsReader, vars: Variables = {}): ServerConfiguration {
  return {
    modelPath: expandPath(asString(get('modelPath'), DEFAULTS.modelPath), vars),
    loraPath: expandPath(asString(get('loraPath'), DEFAULTS.loraPath), vars),
    k: asNumber(get('k'), DEFAULTS.k, 1, true),
    temperature: asNumber(get('temperature'), DEFAULTS.temperature, 0),
    maxTokens: asNumber(get('maxTokens'), DEFAULTS.maxTokens, 1, true),
    gpuLayers: asNumber(get('gpuLayers'), DEFAULTS.gpuLayers, -1, true),
    python: expandPath(asString(get('python'), DEFAULTS.python), vars),
    testDiscovery: asString(get('testDiscovery'), DEFAULTS.testDiscovery),
    testTimeout: asNumber(get('testTimeout'), DEFAULTS.testTimeout, Number.MIN_VALUE),
    diagnostics: asEnum(get('diagnostics'), DIAGNOSTICS_MODES, DEFAULTS.diagnostics),
    inlayHints: asBoolean(get('inlayHints'), DEFAULTS.inlayHints),
    hoverBudgetMs: asNumber(get('hoverBudgetMs'), DEFAULTS.hoverBudgetMs, 0, true),
    traceBackend: asEnum(get('traceBackend'), TRACE_BACKENDS, DEFAULTS.traceBackend),
  };
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
      return config[key as keyof ServerConfiguration];
    }
    return null;
  }
  return undefined;
}

/**
 * Which Python runs the server, and whether it has nextls. No `vscode` import: the Python extension's
 * API and the process runner are passed in, so this is unit-tested without VS Code.
 *
 * Order: the `nextls.serverPython` setting, else the venv the extension made and owns (when the user
 * chose it, `nextls.serverInstall: privateVenv`), else the interpreter selected in the Python extension
 * (ms-python.python, optional), else `python3`.
 */
import { execFile } from 'node:child_process';
import type { InstallOrigin } from './install';

export const DEFAULT_PYTHON = 'python3';

export type InterpreterSource = 'setting' | 'private-venv' | 'python-extension' | 'default';

export interface Interpreter {
  /** The executable. */
  command: string;
  /** Arguments before the script's own (e.g. `conda run -n env python` gives ['run', '-n', 'env', 'python']). */
  prefixArgs: string[];
  source: InterpreterSource;
}

/** The subset of the ms-python.python extension API that is used (both its current and legacy forms). */
export interface PythonExtensionApi {
  environments?: {
    getActiveEnvironmentPath(resource?: unknown): { id?: string; path: string } | undefined;
    resolveEnvironment?(
      environment: { id?: string; path: string } | string,
    ): Promise<{ executable?: { uri?: { fsPath: string } } } | undefined>;
  };
  settings?: {
    getExecutionDetails?(resource?: unknown): { execCommand: string[] | undefined };
  };
}

export interface ResolveOptions {
  /** `nextls.serverPython`, already expanded; "" when unset. */
  setting: string;
  /** The Python of the extension's own venv, when the user chose it and it exists. */
  privateVenv?: string;
  /** Gets the active Python extension's API, or undefined when it is not installed. */
  pythonExtension?: () => Promise<PythonExtensionApi | undefined>;
  /** The workspace folder or file the interpreter is for. */
  resource?: unknown;
  /** Called with a reason when the Python extension is present but gives no interpreter. */
  log?: (message: string) => void;
}

async function fromPythonExtension(api: PythonExtensionApi, resource: unknown): Promise<string[] | undefined> {
  const environments = api.environments;
  if (environments !== undefined) {
    const active = environments.getActiveEnvironmentPath(resource);
    if (active !== undefined && active.path) {
      if (environments.resolveEnvironment !== undefined) {
        const resolved = await environments.resolveEnvironment(active);
        const executable = resolved?.executable?.uri?.fsPath;
        if (executable) {
          return [executable];
        }
      }
      return [active.path];
    }
  }
  const command = api.settings?.getExecutionDetails?.(resource).execCommand;
  if (command !== undefined && command.length > 0 && command[0]) {
    return command;
  }
  return undefined;
}

export async function resolveInterpreter(options: ResolveOptions): Promise<Interpreter> {
  const setting = options.setting.trim();
  if (setting !== '') {
    return { command: setting, prefixArgs: [], source: 'setting' };
  }
  if (options.privateVenv !== undefined) {
    return { command: options.privateVenv, prefixArgs: [], source: 'private-venv' };
  }
  if (options.pythonExtension !== undefined) {
    try {
      const api = await options.pythonExtension();
      if (api !== undefined) {
        const command = await fromPythonExtension(api, options.resource);
        if (command !== undefined) {
          return { command: command[0], prefixArgs: command.slice(1), source: 'python-extension' };
        }
        options.log?.('the Python extension has no interpreter selected');
      }
    } catch (error) {
      options.log?.(`the Python extension's API failed: ${String(error)}`);
    }
  }
  return { command: DEFAULT_PYTHON, prefixArgs: [], source: 'default' };
}

/** How the server is started: `<python> -m nextls serve --stdio`. */
export function serverCommand(python: Interpreter): { command: string; args: string[] } {
  return { command: python.command, args: [...python.prefixArgs, '-m', 'nextls', 'serve', '--stdio'] };
}

export function describe(python: Interpreter): string {
  const where = {
    setting: 'nextls.serverPython',
    'private-venv': "the extension's private venv",
    'python-extension': 'the Python extension',
    default: 'default',
  }[
    python.source
  ];
  return `${[python.command, ...python.prefixArgs].join(' ')} (${where})`;
}

/** Shell-quoted, for a command line shown to the user or sent to a terminal. */
export function shellQuote(arg: string): string {
  return /^[\w@%+=:,./-]+$/.test(arg) ? arg : `'${arg.replace(/'/g, `'\\''`)}'`;
}

export type ProbeResult =
  | { ok: true; version: string; origin?: InstallOrigin | null }
  | { ok: false; reason: 'no-python' | 'no-package' | 'error'; detail: string };

export type Runner = (
  command: string,
  args: string[],
  timeoutMs: number,
) => Promise<{ code: number | null; stdout: string; stderr: string; error?: { code?: string | number | null; message: string } }>;

export const runProcess: Runner = (command, args, timeoutMs) =>
  new Promise((resolve) => {
    execFile(command, args, { timeout: timeoutMs, windowsHide: true }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === 'number' ? error.code : null;
      resolve({ code, stdout: String(stdout), stderr: String(stderr), error: error ?? undefined });
    });
  });

/** Prints nextls's version and where pip installed it from (PEP 610 direct_url.json; null if not recorded). */
const PROBE = [
  'import json, sys, nextls',
  'from importlib import metadata',
  'try: origin = json.loads(metadata.distribution("nextls").read_text("direct_url.json") or "null")',
  'except metadata.PackageNotFoundError: origin = None',
  'sys.stdout.write(json.dumps({"version": getattr(nextls, "__version__", "?"), "origin": origin}))',
].join('\n');

/** Does `python` run, and does it import nextls? */
export async function probeServer(python: Interpreter, run: Runner = runProcess, timeoutMs = 30000): Promise<ProbeResult> {
  const result = await run(python.command, [...python.prefixArgs, '-c', PROBE], timeoutMs);
  if (result.error !== undefined && (result.error.code === 'ENOENT' || result.error.code === 'EACCES')) {
    return { ok: false, reason: 'no-python', detail: `${python.command}: ${result.error.code}` };
  }
  if (result.code === 0) {
    try {
      const { version, origin } = JSON.parse(result.stdout) as { version: string; origin: InstallOrigin | null };
      return { ok: true, version, origin };
    } catch {
      return { ok: false, reason: 'error', detail: `unexpected answer from ${python.command}: ${result.stdout.slice(0, 200)}` };
    }
  }
  const detail = (result.stderr || result.stdout || String(result.error ?? '')).trim();
  if (/No module named '?nextls'?/.test(detail)) {
    return { ok: false, reason: 'no-package', detail };
  }
  return { ok: false, reason: 'error', detail: detail || `exit code ${String(result.code)}` };
}

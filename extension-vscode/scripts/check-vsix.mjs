// Checks a packaged .vsix: the files it holds, its manifest, and that the bundle loads with nothing
// but `vscode` (stubbed here) and Node's own modules. Usage: node scripts/check-vsix.mjs dist/nextls.vsix
import * as fs from 'node:fs';
import { builtinModules, createRequire } from 'node:module';
import * as os from 'node:os';
import * as path from 'node:path';
import * as zlib from 'node:zlib';

const file = process.argv[2] ?? 'dist/nextls.vsix';
const failures = [];
const check = (ok, message) => {
  if (!ok) failures.push(message);
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${message}`);
};

/** name -> contents, read from the zip's central directory (stored or deflated entries). */
function readZip(buffer) {
  let eocd = buffer.length - 22;
  while (eocd >= 0 && buffer.readUInt32LE(eocd) !== 0x06054b50) eocd--;
  if (eocd < 0) throw new Error(`${file}: not a zip file`);
  const count = buffer.readUInt16LE(eocd + 10);
  let at = buffer.readUInt32LE(eocd + 16);
  const entries = new Map();
  for (let i = 0; i < count; i++) {
    if (buffer.readUInt32LE(at) !== 0x02014b50) throw new Error('bad central directory');
    const method = buffer.readUInt16LE(at + 10);
    const compressed = buffer.readUInt32LE(at + 20);
    const nameLength = buffer.readUInt16LE(at + 28);
    const extraLength = buffer.readUInt16LE(at + 30);
    const commentLength = buffer.readUInt16LE(at + 32);
    const local = buffer.readUInt32LE(at + 42);
    const name = buffer.toString('utf8', at + 46, at + 46 + nameLength);
    const dataStart = local + 30 + buffer.readUInt16LE(local + 26) + buffer.readUInt16LE(local + 28);
    const raw = buffer.subarray(dataStart, dataStart + compressed);
    entries.set(name, method === 0 ? raw : zlib.inflateRawSync(raw));
    at += 46 + nameLength + extraLength + commentLength;
  }
  return entries;
}

const entries = readZip(fs.readFileSync(file));
const names = [...entries.keys()].sort();
console.log(`${file}: ${names.length} files, ${fs.statSync(file).size} bytes`);
for (const name of names) console.log(`     ${name} (${entries.get(name).length} bytes)`);

const pkg = JSON.parse(entries.get('extension/package.json')?.toString('utf8') ?? '{}');
const source = JSON.parse(fs.readFileSync('package.json', 'utf8'));
check(entries.has('extension.vsixmanifest'), 'has extension.vsixmanifest');
check(pkg.name === 'nextls' && pkg.publisher === 'nextls' && pkg.version === source.version, `identity nextls.nextls@${pkg.version}`);
const main = `extension/${pkg.main?.replace(/^\.\//, '')}`;
check(entries.has(main), `main ${pkg.main} is in the package`);
check(!names.some((n) => /(^|\/)node_modules\//.test(n)), 'no node_modules (the client is bundled)');
check(!names.some((n) => /\.(ts|map)$/.test(n) || n.startsWith('extension/src/') || n.startsWith('extension/test/')), 'no sources, tests or source maps');
check(names.some((n) => /^extension\/readme\.md$/i.test(n)), 'has the README');
check(JSON.stringify(pkg.activationEvents) === '["onLanguage:python"]', 'activates on Python files only');
check(pkg.engines?.vscode === source.engines.vscode, `engines.vscode ${pkg.engines?.vscode}`);
const settings = Object.keys(pkg.contributes?.configuration?.properties ?? {});
check(settings.includes('nextls.serverPython') && settings.includes('nextls.modelPath') && settings.length >= 10, `${settings.length} settings`);
const commands = (pkg.contributes?.commands ?? []).map((c) => c.command);
for (const id of ['nextls.traceAtCursor', 'nextls.explainAtCursor', 'nextls.fixAtCursor', 'nextls.restartServer', 'nextls.showOutput', 'nextls.installServer', 'nextls.rebuildForGpu']) {
  check(commands.includes(id), `command ${id}`);
}
check((pkg.contributes?.menus?.['editor/context'] ?? []).length === 3, 'three editor context menu entries');

// the server wheel: one, and it holds every module of server/nextls (a package missing from
// pyproject.toml's `packages` would install a server that cannot import it)
const wheels = names.filter((n) => /^extension\/dist\/server\/nextls-[^/]+\.whl$/.test(n));
check(wheels.length === 1, `carries one server wheel${wheels.length ? `: ${wheels.join(', ')}` : ''}`);
if (wheels.length === 1) {
  const inWheel = new Set(readZip(entries.get(wheels[0])).keys());
  const serverDir = path.join('..', 'server');
  const modules = fs
    .readdirSync(path.join(serverDir, 'nextls'), { recursive: true })
    .map(String)
    .filter((n) => n.endsWith('.py') && !n.split(path.sep).includes('__pycache__'))
    .map((n) => `nextls/${n.split(path.sep).join('/')}`);
  const missing = modules.filter((m) => !inWheel.has(m));
  check(missing.length === 0, `the wheel has all ${modules.length} modules of server/nextls${missing.length ? `; missing: ${missing.join(', ')}` : ''}`);
  check([...inWheel].some((n) => /^nextls-[^/]+\.dist-info\/METADATA$/.test(n)), 'the wheel has its METADATA');
}

const manifest = entries.get('extension.vsixmanifest')?.toString('utf8') ?? '';
check(/<Identity[^>]*Id="nextls"[^>]*Version="[^"]+"[^>]*Publisher="nextls"/.test(manifest) || /<Identity[^>]*Publisher="nextls"/.test(manifest), 'vsixmanifest identity');
check(manifest.includes(`Microsoft.VisualStudio.Code.Engine" Value="${source.engines.vscode}"`), 'vsixmanifest engine');

// the bundle: requires only `vscode` and Node's built-ins, and exports activate / deactivate
const bundle = entries.get(main)?.toString('utf8') ?? '';
const required = new Set([...bundle.matchAll(/\brequire\(["']([^"']+)["']\)/g)].map((m) => m[1]));
const foreign = [...required].filter((m) => m !== 'vscode' && !builtinModules.includes(m.replace(/^node:/, '')));
check(foreign.length === 0, `bundle requires only vscode and built-ins${foreign.length ? `: ${foreign.join(', ')}` : ''}`);
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'nextls-vsix-'));
try {
  fs.writeFileSync(path.join(dir, 'extension.js'), bundle);
  const Module = createRequire(import.meta.url)('node:module');
  const resolve = Module._resolveFilename;
  Module._resolveFilename = function (request, ...rest) {
    return request === 'vscode' ? 'vscode' : resolve.call(this, request, ...rest);
  };
  const fake = new Module('vscode');
  fake.exports = new Proxy({}, { get: () => new Proxy(function () {}, { get: () => ({}) }) });
  fake.loaded = true;
  Module._cache.vscode = fake;
  const loaded = createRequire(path.join(dir, 'x.js'))(path.join(dir, 'extension.js'));
  check(typeof loaded.activate === 'function' && typeof loaded.deactivate === 'function', 'bundle exports activate and deactivate');
} catch (error) {
  check(false, `bundle loads: ${error}`);
} finally {
  fs.rmSync(dir, { recursive: true, force: true });
}

if (failures.length > 0) {
  console.error(`\n${failures.length} check(s) failed`);
  process.exit(1);
}
console.log('\nvsix manifest: all checks passed');

// Builds the nextls wheel from this repository into dist/server/, for the .vsix to carry (the extension
// installs the server from it). Python: $NEXTLS_PACKAGE_PYTHON, else <repo>/.venv/bin/python, else python3.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const here = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const repo = path.dirname(here);
const out = path.join(here, 'dist', 'server');
const venv = path.join(repo, '.venv', 'bin', 'python');
const python = process.env.NEXTLS_PACKAGE_PYTHON || (fs.existsSync(venv) ? venv : 'python3');

fs.rmSync(out, { recursive: true, force: true });
execFileSync(python, ['-m', 'pip', 'wheel', '--no-deps', '--quiet', '--wheel-dir', out, repo], { stdio: 'inherit' });
const wheels = fs.readdirSync(out).filter((name) => name.endsWith('.whl'));
if (wheels.length !== 1 || !wheels[0].startsWith('nextls-')) {
  console.error(`server-wheel: expected one nextls wheel in ${out}, found: ${wheels.join(', ') || 'none'}`);
  process.exit(1);
}
console.log(`server-wheel: ${path.join('dist', 'server', wheels[0])} (${fs.statSync(path.join(out, wheels[0])).size} bytes)`);

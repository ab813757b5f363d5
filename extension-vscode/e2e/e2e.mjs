// End-to-end test in a real VS Code: code-server (VS Code in the browser) with the packaged .vsix
// installed, driven by headless Chromium through playwright-core. Run by scripts/e2e.sh, which installs
// code-server and passes everything in the environment:
//   E2E_NODE          Node 24 (code-server's runtime)
//   E2E_CODE_SERVER   code-server's package folder (has out/node/entry.js)
//   E2E_VSIX          the packaged extension
//   E2E_PYTHON        a Python with nextls installed (runs the server)
//   E2E_ARTIFACTS     where screenshots and logs are kept
//   E2E_REPO          the repository root (for server/examples/remove_occ.py)
//   E2E_CHROMIUM      the browser (default /usr/bin/chromium)
//
// The model is the server's scripted-answers test seam (NEXTLS_SCRIPTED_ANSWERS), so the quick fix is
// exact and fast; everything else -- diagnostics, traces, hovers, code actions, the sandboxed test runs
// that verify the fix -- is the real server.
import { spawn, execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as os from 'node:os';
import * as path from 'node:path';
import { chromium } from 'playwright-core';

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const NODE = env('E2E_NODE');
const CODE_SERVER = env('E2E_CODE_SERVER');
const VSIX = env('E2E_VSIX');
const PYTHON = env('E2E_PYTHON');
const ARTIFACTS = env('E2E_ARTIFACTS');
const REPO = env('E2E_REPO');
const CHROMIUM = env('E2E_CHROMIUM', '/usr/bin/chromium');
const STEP_TIMEOUT = Number(process.env.E2E_STEP_TIMEOUT_MS ?? 180000);

const started = Date.now();
const log = (message) => console.log(`e2e: ${((Date.now() - started) / 1000).toFixed(1).padStart(6)}s ${message}`);

fs.mkdirSync(ARTIFACTS, { recursive: true });
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'nextls-e2e-'));
const userData = path.join(tmp, 'user-data');
const extensions = path.join(tmp, 'extensions');
const workspace = path.join(tmp, 'workspace');

// ---------------------------------------------------------------- the workspace and the scripted model
const BUGGY = fs.readFileSync(path.join(REPO, 'server', 'examples', 'remove_occ.py'), 'utf8');
const BUGGY_LINE = '            s = s[0:i] + s[i:]';
const FIXED_LINE = '            s = s[0:i] + s[i + 1:]';
if (!BUGGY.includes(BUGGY_LINE)) throw new Error('server/examples/remove_occ.py changed: update e2e.mjs');
const FIXED = BUGGY.replace(BUGGY_LINE, FIXED_LINE);
const fixedFunction = FIXED.slice(FIXED.indexOf('def remove_Occ'), FIXED.indexOf('    return s\n') + '    return s\n'.length);
const RATIONALE =
  'The second loop finds the last occurrence but rebuilds the string as s[0:i] + s[i:], which is s unchanged: ' +
  'it must skip the character with s[i + 1:].';
const answers = path.join(tmp, 'answers.json');
fs.writeFileSync(answers, JSON.stringify({ answers: [`${RATIONALE}\n\n\`\`\`python\n${fixedFunction}\`\`\`\n`] }));

fs.mkdirSync(path.join(workspace, '.vscode'), { recursive: true });
fs.writeFileSync(path.join(workspace, 'remove_occ.py'), BUGGY);
fs.writeFileSync(path.join(workspace, 'pytest.ini'), '[pytest]\n');
function writeWorkspaceSettings(extra) {
  const settings = {
    'nextls.serverPython': PYTHON,
    'nextls.k': 1,
    'nextls.hoverBudgetMs': 3000,
    'nextls.diagnostics': 'onOpenAndSave',
    ...extra,
  };
  fs.writeFileSync(path.join(workspace, '.vscode', 'settings.json'), JSON.stringify(settings, null, 2));
}
writeWorkspaceSettings({});
fs.mkdirSync(path.join(userData, 'User'), { recursive: true });
fs.writeFileSync(
  path.join(userData, 'User', 'settings.json'),
  JSON.stringify(
    {
      'workbench.startupEditor': 'none',
      'workbench.secondarySideBar.defaultVisibility': 'hidden',
      'workbench.tips.enabled': false,
      'workbench.welcomePage.walkthroughs.openOnInstall': false,
      'security.workspace.trust.enabled': false,
      'telemetry.telemetryLevel': 'off',
      'update.mode': 'none',
      'extensions.autoCheckUpdates': false,
      'extensions.autoUpdate': false,
      'extensions.ignoreRecommendations': true,
      'chat.disableAIFeatures': true,
      'editor.hover.delay': 150,
      'editor.minimap.enabled': false,
      'editor.lightbulb.enabled': 'on',
      'workbench.colorTheme': 'Default Light Modern',
      'window.restoreWindows': 'none',
      'files.autoSave': 'off',
    },
    null,
    2,
  ),
);

// ---------------------------------------------------------------- code-server
const entry = path.join(CODE_SERVER, 'out', 'node', 'entry.js');
const common = ['--user-data-dir', userData, '--extensions-dir', extensions];
log(`installing ${path.basename(VSIX)}`);
const installed = execFileSync(NODE, [entry, ...common, '--install-extension', VSIX], { encoding: 'utf8', timeout: 120000 });
if (!/successfully installed/i.test(installed)) throw new Error(`--install-extension failed:\n${installed}`);
const listed = execFileSync(NODE, [entry, ...common, '--list-extensions', '--show-versions'], { encoding: 'utf8', timeout: 60000 });
if (!/^nextls\.nextls@/m.test(listed)) throw new Error(`the extension is not listed:\n${listed}`);
log(`installed: ${listed.trim()}`);

const port = await new Promise((resolve, reject) => {
  const server = net.createServer();
  server.listen(0, '127.0.0.1', () => {
    const { port } = server.address();
    server.close(() => resolve(port));
  });
  server.on('error', reject);
});
const serverLog = fs.createWriteStream(path.join(ARTIFACTS, 'code-server.log'));
const codeServer = spawn(
  NODE,
  [
    entry,
    ...common,
    '--bind-addr',
    `127.0.0.1:${port}`,
    '--auth',
    'none',
    '--disable-telemetry',
    '--disable-update-check',
    '--disable-workspace-trust',
    '--disable-getting-started-override',
    '--ignore-last-opened',
    workspace,
  ],
  {
    env: {
      ...process.env,
      NEXTLS_SCRIPTED_ANSWERS: answers,
      OMP_WAIT_POLICY: 'PASSIVE',
      // the server's stderr goes to the extension's output channel; keep INFO-level messages there
      PYTHONUNBUFFERED: '1',
    },
    stdio: ['ignore', 'pipe', 'pipe'],
    detached: true,
  },
);
codeServer.stdout.pipe(serverLog);
codeServer.stderr.pipe(serverLog);

let browser;
let page;
let failed = false;
const cleanup = async () => {
  await browser?.close().catch(() => undefined);
  try {
    process.kill(-codeServer.pid, 'SIGTERM');
  } catch {
    // already gone
  }
  await new Promise((resolve) => setTimeout(resolve, 500));
  try {
    process.kill(-codeServer.pid, 'SIGKILL');
  } catch {
    // already gone
  }
  if (!process.env.E2E_KEEP_TMP) fs.rmSync(tmp, { recursive: true, force: true });
};

async function waitForHttp(url, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (codeServer.exitCode !== null) throw new Error(`code-server exited with ${codeServer.exitCode} (see code-server.log)`);
    try {
      const response = await fetch(url);
      if (response.ok) return;
    } catch {
      // not yet
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error(`${url} did not answer in ${timeoutMs} ms`);
}

/** The editor's text as shown (monaco renders spaces as U+00A0). */
async function editorText() {
  return page.evaluate(() => {
    const lines = [...document.querySelectorAll('.editor-instance .monaco-editor .view-lines .view-line')];
    return lines
      .map((line) => ({ top: parseFloat(line.style.top), text: line.textContent.replace(/\u00a0/g, ' ') }))
      .sort((a, b) => a.top - b.top)
      .map((line) => line.text)
      .join('\n');
  });
}

async function goToLine(line) {
  await page.keyboard.press('Control+G');
  await page.keyboard.type(String(line));
  await page.keyboard.press('Enter');
}

/** The text of the first frame (webviews are nested iframes) for which `wanted(text)` holds. */
async function frameText(wanted, timeoutMs = 30000) {
  const deadline = Date.now() + timeoutMs;
  let seen = [];
  while (Date.now() < deadline) {
    seen = [];
    for (const frame of page.frames()) {
      const text = await frame.evaluate(() => document.body?.innerText ?? '').catch(() => '');
      if (wanted(text)) return text.replace(/\u00a0/g, ' ');
      if (text.trim()) seen.push(text.slice(0, 200));
    }
    await page.waitForTimeout(250);
  }
  throw new Error(`no frame with the expected text; frames:\n${seen.join('\n---\n')}`);
}

async function runCommand(title) {
  await page.keyboard.press('Control+Shift+P');
  await page.locator('.quick-input-widget input').waitFor({ state: 'visible' });
  await page.keyboard.type(title);
  await page.locator('.quick-input-widget .monaco-list-row', { hasText: title }).first().waitFor({ timeout: 30000 });
  await page.keyboard.press('Enter');
}

const checks = [];
const pass = (message) => {
  checks.push(message);
  log(`ok: ${message}`);
};

try {
  await waitForHttp(`http://127.0.0.1:${port}/healthz`, 60000);
  log(`code-server listening on 127.0.0.1:${port}`);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: ['--no-sandbox', '--disable-background-networking', '--disable-dev-shm-usage', '--disable-gpu'],
  });
  page = await browser.newPage({ viewport: { width: 1600, height: 1000 } });
  page.setDefaultTimeout(STEP_TIMEOUT);
  await page.goto(`http://127.0.0.1:${port}/?folder=${encodeURIComponent(workspace)}`);
  await page.locator('.monaco-workbench').waitFor();
  await page.locator('.explorer-folders-view, .explorer-viewlet').first().waitFor();
  log('workbench loaded');

  // 1. open the buggy example: the extension activates (onLanguage:python) and starts the server
  await page.keyboard.press('Control+P');
  await page.locator('.quick-input-widget input').waitFor({ state: 'visible' });
  await page.keyboard.type('remove_occ.py');
  await page.locator('.quick-input-widget .monaco-list-row', { hasText: 'remove_occ.py' }).first().waitFor();
  await page.keyboard.press('Enter');
  await page.locator('.editor-instance .monaco-editor .view-line', { hasText: 'def remove_Occ' }).waitFor();
  pass('remove_occ.py opened');

  await page.locator('.statusbar-item', { hasText: 'NExT' }).first().waitFor();
  pass(`status bar item: "${(await page.locator('.statusbar-item', { hasText: 'NExT' }).first().innerText()).trim()}"`);

  // 2. the diagnostic: a squiggle in the editor, and the message in the Problems panel
  await page.locator('.editor-instance .monaco-editor .squiggly-error').first().waitFor();
  await page.keyboard.press('Control+Shift+M');
  const problem = page.locator('.markers-panel .monaco-list-row', { hasText: 'remove_Occ fails 3 of 3' }).first();
  await problem.waitFor();
  pass(`diagnostic: "${(await problem.innerText()).replace(/\s+/g, ' ').trim()}"`);
  await page.keyboard.press('Control+Shift+M'); // close the panel again? (toggles focus) -- keep the editor focused
  await page.locator('.editor-instance .monaco-editor .view-lines').first().click();

  // 3. hover the traced line `s = s[0:i] + s[i + 1:]` (step (7): s='helo') and read the value
  const tracedLine = page.locator('.editor-instance .monaco-editor .view-line', { hasText: 's = s[0:i] + s[i + 1:]' }).first();
  await tracedLine.waitFor();
  let hoverText = '';
  const deadline = Date.now() + STEP_TIMEOUT;
  while (Date.now() < deadline) {
    const box = await tracedLine.evaluate((line) => {
      // the first token that starts with `s`: the assigned variable
      const spans = [...line.querySelectorAll('span span')];
      const token = spans.find((span) => span.textContent.replace(/\u00a0/g, ' ').trim().startsWith('s'));
      const rect = (token ?? line).getBoundingClientRect();
      return { x: rect.left + 3, y: rect.top + rect.height / 2 };
    });
    await page.mouse.move(box.x + 200, box.y + 200);
    await page.mouse.move(box.x, box.y);
    const hover = page.locator('.monaco-hover:not(.hidden) .monaco-hover-content, .monaco-hover:not(.hidden) .hover-contents').first();
    try {
      await hover.waitFor({ state: 'visible', timeout: 8000 });
      hoverText = (await hover.innerText()).replace(/\u00a0/g, ' ');
      if (hoverText.includes("'helo'")) break;
    } catch {
      // no hover yet
    }
    await page.waitForTimeout(1500);
  }
  if (!hoverText.includes("'helo'")) throw new Error(`the hover on the traced line never showed s='helo'; last hover:\n${hoverText}`);
  pass(`hover on the traced line: "${hoverText.split('\n').find((l) => l.includes("'helo'")).trim()}"`);
  await page.screenshot({ path: path.join(ARTIFACTS, 'e2e-hover.png') });
  await page.keyboard.press('Escape');
  await page.mouse.move(5, 500);

  // 4. a setting reaches the running server without a restart: inlay hints off, then on again
  const hint = "(7) s='helo'";
  const lineText = () => tracedLine.evaluate((line) => line.textContent.replace(/\u00a0/g, ' '));
  const waitForLine = async (wanted, what) => {
    const until = Date.now() + 60000;
    while (!wanted(await lineText())) {
      if (Date.now() > until) throw new Error(`${what}; the line shows: ${await lineText()}`);
      await page.waitForTimeout(250);
    }
  };
  await waitForLine((text) => text.includes(hint), 'no inlay hint on the traced line');
  writeWorkspaceSettings({ 'nextls.inlayHints': false });
  await waitForLine((text) => !text.includes(hint), 'the inlay hint stayed after nextls.inlayHints = false');
  writeWorkspaceSettings({});
  await waitForLine((text) => text.includes(hint), 'the inlay hint did not come back');
  pass(`settings reach the running server: inlay hint "${hint}" off and on with nextls.inlayHints`);

  // 5. a palette command: NExT: Trace Function at Cursor -> the trace in the panel beside the editor
  await goToLine(8);
  await runCommand('NExT: Trace Function at Cursor');
  await page.locator('.tab', { hasText: 'NExT trace: remove_Occ' }).first().waitFor();
  const traceText = await frameText((text) => text.includes('Trace of') && text.includes("s='helo'"));
  pass(`trace command: the panel shows "${traceText.split('\n').find((l) => l.includes("s='helo'")).trim()}"`);
  await page.locator('.editor-instance .monaco-editor .view-lines').first().click();

  // 6. the quick fix: the lightbulb menu on the function, "Fix with NExT", resolved by the server
  await goToLine(4);
  await page.keyboard.press('Control+.');
  const fixItem = page.locator('.action-widget .monaco-list-row', { hasText: 'Fix with NExT' }).first();
  await fixItem.waitFor();
  pass(`quick fix offered: "${(await fixItem.innerText()).trim()}"`);
  await fixItem.click();

  // the edit is applied (code action resolve ran the trace, the scripted sample and its verification)
  const start = Date.now();
  const fixed = (text) => text.split(FIXED_LINE.trim()).length === 3 && !text.includes(BUGGY_LINE.trim());
  while (!fixed(await editorText())) {
    if (Date.now() - start > STEP_TIMEOUT) throw new Error(`the fix was not applied; editor shows:\n${await editorText()}`);
    await page.waitForTimeout(250);
  }
  pass('the fix is applied in the editor');

  // the rationale panel beside the editor, with the applied diff
  await page.locator('.tab', { hasText: 'NExT rationale' }).first().waitFor();
  const rationale = await frameText((text) => text.includes('Why it failed') && text.includes('skip the character'));
  if (!rationale.includes('+            s = s[0:i] + s[i + 1:]')) throw new Error(`the rationale panel has no diff:\n${rationale}`);
  pass(`rationale panel: "${rationale.split('\n').find((l) => l.includes('skip the character')).trim().slice(0, 90)}..." and the diff`);

  // save, and check the file on disk is exactly the fixed example
  await page.locator('.editor-instance .monaco-editor .view-lines').first().click();
  await page.keyboard.press('Control+S');
  const file = path.join(workspace, 'remove_occ.py');
  const saveStart = Date.now();
  while (fs.readFileSync(file, 'utf8') !== FIXED) {
    if (Date.now() - saveStart > 30000) {
      throw new Error(`remove_occ.py on disk is not the fixed example:\n${fs.readFileSync(file, 'utf8')}`);
    }
    await page.waitForTimeout(250);
  }
  pass('saved file is exactly the fixed example');

  // after the save the tests run again: the diagnostic goes away
  await page.keyboard.press('Control+Shift+M');
  await page.locator('.markers-panel', { hasText: 'No problems have been detected' }).first().waitFor();
  pass('the diagnostic is gone after the save (no problems)');

  // the picture: the fixed function beside the rationale and the applied change
  await page.locator('.editor-instance .monaco-editor .view-lines').first().click();
  await goToLine(12);
  await page.waitForTimeout(500);
  await page.screenshot({ path: path.join(ARTIFACTS, 'e2e.png') });
  log(`screenshot: ${path.join(ARTIFACTS, 'e2e.png')}`);

  // 7. a server Python without nextls: the server is restarted with it, cannot start, and says so
  const bare = path.join(tmp, 'bare-venv');
  execFileSync('python3', ['-m', 'venv', '--without-pip', bare], { timeout: 60000 });
  writeWorkspaceSettings({ 'nextls.serverPython': path.join(bare, 'bin', 'python') });
  const toast = page.locator('.notification-toast', { hasText: 'the nextls package is not installed' }).first();
  await toast.waitFor();
  const toastText = (await toast.locator('.notification-list-item-message').first().innerText()).replace(/\s+/g, ' ');
  const buttons = (await toast.locator('.notification-list-item-buttons-container').first().innerText()).replace(/\s+/g, ' ');
  if (!toastText.includes('-m pip install nextls')) throw new Error(`the notification offers no pip command: ${toastText}`);
  for (const expected of ['Install with pip', 'Copy pip Command', 'Open Settings']) {
    if (!buttons.includes(expected)) throw new Error(`the notification has no "${expected}" button: ${buttons}`);
  }
  pass(`missing package: "${toastText}" [${buttons}]`);
  await page.waitForTimeout(600); // the toast slides in
  await page.screenshot({ path: path.join(ARTIFACTS, 'e2e-missing-package.png') });
  await toast.locator('a.monaco-button, .monaco-button', { hasText: 'Open Settings' }).first().click();
  await page.locator('.settings-editor').first().waitFor();
  await page.locator('.settings-editor .setting-item-contents', { hasText: 'Server Python' }).first().waitFor();
  pass('"Open Settings" opens the settings editor on nextls.serverPython');
} catch (error) {
  failed = true;
  console.error(`e2e: FAILED: ${error instanceof Error ? error.stack : error}`);
  if (page) await page.screenshot({ path: path.join(ARTIFACTS, 'e2e-failure.png') }).catch(() => undefined);
} finally {
  // the extension's output channel (server stderr included), for the artifacts
  const logs = path.join(userData, 'logs');
  if (fs.existsSync(logs)) {
    for (const file of fs.readdirSync(logs, { recursive: true })) {
      if (String(file).includes('NExT') || String(file).endsWith('exthost.log')) {
        fs.copyFileSync(path.join(logs, String(file)), path.join(ARTIFACTS, path.basename(String(file))));
      }
    }
  }
  await cleanup();
}

console.log(`e2e: ${checks.length} passed, ${failed ? 1 : 0} failed`);
process.exit(failed ? 1 : 0);

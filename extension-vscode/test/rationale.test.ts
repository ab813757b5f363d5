import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { extractRationale, rationaleCommand, rationaleMarkdown, resultMarkdown, unifiedDiff } from '../src/rationale';

describe('rationale of a quick fix', () => {
  test('from the code action data', () => {
    const info = extractRationale({ rationale: 'The second slice keeps s[i].', function: 'remove_Occ', passed: 3, total: 3 });
    assert.deepEqual(info, { rationale: 'The second slice keeps s[i].', title: 'remove_Occ', details: ['3/3 tests pass'] });
  });
  test('from nested data or from the command arguments', () => {
    assert.equal(extractRationale({ uri: 'file:///a.py', fix: { explanation: 'why' } })?.rationale, 'why');
    assert.equal(extractRationale(undefined, ['file:///a.py', { rationale: 'because', diff: '-a\n+b\n' }])?.diff, '-a\n+b\n');
    assert.equal(extractRationale({ uri: 'x' }, ['x']), undefined);
    assert.equal(extractRationale({ rationale: '   ' }), undefined);
  });

  test("a resolved fix runs our command, which keeps the server's command to chain", () => {
    // as server/nextls/lsp/code_actions.py resolves "Fix with NExT"
    const payload = { function: 'remove_Occ', status: 'verified', passed: 3, total: 3, summary: 'Skip s[i].', rationale: 'Skip s[i].', diff: '-a\n+b\n' };
    const server = { title: "Show NExT's rationale", command: 'nextls.showRationale', arguments: [payload] };
    const command = rationaleCommand('nextls.client.showRationale', { uri: 'file:///a.py', resolved: true, device: 'CPU', ...payload }, server, 'file:///a.py', 'old text');
    assert.equal(command?.command, 'nextls.client.showRationale');
    assert.deepEqual(command?.arguments, [
      { info: { rationale: 'Skip s[i].', title: 'remove_Occ', diff: '-a\n+b\n', details: ['3/3 tests pass'] }, uri: 'file:///a.py', before: 'old text', then: server, applied: true },
    ]);
    // an unverified best candidate: no edit, so nothing is applied
    const unverified = rationaleCommand('nextls.client.showRationale', { ...payload, passed: 2 }, server);
    assert.equal((unverified?.arguments?.[0] as { applied?: boolean }).applied, false);
    // no rationale (e.g. "nothing to fix" / nextls.showMessage): the server's command stays
    const message = { title: 'm', command: 'nextls.showMessage', arguments: ['all tests pass'] };
    assert.equal(rationaleCommand('x', { uri: 'file:///a.py', resolved: true }, message), undefined);
  });

  test('unified diff of the applied change', () => {
    const before = 'def f(s):\n    a = 1\n    s = s[0:i] + s[i:]\n    return s\n';
    const after = 'def f(s):\n    a = 1\n    s = s[0:i] + s[i + 1:]\n    return s\n';
    assert.equal(
      unifiedDiff(before, after, 'remove_occ.py'),
      '--- a/remove_occ.py\n+++ b/remove_occ.py\n@@ -1,5 +1,5 @@\n def f(s):\n     a = 1\n-    s = s[0:i] + s[i:]\n+    s = s[0:i] + s[i + 1:]\n     return s\n \n',
    );
    assert.equal(unifiedDiff('same\n', 'same\n'), '');
  });

  test('separate hunks for distant changes', () => {
    const before = Array.from({ length: 20 }, (_, i) => `line ${i}`).join('\n');
    const after = before.replace('line 2', 'LINE 2').replace('line 17', 'LINE 17');
    const diff = unifiedDiff(before, after, 'f.py');
    assert.equal((diff.match(/^@@/gm) ?? []).length, 2);
    assert.match(diff, /^-line 2$/m);
    assert.match(diff, /^\+LINE 17$/m);
  });

  test('markdown has the rationale and the diff', () => {
    const md = rationaleMarkdown({ rationale: 'Because.', title: 'f' }, '--- a\n+++ b\n');
    assert.match(md, /^# NExT fix: `f`/);
    assert.match(md, /Because\./);
    assert.match(md, /## Applied change\n\n```diff\n--- a\n\+\+\+ b\n```/);
    const proposed = rationaleMarkdown({ rationale: 'Because.', diff: '-x\n+y\n', details: ['2/3 tests pass'] }, undefined, false);
    assert.match(proposed, /## Best change found \(not applied: it does not pass every test\)/);
    assert.doesNotMatch(proposed, /Applied change/);
  });

  test('command results become markdown, empty ones nothing', () => {
    assert.equal(resultMarkdown('trace', null), undefined);
    assert.equal(resultMarkdown('trace', ''), undefined);
    const trace = resultMarkdown('trace', {
      function: 'remove_Occ',
      file: '/ws/remove_occ.py',
      tests: [{ id: 'assert:remove_occ.py:17', outcome: 'failed', message: "remove_Occ('hello', 'l') returned 'helo', expected 'heo'", duration: 0.01 }],
      traced_test: 'assert:remove_occ.py:17',
      steps: 16,
      rendered: "def remove_Occ(s, ch):  # (0) s='hello', ch='l'\n",
    }) ?? '';
    assert.match(trace, /^# Trace of `remove_Occ`/);
    assert.match(trace, /- \*\*failed\*\* `assert:remove_occ.py:17` — remove_Occ\('hello', 'l'\) returned 'helo'/);
    assert.match(trace, /Traced `assert:remove_occ.py:17` \(16 steps\)/);
    assert.match(trace, /```python\ndef remove_Occ\(s, ch\): {2}# \(0\) s='hello', ch='l'\n```/);

    const explain = resultMarkdown('explain', { function: 'f', explanation: 'The slice keeps it.', origin: 'model' }) ?? '';
    assert.match(explain, /^# Why `f` fails\n\nThe slice keeps it\.\n\n\*model\*/);

    const fix = resultMarkdown('fix', {
      function: 'f',
      failing: 3,
      candidates: [{ status: 'verified', passed: 3, total: 3, reason: '' }],
      device: 'CPU (scripted answers)',
      applied: true,
      best: { function: 'f', status: 'verified', passed: 3, total: 3, summary: 'Skip it.', rationale: 'Skip it.', diff: '-a\n+b\n' },
    }) ?? '';
    assert.match(fix, /\*\*Applied\*\*/);
    assert.match(fix, /## Rationale\n\nSkip it\./);
    assert.match(fix, /3\/3 tests pass/);
    assert.match(fix, /```diff\n-a\n\+b\n```/);
    assert.match(fix, /1\. verified: 3\/3 tests/);
    assert.match(resultMarkdown('fix', { function: 'f', failing: 2, candidates: [], applied: false }) ?? '', /Not applied/);
    assert.equal(resultMarkdown('explain', { markdown: '**why**' }), '**why**');
    assert.match(resultMarkdown('trace', [1, 2]) ?? '', /```json/);
  });
});

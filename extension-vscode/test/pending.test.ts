import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { PendingRationales } from '../src/pending';
import type { ShowRationaleArgument } from '../src/rationale';

const fix = (uri = 'file:///a.py'): ShowRationaleArgument => ({ info: { rationale: 'why' }, uri, before: 'old' });

describe('a resolved fix shows its rationale once', () => {
  test('when its document changes (VS Code dropped the command), and not again when the command runs', () => {
    const shown: ShowRationaleArgument[] = [];
    const pending = new PendingRationales((a) => shown.push(a));
    const argument = pending.arm(fix());
    pending.documentChanged('file:///other.py');
    assert.equal(shown.length, 0);
    pending.documentChanged('file:///a.py');
    assert.deepEqual(shown, [argument]);
    pending.commandRan(argument);
    pending.documentChanged('file:///a.py');
    assert.equal(shown.length, 1);
    pending.dispose();
  });

  test('when the command runs first, and not again on the next change', () => {
    const shown: ShowRationaleArgument[] = [];
    const pending = new PendingRationales((a) => shown.push(a));
    const argument = pending.arm(fix());
    pending.commandRan(argument);
    pending.documentChanged('file:///a.py');
    assert.deepEqual(shown, [argument]);
    pending.dispose();
  });

  test('a newer fix of the same document replaces the armed one; an edit never applied expires', async () => {
    const shown: ShowRationaleArgument[] = [];
    const pending = new PendingRationales((a) => shown.push(a), 20);
    pending.arm(fix());
    const second = pending.arm(fix());
    pending.documentChanged('file:///a.py');
    assert.deepEqual(shown, [second]);
    pending.arm(fix('file:///b.py'));
    await new Promise((resolve) => setTimeout(resolve, 50));
    pending.documentChanged('file:///b.py');
    assert.equal(shown.length, 1);
  });

  test('a command without an armed fix (another client, a test) shows directly', () => {
    const shown: ShowRationaleArgument[] = [];
    new PendingRationales((a) => shown.push(a)).commandRan(fix());
    assert.equal(shown.length, 1);
  });
});

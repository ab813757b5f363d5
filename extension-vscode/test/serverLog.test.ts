import assert from 'node:assert/strict';
import { PassThrough } from 'node:stream';
import { describe, test } from 'node:test';
import { type LevelledLog, SERVER_STDIO, ServerLogLevels } from '../src/serverLog';

describe("the server's log levels in the output channel", () => {
  test('each record at its level; unprefixed lines stay with the record before them', () => {
    const levels = new ServerLogLevels();
    const lines: [string, string][] = [
      ['nextls INFO nextls.lsp.server: started', 'info'],
      ['nextls WARNING nextls.lsp.jobs: answering from x.json, not from a model', 'warn'],
      ['nextls ERROR nextls.lsp.code_actions: fixing f failed', 'error'],
      ['Traceback (most recent call last):', 'error'],
      ['  File "x.py", line 1', 'error'],
      ['nextls DEBUG nextls.worker: forked', 'debug'],
      ['nextls CRITICAL nextls: out of memory', 'error'],
    ];
    assert.deepEqual(
      lines.map(([line]) => [line, levels.levelOf(line)]),
      lines,
    );
  });

  test('an uncaught traceback before any record is an error; other native output is info', () => {
    assert.equal(new ServerLogLevels().levelOf('llama_model_loader: loaded meta data'), 'info');
    assert.equal(new ServerLogLevels().levelOf('Traceback (most recent call last):'), 'error');
  });

  test('stderr piped into the channel: a WARNING line is logged with warn, not error', async () => {
    const seen: string[] = [];
    const log: LevelledLog = {
      debug: (m) => seen.push(`debug ${m}`),
      info: (m) => seen.push(`info ${m}`),
      warn: (m) => seen.push(`warn ${m}`),
      error: (m) => seen.push(`error ${m}`),
    };
    const stderr = new PassThrough();
    SERVER_STDIO.stderr(stderr, log);
    stderr.end('nextls WARNING nextls.lsp.jobs: slow\nnextls INFO nextls: ok\n');
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(seen, ['warn nextls WARNING nextls.lsp.jobs: slow', 'info nextls INFO nextls: ok']);
  });
});

/**
 * The rationale of a quick fix and the diff it applied, as markdown. Pure (no `vscode` import).
 *
 * The server's resolved code action carries the rationale in `data` (or in its command's arguments);
 * `extractRationale` accepts either, so the client does not depend on which one the server uses.
 */

export interface RationaleInfo {
  rationale: string;
  /** The function the fix is for, when the server says. */
  title?: string;
  /** A unified diff from the server, when it sends one. */
  diff?: string;
  /** Anything else worth a line (e.g. "3/3 tests pass"). */
  details?: string[];
}

const RATIONALE_KEYS = ['rationale', 'explanation', 'reasoning'];
const TITLE_KEYS = ['function', 'qualname', 'name', 'title'];

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function fromRecord(record: Record<string, unknown>): RationaleInfo | undefined {
  for (const key of RATIONALE_KEYS) {
    const value = record[key];
    if (typeof value === 'string' && value.trim() !== '') {
      const info: RationaleInfo = { rationale: value };
      for (const titleKey of TITLE_KEYS) {
        if (typeof record[titleKey] === 'string') {
          info.title = record[titleKey];
          break;
        }
      }
      if (typeof record.diff === 'string') {
        info.diff = record.diff;
      }
      const details: string[] = [];
      if (typeof record.tests === 'string') {
        details.push(record.tests);
      } else if (typeof record.passed === 'number' && typeof record.total === 'number') {
        details.push(`${record.passed}/${record.total} tests pass`);
      }
      if (details.length > 0) {
        info.details = details;
      }
      return info;
    }
  }
  for (const nested of ['data', 'fix', 'candidate']) {
    if (isRecord(record[nested])) {
      const info = fromRecord(record[nested]);
      if (info !== undefined) {
        return info;
      }
    }
  }
  return undefined;
}

/** Finds the rationale in a code action's `data` or its command's arguments. */
export function extractRationale(data: unknown, commandArguments?: unknown[]): RationaleInfo | undefined {
  if (isRecord(data)) {
    const info = fromRecord(data);
    if (info !== undefined) {
      return info;
    }
  }
  for (const arg of commandArguments ?? []) {
    if (isRecord(arg)) {
      const info = fromRecord(arg);
      if (info !== undefined) {
        return info;
      }
    }
  }
  return undefined;
}

export interface CommandLike {
  title: string;
  command: string;
  arguments?: unknown[];
}

/** What `nextls.client.showRationale` receives. */
export interface ShowRationaleArgument {
  /** Set by PendingRationales, so one fix's rationale is shown once. */
  id?: number;
  info: RationaleInfo;
  /** The edited document, and its text before the edit (for the diff when the server sends none). */
  uri?: string;
  before?: string;
  /** The server's own command of the action, run after the rationale is shown. */
  then?: CommandLike;
  /** False when the action has no edit (no candidate passes every test): nothing is applied. */
  applied?: boolean;
}

/**
 * The command a resolved quick fix should run once its edit is applied: ours, showing the rationale in a
 * panel beside the editor; undefined (keep the server's command) when the action carries no rationale.
 */
export function rationaleCommand(
  showRationaleId: string,
  data: unknown,
  command: CommandLike | undefined,
  uri?: string,
  before?: string,
): CommandLike | undefined {
  const info = extractRationale(data, command?.arguments);
  if (info === undefined) {
    return undefined;
  }
  const argument: ShowRationaleArgument = { info, uri, before, then: command, applied: uri !== undefined };
  return { title: 'Show the rationale', command: showRationaleId, arguments: [argument] };
}

/** A unified diff of two texts (line LCS; fine for one function). */
export function unifiedDiff(before: string, after: string, name = 'file', context = 3): string {
  const a = before.split('\n');
  const b = after.split('\n');
  if (a.length * b.length > 4_000_000) {
    return `--- a/${name}\n+++ b/${name}\n(too large to diff)\n`;
  }
  // LCS table from the end
  const n = a.length;
  const m = b.length;
  const lcs: Uint32Array[] = Array.from({ length: n + 1 }, () => new Uint32Array(m + 1));
  for (let i = n - 1; i >= 0; i--) {
    for (let j = m - 1; j >= 0; j--) {
      lcs[i][j] = a[i] === b[j] ? lcs[i + 1][j + 1] + 1 : Math.max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  type Op = { tag: ' ' | '-' | '+'; text: string; ai: number; bi: number };
  const ops: Op[] = [];
  let i = 0;
  let j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] === b[j]) {
      ops.push({ tag: ' ', text: a[i], ai: i++, bi: j++ });
    } else if (i < n && (j === m || lcs[i + 1][j] >= lcs[i][j + 1])) {
      ops.push({ tag: '-', text: a[i], ai: i++, bi: j });
    } else {
      ops.push({ tag: '+', text: b[j], ai: i, bi: j++ });
    }
  }
  const changed = ops.map((op, k) => (op.tag !== ' ' ? k : -1)).filter((k) => k >= 0);
  if (changed.length === 0) {
    return '';
  }
  const out = [`--- a/${name}`, `+++ b/${name}`];
  let k = 0;
  while (k < changed.length) {
    let start = Math.max(0, changed[k] - context);
    let end = Math.min(ops.length, changed[k] + context + 1);
    while (k + 1 < changed.length && changed[k + 1] - context <= end) {
      k++;
      end = Math.min(ops.length, changed[k] + context + 1);
    }
    start = Math.max(0, start);
    const hunk = ops.slice(start, end);
    const aStart = hunk[0].ai;
    const bStart = hunk[0].bi;
    const aLen = hunk.filter((op) => op.tag !== '+').length;
    const bLen = hunk.filter((op) => op.tag !== '-').length;
    out.push(`@@ -${aStart + 1},${aLen} +${bStart + 1},${bLen} @@`);
    for (const op of hunk) {
      out.push(op.tag + op.text);
    }
    k++;
  }
  return out.join('\n') + '\n';
}

function fence(text: string, language: string): string {
  const ticks = text.includes('```') ? '````' : '```';
  return `${ticks}${language}\n${text.replace(/\n$/, '')}\n${ticks}`;
}

/** The markdown shown next to the applied fix, or next to the function when no fix could be applied. */
export function rationaleMarkdown(info: RationaleInfo, diff?: string, applied = true): string {
  const parts = [`# NExT fix${info.title ? `: \`${info.title}\`` : ''}`, '', '## Why it failed, and the fix', '', info.rationale.trim()];
  for (const detail of info.details ?? []) {
    parts.push('', `*${detail}*`);
  }
  // the diff of what was applied in the editor, else the server's
  const shown = diff || info.diff;
  if (shown) {
    parts.push('', applied ? '## Applied change' : '## Best change found (not applied: it does not pass every test)', '', fence(shown, 'diff'));
  }
  return parts.join('\n') + '\n';
}

interface TestJson {
  id?: string;
  outcome?: string;
  message?: string;
}

function testLines(tests: unknown): string[] {
  if (!Array.isArray(tests)) {
    return [];
  }
  return (tests as TestJson[]).map((t) => {
    const first = (t.message ?? '').split('\n')[0];
    return `- **${t.outcome ?? '?'}** \`${t.id ?? '?'}\`${first ? ` — ${first}` : ''}`;
  });
}

/**
 * The markdown for what `nextls.traceFunction` / `explainFunction` / `fixFunction` returned
 * (server/nextls/lsp/commands.py); a generic rendering for any other shape; undefined for nothing.
 */
export function resultMarkdown(kind: 'trace' | 'explain' | 'fix', result: unknown): string | undefined {
  if (result === null || result === undefined || typeof result === 'boolean') {
    return undefined;
  }
  if (typeof result === 'string') {
    return result.trim() === '' ? undefined : `${looksLikeCode(result) ? fence(result, 'python') : result}\n`;
  }
  if (!isRecord(result)) {
    return fence(JSON.stringify(result, null, 2), 'json') + '\n';
  }
  if (typeof result.markdown === 'string') {
    return result.markdown;
  }
  const fn = typeof result.function === 'string' ? ` \`${result.function}\`` : '';
  const parts: string[] = [];
  if (kind === 'trace') {
    parts.push(`# Trace of${fn}`);
    const tests = testLines(result.tests);
    if (tests.length > 0) {
      parts.push('', ...tests);
    }
    if (typeof result.traced_test === 'string') {
      parts.push('', `Traced \`${result.traced_test}\`${typeof result.steps === 'number' ? ` (${result.steps} steps)` : ''}:`);
    }
    if (typeof result.rendered === 'string' && result.rendered.trim() !== '') {
      parts.push('', fence(result.rendered, 'python'));
    } else {
      parts.push('', '*No trace was recorded (every test passes, or the traced test did not finish).*');
    }
  } else if (kind === 'explain') {
    parts.push(`# Why${fn} fails`);
    if (typeof result.explanation === 'string') {
      parts.push('', result.explanation.trim());
      if (typeof result.origin === 'string') {
        parts.push('', `*${result.origin}*`);
      }
    } else if (typeof result.message === 'string') {
      parts.push('', result.message);
    }
  } else {
    parts.push(`# Fix of${fn}`);
    const best = isRecord(result.best) ? result.best : undefined;
    if (result.applied === true) {
      parts.push('', '**Applied** a fix that passes every test.');
    } else if (result.failing === 0) {
      parts.push('', 'Every test passes: nothing to fix.');
    } else {
      parts.push('', `**Not applied**: ${best?.status === 'verified' ? 'the edit was not accepted' : 'no candidate passes every test'}.`);
    }
    if (best !== undefined) {
      const info = fromRecord(best);
      if (info !== undefined) {
        parts.push('', '## Rationale', '', info.rationale.trim());
        for (const detail of info.details ?? []) {
          parts.push('', `*${detail}*`);
        }
      }
      if (typeof best.diff === 'string' && best.diff.trim() !== '') {
        parts.push('', '## Change', '', fence(best.diff, 'diff'));
      }
    }
    if (Array.isArray(result.candidates) && result.candidates.length > 0) {
      parts.push('', '## Samples', '');
      (result.candidates as Record<string, unknown>[]).forEach((c, i) => {
        const reason = typeof c.reason === 'string' && c.reason ? ` — ${c.reason}` : '';
        parts.push(`${i + 1}. ${String(c.status)}: ${String(c.passed)}/${String(c.total)} tests${reason}`);
      });
    }
    if (typeof result.device === 'string') {
      parts.push('', `*Model on ${result.device}*`);
    }
  }
  return parts.join('\n') + '\n';
}

function looksLikeCode(text: string): boolean {
  return /^\s*(#|def |class |async def |@)/.test(text);
}

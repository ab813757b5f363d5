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
    } else if (j < m && (i === n || lcs[i][j + 1] >= lcs[i + 1][j])) {
      ops.push({ tag: '+', text: b[j], ai: i, bi: j++ });
    } else {
      ops.push({ tag: '-', text: a[i], ai: i++, bi: j });
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

/** The markdown shown next to the applied fix. */
export function rationaleMarkdown(info: RationaleInfo, diff?: string): string {
  const parts = [`# NExT fix${info.title ? `: \`${info.title}\`` : ''}`, '', '## Why it failed, and the fix', '', info.rationale.trim()];
  for (const detail of info.details ?? []) {
    parts.push('', `*${detail}*`);
  }
  const shown = info.diff ?? diff;
  if (shown) {
    parts.push('', '## Applied change', '', fence(shown, 'diff'));
  }
  return parts.join('\n') + '\n';
}

/** The markdown for what a trace / explain / fix command returned (whatever shape it has). */
export function resultMarkdown(title: string, result: unknown): string | undefined {
  if (result === null || result === undefined || result === true || result === false) {
    return undefined;
  }
  if (typeof result === 'string') {
    return result.trim() === '' ? undefined : `# ${title}\n\n${looksLikeCode(result) ? fence(result, 'python') : result}\n`;
  }
  if (isRecord(result)) {
    if (typeof result.markdown === 'string') {
      return result.markdown;
    }
    const parts = [`# ${title}`];
    if (typeof result.message === 'string') {
      parts.push('', result.message);
    }
    const info = fromRecord(result);
    if (info !== undefined) {
      parts.push('', '## Rationale', '', info.rationale.trim());
    }
    for (const key of ['rendered', 'trace', 'code', 'source', 'new_source']) {
      if (typeof result[key] === 'string' && (result[key] as string).trim() !== '') {
        parts.push('', fence(result[key] as string, 'python'));
        break;
      }
    }
    if (typeof result.diff === 'string') {
      parts.push('', fence(result.diff, 'diff'));
    }
    if (parts.length === 1) {
      parts.push('', fence(JSON.stringify(result, null, 2), 'json'));
    }
    return parts.join('\n') + '\n';
  }
  return `# ${title}\n\n${fence(JSON.stringify(result, null, 2), 'json')}\n`;
}

function looksLikeCode(text: string): boolean {
  return /^\s*(#|def |class |async def |@)/.test(text);
}

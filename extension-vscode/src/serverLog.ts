/**
 * The server's stderr, line by line, at the level it was logged at. vscode-languageclient would log every
 * stderr line as an error; the server's records look like `nextls WARNING nextls.lsp.jobs: message`
 * (server/nextls/lsp/server.py), and the lines that follow a record without that prefix (a traceback)
 * belong to it. No `vscode` import.
 */
import * as readline from 'node:readline';

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const RECORD = /^nextls (DEBUG|INFO|WARNING|ERROR|CRITICAL) /;
const LEVELS: Record<string, LogLevel> = { DEBUG: 'debug', INFO: 'info', WARNING: 'warn', ERROR: 'error', CRITICAL: 'error' };

export class ServerLogLevels {
  /** The level of the last record: its continuation lines get it too. */
  private current: LogLevel = 'info';

  levelOf(line: string): LogLevel {
    const record = RECORD.exec(line);
    if (record !== null) {
      this.current = LEVELS[record[1]];
    } else if (/^Traceback \(most recent call last\):/.test(line)) {
      // an uncaught exception, printed by Python itself
      this.current = 'error';
    }
    return this.current;
  }
}

/** The subset of vscode.LogOutputChannel this needs. */
export type LevelledLog = Record<LogLevel, (message: string) => void>;

function eachLine(input: NodeJS.ReadableStream, handle: (line: string) => void): void {
  readline.createInterface({ input, crlfDelay: Infinity, terminal: false }).on('line', handle);
}

/**
 * vscode-languageclient's `stdioOptions`: stdout lines (only when stdout is not the protocol stream) as
 * info, stderr lines at their level.
 */
export const SERVER_STDIO = {
  stdout: (input: NodeJS.ReadableStream, log: LevelledLog): void => eachLine(input, (line) => log.info(line)),
  stderr: (input: NodeJS.ReadableStream, log: LevelledLog): void => {
    const levels = new ServerLogLevels();
    eachLine(input, (line) => log[levels.levelOf(line)](line));
  },
};

/**
 * A fake `vscode` module for unit tests run by node's test runner outside VS Code: `require('vscode')`
 * returns the object built here. Only what the tested modules touch is implemented, and every call is
 * recorded so tests can assert on it.
 */
import Module from 'node:module';

export interface Recorded {
  commands: Map<string, (...args: unknown[]) => unknown>;
  warnings: string[];
  errors: string[];
  infos: string[];
}

export class Uri {
  private constructor(
    readonly scheme: string,
    readonly path: string,
  ) {}
  static parse(value: string): Uri {
    const match = /^([a-z][\w+.-]*):\/\/(.*)$/i.exec(value);
    return match ? new Uri(match[1], match[2]) : new Uri('file', value);
  }
  static file(fsPath: string): Uri {
    return new Uri('file', fsPath);
  }
  get fsPath(): string {
    return this.path;
  }
  toString(): string {
    return `${this.scheme}://${this.path}`;
  }
}

export class Position {
  constructor(
    readonly line: number,
    readonly character: number,
  ) {}
}

export interface FakeEditor {
  document: { uri: Uri; languageId: string; getText(): string };
  selection: { active: Position };
}

export function createVscodeStub() {
  const recorded: Recorded = { commands: new Map(), warnings: [], errors: [], infos: [] };
  const state: { activeTextEditor: FakeEditor | undefined } = { activeTextEditor: undefined };
  const vscode = {
    Uri,
    Position,
    window: {
      get activeTextEditor() {
        return state.activeTextEditor;
      },
      showWarningMessage: async (message: string) => {
        recorded.warnings.push(message);
        return undefined;
      },
      showErrorMessage: async (message: string) => {
        recorded.errors.push(message);
        return undefined;
      },
      showInformationMessage: async (message: string) => {
        recorded.infos.push(message);
        return undefined;
      },
    },
    commands: {
      registerCommand(id: string, handler: (...args: unknown[]) => unknown) {
        if (recorded.commands.has(id)) {
          throw new Error(`command '${id}' already exists`);
        }
        recorded.commands.set(id, handler);
        return { dispose: () => recorded.commands.delete(id) };
      },
      async executeCommand(id: string, ...args: unknown[]) {
        const handler = recorded.commands.get(id);
        if (handler === undefined) {
          throw new Error(`command '${id}' not found`);
        }
        return handler(...args);
      },
    },
  };
  return { vscode, recorded, state };
}

/** Makes `require('vscode')` return `stub` (for modules loaded after this call). */
export function installVscodeStub(stub: object): void {
  const M = Module as unknown as {
    _resolveFilename: (request: string, ...rest: unknown[]) => string;
    _cache: Record<string, unknown>;
  };
  const original = M._resolveFilename;
  M._resolveFilename = function (this: unknown, request: string, ...rest: unknown[]) {
    return request === 'vscode' ? 'vscode' : original.call(this, request, ...rest);
  };
  const fake = new Module('vscode');
  fake.exports = stub;
  fake.loaded = true;
  M._cache['vscode'] = fake;
}

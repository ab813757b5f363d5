/**
 * Palette / context-menu commands. The three "at cursor" commands forward to the server's
 * `workspace/executeCommand` commands with the document URI and the cursor position; behaviour lives
 * in the server. The client's ids differ from the server's: vscode-languageclient registers the
 * server's own ids as VS Code commands already.
 */
import * as vscode from 'vscode';
import { CLIENT_COMMANDS, SERVER_COMMANDS } from './ids';

export { CLIENT_COMMANDS, SERVER_COMMANDS } from './ids';

export type CursorCommand = 'trace' | 'explain' | 'fix';

export const CURSOR_TITLES: Record<CursorCommand, string> = {
  trace: 'Trace',
  explain: 'Explanation',
  fix: 'Fix',
};

/**
 * The arguments of a server command: one target object with the document URI and the cursor (0-based
 * LSP line and position; the server finds the function around that line). Fix also asks the server to
 * apply a verified fix (`workspace/applyEdit`).
 */
export function cursorArguments(kind: CursorCommand, uri: string, position: { line: number; character: number }): unknown[] {
  const target: Record<string, unknown> = {
    uri,
    line: position.line,
    position: { line: position.line, character: position.character },
  };
  if (kind === 'fix') {
    target.apply = true;
  }
  return [target];
}

export interface CommandHost {
  /** `workspace/executeCommand` on the running server. */
  executeOnServer(command: string, args: unknown[]): Promise<unknown>;
  restart(): Promise<void>;
  /** Installs the server from the bundled wheel (asks where when `nextls.serverInstall` is "ask"). */
  installServer(): Promise<void>;
  /** Rebuilds llama-cpp-python for the GPU found on this machine. */
  rebuildForGpu(): Promise<void>;
  showOutput(): void;
  /** Shows what a command returned (markdown panel); nothing for an empty result. */
  showResult(kind: CursorCommand, document: vscode.Uri, result: unknown): Promise<void>;
  /** Shows a rationale sent with a code action (see middleware in client.ts). */
  showRationale(arg: unknown): Promise<void>;
  /** Reports a failure to the user and the status bar. */
  reportError(message: string): void;
}

export function registerCommands(host: CommandHost): vscode.Disposable[] {
  const atCursor = (kind: CursorCommand) => async (uri?: vscode.Uri, position?: vscode.Position) => {
    const editor = vscode.window.activeTextEditor;
    // Called with (uri, position) from a code lens or another extension, else the active editor.
    const documentUri = uri instanceof vscode.Uri ? uri : editor?.document.uri;
    const cursor = position ?? editor?.selection.active;
    if (documentUri === undefined || cursor === undefined) {
      void vscode.window.showWarningMessage('NExT: open a Python file and put the cursor inside a function.');
      return;
    }
    if (uri === undefined && editor !== undefined && editor.document.languageId !== 'python') {
      void vscode.window.showWarningMessage('NExT: the active editor is not a Python file.');
      return;
    }
    try {
      const result = await host.executeOnServer(SERVER_COMMANDS[kind], cursorArguments(kind, documentUri.toString(), cursor));
      await host.showResult(kind, documentUri, result);
    } catch (error) {
      host.reportError(`${CURSOR_TITLES[kind]} failed: ${error instanceof Error ? error.message : String(error)}`);
    }
  };
  return [
    vscode.commands.registerCommand(CLIENT_COMMANDS.trace, atCursor('trace')),
    vscode.commands.registerCommand(CLIENT_COMMANDS.explain, atCursor('explain')),
    vscode.commands.registerCommand(CLIENT_COMMANDS.fix, atCursor('fix')),
    vscode.commands.registerCommand(CLIENT_COMMANDS.restart, () => host.restart()),
    vscode.commands.registerCommand(CLIENT_COMMANDS.showOutput, () => host.showOutput()),
    vscode.commands.registerCommand(CLIENT_COMMANDS.installServer, () => host.installServer()),
    vscode.commands.registerCommand(CLIENT_COMMANDS.rebuildForGpu, () => host.rebuildForGpu()),
    vscode.commands.registerCommand(CLIENT_COMMANDS.showRationale, (arg: unknown) => host.showRationale(arg)),
  ];
}

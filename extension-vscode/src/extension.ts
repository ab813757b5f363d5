/**
 * Entry point. Activated by `onLanguage:python` only (or by one of its commands); nothing runs at
 * VS Code start-up. Thin on purpose: tracing, explaining, fixing, diagnostics, hovers, inlay hints and
 * code actions all come from the server.
 */
import * as vscode from 'vscode';
import { ServerManager } from './client';
import { CURSOR_TITLES, type CommandHost, type CursorCommand, registerCommands } from './commands';
import { SECTION, classifyChange } from './config';
import { MarkdownPanel } from './panel';
import { type RationaleInfo, rationaleMarkdown, resultMarkdown, unifiedDiff } from './rationale';
import { StatusModel } from './status';

/** What `activate` returns: used by the e2e test and by other extensions. */
export interface NextlsApi {
  readonly manager: ServerManager;
  readonly status: StatusModel;
  readonly panel: MarkdownPanel;
}

export interface ShowRationaleArgument {
  info: RationaleInfo;
  uri?: string;
  before?: string;
  then?: vscode.Command;
}

export function activate(context: vscode.ExtensionContext): NextlsApi {
  const output = vscode.window.createOutputChannel('NExT', { log: true });
  const status = new StatusModel();
  const item = vscode.window.createStatusBarItem('nextls.status', vscode.StatusBarAlignment.Right, 100);
  item.name = 'NExT';
  item.command = 'nextls.showOutput';
  const paint = () => {
    const rendered = status.render();
    item.text = rendered.text;
    item.tooltip = rendered.tooltip;
    item.backgroundColor = rendered.severity === 'error' ? new vscode.ThemeColor('statusBarItem.errorBackground') : undefined;
  };
  status.onChange(paint);
  paint();
  item.show();

  const manager = new ServerManager(output, status);
  const panel = new MarkdownPanel();

  const host: CommandHost = {
    executeOnServer: (command, args) => manager.executeCommand(command, args),
    restart: async () => {
      status.clearError();
      await manager.restart();
    },
    showOutput: () => output.show(true),
    showResult: async (kind: CursorCommand, document: vscode.Uri, result: unknown) => {
      const name = document.path.split('/').pop() ?? '';
      const markdown = resultMarkdown(`${CURSOR_TITLES[kind]}: ${name}`, result);
      if (markdown !== undefined) {
        await panel.show(`NExT ${CURSOR_TITLES[kind].toLowerCase()}: ${name}`, markdown);
      }
    },
    showRationale: async (arg: unknown) => {
      const { info, uri, before, then } = (arg ?? {}) as ShowRationaleArgument;
      if (info === undefined) {
        return;
      }
      let diff: string | undefined;
      if (uri !== undefined && before !== undefined) {
        const after = vscode.workspace.textDocuments.find((d) => d.uri.toString() === uri)?.getText();
        if (after !== undefined) {
          diff = unifiedDiff(before, after, vscode.Uri.parse(uri).path.split('/').pop());
        }
      }
      await panel.show(`NExT rationale${info.title ? `: ${info.title}` : ''}`, rationaleMarkdown(info, diff));
      if (then !== undefined) {
        await vscode.commands.executeCommand(then.command, ...(then.arguments ?? []));
      }
    },
    reportError: (message: string) => {
      status.error(message);
      output.error(message);
      void vscode.window.showErrorMessage(`NExT: ${message}`, 'Show Output').then((choice) => {
        if (choice === 'Show Output') {
          output.show(true);
        }
      });
    },
  };

  context.subscriptions.push(
    output,
    item,
    manager,
    panel,
    ...registerCommands(host),
    vscode.workspace.onDidChangeConfiguration((event) => {
      if (!event.affectsConfiguration(SECTION)) {
        return;
      }
      const change = classifyChange((section) => event.affectsConfiguration(section));
      if (change === 'restart') {
        void host.restart();
      } else if (change === 'refresh') {
        void manager.configurationChanged();
      }
    }),
  );
  void watchPythonExtension(context, manager);
  void manager.start();
  return { manager, status, panel };
}

/** When the Python extension's selected interpreter changes and `nextls.serverPython` is unset: restart. */
async function watchPythonExtension(context: vscode.ExtensionContext, manager: ServerManager): Promise<void> {
  const extension = vscode.extensions.getExtension('ms-python.python');
  if (extension === undefined) {
    return;
  }
  try {
    const api = (extension.isActive ? extension.exports : await extension.activate()) as {
      environments?: { onDidChangeActiveEnvironmentPath?: vscode.Event<unknown> };
    };
    const event = api?.environments?.onDidChangeActiveEnvironmentPath;
    if (event !== undefined) {
      context.subscriptions.push(
        event(() => {
          if (manager.interpreter?.source !== 'setting') {
            void manager.restart();
          }
        }),
      );
    }
  } catch {
    // the Python extension is optional
  }
}

export function deactivate(): Thenable<void> | undefined {
  return undefined;
}

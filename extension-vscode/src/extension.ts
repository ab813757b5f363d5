/**
 * Entry point. Activated by `onLanguage:python` only (or by one of its commands); nothing runs at
 * VS Code start-up. Thin on purpose: tracing, explaining, fixing, diagnostics, hovers, inlay hints and
 * code actions all come from the server.
 */
import * as vscode from 'vscode';
import { ServerManager } from './client';
import { Installer } from './installer';
import { CURSOR_TITLES, type CommandHost, type CursorCommand, SERVER_COMMANDS, registerCommands } from './commands';
import { SECTION, classifyChange } from './config';
import { MarkdownPanel } from './panel';
import { type ShowRationaleArgument, rationaleMarkdown, resultMarkdown, unifiedDiff } from './rationale';
import { PendingRationales } from './pending';
import { StatusModel, deviceFrom } from './status';

/** What `activate` returns: used by the e2e test and by other extensions. */
export interface NextlsApi {
  readonly manager: ServerManager;
  readonly status: StatusModel;
  readonly panel: MarkdownPanel;
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

  const panel = new MarkdownPanel();

  /** The rationale of an applied fix, and the applied change, in the panel beside the editor. */
  const showRationale = async ({ info, uri, before, then, applied }: ShowRationaleArgument): Promise<void> => {
    output.info(`showing the rationale of the fix of ${info.title ?? '?'}`);
    let diff: string | undefined;
    if (uri !== undefined && before !== undefined) {
      const after = vscode.workspace.textDocuments.find((d) => d.uri.toString() === uri)?.getText();
      if (after !== undefined) {
        diff = unifiedDiff(before, after, vscode.Uri.parse(uri).path.split('/').pop());
      }
    }
    await panel.show(`NExT rationale${info.title ? `: ${info.title}` : ''}`, rationaleMarkdown(info, diff, applied ?? true));
    // the server's own nextls.showRationale would repeat the rationale as a message: the panel has it
    if (then !== undefined && then.command !== SERVER_COMMANDS.showRationale) {
      await vscode.commands.executeCommand(then.command, ...(then.arguments ?? []));
    }
  };
  const pending = new PendingRationales((argument) => {
    showRationale(argument).catch((error: unknown) => output.error(`showing the rationale: ${String(error)}`));
  });
  const installer = new Installer(output, context.globalStorageUri.fsPath);
  const manager = new ServerManager(output, status, installer, context.extensionPath, (argument) => {
    const armed = pending.arm(argument);
    if (armed.applied === false) {
      // no edit to wait for, and VS Code may drop the command of a slow resolve: show it now
      pending.commandRan(armed);
    }
  });

  const host: CommandHost = {
    executeOnServer: (command, args) => manager.executeCommand(command, args),
    restart: async () => {
      status.clearError();
      await manager.restart();
    },
    installServer: async () => {
      const choice = await vscode.window.showQuickPick(
        [
          { label: 'Install', target: 'interpreter' as const, detail: "into the server's Python" },
          { label: 'Install in a Private Venv', target: 'privateVenv' as const, detail: 'into a venv the extension makes and owns' },
        ],
        { title: 'NExT: install the server' },
      );
      if (choice !== undefined) {
        await manager.install(choice.target);
      }
    },
    rebuildForGpu: () => manager.rebuildRuntimeForGpu(),
    showOutput: () => output.show(true),
    showResult: async (kind: CursorCommand, document: vscode.Uri, result: unknown) => {
      // fix results say where the model ran; explanations say it in their origin ("x.gguf on CPU, unverified")
      const { device, origin } = (result ?? {}) as { device?: unknown; origin?: unknown };
      const where = typeof device === 'string' ? device : typeof origin === 'string' ? deviceFrom(origin) : undefined;
      if (where !== undefined) {
        status.setModel(undefined, where);
      }
      const markdown = resultMarkdown(kind, result);
      if (markdown !== undefined) {
        const fn = (result as { function?: unknown } | undefined)?.function;
        const name = typeof fn === 'string' ? fn : document.path.split('/').pop() ?? '';
        await panel.show(`NExT ${CURSOR_TITLES[kind].toLowerCase()}: ${name}`, markdown);
      }
    },
    showRationale: async (arg: unknown) => {
      if (arg !== null && typeof arg === 'object' && 'info' in arg) {
        pending.commandRan(arg as ShowRationaleArgument);
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
    pending,
    vscode.workspace.onDidChangeTextDocument((event) => {
      if (event.contentChanges.length > 0) {
        pending.documentChanged(event.document.uri.toString());
      }
    }),
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

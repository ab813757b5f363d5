/**
 * Starts, restarts and stops `<python> -m nextls serve --stdio` through vscode-languageclient, and
 * hooks the few places where the client adds something: the `nextls` configuration the server pulls,
 * work-done progress and error messages for the status bar, and the rationale of a resolved quick fix.
 */
import * as vscode from 'vscode';
import {
  CloseAction,
  type CloseHandlerResult,
  DidChangeConfigurationNotification,
  ErrorAction,
  type ErrorHandlerResult,
  ExecuteCommandRequest,
  LanguageClient,
  type LanguageClientOptions,
  type Message,
  MessageType,
  type ServerOptions,
  ShowMessageNotification,
  State,
} from 'vscode-languageclient/node';
import { CLIENT_COMMANDS } from './commands';
import { SECTION, type ServerConfiguration, configurationItem, expandPath, toServerConfiguration } from './config';
import {
  type Interpreter,
  type PythonExtensionApi,
  describe,
  pipInstallCommands,
  probeServer,
  resolveInterpreter,
  serverCommand,
} from './interpreter';
import { type ShowRationaleArgument, rationaleCommand } from './rationale';
import { type ProgressValue, type StatusModel, deviceFrom } from './status';

export const DOCUMENT_SELECTOR = [
  { scheme: 'file', language: 'python' },
  { scheme: 'untitled', language: 'python' },
];

/** The `nextls` settings for a scope, mapped for the server. */
export function readServerConfiguration(scope?: vscode.Uri): ServerConfiguration {
  const settings = vscode.workspace.getConfiguration(SECTION, scope);
  const folder = (scope ? vscode.workspace.getWorkspaceFolder(scope) : undefined) ?? vscode.workspace.workspaceFolders?.[0];
  return toServerConfiguration((key) => settings.get(key), { workspaceFolder: folder?.uri.fsPath });
}

async function pythonExtensionApi(): Promise<PythonExtensionApi | undefined> {
  const extension = vscode.extensions.getExtension<PythonExtensionApi>('ms-python.python');
  if (extension === undefined) {
    return undefined;
  }
  return extension.isActive ? extension.exports : await extension.activate();
}

export class ServerManager implements vscode.Disposable {
  client: LanguageClient | undefined;
  interpreter: Interpreter | undefined;
  private starting: Promise<void> | undefined;
  private clientListener: vscode.Disposable | undefined;
  /** When the server process exited unasked, in the last 3 minutes. */
  private crashes: number[] = [];
  /** The server registered for workspace/didChangeConfiguration (vscode-languageclient then sends it). */
  private serverSyncsConfiguration = false;

  constructor(
    private readonly output: vscode.LogOutputChannel,
    private readonly status: StatusModel,
    /** Called with each resolved fix's rationale command argument, before VS Code applies its edit. */
    private readonly onFixResolved: (argument: ShowRationaleArgument) => void = () => undefined,
    private readonly showRationaleCommand = CLIENT_COMMANDS.showRationale,
  ) {}

  /** Starts the server unless it runs or is starting; never throws (errors become notifications). */
  start(): Promise<void> {
    if (this.client?.isRunning()) {
      return Promise.resolve();
    }
    this.starting ??= this.doStart().finally(() => (this.starting = undefined));
    return this.starting;
  }

  async restart(): Promise<void> {
    await this.starting;
    await this.stop();
    await this.start();
  }

  async stop(): Promise<void> {
    const client = this.client;
    this.client = undefined;
    if (client !== undefined) {
      try {
        await client.stop(3000);
      } catch (error) {
        this.output.warn(`stopping the server: ${String(error)}`);
      }
      await client.dispose(1000).catch(() => undefined);
    }
    this.status.setPhase('stopped');
  }

  /**
   * A `nextls.*` setting changed. When the server registered for `workspace/didChangeConfiguration`
   * (as nextls does), vscode-languageclient sends it and the middleware below maps the settings;
   * otherwise the notification is sent from here. Either way the running server gets the change.
   */
  async configurationChanged(): Promise<void> {
    const client = this.client;
    if (client === undefined || !client.isRunning()) {
      return;
    }
    if (this.serverSyncsConfiguration) {
      return;
    }
    await this.sendConfiguration(client);
  }

  private async sendConfiguration(client: LanguageClient): Promise<void> {
    if (!client.isRunning() || client !== this.client) {
      return; // stopping or restarting: the next server pulls the settings when it starts
    }
    const settings = { [SECTION]: readServerConfiguration() };
    this.output.info(`settings sent to the server: ${JSON.stringify(settings[SECTION])}`);
    try {
      await client.sendNotification(DidChangeConfigurationNotification.type, { settings });
    } catch (error) {
      this.output.warn(`sending the settings: ${String(error)}`);
    }
  }

  async executeCommand(command: string, args: unknown[]): Promise<unknown> {
    await this.start();
    const client = this.client;
    if (client === undefined || !client.isRunning()) {
      throw new Error('the NExT server is not running');
    }
    return client.sendRequest(ExecuteCommandRequest.type, { command, arguments: args });
  }

  private async doStart(): Promise<void> {
    this.status.setPhase('starting');
    const serverPython = readServerPythonSetting();
    const interpreter = await resolveInterpreter({
      setting: serverPython,
      pythonExtension: pythonExtensionApi,
      resource: vscode.workspace.workspaceFolders?.[0]?.uri,
      log: (message) => this.output.info(message),
    });
    this.interpreter = interpreter;
    this.status.interpreter = describe(interpreter);
    this.output.info(`server Python: ${describe(interpreter)}`);

    const probe = await probeServer(interpreter);
    if (!probe.ok) {
      this.output.error(`cannot start the server with ${describe(interpreter)}: ${probe.detail}`);
      const message =
        probe.reason === 'no-python'
          ? `NExT: cannot run the server's Python "${interpreter.command}". Set "nextls.serverPython" or select an interpreter.`
          : probe.reason === 'no-package'
            ? `NExT: the nextls package is not installed in ${describe(interpreter)}. Install it with: ${pipInstallCommands(interpreter).join(' && ')}`
            : `NExT: the server's Python ${describe(interpreter)} failed: ${probe.detail.split('\n').slice(-1)[0]}`;
      this.status.setPhase('error', message);
      void this.notifyStartFailure(message, probe.reason === 'no-package' ? interpreter : undefined);
      return;
    }
    this.output.info(`nextls ${probe.version}`);

    const launch = serverCommand(interpreter);
    const serverOptions: ServerOptions = {
      command: launch.command,
      args: launch.args,
      options: { env: { ...process.env, PYTHONUNBUFFERED: '1' }, cwd: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath },
    };
    this.serverSyncsConfiguration = false;
    const client = new LanguageClient('nextls', 'NExT', serverOptions, this.clientOptions());
    client.onNotification(ShowMessageNotification.type, (params) => this.showMessage(params.type, params.message));
    this.clientListener?.dispose();
    this.clientListener = client.onDidChangeState((event) => {
      if (event.newState === State.Running) {
        this.status.setPhase('ready');
      } else if (event.newState === State.Stopped && this.client === client) {
        this.status.setPhase('stopped');
      }
    });
    this.client = client;
    try {
      await client.start();
      this.status.setPhase('ready');
      const info = client.initializeResult?.serverInfo;
      this.output.info(`server started: ${info?.name ?? 'nextls'} ${info?.version ?? ''}`);
    } catch (error) {
      const message = `NExT: the server did not start (${launch.command} ${launch.args.join(' ')}): ${
        error instanceof Error ? error.message : String(error)
      }`;
      this.status.setPhase('error', message);
      void this.notifyStartFailure(message);
    }
  }

  private clientOptions(): LanguageClientOptions {
    return {
      documentSelector: DOCUMENT_SELECTOR,
      outputChannel: this.output,
      initializationOptions: readServerConfiguration(),
      errorHandler: {
        error: (error: Error, _message: Message | undefined, count: number | undefined): ErrorHandlerResult => {
          this.status.error(`connection error: ${error.message}`);
          return { action: count !== undefined && count <= 3 ? ErrorAction.Continue : ErrorAction.Shutdown };
        },
        closed: (): CloseHandlerResult => {
          const now = Date.now();
          this.crashes = this.crashes.filter((t) => now - t < 180_000);
          this.crashes.push(now);
          if (this.crashes.length <= 3) {
            this.status.error('the server exited; restarting it');
            return { action: CloseAction.Restart, handled: true };
          }
          const message = 'NExT: the server exited 4 times in 3 minutes and will not be restarted. See the output.';
          this.status.setPhase('error', message);
          void this.notifyStartFailure(message);
          return { action: CloseAction.DoNotRestart, handled: true };
        },
      },
      middleware: {
        workspace: {
          // the settings pushed with workspace/didChangeConfiguration: mapped, without client-only keys
          didChangeConfiguration: async () => {
            // called once when the server registers, then on each change of the section
            this.serverSyncsConfiguration = true;
            if (this.client !== undefined) {
              await this.sendConfiguration(this.client);
            }
          },
          configuration: async (params, token, next) => {
            const defaults = await next(params, token);
            if (!Array.isArray(defaults)) {
              return defaults;
            }
            return params.items.map((item, i) => {
              const scope = item.scopeUri ? vscode.Uri.parse(item.scopeUri) : undefined;
              const mapped = configurationItem(item.section, readServerConfiguration(scope));
              return mapped === undefined ? defaults[i] : mapped;
            });
          },
        },
        handleWorkDoneProgress: (token, params, next) => {
          this.status.progress(token, params as ProgressValue);
          next(token, params);
        },
        resolveCodeAction: async (item, token, next) => {
          const resolved = await next(item, token);
          this.output.info(`resolved code action: ${resolved?.title ?? item.title}`);
          return resolved ? this.withRationale(resolved) : resolved;
        },
      },
    };
  }

  /**
   * A resolved "Fix with NExT" action: keep the server's edit, and run our command after it is applied
   * to show the rationale beside the editor (chaining the server's own command, if it had one).
   */
  private withRationale(action: vscode.CodeAction): vscode.CodeAction {
    const data = (action as vscode.CodeAction & { data?: unknown }).data;
    const device = (data as { device?: unknown } | undefined)?.device;
    if (typeof device === 'string') {
      this.status.setModel(undefined, device);
    }
    const uri = firstEditedUri(action.edit);
    const command = rationaleCommand(
      this.showRationaleCommand,
      data,
      action.command,
      uri?.toString(),
      uri ? documentText(uri) : undefined,
    );
    if (command !== undefined) {
      this.onFixResolved(command.arguments?.[0] as ShowRationaleArgument);
      action.command = command;
    }
    return action;
  }

  private showMessage(type: MessageType, message: string): void {
    if (type === MessageType.Error) {
      this.status.error(message);
      void vscode.window.showErrorMessage(message, 'Show Output').then((choice) => {
        if (choice === 'Show Output') {
          this.output.show(true);
        }
      });
    } else if (type === MessageType.Warning) {
      void vscode.window.showWarningMessage(message);
    } else {
      const device = /model|gguf/i.test(message) ? deviceFrom(message) : undefined;
      if (device !== undefined) {
        this.status.setModel(undefined, device);
      }
      void vscode.window.showInformationMessage(message);
    }
  }

  private async notifyStartFailure(message: string, missingIn?: Interpreter): Promise<void> {
    const actions = ['Open Settings', 'Show Output'];
    if (missingIn !== undefined) {
      actions.unshift('Install with pip', 'Copy pip Command');
    }
    const choice = await vscode.window.showErrorMessage(message, ...actions);
    if (choice === 'Open Settings') {
      await vscode.commands.executeCommand('workbench.action.openSettings', 'nextls.serverPython');
    } else if (choice === 'Show Output') {
      this.output.show(true);
    } else if (choice === 'Copy pip Command' && missingIn !== undefined) {
      await vscode.env.clipboard.writeText(pipInstallCommands(missingIn).join(' && '));
    } else if (choice === 'Install with pip' && missingIn !== undefined) {
      const terminal = vscode.window.createTerminal('NExT: install nextls');
      terminal.show();
      terminal.sendText(pipInstallCommands(missingIn).join(' && '));
    }
  }

  dispose(): void {
    void this.stop();
    this.clientListener?.dispose();
  }
}

export function readServerPythonSetting(): string {
  const value = vscode.workspace.getConfiguration(SECTION).get<string>('serverPython', '');
  return expandPath(typeof value === 'string' ? value : '', { workspaceFolder: vscode.workspace.workspaceFolders?.[0]?.uri.fsPath });
}

function firstEditedUri(edit: vscode.WorkspaceEdit | undefined): vscode.Uri | undefined {
  return edit?.entries()[0]?.[0];
}

function documentText(uri: vscode.Uri): string | undefined {
  return vscode.workspace.textDocuments.find((d) => d.uri.toString() === uri.toString())?.getText();
}

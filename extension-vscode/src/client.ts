/**
 * Starts, restarts and stops `<python> -m nextls serve --stdio` through vscode-languageclient, and
 * hooks the few places where the client adds something: the `nextls` configuration the server pulls,
 * work-done progress and error messages for the status bar, the rationale of a resolved quick fix, and
 * installing (or upgrading) the server from the wheel this extension carries when the Python lacks it.
 */
import * as fs from 'node:fs';
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
  INSTALL_TARGETS,
  type InstallTarget,
  RUNTIME_PACKAGE,
  bundledWheel,
  commandLine,
  detectGpu,
  gpuRebuildPlan,
  installPlan,
  needsUpgrade,
  sha256,
  upgradePlan,
  venvPython,
} from './install';
import { type Installer } from './installer';
import {
  type Interpreter,
  type PythonExtensionApi,
  describe,
  probeServer,
  resolveInterpreter,
  runProcess,
  serverCommand,
} from './interpreter';
import { SERVER_STDIO } from './serverLog';
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
  /** An install, upgrade or rebuild runs: starting the server waits for its end. */
  private installing = false;

  constructor(
    private readonly output: vscode.LogOutputChannel,
    private readonly status: StatusModel,
    private readonly installer: Installer,
    /** The extension's folder: the server wheel is in it. */
    private readonly extensionDir: string,
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

  /** The server's Python: `nextls.serverPython`, the private venv when chosen and made, the Python extension's, python3. */
  private async resolve(withPrivateVenv = true): Promise<Interpreter> {
    const venv = venvPython(this.installer.privateVenvDir);
    return resolveInterpreter({
      setting: readServerPythonSetting(),
      privateVenv: withPrivateVenv && readInstallTarget() === 'privateVenv' && fs.existsSync(venv) ? venv : undefined,
      pythonExtension: pythonExtensionApi,
      resource: vscode.workspace.workspaceFolders?.[0]?.uri,
      log: (message) => this.output.info(message),
    });
  }

  private async doStart(): Promise<void> {
    if (this.installing) {
      this.status.setPhase('installing'); // a restart asked for meanwhile: the install starts the server when it ends
      return;
    }
    this.status.setPhase('starting');
    const interpreter = await this.resolve();
    this.interpreter = interpreter;
    this.status.interpreter = describe(interpreter);
    this.output.info(`server Python: ${describe(interpreter)}`);

    const probe = await probeServer(interpreter);
    if (!probe.ok) {
      this.output.error(`cannot start the server with ${describe(interpreter)}: ${probe.detail}`);
      if (probe.reason === 'no-package') {
        const message = `NExT: the nextls server is not installed in ${describe(interpreter)}.`;
        this.status.setPhase('error', message);
        void this.offerInstall(message, interpreter);
        return;
      }
      const message =
        probe.reason === 'no-python'
          ? `NExT: cannot run the server's Python "${interpreter.command}". Install Python 3.10+, set "nextls.serverPython" or select an interpreter.`
          : `NExT: the server's Python ${describe(interpreter)} failed: ${probe.detail.split('\n').slice(-1)[0]}`;
      this.status.setPhase('error', message);
      void this.notifyStartFailure(message);
      return;
    }
    this.output.info(`nextls ${probe.version}`);
    const wheel = bundledWheel(this.extensionDir);
    if (wheel !== undefined && needsUpgrade(probe.origin, { path: wheel, sha256: sha256(wheel) })) {
      // installed from another version of this extension: upgrading the extension upgrades the server
      this.output.info(`nextls in ${describe(interpreter)} was installed from ${probe.origin?.url}: upgrading it to ${wheel}`);
      await this.whileInstalling(() => this.installer.run('upgrading the server', interpreter, upgradePlan(interpreter, wheel)));
      this.status.setPhase('starting');
    }

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
      // server log records at their own level (the default logs every stderr line as an error)
      stdioOptions: SERVER_STDIO,
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

  private async notifyStartFailure(message: string): Promise<void> {
    const choice = await vscode.window.showErrorMessage(message, 'Open Settings', 'Show Output');
    if (choice === 'Open Settings') {
      await vscode.commands.executeCommand('workbench.action.openSettings', 'nextls.serverPython');
    } else if (choice === 'Show Output') {
      this.output.show(true);
    }
  }

  /** The server is missing from `interpreter`: offer to install it from the wheel this extension carries. */
  private async offerInstall(message: string, interpreter: Interpreter): Promise<void> {
    if (bundledWheel(this.extensionDir) === undefined) {
      await this.notifyStartFailure(
        `${message} This build of the extension carries no server wheel: install nextls from a clone (python -m pip install -e <clone>).`,
      );
      return;
    }
    const target = interpreter.source === 'setting' ? 'interpreter' : readInstallTarget();
    const choices = { ask: [INSTALL_HERE, INSTALL_PRIVATE], interpreter: [INSTALL_HERE], privateVenv: [INSTALL_PRIVATE] }[target];
    const where = {
      ask: 'into that Python, or into a venv of its own',
      interpreter: 'into that Python',
      privateVenv: `into a venv of its own (${this.installer.privateVenvDir})`,
    }[target];
    const choice = await vscode.window.showErrorMessage(
      `${message} Install it from this extension ${where}? This also installs the model runtime (${RUNTIME_PACKAGE}, built from source the first time: 6-11 minutes on 2 cores) and the default model.`,
      ...choices,
      'Open Settings',
    );
    if (choice === INSTALL_HERE || choice === INSTALL_PRIVATE) {
      await this.install(choice === INSTALL_PRIVATE ? 'privateVenv' : 'interpreter');
    } else if (choice === 'Open Settings') {
      await vscode.commands.executeCommand('workbench.action.openSettings', 'nextls.serverInstall');
    }
  }

  /**
   * Installs the server from the bundled wheel into the server's Python, or into the extension's own venv
   * (made from that Python), remembers the choice (`nextls.serverInstall`), and restarts the server.
   */
  async install(target: Exclude<InstallTarget, 'ask'>): Promise<void> {
    const wheel = bundledWheel(this.extensionDir);
    if (wheel === undefined) {
      void this.notifyStartFailure('NExT: this build of the extension carries no server wheel (npm run package builds one).');
      return;
    }
    await this.stop();
    const base = await this.resolve(false);
    const venvDir = target === 'privateVenv' && base.source !== 'setting' ? this.installer.privateVenvDir : undefined;
    const plan = installPlan(base, wheel, venvDir);
    const ok = await this.whileInstalling(async () => {
      if (readServerPythonSetting() === '' && readInstallTarget() !== target) {
        await vscode.workspace.getConfiguration(SECTION).update('serverInstall', target, vscode.ConfigurationTarget.Global);
      }
      this.output.info(`installing the server: ${plan.steps.map(commandLine).join(' && ')}`);
      return this.installer.run(`installing the server into ${describe(plan.python)}`, base, plan, venvDir !== undefined);
    });
    await this.afterInstall(ok, 'installing the server failed: see the output');
  }

  /**
   * Reinstalls llama-cpp-python (same version) built for the GPU found here: CUDA (nvidia-smi), Metal
   * (Apple silicon), else Vulkan; then the status bar shows the device.
   */
  async rebuildRuntimeForGpu(): Promise<void> {
    const python = this.interpreter ?? (await this.resolve());
    const version = await pythonOutput(python, `from importlib.metadata import version; print(version("${RUNTIME_PACKAGE}"))`);
    if (version === undefined) {
      void this.notifyStartFailure(`NExT: ${RUNTIME_PACKAGE} is not installed in ${describe(python)}: install the server first.`);
      return;
    }
    const gpu = await detectGpu(runProcess);
    this.output.info(`GPU build for ${gpu.backend}: ${gpu.evidence}`);
    await this.stop();
    const ok = await this.whileInstalling(() =>
      this.installer.run(`rebuilding ${RUNTIME_PACKAGE} for ${gpu.backend}`, python, gpuRebuildPlan(python, gpu.backend, version)),
    );
    if (ok) {
      const offload = await pythonOutput(python, 'import llama_cpp; print(bool(llama_cpp.llama_supports_gpu_offload()))');
      if (offload === 'True') {
        this.status.setModel(undefined, `GPU (${gpu.backend} build of ${RUNTIME_PACKAGE}; nextls.gpuLayers decides how many layers)`);
        void vscode.window.showInformationMessage(`NExT: ${RUNTIME_PACKAGE} ${version} now runs the model on the GPU (${gpu.backend}).`);
      } else {
        const message = `the rebuilt ${RUNTIME_PACKAGE} reports no GPU offload support (${gpu.evidence}); the model stays on the CPU`;
        this.output.warn(message);
        void vscode.window.showWarningMessage(`NExT: ${message}.`);
      }
    }
    await this.afterInstall(ok, `rebuilding ${RUNTIME_PACKAGE} for ${gpu.backend} failed: see the output`);
  }

  private async whileInstalling(work: () => Promise<boolean>): Promise<boolean> {
    this.installing = true;
    this.status.setPhase('installing');
    try {
      return await work();
    } finally {
      this.installing = false;
    }
  }

  private async afterInstall(ok: boolean, failure: string): Promise<void> {
    if (ok) {
      this.status.clearError();
      await this.start();
    } else {
      this.status.setPhase('error', failure);
    }
  }

  dispose(): void {
    void this.stop();
    this.clientListener?.dispose();
  }
}

const INSTALL_HERE = 'Install';
const INSTALL_PRIVATE = 'Install in a Private Venv';

export function readInstallTarget(): InstallTarget {
  const value = vscode.workspace.getConfiguration(SECTION).get<string>('serverInstall', 'ask');
  return (INSTALL_TARGETS as readonly string[]).includes(value) ? (value as InstallTarget) : 'ask';
}

/** What `python -c code` prints, trimmed; undefined when it fails. */
async function pythonOutput(python: Interpreter, code: string): Promise<string | undefined> {
  const result = await runProcess(python.command, [...python.prefixArgs, '-c', code], 60000);
  return result.code === 0 ? result.stdout.trim() : undefined;
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

/**
 * Runs install plans (install.ts) in VS Code: one cancellable progress notification per plan, pip's
 * output streamed to the NExT output channel, and on failure a notification with the cause and the exact
 * command that failed.
 */
import * as path from 'node:path';
import * as vscode from 'vscode';
import {
  type InstallPlan,
  type Step,
  checkPython,
  commandLine,
  diagnose,
  progressLine,
  runStep,
} from './install';
import { type Interpreter, runProcess } from './interpreter';

export class Installer {
  constructor(
    private readonly output: vscode.LogOutputChannel,
    /** The extension's global storage folder: the private venv lives in it. */
    private readonly storageDir: string,
  ) {}

  get privateVenvDir(): string {
    return path.join(this.storageDir, 'venv');
  }

  /**
   * Checks `checked` (3.10+, pip unless it only makes a venv), then runs the plan's steps; true when all
   * succeeded. Failures and cancellation are reported here.
   */
  async run(title: string, checked: Interpreter, plan: InstallPlan, makesVenv = false): Promise<boolean> {
    const problem = await checkPython(checked, runProcess, !makesVenv);
    if (problem !== undefined) {
      this.output.error(`${title}: ${problem}`);
      void this.notify('error', `NExT: ${title} is not possible: ${problem}.`);
      return false;
    }
    return vscode.window.withProgress(
      { location: vscode.ProgressLocation.Notification, title: `NExT: ${title}`, cancellable: true },
      async (progress, token) => {
        const abort = new AbortController();
        const listener = token.onCancellationRequested(() => abort.abort());
        try {
          for (const [index, step] of plan.steps.entries()) {
            const prefix = `(${index + 1}/${plan.steps.length})`;
            progress.report({ message: `${prefix} ${step.title}` });
            if (!(await this.runOne(title, step, (line) => progress.report({ message: `${prefix} ${line}` }), abort.signal))) {
              return false;
            }
          }
          this.output.info(`${title}: done`);
          return true;
        } finally {
          listener.dispose();
        }
      },
    );
  }

  private async runOne(title: string, step: Step, report: (line: string) => void, signal: AbortSignal): Promise<boolean> {
    const command = commandLine(step);
    this.output.info(`${step.title}: ${command}`);
    const started = Date.now();
    const result = await runStep(
      step,
      (line) => {
        (/^ERROR:/.test(line) ? this.output.error : /^WARNING:/.test(line) ? this.output.warn : this.output.info).call(this.output, line);
        const shown = progressLine(line);
        if (shown !== undefined) {
          report(shown);
        }
      },
      signal,
    );
    const seconds = Math.round((Date.now() - started) / 1000);
    if (result.cancelled) {
      this.output.warn(`${title}: cancelled after ${seconds} s during "${step.title}"`);
      void this.notify('warning', `NExT: ${title} cancelled during "${step.title}". To run that step yourself: ${command}`, command);
      return false;
    }
    if (result.code !== 0) {
      const cause = diagnose(result.output, result.code);
      this.output.error(`${title} failed after ${seconds} s: ${cause}; the command was: ${command}`);
      void this.notify('error', `NExT: ${title} failed: ${cause}. The command was: ${command}`, command);
      return false;
    }
    this.output.info(`${step.title}: done in ${seconds} s`);
    return true;
  }

  private async notify(severity: 'error' | 'warning', message: string, command?: string): Promise<void> {
    const actions = command === undefined ? ['Show Output'] : ['Copy Command', 'Show Output'];
    const show = severity === 'error' ? vscode.window.showErrorMessage : vscode.window.showWarningMessage;
    const choice = await show(message, ...actions);
    if (choice === 'Copy Command' && command !== undefined) {
      await vscode.env.clipboard.writeText(command);
    } else if (choice === 'Show Output') {
      this.output.show(true);
    }
  }
}

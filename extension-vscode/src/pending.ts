/**
 * Shows a quick fix's rationale once its edit is applied -- exactly once.
 *
 * The resolved "Fix with NExT" action carries our `nextls.client.showRationale` command, but VS Code
 * (seen in 1.139) drops the command of an action whose resolve outlives the quick-fix menu: it releases
 * the action's commands when the menu closes, and resolving a fix (trace, samples, verification) takes
 * seconds. The edit is still applied. So the resolved fix is also armed here, and whichever comes first
 * -- the change of the edited document, or the command -- shows the rationale; the other is ignored.
 * No `vscode` import: unit-tested with a fake clock.
 */
import type { ShowRationaleArgument } from './rationale';

interface Armed {
  argument: ShowRationaleArgument;
  timer: ReturnType<typeof setTimeout>;
}

export class PendingRationales {
  private readonly armed = new Map<string, Armed>();
  private readonly shown = new Set<number>();
  private nextId = 1;

  constructor(
    private readonly show: (argument: ShowRationaleArgument) => void,
    private readonly timeoutMs = 60_000,
  ) {}

  /** A fix was resolved: its edit is about to be applied to `argument.uri`. Gives the argument its id. */
  arm(argument: ShowRationaleArgument): ShowRationaleArgument {
    argument.id = this.nextId++;
    if (argument.uri === undefined) {
      return argument;
    }
    this.disarm(argument.uri);
    const timer = setTimeout(() => this.armed.delete(argument.uri as string), this.timeoutMs);
    this.armed.set(argument.uri, { argument, timer });
    return argument;
  }

  /** A document changed: if a fix for it was armed, this is its edit being applied. */
  documentChanged(uri: string): void {
    const armed = this.armed.get(uri);
    if (armed !== undefined) {
      this.disarm(uri);
      this.fire(armed.argument);
    }
  }

  /** The code action's command ran. */
  commandRan(argument: ShowRationaleArgument): void {
    if (argument.id !== undefined && this.shown.has(argument.id)) {
      return;
    }
    if (argument.uri !== undefined && this.armed.get(argument.uri)?.argument.id === argument.id) {
      this.disarm(argument.uri);
    }
    this.fire(argument);
  }

  private fire(argument: ShowRationaleArgument): void {
    if (argument.id !== undefined) {
      this.shown.add(argument.id);
    }
    this.show(argument);
  }

  private disarm(uri: string): void {
    const armed = this.armed.get(uri);
    if (armed !== undefined) {
      clearTimeout(armed.timer);
      this.armed.delete(uri);
    }
  }

  dispose(): void {
    for (const uri of [...this.armed.keys()]) {
      this.disarm(uri);
    }
  }
}

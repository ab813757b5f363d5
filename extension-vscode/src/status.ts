/**
 * The status bar item's state: server starting / ready (model and device) / busy with progress /
 * last error. Pure (no `vscode` import): `render()` gives text and tooltip, the extension applies them.
 */

export type Phase = 'stopped' | 'starting' | 'installing' | 'ready' | 'error';

export interface ProgressBegin {
  kind: 'begin';
  title: string;
  message?: string;
  percentage?: number;
}
export interface ProgressReport {
  kind: 'report';
  message?: string;
  percentage?: number;
}
export interface ProgressEnd {
  kind: 'end';
  message?: string;
}
export type ProgressValue = ProgressBegin | ProgressReport | ProgressEnd;

export interface Rendered {
  text: string;
  tooltip: string;
  /** 'error' paints the item with the error background. */
  severity: 'normal' | 'busy' | 'error';
}

interface Task {
  title: string;
  message?: string;
  percentage?: number;
}

/** "model on GPU", "loaded smol.gguf on CPU", "device: cuda" ... -> GPU / CPU. */
export function deviceFrom(text: string): 'GPU' | 'CPU' | undefined {
  const match = /\b(?:on|device[:=]?)\s+(?:the\s+)?(gpu|cpu|cuda|metal|vulkan)\b/i.exec(text);
  if (match === null) {
    return undefined;
  }
  return match[1].toLowerCase() === 'cpu' ? 'CPU' : 'GPU';
}

/** "GPU (CUDA), 31/31 layers offloaded" -> GPU; "CPU (scripted answers)" -> CPU. */
export function shortDevice(text: string): string {
  const match = /^\s*(GPU|CPU)\b/i.exec(text);
  return match ? match[1].toUpperCase() : deviceFrom(text) ?? text;
}

export class StatusModel {
  phase: Phase = 'stopped';
  model?: string;
  /** GPU / CPU */
  device?: string;
  /** What the server said, e.g. "GPU (CUDA), 31/31 layers offloaded". */
  deviceDetail?: string;
  lastError?: string;
  interpreter?: string;
  private readonly tasks = new Map<string, Task>();
  private readonly listeners: (() => void)[] = [];

  onChange(listener: () => void): void {
    this.listeners.push(listener);
  }

  private changed(): void {
    for (const listener of this.listeners) {
      listener();
    }
  }

  setPhase(phase: Phase, detail?: string): void {
    this.phase = phase;
    if (phase === 'error' && detail !== undefined) {
      this.lastError = detail;
    }
    if (phase !== 'ready') {
      this.tasks.clear();
    }
    this.changed();
  }

  error(message: string): void {
    this.lastError = message;
    this.changed();
  }

  clearError(): void {
    this.lastError = undefined;
    this.changed();
  }

  /** The model the server loaded; the device may also be read from a progress message. */
  setModel(model: string | undefined, device: string | undefined): void {
    this.model = model ?? this.model;
    if (device !== undefined && device !== '') {
      this.deviceDetail = device;
      this.device = shortDevice(device);
    }
    this.changed();
  }

  /** One `$/progress` work-done notification. */
  progress(token: string | number, value: ProgressValue): void {
    const key = String(token);
    if (value.kind === 'begin') {
      this.tasks.set(key, { title: value.title, message: value.message, percentage: value.percentage });
    } else if (value.kind === 'report') {
      const task = this.tasks.get(key);
      if (task !== undefined) {
        task.message = value.message ?? task.message;
        task.percentage = value.percentage ?? task.percentage;
      }
    } else {
      const task = this.tasks.get(key);
      this.tasks.delete(key);
      const device = deviceFrom(`${value.message ?? ''} ${task?.message ?? ''}`);
      if (device !== undefined && task !== undefined && /model/i.test(`${task.title} ${value.message ?? ''}`)) {
        this.device = device;
      }
    }
    if (value.kind !== 'end') {
      const text = value.kind === 'begin' ? `${value.title} ${value.message ?? ''}` : value.message ?? '';
      const device = /model/i.test(text) ? deviceFrom(text) : undefined;
      if (device !== undefined) {
        this.device = device;
      }
    }
    this.changed();
  }

  get busy(): boolean {
    return this.tasks.size > 0;
  }

  render(): Rendered {
    const lines: string[] = [];
    lines.push(`NExT language server: ${this.phase}`);
    if (this.interpreter) {
      lines.push(`Python: ${this.interpreter}`);
    }
    if (this.model || this.device) {
      lines.push(`Model: ${this.model ?? 'loaded'}${this.device ? ` on ${this.deviceDetail ?? this.device}` : ' (not loaded yet)'}`);
    }
    for (const task of this.tasks.values()) {
      lines.push(`Busy: ${formatTask(task)}`);
    }
    if (this.lastError) {
      lines.push(`Last error: ${this.lastError}`);
    }
    lines.push('Click to show the output.');
    const tooltip = lines.join('\n');

    if (this.phase === 'starting') {
      return { text: '$(loading~spin) NExT', tooltip, severity: 'busy' };
    }
    if (this.phase === 'installing') {
      return { text: '$(cloud-download) NExT: installing', tooltip, severity: 'busy' };
    }
    if (this.phase === 'stopped') {
      return { text: '$(circle-slash) NExT', tooltip, severity: 'normal' };
    }
    if (this.phase === 'error') {
      return { text: '$(error) NExT', tooltip, severity: 'error' };
    }
    const tasks = [...this.tasks.values()];
    if (tasks.length > 0) {
      const task = tasks[tasks.length - 1];
      const more = tasks.length > 1 ? ` (+${tasks.length - 1})` : '';
      return { text: `$(sync~spin) NExT: ${formatTask(task)}${more}`, tooltip, severity: 'busy' };
    }
    const device = this.device ? ` ${this.device}` : '';
    if (this.lastError) {
      return { text: `$(warning) NExT${device}`, tooltip, severity: 'error' };
    }
    return { text: `$(beaker) NExT${device}`, tooltip, severity: 'normal' };
  }
}

function formatTask(task: Task): string {
  // the server's titles start with "NExT: " already; the item says it once
  const title = task.title.replace(/^NExT:\s*/, '');
  const pct = task.percentage !== undefined ? ` ${Math.round(task.percentage)}%` : '';
  const message = task.message ? ` - ${task.message}` : '';
  return `${title}${pct}${message}`;
}

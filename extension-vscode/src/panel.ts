/**
 * A webview beside the editor that shows markdown (a fix's rationale and applied diff, a trace, an
 * explanation). Rendered by VS Code's built-in markdown extension (`markdown.api.render`), falling
 * back to preformatted text. No scripts run in it.
 */
import * as vscode from 'vscode';

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c] ?? c);
}

export class MarkdownPanel implements vscode.Disposable {
  private panel: vscode.WebviewPanel | undefined;
  /** The markdown last shown (the e2e test and the unit tests read it). */
  lastMarkdown: string | undefined;

  async show(title: string, markdown: string): Promise<void> {
    this.lastMarkdown = markdown;
    let body: string;
    try {
      const rendered = await vscode.commands.executeCommand<string>('markdown.api.render', markdown);
      body = typeof rendered === 'string' ? rendered : `<pre>${escapeHtml(markdown)}</pre>`;
    } catch {
      body = `<pre>${escapeHtml(markdown)}</pre>`;
    }
    if (this.panel === undefined) {
      this.panel = vscode.window.createWebviewPanel(
        'nextls.markdown',
        title,
        { viewColumn: vscode.ViewColumn.Beside, preserveFocus: true },
        { enableScripts: false, enableFindWidget: true },
      );
      this.panel.onDidDispose(() => (this.panel = undefined));
    } else {
      this.panel.title = title;
      this.panel.reveal(vscode.ViewColumn.Beside, true);
    }
    this.panel.webview.html = page(title, body, this.panel.webview.cspSource);
  }

  dispose(): void {
    this.panel?.dispose();
  }
}

function page(title: string, body: string, cspSource: string): string {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="UTF-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; style-src ${cspSource} 'unsafe-inline'; img-src ${cspSource} https: data:;">
<title>${escapeHtml(title)}</title>
<style>
  body { font-family: var(--vscode-font-family); font-size: var(--vscode-font-size); color: var(--vscode-foreground); padding: 0 16px; line-height: 1.5; }
  pre, code { font-family: var(--vscode-editor-font-family); font-size: var(--vscode-editor-font-size); }
  pre { background: var(--vscode-textCodeBlock-background); padding: 8px; overflow-x: auto; }
  pre code { background: transparent; padding: 0; }
  h1 { font-size: 1.4em; } h2 { font-size: 1.15em; }
</style>
</head>
<body class="nextls-panel">
${body}
</body>
</html>`;
}

"""Language-server latency on the example file: hover (warm), inlay hints, and the quick fix's resolve.

    OMP_WAIT_POLICY=PASSIVE python tests/benchmarks/bench_lsp.py [--model X.gguf] [-k 4] [--hovers 200]
                                                                [--repeat 3] [--backend debugpy|inprocess]

Starts `nextls serve --stdio` as an editor would, opens server/examples/remove_occ.py (never written),
and prints: time to the diagnostic and to the background trace; hover p50/p95 once traced (on a line and
on a name, without the explanation, then with it cached); inlay-hint p50/p95; then `codeAction/resolve`
of "Fix with NExT" `--repeat` times (the caches cleared in between; the first includes loading the model),
split into trace / generate / verify as the server reports them, next to the wall time the client saw.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

from lsprotocol import types
from pytest_lsp import client_capabilities
from pytest_lsp.client import make_test_lsp_client

EXAMPLE = Path(__file__).resolve().parents[2] / "server" / "examples" / "remove_occ.py"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def ms(values: list[float]) -> str:
    return f"p50 {1000 * statistics.median(values):6.1f} ms   p95 {1000 * percentile(values, 0.95):6.1f} ms"


async def wait_until(condition, what: str, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        await asyncio.sleep(0.01)


def ended(client, title: str) -> bool:
    return any(reports and isinstance(reports[0], types.WorkDoneProgressBegin) and reports[0].title.startswith(title)
               and isinstance(reports[-1], types.WorkDoneProgressEnd) for reports in client.progress_reports.values())


async def main(args: argparse.Namespace) -> None:
    settings = {"k": args.k, "maxTokens": args.max_tokens, "traceBackend": args.backend, "debounceMs": 0,
                "explainOnHover": False, "hoverBudgetMs": 300, "threads": args.threads}
    if args.model:
        settings["modelPath"] = args.model
    client = make_test_lsp_client()
    client.set_configuration({"nextls": settings})
    client.feature(types.CLIENT_REGISTER_CAPABILITY)(lambda params: None)
    await client.start_io(sys.executable, "-m", "nextls", "serve", "--stdio",
                          env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    root = EXAMPLE.parent
    await client.initialize_session(types.InitializeParams(
        capabilities=client_capabilities("visual-studio-code"), root_uri=root.as_uri()))
    uri = EXAMPLE.as_uri()
    document = types.TextDocumentIdentifier(uri=uri)
    print(f"# nextls serve on {EXAMPLE.relative_to(EXAMPLE.parents[2])}, trace backend {args.backend}, "
          f"Python {platform.python_version()}, {os.cpu_count()} CPUs")
    started = time.perf_counter()
    client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
        uri=uri, language_id="python", version=1, text=EXAMPLE.read_text())))
    await wait_until(lambda: client.diagnostics.get(uri), "the diagnostic")
    print(f"open -> diagnostic        {time.perf_counter() - started:6.2f} s   (tests run untraced)")
    await wait_until(lambda: ended(client, "NExT: tracing remove_Occ"), "the trace")
    print(f"open -> trace cached      {time.perf_counter() - started:6.2f} s   (then hovers and hints are instant)")

    async def hover(line: int, character: int) -> float:
        began = time.perf_counter()
        result = await client.text_document_hover_async(types.HoverParams(
            text_document=document, position=types.Position(line, character)))
        assert result is not None
        return time.perf_counter() - began

    positions = [(7, 14), (11, 12), (5, 8), (13, 11)]  # two lines, two names
    latencies = [await hover(*positions[index % len(positions)]) for index in range(args.hovers)]
    print(f"hover, trace only         {ms(latencies)}   ({args.hovers} requests)")

    client.workspace_did_change_configuration(types.DidChangeConfigurationParams(
        settings={"nextls": {**settings, "explainOnHover": True}}))
    await hover(7, 14)  # starts the explanation (loads the model)
    began = time.perf_counter()
    await wait_until(lambda: ended(client, "NExT: explaining remove_Occ"), "the explanation")
    print(f"explanation (background)  {time.perf_counter() - began:6.2f} s   (model load + one greedy answer)")
    latencies = [await hover(*positions[index % len(positions)]) for index in range(args.hovers)]
    print(f"hover, with explanation   {ms(latencies)}")

    hints = []
    for _ in range(args.hovers):
        began = time.perf_counter()
        found = await client.text_document_inlay_hint_async(types.InlayHintParams(
            text_document=document, range=types.Range(types.Position(0, 0), types.Position(30, 0))))
        hints.append(time.perf_counter() - began)
    print(f"inlay hints ({len(found)} hints)     {ms(hints)}")

    [diagnostic] = client.diagnostics[uri]
    [lazy] = await client.text_document_code_action_async(types.CodeActionParams(
        text_document=document, range=diagnostic.range, context=types.CodeActionContext(diagnostics=[diagnostic])))
    print(f"quick fix: k={args.k}, max_tokens={args.max_tokens}; resolve = trace + generate + verify")
    print("run   wall s   trace   generate   verify   result")
    stages: dict[str, list[float]] = {"wall": [], "trace": [], "generate": [], "verify": []}
    for run in range(args.repeat):
        await client.workspace_execute_command_async(types.ExecuteCommandParams(command="nextls.clearCache"))
        began = time.perf_counter()
        resolved = await client.code_action_resolve_async(lazy)
        wall = time.perf_counter() - began
        timings = resolved.data["timings"]
        stages["wall"].append(wall)
        for name in ("trace", "generate", "verify"):
            stages[name].append(timings.get(name, 0.0))
        print(f"{run + 1:>3}   {wall:6.2f}   {timings.get('trace', 0):5.2f}   {timings.get('generate', 0):8.2f}   "
              f"{timings.get('verify', 0):6.2f}   {resolved.title}")
    print("median " + "   ".join(f"{name} {statistics.median(values):.2f}s" for name, values in stages.items())
          + f"   (device: {resolved.data['device']})")
    await client.shutdown_session()
    await client.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="GGUF model (default: the embedded SmolLM2-135M-Instruct)")
    parser.add_argument("-k", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hovers", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", choices=("debugpy", "inprocess"), default="debugpy")
    asyncio.run(main(parser.parse_args()))

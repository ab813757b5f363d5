"""Files with many tested functions: test discovery one function at a time against one pass, and the
server's diagnostics for such a file next to the hovers on another document meanwhile.

    OMP_WAIT_POLICY=PASSIVE python tests/benchmarks/bench_discovery.py [--functions 250 500 1000] [--repeat 3]
                                                                     [--no-server]

Writes a module with N functions, each with a plain assert below it and a pytest test in a test file
next to it, and prints, per N, the median seconds of `discover_tests` called for every function (what
the server's diagnostics did before) and of one `discover_all_tests` call, and their ratio. Then, unless
`--no-server`, per N: `nextls serve` opens such a file (one function in 50 failing): the seconds to its
first diagnostics and to all of them, while a hover on another document is sent every 0.1 s (its
slowest answer is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from lsprotocol import types
from pytest_lsp.client import make_test_lsp_client
from timing import median_seconds

from nextls.discovery import discover_all_tests, discover_tests
from nextls.splice import list_functions


def write_workspace(root: Path, count: int, failing_every: int = 0) -> tuple[Path, str]:
    """`mod.py` with `count` tested functions (every `failing_every`-th one wrong), and `test_mod.py`."""
    (root / "pytest.ini").write_text("[pytest]\n")
    module = "\n\n".join(f"def f{i}(x):\n    return x + {i + bool(failing_every and i % failing_every == 0)}\n\n\n"
                         f"assert f{i}(1) == {i + 1}\n" for i in range(count))
    tests = "from mod import *\n\n" + "\n".join(f"def test_f{i}():\n    assert f{i}(0) == {i}\n" for i in range(count))
    (root / "mod.py").write_text(module)
    (root / "test_mod.py").write_text(tests)
    return root / "mod.py", module


async def diagnostics_through_the_server(root: Path, file: Path, expected: int) -> tuple[float, float, float]:
    """Seconds from didOpen to the file's first diagnostics and to all `expected` of them, and the slowest
    hover on another document meanwhile."""
    client = make_test_lsp_client()
    client.set_configuration({"nextls": {"debounceMs": 0, "traceFailing": 0, "explainOnHover": False}})
    client.feature(types.CLIENT_REGISTER_CAPABILITY)(lambda params: None)
    await client.start_io(sys.executable, "-m", "nextls", "serve", env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"})
    try:
        await client.initialize_session(types.InitializeParams(capabilities=types.ClientCapabilities(
            workspace=types.WorkspaceClientCapabilities(configuration=True)), root_uri=root.as_uri()))
        other = root / "other.py"
        other.write_text("def other(x):\n    return x\n")
        for path in (other, file):
            client.text_document_did_open(types.DidOpenTextDocumentParams(text_document=types.TextDocumentItem(
                uri=path.as_uri(), language_id="python", version=1, text=path.read_text())))
        started = time.perf_counter()
        first, slowest = None, 0.0
        while len(client.diagnostics.get(file.as_uri(), [])) < expected:
            if first is None and client.diagnostics.get(file.as_uri()):
                first = time.perf_counter() - started
            began = time.perf_counter()
            await client.text_document_hover_async(types.HoverParams(
                text_document=types.TextDocumentIdentifier(uri=other.as_uri()), position=types.Position(0, 5)))
            slowest = max(slowest, time.perf_counter() - began)
            await asyncio.sleep(0.1)
        everything = time.perf_counter() - started
        return first or everything, everything, slowest
    finally:
        await client.shutdown_session()
        await client.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--functions", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-server", action="store_true", help="only the discovery figures")
    args = parser.parse_args()
    print(f"# CPython {platform.python_version()}, {platform.machine()}, median of {args.repeat}")
    print(f"{'functions':>9}  {'per function (s)':>16}  {'one pass (s)':>12}  {'ratio':>7}")
    for count in args.functions:
        with tempfile.TemporaryDirectory() as folder:
            file, source = write_workspace(Path(folder), count)
            spans = list_functions(source)

            def per_function(file=file, source=source, spans=spans, root=Path(folder)) -> None:
                for span in spans:
                    assert len(discover_tests(file, source, span, root=root)) == 2

            def one_pass(file=file, source=source, spans=spans, root=Path(folder)) -> None:
                assert all(len(tests) == 2 for tests in discover_all_tests(file, source, spans, root=root).values())

            slow = median_seconds(per_function, args.repeat)
            fast = median_seconds(one_pass, args.repeat)
            print(f"{count:>9}  {slow:>16.3f}  {fast:>12.4f}  {slow / fast:>6.0f}x")
            sys.stdout.flush()
    if args.no_server:
        return
    print(f"\n{'functions':>9}  {'open -> first diagnostics (s)':>29}  {'-> all (s)':>10}  {'slowest hover (s)':>17}")
    for count in args.functions:
        with tempfile.TemporaryDirectory() as folder:
            file, _ = write_workspace(Path(folder), count, failing_every=50)
            first, everything, slowest = asyncio.run(
                diagnostics_through_the_server(Path(folder), file, expected=len(range(0, count, 50))))
            print(f"{count:>9}  {first:>29.2f}  {everything:>10.2f}  {slowest:>17.3f}")
            sys.stdout.flush()


if __name__ == "__main__":
    main()

"""The repair datasets (nextls_train.data, nextls_train.mutate): a tiny MBPP-like build, and a few real tasks.

Builds here use a made-up `mbpp.jsonl` of six problems (so they run without the raw data); the HeFix+ and
MBPP checks on real data skip when `../shared/data` is missing.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from nextls.trace.capture import trace_function
from nextls_train import cli, data, mutate

SHARED = data.DEFAULT_DATA_DIR
needs_shared = pytest.mark.skipif(not (SHARED / data.INPUT_FILES["mbpp"]).exists(), reason="no ../shared/data")

COUNT_VOWELS = """def count_vowels(s):
    count = 0
    for ch in s:
        if ch in 'aeiou':
            count += 1
    return count
"""

PROBLEMS = [
    (511, "Write a function to count the vowels of a string.", COUNT_VOWELS,
     ["assert count_vowels('hello') == 2", "assert count_vowels('sky') == 0", "assert count_vowels('aeiou') == 5"]),
    (512, "Write a function to find the largest number of a list.",
     "def max_of(nums):\r\n    best = nums[0]\r\n    for n in nums[1:]:\r\n        if n > best:\r\n"
     "            best = n\r\n    return best\r\n",
     ["assert max_of([1, 5, 2]) == 5", "assert max_of([-3, -1]) == -1", "assert max_of([7]) == 7"]),
    (601, "Write a function to sum the squares of the even numbers of a list.",
     "def sum_even_squares(nums):\n    total = 0\n    for n in nums:\n        if n % 2 == 0:\n"
     "            total += n * n\n    return total\n",
     ["assert sum_even_squares([1, 2, 3, 4]) == 20", "assert sum_even_squares([]) == 0",
      "assert sum_even_squares([6]) == 36"]),
    (602, "Write a function to count the vowels in a word.", COUNT_VOWELS.replace("count_vowels", "vowels"),
     ["assert vowels('banana') == 3", "assert vowels('xyz') == 0", "assert vowels('io') == 2"]),
    (603, "Write a function that doubles a number.", "def double(x):\n    return x * 3\n",
     ["assert double(2) == 4", "assert double(0) == 0", "assert double(5) == 10"]),
    (604, "Write a function to reverse the words of a sentence.",
     "def reverse_words(s):\n    return ' '.join(reversed(s.split()))\n",
     ["assert reverse_words('a b c') == 'c b a'", "assert reverse_words('hi') == 'hi'",
      "assert reverse_words('one two') == 'two one'"]),
]


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("raw")
    (root / "mbpp").mkdir()
    rows = [{"text": text, "code": code, "task_id": task_id, "test_setup_code": "", "test_list": tests,
             "challenge_test_list": []} for task_id, text, code, tests in PROBLEMS]
    (root / "mbpp" / "mbpp.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return root


def _samples_file(out: Path) -> None:
    """Recorded 'model samples' for problem 601: a real bug, the same bug reformatted (a duplicate), a
    correct program, and an answer without code."""
    bug = "```python\ndef sum_even_squares(nums):\n    return sum(n * n for n in nums)\n```\n"
    same = "Here:\n```python\ndef sum_even_squares(nums):\n    # squares\n    return sum((n * n for n in nums))\n```"
    right = "```python\ndef sum_even_squares(nums):\n    return sum(n * n for n in nums if n % 2 == 0)\n```"
    texts = [bug, same, right, "I cannot do that."]
    data.write_jsonl(out / data.SAMPLES_FILE, [
        {"problem": 601, "index": i, "seed": 601_000 + i, "text": text, "finish_reason": "stop",
         "completion_tokens": 10} for i, text in enumerate(texts)])


def _config(out: Path, raw: Path, **changes) -> data.BuildConfig:
    settings = {"out": out, "data_dir": raw, "only": ("mbppr",), "use_model": False, "progress": False,
                "samples": data.SampleSettings(per_problem=4), "mbppr": data.MbpprSettings(cap=4, attempts=12),
                "log": lambda message: None}
    settings.update(changes)
    return data.BuildConfig(**settings)


def _outputs(out: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(out.iterdir()) if path.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    out = tmp_path_factory.mktemp("built")
    _samples_file(out)
    manifest = data.build(_config(out, tiny_data))
    assert manifest["check_failures"] == []
    return out


# -- mutations ------------------------------------------------------------------------------------------------

BUGGABLE = '''import math


def score(words, bonus):
    """Score the words: long ones count double, short ones once."""
    total = 0
    for word in words:
        if len(word) > 3 and word.isalpha():
            total += 2
        else:
            total = total + 1
    result = max(total, bonus)  # the bonus is a floor
    return math.floor(result) if result else 0
'''
BUGGABLE_TESTS = ["assert score(['house', 'a'], 0) == 3", "assert score([], 5) == 5",
                  "assert score(['abc', 'abcd', 'xy'], 1) == 4", "assert score(['more', 'words'], 2) == 4"]


def test_mutations_of_each_class_parse_differ_and_fail(tmp_path: Path) -> None:
    found = mutate.mutations(BUGGABLE, "score")
    assert {m.bug_class for m in found} == set(mutate.BUG_CLASSES)
    original = mutate.normalized_ast(BUGGABLE)
    workspace = data.Workspace(tmp_path)
    for bug_class in mutate.BUG_CLASSES:
        failing = None
        for mutation in [m for m in found if m.bug_class == bug_class][:8]:
            assert mutation.code != BUGGABLE
            assert mutate.normalized_ast(mutation.code) not in (None, original)
            assert mutation.description.startswith(bug_class)
            probe = data.probe(mutation.code, "score", BUGGABLE_TESTS, settings=data.RunSettings(), workspace=workspace,
                               trace=False)
            if probe.failing_index is not None:
                failing = mutation
                break
        assert failing is not None, f"no failing {bug_class} mutant"
    assert data.probe(BUGGABLE, "score", BUGGABLE_TESTS, workspace=workspace, trace=False).passed


def test_mutations_are_small_edits_and_only_inside_the_target() -> None:
    for mutation in mutate.mutations(BUGGABLE, "score"):
        old, new = BUGGABLE.splitlines(), mutation.code.splitlines()
        assert old[:4] == new[:4]  # the import and the def line are never touched
        changed = [i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b]
        if len(old) == len(new):
            assert len(changed) == 1, mutation.description
        assert abs(len(old) - len(new)) <= 2, mutation.description
    assert mutate.mutations(BUGGABLE, "no_such_function") == []


def test_mutations_and_their_pick_are_deterministic() -> None:
    first, second = mutate.mutations(BUGGABLE, "score"), mutate.mutations(BUGGABLE, "score")
    assert first == second
    picked = mutate.pick(first, 12, seed=3)
    assert picked == mutate.pick(second, 12, seed=3)
    assert picked != mutate.pick(first, 12, seed=4)
    assert len({m.bug_class for m in picked[:6]}) == 6  # the classes take turns
    assert len({m.code for m in first}) == len(first)


@pytest.mark.parametrize(("source", "expected"), [
    ("def f(x):\n    return x < 1\n", "`<` -> `<=`"),
    ("def f(x):\n    return -1 if x else 2\n", "`-1` -> `0`"),
    ("def f(s):\n    return [c for c in s if c != ' ']\n", "`c` -> `s`"),
    ("def f(s):\n    return s.upper()\n", "`.upper()` -> `.lower()`"),
    ("def f(n):\n    out = []\n    for i in range(n):\n        out.append(i)\n    return out\n", "repeated"),
])
def test_mutation_examples(source: str, expected: str) -> None:
    assert any(expected in m.description for m in mutate.mutations(source, "f"))


def test_normalized_ast_ignores_formatting_comments_and_docstrings() -> None:
    a = "def f(x):\n    '''Doc.'''\n    return (x+1)  # one more\n"
    b = "def f(x):\n    return x + 1\n"
    assert mutate.normalized_ast(a) == mutate.normalized_ast(b)
    assert mutate.normalized_ast("def f(x):\n    return x + 2\n") != mutate.normalized_ast(b)
    assert mutate.normalized_ast("def f(:\n") is None


# -- the record and its files ------------------------------------------------------------------------------------


def test_jsonl_gz_is_byte_identical_and_round_trips(tmp_path: Path) -> None:
    rows = [{"id": i, "text": "é" * i} for i in range(5)]
    data.write_jsonl(tmp_path / "a.jsonl.gz", rows)
    data.write_jsonl(tmp_path / "b.jsonl.gz", rows)
    assert (tmp_path / "a.jsonl.gz").read_bytes() == (tmp_path / "b.jsonl.gz").read_bytes()
    assert list(data.read_jsonl(tmp_path / "a.jsonl.gz")) == rows
    assert gzip.decompress((tmp_path / "a.jsonl.gz").read_bytes()).decode().count("\n") == 5


def test_stage_log_drops_a_cut_line_and_restarts_on_new_settings(tmp_path: Path) -> None:
    path = tmp_path / "stage.log.jsonl"
    log = data.StageLog(path, {"v": 1})
    log.append({"n": 1})
    log.append({"n": 2})
    log.close()
    with open(path, "a") as out:
        out.write('{"n": 3')  # killed mid-write
    log = data.StageLog(path, {"v": 1})
    assert log.entries == [{"n": 1}, {"n": 2}]
    log.append({"n": 4})
    log.close()
    assert data.StageLog(path, {"v": 1}).entries == [{"n": 1}, {"n": 2}, {"n": 4}]
    assert data.StageLog(path, {"v": 2}).entries == []


def test_mbpp_split_and_entry_point() -> None:
    assert [data.mbpp_split(i) for i in (1, 10, 11, 510, 511, 600, 601, 974)] == [
        "prompt", "prompt", "test", "test", "dev", "dev", "train", "train"]
    assert data.entry_point("def helper(x):\n    return x\ndef main(x):\n    return helper(x)\n",
                            ["assert int(main(3)) == 3"]) == "main"


# -- the build ---------------------------------------------------------------------------------------------------


def test_build_writes_verified_traced_tasks(built: Path) -> None:
    train, dev = data.load_split("train", built), data.load_split("dev", built)
    assert {t.problem_id for t in train} == {"mbpp/601", "mbpp/604"}
    assert {t.problem_id for t in dev} == {"mbpp/511", "mbpp/512"}
    for task in train + dev:
        assert data.validate(task) == []
        assert task.results[task.failing_test]["outcome"] != "passed"
        assert task.trace.startswith("def ") and task.tests[task.failing_test] in task.trace
        assert task.failing_message in task.trace
        assert "\r" not in task.fix_code  # 512's CRLF code is normalized
    counts = {p: sum(t.problem_id == p for t in train + dev) for p in ("mbpp/601", "mbpp/604", "mbpp/511")}
    assert all(0 < count <= 4 for count in counts.values())
    manifest = json.loads((built / data.MANIFEST_FILE).read_text())
    assert manifest["mbppr"]["excluded"]["mbpp/602"].startswith("same code as dev problem mbpp/511")
    assert "reference solution fails" in manifest["mbppr"]["excluded"]["mbpp/603"]
    assert manifest["files"][data.MBPPR_FILES["train"]]["tasks"] == len(train)
    assert json.loads((built / data.SCHEMA_FILE).read_text())["required"][0] == "id"


def test_model_samples_are_tagged_and_deduplicated(built: Path) -> None:
    samples = [t for t in data.load_split("train", built) if t.source == data.SOURCE_MODEL]
    assert [t.meta["sample_index"] for t in samples] == [0]  # 1 duplicates 0, 2 is correct, 3 has no code
    assert samples[0].bug_class is None
    rejected = json.loads((built / data.MANIFEST_FILE).read_text())["mbppr"]["rejected"]
    assert rejected["model-sample: duplicate"] == 1
    assert rejected["model-sample: passes every test"] == 1
    assert rejected["model-sample: unusable answer"] == 1


def test_rebuild_is_byte_identical(built: Path, tiny_data: Path, tmp_path: Path) -> None:
    _samples_file(tmp_path)
    data.build(_config(tmp_path, tiny_data))
    assert _outputs(tmp_path) == _outputs(built)


def test_interrupted_build_resumes_without_rerunning(built: Path, tiny_data: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    _samples_file(tmp_path)
    real = data.verify_program
    calls = []

    def dying(*args, **kwargs):
        if len(calls) == 5:
            raise KeyboardInterrupt  # as if killed
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "verify_program", dying)
    with pytest.raises(KeyboardInterrupt):
        data.build(_config(tmp_path, tiny_data, workers=1))
    assert not (tmp_path / data.MBPPR_FILES["train"]).exists()
    resumed = []
    monkeypatch.setattr(data, "verify_program", lambda *a, **k: resumed.append(1) or real(*a, **k))
    data.build(_config(tmp_path, tiny_data, workers=1))
    assert _outputs(tmp_path) == _outputs(built)
    total = sum(1 for line in (built / data.WORK_DIR / "mbppr-runs.log.jsonl").open()) - 1 - 5  # header, refs
    assert len(resumed) == total - 5
    assert len(resumed) + len(calls) == total
    data.build(_config(tmp_path, tiny_data, workers=1))  # up to date: nothing runs
    assert len(resumed) == total - 5


def test_cli_build_prints_the_summary_table(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code = cli.main(["data", "build", "--out", str(tmp_path), "--data", str(tiny_data), "--only", "mbppr",
                     "--no-model", "--quiet", "--cap", "2"])
    printed = capsys.readouterr().out
    assert code == 0
    assert "mbpp-r   train  mutation" in printed and "checks passed" in printed
    assert cli.main(["data", "check", "--dir", str(tmp_path), "--sample", "2"]) == 0


def test_probe_renders_what_the_server_renders(tmp_path: Path) -> None:
    code = PROBLEMS[2][2].replace("n * n", "n * 2")
    tests = PROBLEMS[2][3]
    found = data.probe(code, "sum_even_squares", tests, workspace=data.Workspace(tmp_path / "w"))
    folder = tmp_path / "server"
    folder.mkdir()
    (folder / "solution.py").write_text(code)
    tests_text, _ = data._layout_tests(tests)
    (folder / "tests.py").write_text(tests_text)
    report = trace_function(folder / "solution.py", "sum_even_squares", tests_file=folder / "tests.py",
                            render_options=data.RenderOptions(max_tokens=data.TRACE_TOKENS))
    assert found.trace == report.rendered
    assert [r.outcome for r in found.results] == [r.outcome for r in report.results]


def test_samples_from_a_model(tiny_gguf: Path, tiny_data: Path, tmp_path: Path) -> None:
    config = _config(tmp_path, tiny_data, use_model=True, limit=1,
                     samples=data.SampleSettings(per_problem=2, max_tokens=8, model=str(tiny_gguf)))
    problems, _ = data.mbppr_problems(config)
    first = data.build_samples(config, problems)
    rows = list(data.read_jsonl(tmp_path / data.SAMPLES_FILE))
    assert first["new"] == 4 and len(rows) == 4
    assert [(r["problem"], r["index"]) for r in rows] == [(511, 0), (511, 1), (601, 0), (601, 1)]
    assert data.build_samples(config, problems)["new"] == 0  # all recorded: the model is not even loaded
    assert list(data.read_jsonl(tmp_path / data.SAMPLES_FILE)) == rows


# -- real data ---------------------------------------------------------------------------------------------------


@needs_shared
def test_mbpp_splits_and_dev_leaks() -> None:
    problems = data.load_mbpp(SHARED)
    by_split = {split: [p for p in problems if p.split == split] for split in ("train", "dev", "test")}
    assert [len(by_split[s]) for s in ("train", "dev", "test")] == [374, 90, 500]
    assert all(p.function_name for p in by_split["train"] + by_split["dev"])
    leaks = data.dev_leaks(problems)
    assert all(data.mbpp_split(task_id) == "train" for task_id in leaks)
    assert 625 in leaks and 699 in leaks  # swap_List and min_Swaps repeat dev problems 591 and 595


@needs_shared
def test_hefix_join_and_caveats(tmp_path: Path) -> None:
    sources = {s.index: s for s in data.load_hefix_sources(SHARED)}
    assert len(sources) == 164
    workspace = data.Workspace(tmp_path)
    settings = data.RunSettings(test_timeout=3.0)
    with data.reproducible_children():
        plain = data.hefix_task(sources[0], settings, workspace)
        quirk = data.hefix_task(sources[32], settings, workspace)
        seeded = data.hefix_task(sources[53], settings, workspace)
        for task in (plain, quirk, seeded):
            assert data.validate(task) == []
            assert task.bug_class == sources[int(task.problem_id.split("/")[1])].pack["bug_type"]
            fix = data.probe(task.fix_code, task.function_name, task.tests, setup=task.test_setup,
                             hidden=task.hidden_tests, settings=settings, workspace=workspace, trace=False)
            assert fix.passed, task.id
            assert task.meta["hidden_results"][0]["outcome"] != "passed"
    assert plain.problem_id == "HumanEval/0" and plain.meta["reference_fix"] == "humaneval"
    assert len(plain.tests) == 7 and plain.trace.startswith("def has_close_elements")
    assert "returned True, expected False" in plain.failing_message
    assert quirk.meta["reference_fix"] == "evalplus"
    assert any("_poly" in decision for decision in quirk.meta["decisions"])
    assert "find_zero(" in quirk.meta["hidden_results"][0]["message"]
    assert "random.seed(0)" in seeded.test_setup


def test_committed_dataset_is_consistent() -> None:
    directory = data.DEFAULT_OUT_DIR
    # the built dataset is versioned with the code: training and evaluation read it from a clone
    assert (directory / data.MANIFEST_FILE).exists(), f"no built dataset in {directory}"
    assert data.check_files(directory) == []
    manifest = json.loads((directory / data.MANIFEST_FILE).read_text())
    assert manifest["schema_version"] == data.SCHEMA_VERSION
    for name, path in data.dataset_files(directory).items():
        assert data.sha256_file(path) == manifest["files"][name]["sha256"], name

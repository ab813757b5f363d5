"""The NExT self-training loop (Ni et al., ICML 2024, Algorithm 1), stage by stage, resumable.

    iteration 0: dev pass@1 of the base model θ0 (zero-shot)
    for t = 1..T:
        sample   answers for every train task from θ(t-1) (θ0 first), conditioned on the naturalized trace
        filter   keep the answers whose fix passes all the tests (sandboxed, the server's verifier)
        train    LoRA fine-tune *from θ0* on the kept answers of iterations 1..t (deduplicated, capped)
        eval     dev pass@1 of θt (zero-shot)
    export the iteration with the best dev pass@1: merged GGUFs, quantized, the LoRA as a GGUF adapter

Everything a stage writes lives under `<out>/iter-<t>/`, with a `<stage>.done.json` marker holding its
settings' fingerprint, its summary and wall time; a rerun skips finished stages and resumes unfinished ones
from their logs (samples and verdicts are appended item by item; training checkpoints every few steps).
Each iteration logs to `<out>/iter-<t>/log.txt`; `<out>/summary.json` gathers the numbers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from nextls_train.config import RunConfig
from nextls_train.data import TaskRecord
from nextls_train.records import Logger, load_tasks, mark_done, repair_task, stage_done, write_json
from nextls_train.train import adapter_dir, iteration_dir

SUMMARY = "summary.json"


class Run:
    """One run config's stages; each method runs one stage (or skips it when it is done)."""

    def __init__(self, config: RunConfig, *, progress: bool = True, log: Logger | None = None,
                 sampler_factory: Any = None) -> None:
        self.config = config
        self.progress = progress
        self.log = log or Logger(config.out / "log.txt")
        # For tests: sampler_factory(run, model_iteration) replaces the model (a scripted sampler).
        self.sampler_factory = sampler_factory
        self._base = None
        self._tasks: dict[str, list[TaskRecord]] = {}

    # -- inputs ----------------------------------------------------------------------------------------------

    @property
    def base(self) -> Any:
        if self._base is None:
            from nextls_train.models import prepare_base

            started = time.perf_counter()
            self._base = prepare_base(self.config, self.log)
            self.log(f"base: {self._base.gguf or self._base.hf_dir} ({time.perf_counter() - started:.1f}s)")
        return self._base

    def tasks(self, split: str) -> list[TaskRecord]:
        if split not in self._tasks:
            data = self.config.data
            path = self.config.resolve(data.train if split == "train" else data.dev)
            limit = data.max_train_tasks if split == "train" else data.max_dev_tasks
            self._tasks[split] = load_tasks(path, limit=limit, per_problem=data.max_tasks_per_problem)
        return self._tasks[split]

    def prompt(self, task: TaskRecord) -> str:
        return self.base.prompt(repair_task(task), use_trace=self.config.data.use_trace)

    def hard_tasks(self) -> set[str] | None:
        """Train tasks the base model solves in under `hard_threshold` of its samples (iteration 1's filter)."""
        if not self.config.data.hard_only:
            return None
        done = stage_done(iteration_dir(self.config, 1), "filter", self._fingerprint("filter", 1))
        if done is None:
            raise RuntimeError("hard_only needs iteration 1's filter (the base model's samples) first")
        return {task for task, rate in done["per_task_pass"].items() if rate < self.config.data.hard_threshold}

    def _fingerprint(self, stage: str, iteration: int, split: str = "train") -> str:
        """What a stage's output depends on: the sections of the config that shaped it."""
        sections = ["model", "data", "sample"] + (["eval"] if split == "dev" else [])
        sampled_by = iteration - 1 if split == "train" else iteration  # the model behind the samples
        if sampled_by > 0:
            sections += ["filter", "train"]
        if stage == "filter":
            sections.append("filter")
        return f"{self.config.fingerprint(*dict.fromkeys(sections))}:{split}:{iteration}"

    def _folder(self, iteration: int, split: str) -> Path:
        folder = iteration_dir(self.config, iteration)
        return folder if split == "train" else folder / "eval"

    # -- stages ----------------------------------------------------------------------------------------------

    def warmstart(self) -> dict[str, Any]:
        """Iteration 0: the verified warm-start answers (nextls_train.warmstart), written to [warmstart].answers."""
        from nextls_train.warmstart import VERSION, run_warmstart

        folder = self.config.out / "warmstart"
        fingerprint = f"{self.config.fingerprint('data', 'filter', 'warmstart')}:v{VERSION}"
        done = stage_done(folder, "warmstart", fingerprint)
        if done and self.config.resolve(self.config.warmstart.answers).exists():
            return done
        summary = run_warmstart(self.config, self.tasks("train"), log=self.log.to(folder / "log.txt"),
                                progress=self.progress)
        return mark_done(folder, "warmstart", fingerprint, summary)

    def sample(self, iteration: int, split: str = "train", shard: tuple[int, int] = (0, 1),
               backend: str | None = None) -> dict[str, Any]:
        """Train split: answers from the model of iteration-1 (the base for iteration 1). Dev split: from the
        model of `iteration` (the evaluation of iteration `iteration`)."""
        from nextls_train.sample import eval_settings, make_sampler, run_sample, train_settings

        folder = self._folder(iteration, split)
        stage = f"sample-{shard[0]}-of-{shard[1]}"
        fingerprint = self._fingerprint("sample", iteration, split)
        done = stage_done(folder, stage, fingerprint)
        if done:
            return done
        model_iteration = iteration - 1 if split == "train" else iteration
        if split == "train":
            settings = train_settings(self.config)
            tasks = self.tasks("train")
            hard = self.hard_tasks() if iteration > 1 else None
            if hard is not None:
                tasks = [task for task in tasks if task.id in hard]
        else:
            settings = eval_settings(self.config)
            tasks = self.tasks("dev")
        log = self.log.to(iteration_dir(self.config, iteration) / "log.txt")
        source = "the base" if model_iteration == 0 else f"iteration {model_iteration}"
        log(f"sample: iteration {iteration}, {split}, shard {shard[0]}/{shard[1]}: {len(tasks)} tasks x "
            f"{settings.samples_per_task} from {source}")

        def sampler() -> Any:
            if self.sampler_factory is not None:
                return self.sampler_factory(self, model_iteration)
            started = time.perf_counter()
            made = make_sampler(self.config, self.base, model_iteration, backend=backend)
            log(f"sample: {made.name} model loaded in {time.perf_counter() - started:.1f}s")
            return made

        started = time.perf_counter()
        summary = run_sample(tasks, folder / "samples", sampler, settings, self.prompt, shard=shard, log=log,
                             progress=self.progress)
        summary["wall_seconds"] = round(time.perf_counter() - started, 2)
        log(f"sample: {summary}")
        return mark_done(folder, stage, fingerprint, summary)

    def filter(self, iteration: int, split: str = "train") -> dict[str, Any]:
        from nextls_train.filter import run_filter

        folder = self._folder(iteration, split)
        fingerprint = self._fingerprint("filter", iteration, split)
        done = stage_done(folder, "filter", fingerprint)
        if done:
            return done
        log = self.log.to(iteration_dir(self.config, iteration) / "log.txt")
        started = time.perf_counter()
        summary = run_filter(self.tasks(split), folder / "samples", folder, self.config.filter, log=log,
                             progress=self.progress)
        summary["wall_seconds"] = round(time.perf_counter() - started, 2)
        brief = {k: v for k, v in summary.items() if k != "per_task_pass"}
        log(f"filter: iteration {iteration}, {split}: {brief}")
        return mark_done(folder, "filter", fingerprint, summary)

    def train(self, iteration: int) -> dict[str, Any]:
        from nextls_train.train import run_train

        log = self.log.to(iteration_dir(self.config, iteration) / "log.txt")
        started = time.perf_counter()
        summary = run_train(self.config, iteration, self.tasks("train"), self.base, hard=self.hard_tasks(),
                            log=log, progress=self.progress)
        summary.setdefault("wall_seconds", round(time.perf_counter() - started, 2))
        return summary

    def evaluate(self, iteration: int) -> dict[str, Any]:
        """Dev pass@1 of the model after `iteration` iterations (0: the base), zero-shot."""
        sampled = self.sample(iteration, "dev")
        scored = self.filter(iteration, "dev")
        return {"pass_at_1": scored["pass_at_1"], "tasks": scored["tasks"], "solved": scored["tasks_solved"],
                "sample_seconds": sampled.get("wall_seconds"), "filter_seconds": scored.get("wall_seconds")}

    def export(self, iteration: int | None = None) -> dict[str, Any]:
        from nextls_train.export import run_export

        summary = self.summary()
        if iteration is None:
            iteration = summary.get("best_iteration")
        if not iteration:
            raise RuntimeError("no trained iteration to export (run the loop first, or pass --iteration)")
        if not adapter_dir(self.config, iteration).exists():
            raise RuntimeError(f"iteration {iteration} has no trained adapter ({adapter_dir(self.config, iteration)})")
        summary["best_iteration"] = summary.get("best_iteration") or iteration
        log = self.log
        prompts = [self.prompt(task) for task in self.tasks("dev")[: self.config.export.check_prompts]]
        card = {"train_tasks": len(self.tasks("train")), "dev_tasks": len(self.tasks("dev")),
                "iterations": summary.get("iterations", []), "best_iteration": iteration}
        started = time.perf_counter()
        result = run_export(self.config, self.base, adapter_dir(self.config, iteration), self.config.out / "export",
                            prompts=prompts, card=card, log=log)
        result["wall_seconds"] = round(time.perf_counter() - started, 2)
        log(f"export: iteration {iteration}: {result['files']}, check {result['check']}")
        mark_done(self.config.out / "export", "export", f"{iteration}", result)
        return result

    # -- the whole loop --------------------------------------------------------------------------------------

    def run(self, *, export: bool = True) -> dict[str, Any]:
        config = self.config
        started = time.perf_counter()
        self.log(f"run {config.name}: {config.loop.iterations} iterations, out {config.out}")
        write_json(config.out / "config.json", config.to_dict())
        if not (config.out / ".gitignore").exists():  # runs write hundreds of MB: never commit them
            (config.out / ".gitignore").write_text("*\n")
        self.base  # noqa: B018  (convert the base once, before the stages)
        self.log(f"tasks: {len(self.tasks('train'))} train, {len(self.tasks('dev'))} dev")
        if config.loop.eval_base:
            result = self.evaluate(0)
            self.log(f"iteration 0 (base): dev pass@1 {result['pass_at_1']}")
        for iteration in range(1, config.loop.iterations + 1):
            self.sample(iteration)
            kept = self.filter(iteration)
            self.log(f"iteration {iteration}: kept {kept['kept']}/{kept['samples']} samples "
                     f"({kept['tasks_solved']}/{kept['tasks']} tasks solved)")
            if not self._has_examples(iteration):
                self.log(f"iteration {iteration}: no sample passed the tests in iterations 1..{iteration}: nothing to "
                         "fine-tune on; stopping (sample more per task, or use more tasks)")
                break
            trained = self.train(iteration)
            result = self.evaluate(iteration)
            self.log(f"iteration {iteration}: loss {trained.get('first_loss')} -> {trained.get('last_loss')}, "
                     f"dev pass@1 {result['pass_at_1']}")
            self.summary()
        summary = self.summary()
        if export and summary.get("best_iteration"):
            summary["export"] = self.export(summary["best_iteration"])
        summary["wall_seconds_this_call"] = round(time.perf_counter() - started, 2)
        write_json(config.out / SUMMARY, summary)
        self.log(f"run {config.name}: done; best iteration {summary.get('best_iteration')} "
                 f"(dev pass@1 {summary.get('best_dev_pass_at_1')}); summary in {config.out / SUMMARY}")
        return summary

    def _has_examples(self, iteration: int) -> bool:
        from nextls_train.filter import KEPT
        from nextls_train.records import read_log

        return any(True for t in range(1, iteration + 1) for _ in read_log(iteration_dir(self.config, t) / KEPT))

    def summary(self) -> dict[str, Any]:
        """What the run has done so far: per iteration, each stage's numbers and wall time; the best iteration."""
        config = self.config
        rows = []
        for iteration in range(0, config.loop.iterations + 1):
            folder = iteration_dir(config, iteration)
            row: dict[str, Any] = {"iteration": iteration, "stage_seconds": {}}
            stages = (("sample", folder, "sample-0-of-1"), ("filter", folder, "filter"), ("train", folder, "train"),
                      ("eval_sample", folder / "eval", "sample-0-of-1"), ("eval_filter", folder / "eval", "filter"))
            for stage, directory, name in stages:
                marker = directory / f"{name}.done.json"
                if not marker.exists():
                    continue
                import json

                data = json.loads(marker.read_text())
                row["stage_seconds"][stage] = data.get("wall_seconds", data.get("seconds"))
                if stage == "filter":
                    row.update(samples=data["samples"], kept=data["kept"], tasks_solved=data["tasks_solved"],
                               train_pass_at_1=data["pass_at_1"])
                elif stage == "train":
                    row.update(examples=data["examples"], first_loss=data.get("first_loss"),
                               last_loss=data.get("last_loss"))
                elif stage == "sample":
                    row.update(sample_tokens_per_s=data.get("tokens_per_s"))
                elif stage == "eval_filter":
                    row.update(dev_pass_at_1=data["pass_at_1"], dev_solved=data["tasks_solved"])
            if len(row) > 2:
                rows.append(row)
        trained = [row for row in rows if row["iteration"] > 0 and "dev_pass_at_1" in row and "examples" in row]
        best = max(trained, key=lambda row: (row["dev_pass_at_1"], -row["iteration"]), default=None)
        summary = {"name": config.name, "out": str(config.out), "iterations": rows,
                   "best_iteration": best["iteration"] if best else None,
                   "best_dev_pass_at_1": best["dev_pass_at_1"] if best else None,
                   "base_dev_pass_at_1": next((r.get("dev_pass_at_1") for r in rows if r["iteration"] == 0), None)}
        write_json(config.out / SUMMARY, summary)
        return summary

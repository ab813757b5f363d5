"""Stage 3: LoRA fine-tuning *from the base model* on every sample kept so far (NExT Algorithm 1).

The examples of iteration t are the kept samples of iterations 1..t (and the warm start's, iteration 0,
when `[warmstart].answers` names them), less those of tasks that repeat an evaluation problem
(`nextls_train.leaks`), deduplicated (same task, same rationale and code) and capped per task
(`[train].max_per_task`, drawn with a seeded shuffle that prefers distinct fixes), optionally only for the
"hard" tasks. Each example is the prompt the server sends (chat template applied) followed by the answer and
the end-of-turn token; the loss covers the answer tokens only.

peft LoRA (rank, alpha, dropout, target modules from [train]), AdamW, linear warm-up then linear decay.
The loop runs through `accelerate`, so `accelerate launch -m nextls_train.train --config C --iteration T`
runs the same code on several GPUs or nodes (each process takes every world_size-th example). A checkpoint
(adapter weights, optimizer, scheduler, step) is written every `save_every` steps: a killed run resumes
from it with the same data order. Per-step losses go to `train/log.jsonl`; the adapter to `adapter/` (peft)
and, as llama.cpp's LoRA GGUF, to `adapter.gguf`.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from nextls_train.config import RunConfig, load_config
from nextls_train.data import TaskRecord
from nextls_train.filter import KEPT, code_key
from nextls_train.leaks import leak_reason
from nextls_train.models import Base, answer_ids, load_tokenizer, prompt_ids, setup_torch
from nextls_train.records import AppendLog, Logger, mark_done, read_log, repair_task, stage_done, write_jsonl

EXAMPLES = "examples.jsonl"


def iteration_dir(config: RunConfig, iteration: int) -> Path:
    return config.out / f"iter-{iteration}"


def adapter_dir(config: RunConfig, iteration: int) -> Path:
    return iteration_dir(config, iteration) / "adapter"


def adapter_gguf(config: RunConfig, iteration: int) -> Path:
    return iteration_dir(config, iteration) / "adapter.gguf"


def collect_examples(config: RunConfig, iteration: int, tasks: dict[str, TaskRecord], base: Base,
                     hard: set[str] | None = None) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The training examples of `iteration`: kept samples of iterations 1..iteration, deduplicated, capped."""
    by_task: dict[str, list[dict[str, Any]]] = {}
    seen: set[tuple[str, str, str]] = set()
    stats = {"kept_so_far": 0, "duplicates": 0, "held_out": 0, "not_hard": 0, "capped": 0}
    for t in range(0 if config.warmstart.answers else 1, iteration + 1):
        for row in _kept_rows(config, t):
            stats["kept_so_far"] += 1
            if row["task"] not in tasks:
                continue
            if leak_reason(tasks[row["task"]]):
                stats["held_out"] += 1
                continue
            if hard is not None and row["task"] not in hard:
                stats["not_hard"] += 1
                continue
            key = (row["task"], " ".join(row["rationale"].split()), code_key(row["code"]) or "")
            if key in seen:
                stats["duplicates"] += 1
                continue
            seen.add(key)
            by_task.setdefault(row["task"], []).append({**row, "iteration": t})
    examples = []
    rng = random.Random(config.train.seed)
    for task_id in sorted(by_task):
        rows = by_task[task_id]
        rng.shuffle(rows)
        # Prefer distinct fixes: one of each code first, then the rest.
        codes: set[str] = set()
        first = [r for r in rows if not (code_key(r["code"]) in codes or codes.add(code_key(r["code"])))]
        ordered = first + [r for r in rows if r not in first]
        chosen = ordered[: config.train.max_per_task] if config.train.max_per_task else ordered
        stats["capped"] += len(rows) - len(chosen)
        task = tasks[task_id]
        for row in chosen:
            examples.append({"task": task_id, "index": row["index"], "iteration": row["iteration"],
                             "prompt": base.prompt(repair_task(task), use_trace=config.data.use_trace),
                             "answer": row["answer"]})
    stats.update(examples=len(examples), tasks=len(by_task))
    return examples, stats


def _kept_rows(config: RunConfig, iteration: int) -> list[dict[str, Any]]:
    """Iteration t's kept answers; iteration 0 is the warm start (`[warmstart].answers`)."""
    if iteration == 0:
        from nextls_train.warmstart import read_answers

        path = config.resolve(config.warmstart.answers)
        if not path.exists():
            raise FileNotFoundError(f"no warm-start answers at {path}: run `nextls-train warmstart` first")
        return read_answers(path)
    return list(read_log(iteration_dir(config, iteration) / KEPT))


def tokenize_examples(tokenizer: Any, examples: Sequence[dict[str, Any]], max_length: int
                      ) -> tuple[list[dict[str, list[int]]], int]:
    """input_ids and labels (-100 over the prompt) per example; examples over `max_length` are left out."""
    features, too_long = [], 0
    for example in examples:
        prompt, answer = prompt_ids(tokenizer, example["prompt"]), answer_ids(tokenizer, example["answer"])
        if len(prompt) + len(answer) > max_length:
            too_long += 1
            continue
        features.append({"input_ids": prompt + answer, "labels": [-100] * len(prompt) + answer})
    return features, too_long


def _collate(batch: Sequence[dict[str, list[int]]], pad_id: int) -> dict[str, Any]:
    """Left-padded batch: every answer ends at the last position, so logits are needed for the last
    `keep` positions only (the vocabulary projection over the prompt is most of a small model's cost)."""
    import torch

    width = max(len(item["input_ids"]) for item in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    answer = 0
    for row, item in enumerate(batch):
        n = len(item["input_ids"])
        ids[row, width - n:] = torch.tensor(item["input_ids"])
        labels[row, width - n:] = torch.tensor(item["labels"])
        mask[row, width - n:] = 1
        answer = max(answer, sum(1 for label in item["labels"] if label != -100))
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "labels": labels, "attention_mask": mask, "position_ids": positions,
            "keep": min(width, answer + 1)}


def answer_loss(model: Any, batch: dict[str, Any]) -> Any:
    """Mean cross-entropy over the answer tokens, from the logits of the last `keep` positions only."""
    import torch.nn.functional as F

    keep = batch["keep"]
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                   position_ids=batch["position_ids"], logits_to_keep=keep).logits
    targets = batch["labels"][:, -keep + 1:] if keep > 1 else batch["labels"][:, :0]
    return F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=-100)


def micro_batches(n: int, epoch: int, seed: int, batch_size: int, rank: int, world: int) -> list[list[int]]:
    """This process's micro-batches of epoch `epoch`: a seeded shuffle, every world-th example."""
    order = list(range(n))
    random.Random(f"{seed}:{epoch}").shuffle(order)
    order += order[: -n % world]  # as DistributedSampler: every process gets as many batches (DDP steps together)
    mine = order[rank::world]
    return [mine[i: i + batch_size] for i in range(0, len(mine), batch_size)]


def train_lora(config: RunConfig, base: Base, examples: Sequence[dict[str, Any]], work: Path, adapter_out: Path,
               *, log: Logger | None = None, progress: bool = True) -> dict[str, Any]:
    """Fine-tune a fresh LoRA on the base over `examples`; resumable from `work/checkpoint.pt`."""
    import torch
    from accelerate import Accelerator
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict
    from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup

    log = log or Logger()
    cfg = config.train
    setup_torch(config.model.threads)
    accelerator = Accelerator()
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(base)
    features, too_long = tokenize_examples(tokenizer, examples, cfg.max_length)
    if not features:
        raise ValueError(f"no training example fits max_length={cfg.max_length} ({too_long} too long)")
    dtype = torch.float32 if accelerator.device.type == "cpu" else getattr(torch, config.model.dtype)
    model = AutoModelForCausalLM.from_pretrained(str(base.hf_dir), dtype=dtype)
    model.config.use_cache = False
    layers = model.config.num_hidden_layers
    # Adapting only the top layers spares the backward pass through the rest (frozen, no input gradients).
    top = list(range(layers - cfg.lora_layers, layers)) if 0 < cfg.lora_layers < layers else None
    lora = LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=list(cfg.target_modules), task_type="CAUSAL_LM", bias="none",
                      layers_to_transform=top)
    model = get_peft_model(model, lora)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    world, rank = accelerator.num_processes, accelerator.process_index
    per_epoch = math.ceil(len(micro_batches(len(features), 0, cfg.seed, cfg.batch_size, 0, world)) / cfg.grad_accum)
    total_steps = max(1, math.ceil(per_epoch * cfg.epochs))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    work.mkdir(parents=True, exist_ok=True)
    checkpoint = work / "checkpoint.pt"
    step = 0
    if checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        set_peft_model_state_dict(accelerator.unwrap_model(model), state["adapter"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        step = state["step"]
        if accelerator.is_main_process:
            log(f"train: resuming at step {step}/{total_steps} from {checkpoint}")
    elif accelerator.is_main_process:
        (work / "log.jsonl").unlink(missing_ok=True)  # a fresh start: no steps of an earlier run
    accelerator.wait_for_everyone()
    step_log = AppendLog(work / "log.jsonl", key=lambda item: item["step"], fsync=False)
    summary: dict[str, Any] = {"examples": len(features), "too_long": too_long, "steps": total_steps,
                               "trainable_params": sum(p.numel() for p in trainable),
                               "tokens": sum(len(f["input_ids"]) for f in features),
                               "answer_tokens": sum(sum(1 for x in f["labels"] if x != -100) for f in features)}
    if accelerator.is_main_process:
        log(f"train: {len(features)} examples ({too_long} over max_length), {total_steps} steps, "
            f"{summary['trainable_params']:,} trainable parameters, world size {world}")
    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, desc="train", unit="step", dynamic_ncols=True, mininterval=2.0,
               disable=not (progress and accelerator.is_main_process))
    started = time.perf_counter()
    model.train()
    epoch = step // per_epoch
    while step < total_steps:
        batches = micro_batches(len(features), epoch, cfg.seed, cfg.batch_size, rank, world)
        groups = [batches[i: i + cfg.grad_accum] for i in range(0, len(batches), cfg.grad_accum)]
        for group_index, group in enumerate(groups):
            if epoch * per_epoch + group_index < step:
                continue  # done before the resume
            if step >= total_steps:
                break
            step_started = time.perf_counter()
            losses = []
            for position, indexes in enumerate(group):
                batch = {k: v.to(accelerator.device) if hasattr(v, "to") else v for k, v in _collate(
                    [features[i] for i in indexes], tokenizer.pad_token_id).items()}
                # Gradients are averaged over the group's micro-batches; processes sync on the last one only.
                last = position == len(group) - 1
                with contextlib.nullcontext() if last else accelerator.no_sync(model):
                    loss = answer_loss(model, batch)
                    accelerator.backward(loss / len(group))
                losses.append(loss.detach().float())
            accelerator.clip_grad_norm_(trainable, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad()
            step += 1
            mean_loss = accelerator.gather(torch.stack(losses).mean().reshape(1)).mean().item()
            if accelerator.is_main_process:
                step_log.append({"step": step, "epoch": epoch, "loss": round(mean_loss, 5),
                                 "lr": scheduler.get_last_lr()[0],
                                 "seconds": round(time.perf_counter() - step_started, 3)})
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                bar.update(1)
                if cfg.save_every and step % cfg.save_every == 0 and step < total_steps:
                    _save_checkpoint(checkpoint, accelerator.unwrap_model(model), optimizer, scheduler, step,
                                     get_peft_model_state_dict)
        epoch += 1
    bar.close()
    step_log.close()
    accelerator.wait_for_everyone()
    summary["seconds"] = round(time.perf_counter() - started, 2)
    if accelerator.is_main_process:
        accelerator.unwrap_model(model).save_pretrained(str(adapter_out))
        losses = [item["loss"] for item in read_log(work / "log.jsonl")]
        window = max(1, len(losses) // 10)
        summary.update(first_loss=losses[0], last_loss=losses[-1],
                       first_loss_mean=round(sum(losses[:window]) / window, 5),
                       last_loss_mean=round(sum(losses[-window:]) / window, 5))
        checkpoint.unlink(missing_ok=True)
    return summary


def _save_checkpoint(path: Path, model: Any, optimizer: Any, scheduler: Any, step: int, state_dict: Any) -> None:
    import os

    import torch

    temporary = path.with_name(path.name + ".tmp")
    torch.save({"adapter": state_dict(model), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step}, temporary)
    os.replace(temporary, path)


def run_train(config: RunConfig, iteration: int, tasks: Sequence[TaskRecord], base: Base, *,
              hard: set[str] | None = None, log: Logger | None = None, progress: bool = True) -> dict[str, Any]:
    """The train stage of one iteration: examples, LoRA fine-tuning, the adapter (peft + GGUF). Skipped when
    done with the same settings."""
    log = log or Logger()
    folder = iteration_dir(config, iteration)
    fingerprint = config.fingerprint("model", "data", "sample", "filter", "warmstart", "train") + f":{iteration}"
    done = stage_done(folder, "train", fingerprint)
    if done and adapter_dir(config, iteration).exists():
        log(f"train: iteration {iteration} done before ({done.get('examples')} examples)")
        return done
    examples, stats = collect_examples(config, iteration, {task.id: task for task in tasks}, base, hard)
    main_process = _is_main_process()
    if main_process:
        write_jsonl(folder / "train" / EXAMPLES, examples)
        log(f"train: {stats}")
    if not examples:
        raise RuntimeError(f"iteration {iteration}: no kept sample to train on; sample more "
                           "([sample].samples_per_task) or use more tasks")
    summary = train_lora(config, base, examples, folder / "train", adapter_dir(config, iteration), log=log,
                         progress=progress)
    summary["data"] = stats
    if not main_process:  # under `accelerate launch`, the main process writes the results
        return summary
    from nextls_train.export import write_adapter_gguf

    started = time.perf_counter()
    if base.gguf is not None:
        write_adapter_gguf(adapter_dir(config, iteration), base, adapter_gguf(config, iteration))
        summary["adapter_gguf_seconds"] = round(time.perf_counter() - started, 2)
    return mark_done(folder, "train", fingerprint, summary)


def _is_main_process() -> bool:
    """True except in the non-main processes of `accelerate launch` / torchrun (RANK is their global rank)."""
    import os

    return int(os.environ.get("RANK", "0")) == 0


def main(argv: Sequence[str] | None = None) -> int:
    """`accelerate launch -m nextls_train.train --config C --iteration T`: the train stage alone."""
    parser = argparse.ArgumentParser(prog="nextls_train.train", description=main.__doc__)
    parser.add_argument("--config", required=True)
    parser.add_argument("--iteration", type=int, required=True)
    parser.add_argument("--set", action="append", default=[], metavar="SECTION.KEY=VALUE")
    args = parser.parse_args(argv)
    from nextls_train.config import parse_override
    from nextls_train.loop import Run

    run = Run(load_config(args.config, dict(parse_override(item) for item in args.set)),
              progress=_is_main_process())
    summary = run.train(args.iteration)
    if _is_main_process():
        print(json.dumps(summary, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

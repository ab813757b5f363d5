"""Stage 4: from the chosen iteration's LoRA to files the server loads, checked against the HF model.

* `adapter.gguf`: the LoRA alone, as llama.cpp's adapter GGUF, for the base GGUF the server already has
  (`nextls --lora`, or shipped as `nextls/models/nextls-smollm2-lora.gguf`). Layout (llama.cpp's
  llama_adapter_lora_init): general.type "adapter", adapter.type "lora", adapter.lora.alpha, and per adapted
  weight `<gguf name>.lora_a` (peft's lora_A, numpy (rank, in)) and `.lora_b` (lora_B, (out, rank)).
* the merged model: LoRA merged into the base (peft `merge_and_unload`), saved as an HF folder, then as a
  GGUF (`[export].dtype`, f16 by default) and quantized with `llama_cpp.llama_model_quantize` to each of
  `[export].quantizations` whose block size divides every weight row (SmolLM2's 576-wide rows rule out the
  256-wide k-quants). With a GGUF base the GGUF is written with `gguf`: the base's metadata (tokenizer, chat
  template, hyperparameters) copied unchanged and the merged weights mapped to GGUF names. With an HF base
  llama.cpp's `convert_hf_to_gguf.py` (from llama-cpp-python's sdist) converts the folder.
* llama.cpp permutes the rows of the q and k projections (its rotary embedding pairs dimensions
  differently); transformers undoes it when it loads a GGUF. Both writers redo it, for LoRA's B matrices too.
* `check.json`: the logits llama.cpp computes from each GGUF (and from base GGUF + adapter) against the HF
  model's on a few dev prompts: max |difference| and how often the top token agrees.
* `README.md`: the model card (base, data, iterations, eval numbers).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from nextls.merge import copy_metadata, save
from nextls_train.config import RunConfig
from nextls_train.models import Base, load_model, load_tokenizer, prompt_ids
from nextls_train.records import Logger, write_json

# Block size (weights per quantization block along a row) of the types llama_model_quantize writes.
BLOCK_SIZES = {"Q8_0": 32, "Q4_0": 32, "Q4_1": 32, "Q5_0": 32, "Q5_1": 32, "Q2_K": 256, "Q3_K_S": 256,
               "Q3_K_M": 256, "Q3_K_L": 256, "Q4_K_S": 256, "Q4_K_M": 256, "Q5_K_S": 256, "Q5_K_M": 256,
               "Q6_K": 256, "F16": 1, "BF16": 1, "F32": 1}


def _arch(reader: Any) -> str:
    field = reader.fields["general.architecture"]
    return bytes(field.parts[field.data[0]]).decode()


def _hf_to_gguf_names(arch: str, n_blocks: int, hf_names: Sequence[str]) -> dict[str, str]:
    import gguf

    arch_enum = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[arch]
    table = gguf.get_tensor_name_map(arch_enum, n_blocks)
    mapping = {}
    for name in hf_names:
        mapped = table.get_name(name, try_suffixes=(".weight", ".bias"))
        if mapped is not None:
            mapping[name] = mapped
    return mapping


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int | None = None) -> np.ndarray:
    """convert_hf_to_gguf's LlamaModel.permute: HF's rotary layout to llama.cpp's, on the rows (axis 0)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _rope_permutation(hf_name: str, model_config: dict[str, Any], arch: str) -> tuple[int, int] | None:
    if arch != "llama":
        return None
    heads = model_config["num_attention_heads"]
    if ".q_proj." in hf_name:
        return heads, heads
    if ".k_proj." in hf_name:
        return heads, model_config.get("num_key_value_heads") or heads
    return None


def write_adapter_gguf(adapter: Path, base: Base, out: Path) -> Path:
    """The peft LoRA folder `adapter` as a llama.cpp LoRA adapter GGUF for `base.gguf`."""
    import gguf
    from safetensors.numpy import load_file

    adapter = Path(adapter)
    settings = json.loads((adapter / "adapter_config.json").read_text())
    if settings.get("use_rslora") or settings.get("use_dora"):
        raise ValueError("rsLoRA / DoRA adapters have no llama.cpp GGUF form here")
    model_config = json.loads((base.hf_dir / "config.json").read_text())
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    reader = gguf.GGUFReader(base.gguf)
    arch = _arch(reader)
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for key, value in weights.items():
        # base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight -> model.layers.0.self_attn.q_proj.weight
        stem, _, kind = key.rpartition(".lora_")
        hf_name = stem.removeprefix("base_model.model.") + ".weight"
        # f16 halves the file (a rank-8 adapter of SmolLM2-135M is about 5 MB) at no measurable cost.
        pairs.setdefault(hf_name, {})[kind.split(".")[0]] = value.astype(np.float16)
    names = _hf_to_gguf_names(arch, model_config["num_hidden_layers"], list(pairs))
    base_tensors = {tensor.name for tensor in reader.tensors}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out, arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(settings["lora_alpha"]))
    for hf_name, pair in sorted(pairs.items()):
        gguf_name = names.get(hf_name)
        if gguf_name is None or gguf_name not in base_tensors:
            raise ValueError(f"adapted weight {hf_name} has no tensor in {base.gguf.name} (mapped: {gguf_name})")
        lora_a, lora_b = pair["A"], pair["B"]
        heads = _rope_permutation(hf_name, model_config, arch)
        if heads is not None:
            lora_b = _permute(lora_b, *heads)  # B's rows are the weight's output rows
        writer.add_tensor(f"{gguf_name}.lora_a", np.ascontiguousarray(lora_a))
        writer.add_tensor(f"{gguf_name}.lora_b", np.ascontiguousarray(lora_b))
    save(writer)
    return out


def write_merged_gguf(hf_dir: Path, base_gguf: Path, out: Path, dtype: str = "f16") -> Path:
    """The merged HF model in `hf_dir` as a GGUF with `base_gguf`'s metadata and tensor names."""
    import gguf
    from safetensors.numpy import load_file

    model_config = json.loads((Path(hf_dir) / "config.json").read_text())
    state: dict[str, np.ndarray] = {}
    for file in sorted(Path(hf_dir).glob("*.safetensors")):
        state.update(load_file(str(file)))
    reader = gguf.GGUFReader(base_gguf)
    arch = _arch(reader)
    names = _hf_to_gguf_names(arch, model_config["num_hidden_layers"], list(state))
    by_gguf = {gguf_name: hf_name for hf_name, gguf_name in names.items()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(out, arch)
    copy_metadata(reader, writer, skip=("general.file_type", "general.quantization_version"))
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
    for tensor in reader.tensors:
        hf_name = by_gguf.get(tensor.name)
        if hf_name is None:
            raise ValueError(f"{base_gguf.name}: tensor {tensor.name} has no weight in the merged model")
        value = state[hf_name].astype(np.float32)
        heads = _rope_permutation(hf_name, model_config, arch)
        if heads is not None:
            value = _permute(value, *heads)
        if dtype == "f16" and value.ndim == 2:
            value = value.astype(np.float16)
        writer.add_tensor(tensor.name, np.ascontiguousarray(value))
    save(writer)
    return out


def find_converter() -> Path:
    """llama.cpp's convert_hf_to_gguf.py, from llama-cpp-python's sdist (the installed version, fetched with
    `pip download`, or $NEXTLS_LLAMA_CPP_SDIST), extracted once under ~/.cache/nextls; or $NEXTLS_LLAMA_CPP, a
    llama.cpp checkout."""
    import importlib.metadata
    import tarfile

    if os.environ.get("NEXTLS_LLAMA_CPP"):
        return Path(os.environ["NEXTLS_LLAMA_CPP"]) / "convert_hf_to_gguf.py"
    version = importlib.metadata.version("llama_cpp_python")
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "nextls" / f"llama.cpp-{version}"
    script = cache / "convert_hf_to_gguf.py"
    if script.exists() and (cache / "conversion").is_dir():
        return script
    download = cache.parent / "sdist"
    download.mkdir(parents=True, exist_ok=True)
    archive = download / f"llama_cpp_python-{version}.tar.gz"
    if os.environ.get("NEXTLS_LLAMA_CPP_SDIST"):  # the sdist already downloaded
        archive = Path(os.environ["NEXTLS_LLAMA_CPP_SDIST"])
    if not archive.exists():  # pip prepares its metadata in an isolated build env: a minute or so
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", str(download)], check=True, capture_output=True)
    prefix = f"llama_cpp_python-{version}/vendor/llama.cpp/"
    with tarfile.open(archive) as tar:
        wanted = (prefix + "gguf-py/", prefix + "conversion/")
        members = [m for m in tar.getmembers()
                   if m.name == prefix + "convert_hf_to_gguf.py" or m.name.startswith(wanted)]
        for member in members:
            member.name = member.name[len(prefix):]
        tar.extractall(cache, members=members, filter="data")
    return script


def convert_hf_folder(hf_dir: Path, out: Path, dtype: str = "f16") -> Path:
    """An HF model folder as a GGUF through llama.cpp's converter (its own gguf-py on the path)."""
    script = find_converter()
    env = dict(os.environ, PYTHONPATH=str(script.parent / "gguf-py") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([sys.executable, str(script), str(hf_dir), "--outtype", dtype, "--outfile", str(out)],
                   check=True, env=env, capture_output=True, text=True)
    return out


def row_widths(gguf_path: Path) -> set[int]:
    """The row lengths (ggml ne[0]) of every matrix in a GGUF: what a quantization block must divide."""
    import gguf

    return {int(t.shape[0]) for t in gguf.GGUFReader(gguf_path).tensors if len(t.shape) >= 2}


def quantize(source: Path, out: Path, kind: str, threads: int = 2) -> Path:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{kind}")
    params.nthread = threads
    result = llama_cpp.llama_model_quantize(str(source).encode(), str(out).encode(), ctypes.byref(params))
    if result != 0:
        raise RuntimeError(f"llama_model_quantize({source.name} -> {kind}) failed with {result}")
    return out


def llama_logits(gguf_path: Path, prompts: Sequence[list[int]], *, lora: Path | None = None,
                 threads: int = 2) -> list[np.ndarray]:
    """llama.cpp's logits at every position of each token list."""
    import llama_cpp

    import nextls.model  # noqa: F401  (routes llama.cpp's native logs)

    length = max(len(p) for p in prompts) + 8
    llm = llama_cpp.Llama(model_path=str(gguf_path), lora_path=str(lora) if lora else None, n_ctx=length,
                          n_batch=length, n_ubatch=length, n_threads=threads, logits_all=True, verbose=False,
                          n_gpu_layers=0)
    try:
        if lora is not None and not llm._lora_adapter:
            raise RuntimeError(f"llama.cpp did not load the adapter {lora}")
        results = []
        for tokens in prompts:
            llm.reset()
            llm.eval(tokens)
            results.append(np.array(llm.scores[: len(tokens)], dtype=np.float32))
        return results
    finally:
        llm.close()


def hf_logits(model: Any, prompts: Sequence[list[int]]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        return [model(torch.tensor([tokens])).logits[0].float().numpy() for tokens in prompts]


def compare_logits(reference: Sequence[np.ndarray], other: Sequence[np.ndarray]) -> dict[str, float]:
    diffs = [float(np.abs(a - b).max()) for a, b in zip(reference, other, strict=True)]
    agree = [float((a.argmax(-1) == b.argmax(-1)).mean()) for a, b in zip(reference, other, strict=True)]
    scale = max(float(np.abs(a).max()) for a in reference)
    return {"max_abs_diff": round(max(diffs), 4), "logit_scale": round(scale, 2),
            "top1_agreement": round(float(np.mean(agree)), 4)}


def run_export(config: RunConfig, base: Base, adapter: Path, out: Path, *, prompts: Sequence[str],
               card: dict[str, Any], log: Logger | None = None) -> dict[str, Any]:
    """Merge, convert, quantize, write the adapter GGUF, check logits, write the model card."""
    import torch

    log = log or Logger()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    summary: dict[str, Any] = {"adapter": str(adapter), "files": {}, "timings": timings}

    def clock(name: str, started: float) -> None:
        timings[name] = round(time.perf_counter() - started, 2)

    started = time.perf_counter()
    tokenizer = load_tokenizer(base)
    merged = load_model(base, adapter, merge=True)
    hf_out = out / "hf"
    merged.save_pretrained(str(hf_out))
    tokenizer.save_pretrained(str(hf_out))
    clock("merge", started)

    started = time.perf_counter()
    dtype = config.export.dtype
    full = out / f"model-{dtype}.gguf"
    if base.gguf is not None:
        write_merged_gguf(hf_out, base.gguf, full, dtype)
    else:
        convert_hf_folder(hf_out, full, dtype)
    summary["files"][dtype] = full.name
    clock("convert", started)

    started = time.perf_counter()
    widths = row_widths(full)
    skipped = {}
    for kind in config.export.quantizations:
        block = BLOCK_SIZES.get(kind)
        if block is None:
            raise ValueError(f"unknown quantization {kind!r} (known: {', '.join(BLOCK_SIZES)})")
        bad = sorted(w for w in widths if w % block)
        if bad:
            skipped[kind] = f"rows of {bad} weights are not a multiple of its {block}-wide blocks"
            log(f"export: skipping {kind}: {skipped[kind]}")
            continue
        quantize(full, out / f"model-{kind}.gguf", kind, config.model.threads)
        summary["files"][kind] = f"model-{kind}.gguf"
    summary["skipped_quantizations"] = skipped
    clock("quantize", started)

    started = time.perf_counter()
    if base.gguf is not None:
        lora_out = out / config.export.adapter_name
        write_adapter_gguf(adapter, base, lora_out)
        summary["files"]["lora"] = lora_out.name
    clock("adapter", started)

    started = time.perf_counter()
    token_lists = [prompt_ids(tokenizer, text) for text in prompts]
    check: dict[str, Any] = {"prompts": len(token_lists), "prompt_tokens": [len(t) for t in token_lists]}
    reference = hf_logits(merged, token_lists)
    for kind, name in summary["files"].items():
        if kind == "lora":
            continue
        check[name] = compare_logits(reference, llama_logits(out / name, token_lists, threads=config.model.threads))
    if base.gguf is not None:
        unmerged = load_model(base, adapter, merge=False)
        with_adapter = hf_logits(unmerged, token_lists)
        check[f"{base.gguf.name} + {config.export.adapter_name}"] = compare_logits(
            with_adapter, llama_logits(base.gguf, token_lists, lora=out / config.export.adapter_name,
                                       threads=config.model.threads))
        plain = load_model(base, None)
        check[f"{base.gguf.name} (no adapter, vs the HF base)"] = compare_logits(
            hf_logits(plain, token_lists), llama_logits(base.gguf, token_lists, threads=config.model.threads))
        del unmerged, plain
    summary["check"] = check
    clock("check", started)
    write_json(out / "check.json", check)
    del merged
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

    (out / "README.md").write_text(model_card(config, base, summary, card), encoding="utf-8")
    sizes = {name: (out / name).stat().st_size for name in summary["files"].values()}
    summary["sizes"] = sizes
    shutil.rmtree(out / "hf.tmp", ignore_errors=True)
    return summary


def model_card(config: RunConfig, base: Base, summary: dict[str, Any], card: dict[str, Any]) -> str:
    """The model card: what was trained from what, on what, how, and how well."""
    source = str(base.gguf.name if base.gguf else base.hf_dir)
    t = config.train
    lines = [
        f"# {config.name}: NExT-trained repair model",
        "",
        f"Base model: `{source}`. Fine-tuned with NExT self-training (Ni et al., ICML 2024): the model reads a "
        "buggy function with its naturalized execution trace, writes a rationale and the fixed function; "
        "samples whose fix passes all the tests are kept and the base model is fine-tuned on them, iteratively.",
        "",
        "## Files",
        "",
        *[f"- `{name}` ({kind})" for kind, name in summary["files"].items()],
        "",
        f"`{config.export.adapter_name}` is a llama.cpp LoRA adapter for the base GGUF "
        "(`nextls --lora`); the `model-*.gguf` files are the adapter merged into the base.",
        "",
        "## Data",
        "",
        f"- train: `{config.data.train}` ({card.get('train_tasks')} tasks used), dev: `{config.data.dev}` "
        f"({card.get('dev_tasks')} tasks used); trace in the prompt: {config.data.use_trace}; "
        f"hard tasks only: {config.data.hard_only}",
        f"- sampling: {config.sample.samples_per_task} samples per task, temperature {config.sample.temperature}, "
        f"top-p {config.sample.top_p}, at most {config.sample.max_new_tokens} new tokens ({config.sample.backend})",
        "",
        "## Training",
        "",
        f"- {config.loop.iterations} iterations, each fine-tuned from the base on all kept samples so far "
        f"(deduplicated, at most {t.max_per_task} per task)",
        f"- LoRA rank {t.lora_rank}, alpha {t.lora_alpha}, dropout {t.lora_dropout}, targets "
        f"{', '.join(t.target_modules)}; lr {t.learning_rate}, {t.epochs} epochs, batch {t.batch_size} x "
        f"{t.grad_accum}, max length {t.max_length}",
        "",
        "## Iterations (dev pass@1, zero-shot)",
        "",
        "| iteration | kept samples | train examples | final train loss | dev pass@1 |",
        "| --- | --- | --- | --- | --- |",
    ]
    for row in card.get("iterations", []):
        lines.append(f"| {row.get('iteration')} | {row.get('kept', '')} | {row.get('examples', '')} | "
                     f"{row.get('last_loss', '')} | {row.get('dev_pass_at_1', '')} |")
    lines += ["", f"Chosen: iteration {card.get('best_iteration')} (best dev pass@1).", "",
              "## Logits check (llama.cpp vs the HF model, on dev prompts)", "",
              "| file | max abs diff | top-1 agreement |", "| --- | --- | --- |"]
    for name, result in summary.get("check", {}).items():
        if isinstance(result, dict):
            lines.append(f"| {name} | {result['max_abs_diff']} | {result['top1_agreement']} |")
    lines += ["", "Evaluation numbers on this card come from the run's own dev split; they are small-scale "
              "estimates, not the paper's setting.", ""]
    return "\n".join(lines)

"""A LoRA adapter merged into its base GGUF once, so that serving decodes at the base's speed.

llama.cpp applying a LoRA at run time adds two small matrix products per adapted weight per token, which
cost a third of decoding speed on this project's 2-core CPU (docs/benchmarks.md, bench_adapter.py).
`merged_model` instead writes, once per (base, adapter), a GGUF whose adapted weights are
W + (alpha / rank) * B @ A (stored as Q8_0 where W was a 4/5-bit type, see `_merged_type`), next to the
base's unchanged tensors and metadata. It lands in the cache directory ($XDG_CACHE_HOME/nextls/merged,
named by a digest of both files), written to a temporary name and renamed, so concurrent servers and a
killed merge never leave a half-written model. The adapter file is llama.cpp's LoRA GGUF (see
`nextls_train.export.write_adapter_gguf`): `<weight>.lora_a` (rank, in) and `<weight>.lora_b` (out, rank).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

MERGE_VERSION = 2  # of how weights are merged and stored: a change makes new cache files

# Metadata a writer sets itself, or that describes the file rather than the model.
_WRITER_KEYS = ("general.architecture",)


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nextls" / "merged"


def merged_model(base: Path, adapter: Path, cache: Path | None = None) -> Path:
    """The GGUF of `adapter` merged into `base`, made on first use (a few seconds for SmolLM2-135M)."""
    base, adapter = Path(base), Path(adapter)
    folder = Path(cache) if cache is not None else cache_dir()
    out = folder / f"{base.stem}+{adapter.stem}-{_digest(base, adapter)}.gguf"
    if out.is_file():
        return out
    folder.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=folder, prefix=out.stem, suffix=".part")
    os.close(handle)
    try:
        write_merged(base, adapter, Path(temporary))
        os.replace(temporary, out)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return out


def _digest(base: Path, adapter: Path) -> str:
    digest = hashlib.sha256(f"merge v{MERGE_VERSION}\n".encode())
    stat = base.stat()  # the base is ~100 MB: its name, size and mtime stand for it
    digest.update(f"{base.resolve()}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    digest.update(adapter.read_bytes())
    return digest.hexdigest()[:16]


def read_adapter(adapter: Path) -> tuple[float, dict[str, tuple[np.ndarray, np.ndarray]]]:
    """The adapter's alpha and its (A, B) pair per adapted base tensor name."""
    import gguf

    reader = gguf.GGUFReader(adapter)
    if _string(reader, "general.type") != "adapter" or _string(reader, "adapter.type") != "lora":
        raise ValueError(f"{adapter} is not a LoRA adapter GGUF")
    alpha = float(reader.fields["adapter.lora.alpha"].contents())
    pairs: dict[str, dict[str, np.ndarray]] = {}
    for tensor in reader.tensors:
        name, _, kind = tensor.name.rpartition(".lora_")
        pairs.setdefault(name, {})[kind] = np.asarray(tensor.data, dtype=np.float32)
    if any(set(pair) != {"a", "b"} for pair in pairs.values()):
        raise ValueError(f"{adapter}: every adapted weight needs both lora_a and lora_b")
    return alpha, {name: (pair["a"], pair["b"]) for name, pair in pairs.items()}


def write_merged(base: Path, adapter: Path, out: Path) -> None:
    import gguf
    from gguf.quants import dequantize, quantize

    alpha, pairs = read_adapter(adapter)
    reader = gguf.GGUFReader(base)
    tensors = {tensor.name: tensor for tensor in reader.tensors}
    missing = sorted(set(pairs) - set(tensors))
    if missing:
        raise ValueError(f"{adapter.name} adapts weights that {base.name} does not have: {missing[:3]}")
    writer = gguf.GGUFWriter(out, _string(reader, "general.architecture"))
    copy_metadata(reader, writer)
    for tensor in reader.tensors:
        kind = tensor.tensor_type
        if tensor.name in pairs:
            lora_a, lora_b = pairs[tensor.name]
            weight = dequantize(tensor.data, kind).astype(np.float32)
            if (lora_b.shape[0], lora_a.shape[1]) != weight.shape:
                raise ValueError(f"{tensor.name}: the adapter's {lora_b.shape[0]}x{lora_a.shape[1]} does not fit "
                                 f"the base's {weight.shape[0]}x{weight.shape[1]}")
            weight += (alpha / lora_a.shape[0]) * (lora_b @ lora_a)
            stored = _merged_type(kind)
            writer.add_tensor(tensor.name, quantize(weight, stored), raw_dtype=stored)
        else:
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=kind)
    save(writer)


def save(writer: Any) -> None:
    """Write out a GGUFWriter's header, metadata and tensors, and close it."""
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _merged_type(kind: Any) -> Any:
    """Adapted weights are stored as Q8_0, not requantized to a 4/5-bit base type: a LoRA's delta is mostly
    smaller than a 4-bit step (Q4_1 rounded it away: the merged SmolLM2 answered like the base)."""
    from gguf import GGMLQuantizationType as Type

    return Type.Q8_0 if kind in (Type.Q4_0, Type.Q4_1, Type.Q5_0, Type.Q5_1) else kind


def copy_metadata(reader: Any, writer: Any, skip: tuple[str, ...] = ()) -> None:
    """Every key of `reader` (tokenizer, chat template, hyperparameters) onto `writer`, but `skip`."""
    import gguf

    for name, field in reader.fields.items():
        if name.startswith("GGUF.") or name in _WRITER_KEYS or name in skip:
            continue
        value_type = field.types[0]
        sub_type = field.types[-1] if value_type == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, field.contents(), value_type, sub_type)


def _string(reader: Any, key: str) -> str | None:
    field = reader.fields.get(key)
    return None if field is None else str(field.contents())

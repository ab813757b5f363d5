"""Chat-template rendering: the one place where chat messages become prompt text.

The language server (inference through llama.cpp) and the training pipeline (HF transformers) both build
their prompts here, so a model is fine-tuned on byte-for-byte the prompts it is later served. Rendering
follows HF transformers' `apply_chat_template`: the Jinja template stored in the model (the GGUF key
`tokenizer.chat_template`) is rendered in an immutable sandbox with trim_blocks / lstrip_blocks, the
`raise_exception` and `strftime_now` globals, a `tojson` filter that keeps non-ASCII characters, and the
special tokens (`bos_token`, `eos_token`) as variables.

This module must not import llama_cpp: training imports it on machines without llama.cpp.
"""

from __future__ import annotations

import functools
import json
import mmap
import struct
from datetime import datetime
from pathlib import Path
from typing import Any

import jinja2.ext
from gguf import GGUF_MAGIC, GGUFValueType
from jinja2.exceptions import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

CHAT_TEMPLATE_KEY = "tokenizer.chat_template"

# Used when a model carries no chat template: ChatML, with no default system prompt. ChatML is what
# llama.cpp itself falls back to, and what SmolLM2 (the default model) is trained on. For messages
# [{"role": "user", "content": "Hi"}] it renders "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n".
FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def read_chat_template(gguf_path: str | Path) -> str | None:
    """The chat template stored in a GGUF file, or None if it has none. Cached per file version.

    Raises ValueError if the file is not a (complete) GGUF file.
    """
    path = Path(gguf_path).resolve()
    stat = path.stat()
    # mtime and size in the key so a file replaced on disk is read again.
    return _read_chat_template(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=8)
def _read_chat_template(path: Path, mtime_ns: int, size: int) -> str | None:
    if size < _GGUF_HEADER_SIZE:
        raise ValueError(f"{path} is not a GGUF file (only {size} bytes)")
    with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            return _find_string_metadata(data, CHAT_TEMPLATE_KEY, path)
        except struct.error as error:
            raise ValueError(f"{path} is a truncated or corrupt GGUF file ({error})") from None


# Reading one key with gguf.GGUFReader takes ~2 s on a 49k-token vocabulary (it builds a numpy view for each
# of the ~100k token and merge strings), so scan the metadata directly. GGUF v2+ layout: magic, u32 version,
# u64 tensor count, u64 key/value count, then per pair: key (u64 length + UTF-8), u32 value type, value.
_GGUF_HEADER_SIZE = 24
_SCALAR_SIZES = {
    GGUFValueType.UINT8: 1, GGUFValueType.INT8: 1, GGUFValueType.BOOL: 1,
    GGUFValueType.UINT16: 2, GGUFValueType.INT16: 2,
    GGUFValueType.UINT32: 4, GGUFValueType.INT32: 4, GGUFValueType.FLOAT32: 4,
    GGUFValueType.UINT64: 8, GGUFValueType.INT64: 8, GGUFValueType.FLOAT64: 8,
}  # fmt: skip


def _find_string_metadata(data: mmap.mmap, wanted_key: str, path: Path) -> str | None:
    if struct.unpack_from("<I", data, 0)[0] != GGUF_MAGIC:
        raise ValueError(f"{path} is not a GGUF file (no GGUF magic bytes)")
    # Big-endian files exist; their version number reads as a huge number in little-endian.
    order = "<" if struct.unpack_from("<I", data, 4)[0] < 0x10000 else ">"
    u32, u64 = struct.Struct(order + "I"), struct.Struct(order + "Q")
    (kv_count,) = u64.unpack_from(data, 16)
    offset = _GGUF_HEADER_SIZE

    def skip_value(value_type: int, offset: int) -> int:
        if value_type == GGUFValueType.STRING:
            return offset + 8 + u64.unpack_from(data, offset)[0]
        if value_type == GGUFValueType.ARRAY:
            item_type, count = u32.unpack_from(data, offset)[0], u64.unpack_from(data, offset + 4)[0]
            offset += 12
            if item_type in _SCALAR_SIZES:
                return offset + count * _SCALAR_SIZES[item_type]
            for _ in range(count):
                offset = skip_value(item_type, offset)
            return offset
        if value_type in _SCALAR_SIZES:
            return offset + _SCALAR_SIZES[value_type]
        raise struct.error(f"unknown metadata value type {value_type}")

    for _ in range(kv_count):
        key_length = u64.unpack_from(data, offset)[0]
        key = data[offset + 8 : offset + 8 + key_length]
        offset += 8 + key_length
        (value_type,) = u32.unpack_from(data, offset)
        offset += 4
        if key == wanted_key.encode() and value_type == GGUFValueType.STRING:
            value_length = u64.unpack_from(data, offset)[0]
            if offset + 8 + value_length > len(data):
                raise struct.error("string runs past the end of the file")
            return data[offset + 8 : offset + 8 + value_length].decode("utf-8")
        offset = skip_value(value_type, offset)
    return None


def render_chat(
    messages: list[dict[str, Any]],
    template: str | None,
    *,
    add_generation_prompt: bool = True,
    bos_token: str = "",
    eos_token: str = "",
) -> str:
    """Render `messages` ({"role": ..., "content": ...} dicts) with a Jinja chat template.

    With `template=None` the documented ChatML fallback (FALLBACK_CHAT_TEMPLATE) is used. A template that
    calls `raise_exception(...)` (e.g. to reject an unsupported role order) raises jinja2's TemplateError.
    """
    compiled = _compile(template if template is not None else FALLBACK_CHAT_TEMPLATE)
    return compiled.render(
        messages=messages,
        add_generation_prompt=add_generation_prompt,
        bos_token=bos_token,
        eos_token=eos_token,
    )


def _raise_exception(message: str) -> None:
    raise TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    # Jinja's built-in tojson HTML-escapes '<', '>', '&' and '\''; HF replaces it with plain json.dumps.
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(date_format: str) -> str:
    return datetime.now().strftime(date_format)


@functools.lru_cache(maxsize=16)
def _compile(template: str) -> jinja2.Template:
    environment = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols]
    )
    environment.filters["tojson"] = _tojson
    environment.globals["raise_exception"] = _raise_exception
    environment.globals["strftime_now"] = _strftime_now
    return environment.from_string(template)

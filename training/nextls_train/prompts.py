"""Training prompts: the server's prompt function, with the special tokens read from the GGUF.

The server renders prompts through `LlamaRuntime.format_chat`, which passes llama.cpp's BOS/EOS token
text to `nextls.chat.render_chat`. Training has no llama.cpp at hand, so it reads the same tokens from
the GGUF's metadata and calls the same `build_messages` + `render_chat`: identical bytes (a test pins it).
"""

from __future__ import annotations

import functools
from pathlib import Path

from gguf import GGUFReader

from nextls.chat import read_chat_template, render_chat
from nextls.prompt import RepairTask, build_messages


@functools.lru_cache(maxsize=4)
def special_tokens(gguf_path: Path) -> tuple[str, str]:
    """(BOS text, EOS text) of a GGUF model's vocabulary."""
    reader = GGUFReader(gguf_path)
    tokens = reader.fields["tokenizer.ggml.tokens"]

    def token_text(key: str) -> str:
        field = reader.fields.get(key)
        if field is None:
            return ""
        token_id = int(field.parts[field.data[0]][0])
        return bytes(tokens.parts[tokens.data[token_id]]).decode("utf-8", errors="replace")

    return token_text("tokenizer.ggml.bos_token_id"), token_text("tokenizer.ggml.eos_token_id")


def training_prompt(task: RepairTask, gguf_path: str | Path, *, use_trace: bool = True) -> str:
    """The prompt text the server would send for `task` to the model in `gguf_path`."""
    path = Path(gguf_path).resolve()
    bos, eos = special_tokens(path)
    return render_chat(build_messages(task, use_trace=use_trace), read_chat_template(path),
                       bos_token=bos, eos_token=eos)

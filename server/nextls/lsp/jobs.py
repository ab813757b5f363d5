"""Long work off the event loop: jobs on their own threads, cancellation, progress, and the model.

* `JobRunner` runs each job (a test run, a trace, a fix, an explanation) on a daemon thread with a
  `threading.Event` to cancel it: the runtime kills its subprocess groups (`RunCancelled`) and the model
  stops between tokens. Jobs submitted under the same key share one run, so a hover waiting for a trace
  does not start a second one. Progress goes through a `ProgressSink` the server supplies
  (`$/progress` work-done reports).
* `ModelHost` loads the model once, lazily, on first use, and again only when its settings change.
  Generation goes through `ModelQueue`, a first-come-first-served queue: one generation at a time, and
  a job that is cancelled while it waits leaves the queue.
* `ScriptedRuntime` is a test seam, not a feature: when the environment variable
  `NEXTLS_SCRIPTED_ANSWERS` names a JSON file, the server answers from that file instead of loading a
  model (`["answer 1", "answer 2"]`, or `{"answers": [...], "delay_s": 0.5}` to make each answer take
  that long, cancellably). The end-to-end tests use it to assert an exact fix; nothing else does.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nextls.lsp.config import Settings

logger = logging.getLogger(__name__)

SCRIPTED_ANSWERS_ENV = "NEXTLS_SCRIPTED_ANSWERS"


class Cancelled(Exception):
    """The job was cancelled (by the client, by a newer edit, or by shutdown)."""


class ProgressSink(Protocol):
    def report(self, message: str, percentage: int | None = None) -> None: ...

    def end(self, message: str) -> None: ...


class Job:
    """One piece of long work: its cancel event, its progress, and a future for its result."""

    def __init__(self, title: str, key: Hashable | None = None) -> None:
        self.title = title
        self.key = key
        self.cancel = threading.Event()
        self.future: concurrent.futures.Future = concurrent.futures.Future()
        # running from the start: Future.cancel() is then a no-op, and only `cancel` stops a job
        self.future.set_running_or_notify_cancel()
        self.started = time.monotonic()
        self.sink: ProgressSink | None = None
        self.last_message = ""

    def report(self, message: str, percentage: int | None = None) -> None:
        self.last_message = message
        if self.sink is not None:
            try:
                self.sink.report(message, percentage)
            except Exception:  # progress is best effort
                logger.debug("progress report failed", exc_info=True)

    @property
    def done(self) -> bool:
        return self.future.done()


class JobRunner:
    """Runs jobs on daemon threads (a job never keeps the server from exiting)."""

    def __init__(self, progress: Callable[[Job], ProgressSink | None] | None = None) -> None:
        self._progress = progress
        self._lock = threading.Lock()
        self._running: dict[Hashable, Job] = {}
        self._all: set[Job] = set()

    def submit(self, title: str, work: Callable[[Job], Any], *, key: Hashable | None = None,
               progress: bool = True) -> Job:
        """Start `work(job)` on a thread, or return the running job with the same `key`."""
        with self._lock:
            if key is not None:
                running = self._running.get(key)
                if running is not None and not running.done and not running.cancel.is_set():
                    return running
            job = Job(title, key)
            if key is not None:
                self._running[key] = job
            self._all.add(job)
        thread = threading.Thread(target=self._run, args=(job, work, progress), name=f"nextls: {title}",
                                  daemon=True)
        thread.start()
        return job

    def _run(self, job: Job, work: Callable[[Job], Any], progress: bool) -> None:
        if progress and self._progress is not None:
            try:
                job.sink = self._progress(job)
            except Exception:
                logger.debug("could not start progress for %s", job.title, exc_info=True)
        outcome = "done"
        try:
            result = work(job)
        except BaseException as error:  # the job's waiters see it; the server lives on
            outcome = "cancelled" if job.cancel.is_set() or isinstance(error, Cancelled) else "failed"
            if outcome == "failed":
                logger.warning("%s failed: %s: %s", job.title, type(error).__name__, error,
                               exc_info=logger.isEnabledFor(logging.DEBUG))
            job.future.set_exception(error)
        else:
            job.future.set_result(result)
        finally:
            with self._lock:
                if job.key is not None and self._running.get(job.key) is job:
                    del self._running[job.key]
                self._all.discard(job)
            if job.sink is not None:
                try:
                    job.sink.end(outcome)
                except Exception:
                    logger.debug("could not end progress for %s", job.title, exc_info=True)

    def cancel_all(self) -> int:
        with self._lock:
            jobs = list(self._all)
        for job in jobs:
            job.cancel.set()
        return len(jobs)

    def wait_idle(self, timeout: float) -> bool:
        """Wait (up to `timeout` s) for the running jobs to end: cancelled ones kill their processes first."""
        with self._lock:
            jobs = list(self._all)
        _, pending = concurrent.futures.wait([job.future for job in jobs], timeout=timeout)
        return not pending


class ModelQueue:
    """One holder at a time, served in arrival order; a waiter whose cancel event is set leaves."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._waiting: deque[object] = deque()

    @contextlib.contextmanager
    def turn(self, cancel: threading.Event | None = None, on_wait: Callable[[int], None] | None = None
             ) -> Iterator[None]:
        ticket = object()
        with self._condition:
            self._waiting.append(ticket)
            if self._waiting[0] is not ticket and on_wait is not None:
                on_wait(self._waiting.index(ticket))
            while self._waiting[0] is not ticket:
                if cancel is not None and cancel.is_set():
                    self._waiting.remove(ticket)
                    self._condition.notify_all()
                    raise Cancelled("cancelled while waiting for the model")
                self._condition.wait(0.05)
        try:
            yield
        finally:
            with self._condition:
                self._waiting.popleft()
                self._condition.notify_all()

    @property
    def length(self) -> int:
        with self._condition:
            return len(self._waiting)


class ModelHost:
    """The model, loaded once on first use and kept; reloaded when its settings change."""

    def __init__(self, on_load: Callable[[str], None] | None = None) -> None:
        self.queue = ModelQueue()
        self.on_load = on_load
        self._runtime: Any = None
        self._key: tuple | None = None
        self._lock = threading.Lock()

    def _wanted_key(self, settings: Settings) -> tuple:
        scripted = os.environ.get(SCRIPTED_ANSWERS_ENV)
        return ("scripted", scripted) if scripted else ("llama", *settings.model_key())

    def loaded(self, settings: Settings, cancel: threading.Event | None = None) -> Any:
        """The runtime for `settings`, loading it (in the queue, so never under a running generation)."""
        key = self._wanted_key(settings)
        with self._lock:
            if self._runtime is not None and self._key == key:
                return self._runtime
        with self.queue.turn(cancel):
            with self._lock:
                if self._runtime is not None and self._key == key:
                    return self._runtime
                old, self._runtime, self._key = self._runtime, None, None
            if old is not None and hasattr(old, "close"):
                old.close()
            started = time.perf_counter()
            runtime = self._load(settings, key)
            with self._lock:
                self._runtime, self._key = runtime, key
            if self.on_load is not None:
                self.on_load(f"loaded {self.description} in {time.perf_counter() - started:.1f}s")
            return runtime

    def _load(self, settings: Settings, key: tuple) -> Any:
        if key[0] == "scripted":
            logger.warning("answering from %s (%s test seam), not from a model", key[1], SCRIPTED_ANSWERS_ENV)
            return ScriptedRuntime(Path(key[1]))
        from nextls.model import LlamaRuntime, default_lora, resolve_model

        model = resolve_model(None, settings.model_path)
        lora = None if settings.lora_path == "none" else settings.lora_path or default_lora(model)
        return LlamaRuntime(model, lora_path=lora, n_ctx=settings.context_size, n_threads=settings.threads,
                            n_gpu_layers=settings.gpu_layers, seed=settings.seed)

    @property
    def description(self) -> str | None:
        with self._lock:
            runtime = self._runtime
        if runtime is None:
            return None
        name = Path(getattr(runtime, "model_path", "") or "").name or "scripted answers"
        lora = getattr(runtime, "lora_path", None)
        merged = " (merged)" if getattr(runtime, "merged", False) else ""
        return f"{name}{f' + {Path(lora).name}{merged}' if lora else ''} on {runtime.device}"

    def session(self, settings: Settings, cancel: threading.Event | None, job: Job | None = None) -> QueuedRuntime:
        return QueuedRuntime(self, settings, cancel, job)


class QueuedRuntime:
    """A `LlamaRuntime` look-alike for `fix_function`: each generation waits for its turn in the queue."""

    def __init__(self, host: ModelHost, settings: Settings, cancel: threading.Event | None, job: Job | None) -> None:
        self._host = host
        self._settings = settings
        self._cancel = cancel
        self._job = job
        self.runtime = host.loaded(settings, cancel)

    @property
    def device(self) -> str:
        return self.runtime.device

    def format_chat(self, messages: list[dict[str, Any]]) -> str:
        return self.runtime.format_chat(messages)

    def _waiting(self, ahead: int) -> None:
        if self._job is not None:
            self._job.report(f"waiting for the model ({ahead} ahead)")

    def sample(self, prompt: str, k: int, **options: Any):
        with self._host.queue.turn(self._cancel, self._waiting):
            return self.runtime.sample(prompt, k, **options)

    def generate(self, prompt: str, **options: Any):
        with self._host.queue.turn(self._cancel, self._waiting):
            return self.runtime.generate(prompt, **options)


@dataclass
class ScriptedRuntime:
    """Test seam (see the module docstring): answers from a JSON file instead of a model."""

    path: Path

    def __post_init__(self) -> None:
        data = json.loads(self.path.read_text(encoding="utf-8"))
        if isinstance(data, list):
            data = {"answers": data}
        self.answers: list[str] = [str(answer) for answer in data.get("answers", [])]
        self.delay_s = float(data.get("delay_s", 0.0))
        if not self.answers:
            raise ValueError(f"{self.path}: no answers")
        self.device = "CPU (scripted answers)"
        self.model_path = self.path
        self._lock = threading.Lock()

    def format_chat(self, messages: list[dict[str, Any]], **_: Any) -> str:
        from nextls.chat import render_chat

        return render_chat(messages, None)

    def _answer(self, prompt: str, index: int, seed: int, cancel: threading.Event | None):
        from nextls.model import Generation

        started = time.perf_counter()
        if self.delay_s and cancel is not None and cancel.wait(self.delay_s):
            return Generation("", len(prompt) // 4, 0, "cancelled", time.perf_counter() - started, seed, 0)
        if self.delay_s and cancel is None:
            time.sleep(self.delay_s)
        text = self.answers[index % len(self.answers)]
        return Generation(text, len(prompt) // 4, len(text) // 4, "stop", time.perf_counter() - started, seed, 0)

    def generate(self, prompt: str, *, seed: int | None = None, cancel: threading.Event | None = None, **_: Any):
        with self._lock:
            return self._answer(prompt, 0, seed or 0, cancel)

    def sample(self, prompt: str, k: int, *, seed: int | None = None, cancel: threading.Event | None = None,
               stop_when: Callable[[Any], bool] | None = None, **_: Any) -> list:
        samples = []
        with self._lock:
            for index in range(k):
                if cancel is not None and cancel.is_set():
                    break
                sample = self._answer(prompt, index, (seed or 0) + index, cancel)
                samples.append(sample)
                if sample.finish_reason == "cancelled" or (stop_when is not None and stop_when(sample)):
                    break
        return samples

    def close(self) -> None:
        pass

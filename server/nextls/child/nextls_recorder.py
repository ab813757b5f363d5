"""Line-level execution recorder for one target function (stdlib only; runs in the traced process).

Both trace backends use this one recorder, so they record the same events with the same value reprs:
the in-process backend installs it directly, the debugpy backend injects its source into the debuggee
through a DAP `evaluate` request and installs it from there.

How it hooks in: a profile function (`sys.setprofile`) sees every Python call; for frames running the
target's code (or code nested in it: comprehensions, inner functions) it sets `frame.f_trace`, so only
those frames pay for line tracing. Line events need a global trace function; under debugpy, pydevd's
is already there, otherwise a no-op one is installed.

An event records what changed: a line's entry lists the locals whose repr differs after the line ran
(known at the frame's next event), the call lists the arguments, a return adds `__return__`, and an
exception leaving the frame adds `__exception__`.
"""

from __future__ import annotations

import json
import os
import re
import reprlib
import signal
import sys
import threading
import time

RETURN_KEY = "__return__"
EXCEPTION_KEY = "__exception__"


class SafeRepr(reprlib.Repr):
    """A repr that never raises, never hangs for long, and stays short.

    Containers are cut after `maxlist` items, strings keep their head and tail
    (LDB's 50 + ... + 50), and a user-defined `__repr__` that raises or runs longer
    than `user_repr_seconds` is replaced by a placeholder.
    """

    def __init__(self, max_string: int = 100, max_items: int = 10, max_depth: int = 4,
                 user_repr_seconds: float = 0.05) -> None:
        super().__init__()
        self.maxlevel = max_depth
        self.maxtuple = self.maxlist = self.maxarray = self.maxdeque = max_items
        self.maxdict = self.maxset = self.maxfrozenset = max_items
        self.maxstring = self.maxother = self.maxlong = max_string
        self.user_repr_seconds = user_repr_seconds
        self._active: set[int] = set()

    def repr_str(self, value: str, level: int) -> str:
        return self._shorten(builtin_repr(value))

    def repr_bytes(self, value: bytes, level: int) -> str:
        return self._shorten(builtin_repr(value))

    def repr_int(self, value: int, level: int) -> str:
        if value.bit_length() > 1000:  # str() of a huge int is slow and capped by sys.int_info
            return f"<int of {value.bit_length()} bits>"
        return self._shorten(builtin_repr(value))

    def _shorten(self, text: str) -> str:
        if len(text) <= self.maxstring:
            return text
        half = self.maxstring // 2
        return text[:half] + "..." + text[-half:]

    def repr1(self, value: object, level: int) -> str:
        key = id(value)
        if key in self._active:  # a container that holds itself
            return "<recursion>"
        self._active.add(key)
        try:
            kind = type(value)
            if kind.__repr__ is object.__repr__:
                return f"<{kind.__qualname__} object>"
            if kind.__module__ == "builtins":
                handler = getattr(self, "repr_" + kind.__name__.replace(" ", "_"), None)
                if handler is not None:
                    return handler(value, level)
                return self._shorten(_without_address(builtin_repr(value)))
            return self._user_repr(value)
        except Exception as error:
            # (BaseExceptions pass: the harness's per-test alarm may land here and must reach the test)
            return f"<{type(value).__qualname__} object (repr raised {type(error).__name__})>"
        finally:
            self._active.discard(key)

    def _user_repr(self, value: object) -> str:
        """Call a repr we do not trust, under a timer when we are on the main thread."""
        if self.user_repr_seconds <= 0 or threading.current_thread() is not threading.main_thread():
            return self._shorten(builtin_repr(value))
        # the harness's per-test alarm shares this timer: keep its deadline and put it back afterwards
        outer_left = signal.getitimer(signal.ITIMER_REAL)[0]
        budget = min(self.user_repr_seconds, outer_left) if outer_left else self.user_repr_seconds
        previous = signal.signal(signal.SIGALRM, _raise_repr_timeout)
        started = time.monotonic()
        signal.setitimer(signal.ITIMER_REAL, budget)
        try:
            text = builtin_repr(value)
        except _ReprTimeout:
            return f"<{type(value).__qualname__} object (repr timed out)>"
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            if outer_left:
                signal.setitimer(signal.ITIMER_REAL, max(outer_left - (time.monotonic() - started), 1e-6))
        if not isinstance(text, str):
            return f"<{type(value).__qualname__} object (repr returned {type(text).__name__})>"
        return self._shorten(_without_address(text))


builtin_repr = repr
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


def _without_address(text: str) -> str:
    """`<function f at 0x7f..>` -> `<function f>`: addresses differ run to run and mean nothing to a reader."""
    return _ADDRESS.sub("", text)


class _ReprTimeout(BaseException):
    pass


def _raise_repr_timeout(signum: int, frame: object) -> None:
    raise _ReprTimeout()


def describe_exception(error: BaseException, safe: SafeRepr) -> str:
    """`ValueError('bad')` rendered through the safe repr."""
    return safe.repr(error)


class TargetMatcher:
    """Tells whether a code object is the target function's (or code nested in it), caching per code."""

    def __init__(self, filename: str, qualname: str) -> None:
        self.filename = os.path.realpath(filename)
        self.qualname = qualname
        self._codes: dict[object, bool] = {}

    def __call__(self, code: object) -> bool:
        known = self._codes.get(code)
        if known is None:
            qualname = getattr(code, "co_qualname", code.co_name)  # co_qualname: 3.11+
            known = (qualname == self.qualname or qualname.startswith(self.qualname + ".<locals>.")) and (
                os.path.realpath(code.co_filename) == self.filename)
            if not hasattr(code, "co_qualname"):  # 3.10: match by name and file only
                known = code.co_name == self.qualname.rsplit(".", 1)[-1] and (
                    os.path.realpath(code.co_filename) == self.filename)
            self._codes[code] = known
        return known


class _TargetHook:
    """Installs the subclass's `_profile` (which picks the target's frames to line-trace) and, when no
    global trace function is there (no debugger), a no-op one: line events need it."""

    def __init__(self, filename: str, qualname: str) -> None:
        self._is_target = TargetMatcher(filename, qualname)
        self._previous_profile = None
        self._installed_global_trace = False

    def install(self) -> None:
        self._previous_profile = sys.getprofile()
        if sys.gettrace() is None:
            sys.settrace(_no_global_trace)
            self._installed_global_trace = True
        sys.setprofile(self._profile)

    def uninstall(self) -> None:
        sys.setprofile(self._previous_profile)
        if self._installed_global_trace:
            sys.settrace(None)
            self._installed_global_trace = False


class LineCoverage(_TargetHook):
    """The lines one test executed inside the target function: the spectrum fault localization ranks.

    Hooks in like the recorder (a profile function picks the target's frames, only those are line-traced)
    but keeps no values, so it costs little more than the untraced run.
    """

    def __init__(self, filename: str, qualname: str) -> None:
        super().__init__(filename, qualname)
        self.lines: set[int] = set()

    def __enter__(self) -> LineCoverage:
        self.install()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.uninstall()

    def _profile(self, frame, event: str, arg: object) -> None:
        if event == "call" and self._is_target(frame.f_code):
            frame.f_trace_lines = True
            frame.f_trace = self._line

    def _line(self, frame, event: str, arg: object):
        if event == "line":
            self.lines.add(frame.f_lineno)
        return self._line


class Recorder(_TargetHook):
    """Records the frames of one function, identified by its file and qualified name."""

    def __init__(self, filename: str, qualname: str, max_steps: int = 10_000,
                 max_string: int = 100, max_items: int = 10) -> None:
        super().__init__(filename, qualname)
        self.filename = os.path.realpath(filename)
        self.qualname = qualname
        self.max_steps = max_steps
        self.safe = SafeRepr(max_string=max_string, max_items=max_items)
        self.events: list[dict] = []
        self.truncated = False
        self._step = 0
        self._frame_ids: dict[int, int] = {}  # id(frame) -> our frame number, for live frames
        self._frames_seen = 0
        self._pending: dict[int, tuple[dict, dict[str, str]]] = {}  # frame number -> (open line event, reprs)
        self._exception: dict[int, str] = {}  # frame number -> exception seen on its last line

    # -- hooks ------------------------------------------------------------------------------
    def _profile(self, frame, event: str, arg: object) -> None:
        if event != "call" or not self._is_target(frame.f_code):
            return
        if self._step >= self.max_steps:
            self.truncated = True
            return
        number = self._frames_seen
        self._frames_seen += 1
        self._frame_ids[id(frame)] = number
        arguments = self._snapshot(frame)
        self._add(number, frame.f_code.co_firstlineno, "call", dict(arguments))
        self._pending[number] = ({}, arguments)
        frame.f_trace_lines = True
        frame.f_trace = self._local_trace

    def _local_trace(self, frame, event: str, arg: object):
        number = self._frame_ids.get(id(frame))
        if number is None:
            return None
        if event == "line":
            self._close_line(number, frame)
            if self._step >= self.max_steps:
                self.truncated = True
                self._finish_frame(number, frame)
                frame.f_trace = None  # returning None from a line event would not stop the line events
                return None
            event_record = self._add(number, frame.f_lineno, "line", {})
            self._pending[number] = (event_record, self._pending[number][1])
            self._exception.pop(number, None)
        elif event == "exception":
            self._exception[number] = describe_exception(arg[1], self.safe)
        elif event == "return":
            open_line = self._close_line(number, frame)
            if open_line is not None:
                if number in self._exception:
                    # 3.11 reports an exception's exit as a return with None, right after the exception event
                    open_line["values"][EXCEPTION_KEY] = self._exception.pop(number)
                else:
                    open_line["values"][RETURN_KEY] = self.safe.repr(arg)
            self._finish_frame(number, frame)
            return None
        return self._local_trace

    # -- bookkeeping ------------------------------------------------------------------------
    def _add(self, frame_number: int, line: int, kind: str, values: dict[str, str]) -> dict:
        record = {"step": self._step, "frame": frame_number, "line": line, "kind": kind, "values": values}
        self._step += 1
        self.events.append(record)
        return record

    def _close_line(self, number: int, frame) -> dict | None:
        """Fill the open line event with the locals its line changed; return it."""
        open_line, before = self._pending.get(number, (None, {}))
        after = self._snapshot(frame)
        if open_line:
            open_line["values"].update(
                (name, text) for name, text in after.items() if before.get(name) != text)
        self._pending[number] = ({}, after)
        return open_line or None

    def _finish_frame(self, number: int, frame) -> None:
        self._frame_ids.pop(id(frame), None)  # a later frame may reuse the id
        self._pending.pop(number, None)
        self._exception.pop(number, None)

    def _snapshot(self, frame) -> dict[str, str]:
        # `.0` is a comprehension's hidden iterator; it is no variable of the user's
        return {name: self.safe.repr(value) for name, value in frame.f_locals.items()
                if not name.startswith(".")}

    def to_json(self) -> dict:
        return {"filename": self.filename, "qualname": self.qualname, "events": self.events,
                "truncated": self.truncated, "max_steps": self.max_steps}

    def dump(self, path: str) -> None:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(self.to_json(), out)


def _no_global_trace(frame, event: str, arg: object) -> None:
    """A global trace function that traces nothing by itself: it only enables line events."""
    return None


ACTIVE: Recorder | None = None


def start(filename: str, qualname: str, max_steps: int = 10_000) -> str:
    """Install a recorder for this thread; the debugpy backend calls this through `evaluate`."""
    global ACTIVE
    ACTIVE = Recorder(filename, qualname, max_steps=max_steps)
    ACTIVE.install()
    return "recording"


def stop(path: str) -> str:
    """Uninstall the active recorder and write what it recorded to `path`."""
    global ACTIVE
    if ACTIVE is None:
        return "not recording"
    ACTIVE.uninstall()
    ACTIVE.dump(path)
    ACTIVE = None
    return "written"

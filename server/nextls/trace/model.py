"""The trace data model both backends produce (from the recorder's JSON)."""

from __future__ import annotations

from dataclasses import dataclass, field

from nextls.messages import readable

RETURN_KEY = "__return__"
EXCEPTION_KEY = "__exception__"


@dataclass(frozen=True)
class TraceEvent:
    """One step of the target's execution.

    `kind` is "call" (values: the arguments) or "line" (values: the locals the line changed, plus
    `__return__` / `__exception__` when the frame left on that line). `frame` numbers the target's
    frames in call order, so recursion stays readable.
    """

    step: int
    frame: int
    line: int
    kind: str
    values: dict[str, str]


@dataclass
class Trace:
    filename: str
    qualname: str
    events: list[TraceEvent]
    truncated: bool = False
    max_steps: int = 0
    backend: str = ""
    test_id: str = ""
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict, *, backend: str = "", test_id: str = "") -> Trace:
        events = [TraceEvent(e["step"], e["frame"], e["line"], e["kind"],
                             {name: readable(value) for name, value in e["values"].items()})
                  for e in data["events"]]
        return cls(filename=data["filename"], qualname=data["qualname"], events=events,
                   truncated=bool(data.get("truncated")), max_steps=int(data.get("max_steps", 0)),
                   backend=backend, test_id=test_id)

    def to_json(self) -> dict:
        return {"filename": self.filename, "qualname": self.qualname, "truncated": self.truncated,
                "max_steps": self.max_steps, "backend": self.backend, "test_id": self.test_id,
                "events": [{"step": e.step, "frame": e.frame, "line": e.line, "kind": e.kind, "values": e.values}
                           for e in self.events]}

    @property
    def steps(self) -> int:
        return len(self.events)

    def values_by_line(self) -> dict[int, list[TraceEvent]]:
        """Events that changed something, grouped by source line, in execution order."""
        lines: dict[int, list[TraceEvent]] = {}
        for event in self.events:
            if event.values:
                lines.setdefault(event.line, []).append(event)
        return lines

"""Execution traces: one data model, two capture backends, the NExT naturalized rendering."""

from nextls.trace.model import Trace, TraceEvent
from nextls.trace.render import RenderOptions, render_naturalized

__all__ = ["RenderOptions", "Trace", "TraceEvent", "render_naturalized"]

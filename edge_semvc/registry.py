"""One way to pick an implementation by name: a `Registry` maps each name to "module:attribute",
imported on first use (a missing optional library matters only when its backend is asked for),
and answers "can it run here?" in one form, `why_unavailable(name)`: None, or the reason.

An implementation says why it cannot run by an `unavailable_reason()` (a function or class
method returning None or the reason); one without it runs wherever it imports. The registries
are the encoders (encoders/__init__.py), the labeler's runtimes (labeler/runtime.py) and
adapters (labeler/adapters.py), the input sources (sources/__init__.py), the outputs
(sinks/__init__.py) and the QP map's devices (qp/__init__.py). Targets are strings, so the
import graph has no edge to them.
"""
from __future__ import annotations

import importlib
from typing import Any

from .errors import EdgeSemvcError


class Registry:
    """`kind`: what the names pick, as an error says it ("encoder", "labeler runtime");
    `entries`: name -> "package.module:attribute"; `error`: the EdgeSemvcError raised for an
    unknown name or an implementation that cannot be imported."""

    def __init__(self, kind: str, entries: dict[str, str],
                 error: type[EdgeSemvcError] = EdgeSemvcError):
        self.kind, self.entries, self.error = kind, dict(entries), error
        self._loaded: dict[str, Any] = {}

    def names(self) -> list[str]:
        return list(self.entries)

    def __contains__(self, name: str) -> bool:
        return name in self.entries

    def get(self, name: str) -> Any:
        """The implementation registered under `name`, imported now if it was not."""
        if name not in self.entries:
            raise self.error(f"unknown {self.kind} {name!r} (known: {', '.join(self.entries)})")
        if name not in self._loaded:
            module, _, attr = self.entries[name].partition(":")
            try:
                self._loaded[name] = getattr(importlib.import_module(module), attr)
            except ImportError as e:
                raise self.error(f"{self.kind} {name!r} cannot be imported: {e}") from e
        return self._loaded[name]

    def why_unavailable(self, name: str) -> str | None:
        """None when `name` can run here, else why not (unknown, not importable, or the
        implementation's own `unavailable_reason()`)."""
        try:
            impl = self.get(name)
        except EdgeSemvcError as e:
            return str(e)
        reason = getattr(impl, "unavailable_reason", None)
        return reason() if reason is not None else None

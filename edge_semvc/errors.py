"""The project's exceptions: one root, so the command line and the service map every error to
an exit status or an event in one place (PyAV's `InvalidDataError(FFmpegError, ValueError)`
shape: each also derives from the builtin a caller would expect).

``exit_status`` is what the command line returns: 2 for a problem the user can fix before any
frame is encoded; the pipeline turns a break part-way (DecodeError, WriteError) into 3 after
finalising what was written. A stop signal is not an error: see ``stop.Stopped``.
"""
from __future__ import annotations


class EdgeSemvcError(Exception):
    """Root of every error the project raises on purpose (one-line message)."""

    exit_status = 2


class ConfigError(EdgeSemvcError, ValueError):
    """A configuration key or value is wrong (names the key, the value and what is allowed).
    ``key``: the dotted key at fault, where there is one (the service's events carry it)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


class SourceError(EdgeSemvcError, RuntimeError):
    """The input cannot be opened or read."""


class DecodeError(SourceError):
    """Decoding failed part-way (or the input ended early); the frames before it were
    delivered."""

    exit_status = 3


class SinkError(EdgeSemvcError, ValueError):
    """An output the sink cannot write: unknown container, missing parameter sets, closed sink,
    two outputs naming one file."""


class WriteError(EdgeSemvcError, OSError):
    """The output could not be written part-way (disk full, device gone): like a decode error,
    the run ends with what was written and its statistics."""

    exit_status = 3

    def __str__(self) -> str:
        return self.strerror


class EncoderError(EdgeSemvcError):
    """The encoder cannot be loaded or configured, or refused a frame."""


class ModelError(EdgeSemvcError):
    """A model cannot be obtained, checked, converted or is not prepared."""


class LabelerError(EdgeSemvcError, RuntimeError):
    """A labeler runtime is unavailable or failed."""

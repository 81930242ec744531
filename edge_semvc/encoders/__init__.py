"""Encoder backends behind one interface (:class:`~edge_semvc.encoders.base.Encoder`).

Backends are imported lazily by name, so a missing optional library only matters when that backend
is asked for::

    cls = get_encoder("x264")
    ok, why = cls.available()
"""
from __future__ import annotations

import importlib

from .base import Encoder, EncoderError, EncoderSettings, Packet

AUTO = "auto"  # chosen per machine by the pre-flight (preflight.py): the Jetson encoder there
CPU_ENCODER = "x264"  # ... and what `auto` means where no pre-flight ran

# type_key -> "module:Class" (relative to this package)
_BACKENDS: dict[str, str] = {
    "x264": ".x264:X264Encoder",
    "x265": ".x265:X265Encoder",
    "jetson-v4l2": ".jetson_v4l2:JetsonV4l2Encoder",
    "nvenc": ".nvenc:NvencEncoder",
}


def known_encoders() -> list[str]:
    return sorted(_BACKENDS)


def get_encoder(name: str) -> type[Encoder]:
    """The encoder class registered under ``name`` (its ``type_key``; ``auto``: x264)."""
    key = str(name).strip().lower()
    key = CPU_ENCODER if key == AUTO else key
    target = _BACKENDS.get(key)
    if target is None:
        raise EncoderError(f"unknown encoder {name!r}; known: {', '.join(known_encoders())}")
    mod_name, cls_name = target.split(":")
    try:
        mod = importlib.import_module(mod_name, __name__)
    except ImportError as e:
        raise EncoderError(f"encoder {key!r} cannot be imported: {e}") from e
    cls = getattr(mod, cls_name)
    assert cls.type_key == key, (cls, key)
    return cls


__all__ = ["AUTO", "CPU_ENCODER", "Encoder", "EncoderError", "EncoderSettings", "Packet",
           "get_encoder", "known_encoders"]

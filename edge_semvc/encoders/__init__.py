"""Encoder backends behind one interface (:class:`~edge_semvc.encoders.base.Encoder`).

Backends are imported lazily by name (registry.py), so a missing optional library only matters
when that backend is asked for::

    cls = get_encoder("x264")
    why = ENCODERS.why_unavailable("x264")  # None: it runs here
"""
from __future__ import annotations

from ..registry import Registry
from .base import Encoder, EncoderError, EncoderSettings, Packet

AUTO = "auto"  # chosen per machine by the pre-flight (preflight.py): the Jetson encoder there
CPU_ENCODER = "x264"  # ... and what `auto` means where no pre-flight ran

# type_key -> the backend's class
ENCODERS = Registry("encoder", {
    "x264": "edge_semvc.encoders.x264:X264Encoder",
    "x265": "edge_semvc.encoders.x265:X265Encoder",
    "jetson-v4l2": "edge_semvc.encoders.jetson_v4l2:JetsonV4l2Encoder",
    "nvenc": "edge_semvc.encoders.nvenc:NvencEncoder",
}, EncoderError)


def known_encoders() -> list[str]:
    return sorted(ENCODERS.names())


def get_encoder(name: str) -> type[Encoder]:
    """The encoder class registered under ``name`` (its ``type_key``; ``auto``: x264)."""
    key = str(name).strip().lower()
    return ENCODERS.get(CPU_ENCODER if key == AUTO else key)


__all__ = ["AUTO", "CPU_ENCODER", "ENCODERS", "Encoder", "EncoderError", "EncoderSettings",
           "Packet", "get_encoder", "known_encoders"]

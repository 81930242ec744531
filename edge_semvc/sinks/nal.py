"""NAL units of an Annex-B access unit (H.264, HEVC): which types it holds before its first
slice, whether it carries its parameter sets, whether it is an IDR. What every output reads of
the encoder's packets (files, segments, streams, the receivers' IDR requests)."""
from __future__ import annotations

from ..errors import SinkError

CODECS = ("h264", "hevc")
# per codec: NAL types of the parameter set that must precede the first slice (SPS), of IDR
# slices, and the names of the parameter sets for messages
_SPS = {"h264": 7, "hevc": 33}
_IDR = {"h264": (5,), "hevc": (19, 20)}
PARAMETER_SETS = {"h264": "SPS/PPS", "hevc": "VPS/SPS/PPS"}


def check_codec(codec: str) -> str:
    if codec not in CODECS:
        raise SinkError(f"unknown codec {codec!r}; supported: {', '.join(CODECS)}")
    return codec


def nal_types(data: bytes, limit: int = 64, codec: str = "h264"):
    """NAL unit types of an Annex-B buffer, in order (stops at the first slice)."""
    hevc = check_codec(codec) == "hevc"
    i, n = 0, len(data)
    for _ in range(limit):
        j = data.find(b"\x00\x00\x01", i)
        if j < 0 or j + 3 >= n:
            return
        if hevc:  # two-byte header: forbidden bit, 6-bit type, layer id, temporal id
            t = (data[j + 3] >> 1) & 0x3F
            yield t
            if t < 32:  # VCL (slice) NAL units are types 0-31
                return
        else:
            t = data[j + 3] & 0x1F
            yield t
            if t in (1, 5):
                return
        i = j + 3


def has_parameter_sets(data: bytes, codec: str = "h264") -> bool:
    """Whether an Annex-B access unit carries an SPS before its first slice."""
    return _SPS[check_codec(codec)] in nal_types(data, codec=codec)


def is_idr(data: bytes, codec: str = "h264") -> bool:
    """Whether an Annex-B access unit's first slice is an IDR slice (not an open-GOP I/CRA)."""
    return any(t in _IDR[check_codec(codec)] for t in nal_types(data, codec=codec))

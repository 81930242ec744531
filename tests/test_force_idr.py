"""Encoder.encode(..., force_idr=True): an IDR exactly on the asked frames (x264, real clip)."""
from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from edge_semvc.encoders import EncoderSettings
from edge_semvc.frame import Frame

VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video"
TB = Fraction(1, 10)

x264 = pytest.importorskip("edge_semvc.encoders.x264")
X264Encoder = x264.X264Encoder


@pytest.fixture(scope="module")
def street():
    ok, why = X264Encoder.available()
    if not ok:
        pytest.skip(f"x264 backend unavailable: {why}")
    path = VIDEO / "street_pedestrians_vtest_768x576.avi"
    if not path.exists():
        pytest.skip(f"test clip {path} is missing (../shared/data/video beside the project)")
    frames = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            frames.append(Frame.from_i420(f.to_ndarray(format="yuv420p"), f.width, f.height,
                                          i, TB, i))
            if len(frames) == 40:
                break
    return frames


def encode(frames, settings, force=(), default_call=False):
    packets = []
    with X264Encoder(settings) as enc:
        for f in frames:
            if default_call:  # the call as it was before force_idr existed
                packets += enc.encode(f, None)
            else:
                packets += enc.encode(f, None, force_idr=f.index in force)
        packets += enc.flush()
    return packets


def nal_types(data: bytes) -> list[int]:
    return [data[i + 3] & 0x1F for i in range(len(data) - 3) if data[i:i + 3] == b"\0\0\1"]


def decode(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data), format="h264") as c:
        return [f.to_ndarray(format="yuv420p") for f in c.decode(video=0)]


@pytest.mark.parametrize("params", [{}, {"open-gop": "1"}], ids=["closed-gop", "open-gop"])
def test_forced_idr_exactly_there_and_each_decodes_alone(street, params):
    s = EncoderSettings(width=768, height=576, fps=Fraction(10), time_base=TB, threads=1,
                        params=params)
    force = {7, 20, 21, 33}
    packets = encode(street, s, force)
    # the clip has no scene cut and keyint is 250: keyframes are frame 0 and the forced ones
    assert sorted(p.pts for p in packets if p.keyframe) == [0, *sorted(force)]
    for p in packets:
        assert (5 in nal_types(p.data)) == p.keyframe  # IDR slices, not I-frames (open GOP)
    full = decode(b"".join(p.data for p in packets))
    assert len(full) == len(street)
    # from each forced IDR on, the stream decodes alone (in-band SPS/PPS, nothing referenced
    # across it) to exactly the same pictures
    for k in sorted(force):
        start = next(i for i, p in enumerate(packets) if p.pts == k)
        assert all(p.pts >= k for p in packets[start:])  # closed: no frame before it follows
        alone = decode(b"".join(p.data for p in packets[start:]))
        assert len(alone) == len(street) - k
        assert all(np.array_equal(a, b) for a, b in zip(alone, full[k:]))


def test_force_idr_false_is_byte_identical(street):
    s = EncoderSettings(width=768, height=576, fps=Fraction(10), time_base=TB, threads=1)
    frames = street[:12]
    plain = b"".join(p.data for p in encode(frames, s, default_call=True))
    assert b"".join(p.data for p in encode(frames, s, force=())) == plain
    assert b"".join(p.data for p in encode(frames, s, force={5})) != plain

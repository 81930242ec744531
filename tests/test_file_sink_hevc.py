"""FileSink and SegmentSink with HEVC: x265 packets into raw/mp4/mkv/ts, decoded back with PyAV;
the NAL parsing for both codecs."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from edge_semvc.bench.metrics import psnr
from edge_semvc.encoders import EncoderSettings
from edge_semvc.encoders.base import Packet
from edge_semvc.frame import Frame
from edge_semvc.sinks.config import RecordConfig
from edge_semvc.sinks.file import (
    FileSink,
    SinkError,
    _nal_types,
    has_parameter_sets,
    is_idr,
    wants_global_headers,
)
from edge_semvc.sinks.segments import SegmentSink

VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video"

# Annex-B NAL headers: HEVC (type << 1, then layer/temporal id byte) and H.264
HEVC_VPS, HEVC_SPS, HEVC_PPS = b"\0\0\0\1\x40\x01\x0c", b"\0\0\0\1\x42\x01\x01", b"\0\0\1\x44\x01"
HEVC_IDR, HEVC_CRA, HEVC_TRAIL = b"\0\0\1\x26\x01\xaf", b"\0\0\1\x2a\x01\xaf", b"\0\0\1\x02\x01\xd0"
H264_SPS, H264_PPS, H264_IDR = b"\0\0\0\1\x67\x64", b"\0\0\1\x68\xee", b"\0\0\1\x65\x88"


def test_nal_parsing_per_codec():
    au = HEVC_VPS + HEVC_SPS + HEVC_PPS + HEVC_IDR
    assert list(_nal_types(au, codec="hevc")) == [32, 33, 34, 19]
    assert has_parameter_sets(au, "hevc") and is_idr(au, "hevc")
    assert not has_parameter_sets(HEVC_IDR, "hevc") and is_idr(HEVC_IDR, "hevc")
    assert not is_idr(HEVC_CRA, "hevc") and not is_idr(HEVC_TRAIL, "hevc")
    # parsing stops at the first slice: a later SPS-looking byte is not a parameter set
    assert not has_parameter_sets(HEVC_TRAIL + HEVC_SPS, "hevc")
    # H.264 unchanged, and the default
    h264 = H264_SPS + H264_PPS + H264_IDR
    assert list(_nal_types(h264)) == [7, 8, 5] and has_parameter_sets(h264) and is_idr(h264)
    assert not has_parameter_sets(au) and not has_parameter_sets(h264, "hevc")
    with pytest.raises(SinkError, match="vp9"):
        has_parameter_sets(au, "vp9")


def test_raw_extension_must_match_codec(tmp_path):
    tb, fps = Fraction(1, 25), Fraction(25)
    with pytest.raises(SinkError, match=r"\.h264 file holds H264.*HEVC.*\.h265"):
        FileSink(tmp_path / "x.h264", 64, 64, tb, fps, b"", codec="hevc")
    with pytest.raises(SinkError, match=r"\.hevc file holds HEVC.*H264.*\.h264"):
        FileSink(tmp_path / "x.hevc", 64, 64, tb, fps, b"")
    with pytest.raises(SinkError, match="unknown codec 'av1'"):
        FileSink(tmp_path / "x.mp4", 64, 64, tb, fps, b"", codec="av1")
    assert not list(tmp_path.iterdir())
    assert not any(wants_global_headers(f"a{e}") for e in (".h265", ".265", ".hevc"))


x265 = pytest.importorskip("edge_semvc.encoders.x265")
X265Encoder = x265.X265Encoder


@pytest.fixture(scope="module")
def clip() -> tuple[list[Frame], Fraction, Fraction]:
    ok, why = X265Encoder.available()
    if not ok:
        pytest.skip(f"x265 backend unavailable (x265.h/libx265 missing?): {why}")
    path = VIDEO / "mobile_calendar_text_300x168.h264"
    if not path.exists():
        pytest.skip(f"test clip {path} is missing (../shared/data/video beside the project)")
    tb, fps = Fraction(1, 30000), Fraction(30000, 1001)  # NTSC timing: pts not 1 per frame
    frames = []
    with av.open(str(path)) as c:
        for i, f in enumerate(c.decode(video=0)):
            frames.append(Frame.from_i420(f.to_ndarray(format="yuv420p"), f.width, f.height,
                                          i * 1001, tb, i))
            if len(frames) == 12:
                break
    return frames, tb, fps


def encoder_for(frames, tb, fps, global_headers, **kw):
    f = frames[0]
    return X265Encoder(EncoderSettings(width=f.width, height=f.height, fps=fps, time_base=tb,
                                       global_headers=global_headers, threads=1, **kw))


def size(frames) -> tuple[int, int]:
    return frames[0].width, frames[0].height


def read_back(path):
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        assert st.codec_context.name == "hevc"
        return [(fr.pts, fr.time_base, fr.to_ndarray(format="yuv420p")[: fr.height])
                for fr in c.decode(st)]


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".ts", ".h265", ".265", ".hevc"])
def test_round_trip(tmp_path, clip, ext):
    frames, tb, fps = clip
    path = tmp_path / f"out{ext}"
    with encoder_for(frames, tb, fps, wants_global_headers(path)) as enc, \
            FileSink(path, *size(frames), tb, fps, enc.headers(), codec=enc.codec) as sink:
        for f in frames:
            sink.write(enc.encode(f, np.zeros((f.mb_h, f.mb_w), np.float32)))
        sink.write(enc.flush())
    assert sink.frames == len(frames)
    out = read_back(path)
    assert len(out) == len(frames)
    assert all(psnr(f.y, o[2]) > 28 for f, o in zip(frames, out))  # right pictures, in order
    if ext in (".mp4", ".mkv", ".ts"):
        tol = Fraction(1, 1000) if ext == ".mkv" else Fraction(0)  # mkv keeps milliseconds
        assert all(abs(o[0] * o[1] - f.pts * tb) <= tol for f, o in zip(frames, out))


def test_stream_without_parameter_sets_refused(tmp_path, clip):
    frames, tb, fps = clip
    with encoder_for(frames, tb, fps, True, tune="zerolatency") as enc:
        packets = enc.encode(frames[0], None)
    with FileSink(tmp_path / "x.mp4", *size(frames), tb, fps, b"", codec="hevc") as sink:
        with pytest.raises(SinkError, match="VPS/SPS/PPS"):
            sink.write(packets)
    with FileSink(tmp_path / "y.h265", *size(frames), tb, fps, b"", codec="hevc") as sink:
        with pytest.raises(SinkError, match="VPS/SPS/PPS"):
            sink.write(Packet(HEVC_IDR, 0, 0, True))


def test_raw_stream_gets_out_of_band_headers_at_keyframes(tmp_path, clip):
    frames, tb, fps = clip
    path = tmp_path / "raw.hevc"
    with encoder_for(frames, tb, fps, True, keyint=4) as enc, \
            FileSink(path, *size(frames), tb, fps, enc.headers(), codec="hevc") as sink:
        hdr = enc.headers()
        for f in frames[:9]:
            sink.write(enc.encode(f, None))
        sink.write(enc.flush())
    data = path.read_bytes()
    assert data.startswith(hdr) and data.count(hdr) >= 3  # keyint 4, 9 frames
    assert len(read_back(path)) == 9


@pytest.mark.parametrize("fmt", ["ts", "mp4"])
def test_segments_of_hevc_start_at_idr_and_decode_alone(tmp_path, fmt):
    ok, why = X265Encoder.available()
    if not ok:
        pytest.skip(f"x265 backend unavailable: {why}")
    path = VIDEO / "carphone_qcif_pristine.mp4"
    if not path.exists():
        pytest.skip(f"test clip {path} is missing (../shared/data/video beside the project)")
    tb = Fraction(1, 10)
    with av.open(str(path)) as c:
        frames = [Frame.from_i420(f.to_ndarray(format="yuv420p"), f.width, f.height, i, tb, i)
                  for i, f in zip(range(35), c.decode(video=0))]
    cfg = RecordConfig(dir=str(tmp_path), segment_seconds=1, format=fmt)
    s = EncoderSettings(width=176, height=144, fps=Fraction(10), time_base=tb, threads=1,
                        global_headers=SegmentSink.wants_global_headers(cfg))
    t = [datetime(2026, 1, 1, tzinfo=timezone.utc)]

    def now():
        t[0] += timedelta(seconds=1)
        return t[0]

    with X265Encoder(s) as enc, SegmentSink(cfg, "cam", s, enc.headers(), now=now,
                                            codec=enc.codec) as sink:
        for f in frames:
            sink.write(enc.encode(f, None, force_idr=sink.wants_idr(f.pts)))
        sink.write(enc.flush())
    assert sink.stats()["frames_lost"] == 0
    segs = sorted((tmp_path / "cam").glob(f"*.{fmt}"))
    assert len(segs) == 4  # 0-9, 10-19, 20-29, 30-34
    counts = [len(read_back(p)) for p in segs]  # each decodes alone
    assert counts == [10, 10, 10, 5]

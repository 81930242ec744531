"""FileSink and SegmentSink with HEVC: x265 packets into raw/mp4/mkv/ts, decoded back with PyAV;
the NAL parsing for both codecs."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from fractions import Fraction

import encoders_helpers as helpers
import pytest
from encoders_helpers import read_back

from edge_semvc.encoders import EncoderSettings
from edge_semvc.encoders.base import Packet
from edge_semvc.frame import Frame
from edge_semvc.sinks.config import RecordConfig
from edge_semvc.sinks.file import FileSink, SinkError, wants_global_headers
from edge_semvc.sinks.nal import has_parameter_sets, is_idr, nal_types
from edge_semvc.sinks.segments import SegmentSink

# Annex-B NAL headers: HEVC (type << 1, then layer/temporal id byte) and H.264
HEVC_VPS, HEVC_SPS, HEVC_PPS = b"\0\0\0\1\x40\x01\x0c", b"\0\0\0\1\x42\x01\x01", b"\0\0\1\x44\x01"
HEVC_IDR, HEVC_CRA, HEVC_TRAIL = b"\0\0\1\x26\x01\xaf", b"\0\0\1\x2a\x01\xaf", b"\0\0\1\x02\x01\xd0"
H264_SPS, H264_PPS, H264_IDR = b"\0\0\0\1\x67\x64", b"\0\0\1\x68\xee", b"\0\0\1\x65\x88"


def test_nal_parsing_per_codec():
    au = HEVC_VPS + HEVC_SPS + HEVC_PPS + HEVC_IDR
    assert list(nal_types(au, codec="hevc")) == [32, 33, 34, 19]
    assert has_parameter_sets(au, "hevc") and is_idr(au, "hevc")
    assert not has_parameter_sets(HEVC_IDR, "hevc") and is_idr(HEVC_IDR, "hevc")
    assert not is_idr(HEVC_CRA, "hevc") and not is_idr(HEVC_TRAIL, "hevc")
    # parsing stops at the first slice: a later SPS-looking byte is not a parameter set
    assert not has_parameter_sets(HEVC_TRAIL + HEVC_SPS, "hevc")
    # H.264 unchanged, and the default
    h264 = H264_SPS + H264_PPS + H264_IDR
    assert list(nal_types(h264)) == [7, 8, 5] and has_parameter_sets(h264) and is_idr(h264)
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
    helpers.require(X265Encoder, " (x265.h/libx265 missing?)")
    tb, fps = Fraction(1, 30000), Fraction(30000, 1001)  # NTSC timing: pts not 1 per frame
    return helpers.load_frames("mobile_calendar_text_300x168.h264", 12, tb, 1001), tb, fps


def encoder_for(frames, tb, fps, global_headers, **kw):
    return X265Encoder(helpers.settings_for(frames, fps, tb, global_headers=global_headers,
                                            threads=1, **kw))


def size(frames) -> tuple[int, int]:
    return frames[0].width, frames[0].height


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".ts", ".h265", ".265", ".hevc"])
def test_round_trip(tmp_path, clip, ext):
    frames, tb, fps = clip
    path = tmp_path / f"out{ext}"
    with encoder_for(frames, tb, fps, wants_global_headers(path)) as enc:
        helpers.check_file_round_trip(enc, path, frames, tb, fps, codec=enc.codec)


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
    assert len(read_back(path, "hevc")) == 9


@pytest.mark.parametrize("fmt", ["ts", "mp4"])
def test_segments_of_hevc_start_at_idr_and_decode_alone(tmp_path, fmt):
    helpers.require(X265Encoder)
    tb = Fraction(1, 10)
    frames = helpers.load_frames("carphone_qcif_pristine.mp4", 35, tb)
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
    counts = [len(read_back(p, "hevc")) for p in segs]  # each decodes alone
    assert counts == [10, 10, 10, 5]

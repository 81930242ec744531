"""FileSink: x264 packets into raw/mp4/mkv/ts, decoded back with PyAV."""
from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from edge_semvc.bench.metrics import psnr
from edge_semvc.encoders import EncoderSettings
from edge_semvc.encoders.base import Packet
from edge_semvc.frame import Frame
from edge_semvc.sinks.file import FileSink, SinkError, has_parameter_sets, wants_global_headers

VIDEO = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "video"

x264 = pytest.importorskip("edge_semvc.encoders.x264")
X264Encoder = x264.X264Encoder

# (clip, frames, time_base, fps): 854x480 at NTSC timing, 300x168 (not a multiple of 16) at 25 fps
CASES = {
    "854x480": ("drone_karma_coast_854x480.mp4", 10, Fraction(1, 30000), Fraction(30000, 1001)),
    "300x168": ("mobile_calendar_text_300x168.h264", 10, Fraction(1, 25), Fraction(25)),
}
_cache: dict[str, list[Frame]] = {}


@pytest.fixture(scope="module", autouse=True)
def _need_x264():
    ok, why = X264Encoder.available()
    if not ok:
        pytest.skip(f"x264 backend unavailable: {why}")


def frames_for(case: str) -> tuple[list[Frame], Fraction, Fraction]:
    name, n, tb, fps = CASES[case]
    path = VIDEO / name
    if not path.exists():
        pytest.skip(f"test clip {path} is missing (../shared/data/video beside the project)")
    if case not in _cache:
        step = int(1 / (fps * tb))
        frames = []
        with av.open(str(path)) as c:
            for i, f in enumerate(c.decode(video=0)):
                frames.append(Frame.from_i420(f.to_ndarray(format="yuv420p"), f.width, f.height,
                                              i * step, tb, i))  # pts start at 0: negative dts
                if len(frames) == n:
                    break
        _cache[case] = frames
    return _cache[case], tb, fps


def encoder_for(frames, tb, fps, global_headers, **kw):
    f = frames[0]
    return X264Encoder(EncoderSettings(width=f.width, height=f.height, fps=fps, time_base=tb,
                                       global_headers=global_headers, **kw))


def read_back(path):
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        out = []
        for fr in c.decode(st):
            y = fr.to_ndarray(format="yuv420p")[: fr.height]
            out.append((fr.pts, fr.time_base, fr.width, fr.height, y))
    return out


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".ts", ".h264"])
@pytest.mark.parametrize("global_headers", [None, False, True], ids=["auto", "inband", "global"])
def test_round_trip(tmp_path, case, ext, global_headers):
    frames, tb, fps = frames_for(case)
    w, h = frames[0].width, frames[0].height
    path = tmp_path / f"out{ext}"
    gh = wants_global_headers(path) if global_headers is None else global_headers
    with encoder_for(frames, tb, fps, gh) as enc, \
            FileSink(path, w, h, tb, fps, enc.headers()) as sink:
        for f in frames:
            sink.write(enc.encode(f, np.zeros((f.mb_h, f.mb_w), np.float32)))
        sink.write(enc.flush())
    assert sink.frames == len(frames)
    out = read_back(path)
    assert len(out) == len(frames)
    assert all((o[2], o[3]) == (w, h) for o in out)
    for f, o in zip(frames, out):
        assert psnr(f.y, o[4]) > 28  # right picture, right order
    if ext in (".mp4", ".mkv", ".ts"):
        got = [o[0] * o[1] for o in out]
        want = [f.pts * tb for f in frames]
        # mkv keeps milliseconds; mp4 and ts keep the exact time
        tol = Fraction(1, 1000) if ext == ".mkv" else Fraction(0)
        assert all(abs(g - x) <= tol for g, x in zip(got, want)), (got, want)


def test_global_headers_per_container():
    assert FileSink.wants_global_headers("a.mp4") and FileSink.wants_global_headers("b.MKV")
    assert not wants_global_headers("c.ts") and not wants_global_headers("d.h264")
    assert not wants_global_headers("e.264")


def test_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match=r"\.avi.*\.mp4"):
        FileSink(tmp_path / "x.avi", 64, 48, Fraction(1, 25), Fraction(25), b"")
    with pytest.raises(SinkError, match="none"):
        wants_global_headers("noext")
    assert not (tmp_path / "x.avi").exists()


def test_stream_without_parameter_sets_refused(tmp_path):
    frames, tb, fps = frames_for("300x168")
    with encoder_for(frames, tb, fps, True, tune="zerolatency") as enc:
        packets = enc.encode(frames[0], None)
    with FileSink(tmp_path / "x.mp4", 300, 168, tb, fps, b"") as sink:
        with pytest.raises(SinkError, match="SPS"):
            sink.write(packets)
    with FileSink(tmp_path / "y.h264", 300, 168, tb, fps, b"") as sink:
        with pytest.raises(SinkError, match="SPS"):
            sink.write(Packet(b"\x00\x00\x00\x01\x65\x88", 0, 0, True))


def test_raw_stream_gets_out_of_band_headers(tmp_path):
    frames, tb, fps = frames_for("300x168")
    path = tmp_path / "raw.264"
    with encoder_for(frames, tb, fps, True, keyint=4) as enc, \
            FileSink(path, 300, 168, tb, fps, enc.headers()) as sink:
        hdr = enc.headers()
        for f in frames[:9]:
            sink.write(enc.encode(f, None))
        sink.write(enc.flush())
    data = path.read_bytes()
    assert data.startswith(hdr)
    assert data.count(hdr) >= 3  # repeated at each keyframe (keyint 4, 9 frames)
    assert len(read_back(path)) == 9
    assert has_parameter_sets(hdr) and not has_parameter_sets(b"\x00\x00\x00\x01\x65\x88")


@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".ts", ".h264"])
def test_close_after_exception_leaves_playable_file(tmp_path, ext):
    frames, tb, fps = frames_for("300x168")
    path = tmp_path / f"broken{ext}"
    written = 0
    with encoder_for(frames, tb, fps, wants_global_headers(path), tune="zerolatency") as enc:
        with pytest.raises(RuntimeError, match="camera unplugged"):
            with FileSink(path, 300, 168, tb, fps, enc.headers()) as sink:
                for i, f in enumerate(frames):
                    packets = enc.encode(f, None)
                    sink.write(packets)
                    written += len(packets)
                    if i == 6:
                        raise RuntimeError("camera unplugged")
        assert sink.frames == written > 0
        sink.close()  # idempotent
        with pytest.raises(ValueError, match="closed"):
            sink.write(enc.flush())
    out = read_back(path)
    assert len(out) == written
    if ext != ".h264":
        assert sorted(o[0] * o[1] for o in out) == [o[0] * o[1] for o in out]

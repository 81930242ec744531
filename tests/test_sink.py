"""FileSink: x264 packets into raw/mp4/mkv/ts, decoded back with PyAV."""
from __future__ import annotations

from fractions import Fraction

import encoders_helpers as helpers
import pytest
from encoders_helpers import read_back

from edge_semvc.encoders.base import Packet
from edge_semvc.frame import Frame
from edge_semvc.sinks.file import FileSink, SinkError, wants_global_headers
from edge_semvc.sinks.nal import has_parameter_sets

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
    helpers.require(X264Encoder)


def frames_for(case: str) -> tuple[list[Frame], Fraction, Fraction]:
    name, n, tb, fps = CASES[case]
    if case not in _cache:  # pts start at 0: negative dts
        _cache[case] = helpers.load_frames(name, n, tb, int(1 / (fps * tb)))
    return _cache[case], tb, fps


def encoder_for(frames, tb, fps, global_headers, **kw):
    return X264Encoder(helpers.settings_for(frames, fps, tb, global_headers=global_headers, **kw))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("ext", [".mp4", ".mkv", ".ts", ".h264"])
@pytest.mark.parametrize("global_headers", [None, False, True], ids=["auto", "inband", "global"])
def test_round_trip(tmp_path, case, ext, global_headers):
    frames, tb, fps = frames_for(case)
    w, h = frames[0].width, frames[0].height
    path = tmp_path / f"out{ext}"
    gh = wants_global_headers(path) if global_headers is None else global_headers
    with encoder_for(frames, tb, fps, gh) as enc:
        out = helpers.check_file_round_trip(enc, path, frames, tb, fps)
    assert all((o[2], o[3]) == (w, h) for o in out)


@pytest.mark.parametrize("global_headers", [False, True], ids=["inband", "global"])
def test_round_trip_with_the_stream_made_at_the_first_packet(tmp_path, monkeypatch,
                                                             global_headers):
    """PyAV 17's way (sinks/mux.py), the one Python 3.10 gets, run on this PyAV too."""
    from edge_semvc.sinks import mux

    monkeypatch.setattr(mux, "WAITS_FOR_FIRST_PACKET", True)
    frames, tb, fps = frames_for("300x168")
    with encoder_for(frames, tb, fps, global_headers) as enc:
        out = helpers.check_file_round_trip(enc, tmp_path / "out.mkv", frames, tb, fps)
    assert all((o[2], o[3]) == (frames[0].width, frames[0].height) for o in out)


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

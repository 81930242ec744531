"""What the encoder backend tests (x264, x265, and the sinks they feed) share: clips decoded into
Frames, a run of frames through an encoder, Annex-B decoded back, and the checks that every
software backend passes alike. Assertions here are rewritten by pytest (conftest.py registers
this module), so a failing check reports its values."""
from __future__ import annotations

import io
from fractions import Fraction

import av
import numpy as np
import pytest
from conftest import shared_file

from edge_semvc.bench.metrics import psnr
from edge_semvc.encoders import EncoderError, EncoderSettings
from edge_semvc.frame import Frame
from edge_semvc.sinks.file import FileSink


def require(encoder, hint: str = "") -> None:
    """Skip unless the backend (an Encoder class) can run here."""
    ok, why = encoder.available()
    if not ok:
        pytest.skip(f"{encoder.type_key} backend unavailable{hint}: {why}")


def load_frames(name: str, n: int, time_base: Fraction, pts_step: int = 1) -> list[Frame]:
    """The first ``n`` frames of a clip in ../shared/data/video (a skip when it is missing),
    frame i with pts ``i * pts_step``."""
    frames = []
    with av.open(str(shared_file("data", "video", name))) as c:
        for i, f in enumerate(c.decode(video=0)):
            frames.append(Frame.from_i420(f.to_ndarray(format="yuv420p"), f.width, f.height,
                                          i * pts_step, time_base, i))
            if len(frames) == n:
                break
    return frames


def settings_for(frames, fps=Fraction(25), time_base=Fraction(1, 25), **kw) -> EncoderSettings:
    """Settings for the size of ``frames``."""
    f = frames[0]
    return EncoderSettings(width=f.width, height=f.height, fps=fps, time_base=time_base, **kw)


def encode(encoder, frames, settings, qmap=None, force=()) -> list:
    """All packets of ``frames`` through a new ``encoder`` (a class), flushed: each frame with
    ``qmap``, an IDR forced on the frame indexes in ``force``; ``force=None`` calls
    ``encode(frame, qmap)`` as it was before force_idr existed."""
    packets = []
    with encoder(settings) as enc:
        for f in frames:
            if force is None:
                packets += enc.encode(f, qmap)
            else:
                packets += enc.encode(f, qmap, force_idr=f.index in force)
        packets += enc.flush()
    return packets


def joined(packets) -> bytes:
    return b"".join(p.data for p in packets)


def decode(data: bytes, codec: str, height: int | None = None) -> list[np.ndarray]:
    """An Annex-B stream (``codec``: h264 or hevc) decoded to I420 arrays, the first ``height``
    rows (the luma plane) when given."""
    with av.open(io.BytesIO(data), format=codec) as c:
        return [f.to_ndarray(format="yuv420p")[:height] for f in c.decode(video=0)]


def nal_types(data: bytes, codec: str) -> list[int]:
    """The type of every NAL unit in an Annex-B stream."""
    return [data[i + 3] & 0x1F if codec == "h264" else (data[i + 3] >> 1) & 0x3F
            for i in range(len(data) - 3) if data[i:i + 3] == b"\0\0\1"]


def read_back(path, codec: str | None = None) -> list[tuple]:
    """A written file's pictures: (pts, time_base, width, height, luma rows) each; its video
    stream's codec must be ``codec`` when given."""
    with av.open(str(path)) as c:
        st = c.streams.video[0]
        assert codec is None or st.codec_context.name == codec
        return [(fr.pts, fr.time_base, fr.width, fr.height,
                 fr.to_ndarray(format="yuv420p")[: fr.height]) for fr in c.decode(st)]


def check_file_round_trip(enc, path, frames, time_base, fps, **sink_kw) -> list[tuple]:
    """``frames`` (with a zero QP map) through the open encoder ``enc`` into a FileSink at
    ``path`` (``sink_kw``: FileSink's, its ``codec`` also checked in the file): as many pictures
    come back, the right ones in order, and in containers with timestamps at the frames' times
    (mkv keeps milliseconds). Returns ``read_back(path)``."""
    f = frames[0]
    with FileSink(path, f.width, f.height, time_base, fps, enc.headers(), **sink_kw) as sink:
        for f in frames:
            sink.write(enc.encode(f, np.zeros((f.mb_h, f.mb_w), np.float32)))
        sink.write(enc.flush())
    assert sink.frames == len(frames)
    out = read_back(path, sink_kw.get("codec"))
    assert len(out) == len(frames)
    assert all(psnr(f.y, o[4]) > 28 for f, o in zip(frames, out))  # right pictures, in order
    if path.suffix in (".mp4", ".mkv", ".ts"):
        got, want = [o[0] * o[1] for o in out], [f.pts * time_base for f in frames]
        tol = Fraction(1, 1000) if path.suffix == ".mkv" else Fraction(0)
        assert all(abs(g - x) <= tol for g, x in zip(got, want)), (got, want)
    return out


# --- checks every software backend passes ---------------------------------------------------------

def check_pts_dts_and_headers(encoder, frames, **kw) -> tuple[bytes, list]:
    """``frames`` re-stamped 1000, 1002, ... at 1/50 s (settings ``kw``) come out with those
    pts, the first a keyframe, dts in order and never after pts. Returns (headers(), packets)."""
    frames = [Frame(f.y, f.u, f.v, 1000 + 2 * i, Fraction(1, 50), i) for i, f in enumerate(frames)]
    s = settings_for(frames, time_base=Fraction(1, 50), **kw)
    with encoder(s) as enc:
        hdr = enc.headers()
        packets = []
        for f in frames:
            packets += enc.encode(f, None)
        packets += enc.flush()
    assert sorted(p.pts for p in packets) == [f.pts for f in frames]
    assert packets[0].keyframe and packets[0].pts == 1000
    dts = [p.dts for p in packets]
    assert dts == sorted(dts) and all(p.dts <= p.pts for p in packets)
    return hdr, packets


def check_pts_rescaled_and_none(encoder, frames, settings, n_none: int) -> None:
    """Frames without pts are numbered at the frame rate, frames in milliseconds rescaled to the
    settings' time base (1/25 s)."""
    n = len(frames)
    frames = ([Frame(f.y, f.u, f.v, None, settings.time_base, i)
               for i, f in enumerate(frames[:n_none])]
              + [Frame(f.y, f.u, f.v, (n_none + i) * 40, Fraction(1, 1000), n_none + i)
                 for i, f in enumerate(frames[n_none:])])
    assert sorted(p.pts for p in encode(encoder, frames, settings)) == list(range(n))


def check_each_decodes_alone(packets, n: int, force, codec: str) -> None:
    """The ``n`` frames' packets decode to ``n`` pictures, and from each forced keyframe (pts in
    ``force``) on the stream decodes alone (in-band parameter sets, nothing referenced across
    it) to exactly the same pictures."""
    full = decode(joined(packets), codec)
    assert len(full) == n
    for k in sorted(force):
        start = next(i for i, p in enumerate(packets) if p.pts == k)
        assert all(p.pts >= k for p in packets[start:])  # closed: no frame before it follows
        alone = decode(joined(packets[start:]), codec)
        assert len(alone) == n - k
        assert all(np.array_equal(a, b) for a, b in zip(alone, full[k:]))


def check_force_idr_false_changes_nothing(encoder, frames, settings) -> None:
    """force_idr=False gives the bytes of the call without it; one forced IDR changes them."""
    plain = joined(encode(encoder, frames, settings, force=None))
    assert joined(encode(encoder, frames, settings, force=())) == plain
    assert joined(encode(encoder, frames, settings, force={5})) != plain


def check_wrong_map_and_frame_rejected(encoder, frames, settings) -> None:
    s, f = settings, frames[0]
    with encoder(s) as enc:
        for bad in (np.zeros((s.mb_h + 1, s.mb_w), np.float32),
                    np.zeros((s.mb_w, s.mb_h), np.float32),
                    np.zeros(s.mb_h * s.mb_w, np.float32)):
            with pytest.raises(EncoderError, match="shape"):
                enc.encode(f, bad)
        nan = np.zeros((s.mb_h, s.mb_w), np.float32)
        nan[0, 0] = np.nan
        with pytest.raises(EncoderError, match="NaN"):
            enc.encode(f, nan)
        small = Frame(f.y[:64, :64], f.u[:32, :32], f.v[:32, :32], 0, s.time_base, 0)
        with pytest.raises(EncoderError, match="64x64"):
            enc.encode(small, None)
        enc.encode(f, np.ones((s.mb_h, s.mb_w), np.int8))  # converted to float32
        enc.flush()
        with pytest.raises(EncoderError, match="flush"):
            enc.encode(f, None)
    with pytest.raises(EncoderError, match="closed"):
        enc.encode(f, None)
    enc.close()  # idempotent


def check_strided_planes(encoder, frame) -> None:
    """A cropped view (row stride larger than the width) encodes like a contiguous copy."""
    f, tb = frame, frame.time_base
    w, h = 128, 96
    view = Frame(f.y[8:8 + h, 16:16 + w], f.u[4:4 + h // 2, 8:8 + w // 2],
                 f.v[4:4 + h // 2, 8:8 + w // 2], 0, tb, 0)
    copy = Frame(*(np.ascontiguousarray(a) for a in (view.y, view.u, view.v)), 0, tb, 0)
    s = EncoderSettings(width=w, height=h, fps=Fraction(25), time_base=tb, threads=1)
    assert joined(encode(encoder, [view], s)) == joined(encode(encoder, [copy], s))


def check_cbr_settings_summary(encoder, width: int, height: int) -> dict:
    """CBR at 500 kbit/s: a VBV buffer of one second at that rate. Returns the summary."""
    s = EncoderSettings(width=width, height=height, fps=Fraction(25), time_base=Fraction(1, 25),
                        rc="cbr", bitrate=500_000)
    with encoder(s) as enc:
        summ = enc.settings_summary()
    assert summ["vbv_maxrate_kbps"] == 500 and summ["vbv_bufsize_kbit"] == 500
    assert summ["rc"] == "cbr"
    return summ


def check_no_frame_delay(encoder, frames, settings) -> None:
    """One packet per frame as it goes in, nothing left for flush() (tune zerolatency)."""
    with encoder(settings) as enc:
        counts = [len(enc.encode(f, None)) for f in frames]
        assert enc.flush() == []
    assert counts == [1] * len(frames)


def check_live_rate_drop(encoder, settings) -> dict:
    """100 frames of a panning texture with fresh grain (every one costs, none is a scene
    cut) through a new ``encoder`` (a class) at ``settings`` (a bitrate, no IDR of its own
    within 100 frames), the rate cut to a fifth before frame 50: the bytes come down by more
    than half, no IDR comes with the change. Returns settings_summary() after the change."""
    rng = np.random.default_rng(2)
    packets, w, h = [], settings.width, settings.height
    texture = rng.integers(0, 200, (h, w, 3), np.uint8)
    with encoder(settings) as enc:
        for i in range(100):
            if i == 50:
                enc.reconfigure(settings.bitrate // 5, settings.crf)
            rgb = np.roll(texture, 2 * i, axis=1) + rng.integers(0, 40, (h, w, 3), np.uint8)
            packets += enc.encode(Frame.from_rgb(rgb, i, settings.time_base, i))
        packets += enc.flush()
        summary = enc.settings_summary()
    sizes = [len(p.data) for p in packets]
    assert len(sizes) == 100 and [i for i, p in enumerate(packets) if p.keyframe] == [0]
    assert sum(sizes[75:]) < 0.5 * sum(sizes[25:50])
    return summary

def check_binding_cache(binding, build: str, version: int, so_glob: str, symbol: str,
                        tmp_path, monkeypatch) -> None:
    """The cffi binding's cache: keyed by the header's ``build`` macro, a fresh build lands in
    the cache (with its checksum) and is reused, not rebuilt, and leaves no build folder."""
    monkeypatch.setenv("EDGE_SEMVC_CACHE", str(tmp_path))
    a, b = tmp_path / "a.h", tmp_path / "b.h"
    a.write_text(f"#define {build} {version}\n")
    b.write_text(f"#define {build} {version + 1}\n")
    assert binding._module_name(a, None) != binding._module_name(b, None)
    assert binding._module_name(a, None) == binding._module_name(a, None)
    mod = binding._build_and_load()
    files = list((tmp_path / "cffi").glob(so_glob))
    assert len(files) == 1 and hasattr(mod.lib, symbol)
    assert files[0].with_name(files[0].name + ".sha256").is_file()  # checked on the next load
    mtime = files[0].stat().st_mtime_ns
    binding._build_and_load()
    assert files[0].stat().st_mtime_ns == mtime
    assert not [p for p in (tmp_path / "cffi").iterdir() if p.name.startswith("build-")]

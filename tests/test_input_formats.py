"""Inputs in the forms cameras and editors make them: raw pixel formats named by the file's
extension, colour descriptions (BT.709, HDR10) carried into the stream, a video that starts
long after its audio. Inputs made at test time from the shared clips."""
from __future__ import annotations

import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest
from test_cli import probe, run_cli

from edge_semvc.sources import RawVideoOptions, open_source


def ffmpeg() -> str:
    return pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()


@pytest.mark.parametrize("suffix, pix_fmt", [(".nv12", "nv12"), (".rgb", "rgb24")])
def test_a_raw_file_s_name_gives_its_pixel_format(tmp_path, clip, suffix, pix_fmt):
    """`.nv12` and `.rgb` are read as what they are named, not as yuv420p (twice the frames
    of garbage for rgb24)."""
    raw = clip("videoconf_2people_320x192_12fps_yuv420p.yuv").read_bytes()[:320 * 192 * 3 // 2]
    frame = av.VideoFrame.from_ndarray(np.frombuffer(raw, np.uint8).reshape(288, 320), "yuv420p")
    path = tmp_path / f"in{suffix}"
    path.write_bytes(frame.reformat(format=pix_fmt).to_ndarray().tobytes() * 3)
    src = open_source(str(path), RawVideoOptions(320, 192, Fraction(12)))
    frames = list(src.frames())
    src.close()
    assert src.frame_count == 3 and len(frames) == 3
    y, u = (np.frombuffer(raw, np.uint8, n, at).reshape(h, w).astype(float)
            for n, at, h, w in ((320 * 192, 0, 192, 320), (160 * 96, 320 * 192, 96, 160)))
    assert np.abs(frames[0].y.astype(float) - y).mean() < 2  # the picture, not noise
    assert np.abs(frames[0].u.astype(float) - u).mean() < 2  # nv12's chroma interleaved


@pytest.mark.parametrize("backend", ["x264", "x265"])
def test_the_input_s_colour_description_reaches_the_stream(tmp_path, clip, backend):
    """BT.709 (HD) and HDR10 (PQ, BT.2020, 10 bits encoded at 8) inputs keep their tags: a
    player would read them as BT.601 or SDR."""
    for tags in (["bt709"] * 3, ["bt2020", "smpte2084", "bt2020nc"]):
        src, out = tmp_path / "in.mkv", tmp_path / "out.mkv"
        subprocess.run([ffmpeg(), "-v", "error", "-y", "-i", str(clip("carphone_qcif_pristine.mp4")),
                        "-frames:v", "3", "-vf", f"setparams=color_primaries={tags[0]}:"
                        f"color_trc={tags[1]}:colorspace={tags[2]},format=yuv420p10le",
                        "-c:v", "ffv1", str(src)], check=True)
        code, _, stderr = run_cli("encode", src, out, "--no-map", "--set",
                                  f"encoder.backend={backend}")
        assert code == 0, stderr
        with av.open(str(out)) as c:
            f = next(c.decode(video=0))
            got = (f.color_primaries, f.color_trc, f.colorspace)  # H.273 codes
        assert got == ((1, 1, 1) if tags[0] == "bt709" else (9, 16, 9)), got


def test_a_video_that_starts_long_after_its_audio_is_read(tmp_path, clip):
    """FFmpeg's probe (5 s) ends before the first picture: the file is probed further instead
    of refused as 'corrupt or not a video'."""
    src, out = tmp_path / "late.ts", tmp_path / "out.mp4"
    subprocess.run([ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i", "sine=d=12",
                    "-itsoffset", "10", "-i", str(clip("carphone_qcif_pristine.mp4")),
                    "-map", "1:v", "-map", "0:a", "-frames:v", "10", "-c:v", "copy", "-c:a",
                    "aac", str(src)], check=True)
    code, _, stderr = run_cli("encode", src, out, "--no-map")
    assert code == 0, stderr
    assert len(probe(out)[2]) == 10
    with open(src, "rb") as pipe:  # a pipe cannot be probed again: probed deeper at once
        r = subprocess.run([sys.executable, "-m", "edge_semvc", "encode", "-", str(out),
                            "--no-map"], stdin=pipe, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert len(probe(out)[2]) == 10


@pytest.mark.parametrize("offset", ["36000", "0"])
def test_an_mp4_or_mkv_made_from_a_ts_with_a_far_clock_starts_at_zero(tmp_path, clip, offset):
    """A recorder's MPEG-TS whose clock reads ten hours (or FFmpeg's own, 1.4 s): an .mp4 or
    .mkv starts at 0, every stream moved back alike (before, ten hours of nothing came
    first); a .ts keeps the clock."""
    src = tmp_path / "far.ts"
    subprocess.run([ffmpeg(), "-v", "error", "-y", "-f", "lavfi", "-i", "sine=d=2",
                    "-i", str(clip("carphone_qcif_pristine.mp4")), "-map", "1:v", "-map", "0:a",
                    "-frames:v", "30", "-c:v", "copy", "-c:a", "aac", "-output_ts_offset",
                    offset, str(src)], check=True)
    with av.open(str(src)) as c:
        clock = min(float(f.pts * f.time_base) for f in c.decode(video=0))
    for ext in (".mp4", ".mkv", ".ts"):
        out = tmp_path / f"out{ext}"
        code, _, stderr = run_cli("encode", src, out, "--no-map")
        assert code == 0, stderr
        with av.open(str(out)) as c:
            audio = [float(p.pts * p.time_base) for p in c.demux(audio=0) if p.pts is not None]
        with av.open(str(out)) as c:
            pts = [float(f.pts * f.time_base) for f in c.decode(video=0)]
        first_audio = min(audio)
        assert len(pts) == 30, (ext, len(pts))
        start = clock if ext == ".ts" else 0.0
        assert abs(min(pts) - start) < 0.05 and max(pts) - min(pts) < 1.5, (ext, pts[:3])
        assert abs(first_audio - min(pts)) < 0.1, (ext, first_audio, min(pts))


def test_an_input_that_starts_below_zero_keeps_every_frame_in_an_mp4(tmp_path, clip):
    """An MPEG-TS whose clock starts below zero (wrapped near its start): the mp4's edit list
    hid the frames before zero (15 of 30 shown); the file now starts at 0 with all of them."""
    src, out = tmp_path / "neg.ts", tmp_path / "out.mp4"
    with av.open(str(clip("carphone_qcif_pristine.mp4"))) as i, \
            av.open(str(src), "w", options={"avoid_negative_ts": "disabled"}) as o:
        s = o.add_stream_from_template(i.streams.video[0])
        for n, p in enumerate(i.demux(video=0)):
            if p.dts is None or n == 30:
                break
            back = int(Fraction(1, 2) / p.time_base)  # half a second below zero
            p.pts, p.dts, p.stream = p.pts - back, p.dts - back, s
            o.mux(p)
    code, _, stderr = run_cli("encode", src, out, "--no-map")
    assert code == 0, stderr
    pts = probe(out)[2]
    assert len(pts) == 30 and min(pts) == 0, pts[:3]


def test_a_file_is_decoded_with_frame_threads_a_camera_without(clip):
    """Frame threads hold a frame each but one (measured on the drone clip: 3 threads on 2
    cores, 2 frames more behind the packets than slice threads); a file is read for
    throughput, a camera (tests/test_serve.py: RTSP) frame by frame."""
    src = open_source(str(clip("drone_karma_coast_854x480.mp4")))
    try:
        assert src.stream.thread_type.name == "AUTO" and not src.live_decode
    finally:
        src.close()

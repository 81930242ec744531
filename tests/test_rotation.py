"""Clips with a display matrix (a phone held upright records its picture sideways and says so):
made at test time from shared clips with FFmpeg's `-display_rotation`/`-display_hflip`, read by
the real source, labelled by the default models and encoded by x264. Frames are turned upright
before anything sees them, exactly as FFmpeg shows them, and the output is encoded upright.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest
from conftest import shared_file

from edge_semvc.sources import open_source

ROOT = Path(__file__).resolve().parents[1]


def ffmpeg() -> str:
    return pytest.importorskip("imageio_ffmpeg").get_ffmpeg_exe()


def run(*args: str) -> bytes:
    return subprocess.run([ffmpeg(), "-v", "error", "-y", *args], capture_output=True,
                          check=True).stdout


def shown(path: Path, frames: int) -> np.ndarray:
    """What FFmpeg shows of `path` (its display matrix applied), as I420 frames."""
    return np.frombuffer(run("-i", str(path), "-frames:v", str(frames), "-f", "rawvideo",
                             "-pix_fmt", "yuv420p", "-"), np.uint8).reshape(frames, -1)


@pytest.mark.parametrize("vflip", [False, True])
@pytest.mark.parametrize("hflip", [False, True])
@pytest.mark.parametrize("degrees", [0, 90, -90, 180])
def test_every_display_matrix_turns_the_picture_as_ffmpeg_shows_it(tmp_path, degrees, hflip,
                                                                   vflip):
    src = shared_file("data", "video", "carphone_qcif_pristine.mp4")  # 176x144
    clip = tmp_path / "turned.mp4"
    run("-display_rotation:v:0", str(degrees), *(["-display_hflip:v:0"] if hflip else []),
        *(["-display_vflip:v:0"] if vflip else []), "-i", str(src), "-frames:v", "3",
        "-c", "copy", str(clip))
    source = open_source(str(clip))
    try:
        frames = list(source.frames())
    finally:
        source.close()
    size = (144, 176) if degrees in (90, -90) else (176, 144)
    assert (source.width, source.height) == size and frames[0].y.shape == size[::-1]
    ours = np.stack([np.concatenate([f.y.ravel(), f.u.ravel(), f.v.ravel()]) for f in frames])
    assert np.array_equal(ours, shown(clip, len(frames)))  # pixel for pixel


X264 = ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "16", "-g", "10"]


def encode(src: Path) -> tuple[Path, dict]:
    """`edge-semvc encode` with every model on every frame: (output, statistics)."""
    out, stats = src.with_suffix(".out.mp4"), src.with_suffix(".json")
    r = subprocess.run([sys.executable, "-m", "edge_semvc", "encode", str(src), str(out),
                        "--stats-json", str(stats), "--progress", "off",
                        "--set", "labeler.cpu_budget=0"], capture_output=True, text=True,
                       cwd=ROOT)
    assert r.returncode == 0, r.stderr
    return out, json.loads(stats.read_text())


@pytest.fixture(scope="module")
def upright(tmp_path_factory) -> tuple[Path, dict]:
    """30 frames of the street clip, upright, and the statistics of their encode."""
    street = shared_file("data", "video", "street_pedestrians_vtest_768x576.avi")
    path = tmp_path_factory.mktemp("upright") / "upright.mp4"
    run("-i", str(street), "-frames:v", "30", *X264, str(path))
    return path, encode(path)[1]


@pytest.mark.parametrize("degrees", [-90, 90])
def test_a_sideways_phone_clip_is_labelled_upright_and_plays_upright(tmp_path, upright,
                                                                     degrees):
    """The street clip recorded sideways with a display matrix of `degrees` (the issue's phone
    clip: read as 576x768 it labelled nothing): people are found as on the upright clip, and
    the output is 768x576 with no display matrix, the upright picture."""
    (source, reference), coded, phone = upright, tmp_path / "coded.mp4", tmp_path / "phone.mp4"
    # stored turned against the display matrix: showing it turns it back upright
    run("-i", str(source), "-vf", "transpose=cclock" if degrees == -90 else "transpose=clock",
        *X264, str(coded))
    run("-display_rotation:v:0", str(degrees), "-i", str(coded), "-c", "copy", str(phone))
    with av.open(str(phone)) as c:
        first = next(c.decode(video=0))
        assert (first.width, first.height, first.rotation) == (576, 768, degrees)
    out, stats = encode(phone)
    person, person_upright = (s["label_coverage"]["person"] for s in (stats, reference))
    assert person > 0.01 and person >= 0.8 * person_upright, (person, person_upright)
    assert "turned upright" in stats["input"]
    with av.open(str(out)) as c:
        pictures = list(c.decode(video=0))
    assert len(pictures) == 30
    assert all((p.width, p.height, p.rotation) == (768, 576, 0) for p in pictures)
    assert all(p.side_data.get("DISPLAYMATRIX") is None for p in pictures)
    # the upright picture: what FFmpeg shows of the phone clip, within x264's loss
    luma = np.stack([p.to_ndarray(format="yuv420p")[:576] for p in pictures]).astype(float)
    expected = shown(phone, 30)[:, :768 * 576].reshape(30, 576, 768).astype(float)
    psnr = 10 * np.log10(255 ** 2 / np.mean((luma - expected) ** 2))
    assert psnr > 30, psnr

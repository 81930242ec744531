"""The storage profile (storage.py): long GOP and dynamic frame rate, alone on synthetic
noisy scenes (exact decisions), then end to end through x264 into files that FFmpeg, PyAV and
a browser play with real-time timestamps."""
from __future__ import annotations

import json
import subprocess
from fractions import Fraction

import av
import numpy as np
import pytest

from edge_semvc.bench.browser import Browser
from edge_semvc.config import ConfigError, load_config
from edge_semvc.encoders.config import StorageConfig
from edge_semvc.errors import SinkError
from edge_semvc.frame import Frame
from edge_semvc.pipeline import run_encode
from edge_semvc.storage import Observer, StoragePolicy
from edge_semvc.values import LabelMap

W, H = 128, 96  # 8 x 6 macroblocks


class Scene:
    """A grey textured scene with sensor noise (sigma 2 levels) and an optional dark square
    (`size` pixels) moving `speed` pixels a frame from frame `move_from` on."""

    def __init__(self, n: int, fps: int = 10, move_from: int | None = None, seed: int = 1,
                 size: int = 6, speed: int = 1):
        self.n, self.fps, self.move_from = n, Fraction(fps), move_from
        self.size, self.speed = size, speed
        self.width, self.height = W, H
        self.time_base = 1 / self.fps
        self.frame_count, self.description, self.path = n, f"scene {n}", None
        rng = np.random.default_rng(seed)
        self.rng = rng
        yy, xx = np.mgrid[0:H, 0:W]
        self.base = (120 + 40 * np.sin(xx / 7.0) * np.cos(yy / 5.0)).astype(np.float32)

    def square_x(self, i: int) -> int | None:
        if self.move_from is None or i < self.move_from:
            return None
        return 10 + (i - self.move_from) * self.speed % (W - 20 - self.size)

    def frame(self, i: int) -> Frame:
        y = self.base + self.rng.normal(0, 2.0, self.base.shape)
        x = self.square_x(i)
        if x is not None:
            y[40:40 + self.size, x:x + self.size] = 30
        y = np.clip(y, 0, 255).astype(np.uint8)
        c = np.full((H // 2, W // 2), 128, np.uint8)
        return Frame(y, c, c.copy(), i, self.time_base, i)

    def frames(self):
        for i in range(self.n):
            yield self.frame(i)

    def close(self):
        pass


def decide_all(scene: Scene, cfg: StorageConfig, labels=None, cuts=(), segment=(), receiver=()):
    obs = Observer(cfg, scene.fps)
    policy = StoragePolicy(cfg, scene.fps, scene.time_base)
    decisions = []
    for f in scene.frames():
        o = obs.observe(f, labels(f.index) if labels else None, f.index in cuts)
        asked = "segment" if f.index in segment else "receiver" if f.index in receiver else None
        decisions.append(policy.decide(f, o, asked))
    return policy, decisions


def test_a_static_noisy_scene_is_encoded_at_the_minimum_frame_rate():
    policy, d = decide_all(Scene(100), StorageConfig(min_fps=1.0, dynamic_gop=False))
    encoded = [i for i, x in enumerate(d) if x.encode]
    # the first two frames (no noise floor yet), then one a second: sensor noise is not news
    assert encoded[:1] == [0]
    assert all(b - a <= 10 for a, b in zip(encoded, encoded[1:]))
    assert len(encoded) <= 14, encoded
    assert policy.skipped == 100 - len(encoded)


def test_the_second_frame_is_not_taken_for_noise_before_the_noise_is_known():
    _, d = decide_all(Scene(2, move_from=0, speed=4), StorageConfig(dynamic_gop=False))
    assert [x.encode for x in d] == [True, True]


def test_a_small_moving_object_is_never_held_more_than_a_few_frames():
    scene = Scene(120, move_from=30)
    policy, d = decide_all(scene, StorageConfig(min_fps=0.1, dynamic_gop=False))
    encoded = [i for i, x in enumerate(d) if x.encode]
    moving = [i for i in encoded if i >= 30]
    # 1 pixel a frame: the shown square is never more than 4 pixels behind
    assert all(b - a <= 4 for a, b in zip(moving, moving[1:])), moving
    assert len([i for i in encoded if i < 30]) <= 6  # before it moves: nearly all left out


@pytest.mark.parametrize("scene", [Scene(400), Scene(400, move_from=50, size=16, speed=4)],
                         ids=["static", "moving"])
def test_an_idr_every_gop_s_of_time_whether_the_scene_moves_or_not(scene):
    policy, d = decide_all(scene, StorageConfig(gop_s=10.0))
    idrs = [(i, x.idr) for i, x in enumerate(d) if x.idr]
    assert idrs == [(0, "start"), (100, "interval"), (200, "interval"), (300, "interval")]
    s = policy.stats()
    assert s["longest_seek_s"] == pytest.approx(10.0)
    assert s["gop_s"]["count"] == 4 and s["idr_reasons"] == {"start": 1, "interval": 3}
    assert s["frames_skipped"] + s["frames_encoded"] == 400
    if scene.move_from is None:  # and the frames in between: mostly left out while static
        assert s["frames_skipped"] > 300


def test_cuts_and_segments_get_an_idr_and_restart_the_interval_objects_do_not():
    cfg = StorageConfig(gop_s=4.0)
    mb = (H // 16, W // 16)

    def labels(i):  # an object appears at frame 70 and stays
        probs = np.zeros((1, *mb), np.float32)
        if i >= 70:
            probs[0, 2:4, 2:4] = 0.9
        return LabelMap.from_probs(probs, ["person"], 0.5, [])

    _, d = decide_all(Scene(200), cfg, labels=labels, cuts=(5, 120), segment=(150,))
    reasons = {i: x.idr for i, x in enumerate(d) if x.idr}
    assert reasons == {0: "start", 5: "scene_cut", 45: "interval", 85: "interval",
                       120: "scene_cut", 150: "segment", 190: "interval"}
    assert all(x.encode for i, x in enumerate(d) if i in reasons)
    assert d[70].encode and d[70].idr is None  # the object is news, not a reason for an IDR


def test_without_dynamic_gop_only_the_start_and_segments_are_asked_for():
    _, d = decide_all(Scene(100), StorageConfig(dynamic_gop=False), cuts=(50,),
                      segment=(60,), receiver=(80,))  # a viewer joined: its own reason
    assert {i: x.idr for i, x in enumerate(d) if x.idr} == {0: "start", 60: "segment",
                                                            80: "receiver"}


def test_without_dynamic_fps_every_frame_is_encoded():
    policy, d = decide_all(Scene(50), StorageConfig(dynamic_fps=False))
    assert all(x.encode for x in d) and policy.skipped == 0


@pytest.mark.parametrize("key,value,words", [
    ("encoder.profile", "store", "live or storage"),
    ("encoder.storage.min_fps", "0", "> 0 frames a second"),
    ("encoder.storage.gop_s", "0", "> 0 seconds"),
    ("encoder.storage.noise_factor", "0.5", ">= 1"),
])
def test_bad_storage_settings_are_refused_by_name(key, value, words):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")) as e:
        load_config(None, ["encoder.profile=storage", f"{key}={value}"])
    assert words in str(e.value)


def test_the_storage_profile_needs_crf_and_its_own_gop():
    with pytest.raises(ConfigError, match="encoder.rc"):
        load_config(None, ["encoder.profile=storage", "encoder.rc=abr", "encoder.bitrate=1000000"])
    with pytest.raises(ConfigError, match="encoder.keyint"):
        load_config(None, ["encoder.profile=storage", "encoder.keyint=50"])


# --- end to end: x264, containers, players ------------------------------------------------

def storage_config(*extra):
    return load_config(None, ["encoder.profile=storage", "encoder.crf=30", *extra])


def encode(tmp_path, scene, name="out.mp4", *extra):
    out = tmp_path / name
    stats = run_encode(scene, str(out), storage_config(*extra), semantic=False)
    return out, stats


def test_recording_keeps_real_time_and_the_idrs_asked_for(tmp_path):
    scene = Scene(150, move_from=100)
    out, stats = encode(tmp_path, scene)
    s = stats["storage"]
    assert s["frames_skipped"] > 50 and s["frames_encoded"] + s["frames_skipped"] == 150
    with av.open(str(out)) as c:
        stream = c.streams.video[0]
        frames = [(f.pts, f.time, f.key_frame) for f in c.decode(stream)]
    assert len(frames) == s["frames_encoded"]
    times = [t for _, t, _ in frames]
    assert times == sorted(times)
    # timestamps are the source's: every shown frame sits on the source's 10 fps grid,
    # the last one is the last source frame (the recording lasts as long as the input)
    assert all(abs(t * 10 - round(t * 10)) < 1e-6 for t in times)
    assert round((times[-1] - times[0]) * 10) == 149
    keys = {round((t - times[0]) * 10) for _, t, k in frames if k}
    assert keys == {i["frame"] for i in s["idrs"]}
    assert s["idrs"][0]["reason"] == "start"


def test_ffmpeg_shows_every_source_frame_at_its_time(tmp_path):
    imageio_ffmpeg = pytest.importorskip("imageio_ffmpeg")
    scene = Scene(80, move_from=60)
    out, stats = encode(tmp_path, scene)
    assert stats["storage"]["frames_skipped"] > 20
    with av.open(str(out)) as c:
        assert c.duration == 8_000_000  # microseconds: the source's 80 frames at 10 fps
    # a player at the source's rate for the file's duration: held frames repeat (FFmpeg's
    # fps filter would add one at the end: it ends the last frame by its packet's dts step)
    r = subprocess.run([imageio_ffmpeg.get_ffmpeg_exe(), "-v", "error", "-i", str(out),
                        "-vf", "fps=10", "-t", "8", "-f", "rawvideo", "-pix_fmt", "gray", "-"],
                       capture_output=True, check=True)
    shown = np.frombuffer(r.stdout, np.uint8).reshape(-1, H, W)
    assert len(shown) == 80
    # the moving square is where it is in the source, within the few frames it may lag
    for i in range(62, 80):
        column = shown[i, 40:46].astype(int).mean(axis=0)
        x = int(np.argmax(column < 80))  # its left edge (the darkest column is any of 6)
        assert abs(x - scene.square_x(i)) <= 4


def test_browser_plays_the_mp4(tmp_path, chromium):
    scene = Scene(60, move_from=40)
    out, stats = encode(tmp_path, scene)
    assert stats["storage"]["frames_skipped"] > 20
    # seek to 5.55 s (source frame 55), draw the picture, find the square's left edge
    page = tmp_path / "play.html"
    page.write_text(
        "<html><head><title>start</title></head><body><video id=v muted src='out.mp4'></video>"
        "<canvas id=c></canvas><script>const v = document.getElementById('v');"
        "v.onerror = () => { document.title = 'error ' + v.error.code + ' ' + v.error.message; };"
        # drawn when the seeked frame is presented ('seeked' may come before it on a loaded
        # machine: the canvas then gets a black picture)
        "const draw = (now, m) => { if (m.mediaTime < 5.0) { v.requestVideoFrameCallback(draw);"
        " return; } const c = document.getElementById('c');"
        "c.width = v.videoWidth; c.height = v.videoHeight; const g = c.getContext('2d');"
        "g.drawImage(v, 0, 0); const p = g.getImageData(0, 0, c.width, c.height).data;"
        "let x = 0; while (x < c.width && p[(43 * c.width + x) * 4] >= 80) x++;"
        "document.title = 'seeked ' + v.duration.toFixed(3) + ' ' + x; };"
        "v.onloadedmetadata = () => { v.requestVideoFrameCallback(draw); v.currentTime = 5.55; };"
        "</script></body></html>")
    # driven over the DevTools protocol and polled: no virtual-time budget that a loaded
    # machine can run out of before the seek completes
    with Browser(chromium, flags=("--allow-file-access-from-files",)) as browser:
        browser.open(page.as_uri())
        title = browser.wait_for("document.title.startsWith('seeked') || "
                                 "document.title.startsWith('error') ? document.title : ''",
                                 timeout=120)
    assert title.startswith("seeked"), title
    duration, x = title.split()[1:]
    assert float(duration) == pytest.approx(6.0)  # 60 frames at 10 fps
    assert abs(int(x) - scene.square_x(55)) <= 4


def test_a_raw_stream_is_refused_before_anything_is_written(tmp_path):
    with pytest.raises(SinkError, match="raw stream keeps no timestamps"):
        encode(tmp_path, Scene(10), "out.h264")
    assert not (tmp_path / "out.h264").exists()
    out, _ = encode(tmp_path, Scene(10), "ok.h264", "encoder.storage.dynamic_fps=false")
    assert out.stat().st_size > 0


def test_the_encoder_places_no_idr_of_its_own(tmp_path):
    # a scene cut x264 would mark as a keyframe: with the storage profile only ours count
    scene = Scene(60)
    frames = list(scene.frames())
    for f in frames[30:]:
        f.y[:] = 255 - f.y
    scene.frames = lambda: iter(frames)
    out, stats = encode(tmp_path, scene, "cut.mp4", "encoder.storage.dynamic_fps=false",
                        "encoder.storage.gop_s=100")
    with av.open(str(out)) as c:
        keys = [f.key_frame for f in c.decode(video=0)]
    assert sum(keys) == 1 and stats["storage"]["idr_reasons"] == {"start": 1}
    assert stats["encoder"]["keyint"] > 10_000  # x264's "infinite"


def test_cli_profile_storage_reports_its_decisions(tmp_path, clip):
    from edge_semvc.cli import main

    src = clip("overhead_parking_cars_768x432.mp4")
    stats = tmp_path / "s.json"
    rc = main(["encode", str(src), str(tmp_path / "p.mp4"), "--profile", "storage",
               "--frames", "60", "--stats-json", str(stats)])
    assert rc == 0
    s = json.loads(stats.read_text())["storage"]
    assert s["frames_encoded"] + s["frames_skipped"] == 60
    assert s["idrs"][0] == {"frame": 0, "time_s": 0.0, "reason": "start"}
    assert s["longest_seek_s"] is not None


def test_the_cuts_of_a_montage_get_their_idrs(tmp_path, clip):
    """The bikes clip's hard cuts (frames 30 and 76 in its first 80) with the scene extension
    off: the storage profile runs the cut detector itself."""
    from edge_semvc.cli import main

    src = clip("bikes_street_scene_cuts_640x272.mp4")
    stats = tmp_path / "s.json"
    assert main(["encode", str(src), str(tmp_path / "b.mp4"), "--profile", "storage",
                 "--frames", "80", "--stats-json", str(stats)]) == 0
    idrs = json.loads(stats.read_text())["storage"]["idrs"]
    assert [(i["frame"], i["reason"]) for i in idrs if i["reason"] == "scene_cut"] == \
        [(30, "scene_cut"), (76, "scene_cut")]


@pytest.mark.parametrize("crf", [20, 32])
def test_a_recording_is_never_larger_than_the_cameras_plain_x264(tmp_path, clip, crf):
    """The street clip's first 4 s at the benchmark ladder's ends, against the anchor the
    benchmark uses (plain x264, same preset and CRF, 2 s GOP, every frame): the profile's file
    is smaller (BENCHMARKS.md, "Storage profile": 0.55-0.75 of it on the whole clip)."""
    from edge_semvc.bench.run import storage_baseline
    from edge_semvc.sources import open_source

    cfg = load_config(None, ["encoder.profile=storage", f"encoder.crf={crf}"])
    sizes = {}
    for name, run_cfg, semantic in (("storage", cfg, True), ("plain", None, False)):
        src = open_source(str(clip("street_pedestrians_vtest_768x576.avi")))
        out = tmp_path / f"{name}.mp4"
        try:
            run_encode(src, str(out), run_cfg or storage_baseline(cfg, src.fps),
                       semantic=semantic, max_frames=40)
        finally:
            src.close()
        sizes[name] = out.stat().st_size
    assert sizes["storage"] < sizes["plain"], sizes  # here 0.72 (CRF 20) and 0.61 (CRF 32)

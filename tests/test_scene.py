"""METHOD embodiment 4: the scene-transition analyser (analysis/scene.py) and Q_S
(qp/scene.py): the formula, S against motion and exposure, a wipe, the cut detector's baseline
and gap, cut precision/recall on a real montage, no cuts in clips without any (the foreman pan
included), and on a real cut frame a lower Q where S = 1."""
from fractions import Fraction
from functools import lru_cache

import numpy as np
import pytest
from conftest import shared_file

from edge_semvc.analysis import Analyser
from edge_semvc.analysis.config import AnalysisConfig
from edge_semvc.analysis.scene import CutDetector, SceneAnalyser, SceneConfig
from edge_semvc.config import ConfigError, QpConfig
from edge_semvc.frame import Frame
from edge_semvc.qp.qpmap import build_qp_map
from edge_semvc.qp.scene import scene_q
from edge_semvc.sources import open_source
from edge_semvc.values import LabelMap, RegionStats

BIKES = "bikes_street_scene_cuts_640x272.mp4"
BIKES_CUTS = (30, 76, 137, 187, 242)  # first frame of each new shot (shared/data/video/README)
FOREMAN = "foreman_cif.h264"
FOREMAN_PAN = range(180, 196)  # the fast pan is at ~184-189


def frames(name: str):
    """The clip's frames, decoded as they are read."""
    src = open_source(str(shared_file("data", "video", name)))
    try:
        yield from src.frames()
    finally:
        src.close()


@lru_cache(maxsize=1)
def bikes() -> tuple[Frame, ...]:
    """The montage's 250 frames (65 MB), decoded once for the tests that pick frames."""
    return tuple(frames(BIKES))


def detected_cuts(name: str) -> list[int]:
    analyser = SceneAnalyser(SceneConfig(enabled=True))
    return [f.index for f in frames(name) if analyser.analyse(f).cut]


def like(frame: Frame, y=None, u=None, v=None) -> Frame:
    """The frame with some planes replaced."""
    return Frame(frame.y if y is None else y, frame.u if u is None else u,
                 frame.v if v is None else v, frame.pts, Fraction(1, 25), frame.index)


def crop(frame: Frame, x0: int, width: int) -> Frame:
    """Columns [x0, x0 + width) of the frame (x0, width even)."""
    c0, cw = x0 // 2, width // 2
    return Frame(frame.y[:, x0:x0 + width].copy(), frame.u[:, c0:c0 + cw].copy(),
                 frame.v[:, c0:c0 + cw].copy(), frame.pts, Fraction(1, 25), frame.index)


# -- the formula ----------------------------------------------------------------------------

def test_scene_q_exact_numbers():
    cfg = SceneConfig(delta_high=0.5, delta_low=0.1)
    q = np.array([[0.8, 0.8], [0.3, 0.0]], np.float32)
    s = np.array([[1.0, 0.0], [1.0, 1.0]], np.float32)
    out = scene_q(q, s, cfg)
    assert out.dtype == np.float32
    # S = 1: Q * (1 - 0.5); S = 0: delta_low * 0 = 0, Q kept exactly
    assert out.ravel().tolist() == pytest.approx([0.4, 0.8, 0.15, 0.0])
    assert scene_q(q, s, SceneConfig(delta_high=0.0, delta_low=0.0)).tolist() == q.tolist()
    assert scene_q(q, s, SceneConfig(delta_high=1.0)).ravel().tolist() == \
        pytest.approx([0.0, 0.8, 0.0, 0.0])


def test_config_refuses_bad_values_naming_the_key():
    SceneConfig().validate()
    assert SceneConfig().enabled is False
    for field, value in (("s_threshold", 1.0), ("delta_high", 1.5), ("cut_change", 0.0),
                         ("search", 0), ("cut_min_gap", 0), ("change_floor", 0.0),
                         ("cut_ratio", 0.5), ("cut_window", 0)):
        with pytest.raises(ConfigError, match=f"scene.{field}"):
            SceneConfig(**{field: value}).validate()
    with pytest.raises(ConfigError, match="scene.delta_low"):
        SceneConfig(delta_low=0.6, delta_high=0.5).validate()


# -- the analyser ---------------------------------------------------------------------------

def test_first_frame_and_a_repeated_frame_are_calm():
    frame = bikes()[50]
    analyser = SceneAnalyser(SceneConfig(enabled=True))  # S on every frame
    first = analyser.analyse(frame)
    assert first.change.shape == first.scene.shape == (frame.mb_h, frame.mb_w)
    assert not first.cut and not first.scene.any() and first.distance == 0.0
    again = analyser.analyse(frame)
    assert not again.cut and not again.scene.any()
    assert float(again.change.max()) == 0.0 and again.distance == 0.0


def test_motion_is_not_a_transition():
    """A real frame moved sideways by 8-24 pixels: the plain difference (the core method's V)
    calls most of it changed, S explains it as motion."""
    from edge_semvc.analysis.change import change_map
    from edge_semvc.frame import block_samples

    frame = bikes()[50]
    for shift in (8, 16, 24):
        width = frame.width - 24
        before, after = crop(frame, 0, width), crop(frame, shift, width)
        analyser = SceneAnalyser(SceneConfig(enabled=True))
        analyser.analyse(before)
        result = analyser.analyse(after)
        v = change_map(block_samples(before.luma_grid), block_samples(after.luma_grid), 24.0)
        assert float(v.mean()) > 0.4, shift
        assert float(result.change.mean()) < 0.2, shift
        assert not result.cut and not result.scene.any()


def test_an_exposure_step_is_not_a_transition():
    frame = bikes()[50]
    brighter = np.clip(frame.y.astype(np.int16) + 25, 0, 255).astype(np.uint8)
    analyser = SceneAnalyser(SceneConfig())
    analyser.analyse(frame)
    result = analyser.analyse(like(frame, y=brighter))
    assert result.distance > SceneConfig().cut_min_distance  # the histogram alone would cut
    assert float(result.change.mean()) < 0.05
    assert not result.cut and not result.scene.any()


def test_a_wipe_sets_s_only_in_the_region_it_covers():
    """A wipe made of real frames: the left half of frame 75 already shows the next shot
    (frame 76), the right half goes on. With the halves as two regions, S = 1 on the left only,
    and the frame is no cut."""
    frames = bikes()
    old, new = frames[75], frames[76]
    half, chroma_half = old.width // 2, old.width // 4
    y, u, v = old.y.copy(), old.u.copy(), old.v.copy()
    y[:, :half], u[:, :chroma_half], v[:, :chroma_half] = \
        new.y[:, :half], new.u[:, :chroma_half], new.v[:, :chroma_half]
    regions = np.zeros((old.mb_h, old.mb_w), np.int32)
    regions[:, old.mb_w // 2:] = 1
    analyser = SceneAnalyser(SceneConfig())
    analyser.analyse(frames[74])
    result = analyser.analyse(like(old, y, u, v), regions)
    assert result.scene[:, :old.mb_w // 2].min() == 1.0
    assert result.scene[:, old.mb_w // 2:].max() == 0.0
    assert not result.cut


def test_reset_forgets_the_previous_frame():
    frames = bikes()
    analyser = SceneAnalyser(SceneConfig())
    analyser.analyse(frames[75])
    assert analyser.analyse(frames[76]).cut
    analyser.analyse(frames[75])
    analyser.reset()
    result = analyser.analyse(frames[76])  # a first frame again
    assert not result.cut and float(result.change.max()) == 0.0


def test_without_the_extension_s_is_measured_only_where_the_colours_allow_a_cut():
    """Nobody reads S but the cut: the motion search runs on the few frames whose colours
    jump, and the montage's cuts are those of measuring every frame."""
    every, lazy = SceneAnalyser(SceneConfig(enabled=True)), SceneAnalyser(SceneConfig())
    full, measured, cuts = [], [], []
    for frame in bikes():
        full += [frame.index] if every.analyse(frame).cut else []
        result = lazy.analyse(frame)
        measured += [frame.index] if result.change is not None else []
        cuts += [frame.index] if result.cut else []
        assert (result.change is None) == (result.scene is None)
    assert cuts == full and len(full) >= 5
    assert set(cuts) < set(measured) and len(measured) < len(bikes()) // 10


def test_cut_detector_baseline_and_gap():
    cfg = SceneConfig(cut_ratio=3.0, cut_min_distance=0.08, cut_change=0.65, cut_min_gap=5,
                      cut_window=4)
    det = CutDetector(cfg)
    calm, jump = 0.01, 0.3
    assert not any(det.update(calm, 0.1) for _ in range(6))
    assert det.baseline == pytest.approx(calm)
    assert not det.update(jump, 0.3)  # the colours jump, the structure holds: no cut
    assert det.update(jump, 0.9)  # both: a cut
    assert not det.update(jump, 0.9)  # 1 frame after the cut: inside cut_min_gap (5)
    for _ in range(3):
        det.update(calm, 0.1)
    assert det.update(jump, 0.9)  # 5 frames after: allowed (the blocked jump is 1 of 4)
    # A busy stretch (a fast pan) raises the baseline: a step of 3x is no longer a cut.
    busy = CutDetector(cfg)
    for _ in range(6):
        busy.update(0.1, 0.5)
    assert busy.baseline == pytest.approx(0.1)
    assert not busy.update(0.25, 0.9)
    assert busy.update(0.35, 0.9)


# -- real clips -----------------------------------------------------------------------------

def test_cut_precision_and_recall_on_the_bikes_montage():
    found = detected_cuts(BIKES)
    hits = [c for c in found if any(abs(c - t) <= 1 for t in BIKES_CUTS)]
    recalled = [t for t in BIKES_CUTS if any(abs(c - t) <= 1 for c in found)]
    precision = len(hits) / max(len(found), 1)
    recall = len(recalled) / len(BIKES_CUTS)
    assert precision >= 0.9 and recall >= 0.9, found


def test_the_foreman_pan_is_not_a_cut():
    analyser = SceneAnalyser(SceneConfig(enabled=True))
    results = {f.index: analyser.analyse(f) for f in frames(FOREMAN)}
    assert not [i for i in FOREMAN_PAN if results[i].cut]
    # The pan's frames are explained by motion: no region transition either.
    assert not [i for i in FOREMAN_PAN if results[i].scene.any()]


@pytest.mark.parametrize("name", [FOREMAN, "street_pedestrians_vtest_768x576.avi",
                                  "overhead_parking_cars_768x432.mp4"])
def test_no_cut_in_clips_without_one(name):
    assert detected_cuts(name) == []


def test_on_a_cut_frame_q_is_lower_where_s_is_one():
    """Bikes frame 76 (a cut), each macroblock its own region: the real C and V give Q, S picks
    the macroblocks the previous shot cannot explain; there Q_S < Q and the QP map (the
    pipeline's build_qp_map with the formula as its adjustment) gives them more bits relative
    to the rest, which keep their Q."""
    frames = bikes()
    cfg, qp_cfg = SceneConfig(enabled=True), QpConfig()
    analyser, scene = Analyser(AnalysisConfig()), SceneAnalyser(cfg)
    shape = (frames[76].mb_h, frames[76].mb_w)
    each_own = np.arange(shape[0] * shape[1], dtype=np.int32).reshape(shape)
    nothing = LabelMap.from_probs(np.zeros((0, *shape), np.float32), [], 0.7, [])
    for frame in frames[74:76]:
        analyser.analyse(frame, nothing)
        scene.analyse(frame, each_own)
    result = scene.analyse(frames[76], each_own)
    assert result.cut
    s = result.scene.astype(bool)
    assert 0.3 < s.mean() < 1.0  # most, not all, of the new shot is unexplained
    c = analyser.analyse(frames[76], nothing)
    stats = RegionStats(c.complexity, c.change, c.complexity, c.change, each_own)
    seen = {}

    def adjust(q):
        seen["q"], seen["q_s"] = q, scene_q(q, result.scene, cfg)
        return seen["q_s"]

    importance = np.zeros(1, np.float32)
    plain = build_qp_map(stats, nothing, importance, qp_cfg).offsets
    tuned = build_qp_map(stats, nothing, importance, qp_cfg, adjust).offsets
    q, q_s = seen["q"], seen["q_s"]
    assert (q_s[s] < q[s]).all() and (q[s] > 0).all()
    assert (q_s[~s] == q[~s]).all()
    gap_plain = plain[s].mean() - plain[~s].mean()
    gap_tuned = tuned[s].mean() - tuned[~s].mean()
    assert gap_tuned < gap_plain - 0.5, (gap_plain, gap_tuned)

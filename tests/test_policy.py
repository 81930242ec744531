import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from edge_semvc.analysis.change import change_map
from edge_semvc.analysis.complexity import complexity_from_variance
from edge_semvc.analysis.regions import label_regions, region_stats
from edge_semvc.config import ConfigError, QpConfig
from edge_semvc.frame import block_samples, block_variance, luma_grid
from edge_semvc.qp.policy import base_q, match_weights
from edge_semvc.qp.qpmap import build_qp_map, importance_vector, pin_mean
from edge_semvc.values import LabelMap


def test_weights_switch_at_v_threshold():
    cfg = QpConfig(v_threshold=0.3, alpha_slow=0.7, beta_slow=0.2, alpha_fast=0.1, beta_fast=0.9)
    alpha, beta = match_weights(np.array([0.1, 0.3, 0.31, 0.9]), cfg)
    assert alpha.tolist() == pytest.approx([0.7, 0.7, 0.1, 0.1])
    assert beta.tolist() == pytest.approx([0.2, 0.2, 0.9, 0.9])


def test_base_q_is_alpha_c_plus_beta_v():
    cfg = QpConfig(v_threshold=0.5, alpha_slow=0.6, beta_slow=0.4, alpha_fast=0.3, beta_fast=1.0)
    c = np.array([0.5, 0.5])
    v = np.array([0.2, 0.8])
    assert base_q(c, v, cfg).tolist() == pytest.approx([0.6 * 0.5 + 0.4 * 0.2,
                                                        0.3 * 0.5 + 1.0 * 0.8])


def test_pin_mean_hits_target_within_clamp():
    raw = np.array([-20.0, 0.0, 0.0, 0.0, 5.0])
    out = pin_mean(raw, 1.0, -6.0, 6.0)
    assert out.min() >= -6 and out.max() <= 6
    assert out.mean() == pytest.approx(1.0, abs=1e-2)


def test_qp_map_favours_important_regions_and_pins_mean():
    cfg = QpConfig()
    labels = np.zeros((6, 8), np.int16)
    labels[1:4, 1:4] = 1  # a person
    labels[2, 2] = 2  # a face inside it
    probs = np.zeros((2, 6, 8), np.float32)
    lm = LabelMap(probs, ["background", "person", "face"], labels)
    flat = np.full((6, 8), 0.3, np.float32)
    stats = region_stats(labels, flat, flat * 0)
    qp = build_qp_map(stats, lm, importance_vector(lm.classes, cfg), cfg)
    o = qp.offsets
    assert o[2, 2] < o[1, 1] < o[0, 0]  # face < person < background
    assert o.mean() == pytest.approx(cfg.target_mean, abs=1e-2)
    assert o.min() >= cfg.offset_min and o.max() <= cfg.offset_max


def test_fast_region_gets_a_larger_offset_than_a_slow_one():
    cfg = QpConfig()
    labels = np.zeros((4, 8), np.int16)
    labels[:, 0:2] = 1
    labels[:, 5:7] = 1  # two separate person regions
    change = np.zeros((4, 8), np.float32)
    change[:, 5:7] = 0.9  # the second one moves fast
    lm = LabelMap(np.zeros((1, 4, 8), np.float32), ["background", "person"], labels)
    stats = region_stats(labels, np.full((4, 8), 0.4, np.float32), change)
    o = build_qp_map(stats, lm, importance_vector(lm.classes, cfg), cfg).offsets
    assert o[0, 5] > o[0, 0]  # motion masking (METHOD S130)


def test_importance_table_must_cover_every_class():
    with pytest.raises(ConfigError, match="qp.importance has no entry for class.*dog"):
        importance_vector(["background", "dog"], QpConfig())


def test_regions_are_connected_components_per_class():
    labels = np.array([[1, 1, 0, 1],
                       [0, 0, 0, 1],
                       [2, 2, 0, 0]], np.int16)
    regions = label_regions(labels)
    assert regions[0, 0] == regions[0, 1] != regions[0, 3] == regions[1, 3]
    assert regions[2, 0] not in (0, regions[0, 0], regions[0, 3])
    assert (regions[labels == 0] == 0).all()
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    stats = region_stats(labels, values, values)
    assert stats.region_complexity[0, 0] == pytest.approx(0.5)  # mean of 0 and 1
    assert stats.region_complexity[1, 3] == pytest.approx((3 + 7) / 2)


def test_regions_split_where_two_classes_touch():
    # touching classes take the pass per class, apart ones the single pass: the same rule
    rng = np.random.default_rng(3)
    for _ in range(300):
        labels = (rng.integers(0, 3, (6, 7)) * (rng.random((6, 7)) < 0.6)).astype(np.int16)
        regions = label_regions(labels)
        assert ((regions == 0) == (labels == 0)).all()
        ids = np.unique(regions[regions > 0])
        assert all(len(np.unique(labels[regions == i])) == 1 for i in ids)  # one class each
        components = sum(ndimage.label(labels == c)[1] for c in (1, 2))
        assert len(ids) == components
    side_by_side = np.array([[1, 2], [1, 2]], np.int16)
    assert len(np.unique(label_regions(side_by_side))) == 2


def test_complexity_is_low_on_flat_and_high_on_texture():
    flat = np.full((32, 48), 128, np.uint8)
    noisy = np.random.default_rng(0).integers(0, 256, (32, 48)).astype(np.uint8)

    def complexity(y):
        return complexity_from_variance(block_variance(block_samples(luma_grid(y))), 1024.0)

    assert complexity(flat).max() == pytest.approx(0, abs=1e-6)
    assert complexity(noisy).min() > 0.9


def test_change_is_zero_without_motion_and_grows_with_it():
    y = np.random.default_rng(0).integers(0, 256, (40, 40)).astype(np.uint8)  # partial MBs
    b = block_samples(luma_grid(y))
    assert change_map(None, b, 24.0).shape == (3, 3)
    assert change_map(None, b, 24.0).max() == 0
    assert change_map(b, b, 24.0).max() == 0
    moved = block_samples(luma_grid(np.roll(y, 4, axis=1)))
    assert change_map(b, moved, 24.0).min() > 0.5


def _roi_offset(cells, cfg):
    """ROI minus background offset with the first `cells` of a 20x20 grid labelled."""
    flat = np.zeros((20, 20), np.float32)
    labels = np.zeros(400, np.int16)
    labels[:cells] = 1
    labels = labels.reshape(20, 20)
    lm = LabelMap(np.zeros((1, 20, 20), np.float32), ["background", "person"], labels)
    o = build_qp_map(region_stats(labels, flat, flat), lm, np.array([0.0, 1.0]), cfg).offsets
    return float(o[0, 0] - o[-1, -1])


def test_importance_budget_softens_the_map_when_the_roi_is_large():
    cfg = QpConfig(importance_gain=8.0, importance_budget=2.0, q_gain=0.0,
                   importance_exponent=0.0, importance_boost_exponent=0.0)  # one gain
    assert _roi_offset(40, cfg) == pytest.approx(-8.0, abs=0.01)  # 10 % ROI: the full gain
    assert _roi_offset(200, cfg) == pytest.approx(-4.0, abs=0.01)  # 50 % ROI: 2.0 / 0.5


def test_the_gain_is_firmer_on_a_small_labelled_area_and_milder_on_a_large_one():
    cfg = QpConfig(importance_gain=10.0, importance_reference=0.04, importance_exponent=0.5,
                   importance_boost_exponent=1.0, importance_boost_max=2.5,
                   importance_budget=51.0, q_gain=0.0, offset_min=-30.0)
    assert _roi_offset(16, cfg) == pytest.approx(-10.0, abs=0.01)  # 4 %: the reference
    assert _roi_offset(64, cfg) == pytest.approx(-5.0, abs=0.01)  # 16 %: (0.25) ** 0.5
    assert _roi_offset(8, cfg) == pytest.approx(-20.0, abs=0.01)  # 2 %: (2) ** 1.0
    assert _roi_offset(1, cfg) == pytest.approx(-25.0, abs=0.01)  # 0.25 %: at most 2.5x
    budget = dataclasses.replace(cfg, importance_budget=0.5)
    assert _roi_offset(64, budget) == pytest.approx(-0.5 / 0.16, abs=0.01)  # the cap holds


def test_reuse_builds_up_where_a_block_stays_and_falls_where_it_changes():
    from edge_semvc.analysis.temporal import ReuseTracker

    var = np.full((1, 3), 400.0, np.float32)  # texture of std 20
    mad = np.array([[0.0, 1.0, 30.0]], np.float32)  # still, sensor noise, a walker
    tracker = ReuseTracker()
    assert tracker.update(None, var, 4.0, 30.0).tolist() == [[0.0, 0.0, 0.0]]  # first frame
    for _ in range(200):
        reuse = tracker.update(mad, var, 4.0, 30.0)
    kept = 1 - 1.0 / 24  # the noisy block keeps all but mad / (std + floor) of itself
    assert reuse[0, 0] == 30.0  # capped at the horizon
    assert reuse[0, 1] == pytest.approx(kept / (1 - kept), rel=1e-3)  # kept + kept^2 + ...
    assert reuse[0, 2] == 0.0  # changes more than it holds: nothing carried
    moved = tracker.update(np.array([[30.0, 1.0, 30.0]], np.float32), var, 4.0, 30.0)
    assert moved[0, 0] == 0.0  # a still block that changes starts over


def _background_map(change, labels, cfg, reuse=None, weighs_reuse=False, index=0):
    lm = LabelMap(np.zeros((1, *labels.shape), np.float32), ["background", "person"], labels)
    stats = region_stats(labels, np.full(labels.shape, 0.3, np.float32), change)
    stats.reuse, stats.index = reuse, index
    return build_qp_map(stats, lm, np.array([0.0, 0.8], np.float32), cfg, None,
                        weighs_reuse).offsets


def test_moving_background_counts_on_a_still_camera_only():
    from edge_semvc.qp.qpmap import macroblock_weight, still_camera

    def weights(change):
        return macroblock_weight(labels, change, importance, cfg,
                                 still_camera(labels, change, cfg))

    cfg = QpConfig(q_gain=0.0)
    labels = np.zeros((10, 10), np.int16)
    labels[0, 0] = 1
    still = np.zeros((10, 10), np.float32)
    still[5, 5] = 0.5  # something the labels missed walks there
    importance = np.array([0.0, 0.8], np.float32)
    weight = weights(still)
    assert weight[5, 5] == pytest.approx(0.4) and weight[0, 0] == pytest.approx(0.8)
    assert weight[weight < 0.4].max() == 0
    half = np.full((10, 10), 0.16, np.float32)  # half-way up the ramp
    half[:8] = 0  # 79 of the 99 background blocks still: about half the camera counts
    assert weights(half)[9, 9] == pytest.approx(
        0.4 * (79 / 99 - 0.7) / 0.2 * (0.16 - 0.08) / (0.25 - 0.08), rel=1e-4)
    panning = np.full((10, 10), 0.5, np.float32)  # everything moves: says nothing
    assert weights(panning)[5, 5] == 0
    offsets = _background_map(still, labels, cfg)
    assert offsets[0, 0] < offsets[5, 5] < offsets[9, 9]  # person, walker, still background
    off = _background_map(still, labels, QpConfig(q_gain=0.0, moving_background=0.0))
    assert off[5, 5] == off[9, 9]


def test_the_reuse_term_favours_what_stays_unless_the_encoder_weighs_reuse():
    labels = np.zeros((4, 8), np.int16)
    labels[0, 0] = 1
    change = np.zeros((4, 8), np.float32)
    reuse = np.full((4, 8), 15.0, np.float32)
    reuse[:, 4:] = 0.5  # the right half keeps changing
    cfg = QpConfig(q_gain=0.0, reuse_gain=1.0, refresh_period=0)
    o = _background_map(change, labels, cfg, reuse)
    assert o[2, 6] - o[2, 1] == pytest.approx(np.log2(16) - np.log2(1.5), abs=1e-4)
    same = _background_map(change, labels, cfg, reuse, weighs_reuse=True)  # x264's mb-tree
    assert same[2, 6] == same[2, 1]
    assert (_background_map(change, labels, QpConfig(q_gain=0.0, reuse="always",
                                                     refresh_period=0), reuse,
                            weighs_reuse=True) == o).all()
    never = _background_map(change, labels, QpConfig(q_gain=0.0, reuse="never"), reuse)
    assert never[2, 6] == never[2, 1]


def test_still_blocks_are_refined_once_a_period_and_held_between_labelled_or_not():
    labels = np.zeros((4, 8), np.int16)
    labels[0, 0] = labels[1, 0] = 1  # a person standing, a person walking
    change = np.zeros((4, 8), np.float32)
    reuse = np.full((4, 8), 15.0, np.float32)
    reuse[:, 7] = 1.0  # the right column is still for a frame only: a quarter of the term
    reuse[1, 0] = 0.0  # the walker changes every frame: none of it
    cfg = QpConfig(q_gain=0.0, reuse_gain=0.0, refresh_period=4, refresh_gain=2.0,
                   refresh_hold=3.0)
    refreshed = np.zeros((4, 8), int)
    standing, walking = [], []
    for index in range(100, 104):
        o = _background_map(change, labels, cfg, reuse, index=index)
        still = o[:, :7][labels[:, :7] == 0]
        held = still.max()
        due = np.isclose(o, held - 5.0, atol=1e-4)
        refreshed += due
        assert np.isclose(still, held).sum() + due.sum() == still.size  # nothing in between
        assert 5 <= due.sum() <= 8  # one in four, spread over the rows
        assert set(np.nonzero(due)[0]) == {0, 1, 2, 3}
        col = o[:, 7] - held  # a quarter of -2 or of +3 where a still block gets +3
        assert (np.isclose(col, -0.5 - 3.0, atol=1e-4) | np.isclose(col, 0.75 - 3.0,
                                                                   atol=1e-4)).all()
        assert o[0, 0] < held - 5.0  # the person keeps the emphasis of its class
        standing.append(o[0, 0] - held)
        walking.append(o[1, 0] - held)
    assert (refreshed[:, :7][labels[:, :7] == 0] == 1).all()  # each still block once a period
    top = max(standing)  # the standing person: refined in one frame of the four, held in three
    assert np.allclose(sorted(standing), [top - 5.0, top, top, top], atol=1e-4)
    assert np.ptp(walking) < 1e-4  # what changes every frame is not held
    for off in (QpConfig(q_gain=0.0, reuse_gain=0.0, refresh_period=0),
                QpConfig(q_gain=0.0, reuse_gain=0.0, reuse="never")):
        o = _background_map(change, labels, off, reuse, index=3)
        assert np.ptp(o[labels == 0]) == 0
    mb_tree = _background_map(change, labels, cfg, reuse, weighs_reuse=True, index=3)
    assert np.ptp(mb_tree[labels == 0]) == 0  # x264 with a lookahead weighs it itself
    panning = _background_map(np.full((4, 8), 0.5, np.float32), labels,
                              dataclasses.replace(cfg, moving_background=0.0), reuse, index=3)
    assert np.ptp(panning[labels == 0]) == 0  # a moving camera: the blocks that hold are flat


@pytest.mark.parametrize("key, value", [("qp.reuse", "off"), ("qp.moving_background", 1.5),
                                        ("qp.motion_low", 0.3), ("qp.motion_high", 0.0),
                                        ("qp.reuse_gain", -1), ("analysis.intra_floor", 0),
                                        ("qp.refresh_period", 1), ("qp.refresh_period", 2.5),
                                        ("qp.refresh_hold", 60)])
def test_the_background_terms_refuse_bad_values_naming_the_key(key, value):
    from edge_semvc.config import load_config

    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(None, [f"{key}={value}"])

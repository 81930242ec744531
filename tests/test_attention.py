"""METHOD embodiment 2: the recurrent change network (analysis/recurrent.py) and the attention
policy (qp/attention.py): the cell's update, robustness to sensor noise, reaction to a region
that starts moving, and on a real clip with the real labeler, lower Q for moving people under
`attention` than under `masking`."""
from itertools import islice

import numpy as np
import pytest
from conftest import shared_file

from edge_semvc.analysis import Analyser
from edge_semvc.analysis.recurrent import AttentionConfig, RecurrentChange
from edge_semvc.config import Config, ConfigError
from edge_semvc.errors import ModelError
from edge_semvc.frame import block_samples, luma_grid
from edge_semvc.qp.attention import attention_q
from edge_semvc.qp.policy import base_q
from edge_semvc.sources import open_source

VTEST = "street_pedestrians_vtest_768x576.avi"  # static camera, pedestrians walking
P_HIGH = AttentionConfig().p_high


def read_frames(name: str, n: int):
    src = open_source(str(shared_file("data", "video", name)))
    try:
        return list(islice(src.frames(), n))
    finally:
        src.close()


@pytest.fixture(scope="module")
def vtest_luma() -> np.ndarray:
    return read_frames(VTEST, 1)[0].y


def noisy(y: np.ndarray, sigma: float, rng) -> np.ndarray:
    """An 8-bit sensor's picture of `y`: Gaussian noise, rounded and clipped."""
    return np.clip(np.rint(y + rng.normal(0.0, sigma, y.shape)), 0, 255).astype(np.uint8)


def blocks_of(y: np.ndarray) -> np.ndarray:
    return block_samples(luma_grid(y))


# -- the policy formula ---------------------------------------------------------------------

def test_attention_formula_exact_numbers():
    cfg = AttentionConfig(enabled=True, p_low=0.1, p_high=0.5, attention_cut=0.5,
                          quiet_raise=0.1)
    q = np.array([[1.0, 0.5, 0.2, 0.8]], np.float32)
    p = np.array([[0.6, -0.7, 0.3, 0.05]], np.float32)  # above, |.| above, inside, below
    out = attention_q(q, p, cfg)
    assert out.dtype == np.float32
    assert out[0].tolist() == pytest.approx([0.5, 0.25, 0.22, 0.4])


@pytest.mark.parametrize("overrides", [{"enabled": True, "policy": "masking"},
                                       {"enabled": False, "policy": "attention"}])
def test_masking_or_off_leaves_q_untouched(overrides):
    q = np.array([[1.0, 0.3]], np.float32)
    out = attention_q(q, np.array([[0.9, 0.0]], np.float32), AttentionConfig(**overrides))
    assert out.tolist() == q.tolist()


def test_config_refuses_bad_values_naming_the_key():
    AttentionConfig().validate()
    with pytest.raises(ConfigError, match="attention.policy.*masking | attention"):
        AttentionConfig(policy="ignore").validate()
    with pytest.raises(ConfigError, match="attention.p_low"):
        AttentionConfig(p_low=0.6, p_high=0.5).validate()
    with pytest.raises(ConfigError, match="attention.floor_rise"):
        AttentionConfig(floor_rise=0.0).validate()


# -- the recurrent cell ---------------------------------------------------------------------

def test_cell_update_exact_numbers():
    """Three static macroblocks and one that changes by 20 levels every frame: the cell starts
    at rest at the frame's median change (0), then follows the documented update."""
    cfg = AttentionConfig()
    rc = RecurrentChange(cfg)
    blocks = np.zeros((2, 4, 2, 4), np.float32)
    assert rc.step(blocks).tolist() == [[0.0, 0.0], [0.0, 0.0]]  # first frame
    moved = blocks.copy()
    moved[0, :, 0, :] = 20.0
    p = rc.step(moved)
    # f = 0 + 0.5 * (20 - 0) = 10; threshold = 2 * 0 + 2 = 2; D = (10 - 2) / 8 = 1
    assert rc.excess[0, 0] == pytest.approx(1.0)
    assert p[0, 0] == pytest.approx(np.tanh(1.0))
    assert p[1, 1] == 0.0
    # The gate is open (sigmoid(max(8, 20 - 2)) = 1 - 1.5e-8): the floor learns at a_busy
    # from x capped at the threshold: n = 0 + 0.005 * (2 - 0) = 0.01.
    rc.step(blocks)  # back by 20 levels
    # f = 10 + 0.5 * (20 - 10) = 15; threshold = 2 * 0.01 + 2; D = (15 - 2.02) / 8
    assert rc.excess[0, 0] == pytest.approx((15 - 2.02) / 8, abs=1e-5)


def test_region_values_are_the_tanh_of_the_mean_excess():
    rc = RecurrentChange(AttentionConfig())
    blocks = np.zeros((2, 4, 3, 4), np.float32)
    regions = np.array([[1, 1, 0], [0, 0, 0]], np.int32)
    rc.step(blocks, regions)
    moved = blocks.copy()
    moved[0, :, 0, :] = 20.0  # one of region 1's two macroblocks: D = 1 and 0
    p = rc.step(moved, regions)
    assert p[0, 0] == p[0, 1] == pytest.approx(np.tanh(0.5))
    assert (p[1] == 0).all() and p[0, 2] == 0


def test_first_frame_reset_and_new_picture_size_give_zeros():
    rc = RecurrentChange(AttentionConfig())
    rng = np.random.default_rng(1)
    a, b = (rng.uniform(0, 255, (2, 4, 3, 4)).astype(np.float32) for _ in range(2))
    rc.step(a)
    rc.step(a)  # at rest: nothing changes
    assert rc.step(b).min() > P_HIGH  # everything changed
    rc.reset()
    assert not rc.step(b).any()
    assert not rc.step(np.zeros((3, 4, 3, 4), np.float32)).any()  # another size: a first frame


@pytest.mark.parametrize("sigma", [3.0, 5.0])
def test_static_noisy_picture_stays_inside_the_range(vtest_luma, sigma):
    """A real frame repeated 30 times under sensor noise: no macroblock, and so no region,
    leaves [p_low, p_high]."""
    rng = np.random.default_rng(7)
    per_mb, per_region = RecurrentChange(AttentionConfig()), RecurrentChange(AttentionConfig())
    regions = np.zeros(blocks_of(vtest_luma).shape[::2], np.int32)
    regions[10:20, 10:20] = 1
    for _ in range(30):
        blocks = blocks_of(noisy(vtest_luma, sigma, rng))
        assert per_mb.step(blocks).max() <= P_HIGH
        assert per_region.step(blocks, regions).max() <= P_HIGH


def test_region_that_starts_moving_leaves_the_range_within_three_frames(vtest_luma):
    """A textured strip of a real frame (σ = 3 noise) is still for 10 frames, then slides 4
    pixels a frame for 10 frames, then stops."""
    y0 = vtest_luma.astype(np.float32)
    rows, cols = slice(32, 80), slice(256, 448)  # macroblock rows 2-4, columns 16-27
    regions = np.zeros((y0.shape[0] // 16, y0.shape[1] // 16), np.int32)
    regions[2:5, 16:28] = 1
    rng = np.random.default_rng(3)
    rc = RecurrentChange(AttentionConfig())
    strip, background = [], []
    for t in range(30):
        y = y0.copy()
        shift = 4 * min(max(t - 9, 0), 10)
        y[rows, cols] = y0[rows, 256 - shift: 448 - shift]
        p = rc.step(blocks_of(noisy(y, 3.0, rng)), regions)
        strip.append(float(p[3, 20]))
        background.append(float(p[0, 0]))
    assert max(strip[:10]) <= P_HIGH  # still
    assert max(strip[10:13]) > P_HIGH  # moves from frame 10: seen by frame 12
    assert min(strip[12:20]) > P_HIGH  # and while it moves
    assert max(strip[23:]) <= P_HIGH  # still again from frame 20: quiet by frame 23
    assert max(background) <= P_HIGH


# -- a real clip, the real labeler ----------------------------------------------------------

@pytest.fixture(scope="module")
def vtest_labelled():
    """(frame, LabelMap) for the first 16 frames of the pedestrians clip, the default models
    on every frame."""
    from edge_semvc.labeler import Labeler

    cfg = Config()
    cfg.labeler.cpu_budget = 0
    try:
        labeler = Labeler(cfg.labeler, cfg.cache_dir(), log=lambda *_: None)
    except ModelError as e:
        pytest.skip(f"the default models are not prepared (`edge-semvc models prepare`): {e}")
    try:
        frames = read_frames(VTEST, 16)
        return [(f, labeler.label(f)) for f in frames]
    finally:
        labeler.close()


def test_moving_people_get_lower_q_under_attention_than_under_masking(vtest_labelled):
    cfg = Config()
    attention = AttentionConfig(enabled=True, policy="attention")
    masking = AttentionConfig(enabled=True, policy="masking")
    analyser, rc = Analyser(cfg.analysis), RecurrentChange(attention)
    moving_seen, outside = 0, []
    for frame, labels in vtest_labelled:
        stats = analyser.analyse(frame, labels)
        p = rc.analyse(frame, stats.regions)
        q = base_q(stats.region_complexity, stats.region_change, cfg.qp)
        q_attention, q_masking = attention_q(q, p, attention), attention_q(q, p, masking)
        assert q_masking is q
        background = stats.regions == 0
        assert p[background].max() <= P_HIGH  # mostly still: quiet
        if frame.index < 3:  # the cell needs two differences to see every walker
            continue
        person = labels.labels == labels.classes.index("person")
        # Walkers: people the core method finds fast (motion masking compresses them more).
        moving = person & (stats.region_change > cfg.qp.v_threshold)
        if not moving.any():
            continue
        moving_seen += 1
        outside += (p[moving] > P_HIGH).tolist()
        assert q_attention[moving].mean() < q_masking[moving].mean()
        # Relative to the background too (the map's pinned mean keeps only differences).
        assert (q_attention[moving].mean() / q_attention[background].mean()
                < q_masking[moving].mean() / q_masking[background].mean())
    assert moving_seen >= 10
    assert np.mean(outside) > 0.9  # measured: all of them on these frames, 97 % over 150

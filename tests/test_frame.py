import numpy as np
import pytest

from edge_semvc.frame import Frame, mb_grid, pool_to_mb, prob_to_mb


def test_mb_grid_rounds_up():
    assert mb_grid(1920, 1080) == (120, 68)
    assert mb_grid(854, 480) == (54, 30)
    assert mb_grid(300, 168) == (19, 11)
    assert mb_grid(16, 16) == (1, 1)


def test_pool_mean_counts_only_real_pixels_in_partial_blocks():
    # 20x18: the last column of macroblocks holds 4 real columns, the last row 2 real rows.
    values = np.zeros((18, 20), np.float32)
    values[:, 16:] = 1.0  # the partial column is all ones
    values[16:, :16] = 0.5
    pooled = pool_to_mb(values, 2, 2)
    assert pooled.shape == (2, 2)
    assert pooled[0, 1] == pytest.approx(1.0)  # not diluted by padding
    assert pooled[1, 0] == pytest.approx(0.5)
    assert pooled[0, 0] == pytest.approx(0.0)


def test_pool_max_and_bool_masks():
    mask = np.zeros((33, 40), bool)
    mask[32, 39] = True  # a single pixel in the corner block
    assert pool_to_mb(mask, 3, 3, how="max")[2, 2] == 1.0
    assert pool_to_mb(mask, 3, 3, how="max").sum() == 1.0
    assert pool_to_mb(mask, 3, 3)[2, 2] == pytest.approx(1 / 8)  # 1 of 1x8 real pixels


def test_pool_rejects_wrong_grid_and_mode():
    with pytest.raises(ValueError, match="does not cover"):
        pool_to_mb(np.zeros((32, 32)), 3, 2)
    with pytest.raises(ValueError, match="unknown pooling"):
        pool_to_mb(np.zeros((32, 32)), 2, 2, how="median")


def test_prob_to_mb_covers_partial_grid():
    prob = np.zeros((144, 256), np.float32)
    prob[:, :128] = 1.0  # left half of the frame
    out = prob_to_mb(prob, 854, 480)
    assert out.shape == (30, 54)
    assert out[:, :26].min() == pytest.approx(1.0)
    assert out[:, 28:].max() == pytest.approx(0.0)
    assert prob_to_mb(np.ones((10, 10), np.float32), 300, 168).min() == pytest.approx(1.0)


def test_rgb_round_trip_is_close():
    rng = np.random.default_rng(1)
    rgb = np.repeat(np.repeat(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8), 2, 0), 2, 1)
    frame = Frame.from_rgb(rgb, 0, 1, 0)
    assert frame.y.shape == (16, 16) and frame.u.shape == (8, 8)
    assert np.abs(frame.rgb().astype(int) - rgb).max() <= 6


def test_from_i420_splits_planes():
    w, h = 6, 4
    buf = np.arange(w * h * 3 // 2, dtype=np.uint8)
    f = Frame.from_i420(buf, w, h, 7, 1, 0)
    assert f.y.shape == (4, 6) and f.u.shape == (2, 3) and f.v.shape == (2, 3)
    assert f.u[0, 0] == 24 and f.v[0, 0] == 30
    assert (f.mb_w, f.mb_h) == (1, 1)

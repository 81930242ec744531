import numpy as np
import pytest

from edge_semvc.frame import Frame, mb_grid, prob_to_mb


def test_mb_grid_rounds_up():
    assert mb_grid(1920, 1080) == (120, 68)
    assert mb_grid(854, 480) == (54, 30)
    assert mb_grid(300, 168) == (19, 11)
    assert mb_grid(16, 16) == (1, 1)


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

"""QP maps as a few ROI rectangles (edge_semvc/rects.py) and back (QpMap.from_rects)."""
import numpy as np
import pytest

from edge_semvc.config import load_config
from edge_semvc.pipeline import run_encode
from edge_semvc.rects import to_rects
from edge_semvc.sources import open_source
from edge_semvc.values import QpMap, Rect


def blobs() -> np.ndarray:
    m = np.zeros((10, 12), np.float32)
    m[1:3, 1:4] = -5
    m[5:9, 2:4] = 3
    m[4:7, 7:11] = -2
    return m


def error(m: np.ndarray, rects: list[Rect]) -> float:
    return float(((QpMap.from_rects(rects, m.shape).offsets - m) ** 2).mean())


def overlap(rects: list[Rect], shape) -> bool:
    cover = np.zeros(shape, int)
    for r in rects:
        cover[r.y:r.y + r.h, r.x:r.x + r.w] += 1
    return bool((cover > 1).any())


def street_like() -> np.ndarray:
    """A positive background (the pinned mean) with three people and a little texture."""
    m = np.full((68, 120), 2.0, np.float32)
    m[10:40, 20:35] = -8
    m[30:60, 70:90] = -5
    m[5:12, 100:110] = -10
    return m + np.random.default_rng(0).normal(0, 0.3, m.shape).astype(np.float32)


def test_three_blobs_give_three_rects_that_reproduce_the_map():
    m = blobs()
    rects = to_rects(QpMap(m), 3)
    assert sorted((r.x, r.y, r.w, r.h, r.delta) for r in rects) == [
        (1, 1, 3, 2, -5.0), (2, 5, 2, 4, 3.0), (7, 4, 4, 3, -2.0)]
    assert np.array_equal(QpMap.from_rects(rects, m.shape).offsets, m)
    assert to_rects(QpMap(m), 8) == rects  # more slots than needed: nothing changes


@pytest.mark.parametrize("k", [0, 1, 2, 3, 5, 8])
def test_max_rects_is_respected_and_rects_do_not_overlap(k):
    for m in (blobs(), street_like()):
        rects = to_rects(QpMap(m), k)
        assert len(rects) <= k
        assert not overlap(rects, m.shape)
        assert all(r.w > 0 and r.h > 0 and r.x + r.w <= m.shape[1] and r.y + r.h <= m.shape[0]
                   for r in rects)


def test_error_decreases_as_max_rects_grows():
    for m in (blobs(), street_like()):
        errors = [error(m, to_rects(QpMap(m), k)) for k in (0, 1, 2, 3, 4, 6, 8, 12, 16)]
        assert all(b <= a + 1e-9 for a, b in zip(errors, errors[1:])), errors
        assert errors[-1] < 0.1 * errors[0]


def test_zero_and_empty_maps_give_no_rects():
    assert to_rects(QpMap(np.zeros((68, 120), np.float32)), 8) == []
    assert to_rects(QpMap(np.zeros((0, 0), np.float32)), 8) == []
    assert QpMap.from_rects([], (4, 5)).offsets.tolist() == np.zeros((4, 5)).tolist()
    with pytest.raises(ValueError):
        to_rects(QpMap(blobs()), -1)


def test_deltas_stay_within_the_maps_range():
    # clamped extremes next to each other: means of them never leave [min, max]
    m = np.where(np.indices((20, 30)).sum(0) % 3 == 0, 12.0, -12.0).astype(np.float32)
    m[:, :10] = 12.0
    for k in (1, 2, 8):
        rects = to_rects(QpMap(m), k)
        assert rects and all(-12.0 <= r.delta <= 12.0 for r in rects)
    m = np.full((6, 6), 3.0, np.float32)  # a uniform map: one rectangle at exactly its value
    assert to_rects(QpMap(m), 8) == [Rect(0, 0, 6, 6, 3.0)]


def test_from_rects_overlaps_strongest_wins_whatever_the_order():
    a, b, c = Rect(0, 0, 4, 4, 2.0), Rect(2, 2, 4, 4, -6.0), Rect(3, 3, 1, 1, 6.0)
    for order in ([a, b, c], [c, b, a], [b, a, c]):
        out = QpMap.from_rects(order, (6, 6)).offsets
        assert out[0, 0] == 2.0 and out[2, 2] == -6.0 and out[5, 5] == -6.0
        assert out[3, 3] == -6.0  # |6| == |-6|: the negative one (more bits) wins


def test_a_real_map_from_a_shared_clip(clip, tmp_path):
    maps = []
    src = open_source(str(clip("carphone_qcif_pristine.mp4")), None)
    try:
        run_encode(src, str(tmp_path / "out.mp4"), load_config(None, ["encoder.rc=crf"]),
                   max_frames=10, on_frame=lambda f, labels, qp: maps.append(qp.offsets.copy())
                   if labels.labels.any() else None)
    finally:
        src.close()
    assert maps, "the face on carphone is labelled"
    m = maps[-1]
    assert m.shape == (9, 11)
    rects = to_rects(QpMap(m), 8)
    assert 1 <= len(rects) <= 8 and not overlap(rects, m.shape)
    assert all(m.min() <= r.delta <= m.max() for r in rects)
    errors = [error(m, to_rects(QpMap(m), k)) for k in (1, 2, 4, 8)]
    assert errors == sorted(errors, reverse=True) and errors[-1] < 0.5 * errors[0]


def test_bench_rects8_encodes_the_map_jetson_would_apply():
    from edge_semvc.bench.run import rect_map

    m = street_like()
    rebuilt = rect_map(8)(QpMap(m))
    exact = to_rects(QpMap(m), 8)
    whole = [Rect(r.x, r.y, r.w, r.h, round(r.delta)) for r in exact if round(r.delta)]
    assert np.array_equal(rebuilt.offsets, QpMap.from_rects(whole, m.shape).offsets)
    assert len(np.unique(rebuilt.offsets)) <= 9  # 8 whole deltas and the 0 outside
    assert np.array_equal(rebuilt.offsets, np.round(rebuilt.offsets))

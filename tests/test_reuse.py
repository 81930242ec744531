"""Temporal label reuse: the carrier follows motion, holds still scenes, reports cuts, is cheap."""
import time

import numpy as np
import pytest

from edge_semvc.labeler.reuse import (LabelCarrier, PlaneCarrier, carry_map,
                                      downsample)
from edge_semvc.values import LabelMap


def texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """A smooth random texture (blurred noise) with detail at several scales: uint8[h, w]."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w), np.float32)
    for cell in (8, 24, 64):
        small = rng.random((h // cell + 2, w // cell + 2)).astype(np.float32)
        big = np.kron(small, np.ones((cell, cell), np.float32))[:h, :w]
        k = np.ones(cell // 2) / (cell // 2)  # box blur, separable
        big = np.apply_along_axis(np.convolve, 0, big, k, "same")
        big = np.apply_along_axis(np.convolve, 1, big, k, "same")
        img += big * (96 / len((8, 24, 64)))
    return np.clip(img * 2 - 40, 0, 255).astype(np.uint8)


def square_map(mb_h, mb_w, y0, x0, size=6, p=0.95) -> LabelMap:
    probs = np.zeros((1, mb_h, mb_w), np.float32)
    probs[0, y0:y0 + size, x0:x0 + size] = p
    return LabelMap.from_probs(probs, ["person"], 0.7, ["test"])


def iou(a, b) -> float:
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope="module")
def scene():
    return texture(480, 720)


def crop(scene, dy, dx, h=288, w=352):
    """The window of a camera panned by (dy, dx): content moves by (-dy, -dx) in the frame."""
    return np.ascontiguousarray(scene[64 + dy:64 + dy + h, 64 + dx:64 + dx + w])


def test_motion_follows_a_pan(scene):
    # Content moves 16 px (one macroblock) left per frame: the square lands exactly.
    frames = [crop(scene, 0, 16 * i) for i in range(5)]
    key = square_map(18, 22, 6, 10)
    mc, hold = LabelCarrier(0.7), LabelCarrier(0.7, "hold")
    mc.keyframe(key, frames[0])
    hold.keyframe(key, frames[0])
    for i in range(1, 5):
        out = mc.carry(frames[i])
        assert hold.carry(frames[i]) is key  # hold: the same object, nothing computed
        expect = np.zeros((18, 22), bool)
        expect[6:12, 10 - i:16 - i] = True
        assert np.array_equal(out.labels > 0, expect), i
        assert not mc.scene_cut


def test_motion_follows_a_diagonal_and_a_fast_pan(scene):
    """8 px down and 8 px left per frame, then 32 px per frame (beyond the +-16 px search:
    the predictor, last frame's most common vector, takes the search there)."""
    steps = [(-8, 8)] * 4 + [(0, 32)] * 4
    pos, frames = [(0, 0)], []
    for dy, dx in steps:
        pos.append((pos[-1][0] + dy, pos[-1][1] + dx))
    frames = [crop(scene, y, x) for y, x in pos]
    key = square_map(18, 22, 5, 14)
    mc, hold = LabelCarrier(0.7), LabelCarrier(0.7, "hold")
    mc.keyframe(key, frames[0])
    hold.keyframe(key, frames[0])
    ious, held = [], []
    for (y, x), f in zip(pos[1:], frames[1:]):
        probs = np.zeros((1, 18 * 16, 22 * 16), np.float32)  # the truth, per pixel
        probs[0, 80 - y:176 - y, 224 - x:320 - x] = 1
        truth = probs[0].reshape(18, 16, 22, 16).mean((1, 3)) > 0.5
        ious.append(iou(mc.carry(f).labels > 0, truth))
        held.append(iou(hold.carry(f).labels > 0, truth))
    assert min(ious[:4]) > 0.7 and np.mean(ious[:4]) > 0.8, ious
    assert ious[-1] > 0.6, ious  # the fast pan is caught up with
    assert np.mean(ious) > np.mean(held) + 0.4


def test_still_scene_keeps_the_map(scene):
    y = crop(scene, 0, 0)
    key = LabelMap.from_probs(np.random.default_rng(1).random((2, 18, 22)).astype(np.float32),
                              ["person", "face"], 0.7, ["a", "b"])
    c = LabelCarrier(0.7)
    c.keyframe(key, y)
    for _ in range(3):
        out = c.carry(y.copy())
        assert np.allclose(out.probs, key.probs, atol=1e-6)
        assert np.array_equal(out.labels, key.labels)
        assert out.classes == key.classes and out.models == key.models


def test_scene_cut_is_reported(scene):
    c = LabelCarrier(0.7)
    c.keyframe(square_map(18, 22, 6, 10), crop(scene, 0, 0))
    c.carry(crop(scene, 0, 8))
    assert not c.scene_cut and c.last_mad < 8
    c.carry(255 - texture(288, 352, seed=7))  # another scene
    assert c.scene_cut and c.last_mad > c.planes.cut_mad


def test_the_cuts_of_the_bikes_clip_are_found_and_nothing_else(clip):
    """The clip's hard cuts (README of the shared clips) and no false alarm elsewhere; the
    highest non-cut figure on all shared clips is 18 levels (road clip, last frame), cuts 30+."""
    from edge_semvc.sources import open_source

    src = open_source(str(clip("bikes_street_scene_cuts_640x272.mp4")))
    pc, cuts = PlaneCarrier(), []
    try:
        for f in src.frames():
            pc.step(f.y)
            if pc.scene_cut:
                cuts.append(f.index)
    finally:
        src.close()
    assert cuts == [30, 76, 137, 187, 242]


def test_stateless_carry_map(scene):
    out = carry_map(square_map(18, 22, 6, 10), crop(scene, 0, 0), crop(scene, 0, 16))
    expect = np.zeros((18, 22), bool)
    expect[6:12, 9:15] = True
    assert np.array_equal(out.labels > 0, expect)


def test_plane_slots_keep_their_own_key_frames(scene):
    """Two models on different frames: each slot is moved from its own frame."""
    pc = PlaneCarrier()
    a = np.zeros((1, 18, 22), np.float32)
    a[0, 4:8, 12:16] = 1.0
    frames = [crop(scene, 0, 16 * i) for i in range(4)]
    pc.step(frames[0])
    pc.set("a", a)
    pc.step(frames[1])
    pc.get("a")
    pc.step(frames[2])
    pc.set("b", a.copy(), interp="nearest")
    got_a = pc.get("a")
    pc.step(frames[3])
    got_a, got_b = pc.get("a"), pc.get("b")
    assert np.array_equal(got_a[0] > 0.5, np.roll(a[0], -3, 1) > 0.5)
    assert np.array_equal(got_b[0] > 0.5, np.roll(a[0], -1, 1) > 0.5)


def test_motion_is_computed_only_when_something_is_carried(scene, monkeypatch):
    calls = []
    pc = PlaneCarrier()
    real = pc.motion.estimate
    monkeypatch.setattr(pc.motion, "estimate", lambda *a: calls.append(1) or real(*a))
    planes = np.zeros((1, 18, 22), np.float32)
    for i in range(3):  # every model runs on every frame: no motion search at all
        pc.step(crop(scene, 0, 8 * i))
        pc.set(0, planes)
    assert calls == []
    pc.step(crop(scene, 0, 24))  # a frame in between: one search
    pc.get(0)
    pc.get(0)
    assert len(calls) == 1
    pc.step(crop(scene, 0, 32))  # nobody asks on this frame...
    pc.step(crop(scene, 0, 40))  # ...but the chain catches up before the next one
    assert len(calls) == 2
    pc.get(0)
    assert len(calls) == 3


def test_frame_sizes_not_multiple_of_16():
    y = texture(168, 300)
    assert downsample(y).shape == (2 * 11, 2 * 19)
    key = square_map(11, 19, 2, 3, size=4)
    out = carry_map(key, y, np.roll(y, 16, 1))
    assert out.labels.shape == (11, 19)
    assert (out.labels > 0).sum() == 16


def test_errors(scene):
    with pytest.raises(ValueError, match="unknown label carry mode"):
        LabelCarrier(0.7, "warp")
    c = LabelCarrier(0.7)
    with pytest.raises(RuntimeError, match="before the first keyframe"):
        c.carry(crop(scene, 0, 0))
    with pytest.raises(ValueError, match="macroblocks for a 352x288 frame"):
        c.keyframe(square_map(10, 10, 0, 0), crop(scene, 0, 0))
    c.keyframe(square_map(18, 22, 0, 0), crop(scene, 0, 0))
    with pytest.raises(ValueError, match="frame size changed"):
        c.carry(crop(scene, 0, 0, h=144, w=176))
    pc = PlaneCarrier()
    pc.step(crop(scene, 0, 0))
    with pytest.raises(KeyError, match="no planes in slot"):
        pc.get("x")


def test_carry_is_cheap_at_720p():
    y = texture(720, 1280)
    c = LabelCarrier(0.7)
    c.keyframe(LabelMap.from_probs(np.zeros((2, 45, 80), np.float32), ["person", "face"], 0.7,
                                   []), y)
    moved = np.roll(y, 8, 1)
    c.carry(moved)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(10):
            c.carry(moved)
        best = min(best, (time.perf_counter() - t0) / 10)
    # ~0.8 ms measured on the 2-core development machine; generous for loaded CI machines.
    assert best < 4e-3, f"{best * 1e3:.2f} ms per carried frame"


def test_motion_compensation_beats_hold_on_the_demo_clip():
    """The demo clip is one photograph under a moving camera: the labels move with it."""
    from edge_semvc.bench.reuse_eval import evaluate

    r = evaluate("demo://astronaut", [5], max_frames=60, log=lambda *_: None)
    by = {x["mode"]: x for x in r["results"]}
    assert by["mc"]["iou"]["any"] > by["hold"]["iou"]["any"] + 0.02
    assert by["mc"]["iou"]["any"] > 0.9
    assert by["mc"]["saving"] > 0.5

"""Temporal label reuse: the carrier follows motion, holds still scenes, keeps boxes on their
objects, carries late planes from their own frame, reports cuts."""
import numpy as np
import pytest

from edge_semvc.frame import luma_grid, pair_sums
from edge_semvc.labeler.decoders import boxes_to_mb
from edge_semvc.labeler.reuse import PlaneCarrier, draw_boxes, find_boxes


def luma(y: np.ndarray) -> np.ndarray:
    """What the carrier steps on: the picture's `Frame.luma_sums`."""
    return pair_sums(luma_grid(y))


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


def square(mb_h, mb_w, y0, x0, size=6, p=0.95) -> np.ndarray:
    probs = np.zeros((1, mb_h, mb_w), np.float32)
    probs[0, y0:y0 + size, x0:x0 + size] = p
    return probs


def carry(frames, planes, interp=None, mode="motion") -> list[np.ndarray]:
    """`planes` computed on frames[0], carried through the others: the planes on each."""
    pc = PlaneCarrier(mode)
    pc.step(luma(frames[0]))
    pc.set(0, planes, interp)
    out = []
    for f in frames[1:]:
        pc.step(luma(f))
        out.append(pc.get(0))
    return out


def iou(a, b) -> float:
    return (a & b).sum() / max((a | b).sum(), 1)


@pytest.fixture(scope="module")
def scene():
    return texture(480, 720)


def crop(scene, dy, dx, h=288, w=352):
    """The window of a camera panned by (dy, dx): content moves by (-dy, -dx) in the frame."""
    return np.ascontiguousarray(scene[64 + dy:64 + dy + h, 64 + dx:64 + dx + w])


@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_motion_follows_a_pan(scene, interp):
    # Content moves 16 px (one macroblock) left per frame: the square lands exactly.
    frames = [crop(scene, 0, 16 * i) for i in range(5)]
    key = square(18, 22, 6, 10)
    held = carry(frames, key, interp, "hold")
    assert all(h is key for h in held)  # hold: the same planes, nothing computed
    for i, out in enumerate(carry(frames, key, interp), 1):
        expect = np.zeros((18, 22), bool)
        expect[6:12, 10 - i:16 - i] = True
        assert np.array_equal(out[0] > 0.7, expect), i


@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_motion_follows_a_diagonal_and_a_fast_pan(scene, interp):
    """8 px down and 8 px left per frame, then 32 px per frame (beyond the +-16 px search:
    the predictor, last frame's most common vector, takes the search there)."""
    steps = [(-8, 8)] * 4 + [(0, 32)] * 4
    pos = [(0, 0)]
    for dy, dx in steps:
        pos.append((pos[-1][0] + dy, pos[-1][1] + dx))
    frames = [crop(scene, y, x) for y, x in pos]
    key = square(18, 22, 5, 14)
    ious, held = [], []
    for (y, x), out in zip(pos[1:], carry(frames, key, interp)):
        probs = np.zeros((18 * 16, 22 * 16), np.float32)  # the truth, per pixel
        probs[80 - y:176 - y, 224 - x:320 - x] = 1
        truth = probs.reshape(18, 16, 22, 16).mean((1, 3)) > 0.5
        ious.append(iou(out[0] > 0.7, truth))
        held.append(iou(key[0] > 0.7, truth))
    # A box keeps its size: half a macroblock off the grid, its 6x6 covers the truth's 5x5.
    assert min(ious[:4]) > (0.65 if interp == "nearest" else 0.7), ious
    assert np.mean(ious[:4]) > 0.8, ious
    assert ious[-1] > 0.6, ious  # the fast pan is caught up with
    assert np.mean(ious) > np.mean(held) + 0.4


def test_still_scene_keeps_the_planes(scene):
    y = crop(scene, 0, 0)
    key = np.random.default_rng(1).random((2, 18, 22)).astype(np.float32)
    for out in carry([y] + [y.copy()] * 3, key):
        assert np.allclose(out, key, atol=1e-6)


def moving_block(n: int, step: tuple[float, float], start=(112, 64), size=(64, 48)):
    """`n` frames of a textured block (a "person", `size` pixels) moving by `step` pixels per
    frame over a static textured background; and its box on each frame as (y0, x0, y1, x1)
    pixels."""
    bg = texture(288, 352, seed=3)
    fg = texture(size[0], size[1], seed=4) // 2 + 100  # another texture, another brightness
    frames, boxes = [], []
    for i in range(n):
        y0, x0 = (round(start[k] + i * step[k]) for k in (0, 1))
        f = np.pad(bg, max(size))  # the block may be partly out of the picture
        m = max(size)
        f[m + y0:m + y0 + size[0], m + x0:m + x0 + size[1]] = fg
        frames.append(np.ascontiguousarray(f[m:-m, m:-m]))
        boxes.append((y0, x0, y0 + size[0], x0 + size[1]))
    return frames, boxes


def box_plane(box, score=0.9, w=352, h=288) -> np.ndarray:
    y0, x0, y1, x1 = box
    return boxes_to_mb(np.array([[x0 / w, y0 / h, x1 / w, y1 / h, score]]), w, h)[None]


@pytest.mark.parametrize("step", [(0.0, 5.0), (2.0, -3.5), (-1.0, 9.0)])
def test_a_box_stays_on_its_moving_object(step):
    """30 frames of a block moving by a fraction of the 8-pixel search grid per frame (up to
    270 px in all): the carried box stays within a macroblock of the block's own box, at its
    size."""
    frames, boxes = moving_block(31, step, start=(112, 40 if step[1] > 0 else 260))
    for i, out in enumerate(carry(frames, box_plane(boxes[0]), "nearest"), 1):
        got = find_boxes(out)
        truth = find_boxes(box_plane(boxes[i]))
        assert len(got) == 1, i
        assert np.abs(got[0, 2:6] - truth[0, 2:6]).max() <= 1, (i, got, truth)
        assert got[0, 1] == np.float32(0.9)


def test_boxes_on_a_still_noisy_scene_do_not_wander(scene):
    """Sensor noise on a still scene, 30 frames: every box stays exactly where it was."""
    rng = np.random.default_rng(5)
    y = crop(scene, 0, 0).astype(np.float32)
    frames = [np.clip(y + rng.normal(0, 4, y.shape), 0, 255).astype(np.uint8) for _ in range(31)]
    key = np.maximum(box_plane((32, 32, 128, 80), 0.8), box_plane((96, 160, 272, 240), 0.6))
    key = np.concatenate([key, box_plane((200, 16, 232, 48), 0.9)])  # a second class
    for out in carry(frames, key, "nearest"):
        assert np.array_equal(out, key)


def test_a_box_on_the_border_covers_an_entering_object():
    """An object entering from the left edge: its box's left edge was the picture's, not the
    object's, so the box covers all of the object as it comes in; its right edge follows it."""
    frames, boxes = moving_block(16, (0, 6), start=(112, -24), size=(64, 64))
    visible = [(y0, max(x0, 0), y1, x1) for y0, x0, y1, x1 in boxes]
    for i, out in enumerate(carry(frames, box_plane(visible[0]), "nearest"), 1):
        cols = np.flatnonzero(out[0].any(0))
        truth = np.flatnonzero(box_plane(visible[i])[0].any(0))
        assert cols[0] <= truth[0] and abs(cols[-1] - truth[-1]) <= 1, (i, cols, truth)


def test_boxes_are_recovered_from_their_planes():
    """find_boxes then draw_boxes gives back what boxes_to_mb drew: overlapping boxes (the
    lower one partly hidden), two boxes of one score, a box smaller than a macroblock."""
    w, h = 352, 288
    boxes = np.array([[0.1, 0.1, 0.4, 0.5, 0.9], [0.3, 0.3, 0.6, 0.7, 0.6],
                      [0.7, 0.1, 0.8, 0.2, 0.6], [0.905, 0.905, 0.91, 0.91, 0.5],
                      [0.0, 0.6, 0.2, 1.0, 0.8]])
    planes = np.stack([boxes_to_mb(boxes, w, h), boxes_to_mb(boxes[:2], w, h)])
    found = find_boxes(planes)
    assert len(found) == 5 + 2
    assert np.array_equal(draw_boxes(found, planes.shape), planes)


@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_late_planes_are_carried_from_their_own_frame(scene, interp):
    """A model runs beside the pipeline: planes computed on frame 0 arrive on frame 3 and
    are moved by the motion since frame 0 (3 macroblocks), not since their arrival."""
    frames = [crop(scene, 0, 16 * i) for i in range(6)]
    key = square(18, 22, 6, 12)
    pc = PlaneCarrier()
    pc.step(luma(frames[0]))
    pc.mark("late", interp)
    assert "late" in pc and pc.frame_of("late") == 0
    with pytest.raises(KeyError, match="have not arrived"):
        pc.get("late")
    for f in frames[1:3]:  # nobody asks for the slot meanwhile: the motion is followed anyway
        pc.step(luma(f))
    pc.step(luma(frames[3]))
    pc.fill("late", key)
    assert pc.frame_of("late") == 0
    assert np.array_equal(pc.get("late")[0] > 0.7, np.roll(key[0], -3, 1) > 0.7)
    pc.step(luma(frames[4]))
    assert np.array_equal(pc.get("late")[0] > 0.7, np.roll(key[0], -4, 1) > 0.7)
    assert not pc._history  # nothing waits: the stored motion is let go
    with pytest.raises(KeyError, match="filled already"):
        pc.fill("late", key)
    pc.drop("late")
    assert "late" not in pc
    pc.drop("late")  # dropping twice is harmless
    with pytest.raises(KeyError, match="was not marked"):
        pc.fill("late", key)


def test_two_runs_in_flight(scene):
    """The labeler's pattern: runs marked on frames 0 and 2, filled on frames 2 and 4, the
    older dropped when the newer arrives."""
    frames = [crop(scene, 0, 16 * i) for i in range(6)]
    key0, key2 = square(18, 22, 6, 12), square(18, 22, 2, 14, size=4)
    pc = PlaneCarrier()
    for i, f in enumerate(frames):
        pc.step(luma(f))
        if i in (0, 2):
            pc.mark(i, "nearest")
        if i == 2:
            pc.fill(0, key0)
        if i == 4:
            pc.fill(2, key2)
            pc.drop(0)
        if i >= 2:
            live, key = (0, key0) if i < 4 else (2, key2)
            assert np.array_equal(pc.get(live) > 0.7, np.roll(key, live - i, 2) > 0.7), i
    assert 0 not in pc and not pc._history


def test_follow_keeps_the_motion_predictor_on_frames_nothing_is_carried(scene):
    """The Labeler calls `follow()` on every frame (the scene cut is no longer the carrier's:
    analysis/scene.py decides it): the motion is estimated even with nothing to carry."""
    pc = PlaneCarrier()
    pc.step(luma(crop(scene, 0, 0)))
    pc.step(luma(crop(scene, 0, 8)))
    pc.follow()
    assert pc.motion.mode == (0, 1)  # matched: 8 pixels = 1 sample
    pc.step(luma(crop(scene, 0, 24)))  # 16 px more, searched around the last frame's 8
    pc.follow()
    assert pc.motion.mode == (0, 2)
    hold = PlaneCarrier("hold")
    hold.step(luma(crop(scene, 0, 0)))
    hold.step(luma(crop(scene, 0, 8)))
    hold.follow()
    assert hold.motion.last is None  # nothing estimated


def test_plane_slots_keep_their_own_key_frames(scene):
    """Two models on different frames: each slot is moved from its own frame."""
    pc = PlaneCarrier()
    a = np.zeros((1, 18, 22), np.float32)
    a[0, 4:8, 12:16] = 1.0
    frames = [crop(scene, 0, 16 * i) for i in range(4)]
    pc.step(luma(frames[0]))
    pc.set("a", a)
    pc.step(luma(frames[1]))
    pc.get("a")
    pc.step(luma(frames[2]))
    pc.set("b", a.copy(), interp="nearest")
    got_a = pc.get("a")
    pc.step(luma(frames[3]))
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
        pc.step(luma(crop(scene, 0, 8 * i)))
        pc.set(0, planes)
    assert calls == []
    pc.step(luma(crop(scene, 0, 24)))  # a frame in between: one search
    pc.get(0)
    pc.get(0)
    assert len(calls) == 1
    pc.step(luma(crop(scene, 0, 32)))  # nobody asks on this frame...
    pc.step(luma(crop(scene, 0, 40)))  # ...but the chain catches up before the next one
    assert len(calls) == 2
    pc.get(0)
    assert len(calls) == 3


def test_a_soft_mask_read_seldom_is_where_one_read_every_frame_is(scene):
    """A soft mask's displacement is chained through the frames' vectors when it is read (a
    gated mask often is not): read on frames 3 and 70 only (past the bound on unchained
    frames: chained anyway, its vectors let go), it is exactly the mask read on every frame."""
    key = square(18, 22, 6, 8)
    every, seldom = PlaneCarrier(), PlaneCarrier()
    for pc in every, seldom:
        pc.step(luma(crop(scene, 0, 0)))
        pc.set(0, key)
    for i in range(1, 71):  # a pan: 8 px right every 2nd frame, 8 px down every 10th
        frame = luma(crop(scene, 8 * (i // 10), 8 * (i // 2)))
        for pc in every, seldom:
            pc.step(frame)
            pc.follow()
        want = every.get(0)
        if i in (3, 70):
            assert np.array_equal(seldom.get(0), want), i
        assert len(seldom._vectors) <= 51  # kept for at most the bound's frames
    assert not np.array_equal(want[0] > 0.7, key[0] > 0.7)  # it moved


@pytest.mark.parametrize("interp", ["bilinear", "nearest"])
def test_frame_sizes_not_multiple_of_16(interp):
    y = texture(168, 300)
    assert luma(y).shape == (2 * 11, 2 * 19)
    key = square(11, 19, 2, 3, size=4)
    out = carry([y, np.roll(y, 16, 1)], key, interp)[0]
    assert out.shape == (1, 11, 19)
    assert np.array_equal(out[0] > 0.7, np.roll(key[0], 1, 1) > 0.7)


def test_errors(scene):
    with pytest.raises(ValueError, match="unknown label carry mode"):
        PlaneCarrier("warp")
    with pytest.raises(ValueError, match="unknown interpolation"):
        PlaneCarrier(interp="cubic")
    pc = PlaneCarrier()
    with pytest.raises(RuntimeError, match="before the first step"):
        pc.set(0, square(18, 22, 0, 0))
    pc.step(luma(crop(scene, 0, 0)))
    with pytest.raises(ValueError, match="macroblocks for a"):
        pc.set(0, square(10, 10, 0, 0))
    with pytest.raises(ValueError, match="unknown interpolation"):
        pc.set(0, square(18, 22, 0, 0), "cubic")
    with pytest.raises(KeyError, match="no planes in slot"):
        pc.get("x")
    pc.set(0, square(18, 22, 0, 0))
    pc.step(luma(crop(scene, 0, 0, h=144, w=176)))  # a new picture size: nothing to carry
    assert 0 not in pc


def test_motion_compensation_beats_hold_on_the_demo_clip():
    """The demo clip is one photograph under a moving camera: the labels move with it."""
    from edge_semvc.bench.reuse_eval import evaluate

    r = evaluate("demo://astronaut", [5], max_frames=60, log=lambda *_: None)
    by = {x["mode"]: x for x in r["results"]}
    assert by["mc"]["iou"]["any"] > by["hold"]["iou"]["any"] + 0.02
    assert by["mc"]["iou"]["any"] > 0.9
    assert by["mc"]["recall"] > by["hold"]["recall"]
    assert by["mc"]["carried_frames"] == 60 - 12 and by["mc"]["labeler_runs"] == 12

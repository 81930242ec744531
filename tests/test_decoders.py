"""Decoders and adapters: unit checks, then real models on real frames.

The YOLOX-nano and DeepLab v3 fixtures in ../shared/models are used by path, exactly as a user
gives their own model in `labeler.models`; PP-OCRv4 det comes from the registry (its wheel).
"""
from __future__ import annotations

from itertools import islice

import numpy as np
import pytest
from conftest import shared_file

from edge_semvc.config import Config, LabelerConfig
from edge_semvc.errors import ModelError
from edge_semvc.frame import Frame
from edge_semvc.labeler import Labeler
from edge_semvc.labeler.decoders import (
    blazeface_anchors,
    boxes_to_mb,
    decode_boxes,
    decode_yolox,
    pool_max_to_mb,
    segmentation_to_mb,
)
from edge_semvc.labeler.preprocess import InputTransform
from edge_semvc.labeler.runtime import LabelerError
from edge_semvc.sources import open_source


def yolox_entry(**extra) -> dict:
    return {"name": "yolox_nano_fixture", "path": str(shared_file("models", "yolox_nano.onnx")),
            "decoder": "yolox", "classes": "coco", "threshold": 0.35,
            "input": {"color": "BGR", "mean": 0, "std": 1, "resize": "letterbox", "pad": 114},
            **extra}


def deeplab_entry(**extra) -> dict:
    return {"name": "deeplab_fixture",
            "path": str(shared_file("models", "deeplabv3_257_mv_gpu.onnx")),
            "decoder": "probability-mask", "classes": "voc", "activation": "softmax",
            "input": {"color": "RGB", "mean": 127.5, "std": 127.5}, **extra}


def labeler(*entries, **cfg) -> Labeler:
    return Labeler(LabelerConfig(models=list(entries), interval=1, cpu_budget=0, **cfg), Config().cache_dir(),
                   log=lambda *_: None)


def text_labeler(**cfg) -> Labeler:
    # on every frame it labels (its registry interval is 4): these tests judge the decoder, and
    # frames 20 apart are not what the carry between runs is for
    try:
        return labeler({"name": "ppocr_v4_det", "interval": 1}, **cfg)
    except ModelError as e:  # first use downloads rapidocr-onnxruntime's wheel
        pytest.skip(f"cannot prepare ppocr_v4_det (offline? set EDGE_SEMVC_MIRROR): {e}")


def frames_at(path, indices) -> list[Frame]:
    src = open_source(str(path))
    try:
        got = {f.index: f for f in islice(src.frames(), max(indices) + 1) if f.index in indices}
    finally:
        src.close()
    return [got[i] for i in indices]


def coverage(lab: Labeler, frames) -> list[dict]:
    return [lab.label(f).coverage() for f in frames]


# --- unit checks ---------------------------------------------------------------------------------
def test_anchor_layouts():
    assert blazeface_anchors().shape == (896, 2)
    full = blazeface_anchors(192, (4,), 1)
    assert full.shape == (2304, 2)
    assert full[0].tolist() == pytest.approx([0.5 / 48, 0.5 / 48])
    assert full[-1].tolist() == pytest.approx([47.5 / 48, 47.5 / 48])


def test_yolox_grid_decoding():
    """One confident cell at stride 16 decodes to the box the formula gives, in input pixels."""
    raw = np.full((1, 52 * 52 + 26 * 26 + 13 * 13, 85), -20.0, np.float32)
    raw[..., 4:] = 0.0
    cell = 52 * 52 + 3 * 26 + 5  # stride 16, row 3, column 5
    raw[0, cell, :5] = [0.5, 0.25, np.log(2.0), np.log(4.0), 0.9]
    raw[0, cell, 5 + 2] = 1.0  # class 2 (car)
    boxes = decode_yolox(raw, (416, 416), score_threshold=0.3)
    assert boxes.shape == (1, 6)
    cx, cy, w, h = (5 + 0.5) * 16, (3 + 0.25) * 16, 2 * 16, 4 * 16
    assert boxes[0].tolist() == pytest.approx([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2,
                                               0.9, 2])


def test_decoded_boxes_nms_per_class():
    scores = np.array([[[0.1, 0.9], [0.2, 0.8], [0.9, 0.1]]], np.float32)
    boxes = np.array([[[0.1, 0.1, 0.3, 0.3], [0.11, 0.1, 0.3, 0.3], [0.5, 0.5, 0.6, 0.6]]],
                     np.float32)
    out = decode_boxes(scores, boxes, [1], 0.5)
    assert out[:, 4].tolist() == pytest.approx([0.9]) and out[0, 5] == 1


def test_tiny_box_keeps_its_macroblock():
    mask = boxes_to_mb(np.array([[0.50, 0.50, 0.51, 0.51, 0.8]], np.float32), 320, 160)
    assert (mask > 0).sum() == 1 and mask[5, 10] == pytest.approx(0.8)


def test_max_pooling_keeps_thin_lines():
    prob = np.zeros((90, 160), np.float32)  # a 320x180 frame's map at half resolution
    prob[40, 20:100] = 1.0  # a one-pixel text kernel
    assert segmentation_to_mb(prob, 320, 180).max() < 0.2
    pooled = pool_max_to_mb(prob, 320, 180)
    assert pooled.shape == (12, 20) and pooled.max() > 0.9
    assert set(np.nonzero(pooled > 0.5)[0]) == {5}  # row 80 of the frame: macroblock row 5


class _Shape:
    def __init__(self, shape):
        self.input_shape = shape


def test_input_transform_layouts_and_values():
    rgb = np.zeros((64, 128, 3), np.uint8)
    rgb[..., 0] = 255  # pure red
    frame = Frame.from_rgb(rgb, 0, 1, 0)
    t = InputTransform({"color": "BGR", "mean": 0, "std": 1, "resize": "letterbox", "pad": 114},
                       (1, 3, 64, 64))
    x, g = t(frame)
    assert t.layout == "NCHW" and x.shape == (1, 3, 64, 64)
    assert (g.x0, g.y0, g.cw, g.ch) == (0, 16, 64, 32)
    assert x[0, :, 0, 0].tolist() == [114, 114, 114]  # padding
    assert x[0, 2, 32, 32] > 200 and x[0, 0, 32, 32] < 60  # red is the last channel in BGR
    t = InputTransform({"mean": 127.5, "std": 127.5, "resize": "fit", "multiple": 32,
                        "size": [640, 352]}, (None, 3, None, None))
    size = lambda w, h: (t.geometry(w, h).in_w, t.geometry(w, h).in_h)  # noqa: E731
    assert size(300, 168) == (640, 352) and size(768, 576) == (480, 352)
    assert size(1920, 1080) == (640, 352)
    t = InputTransform({"mean": 0, "std": 255}, (1, 144, 256, 3))
    x, _ = t(frame)
    assert t.layout == "NHWC" and x.shape == (1, 144, 256, 3) and x.max() <= 1.0


def test_input_sizes_are_checked():
    with pytest.raises(LabelerError, match=r"m\.input\.size: \[320, 240\] \(the model's input "
                                           r"is fixed at 416x416\)"):
        InputTransform({"size": [320, 240]}, (1, 3, 416, 416), "m.input")
    with pytest.raises(LabelerError, match="m.input.size: the model's input .* dynamic"):
        InputTransform({}, ("n", 3, "h", "w"), "m.input")
    with pytest.raises(LabelerError, match="m.input.layout"):
        InputTransform({}, (1, 3, 3, 3), "m.input")


# --- real models on real frames ------------------------------------------------------------------
def test_yolox_finds_pedestrians_and_parked_vans_on_the_street(clip):
    lab = labeler(yolox_entry())
    assert lab.classes == ["person", "vehicle"]
    for cov in coverage(lab, frames_at(clip("street_pedestrians_vtest_768x576.avi"),
                                       [0, 50, 100, 149])):
        assert cov["person"] > 0.015 and cov["vehicle"] > 0.005


def test_yolox_finds_cars_on_the_road(clip):
    covs = coverage(labeler(yolox_entry()),
                    frames_at(clip("road_traffic_signs_1080p.h264"), [0, 25, 50]))
    assert all(c["vehicle"] > 0.01 for c in covs)


def test_yolox_on_the_overhead_parking_lot(clip):
    """Seen from above, YOLOX-nano finds the cars in a few frames only (220-232, 344) and takes
    the car of frame 75 for a cell phone: a model's `map` can fold that class into vehicle."""
    path = clip("overhead_parking_cars_768x432.mp4")
    frames = frames_at(path, [75, 224, 344])
    covs = coverage(labeler(yolox_entry()), frames)
    assert covs[0]["vehicle"] == 0 and covs[1]["vehicle"] > 0.03 and covs[2]["vehicle"] > 0.03
    lab = labeler(yolox_entry(map={"car": "vehicle", "cell phone": "vehicle"}))
    assert lab.label(frames[0]).coverage()["vehicle"] > 0.1


def test_deeplab_finds_person_and_car(clip):
    lab = labeler(deeplab_entry())
    assert lab.classes == ["vehicle", "person"]  # VOC order: bicycle, bus, car, ... person
    for cov in coverage(lab, frames_at(clip("foreman_cif.h264"), [0, 30])):
        assert cov["person"] > 0.1
    for cov in coverage(lab, frames_at(clip("overhead_parking_cars_768x432.mp4"), [205, 215])):
        assert cov["vehicle"] > 0.05


def test_db_text_on_the_calendar_and_the_logo(clip):
    lab = text_labeler()
    for f in frames_at(clip("mobile_calendar_text_300x168.h264"), [0, 20, 40]):
        lm = lab.label(f)
        assert lm.coverage()["text"] > 0.02
        cols = np.nonzero((lm.labels == 1).any(axis=0))[0]
        assert cols.min() >= lm.labels.shape[1] // 3  # the calendar, not the wallpaper
    (f,) = frames_at(clip("foreman_cif.h264"), [0])
    rows, cols = np.nonzero(lab.label(f).labels == 1)
    assert len(rows) and rows.max() < 6 and cols.max() < 8  # the SIEMENS logo, top left


@pytest.mark.parametrize("entry", ["face_detection_full_range", "ultraface"])
def test_other_face_detectors_on_foreman(clip, entry):
    if entry == "ultraface":  # the publisher's file, checked against the registry's sha256
        entry = {"name": "ultraface_rfb_320",
                 "path": str(shared_file("models", "version-RFB-320.onnx")),
                 "sha256": "34cd7e60aeff28744c657de7a3dc64e872d506741de66987f3426f2b79f88017",
                 "decoder": "boxes", "classes": ["background", "face"], "box_scale": 1.4,
                 "input": {"mean": 127, "std": 128}}
    try:
        lab = labeler(entry)
    except ModelError as e:
        pytest.skip(f"cannot prepare {entry}: {e}")
    covs = coverage(lab, frames_at(clip("foreman_cif.h264"), [0, 30, 60]))
    assert np.mean([c["face"] for c in covs]) > 0.05

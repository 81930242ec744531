"""NanoDet-g and the default labeler on real outdoor frames, against YOLOX-nano (an independent
COCO detector, ../shared/models/yolox_nano.onnx, threshold 0.35) as pseudo ground truth; and the
face close-ups keep the maps they had before NanoDet joined the default models.

`python -m edge_semvc.bench.agreement` measures the same on whole clips (every 5th frame); these
tests take a few frames each. Macroblocks are compared the way the bench does: YOLOX's boxes
rasterised by `boxes_to_mb`, the labeler's person = person or face macroblocks."""
from dataclasses import replace

import numpy as np
import pytest
from conftest import shared_file

from edge_semvc.bench.agreement import labeler_masks, reference
from edge_semvc.bench.detector import YoloxDetector
from edge_semvc.config import Config
from edge_semvc.labeler import Labeler
from edge_semvc.labeler.decoders import box_iou, decode_nanodet
from edge_semvc.labeler.preprocess import Geometry
from edge_semvc.sources import open_source

STREET = "street_pedestrians_vtest_768x576.avi"
ROAD = "road_traffic_signs_1080p.h264"
PARKING = "overhead_parking_cars_768x432.mp4"
BIKES = "bikes_street_scene_cuts_640x272.mp4"
# Every 30th frame of the street (3-10 people), every 10th of the road (2-8 cars, no people).
# On the parking lot, seen from above, YOLOX finds a car in 19 of 377 frames; NanoDet-g finds
# it only where the car shows its front or back (101, 230, 233, 344: scores 0.48-0.61 against
# its 0.4 threshold). The red car straight below the camera (frames 214-227), which YOLOX calls a
# car at 0.5-0.8, NanoDet calls a cell phone: a known gap (see the bench), not asserted here.
# Bikes: a cyclist close by (frames 30-40, boxes ~0.36 of the frame) and walking legs (200,
# 0.41): large boxes that `max_box_area` must keep (BlazeFace sees no face there).
FRAMES = {STREET: [0, 30, 60, 90, 120], ROAD: [0, 10, 20, 30, 40, 50],
          PARKING: [101, 230, 233, 344], BIKES: [30, 35, 40, 200]}


def frames_at(path, indices):
    src = open_source(str(path))
    out = []
    try:
        for i, frame in enumerate(src.frames()):
            if i in indices:
                out.append(frame)
            if i >= max(indices):
                break
    finally:
        src.close()
    return out


def make_labeler(models=None) -> Labeler:
    """Every model on every frame it is given, in line: deterministic."""
    cfg = Config()
    lab = replace(cfg.labeler, cpu_budget=0, **({"models": models} if models else {}))
    return Labeler(lab, cfg.cache_dir(), log=lambda *_: None)


@pytest.fixture(scope="module")
def yolox():
    return YoloxDetector(shared_file("models", "yolox_nano.onnx"), 0.35)


@pytest.fixture(scope="module")
def outdoor(yolox, nanodet_tfjs):
    """Per clip: (YOLOX's macroblocks, the default labeler's macroblocks) on each frame of FRAMES,
    plus the share of macroblocks labelled person or face."""
    out = {}
    for name, indices in FRAMES.items():
        labeler = make_labeler()
        rows = []
        for frame in frames_at(shared_file("data", "video", name), indices):
            _, ref = reference(yolox, frame)
            rows.append((ref, labeler_masks(labeler.label(frame))))
        labeler.close()
        out[name] = rows
    return out


def pooled_recall(rows, group: str) -> float:
    hit = sum(int((got[group] & ref[group]).sum()) for ref, got in rows)
    return hit / max(1, sum(int(ref[group].sum()) for ref, _ in rows))


def test_golden_nanodet_head_decodes_to_the_people_yolox_finds(yolox):
    """The reference NanoDet-g outputs for frame 60 of the street clip (416x416, letterboxed with
    the picture at y 52..364), decoded at 0.4: 9 boxes, and every person YOLOX is sure of
    (>= 0.5) is one of them at IoU >= 0.5 (YOLOX's sixth, a 17x33-pixel figure at 0.43, is not:
    NanoDet's smallest finds are larger); every car or truck is one YOLOX sees too."""
    golden = np.load(shared_file("models", "golden", "nanodet_g_416.outputs.npz"))
    scores = [golden[k] for k in ("Identity", "Identity_1", "Identity_2")]
    dists = [golden[k] for k in ("Identity_3", "Identity_4", "Identity_5")]
    boxes = decode_nanodet(scores, dists, (416, 416), 0.4)
    classes, counts = np.unique(boxes[:, 5].astype(int), return_counts=True)
    assert dict(zip(classes.tolist(), counts.tolist())) == {0: 6, 2: 2, 7: 1}  # person, car, truck
    nd = Geometry(416, 416, 0, 52, 416, 312).boxes_to_frame(boxes)  # frame fractions
    (frame,) = frames_at(shared_file("data", "video", STREET), [60])
    ref, _ = reference(yolox, frame)
    sure = ref["person"][ref["person"][:, 4] >= 0.5]
    assert len(sure) >= 4
    assert (box_iou(sure, nd[nd[:, 5] == 0]).max(axis=1) >= 0.5).all()
    vehicles = nd[np.isin(nd[:, 5], [2, 7])]
    assert (box_iou(vehicles, ref["vehicle"]).max(axis=1) >= 0.5).all()


def test_nanodet_at_its_default_size_labels_the_people_on_frame_60(yolox, nanodet_tfjs):
    """The whole adapter (conversion at the registry's size, letterbox, decoding, rasterising) on
    the same frame: NanoDet-g alone covers >= 0.8 of YOLOX's person and vehicle macroblocks
    (measured 0.87 and 1.0) and labels little that YOLOX does not (precision >= 0.8)."""
    labeler = make_labeler(["nanodet_g"])
    (frame,) = frames_at(shared_file("data", "video", STREET), [60])
    _, ref = reference(yolox, frame)
    adapter = labeler.models[0][1]
    planes = adapter(frame)
    for group in ("person", "vehicle"):
        got = planes[adapter.classes.index(group)] > adapter.threshold
        assert ref[group].sum() >= 18  # YOLOX: 6 people (53 MBs), 3 vehicles (18 MBs)
        hit = (got & ref[group]).sum()
        assert hit / ref[group].sum() >= 0.8, group
        assert hit / got.sum() >= 0.8, group


def test_default_labeler_person_recall_against_yolox(outdoor):
    """The acceptance criterion: pooled over the street, road, parking and bikes frames, the default
    labeler labels >= 0.8 of the macroblocks YOLOX's people cover (measured 0.87 here, 0.85 on
    every 5th frame of the whole street clip: NanoDet misses people cut by the frame's edge and
    the smallest figures). Road and parking have nobody (YOLOX agrees): there the labeler
    labels no person (the selfie segmenter's walls and trees stay gated by the face detector)."""
    rows = [r for name in FRAMES for r in outdoor[name]]
    assert sum(int(ref["person"].sum()) for ref, _ in rows) > 200
    assert pooled_recall(rows, "person") >= 0.8
    assert pooled_recall(outdoor[BIKES], "person") >= 0.8  # the close cyclist is kept
    for name in (ROAD, PARKING):
        assert not any(ref["person"].any() for ref, _ in outdoor[name])
        labelled = np.mean([got["person"].mean() for _, got in outdoor[name]])
        assert labelled <= 0.01, name


@pytest.mark.parametrize("name", [ROAD, PARKING, STREET])
def test_default_labeler_labels_the_vehicles_yolox_sees(outdoor, name):
    """Vehicles (car, bus, truck, motorcycle, bicycle) where YOLOX sees them: >= 0.7 of its
    vehicle macroblocks, pooled (measured: road 0.93, parking 1.0, street 1.0). The margin is
    for box extents: NanoDet's and YOLOX's boxes on the same car differ by up to a macroblock row
    or column (road, per frame 0.87-1.0); losing one whole car of the parking frames fails."""
    rows = outdoor[name]
    assert all(ref["vehicle"].any() for ref, _ in rows)
    assert pooled_recall(rows, "vehicle") >= 0.7


@pytest.mark.parametrize("name", ["foreman_cif.h264", "carphone_qcif_pristine.mp4"])
def test_face_close_ups_keep_their_maps(clip, nanodet_tfjs, name):
    """On the face close-ups NanoDet-g's person box covers most of the frame (score 0.5-0.85);
    its `max_box_area` leaves such close-ups to the segmenter and the face detector. The face
    macroblocks are those of the previous default (selfie segmentation + BlazeFace), the face is
    found in most frames, and NanoDet adds almost nothing (no vehicle: carphone is in a car)."""
    frames = frames_at(clip(name), list(range(0, 30, 5)))
    new = make_labeler()
    old = make_labeler(["selfie_segmentation_landscape", "face_detection_short_range"])
    found, extra = 0, []
    for frame in frames:
        a, b = new.label(frame), old.label(frame)
        face_a = a.labels == a.classes.index("face")
        np.testing.assert_array_equal(face_a, b.labels == b.classes.index("face"))
        found += bool(face_a.any())
        assert a.coverage().get("vehicle", 0.0) <= 0.02
        extra.append((a.labels > 0).mean() - (b.labels > 0).mean())
    assert found >= len(frames) - 1
    assert np.mean(extra) <= 0.05

"""The labeler: the default models on real frames, fusion of several models, per-model intervals
and input sizes, and the configuration of `labeler.models`."""
from itertools import islice

import numpy as np
import pytest
from conftest import shared_file

from edge_semvc.config import Config, ConfigError, LabelerConfig, load_config
from edge_semvc.errors import ModelError
from edge_semvc.labeler import Labeler, fuse
from edge_semvc.labeler.decoders import blazeface_anchors, boxes_to_mb, nms
from edge_semvc.labeler.registry import describe
from edge_semvc.labeler.runtime import LabelerError
from edge_semvc.qp.qpmap import importance_vector
from edge_semvc.sources import open_source


@pytest.fixture(scope="module")
def labeler():
    """The default models, every one on every frame (deterministic: no budget)."""
    cfg = Config()
    cfg.labeler.cpu_budget = 0
    return Labeler(cfg.labeler, cfg.cache_dir(), log=lambda *_: None)


def frames(uri, n):
    src = open_source(str(uri))
    try:
        return list(islice(src.frames(), n))
    finally:
        src.close()


def yolox_entry(**extra) -> dict:
    return {"name": "yolox_nano_fixture", "path": str(shared_file("models", "yolox_nano.onnx")),
            "decoder": "yolox", "classes": "coco", "threshold": 0.35,
            "input": {"color": "BGR", "mean": 0, "std": 1, "resize": "letterbox", "pad": 114},
            **extra}


def test_person_and_face_found_on_the_demo_clip(labeler):
    for frame in frames("demo://astronaut", 90)[::30]:
        lm = labeler.label(frame)
        assert lm.classes == ["background", "person", "vehicle", "face"]
        assert lm.labels.shape == (frame.mb_h, frame.mb_w) == lm.probs.shape[1:]
        cov = lm.coverage()
        assert cov["person"] > 0.15 and cov["face"] > 0.01
        # The face sits above the shoulders: its rows are above the person's lowest rows.
        face_rows = np.nonzero((lm.labels == 3).any(axis=1))[0]
        person_rows = np.nonzero((lm.labels == 1).any(axis=1))[0]
        assert face_rows.mean() < person_rows.max()


@pytest.mark.parametrize("name", ["foreman_cif.h264", "carphone_qcif_pristine.mp4"])
def test_face_and_person_on_real_clips(labeler, clip, name):
    covs = [labeler.label(f).coverage() for f in frames(clip(name), 30)[::5]]
    assert np.mean([c["face"] for c in covs]) > 0.03
    # Close-ups: the grown face box takes most of the person (face comes first in the priority).
    assert np.mean([c["person"] + c["face"] for c in covs]) > 0.15


def test_interval_holds_the_last_map():
    cfg = Config()
    lab = Labeler(LabelerConfig(interval=3, reuse="hold", cpu_budget=0), cfg.cache_dir(), log=lambda *_: None)
    fs = frames("demo://astronaut", 4)
    maps = [lab.label(f) for f in fs]
    same = [(m.labels == maps[0].labels).all() and (m.probs == maps[0].probs).all()
            for m in maps[1:]]
    assert same[:2] == [True, True] and lab.runs == [2, 2, 2]  # frames 0 and 3


def test_interval_carries_labels_with_the_motion():
    cfg = Config()
    lab = Labeler(LabelerConfig(interval=5, reuse="motion", cpu_budget=0), cfg.cache_dir(),
                  log=lambda *_: None)
    fs = frames("demo://astronaut", 5)
    every = Labeler(LabelerConfig(interval=1, cpu_budget=0), cfg.cache_dir(), log=lambda *_: None)
    carried = [lab.label(f).labels > 0 for f in fs]
    truth = [every.label(f).labels > 0 for f in fs]
    # Frames 1-4 reuse frame 0's labels, moved with the camera: closer to the truth than holding.
    held = carried[0]
    for c, t in zip(carried[1:], truth[1:]):
        iou = (c & t).sum() / (c | t).sum()
        iou_held = (held & t).sum() / (held | t).sum()
        assert iou >= iou_held - 0.01 and iou > 0.8
    assert not all((c == carried[0]).all() for c in carried[1:])


def test_unknown_model_is_refused():
    with pytest.raises(ConfigError, match=r"labeler\.models\[0\]: unknown model 'yolo' "
                                          r"\(registry: nanodet_g, selfie_segmentation_landscape"):
        Labeler(LabelerConfig(models=["yolo"]), Config().cache_dir())


def test_blazeface_anchor_layout():
    a = blazeface_anchors()
    assert a.shape == (896, 2)
    assert a[0].tolist() == pytest.approx([0.5 / 16, 0.5 / 16])
    assert a[1].tolist() == a[0].tolist()  # two anchors per 16x16 cell
    assert a[512].tolist() == pytest.approx([0.5 / 8, 0.5 / 8])


def test_nms_and_rasterising():
    boxes = np.array([[0.1, 0.1, 0.5, 0.5, 0.9], [0.12, 0.1, 0.5, 0.52, 0.8],
                      [0.6, 0.6, 0.9, 0.9, 0.7]], np.float32)
    kept = nms(boxes, 0.3)
    assert kept[:, 4].tolist() == pytest.approx([0.9, 0.7])
    mask = boxes_to_mb(kept, 160, 160)  # 10x10 macroblocks
    assert mask[3, 3] == pytest.approx(0.9) and mask[7, 7] == pytest.approx(0.7)
    assert mask[0, 9] == 0.0


# --- the fusion rule -----------------------------------------------------------------------------
def test_fusion_rule():
    z = np.zeros((4, 4), np.float32)

    def plane(**cells):
        p = z.copy()
        for (y, x), v in ((tuple(map(int, k[1:].split("_"))), v) for k, v in cells.items()):
            p[y, x] = v
        return p

    seg = (["person", "vehicle"], np.stack([plane(c0_0=0.95, c0_1=0.95, c1_1=0.9, c3_3=0.6),
                                            plane(c0_1=0.99, c2_2=0.8, c2_3=0.8)]), 0.7)
    face = (["face"], np.stack([plane(c0_0=0.75, c3_3=0.65)]), 0.7)
    text = (["text"], np.stack([plane(c2_2=0.55)]), 0.5)  # its own threshold
    det = (["person", "dog"], np.stack([plane(c3_3=0.8, c1_0=0.3), plane(c1_0=0.9, c1_1=0.95)]),
           0.7)
    lm = fuse([seg, face, text, det], ["face", "text", "person", "vehicle"], ["a", "b", "c", "d"])
    assert lm.classes == ["background", "person", "vehicle", "face", "text", "dog"]
    name = {i: c for i, c in enumerate(lm.classes)}
    got = {(y, x): name[int(lm.labels[y, x])] for y in range(4) for x in range(4)
           if lm.labels[y, x]}
    assert got == {
        (0, 0): "face",     # face (0.75) over person (0.95): priority, not probability
        (0, 1): "person",   # person over vehicle (0.99)
        (1, 1): "person",   # a listed class beats an unlisted one (dog 0.95)
        (1, 0): "dog",      # unlisted classes still label where nothing listed is above
        (2, 2): "text",     # text (0.55 > its threshold 0.5) over vehicle
        (2, 3): "vehicle",
        (3, 3): "person",   # person from the detector (0.8) although the segmenter says 0.6
    }
    assert lm.probs[0, 3, 3] == pytest.approx(0.8)  # the same class combines by maximum
    assert lm.models == ["a", "b", "c", "d"]


def test_several_models_fused_on_real_frames(clip):
    """Person segmentation + face + text + a user's detector in one LabelMap (foreman: a face
    close-up with the SIEMENS logo), the text model and the detector on their own intervals."""
    cfg = LabelerConfig(models=["selfie_segmentation_landscape", "face_detection_short_range",
                                {"name": "ppocr_v4_det", "interval": 2},
                                yolox_entry(interval=3)], interval=1, cpu_budget=0)
    try:
        lab = Labeler(cfg, Config().cache_dir(), log=lambda *_: None)
    except ModelError as e:
        pytest.skip(f"cannot prepare a model (offline?): {e}")
    assert lab.classes == ["person", "face", "text", "vehicle"]
    assert [m.interval for _, m in lab.models] == [1, 1, 2, 3]
    importance_vector(["background", *lab.classes], Config().qp)  # every class has an entry
    calls = {name: [] for name in lab.model_names}
    for name, m in lab.models:  # count the inferences of each model
        run = m.rt.run
        m.rt.run = lambda x, run=run, name=name: calls[name].append(1) or run(x)
    fs = frames(clip("foreman_cif.h264"), 7)
    maps = [lab.label(f) for f in fs]
    assert [len(calls[n]) for n in lab.model_names] == [7, 7, 4, 3]
    lm = maps[0]
    cov = lm.coverage()
    assert cov["face"] > 0.1 and cov["text"] > 0.003 and cov["person"] > 0.005
    face = lm.classes.index("face") - 1
    person = lm.classes.index("person") - 1
    both = (lm.probs[face] > 0.7) & (lm.probs[person] > 0.7)
    assert both.any() and (lm.labels[both] == face + 1).all()  # face wins over person


def test_per_model_input_size(clip):
    entry = {"name": "ppocr_v4_det", "input": {"size": [512, 288]}}
    try:
        lab = Labeler(LabelerConfig(models=[entry]), Config().cache_dir(), log=lambda *_: None)
    except ModelError as e:
        pytest.skip(f"cannot prepare ppocr_v4_det (offline?): {e}")
    g = lab.models[0][1].input.geometry(1920, 1080)
    assert (g.in_w, g.in_h) == (512, 288)
    with pytest.raises(LabelerError, match=r"labeler\.models\[0\]\.input\.size: \[512, 288\] "
                                           r"\(the model's input is fixed at 416x416\)"):
        Labeler(LabelerConfig(models=[yolox_entry(input={"size": [512, 288]})]),
                Config().cache_dir())


# --- configuration of labeler.models -------------------------------------------------------------
def test_model_entries_in_a_config_file(tmp_path):
    path = tmp_path / "c.yaml"
    yolox = shared_file("models", "yolox_nano.onnx")
    path.write_text(f"""
labeler:
  priority: [face, text, person, vehicle]
  models:
    - selfie_segmentation_landscape
    - {{name: ppocr_v4_det, interval: 4, input: {{size: [512, 288]}}}}
    - name: traffic
      path: {yolox}
      decoder: yolox
      classes: coco
      map: {{person: person, car: vehicle, bus: vehicle, truck: vehicle}}
      input: {{color: BGR, mean: 0, std: 1, resize: letterbox, pad: 114}}
      threshold: 0.4
""")
    cfg = load_config(path)
    descs = [describe(e, f"labeler.models[{i}]") for i, e in enumerate(cfg.labeler.models)]
    assert [d["name"] for d in descs] == ["selfie_segmentation_landscape", "ppocr_v4_det",
                                          "traffic"]
    assert descs[1]["interval"] == 4 and descs[1]["input"]["size"] == [512, 288]
    assert descs[1]["input"]["resize"] == "fit"  # the registry's fields kept
    assert descs[2]["products"] == ["person", "vehicle"] and descs[2]["threshold"] == 0.4
    assert descs[2]["targets"] == [[0], [2, 5, 7]]
    assert load_config(path).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("entry, message", [
    ({"path": "/nonexistent/m.onnx", "decoder": "yolox", "classes": "coco"},
     r"labeler\.models\[0\]\.path: /nonexistent/m\.onnx does not exist"),
    ({"path": "m.bin", "decoder": "yolox", "classes": "coco"},
     r"invalid value for labeler\.models\[0\]\.path: 'm\.bin' \(expected an \.onnx or \.tflite"),
    ({"path": "YOLOX", "decoder": "yolo", "classes": "coco"},
     r"invalid value for labeler\.models\[0\]\.decoder: 'yolo' \(expected probability-mask"),
    ({"path": "YOLOX", "decoder": "yolox"}, r"labeler\.models\[0\]: a model given by path "
                                            r"needs `classes`"),
    ({"path": "YOLOX", "decoder": "yolox", "classes": "imagenet"},
     r"invalid value for labeler\.models\[0\]\.classes: 'imagenet'"),
    ({"path": "YOLOX", "decoder": "yolox", "classes": "coco", "map": {"cars": "vehicle"}},
     r"labeler\.models\[0\]\.map: 'cars' is not one of the model's classes"),
    ({"path": "YOLOX", "decoder": "yolox", "classes": ["a", "b"]},
     r"labeler\.models\[0\]: no class of the model maps to a product class"),
    ({"path": "YOLOX", "decoder": "yolox", "classes": "coco", "anchors": {}},
     r"unknown config key 'labeler\.models\[0\]\.anchors'"),
    ({"path": "YOLOX", "decoder": "yolox", "classes": "coco", "input": {"colour": "BGR"}},
     r"unknown config key 'labeler\.models\[0\]\.input\.colour'"),
    ({"path": "YOLOX", "decoder": "yolox", "classes": "coco", "input": {"std": 0}},
     r"invalid value for labeler\.models\[0\]\.input\.std: 0"),
    ({"path": "YOLOX", "decoder": "yolox", "classes": "coco", "threshold": 1.5},
     r"invalid value for labeler\.models\[0\]\.threshold: 1\.5"),
    ({"name": "ppocr_v4_det", "decoder": "yolox"},
     r"unknown config key 'labeler\.models\[0\]\.decoder' \(a registry model takes"),
    ({"name": "ppocr_v4_det", "interval": 0},
     r"invalid value for labeler\.models\[0\]\.interval: 0"),
    ({"name": "nope"}, r"labeler\.models\[0\]: unknown model 'nope'"),
    ({"interval": 2}, r"labeler\.models\[0\] needs `name` \(a registry model\) or `path`"),
    (7, r"invalid value for labeler\.models\[0\]: 7"),
])
def test_bad_model_entries_name_the_key(tmp_path, entry, message):
    import yaml

    if isinstance(entry, dict) and entry.get("path") == "YOLOX":
        entry = {**entry, "path": str(shared_file("models", "yolox_nano.onnx"))}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"labeler": {"models": [entry]}}))
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_priority_is_checked():
    with pytest.raises(ConfigError, match=r"labeler\.priority"):
        load_config(None, ["labeler.priority=face,face"])


def test_selfie_person_needs_a_face_so_scenery_is_not_labelled(clip):
    """The selfie model calls a red tree a person on the road clip; its registry entry
    `requires: face` drops regions without a face, and keeps the people of close-ups."""
    cfg = Config()
    plain = Labeler(LabelerConfig(models=[{"name": "selfie_segmentation_landscape",
                                           "requires": None}, "face_detection_short_range"],
                                  interval=1), cfg.cache_dir(), log=lambda *_: None)
    gated = Labeler(LabelerConfig(interval=1, cpu_budget=0), cfg.cache_dir(), log=lambda *_: None)
    road = frames(clip("road_traffic_signs_1080p.h264"), 10)[-1]
    assert plain.label(road).coverage()["person"] > 0.05
    assert gated.label(road).coverage()["person"] == 0.0
    for frame in frames(clip("carphone_qcif_pristine.mp4"), 3):
        assert gated.label(frame).coverage()["person"] == plain.label(frame).coverage()["person"]
        assert gated.label(frame).coverage()["person"] > 0.1


def test_a_gated_mask_is_not_carried_where_its_required_class_is_nowhere(clip, monkeypatch):
    """Carrying the selfie mask between its runs costs ~0.1 ms a frame at 720p; where no face
    is found the gate drops all it labels, so it is not moved at all (the labels the same)."""
    from edge_semvc.labeler import reuse
    moved = []
    real = reuse._sample
    monkeypatch.setattr(reuse, "_sample", lambda *a: moved.append(1) or real(*a))
    cfg = Config()
    gated = Labeler(LabelerConfig(interval=3, cpu_budget=0), cfg.cache_dir(), log=lambda *_: None)
    for frame in frames(clip("road_traffic_signs_1080p.h264"), 7):
        assert gated.label(frame).coverage()["person"] == 0.0
    assert moved == [] and gated.runs[1] == 3  # the mask was there, never carried
    for frame in frames(clip("carphone_qcif_pristine.mp4"), 4):
        assert gated.label(frame).coverage()["person"] > 0.1
    assert len(moved) == 2  # frames 1 and 2 of the close-up: a face, the mask carried


def test_requires_without_a_model_for_that_class_warns(caplog):
    lab = Labeler(LabelerConfig(models=["selfie_segmentation_landscape"]), Config().cache_dir(),
                  log=lambda *_: None)
    assert "requires 'face', which no model here labels" in caplog.text
    assert lab.models[0][1].requires is None

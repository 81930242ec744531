"""The labeler with the real default models on real frames."""
from itertools import islice

import numpy as np
import pytest

from edge_semvc.config import Config, LabelerConfig
from edge_semvc.labeler import Labeler
from edge_semvc.labeler.decoders import blazeface_anchors, boxes_to_mb, nms
from edge_semvc.labeler.runtime import LabelerError
from edge_semvc.sources import open_source


@pytest.fixture(scope="module")
def labeler():
    cfg = Config()
    return Labeler(cfg.labeler, cfg.cache_dir(), log=lambda *_: None)


def frames(uri, n):
    src = open_source(str(uri))
    try:
        return list(islice(src.frames(), n))
    finally:
        src.close()


def test_person_and_face_found_on_the_demo_clip(labeler):
    for frame in frames("demo://astronaut", 90)[::30]:
        lm = labeler.label(frame)
        assert lm.classes == ["background", "person", "face"]
        assert lm.labels.shape == (frame.mb_h, frame.mb_w) == lm.probs.shape[1:]
        cov = lm.coverage()
        assert cov["person"] > 0.15 and cov["face"] > 0.01
        # The face sits above the shoulders: its rows are above the person's lowest rows.
        face_rows = np.nonzero((lm.labels == 2).any(axis=1))[0]
        person_rows = np.nonzero((lm.labels == 1).any(axis=1))[0]
        assert face_rows.mean() < person_rows.max()


@pytest.mark.parametrize("name", ["foreman_cif.h264", "carphone_qcif_pristine.mp4"])
def test_face_and_person_on_real_clips(labeler, clip, name):
    covs = [labeler.label(f).coverage() for f in frames(clip(name), 30)[::5]]
    assert np.mean([c["face"] for c in covs]) > 0.03
    assert np.mean([c["person"] for c in covs]) > 0.1


def test_interval_reuses_the_last_map():
    cfg = Config()
    lab = Labeler(LabelerConfig(interval=3), cfg.cache_dir(), log=lambda *_: None)
    fs = frames("demo://astronaut", 4)
    maps = [lab.label(f) for f in fs]
    assert maps[1] is maps[0] and maps[2] is maps[0] and maps[3] is not maps[0]


def test_unknown_model_is_refused():
    with pytest.raises(LabelerError, match="no labeler adapter for model 'yolo'"):
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

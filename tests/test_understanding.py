"""The understanding step (understanding.py): one scene-cut decision per frame, read by the
labeler, the storage profile, the scene extension and the statistics; the plain run's null
labeler; the statistics as values."""
import numpy as np
import pytest
from conftest import shared_file

from edge_semvc.config import load_config
from edge_semvc.frame import Frame
from edge_semvc.pipeline import Live, RunSnapshot, RunStats, run_encode
from edge_semvc.sources import open_source
from edge_semvc.understanding import CudaQpMapper, NullLabeler

BIKES_CUTS = [30, 76]  # the clip's first two cuts (README of the shared clips)


def test_one_cut_decision_is_read_by_the_labeler_the_storage_profile_and_the_statistics(
        tmp_path):
    clip = shared_file("data", "video", "bikes_street_scene_cuts_640x272.mp4")
    cfg = load_config(overrides=["labeler.cpu_budget=0", "labeler.interval=50",
                                 "encoder.profile=storage", "scene.enabled=true"])
    cut_frames = []
    stats = RunStats()

    def on_frame(frame, labels, qp):
        if stats.scene_cuts > len(cut_frames):
            cut_frames.append(frame.index)

    result = run_encode(open_source(str(clip)), str(tmp_path / "out.mp4"), cfg, max_frames=80,
                        on_frame=on_frame, live=Live(stats=stats))
    assert cut_frames == BIKES_CUTS and result["scene_cuts"] == 2
    assert result["storage"]["idr_reasons"]["scene_cut"] == 2
    idrs = [i["frame"] for i in result["storage"]["idrs"] if i["reason"] == "scene_cut"]
    assert idrs == BIKES_CUTS
    # every model: frames 0 and 50 by its interval, 30 and 76 by the cuts
    assert {name: s["runs"] for name, s in result["labeler"].items()} == \
        {name: 4 for name in result["models"]}
    snap = stats.snapshot()
    assert isinstance(snap, RunSnapshot) and snap.scene_cuts == 2 and snap.frames == 80
    assert snap.storage["idr_reasons"]["scene_cut"] == 2 and set(snap.labeler) == \
        set(result["models"])
    assert sum(snap.label_counts) == 80 * 17 * 40  # every macroblock of every frame, once
    with pytest.raises(AttributeError):
        snap.frames = 0  # values: frozen


def test_the_null_labeler_labels_nothing():
    frame = Frame(np.zeros((64, 96), np.uint8), np.zeros((32, 48), np.uint8),
                  np.zeros((32, 48), np.uint8), 0, None, 0)
    labels = NullLabeler().label(frame, cut=True)
    assert labels.shape == (4, 6) and not labels.labels.any()
    assert NullLabeler().stats() == {} and NullLabeler().classes == []


def test_a_plain_run_reports_no_labeler(tmp_path):
    cfg = load_config(overrides=["encoder.threads=1"])
    result = run_encode(open_source("demo://astronaut"), str(tmp_path / "out.mp4"), cfg,
                        semantic=False, max_frames=5)
    assert result["semantic"] is False and result["models"] == [] and result["labeler"] == {}
    assert result["frames_with_map"] == 0 and result["frames"] == 5


def test_the_cuda_map_is_the_second_implementation():
    """CudaQpMapper imports its GPU code only when made; here it says why it cannot run."""
    from edge_semvc.qp.cuda import unavailable_reason

    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"no CUDA map here: {reason}")
    mapper = CudaQpMapper()
    assert mapper.describe()

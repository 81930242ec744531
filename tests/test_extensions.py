"""The method's extensions wired into the pipeline (extensions.py): each switched on by its
config section changes the encoded run's QP map the way the method says, on real clips, with
the real labeler and encoder. The analysers and formulas have their own tests
(test_attention.py, test_emotion.py, test_scene.py, test_fusion.py)."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import VIDEO

from edge_semvc.config import load_config
from edge_semvc.pipeline import run_encode
from edge_semvc.sources import open_source
from edge_semvc.tools.models import prepare_config


def mean_offset(clip: str, cls: str, tmp_path, *overrides: str, frames: int = 60) -> float:
    """Mean QP offset over the macroblocks labelled `cls`, over the first `frames` frames."""
    path = VIDEO / clip
    if not path.exists():
        pytest.skip(f"{path} is missing (../shared beside the project holds the clips)")
    cfg = load_config(None, ["labeler.cpu_budget=0", *overrides])  # deterministic labels
    prepare_config(cfg, cfg.cache_dir(), log=lambda *_: None)
    total, count = 0.0, 0

    def on_frame(frame, labels, qp):
        nonlocal total, count
        names = labels.classes
        if cls in names:
            mask = labels.labels == names.index(cls)
            total += float(qp.offsets[mask].sum())
            count += int(mask.sum())

    src = open_source(str(path))
    try:
        run_encode(src, str(tmp_path / "out.mp4"), cfg, max_frames=frames, on_frame=on_frame)
    finally:
        src.close()
    assert count > 0, f"no {cls} macroblocks in {clip}"
    return total / count


def test_emotion_gives_expressive_faces_more_bits(tmp_path):
    off = mean_offset("carphone_qcif_pristine.mp4", "face", tmp_path)
    on = mean_offset("carphone_qcif_pristine.mp4", "face", tmp_path, "emotion.enabled=true")
    assert on < off - 0.2, (off, on)


def test_attention_gives_walkers_more_bits_and_masking_does_not(tmp_path):
    clip = "street_pedestrians_vtest_768x576.avi"
    core = mean_offset(clip, "person", tmp_path)
    attention = mean_offset(clip, "person", tmp_path, "attention.enabled=true")
    masking = mean_offset(clip, "person", tmp_path, "attention.enabled=true",
                          "attention.policy=masking")
    assert attention < core - 0.2, (core, attention)
    assert masking == pytest.approx(core, abs=1e-6)  # the core method's own reflex


def test_a_description_gives_the_classes_it_names_more_bits(tmp_path):
    clip = "road_traffic_signs_1080p.h264"
    core = mean_offset(clip, "vehicle", tmp_path, frames=20)
    watched = mean_offset(clip, "vehicle", tmp_path, "fusion.enabled=true",
                          "fusion.description=watch the vehicles at the gate", frames=20)
    assert watched < core - 0.5, (core, watched)
    assert np.isfinite(watched)

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


def test_a_scene_cut_gets_an_idr_and_a_lower_q(tmp_path):
    """The bikes clip's cuts (frames 30, 76, 137, 187, 242; the first 150 frames hold three):
    with `scene` on, the encoder is asked for an IDR there, and the map of a cut frame is more
    generous than without."""
    import av

    path = VIDEO / "bikes_street_scene_cuts_640x272.mp4"
    if not path.exists():
        pytest.skip(f"{path} is missing (../shared beside the project holds the clips)")
    keyframes, offsets = {}, {}
    for on in (False, True):
        cfg = load_config(None, ["labeler.cpu_budget=0", f"scene.enabled={str(on).lower()}",
                                 "encoder.keyint=250"])
        out = tmp_path / f"scene_{on}.mp4"
        maps = offsets.setdefault(on, {})
        src = open_source(str(path))
        try:
            run_encode(src, str(out), cfg, max_frames=150,
                       on_frame=lambda f, labels, qp, maps=maps:
                       maps.__setitem__(f.index, float(qp.offsets.min())))
        finally:
            src.close()
        with av.open(str(out)) as c:
            keyframes[on] = [i for i, f in enumerate(c.decode(video=0)) if f.key_frame]
    cuts = [30, 76, 137]
    found = [k for k in keyframes[True] if k]
    assert all(any(abs(k - c) <= 1 for k in found) for c in cuts), keyframes
    assert len(found) <= len(cuts) + 1, keyframes  # no IDR storm
    # where a cut frame got a map, S = 1 lowered Q there: its most generous offset goes lower
    mapped = [c for c in cuts if c in offsets[True] and offsets[False][c] < 0]
    assert mapped and all(offsets[True][c] <= offsets[False][c] + 1e-3 for c in mapped)


@pytest.mark.parametrize("case", ["attention.enabled=true", "scene.enabled=true"])
def test_the_cost_bench_runs_each_extension(case):
    """`python -m edge_semvc.bench.extensions` (BENCHMARKS' cost column) drives the extensions
    as the pipeline does: a change to their interface must reach it."""
    from conftest import shared_file

    from edge_semvc.bench.extensions import measure

    clip = shared_file("data", "video", "bikes_street_scene_cuts_640x272.mp4")
    result = measure(clip, [case], frames=3)
    assert result["frames"] == 3 and result["mean_ms"] > 0

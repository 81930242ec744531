"""Each stage's cost per frame, alone (no other thread competing), on real frames; and the
semantic run's whole work in the pipeline's thread ("pipeline_thread": scene, the labeler's
carry, gate and fusion, analysis, map; its models run in their worker), CPU ms a frame over
the first 150 frames: the fixed work a semantic encode pays beyond `--no-map`, less noisy than
a whole encode's CPU.

    python -m edge_semvc.bench.stages [CLIP...]
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from itertools import islice
from pathlib import Path

from ..analysis import Analyser
from ..analysis.scene import SceneAnalyser
from ..config import Config
from ..qp.qpmap import build_qp_map, importance_vector
from ..sources import open_source
from ..tools.models import ready_labeler
from ..understanding import build_understanding

DEFAULT_CLIPS = ["foreman_cif.h264", "street_pedestrians_vtest_768x576.avi",
                 "road_traffic_signs_1080p.h264"]


def _ms(fn, frames, repeats: int = 3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for f in frames:
            fn(f)
        best = min(best, (time.perf_counter() - t0) / len(frames) * 1e3)
    return best


def pipeline_thread_ms(clip: str, cfg: Config, n: int = 150) -> float:
    """CPU ms a frame of the semantic run's understanding step, in order over `n` frames."""
    understanding = build_understanding(cfg, True, clip, None, defaultdict(list))
    understanding.encoder_opened(False)
    src = open_source(clip)
    spent, count = 0.0, 0
    try:
        for frame in islice(src.frames(), n):
            t0 = time.thread_time()
            understanding(frame)
            spent += time.thread_time() - t0
            count += 1
    finally:
        src.close()
        understanding.labeler.close()
    return spent / count * 1e3


def measure(clip: str, cfg: Config, n: int = 20) -> dict:
    src = open_source(clip)
    frames = list(islice(src.frames(), n))
    src.close()
    labeler = ready_labeler(cfg.labeler, cfg.cache_dir(), log=lambda *_: None)
    out = {"clip": Path(clip).name, "size": f"{frames[0].width}x{frames[0].height}"}
    for name, model in labeler.models:
        out[name] = _ms(model, frames)
    scene = SceneAnalyser(cfg.scene)  # the run's cut (every frame; S where a cut may be)
    out["scene"] = _ms(scene.analyse, frames)
    labels = [labeler.label(f) for f in frames]
    analyser = Analyser(cfg.analysis)
    by_index = {f.index: lm for f, lm in zip(frames, labels)}
    out["analysis"] = _ms(lambda f: analyser.analyse(f, by_index[f.index]), frames)
    imp = importance_vector(["background", *labeler.classes], cfg.qp)
    stats = {f.index: analyser.analyse(f, by_index[f.index]) for f in frames}
    out["qp_map"] = _ms(lambda f: build_qp_map(stats[f.index], by_index[f.index], imp, cfg.qp),
                        frames)
    out["pipeline_thread"] = pipeline_thread_ms(clip, cfg)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.stages",
                                description="Each stage's cost per frame, on real frames.")
    p.add_argument("clips", nargs="*", help=f"default: ../shared's {', '.join(DEFAULT_CLIPS)}")
    clips = p.parse_args(argv).clips or [
        str(Path(__file__).resolve().parents[2].parent / "shared" / "data" / "video" / c)
        for c in DEFAULT_CLIPS]
    rows = [measure(c, Config()) for c in clips]
    cols = [k for k in rows[0] if k not in ("clip", "size")]
    print("| clip | size | " + " | ".join(f"{c} ms" for c in cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for r in rows:
        print(f"| {r['clip']} | {r['size']} | " + " | ".join(f"{r[c]:.2f}" for c in cols) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What each of the method's extensions costs per frame, alone, on the clips it applies to:
its analyser and formula (`extensions.py`), after the labeler (run on every frame, in line);
for the scene extension, the scene analysis it makes search motion on every frame.

    python -m edge_semvc.bench.extensions [--frames 100]
"""
from __future__ import annotations

import argparse
import sys
import time
from itertools import islice
from pathlib import Path

import numpy as np

from ..analysis import Analyser
from ..analysis.scene import SceneAnalyser
from ..config import load_config
from ..extensions import Extensions
from ..sources import open_source
from ..tools.models import prepare_config, ready_labeler

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "video"
CASES = [("attention", "street_pedestrians_vtest_768x576.avi", ["attention.enabled=true"]),
         ("emotion", "foreman_cif.h264", ["emotion.enabled=true"]),
         ("emotion", "carphone_qcif_pristine.mp4", ["emotion.enabled=true"]),
         ("scene", "bikes_street_scene_cuts_640x272.mp4", ["scene.enabled=true"]),
         ("fusion (audio)", "drone_karma_coast_854x480.mp4", ["fusion.enabled=true"]),
         ("fusion (description)", "road_traffic_signs_1080p.h264",
          ["fusion.enabled=true", "fusion.description=watch the vehicles"])]


def measure(clip: Path, overrides: list[str], frames: int) -> dict:
    cfg = load_config(None, ["labeler.cpu_budget=0", *overrides])
    prepare_config(cfg, cfg.cache_dir(), log=lambda *_: None)
    labeler = ready_labeler(cfg.labeler, cfg.cache_dir(), log=lambda *_: None)
    analyser, ext = Analyser(cfg.analysis), Extensions(cfg, labeler, str(clip))
    scene = SceneAnalyser(cfg.scene)
    src = open_source(str(clip))
    ms = []
    try:
        for frame in islice(src.frames(), frames):
            labels = labeler.label(frame)
            region = analyser.analyse(frame, labels)
            q = np.ones(labels.shape, np.float32)
            # every semantic run analyses the scene (its cuts); the scene extension makes that
            # a motion search on every frame: its cost, so timed only where it is on
            t_scene = time.perf_counter()
            seen = scene.analyse(frame)
            t0 = t_scene if cfg.scene.enabled else time.perf_counter()
            ext.adjust(q, ext.modulation(frame, labels, region.regions, seen))
            ms.append((time.perf_counter() - t0) * 1e3)
    finally:
        src.close()
        labeler.close()
    a = np.asarray(ms)
    return {"frames": len(ms), "mean_ms": round(float(a.mean()), 3),
            "p95_ms": round(float(np.percentile(a, 95)), 3)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.extensions",
                                description=__doc__.splitlines()[0])
    p.add_argument("--frames", type=int, default=100)
    args = p.parse_args(argv)
    print("| extension | clip | frames | ms/frame mean | p95 |\n|---|---|---|---|---|")
    for name, clip, overrides in CASES:
        path = SHARED / clip
        if not path.exists():
            print(f"{clip} is missing", file=sys.stderr)
            continue
        r = measure(path, overrides, args.frames)
        print(f"| {name} | {clip} | {r['frames']} | {r['mean_ms']} | {r['p95_ms']} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

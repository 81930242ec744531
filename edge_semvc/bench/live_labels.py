"""Record a live camera's label timing, for `bench --label-schedule`.

    python -m edge_semvc.bench.live_labels CLIP... --schedules DIR [--start N|P%]
        [--frames N|P%] [--config FILE] [--set KEY=VALUE]

A file encode gives its models `labeler.cpu_budget`, a share of the encode's own CPU: on a
10 fps camera clip that is a run every 20-30 frames. A camera gives them `labeler.live_share`
of each frame period (labeler/schedule.py): on the same clip, nearly every frame. `bench`
measures file encodes, so its figures are those of the file budget's stale labels; this tool
plays each clip's range at its own frame rate, as a camera would deliver it (one camera, the
labeler alone on the machine: the encoder is not running), and writes which models ran on which
frame and from which frame their results were used to `DIR/CLIP.FIRST+FRAMES.json`, where
`bench --label-schedule DIR` (same `--start`/`--frames`) replays it in every encode. Without
the detector's tiles (`labeler.tiles`: a camera's whole-view runs only), which a file encode
has no models for.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

from ..config import load_config
from ..labeler import Labeler
from ..labeler.schedule import camera_share
from ..tools.models import prepare_config
from .reference import FrameSpan, open_range


def record(clip: str, cfg, span: FrameSpan, schedules: Path, log=print) -> Path:
    src = open_range(clip, None, span)
    labeler_cfg = dataclasses.replace(cfg.labeler, tiles=0.0)  # a file encode has no tiles
    lab = Labeler(labeler_cfg, cfg.cache_dir(), log=lambda *_: None,
                  live_share=camera_share(labeler_cfg.live_share, 1), record=True)
    period = 1.0 / float(src.fps)
    try:
        t0 = time.monotonic()
        for i, frame in enumerate(src.frames()):
            # the camera's pace; never a dropped frame (not sources.PacedSource, which drops
            # what the pipeline missed): the schedule must number the bench's frames
            time.sleep(max(0.0, t0 + i * period - time.monotonic()))
            lab.label(frame)
    finally:
        lab.close()
        src.close()
    schedule = lab.schedule()
    path = schedules / f"{Path(clip).stem}.{src.start}+{schedule['frames']}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(schedule) + "\n")
    ages = {name: s["staleness_frames"]["mean"] for name, s in lab.stats().items()}
    log(f"{path}: {len(schedule['runs'])} runs in {schedule['frames']} frames, mean label age "
        + ", ".join(f"{n} {a}" for n, a in ages.items()))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_semvc.bench.live_labels",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("clips", nargs="+", metavar="CLIP")
    p.add_argument("--schedules", required=True, metavar="DIR",
                   help="where `bench --label-schedule DIR` finds them")
    p.add_argument("--start", default="0", metavar="N|P%")
    p.add_argument("--frames", default="", metavar="N|P%")
    p.add_argument("--config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    cfg = load_config(args.config, args.set)
    prepare_config(cfg, cfg.cache_dir(), log=lambda m: print(m, file=sys.stderr))
    for clip in args.clips:
        record(clip, cfg, FrameSpan(args.start, args.frames), Path(args.schedules))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The service's memory over reloads that add and remove a camera (BENCHMARKS.md, "serve":
"Reloads that add and remove a camera"): one looped camera runs; each cycle a second one is
added by a reload, runs for a few seconds and is removed by another. Prints the process's
resident memory after each cycle.

    .venv/bin/python scripts/serve_reload_memory.py [CYCLES] [FOLDER]
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import yaml

from edge_semvc import preflight
from edge_semvc.config import load_config
from edge_semvc.serve.config import ServeConfig
from edge_semvc.serve.service import Service

CLIP = Path(__file__).resolve().parents[2] / "shared/data/video/carphone_qcif_pristine.mp4"


def resident_mb() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 // 2**20


def main(cycles: int = 5, folder: str = "bench-out/reload-memory") -> None:
    root = Path(folder)
    (root / "rec").mkdir(parents=True, exist_ok=True)
    path = root / "serve.yml"

    def write(names):
        path.write_text(yaml.safe_dump({
            "cameras": {n: {"input": f"file://{CLIP}", "loop": True} for n in names},
            "record": {"dir": str(root / "rec"), "segment_seconds": 5},
            "labeler": {"live_share": 0.3}, "encoder": {"tune": "zerolatency"}}))

    def load():
        cfg = load_config(path, cls=ServeConfig)
        preflight.resolve(cfg)
        return cfg

    write(["a"])
    service = Service(load(), load=load)
    run = threading.Thread(target=service.run, daemon=True)
    run.start()
    time.sleep(6)
    print(f"one camera: {resident_mb()} MB", flush=True)
    for cycle in range(1, cycles + 1):
        for names, seconds in ((["a", "b"], 8), (["a"], 4)):
            write(names)
            service.reload_event.set()
            time.sleep(seconds)
        print(f"after cycle {cycle}: {resident_mb()} MB", flush=True)
    service.stop_event.set()
    run.join(60)


if __name__ == "__main__":
    main(*(int(a) if i == 0 else a for i, a in enumerate(sys.argv[1:])))

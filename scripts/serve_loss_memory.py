"""The service's memory over a camera lost and back again and again (BENCHMARKS.md, "serve:
memory over a camera's losses"): one camera in process, its live feed (the test suite's, a
synthetic picture) ending after 30 frames each run, so that the camera is lost and comes back;
prints the resident memory as each run starts. `keep` leaves out the trim at each run's end
(`serve/camera.release_freed_memory`), to see what it hands back.

    .venv/bin/python scripts/serve_loss_memory.py [RUNS] [keep]
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from test_serve_faults import WAIT, Clock, camera, stopped  # noqa: E402
from test_serve_losses import ShortFeed  # noqa: E402
from test_telemetry import wait_until  # noqa: E402

from edge_semvc.serve import camera as camera_module  # noqa: E402


def main(runs: int = 21, keep: bool = False) -> None:
    if keep:
        camera_module.release_freed_memory = lambda: None
    folder = Path(tempfile.mkdtemp())
    (folder / "rec").mkdir()
    resident: list[int] = []

    def open_input(uri):
        status = Path("/proc/self/status").read_text()
        resident.append(round(int(status.split("VmRSS:")[1].split()[0]) / 1024))
        return ShortFeed(start=len(resident) * 1000)

    clock = Clock()
    cam, _ = camera(folder, "rtsp://camera.invalid/stream", open_input=open_input, clock=clock,
                    sleep=clock.sleep)
    cam.start()
    try:
        wait_until(lambda: len(resident) >= runs, timeout=WAIT * runs / 2, what=f"{runs} runs")
    finally:
        stopped(cam)
    print("resident MB as each run starts:", resident[:runs])


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 21, "keep" in sys.argv[2:])

"""A camera lost and back again and again, as over a long day, each run in process with the
real pipeline (real models, x264, segments on disk) on a live feed that ends after a few
frames: the process does not grow, and the figures count every run. Counts megabytes, bytes
and runs; nothing asserts how long anything took."""
from __future__ import annotations

from pathlib import Path

from test_serve_faults import WAIT, Clock, Feed, camera, stopped
from test_telemetry import wait_until


class ShortFeed(Feed):
    """A live feed whose stream ends after `frames_per_run` frames: the camera is lost."""

    frames_per_run = 30

    def frames(self):
        for i, frame in enumerate(super().frames()):
            if i == self.frames_per_run:
                return
            yield frame


def test_a_camera_lost_and_back_again_and_again_does_not_grow_the_process(tmp_path):
    """Each run builds its models and encoder and frees them at its end; glibc kept those
    pages in the run threads' arenas, so the process grew 10-40 MB each time the camera was
    lost and came back (~25 MB a run here, 590 MB after 25). The resident size as each run
    starts, after the one before was let go, stays where the second run found it."""
    (tmp_path / "rec").mkdir()
    resident_mb: list[float] = []

    def open_input(uri):  # between two runs: the last one's memory was handed back
        status = Path("/proc/self/status").read_text()
        resident_mb.append(int(status.split("VmRSS:")[1].split()[0]) / 1024)
        return ShortFeed(start=len(resident_mb) * 1000)

    clock = Clock()
    cam, events = camera(tmp_path, "rtsp://camera.invalid/stream", open_input=open_input,
                         clock=clock, sleep=clock.sleep)
    cam.start()
    try:
        wait_until(lambda: len(resident_mb) >= 14, timeout=WAIT * 4, what="14 runs")
    finally:
        stopped(cam)
    assert len(events.named("source_back")) >= 12  # each run encoded frames
    assert resident_mb[13] - resident_mb[1] < 60, resident_mb


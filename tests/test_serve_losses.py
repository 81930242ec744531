"""A camera lost and back again and again, as over a long day, each run in process with the
real pipeline (real models, x264, segments on disk) on a live feed that ends after a few
frames: the process does not grow, and the figures count every run. Counts megabytes, bytes
and runs; nothing asserts how long anything took."""
from __future__ import annotations

from pathlib import Path

from test_serve import CLIP, needs_clip
from test_serve_faults import WAIT, Clock, Feed, camera, pipeline_config, stopped
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


def test_the_bit_rate_over_a_window_that_spans_runs_counts_every_runs_bytes(tmp_path):
    """A camera lost and back: the bit rate of the whole run's summary (`--stats-json`) and of
    a stats interval in which it came back counts the bytes of every run in it, not only the
    last run's (4.2 kbit/s said for 46 after 3 losses in 40 s)."""
    from edge_semvc.serve.stats import StatsWindow

    (tmp_path / "rec").mkdir()
    run_bytes: list[int] = []

    def open_input(uri):  # between two runs: the last run's statistics are complete
        if cam.runs:
            run_bytes.append(cam.stats.bytes)
        return ShortFeed(start=(len(run_bytes) + 1) * 1000)

    clock = Clock()
    cam, events = camera(tmp_path, "rtsp://camera.invalid/stream", open_input=open_input,
                         clock=clock, sleep=clock.sleep)
    seconds = iter([0.0, 1.0])  # the window: one second, whatever the runs took
    window = StatsWindow(cam, clock=lambda: next(seconds))
    cam.start()
    try:
        wait_until(lambda: len(run_bytes) >= 3, timeout=WAIT, what="three runs")
    finally:
        stopped(cam)
    run_bytes.append(cam.stats.bytes)  # the last run's
    assert cam.runs == len(run_bytes) >= 4 and all(run_bytes[:-1]), run_bytes
    snapshot = window.snapshot()
    assert snapshot["bitrate_kbps"] == round(sum(run_bytes) * 8 / 1e3, 1), run_bytes
    assert snapshot["frames"] == cam.frames_total and snapshot["reconnects"] == cam.runs - 1



def test_the_frames_encoded_with_a_map_count_over_every_run(tmp_path):
    """`frames_with_map` in the stats was the current run's while `frames` beside it counted
    every run: a camera lost and back said 5400 frames, 30 of them with a map. It counts
    over every run (and over a reload's restart, `Carried`), as `frames` does."""
    from edge_semvc.serve.stats import StatsWindow
    from edge_semvc.sources import open_source

    needs_clip()
    (tmp_path / "rec").mkdir()
    mapped: list[int] = []

    def open_input(uri):  # between two runs: the last run's statistics are complete
        if cam.runs:
            mapped.append(cam.stats.frames_mapped)
        return open_source(f"file://{CLIP}")  # a face talking; its end: the camera is lost

    clock = Clock()
    cam, _ = camera(tmp_path, "rtsp://camera.invalid/stream", open_input=open_input,
                    clock=clock, sleep=clock.sleep)
    window = StatsWindow(cam, lambda: 0.0)
    cam.start()
    try:
        wait_until(lambda: len(mapped) >= 2, timeout=WAIT, what="two runs")
    finally:
        stopped(cam)
    if cam.runs > len(mapped):  # else: stopped as the next run's input was opened
        mapped.append(cam.stats.frames_mapped)  # the last run's
    assert cam.runs == len(mapped) >= 2 and all(mapped[:2]), mapped
    assert window.snapshot()["frames_with_map"] == sum(mapped), mapped
    assert window.totals().frames_mapped == sum(mapped)


def _two_runs(tmp_path, start, window, cfg=None):
    """A camera lost once and back, to its end; `window(cam)` its stats window, made first."""
    clock = Clock()
    cam, _ = camera(tmp_path, "rtsp://camera.invalid/stream", cfg=cfg,
                    open_input=lambda uri: ShortFeed(start=start), clock=clock, sleep=clock.sleep)
    made = window(cam)
    cam.start()
    try:
        wait_until(lambda: cam.runs >= 2 and cam.frames_total >= 45, timeout=WAIT,
                   what="two runs")
    finally:
        stopped(cam)
    return cam, made


def test_a_camera_a_reload_restarts_counts_on_from_the_one_before(tmp_path):
    """A reload that restarts a camera puts a new `Camera` in its place: its stats (MQTT, the
    whole run's summary) go on from the old one's frames, bytes, drops and reconnects, and the
    whole run's rates are over both (before: `--stats-json` said 387 frames for 708 recorded)."""
    from edge_semvc.serve.stats import StatsWindow

    (tmp_path / "rec").mkdir()
    first, old = _two_runs(tmp_path, 10_000, lambda cam: StatsWindow(cam, lambda: 0.0))
    second, whole = _two_runs(tmp_path, 20_000,  # the whole run ends 4 s after it began
                              lambda cam: StatsWindow(cam, lambda: 4.0, old.totals()))
    summary = whole.snapshot()
    assert summary["frames"] == first.frames_total + second.frames_total
    assert summary["reconnects"] == first.runs - 1 + second.runs - 1 >= 2
    assert summary["bitrate_kbps"] == round(
        (first.encoded_bytes() + second.encoded_bytes()) * 8 / 4.0 / 1e3, 1)


def test_the_web_figures_of_a_camera_a_reload_restarts_count_on(tmp_path):
    """The web page's figures, `/api/stats` and `/metrics` had a window of their own that
    started from 0 with each new `Camera`: after a reload restarted one, the Prometheus
    counter `edge_semvc_frames_total` went back (196 -> 86; --stats-json counted on), which
    rate() reads as a reset and a wrong increase. They go on from the service's counts."""
    from edge_semvc.serve import web
    from edge_semvc.serve.config import HttpConfig, RecordConfig, ServeConfig
    from edge_semvc.serve.stats import StatsWindow

    (tmp_path / "rec").mkdir()
    cfg = ServeConfig(cameras={"front": "demo://astronaut"}, record=RecordConfig(str(tmp_path)),
                      http=HttpConfig(enabled=True, port=0)).validate()
    cameras: dict = {}
    whole_run: dict = {}
    view = web.WebView(cfg, cameras, {}, lambda: 0.0, whole_run)
    first, old = _two_runs(tmp_path, 10_000, lambda cam: StatsWindow(cam, lambda: 0.0))
    cameras["front"], whole_run["front"] = first, old
    view.refresh()
    assert view.figures["front"].stats["frames"] == first.frames_total
    second, whole = _two_runs(tmp_path, 20_000,  # the reload's camera, in the first's place
                              lambda cam: StatsWindow(cam, lambda: 0.0, old.totals()))
    cameras["front"], whole_run["front"] = second, whole
    view.refresh()
    stats = view.figures["front"].stats
    assert stats["frames"] == first.frames_total + second.frames_total
    assert stats["reconnects"] == first.runs - 1 + second.runs - 1
    metrics = view.metrics().decode()
    assert (f'edge_semvc_frames_total{{camera="front"}} '
            f'{float(first.frames_total + second.frames_total)}') in metrics


def test_the_storage_counters_count_on_over_losses_and_reload_restarts(tmp_path):
    """The storage profile's decisions (frames left out, IDRs by reason, GOPs) were the current
    run's: a camera lost and back, or restarted by a reload, started them from 0 while the
    frames counted on, and Prometheus' `edge_semvc_storage_idrs_total` went back (a reset to
    it). They count over every run as `frames` does, in the stats, the summary and /metrics."""
    from edge_semvc.serve import web
    from edge_semvc.serve.config import HttpConfig, RecordConfig, ServeConfig
    from edge_semvc.serve.stats import StatsWindow

    (tmp_path / "rec").mkdir()
    storage = pipeline_config()
    storage.encoder.profile = "storage"
    storage = storage.validate()
    first, old = _two_runs(tmp_path, 10_000, lambda cam: StatsWindow(cam, lambda: 0.0), storage)
    lost = old.snapshot()["storage"]
    assert lost["idr_reasons"]["start"] == first.runs >= 2  # each run starts with one
    assert lost["frames_encoded"] + lost["frames_skipped"] == first.frames_total
    second, whole = _two_runs(tmp_path, 20_000,  # a reload's camera, in the first's place
                              lambda cam: StatsWindow(cam, lambda: 0.0, old.totals()), storage)
    runs = first.runs + second.runs
    summary = whole.snapshot()["storage"]
    assert summary["idr_reasons"]["start"] == runs
    assert summary["frames_encoded"] + summary["frames_skipped"] == \
        first.frames_total + second.frames_total
    assert summary["gop_s"]["count"] == sum(summary["idr_reasons"].values())
    # each run's first IDR at its frame counted over every run, as `frames` is
    idrs = whole.totals().storage["idrs"]  # all of them (a stats message has the last 10)
    starts = [i["frame"] for i in idrs if i["reason"] == "start"]
    assert len(starts) == runs and starts[0] == 0, idrs
    assert starts == sorted(set(starts)) and starts[first.runs] == first.frames_total, starts
    # and at their time over every run, from the camera's first frame: each run (30 frames at
    # 10 fps, 3 s less a frame the pipeline may have dropped at its start) goes on one frame
    # after the last (each run's started at the input's pts again)
    times = [i["time_s"] for i in idrs if i["reason"] == "start"]
    assert times[0] == 0.0 and all(abs(t - 3.0 * run) < 0.5 for run, t in enumerate(times)), idrs
    assert [i["time_s"] for i in idrs] == sorted(i["time_s"] for i in idrs)
    cfg = ServeConfig(cameras={"front": "demo://astronaut"}, record=RecordConfig(str(tmp_path)),
                      http=HttpConfig(enabled=True, port=0)).validate()
    view = web.WebView(cfg, {"front": second}, {}, lambda: 0.0, {"front": whole})
    view.refresh()
    metrics = view.metrics().decode()
    assert f'edge_semvc_storage_idrs_total{{camera="front",reason="start"}} {float(runs)}' \
        in metrics, metrics


def test_a_camera_a_reload_makes_live_shows_no_storage_figures_but_keeps_them(tmp_path):
    """A reload that switched a camera from `profile: storage` to `live` left its last storage
    block in every stats message, /metrics and the summary, frozen, as if it still recorded so.
    A live camera has none (`storage: null`); the decisions are carried for a later reload that
    makes it storage again, whose counts go on from them."""
    from edge_semvc.serve import web
    from edge_semvc.serve.config import HttpConfig, RecordConfig, ServeConfig
    from edge_semvc.serve.stats import StatsWindow

    (tmp_path / "rec").mkdir()
    storage = pipeline_config()
    storage.encoder.profile = "storage"
    storage = storage.validate()
    _, old = _two_runs(tmp_path, 10_000, lambda cam: StatsWindow(cam, lambda: 0.0), storage)
    before = old.totals()
    assert before.storage["idr_reasons"]["start"] >= 2
    live, whole = _two_runs(tmp_path, 20_000,  # the reload's camera, live
                            lambda cam: StatsWindow(cam, lambda: 0.0, before))
    assert whole.snapshot()["storage"] is None  # the stats, the summary
    assert whole.totals().storage == before.storage  # carried on
    cfg = ServeConfig(cameras={"front": "demo://astronaut"}, record=RecordConfig(str(tmp_path)),
                      http=HttpConfig(enabled=True, port=0)).validate()
    view = web.WebView(cfg, {"front": live}, {}, lambda: 0.0, {"front": whole})
    view.refresh()
    assert view.figures["front"].stats["storage"] is None
    assert "edge_semvc_storage" not in view.metrics().decode()


def test_the_rate_followers_counts_go_on_over_losses_and_reload_restarts(tmp_path):
    """Each run of a camera has a rate follower of its own (encoder.follow_link), which starts
    at the ceiling and from 0: a camera lost and back, or restarted by a reload, said 0
    decreases and no lower rate than now after an hour on a narrow link. Its stats say the rate
    the run gives now, the lowest, changes and reports over every run."""
    from dataclasses import replace

    from gst_helpers import free_port, require
    from test_follow import WINDOW, Reports

    from edge_semvc.config import load_config
    from edge_semvc.serve.stats import Carried, StatsWindow

    require("srt")
    (tmp_path / "rec").mkdir()
    cfg = load_config(None, ["encoder.bitrate=2000000", "encoder.follow_link.enabled=true",
                             "labeler.cpu_budget=0.05"])
    runs: list[dict] = []

    def narrowed(cam):  # between two runs: the one that ended had a narrow link
        follower = cam.stats.follower
        if cam.runs and len(runs) < cam.runs:
            reports = Reports()
            for _ in range(1 + WINDOW):  # a baseline (its output reported before), a decrease
                follower.update([replace(r, seq=r.seq + 1000)  # after the output's own
                                 for r in reports.next(resent=30, rtt_ms=400.0)])
            runs.append(follower.stats())

    def two_runs(start, carried):
        clock = Clock()
        cam, _ = camera(tmp_path, "rtsp://camera.invalid/stream", cfg=cfg, clock=clock,
                        sleep=clock.sleep, outputs=[f"srt://127.0.0.1:{free_port()}"
                                                    "?mode=listener"],
                        open_input=lambda uri: narrowed(cam) or ShortFeed(start=start))
        window = StatsWindow(cam, lambda: 0.0, carried)
        cam.start()
        try:
            wait_until(lambda: len(runs) >= 2 + start // 20_000, timeout=WAIT, what="runs")
        finally:
            stopped(cam)
        return window

    old = two_runs(10_000, Carried())
    whole = two_runs(20_000, old.totals())  # the camera a reload started in its place
    said = whole.snapshot()["follow_link"]
    assert all(r["decreases"] for r in runs) and len(runs) >= 3, runs
    assert said["decreases"] >= sum(r["decreases"] for r in runs)
    assert said["reports"] >= sum(r["reports"] for r in runs)
    assert said["lowest"] <= min(r["lowest"] for r in runs) < said["target"]


def test_the_recordings_counts_go_on_over_losses_and_reload_restarts(tmp_path):
    """Each run records through a recording output of its own: its counts (frames, segments,
    bytes, write errors, deleted) in the stats said `segments: 0, bytes: 0` after the camera
    came back, with every segment before on disk. They count over every run, as `frames`."""
    from test_serve import segments

    from edge_semvc.serve.stats import StatsWindow

    (tmp_path / "rec").mkdir()
    first, old = _two_runs(tmp_path, 10_000, lambda cam: StatsWindow(cam, lambda: 0.0))
    second, whole = _two_runs(tmp_path, 20_000,  # a reload's camera, in the first's place
                              lambda cam: StatsWindow(cam, lambda: 0.0, old.totals()))
    (recording,) = [o for o in whole.snapshot()["outputs"] if "segments" in o]
    files = segments(tmp_path / "rec" / "front")
    assert recording["segments"] == len(files) > first.runs + second.runs, recording
    assert recording["bytes"] == sum(f.stat().st_size for f in files)
    assert recording["frames"] == first.frames_total + second.frames_total
    assert whole.totals().recording == recording


def test_a_cameras_next_run_starts_at_the_rate_its_link_was_found_to_carry(tmp_path):
    """Each run of a camera has a rate follower of its own (encoder.follow_link), which started
    at the ceiling: after each loss and return, or a reload restart, a camera whose SRT output
    is kept (the same viewers, the same narrow link) sent at the full rate into it until the
    follower cut again. The next run's follower starts where the last one's was; a camera
    whose output a reload changed starts at the ceiling."""
    import socket
    from dataclasses import replace

    from gst_helpers import free_port, require
    from test_follow import WINDOW, Reports

    from edge_semvc.config import load_config

    require("srt")
    (tmp_path / "rec").mkdir()
    cfg = load_config(None, ["encoder.bitrate=2000000", "encoder.follow_link.enabled=true",
                             "labeler.cpu_budget=0.05"])
    same = [f"srt://127.0.0.1:{free_port(socket.SOCK_DGRAM)}?mode=listener"]

    def runs_of(outputs, before=None, wanted=2):
        """A camera on `outputs` (after `before`, which a reload restarted: its outputs handed
        over) lost and back: each run's (first rate, rate after a narrow link's reports)."""
        runs: list[tuple[int, int]] = []

        def narrowed(cam):  # between two runs: the one that ended had a narrow link
            follower = cam.stats.follower
            if cam.runs and len(runs) < cam.runs:
                first, reports = follower.bitrate, Reports()  # no SRT caller: no report yet
                for _ in range(1 + WINDOW):  # a baseline (its output reported before), a cut
                    follower.update([replace(r, seq=r.seq + 1000)  # after the output's own
                                     for r in reports.next(resent=30, rtt_ms=400.0)])
                runs.append((first, follower.bitrate))

        clock = Clock()
        cam, _ = camera(tmp_path, "rtsp://camera.invalid/stream", cfg=cfg, clock=clock,
                        sleep=clock.sleep, outputs=outputs,
                        open_input=lambda uri: narrowed(cam) or ShortFeed(start=1000))
        if before is not None:
            cam.take_streams(before)
        cam.hand_over = True  # its outputs go to the camera a reload starts in its place
        cam.start()
        try:
            wait_until(lambda: len(runs) >= wanted, timeout=WAIT, what="runs")
        finally:
            stopped(cam)
        return cam, runs

    first, runs = runs_of(same)
    assert runs[0][0] == 2_000_000 > runs[0][1]  # the first run: the ceiling, then a cut
    assert runs[1][0] == runs[0][1] > runs[1][1]  # lost and back: where it was, on down
    reloaded, again = runs_of(same, first, wanted=1)  # a reload restart, the output kept
    assert again[0][0] == runs[-1][1] < 2_000_000
    last, elsewhere = runs_of([f"srt://127.0.0.1:{free_port(socket.SOCK_DGRAM)}"
                               "?mode=listener"], reloaded, wanted=1)  # another output
    for stream in last.streams:  # kept for a camera a reload would start in its place
        stream.close_for_good()
    assert elsewhere[0][0] == 2_000_000

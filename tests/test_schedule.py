"""The labeler's CPU budget and its worker: intervals from measured costs (injected clocks, no
timing), the labeler's runs and staleness under a budget, scene cuts forcing a fresh run."""
from __future__ import annotations

import json
import threading
from fractions import Fraction
from itertools import islice

import numpy as np
import pytest

from edge_semvc.config import Config, ConfigError, LabelerConfig
from edge_semvc.errors import LabelerError
from edge_semvc.frame import Frame
from edge_semvc.labeler import Labeler
from edge_semvc.labeler.schedule import Budget, Replay, Worker, camera_share
from edge_semvc.sources import open_source

MODELS = ["nanodet_g", "selfie_segmentation_landscape", "face_detection_short_range"]


class Cpu:
    """Fake CPU clocks: the process spends `frame` s per frame outside the models; each model
    run costs what `costs` says (the thread clock advances by it between start and end)."""

    def __init__(self, frame: float, costs: dict[int, float] | float):
        self.frame, self.costs = frame, costs
        self.process = self.thread = 0.0
        self._running = None

    def process_clock(self) -> float:
        self.process += self.frame
        return self.process

    def thread_clock(self) -> float:
        return self.thread

    def run(self, k: int) -> None:  # a model ran: both clocks move by its cost
        cost = self.costs[k] if isinstance(self.costs, dict) else self.costs
        self.thread += cost
        self.process += cost


def test_water_filling_serves_cheap_models_first():
    b = Budget(0.1, [1, 1, 1], clock=iter([0.0, 0.012, 0.024]).__next__)
    assert b.intervals() == [1, 1, 1]  # nothing measured yet: every model at its minimum
    for k, cost in enumerate([0.040, 0.001, 0.001]):  # a detector and two small models
        b.add_run(k, cost)
    b.frame()
    b._spent = 0.0
    b.frame()
    b.frame()  # the rest of the process: 12 ms a frame -> 1.2 ms for the models
    assert b.per_frame() == pytest.approx(0.0012)
    # Cheapest first, an equal part of what is left each: 1 ms every 3rd frame (twice), then
    # 0.53 ms for the 40 ms detector: every 75th frame.
    assert b.intervals() == [75, 3, 3]
    b.min_intervals = [1, 4, 1]  # a model's own minimum interval still holds
    assert b.intervals()[1] == 4
    b.min_intervals = [1, 1, 1]
    for _ in range(5):  # the two small models keep finding nothing: a weight of 1/8 each
        b.found(1, False)
        b.found(2, False)
    assert b.weights[1:] == [0.125, 0.125]
    # 1.2 ms * (1/8) / (1/8 + 1/8 + 1) -> 0.12 ms each: every 9th frame; the detector gets the
    # other 0.98 ms: every 41st frame instead of every 75th.
    b._spent = 0.0
    assert b.intervals() == [41, 9, 9]
    b.found(1, True)
    assert b.weights[1] == 1.0


def test_costs_and_rest_are_averaged():
    clock = iter(np.arange(0, 1, 0.010)).__next__
    b = Budget(0.5, [1], clock=clock)
    b.add_run(0, 0.004)
    b.add_run(0, 0.014)  # one slow run moves the estimate by a fifth of the difference
    assert b.costs[0] == pytest.approx(0.006)
    b.frame()
    b.frame()
    assert b.rest == pytest.approx(0.010)


def test_zero_rest_gives_no_runs_beyond_the_first():
    b = Budget(0.1, [1], clock=lambda: 0.0)
    b.add_run(0, 0.01)
    b.frame()
    b.frame()
    assert b.intervals()[0] > 10 ** 6


@pytest.mark.parametrize("inline", [True, False])
def test_worker_runs_jobs_and_hands_back_errors(inline):
    def run(k, frame):
        if frame == "bad":
            raise ValueError("model 1 failed")
        return np.full((1, 2, 2), k, np.float32)

    w = Worker(run, inline=inline, thread_clock=lambda: 0.0)
    w.submit("f0", "frame", [0, 1])
    assert w.busy
    (tag, out), = w.results(wait=True)
    assert tag == "f0" and [k for k, _, _ in out] == [0, 1] and not w.busy
    assert out[1][1][0, 0, 0] == 1
    w.submit("f1", "bad", [1])
    with pytest.raises(ValueError, match="model 1 failed"):
        w.results(wait=True)
    w.close()


def _frames(n):
    src = open_source("demo://astronaut")
    try:
        return list(islice(src.frames(), n))
    finally:
        src.close()


def _budgeted(cfg: LabelerConfig, cpu: Cpu) -> Labeler:
    lab = Labeler(cfg, Config().cache_dir(), log=lambda *_: None, clock=cpu.process_clock,
                  thread_clock=cpu.thread_clock)
    run = lab.worker._run
    lab.worker._run = lambda k, f: (cpu.run(k), run(k, f))[1]
    return lab


def test_labeler_under_a_budget_runs_each_model_by_its_cost():
    """The three default models, each 'costing' 2.5 ms (fake clocks), the rest of the process
    10 ms a frame, a budget of 20 %: 2 ms a frame for 7.5 ms of models. On the demo close-up
    NanoDet finds nothing (its person box is over `max_box_area`: close-ups are the
    segmenter's), so after a few empty runs its weight is 1/8 and the two models that find the
    astronaut get most of the budget."""
    cpu = Cpu(0.010, 0.0025)
    cfg = Config().labeler
    cfg.cpu_budget, cfg.parallel = 0.2, False
    lab = _budgeted(cfg, cpu)
    for f in _frames(41):
        lab.label(f)
    assert lab.budget.weights == [0.125, 1.0, 1.0]
    # 2 ms * (1/8) / (1/8 + 2) -> every 22nd frame; then 1.89 ms / 2 each -> every 3rd frame.
    assert lab.budget.intervals() == [22, 3, 3]
    assert lab.runs[1] == lab.runs[2] >= 12 and lab.runs[0] < lab.runs[1]
    stats = lab.stats()
    assert set(stats) == {"nanodet_g", "selfie_segmentation_landscape",
                          "face_detection_short_range"}
    for name, s in stats.items():
        assert s["runs"] == lab.runs[lab.model_names.index(name)]
        assert s["cpu_ms_per_run"] == pytest.approx(2.5)
    assert stats["face_detection_short_range"]["staleness_frames"]["max"] <= 3
    assert stats["nanodet_g"]["staleness_frames"]["max"] > 3


def test_a_scene_cut_makes_every_model_run():
    cpu = Cpu(0.010, 0.0025)
    cfg = Config().labeler
    cfg.cpu_budget, cfg.parallel = 0.05, False  # every model rarely: ~every 13th frame
    lab = _budgeted(cfg, cpu)
    frames = _frames(6)
    for f in frames[:5]:
        lab.label(f)
    assert lab.runs == [1, 1, 1]
    black = Frame(np.full_like(frames[5].y, 16), frames[5].u, frames[5].v, frames[5].pts, 1, 5)
    lab.label(black)
    assert lab.runs == [2, 2, 2]
    assert all(s["staleness_frames"]["max"] == 4 for s in lab.stats().values())


def test_parallel_labeler_labels_the_demo_person():
    """The models in their own thread: the first frame waits for its labels, later frames use
    the latest results, whatever the timing."""
    cfg = Config().labeler
    lab = Labeler(cfg, Config().cache_dir(), log=lambda *_: None)
    try:
        maps = [lab.label(f) for f in _frames(20)]
    finally:
        lab.close()
    assert all(m.coverage().get("person", 0) + m.coverage().get("face", 0) > 0.1 for m in maps)
    assert lab.runs[0] >= 1 and sum(lab.stats()["nanodet_g"]["staleness_frames"].values()) >= 0


def test_labels_never_get_older_than_max_age():
    """A budget too small to run anything again (the rest of the process 'costs' nothing): the
    models still run every half second of video (the demo is 30 fps: every 15th frame)."""
    cpu = Cpu(0.0, 0.0025)
    cfg = Config().labeler
    cfg.cpu_budget, cfg.parallel, cfg.max_age_s = 0.05, False, 0.5
    lab = _budgeted(cfg, cpu)
    for f in _frames(46):
        lab.label(f)
    assert lab.budget.intervals()[0] > 10 ** 6
    assert lab.runs == [4, 4, 4]  # frames 0, 15, 30, 45
    assert all(s["staleness_frames"]["max"] == 14 for s in lab.stats().values())


def test_a_live_budget_is_a_share_of_the_frame_period_from_the_timestamps():
    """Live: 0.5 of a 100 ms frame period (timestamps 0.1 s apart; no clock is read) gives the
    models 50 ms a frame, whatever the encoder spends; a 40 ms detector runs every frame."""
    b = Budget(0.5, [1], clock=lambda: pytest.fail("a live budget reads no clock"), live=True)
    for i in range(5):
        b.frame(i / 10)
    assert b.per_frame() == pytest.approx(0.05)
    b.add_run(0, 0.040)
    assert b.intervals() == [1]
    slow = Budget(0.5, [1], live=True)
    for i in range(5):
        slow.frame(i / 10)
    slow.add_run(0, 0.090)  # a 90 ms detector: every 2nd frame
    assert slow.intervals() == [2]


def test_each_camera_s_share_shrinks_once_the_cameras_outnumber_the_cores():
    assert camera_share(0.5, 1, cores=2) == 0.5
    assert camera_share(0.5, 2, cores=2) == 0.5
    assert camera_share(0.5, 4, cores=2) == 0.25  # 4 x 0.25 = half of the 2 cores
    assert camera_share(0.5, 8, cores=2) == 0.125
    assert camera_share(1.0, 1, cores=8) == 1.0  # one thread per camera: one core at most


def _at_10_fps(frames):
    return [Frame(f.y, f.u, f.v, i, Fraction(1, 10), i) for i, f in enumerate(frames)]


def test_on_an_idle_10_fps_camera_the_detector_runs_every_frame_or_two():
    """The issue's case: x264 needs ~6 ms of a 10 fps camera's 100 ms. A file budget (5 % of
    that CPU) runs a 40 ms detector only when its labels reach `max_age_s` (every 20th frame);
    the live budget (half of each period) runs it on every frame or every other one."""
    frames = _at_10_fps(_frames(30))
    ages = {}
    for live in (False, True):
        cpu = Cpu(0.006, {0: 0.040, 1: 0.003, 2: 0.003})
        cfg = Config().labeler
        cfg.parallel = False
        lab = Labeler(cfg, Config().cache_dir(), log=lambda *_: None, clock=cpu.process_clock,
                      thread_clock=cpu.thread_clock, live_share=0.5 if live else None)
        run = lab.worker._run
        lab.worker._run = lambda k, f, run=run, cpu=cpu: (cpu.run(k), run(k, f))[1]
        for f in frames:
            lab.label(f)
        ages[live] = lab.stats()["nanodet_g"]["staleness_frames"]["max"]
        assert lab.budget_stats()["kind"] == ("live" if live else "cpu")
    assert ages[True] <= 1
    assert ages[False] >= 10


def test_a_detector_s_tiles_together_weigh_as_much_as_its_whole_view():
    b = Budget(0.5, [1], live=True)
    for _ in range(4):
        b.add_model(1, 0.25)
    for _ in range(4):
        b.found(1, False)
    assert b.weights == [1.0, 0.25 / 8, 0.25, 0.25, 0.25]
    b.found(1, True)
    assert b.weights[1] == 0.25


def test_dropped_frames_do_not_lengthen_the_live_period_and_the_models_give_way():
    """A camera at 10 fps whose pipeline dropped every other frame for a while: the period
    stays 100 ms (not 200 ms, which would give the models more time and drop more), and the
    models' share falls with each gap (the box is short of CPU), then comes back once frames
    flow without gaps again."""
    b = Budget(0.5, [1], live=True)
    for t in [0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.2, 1.4]:
        b.frame(t)
    assert b.period == pytest.approx(0.1)
    assert b.backoffs == 6 and b.share == pytest.approx(0.5 * 0.7 ** 6)
    assert b.per_frame() == pytest.approx(0.1 * 0.5 * 0.7 ** 6)
    for _ in range(40):  # long gaps: never below 1/16 of the configured share
        b.frame(b._t_video + 0.3)
    assert b.share == pytest.approx(0.5 / 16)
    t = b._t_video
    for i in range(1, 251):  # 25 s without a gap: back to the configured share
        b.frame(t + i / 10)
    assert b.share == pytest.approx(0.5) and b.configured == 0.5


def test_a_live_share_change_moves_the_back_off_reference_and_keeps_its_place():
    """labeler.live_share changed live (serve): with no back-off under way the models get the
    new share at once; during one, the same fraction of the new share, recovering towards
    it (not the old one)."""
    b = Budget(0.5, [1], live=True)
    for t in [0.0, 0.1, 0.2]:
        b.frame(t)
    b.set_share(0.2)
    assert b.share == b.configured == 0.2
    assert b.per_frame() == pytest.approx(0.1 * 0.2)
    b.frame(0.4)  # a gap: backs off
    assert b.share == pytest.approx(0.2 * 0.7)
    b.set_share(0.8)
    assert b.configured == 0.8 and b.share == pytest.approx(0.8 * 0.7)
    for i in range(1, 100):
        b.frame(0.4 + i / 10)
    assert b.share == pytest.approx(0.8)


def test_a_recorded_schedule_replays_the_same_labels(tmp_path):
    """The models in their own thread, on the frames the CPU clock picks, their results used
    when they arrive: recorded (`Labeler.schedule`), then replayed (`labeler.replay`): the same
    runs and, frame by frame, the same labels. Without the thread, on the replay's frames."""
    cfg = Config().labeler
    cfg.max_age_s = 0.3  # the demo is 30 fps: a run at least every 9th frame
    live = Labeler(cfg, Config().cache_dir(), log=lambda *_: None)
    # Each job's results come 4 frames after it started (the test waits for the worker there:
    # whatever the machine, the same schedule).
    done, do = threading.Semaphore(0), live.worker._do
    live.worker._do = lambda job: (do(job), done.release())
    frames, recorded = _frames(40), []
    try:
        for i, f in enumerate(frames):
            recorded.append(live.label(f))
            if i == 0 or live.worker.busy and i - live.run_log[-1]["frame"] == 3:
                done.acquire()
    finally:
        live.close()
    schedule = live.schedule()
    assert schedule == {"models": MODELS, "frames": 40, "runs": [
        {"frame": 0, "models": [0, 1, 2], "arrived": 0},
        *({"frame": n, "models": [0, 1, 2], "arrived": n + 4} for n in (9, 18, 27))]}
    path = tmp_path / "stats.json"
    path.write_text(json.dumps({"frames": 40, "label_runs": schedule}))  # as --stats-json
    cfg.replay = str(path)
    again = Labeler(cfg, Config().cache_dir(), log=lambda *_: None)
    assert again.budget is None and again.worker.inline
    for f, want in zip(frames, recorded):
        got = again.label(f)
        assert np.array_equal(got.labels, want.labels) and np.array_equal(got.probs, want.probs)
    assert again.schedule() == schedule and again.runs == [4, 4, 4]  # not the one in flight
    with pytest.raises(LabelerError, match="covers 40 frames"):
        again.label(frames[0])


@pytest.mark.parametrize("doc, message", [
    ([], "not a recorded schedule"),
    ({"models": ["nanodet_g"], "frames": 9, "runs": []}, "recorded with the models"),
    ({"models": MODELS, "frames": -1, "runs": []}, "not a frame count"),
    ({"models": MODELS, "frames": 9, "runs": [{"frame": 5, "models": [0], "arrived": 4}]},
     "frame <= arrived"),
    ({"models": MODELS, "frames": 9, "runs": [{"frame": 1, "models": [3], "arrived": 1}]},
     "models among 0..2"),
    ({"models": MODELS, "frames": 9, "runs": [{"frame": 1, "models": [0], "arrived": 1.0}]},
     "frame <= arrived"),
    ({"models": MODELS, "frames": 9, "runs": [{"frame": 1, "models": [0], "arrived": 2}] * 2},
     "each frame once"),
])
def test_a_bad_schedule_is_refused_naming_the_key_and_the_file(tmp_path, doc, message):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(ConfigError, match=rf"labeler\.replay: {path}: .*{message}"):
        Replay.load(str(path), MODELS)


def test_a_schedule_replays_a_file_encode_only(tmp_path):
    with pytest.raises(ConfigError, match="labeler.replay: cannot read"):
        Replay.load(str(tmp_path / "missing.json"), MODELS)
    cfg = LabelerConfig(replay=str(tmp_path / "s.json"))
    with pytest.raises(ConfigError, match="not a live input"):
        Labeler(cfg, Config().cache_dir(), log=lambda *_: None, live_share=0.5)

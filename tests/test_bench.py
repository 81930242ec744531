"""Metric code against known values, and a short real bench run."""
import csv
import json
from fractions import Fraction

import numpy as np
import pytest

from edge_semvc.bench.metrics import (
    bd_rate,
    box_iou,
    f1_data_note,
    f1_score,
    match_counts,
    psnr,
    rate_at_f1,
    rate_saving,
    roi_coverage,
    roi_data_note,
)
from edge_semvc.cli import main
from edge_semvc.errors import ConfigError


def test_psnr_of_a_known_noise_level():
    rng = np.random.default_rng(0)
    ref = np.full((200, 200), 128, np.uint8)
    noise = rng.choice([-4, 4], size=ref.shape)  # |error| = 4 everywhere: MSE 16
    dist = (ref.astype(int) + noise).astype(np.uint8)
    assert psnr(ref, dist) == pytest.approx(10 * np.log10(255 ** 2 / 16))
    mask = np.zeros(ref.shape, bool)
    mask[:10] = True
    dist2 = dist.copy()
    dist2[:10] = ref[:10]
    assert psnr(ref, dist2, mask) == float("inf")
    assert psnr(ref, dist2, ~mask) == pytest.approx(10 * np.log10(255 ** 2 / 16))


def test_bd_rate_of_curves_shifted_by_a_known_factor():
    rates = np.array([100.0, 200.0, 400.0, 800.0])
    quality = np.array([30.0, 33.2, 36.1, 38.5])
    value, note = bd_rate(rates, quality, rates * 0.7, quality)
    assert value == pytest.approx(-30.0, abs=1e-6) and note == ""
    value, _ = bd_rate(rates, quality, rates * 1.25, quality)
    assert value == pytest.approx(25.0, abs=1e-6)
    assert bd_rate(rates, [1, 1, 1, 1], rates, quality)[0] is None  # saturated: no figure
    flat = [0.95, 0.96, 0.97, 0.975]
    assert bd_rate(rates, flat, rates * 0.7, flat, min_span=0.05)[1] == \
        "varies by only 0.025 over the ladder"
    # curves that share no quality at all: no figure (never NaN), and why
    assert bd_rate(rates, quality, rates, quality + 10) == \
        (None, "the quality ranges do not overlap (30.00-38.50 against 40.00-48.50)")


def test_f1_of_hand_made_boxes():
    truth = np.array([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], float)
    found = np.array([[1, 1, 11, 11, 0.9],     # matches the first (IoU 0.68)
                      [20, 20, 30, 30, 0.8],   # exact match
                      [0, 0, 10, 10, 0.5],     # duplicate of the first: false positive
                      [80, 80, 90, 90, 0.7]])  # nothing there: false positive
    assert box_iou(truth[:1], found[:1])[0, 0] == pytest.approx(81 / 119)
    tp, fp, fn = match_counts(truth, found)
    assert (tp, fp, fn) == (2, 2, 1)
    assert f1_score(tp, fp, fn) == pytest.approx(4 / 7)
    assert f1_score(0, 0, 0) == 1.0
    assert match_counts(truth, np.zeros((0, 5))) == (0, 0, 3)


def test_short_bench_run_writes_a_complete_report(tmp_path, clip, fixture_model):
    model = fixture_model("yolox_nano.onnx")
    out = tmp_path / "bench"
    code = main(["bench", str(clip("carphone_qcif_pristine.mp4")), "--ladder", "60k", "150k",
                 "--start", "50%", "--frames", "24", "--roi-model", str(model),
                 "--eval-every", "4", "--f1-min-objects", "1", "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text(),  # strict JSON: no NaN
                         parse_constant=lambda name: pytest.fail(f"results.json holds {name}"))
    (c,) = results["clips"]
    assert c["first_frame"] == 60 and c["frames"] == 24 and len(c["points"]) == 2
    for p in c["points"]:
        for kind in ("baseline", "semantic"):
            r = p[kind]
            assert r["frames"] == 24  # both encodes decode, every frame
            assert r["psnr"] > 25 and r["vmaf"] > 20 and 0 <= r["f1"] <= 1
            assert None not in (r["psnr_roi"], r["psnr_roi_own"], r["psnr_background"])
    assert c["points"][1]["semantic"]["bitrate_kbps"] > c["points"][0]["semantic"]["bitrate_kbps"]
    bd = c["bd_rate"]["semantic_vs_baseline"]
    # no F1 BD-rate: see bench/run.py
    assert set(bd) == {"psnr_roi", "psnr_roi_own", "psnr", "vmaf"}
    # carphone: a man in a car, found by YOLOX and (his face) by the own models on every frame
    for key in ("roi_coverage", "roi_coverage_own"):
        cov = c[key]
        assert cov["enough"] and cov["mbs_per_frame"] >= 16 and cov["frame_fraction"] > 0.9
    assert bd["psnr_roi"]["percent"] is not None and bd["psnr_roi_own"]["percent"] is not None
    assert 1 <= c["f1_objects"] <= 12  # the man on 6 judged frames (one every 4th)
    assert set(c["kbps_at_f1"]) == {"0.9", "0.95"}
    for need in c["kbps_at_f1"].values():
        for n in need.values():
            assert (n["kbps"] is None) == (n["note"] in ("below ladder", "not reached"))
    saving = c["f1_rate_saving"]["semantic_vs_baseline"]
    assert set(saving) == {"0.9", "0.95"} and set(saving["0.9"]) == {"percent", "note", "bound"}
    assert -1 <= c["f1_gain"]["semantic_vs_baseline"] <= 1
    summary = list(csv.DictReader(open(out / "summary.csv")))
    assert len(summary) == 1 and summary[0]["comparison"] == "semantic_vs_baseline"
    assert {"roi_mbs_per_frame", "roi_own_mbs_per_frame", "bd_psnr_roi", "bd_psnr_roi_own",
            "f1_0.9_semantic_kbps", "f1_0.95_saving", "f1_gain", "f1_objects"} <= set(summary[0])
    assert 0 < c["speed_ratio"]["semantic_vs_baseline"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4 and {r["encoder"] for r in rows} == {"baseline", "semantic"}
    assert (out / "plots" / "carphone_qcif_pristine.psnr_roi.png").stat().st_size > 1000
    report = (out / "report.md").read_text()
    assert "BD-rate semantic vs baseline" in report
    assert "| ROI share | ROI MB/frame | ROI frames | own ROI share |" in report
    assert "| kbit/s to F1 0.9 | kbit/s to F1 0.95 | mean F1 gain |" in report


def test_rate_at_f1_interpolates_log_rate_on_a_monotone_curve():
    rates = [100.0, 200.0, 400.0, 800.0]
    # 0.9 lies halfway between 0.8 (200) and 1.0 (400): halfway in log-rate is sqrt(200 * 400)
    assert rate_at_f1(rates, [0.5, 0.8, 1.0, 1.0], 0.9) == \
        (pytest.approx(np.sqrt(200 * 400)), "", None)
    assert rate_at_f1(rates, [0.5, 0.8, 1.0, 1.0], 0.8) == (pytest.approx(200.0), "", None)
    # the ladder's order does not matter, only the measured rates
    assert rate_at_f1(rates[::-1], [1.0, 1.0, 0.8, 0.5], 0.9)[0] == pytest.approx(282.8427)


def test_rate_at_f1_takes_the_running_maximum_of_a_non_monotone_curve():
    rates = [100.0, 200.0, 400.0, 800.0]
    # F1 dips at 400: the envelope stays at 0.92 there, so 0.95 is bracketed by 400 and 800
    value, note, _ = rate_at_f1(rates, [0.6, 0.92, 0.85, 0.98], 0.95)
    assert note == "" and value == pytest.approx(np.exp(np.log(400) + 0.5 * np.log(2)))
    # a dip below the target after reaching it does not undo it
    assert rate_at_f1(rates, [0.6, 0.92, 0.85, 0.98], 0.9)[0] < 200


def test_rate_at_f1_never_extrapolates():
    rates = [100.0, 200.0, 400.0]
    assert rate_at_f1(rates, [0.5, 0.7, 0.89], 0.9) == (None, "not reached", 400.0)
    assert rate_at_f1(rates, [0.91, 0.95, 0.97], 0.9) == (None, "below ladder", 100.0)
    assert rate_at_f1([], [], 0.9) == (None, "no points", None)
    assert rate_saving(200.0, 150.0) == pytest.approx(-25.0)
    assert rate_saving(None, 150.0) is None


def test_roi_bd_rate_needs_enough_macroblocks_on_enough_frames():
    big = np.zeros((9, 11), bool)
    big[2:7, 3:8] = True  # 25 macroblocks
    small = np.zeros((9, 11), bool)
    small[0, :4] = True  # 4 macroblocks
    empty = np.zeros((9, 11), bool)
    assert roi_coverage([big, big, empty, empty]) == (12.5, 0.5)
    assert roi_data_note(*roi_coverage([big, big, big, empty]), 16, 0.25) == ""
    # large enough where present, but present on too few frames
    full = np.ones((9, 11), bool)  # 99 macroblocks: 19.8 a frame on average, but 1 frame in 5
    assert roi_data_note(*roi_coverage([full] + [empty] * 4), 16, 0.25).startswith(
        "too little data")
    # on every frame, but too small
    note = roi_data_note(*roi_coverage([small] * 10), 16, 0.25)
    assert note == "too little data: 4.0 MB/frame (min 16), ROI in 100 % of frames (min 25 %)"
    assert roi_coverage([]) == (0.0, 0.0)


def test_f1_figures_need_enough_reference_objects():
    """A car park with 11 cars in the judged frames: one detection moves F1 by about 0.05, so bits to
    an F1 target and the F1 gain are "too little data", in results and in the report."""
    from edge_semvc.bench.report import summary_markdown
    from edge_semvc.bench.summary import Analysis, f1_analytics

    def point(kbps, f1_base, f1_sem, objects):
        return {"rate_setting": kbps * 1000,
                "baseline": {"bitrate_kbps": kbps, "f1": f1_base, "f1_objects": objects},
                "semantic": {"bitrate_kbps": kbps, "f1": f1_sem, "f1_objects": objects}}

    few = [point(80, 0.74, 0.80, 11), point(180, 0.95, 0.80, 11)]
    assert f1_analytics(few, ["baseline", "semantic"], Analysis()) == {
        "f1_objects": 11,
        "f1_note": "too little data: 11 reference objects on the judged frames (min 50)"}
    enough = f1_analytics(few, ["baseline", "semantic"], Analysis(f1_min_objects=10))
    assert enough["f1_gain"] == {"semantic_vs_baseline": -0.045}
    assert enough["kbps_at_f1"]["0.9"]["baseline"]["kbps"] is not None

    clip = {"clip": "parking.mp4", "width": 768, "height": 432, "frames": 2, "points": few,
            "bd_rate": {"semantic_vs_baseline": {"psnr": {"percent": -0.4, "note": ""}}},
            "speed_ratio": {"semantic_vs_baseline": 0.7},
            **f1_analytics(few, ["baseline", "semantic"], Analysis())}
    report = summary_markdown({"settings": {"roi_model": "yolox.onnx", "f1_targets": [0.9, 0.95],
                                            "f1_min_objects": 50}, "clips": [clip]})
    row = next(line for line in report.splitlines() if line.startswith("| parking.mp4"))
    assert row.count("too little data") == 3  # bits to F1 0.9 and 0.95, the mean F1 gain
    assert "- parking.mp4, detection F1: too little data: 11 reference objects" in report
    assert "finds >= 50 objects on the judged original frames" in report


def test_the_link_story_s_f1_per_phase_follows_the_same_rule():
    from edge_semvc.bench.link import _f1_figures, _f1_pair

    assert f1_data_note(50) == "" and f1_data_note(49, 50).startswith("too little data: 49")
    few, many = _f1_figures("f1_person", (9, 1, 2)), _f1_figures("f1_vehicle", (55, 5, 5))
    assert few == {"f1_person": None,
                   "f1_person_note": "too little data: 11 reference objects on the judged "
                                     "frames (min 50)"}
    assert many == {"f1_vehicle": round(f1_score(55, 5, 5), 4), "f1_vehicle_note": ""}
    assert _f1_pair(few, few, "f1_person") == "too little data"
    assert _f1_pair(many, many, "f1_vehicle") == "0.917 / 0.917"


def test_bench_refuses_bad_arguments(tmp_path, capsys):
    assert main(["bench", "x.mp4", "--roi-model", str(tmp_path / "none.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["bench", "x.mp4", "--f1-targets", "0.9", "1.5"]) == 2
    assert main(["bench", "x.mp4", "--f1-min-objects", "-1"]) == 2
    assert "--f1-min-objects takes a value >= 0, got -1" in capsys.readouterr().err
    assert main(["bench", "x.mp4", "--roi-min-frames", "2"]) == 2
    assert main(["bench", "x.mp4", "--start", "half"]) == 2
    assert "--start 'half'" in capsys.readouterr().err
    assert main(["bench", "x.mp4", "--frames", "-3"]) == 2
    text = tmp_path / "text.onnx"
    text.write_text("not a model")
    assert main(["bench", "x.mp4", "--roi-model", str(text)]) == 2
    assert f"cannot load model {text}" in capsys.readouterr().err
    for rc, ladder, message in (("crf", "99", "CRF '99' is out of range: 1 to 51"),
                                ("crf", "0.5", "CRF '0.5' is out of range"),
                                ("cbr", "inf", "invalid bitrate 'inf'"),
                                ("cbr", "0.4", "bitrate '0.4' is out of range")):
        assert main(["bench", "x.mp4", "--rc", rc, "--ladder", ladder, "30"]) == 2
        assert message in capsys.readouterr().err
    # --rc's default, cbr: the error named encoder.rc 'cbr', a key the user never set
    assert main(["bench", "x.mp4", "--profile", "storage"]) == 2
    assert "--profile storage records at a quality: it needs --rc crf, not cbr" in \
        capsys.readouterr().err
    (tmp_path / "file").write_text("")
    assert main(["bench", "x.mp4", "--out", str(tmp_path / "file")]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err


def test_a_frame_range_is_a_clip_of_its_own(clip):
    """`--start`/`--frames`: the frames come renumbered from 0, timestamps from 0."""
    from edge_semvc.bench.reference import FrameSpan, open_range
    from edge_semvc.sources import open_source

    assert FrameSpan("50%").resolve(150) == (75, None)
    assert FrameSpan("0", "50%").resolve(150) == (0, 75)
    assert FrameSpan("10", "5").resolve(None) == (10, 5)
    with pytest.raises(ConfigError, match="length is not known"):
        FrameSpan("50%").resolve(None)
    path = str(clip("foreman_cif.h264"))  # raw Annex-B: its length is counted
    whole = list(open_source(path).frames())
    part = list(open_range(path, None, FrameSpan("50%", "3")).frames())
    start = len(whole) // 2
    assert [f.index for f in part] == [0, 1, 2] and part[0].pts == 0
    assert part[1].pts == whole[start + 1].pts - whole[start].pts
    for got, want in zip(part, whole[start:]):
        assert np.array_equal(got.y, want.y)


def test_the_independent_roi_is_the_detector_s_boxes():
    from edge_semvc.bench.detector import box_mask
    from edge_semvc.bench.reference import pixels_per_macroblock

    dets = {"person": np.array([[2.5, 1.0, 10.2, 6.0, 0.9]], np.float32),
            "vehicle": np.array([[-5, 30, 40, 50, 0.8]], np.float32)}  # past the frame's edge
    mask = box_mask(dets, 36, 33)
    assert mask[1:6, 2:11].all() and mask[:1].sum() == 0 and mask[6:30].sum() == 0
    assert mask[30:].all()  # clipped to the frame
    share = pixels_per_macroblock(mask)  # a 3x3 grid of 16x16 blocks, the last ones partial
    assert share.shape == (3, 3)
    assert share[0, 0] == pytest.approx(5 * 9 / 256)  # rows 1-5, columns 2-10
    assert share[2, 2] == pytest.approx(1 * 4 / 256)  # row 32, columns 32-35


def test_ladders_in_bits_per_pixel_scale_with_the_clip():
    from edge_semvc.bench.run import resolve_ladder

    assert resolve_ladder(None, [0.1], "cbr", 640, 360, 30.0) == [691000.0]
    assert resolve_ladder([500_000.0], None, "cbr", 640, 360, 30.0) == [500_000.0]
    assert resolve_ladder(None, None, "crf", 640, 360, 30.0) == [36.0, 32.0, 28.0, 24.0]
    assert main(["bench", "x.mp4", "--bpp", "0.1", "--rc", "crf"]) == 2


def test_a_saving_with_one_side_off_the_ladder_is_a_bound():
    from edge_semvc.bench.summary import saving_bound

    def need(kbps=None, note="", bound=None):
        return {"kbps": kbps, "note": note, "bound_kbps": bound}

    never = need(note="not reached", bound=100.0)  # needs more than 100
    low = need(note="below ladder", bound=50.0)  # needs at most 50
    assert saving_bound(never, need(80.0)) == {"op": "<=", "percent": -20.0}
    assert saving_bound(need(100.0), low) == {"op": "<=", "percent": -50.0}
    assert saving_bound(low, need(60.0)) == {"op": ">=", "percent": 20.0}
    assert saving_bound(need(80.0), never) == {"op": ">=", "percent": 25.0}
    assert saving_bound(never, low) == {"op": "<=", "percent": -50.0}
    assert saving_bound(low, low) is None and saving_bound(never, never) is None


def test_a_crf_ladder_runs_without_a_vbv_cap_unless_one_is_asked_for(tmp_path, clip):
    """The placeholder bitrate that lets abr/cbr validate must not become a CRF run's VBV cap
    (it capped the anchor's IDRs at the bottom of the ladder); a user's cap stays."""
    for extra, cap in (([], 0), (["--set", "encoder.bitrate=300000"], 300)):
        out = tmp_path / f"cap{cap}"
        assert main(["bench", str(clip("carphone_qcif_pristine.mp4")), "--rc", "crf",
                     "--ladder", "30", "--frames", "6", "--no-vmaf", "--out", str(out),
                     *extra]) == 0
        (point,) = json.loads((out / "results.json").read_text())["clips"][0]["points"]
        for kind in ("baseline", "semantic"):
            assert point[kind]["encoder"]["vbv_maxrate_kbps"] == cap
        assert (out / "report.md").read_text().startswith(
            "# edge-semvc bench: encoder x264, rc=crf, preset=veryfast")


def test_the_report_names_the_encoder_backend_it_measured(tmp_path, clip):
    """report.md's heading said "rc=crf, preset=veryfast" whatever `encoder.backend` ran."""
    out = tmp_path / "bench"
    assert main(["bench", str(clip("carphone_qcif_pristine.mp4")), "--rc", "crf", "--ladder",
                 "30", "24", "--frames", "3", "--no-vmaf", "--roi-model", "none",
                 "--set", "encoder.backend=x265", "--out", str(out)]) == 0
    assert (out / "report.md").read_text().startswith(
        "# edge-semvc bench: encoder x265, rc=crf, preset=veryfast\n")


def test_a_label_schedule_gives_every_run_the_same_labels(tmp_path, clip, capsys):
    """`--label-schedule`: the first labelled encode records its model runs, every other
    encode (the other rates, the next bench run) replays them; with x264 on one thread the
    figures of two runs are the same to the last digit."""
    schedules = tmp_path / "schedules"
    figures = []
    for run in ("recorded", "replayed"):
        out = tmp_path / run
        assert main(["bench", str(clip("carphone_qcif_pristine.mp4")), "--ladder", "60k", "150k",
                     "--frames", "24", "--no-vmaf", "--roi-model", "none", "--label-schedule",
                     str(schedules), "--set", "encoder.threads=1", "--out", str(out)]) == 0
        (c,) = json.loads((out / "results.json").read_text())["clips"]
        figures.append((c["bd_rate"], [p["semantic"]["bytes"] for p in c["points"]]))
    (path,) = schedules.iterdir()
    assert path.name == "carphone_qcif_pristine.0+24.json"
    assert json.loads(path.read_text())["frames"] == 24
    log = capsys.readouterr()
    assert "label timing recorded in" in log.err + log.out
    assert "label timing replayed from" in log.err + log.out
    assert figures[0] == figures[1]


def test_a_live_camera_s_label_timing_is_recorded_for_the_bench(tmp_path, clip):
    """bench.live_labels plays the range at the clip's frame rate with the live budget and
    writes a schedule `bench --label-schedule` replays (whole views only: no tiles)."""
    from edge_semvc.bench import live_labels
    from edge_semvc.labeler.schedule import Replay

    assert live_labels.main([str(clip("carphone_qcif_pristine.mp4")), "--frames", "12",
                             "--schedules", str(tmp_path)]) == 0
    (path,) = tmp_path.iterdir()
    assert path.name == "carphone_qcif_pristine.0+12.json"
    doc = json.loads(path.read_text())
    assert doc["frames"] == 12 and doc["runs"][0] == {"frame": 0, "models": [0, 1, 2],
                                                      "arrived": 0}
    Replay.load(str(path), doc["models"])  # a schedule a file encode can replay


def test_glass_to_glass_reads_each_frame_s_number_from_the_decoded_picture(clip):
    """bench.link burns the frame number into the picture: it comes back from a real x264
    encode at a low rate (CBR 100 kbit/s, decoded by FFmpeg), and a picture without it reads
    as none."""
    import av

    from edge_semvc.bench.link import burn_stamp, read_stamp
    from edge_semvc.encoders import EncoderSettings, get_encoder
    from edge_semvc.sources import open_source

    src = open_source(str(clip("street_pedestrians_vtest_768x576.avi")))
    frames = [f for _, f in zip(range(6), src.frames())]
    src.close()
    numbers = [0, 1, 2, 40000, 65535, 12345]
    for f, n in zip(frames, numbers):
        f.index = n
        burn_stamp(f)
    f0 = frames[0]
    enc = get_encoder("x264")(EncoderSettings(
        width=f0.width, height=f0.height, fps=Fraction(25), time_base=Fraction(1, 25),
        tune="zerolatency", rc="cbr", bitrate=100_000))
    data = b"".join(bytes(p.data) for f in frames for p in enc.encode(f, None))
    data += b"".join(bytes(p.data) for p in enc.flush())
    enc.close()
    codec = av.CodecContext.create("h264", "r")
    packets = codec.parse(data) + codec.parse(None)  # the parser keeps the last until told
    pictures = [f for p in packets for f in codec.decode(p)] + codec.decode(None)
    assert [read_stamp(p.to_ndarray(format="gray")) for p in pictures] == numbers
    assert read_stamp(np.full((64, 320), 128, np.uint8)) is None


def test_a_stop_between_two_encodes_ends_the_bench_with_what_it_has(tmp_path, clip,
                                                                     monkeypatch):
    """Ctrl-C while an encode is judged (most of a bench's time) was ignored, and every later
    one with it: the bench ran to its end. A stop now ends it with exit 130, the finished rate
    points written and marked incomplete (one inside an encode lost the clip's points and said
    "before any frame was encoded"). The signal is sent as the third judging starts: the first
    rate point is done, the second is not."""
    import os
    import signal

    from edge_semvc.bench import run as bench_run

    judged, evaluate = [], bench_run.evaluate

    def judge(*args, **kwargs):
        judged.append(args[0])
        if len(judged) == 3:
            os.kill(os.getpid(), signal.SIGINT)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(bench_run, "evaluate", judge)
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    out = tmp_path / "bench"
    (out / "results.csv").parent.mkdir()
    (out / "results.csv").write_text("an earlier run's rows\n")
    try:
        code = main(["bench", str(clip("carphone_qcif_pristine.mp4")), "--ladder", "60k",
                     "150k", "300k", "--frames", "6", "--no-vmaf", "--roi-model", "none",
                     "--out", str(out)])
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert code == 130 and len(judged) == 3
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] is False
    assert results["interrupted"] == ("interrupted (SIGINT): 0 of 1 clips complete, 1 of 3 "
                                      "rate points of carphone_qcif_pristine.mp4")
    (c,) = results["clips"]
    assert [p["rate_setting"] for p in c["points"]] == [60000] and c["ladder_points"] == 3
    assert len(list(csv.DictReader(open(out / "results.csv")))) == 2
    report = (out / "report.md").read_text()
    assert "**Incomplete**: interrupted (SIGINT)" in report and "1 of 3 rates" in report


def test_a_clip_that_cannot_be_opened_is_refused_before_any_work(tmp_path, clip, capsys):
    """A missing second clip was found when its turn came, after the first clip's whole
    bench (an hour on the full clips); every clip is opened before the first encode now."""
    out = tmp_path / "bench"
    missing = tmp_path / "missing.mp4"
    assert main(["bench", str(clip("carphone_qcif_pristine.mp4")), str(missing), "--ladder",
                 "60k", "150k", "--frames", "2", "--no-vmaf", "--roi-model", "none", "--out",
                 str(out)]) == 2
    assert f"input file not found: {missing}" in capsys.readouterr().err
    assert not out.exists()  # nothing was encoded


@pytest.mark.parametrize("ladder, message", [
    (["--ladder", "150k", "150000"], "--ladder 150k 150k: each rate point must be distinct"),
    (["--rc", "crf", "--ladder", "30", "30"], "--ladder 30 30: each rate point must be"),
    (["--bpp", "0.01", "0.011"], "--bpp 0.01 0.011 gives 8000, 8000 bit/s at 176x144, 29.97 fps"
                                 " (rounded to 1 kbit/s): each rate point must be distinct"),
    (["--bpp", "0.0001", "0.001"], "gives 0, 1000 bit/s at 176x144"),
    (["--ladder", "120k", "200.2k", "200400"], "--ladder 120k 200200 200400: 200200 and 200400"
                                               " all run at 200 kbit/s (x264 and x265 take"),
])
def test_a_ladder_whose_points_coincide_is_refused(tmp_path, clip, capsys, ladder, message):
    """Two equal rate points encoded twice into one file and read as "quality does not rise
    strictly with rate" (so did two that x264 and x265 run at one whole kbit/s, 200.2k and
    200.4k: two names, one encode); a bit-per-pixel point that rounded to 0 stopped the run after the
    reference with "rc='cbr' needs a bitrate"."""
    out = tmp_path / "bench"
    assert main(["bench", str(clip("carphone_qcif_pristine.mp4")), *ladder, "--frames", "4",
                 "--no-vmaf", "--roi-model", "none", "--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


def test_rate_points_read_as_typed_in_file_names_csv_and_report(tmp_path, clip, capsys):
    """`{rate:g}` named the encodes `...semantic.1.2e+06.mp4` and wrote `1.2e+06` in report.md
    and the progress lines; results.csv keeps whole bits/s a spreadsheet reads exactly."""
    out = tmp_path / "bench"
    assert main(["bench", str(clip("carphone_qcif_pristine.mp4")), "--ladder", "1200k",
                 "2500500", "--frames", "3", "--no-vmaf", "--roi-model", "none",
                 "--out", str(out)]) == 0
    assert sorted(p.name for p in (out / "encodes").iterdir()) == [
        f"carphone_qcif_pristine.{kind}.{rate}.mp4" for kind in ("baseline", "semantic")
        for rate in ("1200k", "2500500")]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [r["rate_setting"] for r in rows] == ["1200000"] * 2 + ["2500500"] * 2
    report = (out / "report.md").read_text()
    assert "| 1200k | semantic |" in report and "| 2500500 | baseline |" in report
    assert "e+0" not in report and "  1200k semantic " in capsys.readouterr().err


def test_a_bit_per_pixel_ladder_is_whole_bits_per_second(tmp_path, clip):
    from edge_semvc.bench.report import rate_label
    from edge_semvc.bench.run import resolve_ladder

    rates = resolve_ladder(None, [0.1, 1.0], "cbr", 1920, 1080, 30.0)
    assert rates == [6221000, 62208000] and all(isinstance(r, int) for r in rates)
    assert [rate_label(r, "cbr") for r in rates] == ["6221k", "62208k"]
    assert rate_label(22.5, "crf") == "22.5" and rate_label(30.0, "crf") == "30"

"""Metric code against known values, and a short real bench run."""
import csv
import json

import numpy as np
import pytest

from edge_semvc.bench.metrics import bd_rate, box_iou, f1_score, match_counts, psnr
from edge_semvc.cli import main


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
                 "--frames", "24", "--roi-model", str(model), "--eval-every", "4",
                 "--out", str(out)])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    (c,) = results["clips"]
    assert c["frames"] == 24 and len(c["points"]) == 2
    for p in c["points"]:
        for kind in ("baseline", "semantic"):
            r = p[kind]
            assert r["frames"] == 24  # both encodes decode, every frame
            assert r["psnr"] > 25 and r["vmaf"] > 20 and 0 <= r["f1"] <= 1
            assert r["psnr_roi"] is not None and r["psnr_background"] is not None
    assert c["points"][1]["semantic"]["bitrate_kbps"] > c["points"][0]["semantic"]["bitrate_kbps"]
    bd = c["bd_rate"]["semantic_vs_baseline"]
    assert set(bd) == {"psnr_roi", "psnr", "vmaf", "f1"}
    assert bd["psnr_roi"]["percent"] is not None
    assert 0 < c["speed_ratio"]["semantic_vs_baseline"]
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 4 and {r["encoder"] for r in rows} == {"baseline", "semantic"}
    assert (out / "plots" / "carphone_qcif_pristine.psnr_roi.png").stat().st_size > 1000
    assert "BD-rate semantic vs baseline" in (out / "report.md").read_text()


def test_bench_refuses_bad_arguments(tmp_path, capsys):
    assert main(["bench", "x.mp4", "--roi-model", str(tmp_path / "none.onnx")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_ladders_in_bits_per_pixel_scale_with_the_clip():
    from edge_semvc.bench.run import resolve_ladder

    assert resolve_ladder(None, [0.1], "cbr", 640, 360, 30.0) == [691000.0]
    assert resolve_ladder([500_000.0], None, "cbr", 640, 360, 30.0) == [500_000.0]
    assert resolve_ladder(None, None, "crf", 640, 360, 30.0) == [36.0, 32.0, 28.0, 24.0]
    assert main(["bench", "x.mp4", "--bpp", "0.1", "--rc", "crf"]) == 2

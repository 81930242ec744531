"""`python -m edge_semvc.bench.intra_refresh`: peaks over 100 ms windows, refresh against IDRs."""
import json
from fractions import Fraction

import numpy as np
import pytest

from edge_semvc.bench.intra_refresh import main, window_ratios


def test_windows_are_about_100_ms_and_slide_by_one_frame():
    # 30 fps: 3-frame windows; 12.5 kbit a frame is 375 kbit/s, the target
    sizes = [1000] * 3 + [1562] * 9 + [15620] + [1562] * 5
    w = window_ratios(sizes, Fraction(30), 375, start=3)
    assert len(w) == len(sizes) - 3 - 2
    assert w[0] == pytest.approx(3 * 1562 * 8 / 0.1 / 375_000)  # about 1: on target
    assert w.max() == pytest.approx((15620 + 2 * 1562) * 8 / 0.1 / 375_000)
    assert np.argmax(w) == 7  # the windows that hold the big frame: starts 7, 8, 9 (ties: first)


def test_refresh_has_lower_peaks_than_idrs_on_a_clip(tmp_path, clip, capsys):
    out = tmp_path / "r.json"
    src = clip("street_pedestrians_vtest_768x576.avi")
    assert main([str(src), "--rates", "800", "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    assert (result["keyint"], result["window_ms"], result["too_little_data"]) == (10, 100, False)
    (row,) = result["rows"]
    assert row["idr"]["peak"] > 2 * row["refresh"]["peak"]  # the I-frame bursts are gone
    for mode in ("idr", "refresh"):  # both hold the CBR target on average
        assert 0.9 < row[mode]["mean"] < 1.1 and row[mode]["psnr"] > 30
    assert "peak / target" in capsys.readouterr().out

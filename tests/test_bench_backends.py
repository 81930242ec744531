"""`python -m edge_semvc.bench.backends`: two encoders on one clip, BD-rate and speed ratio."""
import json

import pytest

from edge_semvc.bench.backends import main
from edge_semvc.encoders import get_encoder


def test_x265_against_x264_on_a_clip(tmp_path, clip, capsys):
    src = clip("foreman_cif.h264")
    ok, why = get_encoder("x265").available()
    if not ok:
        pytest.skip(f"x265 unavailable: {why}")
    out = tmp_path / "r.json"
    assert main([str(src), "--frames", "12", "--ladder", "24", "30", "36",
                 "--json", str(out)]) == 0
    (result,) = json.loads(out.read_text())
    assert [p["crf"] for p in result["points"]["x265"]] == [24, 30, 36]
    for points in result["points"].values():  # more CRF, fewer bits and less quality
        assert points[0]["kbps"] > points[-1]["kbps"] and points[0]["psnr"] > points[-1]["psnr"]
    v = result["vs_first"]["x265"]
    assert v["bd_rate_psnr"] is not None and v["speed_ratio"] > 0
    assert "x265 vs x264" in capsys.readouterr().out

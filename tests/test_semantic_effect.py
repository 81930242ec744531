"""The map takes effect: same CBR bitrate, semantic map vs plain x264 (no map), real clips,
measured on the decoded output."""

import pytest

from edge_semvc.bench.run import bench_clip
from edge_semvc.config import load_config


@pytest.mark.parametrize("name, bitrate, frames", [
    ("carphone_qcif_pristine.mp4", 120_000, 60),
    ("foreman_cif.h264", 250_000, 60),
])
def test_roi_gains_and_background_pays_at_equal_bitrate(tmp_path, clip, name, bitrate, frames):
    cfg = load_config(None, ["encoder.rc=cbr", f"encoder.bitrate={bitrate}"])
    (tmp_path / "encodes").mkdir()
    r = bench_clip(str(clip(name)), cfg, [bitrate], ["baseline", "semantic"], tmp_path,
                   tmp_path, None, None, 1, False, frames, lambda *_: None)
    point = r["points"][0]
    base, sem = point["baseline"], point["semantic"]
    assert r["frames"] == frames and r["roi_fraction"] > 0.1
    # Equal bitrate (CBR), within 5 %.
    assert sem["bitrate_kbps"] == pytest.approx(base["bitrate_kbps"], rel=0.05)
    assert sem["psnr_roi"] > base["psnr_roi"] + 0.5
    assert sem["psnr_background"] < base["psnr_background"]

"""The map takes effect: same CBR bitrate, semantic map vs plain x264 (no map), real clips,
measured on the decoded output."""

import pytest

from edge_semvc.bench.detector import YoloxDetector
from edge_semvc.bench.reference import FrameSpan
from edge_semvc.bench.run import BenchOptions, bench_clip
from edge_semvc.config import load_config


@pytest.mark.parametrize("name, bitrate, frames", [
    ("carphone_qcif_pristine.mp4", 120_000, 60),
    ("foreman_cif.h264", 250_000, 60),
])
def test_roi_gains_and_background_pays_at_equal_bitrate(tmp_path, clip, fixture_model, name,
                                                         bitrate, frames):
    """On close-ups the map's own ROI (the face) gains; outside the independent detector's
    person box (YOLOX on the originals) the background pays."""
    cfg = load_config(None, ["encoder.rc=cbr", f"encoder.bitrate={bitrate}"])
    (tmp_path / "encodes").mkdir()
    detector = YoloxDetector(fixture_model("yolox_nano.onnx"))
    r = bench_clip(str(clip(name)), cfg, BenchOptions(
        ["baseline", "semantic"], tmp_path, tmp_path, ladder=[bitrate], detector=detector,
        span=FrameSpan(count=str(frames)), log=lambda *_: None))
    point = r["points"][0]
    base, sem = point["baseline"], point["semantic"]
    assert r["frames"] == frames and r["roi_fraction"] > 0.1 and r["roi_fraction_own"] > 0.1
    assert sem["psnr_roi_own"] > base["psnr_roi_own"] + 0.5
    # Equal bitrate (CBR), within 5 %.
    assert sem["bitrate_kbps"] == pytest.approx(base["bitrate_kbps"], rel=0.05)
    assert sem["psnr_background"] < base["psnr_background"]


def _write_y4m(path, frames=12, w=320, h=176):
    """A still clip with nothing to label: a smooth gradient (a clear sky)."""
    import numpy as np

    yy, xx = np.mgrid[0:h, 0:w]
    y = (60 + 0.4 * xx + 0.3 * yy).astype(np.uint8).tobytes()
    with open(path, "wb") as f:
        f.write(f"YUV4MPEG2 W{w} H{h} F25:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(frames):
            f.write(b"FRAME\n" + y + np.full(w * h // 2, 128, np.uint8).tobytes())


def test_nothing_labelled_means_exactly_plain_x264(tmp_path):
    """Where the labeler finds nothing, x264 gets no map at all: the stream is byte-identical
    to --no-map (a uniform +1.5 QP map, sent before, gives other bytes on this very clip)."""
    from edge_semvc.pipeline import run_encode
    from edge_semvc.sources import open_source

    clip = tmp_path / "sky.y4m"
    _write_y4m(clip)
    cfg = load_config(None, ["encoder.rc=cbr", "encoder.bitrate=200000", "encoder.threads=1"])
    outs = {}
    for semantic in (True, False):
        out = tmp_path / f"{semantic}.h264"
        src = open_source(str(clip))
        try:
            stats = run_encode(src, str(out), cfg, semantic=semantic)
        finally:
            src.close()
        outs[semantic] = out.read_bytes()
        if semantic:
            assert stats["frames"] == 12 and stats["frames_with_map"] == 0
            assert stats["label_coverage"]["background"] == 1.0
    assert outs[True] == outs[False]

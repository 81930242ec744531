"""The rate control follows from what the user gave (jetson-utils' convention): a bitrate alone
is the target, a CRF alone is CRF, both a CRF capped by the bitrate, CRF with a bitrate target
an error. Real x264 encodes of a real clip; the bytes are measured."""
import json
import subprocess
import sys

import pytest

from edge_semvc.config import load_config
from edge_semvc.errors import ConfigError

CLIP = "foreman_cif.h264"  # 352x288, 25 fps, steady motion
FRAMES = 150  # 6 s: several 1 s VBV windows


def encode(tmp_path, clip, *options):
    out, stats = tmp_path / "out.mp4", tmp_path / "s.json"
    r = subprocess.run([sys.executable, "-m", "edge_semvc", "encode", str(clip(CLIP)), str(out),
                        "--frames", str(FRAMES), "--stats-json", str(stats), *options],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    return json.loads(stats.read_text()), r.stdout


def test_a_bitrate_alone_is_the_target(tmp_path, clip):
    s, summary = encode(tmp_path, clip, "--bitrate", "300k")
    assert s["encoder"]["rc"] == "cbr"
    # the stream's own rate (container overhead aside) within 15% of the target
    assert 300 * 0.85 < s["bitrate_kbps"] < 300 * 1.15, s["bitrate_kbps"]
    assert "rate control: cbr, target 300 kbit/s (chosen: a bitrate alone is the target)" \
        in summary


def test_a_bitrate_x264_cannot_take_is_said_as_it_runs(tmp_path, clip):
    """x264 takes whole kbit/s: 1499 bits/s runs at 1 kbit/s, and the summary says so."""
    _, summary = encode(tmp_path, clip, "--bitrate", "1499", "--rc", "cbr")
    assert "rate control: cbr, target 1.499 kbit/s (the encoder runs 1 kbit/s: whole kbit/s)" \
        in summary


def test_crf_alone_and_crf_capped_by_a_bitrate(tmp_path, clip):
    free, summary = encode(tmp_path, clip, "--crf", "20")
    assert free["encoder"]["rc"] == "crf" and "rate control: crf 20\n" in summary
    capped, summary = encode(tmp_path, clip, "--crf", "20", "--bitrate", "150k")
    assert capped["encoder"]["rc"] == "crf"
    assert "rate control: crf 20, capped at 150 kbit/s (VBV)" in summary
    # CRF 20 on this clip wants far more than 150 kbit/s: the cap is what bounds it
    assert free["bitrate_kbps"] > 2 * 150
    assert capped["bitrate_kbps"] < 150 * 1.15


def test_crf_with_a_bitrate_target_is_refused(tmp_path, clip):
    r = subprocess.run([sys.executable, "-m", "edge_semvc", "encode", str(clip(CLIP)),
                        str(tmp_path / "o.mp4"), "--crf", "20", "--rc", "cbr", "--bitrate", "1M"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    assert "--crf 20 goes with --rc crf, not --rc cbr" in r.stderr
    assert not (tmp_path / "o.mp4").exists()


def test_the_configuration_file_follows_the_same_rule():
    assert load_config(None, ["encoder.bitrate=800000"]).encoder.rate_control() == "cbr"
    assert load_config(None).encoder.rate_control() == "crf"
    assert load_config(None, ["encoder.bitrate=800000", "encoder.rc=crf"]
                       ).encoder.rate_control() == "crf"
    # the storage profile is quality-targeted: the bitrate caps its CRF
    assert load_config(None, ["encoder.bitrate=800000", "encoder.profile=storage"]
                       ).encoder.rate_control() == "crf"
    with pytest.raises(ConfigError, match="encoder.rc"):
        load_config(None, ["encoder.rc=cqp"])

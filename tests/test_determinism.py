"""The demo's output in deterministic mode (labeler.cpu_budget 0: fixed model intervals, no
clock; encoder.threads 1: x264 without thread races) is byte-identical from run to run and
across refactors: the hashes were recorded from main before issue 21 reshaped the run loop and
unified the scene cut. A change that moves a hash changes what the demo encodes: say why in the
commit, then record the new hash."""
import hashlib

import pytest

from edge_semvc.config import load_config
from edge_semvc.pipeline import run_encode
from edge_semvc.sources import open_source

DETERMINISTIC = ["labeler.cpu_budget=0", "encoder.threads=1"]
FRAMES = 45  # half the demo clip: labels, carried labels, maps and the storage decisions

# name -> (extra settings, semantic, sha256 of the .mp4, recorded on main at a1f6ef0)
EXPECTED = {
    "semantic": ((), True, "8881a0502a9aeb1c22e656a3d25f5256f5325d4f015da17a798fe3301f13307a"),
    "plain": ((), False, "378e86f3bbbe88b2da3c82bb56dca82a8ae34bb1262c23217592aa1cdd9785a7"),
    "storage": (("encoder.profile=storage",), True,
                "f25edf818039bc497b918299f31bfea9bed6d25be7fe6172bddb6a70d02fe259"),
    "plain+storage": (("encoder.profile=storage",), False,
                      "02a4ad8ce4a1444a96a521a2fee9e6b67aebe73dce6777785f88e2a12279eeee"),
    "scene+storage": (("scene.enabled=true", "attention.enabled=true",
                       "encoder.profile=storage"), True,
                      "d594e80fe48dbeafae01a392f0971a859d0d3f00dedb368990650f44ee1aa3a1"),
}


def _encode(tmp_path, extra, semantic) -> str:
    cfg = load_config(overrides=[*DETERMINISTIC, *extra])
    out = tmp_path / "demo.mp4"
    run_encode(open_source("demo://astronaut"), str(out), cfg, semantic=semantic,
               max_frames=FRAMES)
    return hashlib.sha256(out.read_bytes()).hexdigest()


@pytest.mark.parametrize("name", EXPECTED)
def test_demo_output_is_byte_identical(tmp_path, name):
    extra, semantic, expected = EXPECTED[name]
    assert _encode(tmp_path, extra, semantic) == expected, name

"""Encoder.encode(..., force_idr=True): an IDR exactly on the asked frames (x264, real clip)."""
from __future__ import annotations

from fractions import Fraction

import encoders_helpers as helpers
import pytest

from edge_semvc.encoders import EncoderSettings

TB = Fraction(1, 10)

x264 = pytest.importorskip("edge_semvc.encoders.x264")
X264Encoder = x264.X264Encoder


@pytest.fixture(scope="module")
def street():
    helpers.require(X264Encoder)
    return helpers.load_frames("street_pedestrians_vtest_768x576.avi", 40, TB)


@pytest.mark.parametrize("params", [{}, {"open-gop": "1"}], ids=["closed-gop", "open-gop"])
def test_forced_idr_exactly_there_and_each_decodes_alone(street, params):
    s = EncoderSettings(width=768, height=576, fps=Fraction(10), time_base=TB, threads=1,
                        params=params)
    force = {7, 20, 21, 33}
    packets = helpers.encode(X264Encoder, street, s, force=force)
    # the clip has no scene cut and keyint is 250: keyframes are frame 0 and the forced ones
    assert sorted(p.pts for p in packets if p.keyframe) == [0, *sorted(force)]
    for p in packets:  # IDR slices, not I-frames (open GOP)
        assert (5 in helpers.nal_types(p.data, "h264")) == p.keyframe
    helpers.check_each_decodes_alone(packets, len(street), force, "h264")


def test_force_idr_false_is_byte_identical(street):
    s = EncoderSettings(width=768, height=576, fps=Fraction(10), time_base=TB, threads=1)
    helpers.check_force_idr_false_changes_nothing(X264Encoder, street[:12], s)

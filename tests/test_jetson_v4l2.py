"""The Jetson V4L2 backend: its pure-Python parts for real (ROI planning, settings -> V4L2
controls, Annex-B handling); the C part compiled where the JetPack header exists; encoding only
on a Jetson (skipped elsewhere, with the reason)."""
from __future__ import annotations

import io
from fractions import Fraction

import encoders_helpers as helpers
import numpy as np
import pytest

from edge_semvc.encoders import EncoderError, EncoderSettings, get_encoder, known_encoders
from edge_semvc.encoders import jetson_v4l2 as jv
from edge_semvc.encoders import jetson_v4l2_binding as jb
from edge_semvc.frame import Frame
from edge_semvc.values import QpMap, Rect

TB = Fraction(1, 25)


def settings(**kw) -> EncoderSettings:
    base = dict(width=640, height=360, fps=Fraction(25), time_base=TB, rc="cbr", bitrate=800_000)
    base.update(kw)
    return EncoderSettings(**base)


# --- the QP map as 8 rectangles -----------------------------------------------------------------

def test_integer_map_is_sent_exactly():
    m = np.full((23, 40), 2.0, np.float32)
    m[5:12, 10:20] = -6
    plan = jv.plan_rois(m)
    assert 0 < len(plan.rects) <= jv.MAX_ROI
    assert all(isinstance(r.delta, int) for r in plan.rects)
    assert plan.mse_rects == plan.mse_total == plan.max_rounding == 0
    np.testing.assert_array_equal(QpMap.from_rects(list(plan.rects), m.shape).offsets, m)


def test_fractional_deltas_are_rounded_and_the_error_reported():
    m = np.full((23, 40), 1.3, np.float32)
    m[5:12, 10:20] = -4.6
    plan = jv.plan_rois(m)
    assert sorted({r.delta for r in plan.rects}) == [-5, 1]
    assert plan.mse_rects == pytest.approx(0, abs=1e-9)  # the cut itself is exact here
    applied = QpMap.from_rects(list(plan.rects), m.shape).offsets
    assert plan.mse_total == pytest.approx(float(np.mean((applied - m) ** 2)))
    assert plan.mse_total == pytest.approx((850 * 0.3**2 + 70 * 0.4**2) / 920, rel=1e-4)
    assert plan.max_rounding == pytest.approx(0.4, abs=1e-5)


def test_deltas_are_clamped_to_the_limit():
    m = np.zeros((10, 10), np.float32)
    m[2:5, 2:5] = -30
    plan = jv.plan_rois(m, limit=12)
    assert [r.delta for r in plan.rects] == [-12]
    assert plan.max_rounding == pytest.approx(18)


def test_small_offsets_need_no_rectangle_and_busy_maps_fit_eight():
    assert jv.plan_rois(np.full((9, 16), 0.3, np.float32)).rects == ()
    assert jv.plan_rois(np.zeros((9, 16), np.float32)).rects == ()
    rng = np.random.default_rng(0)
    busy = np.rint(rng.normal(0, 4, (45, 80))).astype(np.float32)
    plan = jv.plan_rois(busy)
    assert len(plan.rects) <= jv.MAX_ROI
    assert plan.mse_total >= plan.mse_rects > 0


def test_rectangles_in_pixels_are_clipped_to_the_frame():
    # 854x480: 54 macroblock columns, the last one 6 pixels wide
    rects = [Rect(50, 28, 4, 2, -3), Rect(0, 0, 2, 1, 4)]
    assert jv.roi_pixels(rects, 854, 480) == [(800, 448, 54, 32, -3), (0, 0, 32, 16, 4)]


def test_delta_limit_is_the_span_of_the_qp_range():
    assert jv.delta_limit(None, None) == 51
    assert jv.delta_limit(10, 40) == 30
    assert jv.delta_limit(20, None) == 31


# --- settings -> controls -----------------------------------------------------------------------

def test_crf_is_refused_naming_what_to_use():
    with pytest.raises(EncoderError, match=r"rc='crf' is not available.*'abr'.*'cbr'"):
        jv.build_params(settings(rc="crf", bitrate=None))


@pytest.mark.parametrize("rc", ["cqp", "qp"])
def test_constant_qp_is_refused(rc):
    with pytest.raises(EncoderError, match="constant-QP"):
        jv.build_params(settings(rc=rc))


def test_equal_min_and_max_qp_are_refused_because_they_disable_roi():
    with pytest.raises(EncoderError, match=r"min_qp == max_qp \(30\).*map would do nothing"):
        jv.build_params(settings(params={"min_qp": 30, "max_qp": 30}))


@pytest.mark.parametrize("params, message", [
    ({"min_qp": 40, "max_qp": 20}, "min_qp 40 > max_qp 20"),
    ({"min_qp": 60}, "invalid min_qp 60: between 0 and 51"),
    ({"max_qp": "high"}, "invalid max_qp 'high'"),
    ({"qp_max": 40}, "unknown jetson-v4l2 param.*'qp_max'.*known: codec, min_qp"),
    ({"codec": "vp9"}, "invalid codec 'vp9'; use h264 or hevc"),
    ({"peak_bitrate": 500_000}, "peak_bitrate 500000 is below the bitrate 800000"),
])
def test_bad_params_are_refused(params, message):
    with pytest.raises(EncoderError, match=message):
        jv.build_params(settings(rc="abr", params=params))


def test_cbr_controls():
    p = jv.build_params(settings(keyint=50, params={"min_qp": 10, "max_qp": 45}))
    assert (p.codec, p.min_qp, p.max_qp) == ("h264", 10, 45)
    assert p.controls() == [
        ("V4L2_CID_MPEG_VIDEO_BITRATE", 800_000),
        ("V4L2_CID_MPEG_VIDEO_H264_PROFILE", "V4L2_MPEG_VIDEO_H264_PROFILE_HIGH"),
        ("V4L2_CID_MPEG_VIDEO_BITRATE_MODE", "V4L2_MPEG_VIDEO_BITRATE_MODE_CBR"),
        ("V4L2_CID_MPEG_VIDEO_IDR_INTERVAL", 50),  # every I-frame an IDR, as x264's keyint
        ("V4L2_CID_MPEG_VIDEO_GOP_SIZE", 50),
        ("V4L2_CID_MPEG_VIDEOENC_HW_PRESET_TYPE_PARAM", "V4L2_ENC_HW_PRESET_FAST"),
        ("V4L2_CID_MPEG_VIDEOENC_NUM_BFRAMES", 0),
        ("V4L2_CID_MPEG_VIDEOENC_INSERT_SPS_PPS_AT_IDR", 1),
    ]


def test_vbr_hevc_controls():
    s = settings(rc="abr", bitrate=2_000_000, keyint=30, preset="slow",
                 params={"codec": "h265", "peak_bitrate": "3000000", "idr_interval": "90"})
    p = jv.build_params(s)
    c = dict(p.controls())
    assert p.codec == "hevc" and p.rate_control == "vbr"
    assert c["V4L2_CID_MPEG_VIDEO_BITRATE_MODE"] == "V4L2_MPEG_VIDEO_BITRATE_MODE_VBR"
    assert c["V4L2_CID_MPEG_VIDEO_BITRATE_PEAK"] == 3_000_000
    assert c["V4L2_CID_MPEG_VIDEO_H265_PROFILE"] == "V4L2_MPEG_VIDEO_H265_PROFILE_MAIN"
    assert (c["V4L2_CID_MPEG_VIDEO_GOP_SIZE"], c["V4L2_CID_MPEG_VIDEO_IDR_INTERVAL"]) == (30, 90)
    assert c["V4L2_CID_MPEG_VIDEOENC_HW_PRESET_TYPE_PARAM"] == "V4L2_ENC_HW_PRESET_SLOW"
    assert "V4L2_CID_MPEG_VIDEO_H264_PROFILE" not in c


def test_default_intervals_are_the_encoders_and_caller_idr_turns_them_off():
    c = dict(jv.build_params(settings()).controls())
    assert "V4L2_CID_MPEG_VIDEO_GOP_SIZE" not in c and "V4L2_CID_MPEG_VIDEO_IDR_INTERVAL" not in c
    s = settings(keyint=50)
    s.caller_idr = True  # the pipeline places every IDR (storage profile)
    c = dict(jv.build_params(s).controls())
    assert c["V4L2_CID_MPEG_VIDEO_GOP_SIZE"] == c["V4L2_CID_MPEG_VIDEO_IDR_INTERVAL"] == \
        jv.NO_KEYFRAMES


def test_intra_refresh_replaces_idrs():
    p = jv.build_params(settings(keyint=30, intra_refresh=True))
    c = dict(p.controls())
    assert p.intra_refresh == 30
    assert c["V4L2_CID_MPEG_VIDEO_GOP_SIZE"] == c["V4L2_CID_MPEG_VIDEO_IDR_INTERVAL"] == \
        jv.NO_KEYFRAMES  # one IDR at the start
    assert jv.build_params(settings(intra_refresh=True)).intra_refresh == jv.REFRESH_PERIOD
    with pytest.raises(EncoderError, match="idr_interval with intra_refresh"):
        jv.build_params(settings(intra_refresh=True, params={"idr_interval": 60}))


@pytest.mark.parametrize("kw, change, want", [
    (dict(), 300_000, [("V4L2_CID_MPEG_VIDEO_BITRATE", 300_000)]),
    (dict(rc="abr", bitrate=2_000_000, params={"peak_bitrate": "3000000"}), 1_000_000,
     [("V4L2_CID_MPEG_VIDEO_BITRATE", 1_000_000),
      ("V4L2_CID_MPEG_VIDEO_BITRATE_PEAK", 1_500_000)]),  # the peak keeps its ratio
])
def test_a_live_change_sets_the_runtime_controls_only(kw, change, want):
    s = jv.retuned(settings(**kw), change, 23.0, "jetson-v4l2")
    assert jv.build_params(s).live_controls() == want
    assert {n for n, _ in want} <= set(jv.LIVE_CONTROLS)


def test_a_live_change_cannot_drop_the_bitrate():
    with pytest.raises(EncoderError, match="cannot turn its VBV cap off"):
        jv.retuned(settings(), None, 23.0, "jetson-v4l2")

@pytest.mark.parametrize("kw, message", [
    (dict(preset="turbo"), "unknown preset 'turbo'"),
    (dict(tune="film"), "tune 'film' is not available"),
    (dict(width=641), "odd dimension"),
])
def test_settings_the_hardware_cannot_take(kw, message):
    with pytest.raises(EncoderError, match=message):
        jv.build_params(settings(**kw))


def test_x264_preset_names_map_to_hardware_presets():
    assert jv.build_params(settings(preset="ultrafast")).hw_preset == "ULTRAFAST"
    assert jv.build_params(settings(preset="medium", tune="zerolatency")).hw_preset == "MEDIUM"


# --- Annex-B ------------------------------------------------------------------------------------

SC = b"\x00\x00\x00\x01"


def test_h264_units():
    sps, pps, idr, p = SC + b"\x67\x42", SC + b"\x68\xce", b"\x00\x00\x01\x65\x88", SC + b"\x41\x9a"
    key = sps + pps + idr
    assert jv.split_nals(key) == [sps, pps, idr]
    assert jv.is_idr(key, "h264") and not jv.is_idr(p, "h264")
    assert jv.has_picture(p, "h264") and not jv.has_picture(sps + pps, "h264")
    assert jv.param_sets(key, "h264") == sps + pps
    assert jv.strip_param_sets(key, "h264") == idr


def test_hevc_units():
    vps, sps, pps = SC + b"\x40\x01", SC + b"\x42\x01", SC + b"\x44\x01"
    idr, trail = SC + b"\x26\x01\xaf", SC + b"\x02\x01\xd0"  # IDR_W_RADL (19), TRAIL_R (1)
    key = vps + sps + pps + idr
    assert jv.is_idr(key, "hevc") and not jv.is_idr(trail, "hevc")
    assert jv.param_sets(key, "hevc") == vps + sps + pps
    assert jv.strip_param_sets(key, "hevc") == idr
    assert jv.nal_type(SC, "hevc") == -1  # a start code with nothing after it


def test_units_of_a_real_h264_stream():
    x264 = pytest.importorskip("edge_semvc.encoders.x264")
    ok, why = x264.X264Encoder.available()
    if not ok:
        pytest.skip(f"x264 unavailable: {why}")
    f = Frame.from_rgb(np.full((64, 96, 3), 90, np.uint8), 0, TB, 0)
    s = EncoderSettings(width=96, height=64, fps=Fraction(25), time_base=TB, tune="zerolatency")
    with x264.X264Encoder(s) as enc:
        packets = enc.encode(f) + enc.encode(f) + enc.flush()
        headers = enc.headers()
    assert jv.is_idr(packets[0].data, "h264") and not jv.is_idr(packets[1].data, "h264")
    assert jv.param_sets(packets[0].data, "h264") == headers
    assert all(jv.has_picture(p.data, "h264") for p in packets)


# --- registry, availability, the C part ---------------------------------------------------------

def test_registered():
    assert "jetson-v4l2" in known_encoders()
    assert get_encoder("jetson-v4l2") is jv.JetsonV4l2Encoder


def test_settings_are_checked_before_the_device_is_needed():
    with pytest.raises(EncoderError, match="rc='crf' is not available"):
        jv.JetsonV4l2Encoder(settings(rc="crf", bitrate=None))


def test_unavailable_reason_names_what_is_missing():
    ok, why = jv.JetsonV4l2Encoder.available()
    if ok:
        pytest.skip("a Jetson encoder is available here")
    if jb.header_path()[0] is None:
        assert "v4l2_nv_extensions.h not found" in why
        assert "nvidia-l4t-jetson-multimedia-api" in why
    else:
        assert why


def test_binding_compiles_against_the_jetpack_header(tmp_path, monkeypatch):
    header, dirs = jb.header_path()
    if header is None:
        pytest.skip(f"{jb.HEADER} not found (looked in {', '.join(map(str, dirs))}): install "
                    "nvidia-l4t-jetson-multimedia-api (JetPack) or set JETSON_MMAPI_INCLUDE")
    monkeypatch.setenv("EDGE_SEMVC_CACHE", str(tmp_path))  # a real build, not a cached one
    mod = jb.build()
    assert mod.lib.V4L2_MAX_ROI_REGIONS >= jv.MAX_ROI
    for s in (settings(keyint=50), settings(rc="abr", params={"codec": "hevc",
                                                               "peak_bitrate": 10**6})):
        for name, value in jv.build_params(s).controls():  # every control resolves by name
            assert getattr(mod.lib, name) > 0
            if isinstance(value, str):
                assert getattr(mod.lib, value) >= 0
    assert mod.ffi.sizeof("semvc_roi_t") == 20
    assert mod.lib.semvc_jenc_set_intra_refresh  # the slice intra refresh control compiled


def test_encode_on_a_jetson():
    ok, why = jv.JetsonV4l2Encoder.available()
    if not ok:
        pytest.skip(f"no Jetson hardware encoder here: {why}")
    av = pytest.importorskip("av")
    s = settings(width=320, height=240, keyint=10, params={"min_qp": 10, "max_qp": 45})
    m = np.full((s.mb_h, s.mb_w), 2.0, np.float32)
    m[4:10, 6:14] = -6
    rng = np.random.default_rng(1)
    packets = []
    with jv.JetsonV4l2Encoder(s) as enc:
        for i in range(20):
            rgb = rng.integers(0, 255, (240, 320, 3), np.uint8)
            packets += enc.encode(Frame.from_rgb(rgb, i, TB, i), m, force_idr=i == 15)
        packets += enc.flush()
        summary = enc.settings_summary()
    assert len(packets) == 20 and packets[0].keyframe and packets[15].keyframe
    assert [p.pts for p in packets] == list(range(20))
    assert summary["roi"]["frames_with_rois"] == 20
    with av.open(io.BytesIO(b"".join(p.data for p in packets)), format="h264") as c:
        assert sum(1 for _ in c.decode(video=0)) == 20


def test_reconfigure_on_a_jetson():
    ok, why = jv.JetsonV4l2Encoder.available()
    if not ok:
        pytest.skip(f"no Jetson hardware encoder here: {why}")
    s = settings(width=320, height=240, bitrate=1_000_000, keyint=1000)  # no IDR of its own
    assert helpers.check_live_rate_drop(jv.JetsonV4l2Encoder, s)["bitrate"] == 200_000

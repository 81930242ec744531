"""The x264 backend: real encodes of real clips, decoded back with PyAV."""
from __future__ import annotations

import dataclasses
import logging
from fractions import Fraction

import encoders_helpers as helpers
import numpy as np
import pytest
from encoders_helpers import joined, settings_for

from edge_semvc.bench.metrics import mb_mask_to_pixels, psnr
from edge_semvc.encoders import EncoderError, EncoderSettings, get_encoder, known_encoders
from edge_semvc.encoders.base import Encoder
from edge_semvc.frame import Frame

TB = Fraction(1, 25)

x264 = pytest.importorskip("edge_semvc.encoders.x264")
binding = pytest.importorskip("edge_semvc.encoders.x264_binding")
X264Encoder = x264.X264Encoder


@pytest.fixture(scope="module", autouse=True)
def _need_x264():
    helpers.require(X264Encoder)


@pytest.fixture(scope="module")
def foreman():
    return helpers.load_frames("foreman_cif.h264", 40, TB)


@pytest.fixture(scope="module")
def carphone():
    return helpers.load_frames("carphone_qcif_pristine.mp4", 30, TB)


def encode(frames, settings, qmap=None):
    return helpers.encode(X264Encoder, frames, settings, qmap)


def decode_y(data: bytes, height: int) -> list[np.ndarray]:
    return helpers.decode(data, "h264", height)


def region_psnr(frames, data, mask_px):
    dec = decode_y(data, frames[0].height)
    assert len(dec) == len(frames)
    inside = np.mean([psnr(f.y, d, mask_px) for f, d in zip(frames, dec)])
    outside = np.mean([psnr(f.y, d, ~mask_px) for f, d in zip(frames, dec)])
    return inside, outside


def test_registry():
    assert get_encoder("x264") is X264Encoder
    assert issubclass(X264Encoder, Encoder) and X264Encoder.type_key == "x264"
    assert "x264" in known_encoders()
    with pytest.raises(EncoderError, match="x264"):
        get_encoder("no-such-encoder")


def test_map_takes_effect_at_same_cbr_rate(foreman):
    s = settings_for(foreman, rc="cbr", bitrate=250_000)
    mask = np.zeros((s.mb_h, s.mb_w), bool)
    mask[s.mb_h // 4: 3 * s.mb_h // 4, s.mb_w // 4: 3 * s.mb_w // 4] = True
    qmap = np.where(mask, -6.0, 4.0).astype(np.float32)
    px = mb_mask_to_pixels(mask, s.width, s.height)

    flat = encode(foreman, s, np.zeros_like(qmap))
    roi = encode(foreman, s, qmap)
    flat_bytes, roi_bytes = joined(flat), joined(roi)
    in0, out0 = region_psnr(foreman, flat_bytes, px)
    in1, out1 = region_psnr(foreman, roi_bytes, px)
    assert in1 > in0 + 1.5, (in0, in1)
    assert out1 < out0 - 0.5, (out0, out1)
    # CBR: the map redistributes the bits, it does not add any
    assert abs(len(roi_bytes) / len(flat_bytes) - 1) < 0.15


def test_pts_pass_through_and_headers(carphone):
    hdr, packets = helpers.check_pts_dts_and_headers(X264Encoder, carphone)
    assert hdr.startswith(b"\x00\x00\x00\x01") and hdr[4] & 0x1F == 7  # SPS first
    assert b"\x00\x00\x00\x01\x68" in hdr or b"\x00\x00\x01\x68" in hdr  # then PPS
    # in-band parameter sets by default
    assert hdr[:20] in packets[0].data


def test_global_headers_keep_sps_out_of_band(carphone):
    s = settings_for(carphone, global_headers=True)
    packets = encode(carphone[:5], s)
    first = packets[0].data
    # no SPS NAL (type 7) anywhere in the stream
    assert not any(b"\x00\x00\x01" + bytes([0x67]) in p.data for p in packets)
    assert len(decode_y(X264Encoder(s).headers() + joined(packets), s.height)) == 5
    assert first


def test_frame_pts_rescaled_and_none(carphone):
    helpers.check_pts_rescaled_and_none(X264Encoder, carphone[:10], settings_for(carphone), 6)


def test_cqp_refused():
    s = EncoderSettings(width=64, height=64, fps=Fraction(25), time_base=TB, rc="cqp")
    with pytest.raises(EncoderError, match="CQP|constant-QP"):
        X264Encoder(s)
    s = EncoderSettings(width=64, height=64, fps=Fraction(25), time_base=TB, params={"qp": "20"})
    with pytest.raises(EncoderError, match="constant-QP"):
        X264Encoder(s)
    s = EncoderSettings(width=64, height=64, fps=Fraction(25), time_base=TB,
                        params={"qpmin": "30", "qpmax": "30"})
    with pytest.raises(EncoderError, match="qpmin"):
        X264Encoder(s)


def test_ultrafast_aq_corrected_and_map_then_works(carphone, caplog):
    s = settings_for(carphone, preset="ultrafast", threads=1)  # 1 thread: deterministic bytes
    with caplog.at_level(logging.WARNING, logger="edge_semvc.encoders.x264"):
        with X264Encoder(s) as enc:
            summary = enc.settings_summary()
    assert any("aq-mode 0" in r.getMessage() and "ultrafast" in r.getMessage()
               for r in caplog.records)
    assert summary["aq_mode"] == 1 and summary["aq_strength"] > 0
    assert summary["preset"] == "ultrafast" and summary["corrections"]

    frames = carphone[:15]
    zero = np.zeros((s.mb_h, s.mb_w), np.float32)
    qmap = zero.copy()
    qmap[2:7, 3:8] = -8
    qmap[qmap == 0] = 6
    none_bytes = joined(encode(frames, s, None))
    zero_bytes = joined(encode(frames, s, zero))
    map_bytes = joined(encode(frames, s, qmap))
    assert none_bytes == zero_bytes  # a zero map is no map
    assert map_bytes != zero_bytes  # with AQ restored the map acts


def test_aq_params_corrected(caplog):
    s = EncoderSettings(width=64, height=48, fps=Fraction(25), time_base=TB,
                        params={"aq-mode": "0", "aq-strength": "0"})
    with caplog.at_level(logging.WARNING, logger="edge_semvc.encoders.x264"):
        with X264Encoder(s) as enc:
            summary = enc.settings_summary()
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "aq-mode=0" in text and "aq-strength" in text
    assert summary["aq_mode"] == 1 and summary["aq_strength"] == pytest.approx(1.0)


@pytest.mark.parametrize("kw, name", [
    ({"preset": "superduperfast"}, "superduperfast"),
    ({"tune": "cinematic"}, "cinematic"),
    ({"params": {"bframes": "lots"}}, "bframes"),
    ({"params": {"no-such-option": "1"}}, "no-such-option"),
    ({"rc": "vbr"}, "vbr"),
    ({"params": {"annexb": "0"}}, "annexb"),
])
def test_bad_settings_named(kw, name):
    s = EncoderSettings(width=64, height=48, fps=Fraction(25), time_base=TB, **kw)
    with pytest.raises(EncoderError, match=name):
        X264Encoder(s)


def test_open_failure_reports_x264_reason():
    # parses as a number, but x264_encoder_open refuses it: the error carries x264's reason
    s = EncoderSettings(width=64, height=48, fps=Fraction(25), time_base=TB, params={"level": "99"})
    with pytest.raises(EncoderError, match="level_idc"):
        X264Encoder(s)


def test_profile_param():
    s = EncoderSettings(width=64, height=48, fps=Fraction(25), time_base=TB,
                        params={"profile": "baseline"})
    with X264Encoder(s) as enc:
        assert enc.settings_summary()["bframes"] == 0
    s.params = {"profile": "ultra"}
    with pytest.raises(EncoderError, match="ultra"):
        X264Encoder(s)


def test_abr_and_cbr_need_bitrate():
    with pytest.raises(EncoderError, match="bitrate"):
        EncoderSettings(width=64, height=48, fps=Fraction(25), time_base=TB, rc="cbr")


def test_cbr_settings_summary():
    assert helpers.check_cbr_settings_summary(X264Encoder, 64, 48)["x264_build"] >= 148


def test_wrong_map_and_frame_rejected(carphone):
    helpers.check_wrong_map_and_frame_rejected(X264Encoder, carphone, settings_for(carphone))


def test_odd_size_refused_and_non_mod16_works():
    with pytest.raises(EncoderError, match="odd"):
        X264Encoder(EncoderSettings(width=301, height=168, fps=Fraction(25), time_base=TB))
    rng = np.random.default_rng(0)
    for w, h in ((300, 168), (854, 480)):
        s = EncoderSettings(width=w, height=h, fps=Fraction(25), time_base=TB, preset="ultrafast")
        frames = []
        for i in range(3):
            y = np.zeros((h, w), np.uint8)
            y[:, :] = (np.arange(w)[None, :] * 2 + i * 7) % 256
            uv = rng.integers(100, 140, (h // 2, w // 2), dtype=np.uint8)
            frames.append(Frame(y, uv, uv, i, TB, i))
        q = np.zeros((s.mb_h, s.mb_w), np.float32)
        dec = decode_y(joined(encode(frames, s, q)), h)
        assert len(dec) == 3 and dec[0].shape == (h, w)
        assert psnr(frames[2].y, dec[2]) > 30


def test_strided_planes(carphone):
    helpers.check_strided_planes(X264Encoder, carphone[0])


def test_binding_cache_key_and_location(tmp_path, monkeypatch):
    helpers.check_binding_cache(binding, "X264_BUILD", 164, "_semvc_x264_*.so",
                                "x264_encoder_encode", tmp_path, monkeypatch)
    assert binding.cache_dir() == tmp_path / "cffi"


def test_missing_header_reported(monkeypatch):
    monkeypatch.setattr(binding, "_find", lambda name, dirs: None)
    with pytest.raises(EncoderError, match="libx264-dev"):
        binding._build_and_load()
    monkeypatch.setattr(binding._get_binding, "loaded", None)
    ok, why = X264Encoder.available()
    assert not ok and "libx264-dev" in why and "gcc" in why


def test_missing_compiler_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGE_SEMVC_CACHE", str(tmp_path))  # nothing cached there: must build
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(EncoderError, match="compiler.*libx264-dev and gcc"):
        binding._build_and_load()


def test_zerolatency_has_no_frame_delay(carphone):
    s = settings_for(carphone, tune="zerolatency")
    helpers.check_no_frame_delay(X264Encoder, carphone[:5], s)


def test_mb_tree_is_reported_so_the_map_adds_reuse_only_without_it(carphone):
    """With a lookahead x264's mb-tree weighs each block's reuse; zerolatency turns it off and
    the QP map's reuse term (qp.reuse: auto) takes over."""
    with X264Encoder(settings_for(carphone)) as enc:
        assert enc.weighs_reuse and enc.settings_summary()["mb_tree"]
    with X264Encoder(settings_for(carphone, tune="zerolatency")) as enc:
        assert not enc.weighs_reuse


def test_lookaheadless_mb_tree_keeps_zerolatency_s_delay_and_takes_the_reuse_term(carphone,
                                                                                 caplog):
    """x264's mb-tree without a lookahead (README, step 4; measured and not kept): it needs an
    infinite keyint (or intra refresh), adds no frame of delay, and the map then leaves reuse
    to x264. With a periodic keyint x264 turns it off again, says so, and the map weighs reuse."""
    s = settings_for(carphone, tune="zerolatency", params={"mbtree": "1", "keyint": "infinite"})
    with X264Encoder(s) as enc:
        assert enc.weighs_reuse and enc.settings_summary()["rc_lookahead"] == 0
    helpers.check_no_frame_delay(X264Encoder, carphone[:5], s)
    with caplog.at_level(logging.WARNING), X264Encoder(
            settings_for(carphone, tune="zerolatency", params={"mbtree": "1"})) as enc:
        assert not enc.weighs_reuse
    assert "lookaheadless mb-tree requires intra refresh or infinite keyint" in caplog.text


def test_aq_with_map_gives_x264s_own_aq_back_on_frames_with_a_map(foreman):
    """x264's variance AQ lowers the QP of flat macroblocks and raises that of textured ones;
    `aq_with_map` < 1 takes that share of it off every frame that carries a map, none off a
    frame without one."""
    frames = foreman[:20]
    # one thread: VBV with more plans from the other threads' running estimates (Known issues)
    s = settings_for(frames, rc="cbr", bitrate=300_000, tune="zerolatency", threads=1)
    zero = np.zeros((s.mb_h, s.mb_w), np.float32)
    energy = np.mean([x264._relative_log_energy(f) for f in frames], axis=0)
    assert abs(float(x264._relative_log_energy(frames[0]).mean())) < 1e-4
    flat = energy <= np.quantile(energy, 0.3)
    textured = energy >= np.quantile(energy, 0.7)
    kept = dataclasses.replace(s, aq_with_map=1.0)
    back = dataclasses.replace(s, aq_with_map=0.0)
    whole, given_back = joined(encode(frames, kept, zero)), joined(encode(frames, back, zero))
    flat_px, textured_px = (mb_mask_to_pixels(m, s.width, s.height) for m in (flat, textured))
    flat_whole, textured_whole = region_psnr(frames, whole, flat_px)[0], \
        region_psnr(frames, whole, textured_px)[0]
    flat_back, textured_back = region_psnr(frames, given_back, flat_px)[0], \
        region_psnr(frames, given_back, textured_px)[0]
    assert flat_back < flat_whole - 1.0, (flat_whole, flat_back)
    assert textured_back > textured_whole + 1.0, (textured_whole, textured_back)
    # a frame without a map keeps x264's AQ whole: the same bytes at any share
    assert joined(encode(frames, back)) == joined(encode(frames, kept))
    with X264Encoder(back) as enc:
        assert enc.settings_summary()["aq_with_map"] == 0.0
    with pytest.raises(EncoderError, match="aq_with_map"):
        dataclasses.replace(s, aq_with_map=float("nan"))


@pytest.mark.parametrize("pts", [[3600 * i for i in range(12)],  # an RTP camera's 90 kHz
                                 [0, 3000, 7300, 10800, 11000, 14400, 21600, 25300, 28800,
                                  29000, 32400, 36000]])  # a variable rate, frames < 1/25 apart
def test_the_stream_says_its_frame_rate_and_keeps_the_inputs_timestamps(carphone, pts):
    """x264 writes 1/timebase into the SPS as the frame rate, which a player of a raw stream
    or of RTP reads: 25 fps, not 90000, and every packet with its frame's own timestamp."""
    import io

    import av

    tb = Fraction(1, 90000)
    frames = [dataclasses.replace(f, pts=p, time_base=tb) for f, p in zip(carphone, pts)]
    s = settings_for(carphone, time_base=tb, bitrate=300_000, rc="cbr")
    with X264Encoder(s) as enc:
        assert enc.settings_summary().get("vfr_input", True)  # x264 follows the timestamps
        packets = [p for f in frames for p in enc.encode(f)] + enc.flush()
    assert sorted(p.pts for p in packets) == pts
    dts = [p.dts for p in packets]
    assert dts == sorted(set(dts)) and all(p.dts <= p.pts for p in packets)
    with av.open(io.BytesIO(joined(packets)), format="h264") as c:
        assert c.streams.video[0].codec_context.framerate == 25


def test_an_idr_x264_turned_into_an_i_frame_is_not_a_warning(caplog):
    """A receiver's IDR within keyint_min of the last keyframe becomes an I-frame (x264's own
    rule, said at every join); other warnings stay warnings."""
    import logging
    from types import SimpleNamespace

    from edge_semvc.encoders.x264 import _LogSink

    levels = SimpleNamespace(X264_LOG_ERROR=0, X264_LOG_WARNING=1, X264_LOG_INFO=2,
                             X264_LOG_DEBUG=3)
    sink = _LogSink(levels)
    with caplog.at_level(logging.DEBUG, logger="edge_semvc"):
        sink.emit(1, "forced frame type (1) at 1787 was changed to frame type (2)")
        sink.emit(1, "VBV underflow (frame 7, -1200 bits)")
    assert [r.levelno for r in caplog.records] == [logging.DEBUG, logging.WARNING]

"""The x265 (HEVC) backend: real encodes of real clips, decoded back with PyAV; the same
guarantees as x264's (tests/test_x264.py, tests/test_force_idr.py)."""
from __future__ import annotations

import logging
import os
from fractions import Fraction

import encoders_helpers as helpers
import numpy as np
import pytest
from encoders_helpers import joined

from edge_semvc.bench.metrics import mb_mask_to_pixels, psnr
from edge_semvc.encoders import EncoderError, EncoderSettings, get_encoder, known_encoders
from edge_semvc.encoders.base import Encoder
from edge_semvc.frame import Frame

TB = Fraction(1, 25)

x265 = pytest.importorskip("edge_semvc.encoders.x265")
binding = pytest.importorskip("edge_semvc.encoders.x265_binding")
X265Encoder = x265.X265Encoder


@pytest.fixture(scope="module", autouse=True)
def _need_x265():
    helpers.require(X265Encoder, " (x265.h/libx265 missing?)")


@pytest.fixture(scope="module")
def carphone():
    return helpers.load_frames("carphone_qcif_pristine.mp4", 30, TB)


def settings_for(frames, **kw) -> EncoderSettings:
    return helpers.settings_for(frames, **{"threads": 1, **kw})  # 1 thread: deterministic bytes


def encode(frames, settings, qmap=None, force=()):
    return helpers.encode(X265Encoder, frames, settings, qmap, force)


def decode(data: bytes, height: int | None = None) -> list[np.ndarray]:
    return helpers.decode(data, "hevc", height)


def nal_types(data: bytes) -> list[int]:
    return helpers.nal_types(data, "hevc")


def synthetic(w: int, h: int, n: int, cut: int | None = None) -> list[Frame]:
    """Moving gradients with chroma noise; a different picture from `cut` on (a scene cut)."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        k = 3 if cut is not None and i >= cut else 2
        y = ((np.arange(w)[None, :] * k + np.arange(h)[:, None] * (5 - k) + i * 7) % 256)
        uv = rng.integers(100, 140, (h // 2, w // 2), dtype=np.uint8)
        frames.append(Frame(y.astype(np.uint8), uv, uv.copy(), i, TB, i))
    return frames


def test_registry_and_codec():
    assert get_encoder("x265") is X265Encoder and "x265" in known_encoders()
    assert issubclass(X265Encoder, Encoder) and X265Encoder.type_key == "x265"
    assert X265Encoder.codec == "hevc" and Encoder.codec == "h264"


@pytest.mark.parametrize("rc", [{"rc": "cbr", "bitrate": 150_000}, {"rc": "crf"}],
                         ids=["cbr", "crf"])
def test_map_takes_effect(carphone, rc):
    frames = carphone[:15]
    s = settings_for(frames, **rc)
    mask = np.zeros((s.mb_h, s.mb_w), bool)
    mask[s.mb_h // 4: 3 * s.mb_h // 4, s.mb_w // 4: 3 * s.mb_w // 4] = True
    qmap = np.where(mask, -6.0, 4.0).astype(np.float32)
    px = mb_mask_to_pixels(mask, s.width, s.height)
    plain, mapped = joined(encode(frames, s)), joined(encode(frames, s, qmap))
    dec0, dec1 = decode(plain, s.height), decode(mapped, s.height)
    assert len(dec0) == len(dec1) == len(frames)

    def mean_psnr(dec, m):
        return np.mean([psnr(f.y, d, m) for f, d in zip(frames, dec)])

    in0, in1 = mean_psnr(dec0, px), mean_psnr(dec1, px)
    out0, out1 = mean_psnr(dec0, ~px), mean_psnr(dec1, ~px)
    assert in1 > in0 + 1.5, (in0, in1)
    assert out1 < out0 - 1.0, (out0, out1)
    if rc["rc"] == "cbr":  # the map redistributes the bits, it does not add any
        assert abs(len(mapped) / len(plain) - 1) < 0.15


def test_map_acts_at_16x16(carphone):
    """A checkerboard of single blocks: x265's default 32x32 quantisation groups would average
    it away; the backend's qg-size 16 keeps it."""
    frames = carphone[:10]
    s = settings_for(frames)
    mask = np.zeros((s.mb_h, s.mb_w), bool)
    mask[1::2, 1::2] = True
    qmap = np.where(mask, -6.0, 2.0).astype(np.float32)
    px = mb_mask_to_pixels(mask, s.width, s.height)
    gain = {}
    for qg in ("16", "32"):
        s.params = {} if qg == "16" else {"qg-size": "32"}
        with X265Encoder(s) as enc:
            assert enc.settings_summary()["qg_size"] == int(qg)
        dec0 = decode(joined(encode(frames, s)), s.height)
        dec1 = decode(joined(encode(frames, s, qmap)), s.height)
        gain[qg] = np.mean([psnr(f.y, b, px) - psnr(f.y, a, px)
                            for f, a, b in zip(frames, dec0, dec1)])
    assert gain["16"] > 1.0 and gain["16"] > gain["32"] + 0.5, gain


def test_zero_map_is_no_map(carphone):
    s = settings_for(carphone[:8])
    zero = np.zeros((s.mb_h, s.mb_w), np.float32)
    assert joined(encode(carphone[:8], s, zero)) == joined(encode(carphone[:8], s))


def test_pts_dts_headers_and_decode(carphone):
    frames = carphone[:12]
    hdr, packets = helpers.check_pts_dts_and_headers(X265Encoder, frames, threads=1)
    assert nal_types(hdr) == [32, 33, 34]  # VPS, SPS, PPS; x265's info SEI left out
    assert packets[0].data.startswith(hdr[:4]) and hdr in packets[0].data  # in-band by default
    dec = decode(joined(packets), frames[0].height)
    assert len(dec) == len(frames) and psnr(frames[0].y, dec[0]) > 30


def test_frame_pts_rescaled_and_none(carphone):
    helpers.check_pts_rescaled_and_none(X265Encoder, carphone[:8], settings_for(carphone), 4)


def test_global_headers_keep_parameter_sets_out_of_band(carphone):
    s = settings_for(carphone, global_headers=True)
    packets = encode(carphone[:6], s)
    assert not any(t in (32, 33, 34) for p in packets for t in nal_types(p.data))
    with X265Encoder(s) as enc:
        hdr = enc.headers()
    assert len(decode(hdr + joined(packets))) == 6


@pytest.mark.parametrize("params", [{}, {"open-gop": "1"}], ids=["closed-gop", "open-gop"])
def test_forced_idr_exactly_there_and_each_decodes_alone(carphone, params):
    s = settings_for(carphone, params=params)
    force = {7, 20}
    packets = encode(carphone, s, force=force)
    assert sorted(p.pts for p in packets if p.keyframe) == [0, *sorted(force)]
    # IDR slices by default; with open-gop=1 x265 codes keyframes after the first as CRA
    forced_type = {21} if params else {19, 20}
    for p in packets:
        types = set(nal_types(p.data))
        assert bool(types & ({19, 20} if p.pts == 0 else forced_type)) == p.keyframe
    helpers.check_each_decodes_alone(packets, len(carphone), force, "hevc")


def test_force_idr_false_is_byte_identical(carphone):
    helpers.check_force_idr_false_changes_nothing(X265Encoder, carphone[:10],
                                                  settings_for(carphone))


@pytest.mark.skipif(not hasattr(EncoderSettings(64, 64, 25, TB), "caller_idr"),
                    reason="EncoderSettings.caller_idr does not exist in this tree")
def test_caller_idr_means_no_idr_of_its_own():
    frames = synthetic(128, 128, 24, cut=12)
    s = EncoderSettings(width=128, height=128, fps=Fraction(25), time_base=TB, threads=1,
                        keyint=8)
    assert len([p for p in encode(frames, s) if p.keyframe]) > 1  # keyint and the cut
    s.caller_idr = True
    assert sorted(p.pts for p in encode(frames, s, force={5}) if p.keyframe) == [0, 5]


def test_refusals_name_the_setting():
    base = {"width": 64, "height": 64, "fps": Fraction(25), "time_base": TB}
    for kw, pattern in [({"rc": "cqp"}, "constant-QP"),
                        ({"params": {"qp": "20"}}, "constant-QP.*'qp'"),
                        ({"params": {"qpmin": "30", "qpmax": "30"}}, "qpmin=30 >= qpmax=30"),
                        ({"params": {"lossless": "1"}}, "lossless"),
                        ({"params": {"hevc-aq": "1"}}, "hevc-aq"),
                        ({"params": {"qg-size": "8"}}, "qg-size=8"),
                        ({"params": {"pass": "2"}}, "multi-pass"),
                        ({"preset": "superduperfast"}, "superduperfast"),
                        ({"tune": "cinematic"}, "cinematic"),
                        ({"tune": "zerolatency,fastdecode"}, "zerolatency,fastdecode"),
                        ({"params": {"bframes": "lots"}}, "bframes"),
                        ({"params": {"no-such-option": "1"}}, "no-such-option"),
                        ({"params": {"annexb": "0"}}, "annexb"),
                        ({"params": {"profile": "ultra"}}, "ultra"),
                        ({"rc": "vbr"}, "vbr")]:
        with pytest.raises(EncoderError, match=pattern):
            X265Encoder(EncoderSettings(**base, **kw))


def test_open_failure_reports_x265_reason(caplog):
    with caplog.at_level(logging.WARNING, logger="edge_semvc.encoders.x265"):
        with pytest.raises(EncoderError, match="level 99"):
            X265Encoder(EncoderSettings(width=64, height=64, fps=Fraction(25), time_base=TB,
                                        params={"level-idc": "99"}))
        with pytest.raises(EncoderError, match="CTU"):  # 48 < the 64-pixel CTU
            X265Encoder(EncoderSettings(width=48, height=48, fps=Fraction(25), time_base=TB))
    assert any(r.getMessage().startswith("x265: ") and r.levelno == logging.ERROR
               for r in caplog.records)


def test_x265_messages_become_log_records_and_the_rest_stays_on_stderr(capfd, caplog):
    errors: list[str] = []
    with caplog.at_level(logging.INFO, logger="edge_semvc.encoders.x265"):
        with x265._x265_messages(errors):
            os.write(2, b"x265 [warning]: a warning\nanother thread's line\n")
            os.write(2, b"x265 [error]: the reason\n")
    assert errors == ["the reason"]
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "x265: a warning"), (logging.ERROR, "x265: the reason")]
    assert capfd.readouterr().err == "another thread's line\n"


@pytest.mark.parametrize("preset, tune", [("ultrafast", "zerolatency"), ("superfast", None)])
def test_fast_presets_aq_restored_and_map_then_works(carphone, caplog, preset, tune):
    s = settings_for(carphone, preset=preset, tune=tune)
    with caplog.at_level(logging.WARNING, logger="edge_semvc.encoders.x265"):
        with X265Encoder(s) as enc:
            summary = enc.settings_summary()
    text = " ".join(r.getMessage() for r in caplog.records)
    assert f"aq-mode 0 (from preset {preset!r})" in text and "aq-strength 0" in text
    assert summary["aq_mode"] > 0 and summary["aq_strength"] > 0
    assert len(summary["corrections"]) == 2 and summary["preset"] == preset

    frames = carphone[:10]
    qmap = np.full((s.mb_h, s.mb_w), 6.0, np.float32)
    qmap[2:7, 3:8] = -8
    assert joined(encode(frames, s, qmap)) != joined(encode(frames, s))


@pytest.mark.parametrize("kw, source", [
    ({"tune": "grain"}, "aq-mode 0 (from tune 'grain')"),
    ({"tune": "psnr"}, "aq-strength 0 (from tune 'psnr')"),
    ({"params": {"aq-mode": "0", "aq-strength": "0"}}, "aq-mode 0 (from params aq-mode=0)"),
])
def test_aq_off_corrected_from_tune_or_params(kw, source):
    with X265Encoder(EncoderSettings(width=64, height=64, fps=Fraction(25), time_base=TB,
                                     **kw)) as enc:
        summary = enc.settings_summary()
    assert any(c.startswith(source) for c in summary["corrections"]), summary["corrections"]
    assert summary["aq_mode"] > 0 and summary["aq_strength"] > 0


def test_cbr_settings_summary():
    summ = helpers.check_cbr_settings_summary(X265Encoder, 64, 64)
    assert summ["rc_method"] == "abr" and summ["x265_build"] >= 199 and summ["codec"] == "hevc"
    assert summ["corrections"] == []


def test_odd_size_refused_and_padded_grid_works():
    with pytest.raises(EncoderError, match="301x168 has an odd dimension"):
        X265Encoder(EncoderSettings(width=301, height=168, fps=Fraction(25), time_base=TB))
    # 300x168 with 32-pixel minimum CUs: x265 pads to 320x192 and reads a 12x20 offset grid
    # from our 11x19 map, which the backend extends
    frames = synthetic(300, 168, 4)
    for params in ({}, {"ctu": "32", "min-cu-size": "32"}):
        s = EncoderSettings(width=300, height=168, fps=Fraction(25), time_base=TB, threads=1,
                            params=params)
        q = np.full((s.mb_h, s.mb_w), -2.0, np.float32)
        dec = decode(joined(encode(frames, s, q)))
        assert len(dec) == 4 and dec[0].shape == (168 * 3 // 2, 300)
        assert psnr(frames[3].y, dec[3][:168]) > 30


def test_wrong_map_and_frame_rejected(carphone):
    helpers.check_wrong_map_and_frame_rejected(X265Encoder, carphone, settings_for(carphone))


def test_strided_planes(carphone):
    helpers.check_strided_planes(X265Encoder, carphone[0])


def test_no_8bit_build_reported():
    with pytest.raises(EncoderError, match="no 7-bit encoder"):
        binding.get_api(7)


def test_binding_cache_key_and_location(tmp_path, monkeypatch):
    helpers.check_binding_cache(binding, "X265_BUILD", 199, "_semvc_x265_*.so", "semvc265_api",
                                tmp_path, monkeypatch)


def test_unavailable_library_reported_cleanly(tmp_path, monkeypatch):
    monkeypatch.setattr(binding, "_find", lambda name, dirs: None)
    monkeypatch.setattr(binding._get_binding, "loaded", None)
    monkeypatch.setattr(binding, "_apis", {})
    ok, why = X265Encoder.available()
    assert not ok and "x265.h not found" in why and "libx265-dev" in why
    with pytest.raises(EncoderError, match="libx265-dev"):
        X265Encoder(EncoderSettings(width=64, height=64, fps=Fraction(25), time_base=TB))
    monkeypatch.undo()
    monkeypatch.setenv("EDGE_SEMVC_CACHE", str(tmp_path))  # nothing cached: must build
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(EncoderError, match="compiler.*libx265-dev and gcc"):
        binding._build_and_load()


def test_zerolatency_has_no_frame_delay(carphone):
    s = settings_for(carphone, tune="zerolatency")
    helpers.check_no_frame_delay(X265Encoder, carphone[:5], s)


def test_cutree_is_reported_so_the_map_adds_reuse_only_without_it(carphone):
    with X265Encoder(settings_for(carphone)) as enc:
        assert enc.weighs_reuse and enc.settings_summary()["cu_tree"]
    with X265Encoder(settings_for(carphone, tune="zerolatency")) as enc:
        assert not enc.weighs_reuse

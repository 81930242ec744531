"""The NVENC backend: the delta map, the settings mapping and the NV12 copy for real; the binding
compiled against the installed nvEncodeAPI.h and its configuration code run on real NV_ENC_CONFIG
structs (no GPU needed for either); encoding only where the driver has NVENC."""
from __future__ import annotations

import ctypes
import io
from fractions import Fraction

import encoders_helpers as helpers
import numpy as np
import pytest

from edge_semvc.encoders import EncoderError, EncoderSettings, get_encoder, known_encoders
from edge_semvc.encoders import nvenc as nv
from edge_semvc.encoders import nvenc_binding as nb
from edge_semvc.frame import Frame

TB = Fraction(1, 25)


def settings(**kw) -> EncoderSettings:
    base = dict(width=640, height=360, fps=Fraction(25), time_base=TB)
    base.update(kw)
    return EncoderSettings(**base)


def _driver_present() -> bool:
    try:
        ctypes.CDLL("libnvidia-encode.so.1")
    except OSError:
        return False
    return True


# --- the delta map ------------------------------------------------------------------------------

def test_grid_sizes_follow_the_header():
    # qpDeltaMapSize: picWidthInMbs * picHeightInMbs (H.264), in 32x32 CTBs (HEVC)
    assert nv.map_grid(1920, 1080, "h264") == (68, 120)
    assert nv.map_grid(1920, 1080, "hevc") == (34, 60)
    assert nv.map_grid(854, 480, "hevc") == (15, 27)


def test_h264_map_is_rounded_and_clamped_per_macroblock():
    m = np.array([[0.4, 0.6, -0.6, -70.0], [2.5, -2.5, 12.0, 80.0]], np.float32)
    dm = nv.delta_map(m, "h264")
    assert dm.dtype == np.int8 and dm.shape == m.shape
    np.testing.assert_array_equal(dm, [[0, 1, -1, -51], [2, -2, 12, 51]])  # rint: half to even
    np.testing.assert_array_equal(nv.delta_map(m, "h264", limit=10)[1], [2, -2, 10, 10])


def test_hevc_map_takes_the_mean_of_each_ctb():
    m = np.arange(35, dtype=np.float32).reshape(5, 7)  # odd sizes: partial CTBs at the edges
    dm = nv.delta_map(m, "hevc")
    assert dm.shape == (3, 4) == nv.map_grid(7 * 16, 5 * 16, "hevc")
    assert dm[0, 0] == round(np.mean([0, 1, 7, 8]))
    assert dm[0, 3] == round(np.mean([6, 13]))  # the last column has one macroblock
    assert dm[2, 3] == 34  # the corner CTB holds one macroblock
    assert dm[2, 0] == round(np.mean([28, 29]))


def test_applied_map_and_its_error():
    m = np.full((4, 6), 3.0, np.float32)
    m[:2, :2] = -5
    for codec in ("h264", "hevc"):
        dm = nv.delta_map(m, codec)
        np.testing.assert_array_equal(nv.applied_map(dm, codec, m.shape), m)
        assert nv.map_error(m, dm, codec) == 0
    m[0, 0] = -9  # one macroblock off its CTB's mean
    dm = nv.delta_map(m, "hevc")
    assert dm[0, 0] == -6
    applied = nv.applied_map(dm, "hevc", m.shape)
    assert nv.map_error(m, dm, "hevc") == pytest.approx(np.mean((applied - m) ** 2))
    assert nv.map_error(m, dm, "hevc") == pytest.approx((9 + 3 * 1) / 24)


def test_nv12_copy_respects_the_pitch():
    rng = np.random.default_rng(0)
    f = Frame.from_i420(rng.integers(0, 255, 40 * 20 * 3 // 2, np.uint8), 40, 20, 0, TB, 0)
    pitch = 64
    buf = np.full(pitch * 30, 7, np.uint8)
    nv.nv12_into(buf, pitch, f)
    y = buf[:20 * pitch].reshape(20, pitch)
    np.testing.assert_array_equal(y[:, :40], f.y)
    assert (y[:, 40:] == 7).all()  # padding untouched
    uv = buf[20 * pitch:].reshape(10, pitch)
    np.testing.assert_array_equal(uv[:, 0:40:2], f.u)
    np.testing.assert_array_equal(uv[:, 1:40:2], f.v)


# --- settings -----------------------------------------------------------------------------------

def test_crf_becomes_constant_quality():
    p = nv.build_params(settings(rc="crf", crf=23.5))
    assert (p.rc, p.cq, p.bitrate, p.max_bitrate, p.vbv_size) == ("cq", 23.5, 0, 0, 0)
    capped = nv.build_params(settings(rc="crf", crf=28, bitrate=2_000_000))
    assert (capped.bitrate, capped.max_bitrate, capped.vbv_size) == (0, 2_000_000, 2_000_000)


def test_abr_and_cbr():
    vbr = nv.build_params(settings(rc="abr", bitrate=10**6, params={"peak_bitrate": "1500000"}))
    assert (vbr.rc, vbr.bitrate, vbr.max_bitrate, vbr.vbv_size) == ("vbr", 10**6, 1_500_000, 0)
    cbr = nv.build_params(settings(rc="cbr", bitrate=800_000))
    assert (cbr.rc, cbr.bitrate, cbr.max_bitrate, cbr.vbv_size) == ("cbr", 800_000, 800_000,
                                                                      800_000)  # 1 s buffer


@pytest.mark.parametrize("kw, message", [
    (dict(rc="cqp"), "constant-QP"),
    (dict(rc="crf", crf=0), "crf 0 is outside NVENC's constant-quality range 1-51"),
    (dict(params={"min_qp": 25, "max_qp": 25}), r"min_qp == max_qp \(25\)"),
    (dict(params={"maxqp": 25}), "unknown nvenc param.*'maxqp'"),
    (dict(params={"codec": "av1"}), "invalid codec 'av1'"),
    (dict(params={"gpu": "-1"}), "invalid gpu -1"),
    (dict(preset="p8"), "unknown NVENC preset 'p8'; use p1..p7"),
    (dict(tune="film"), "unknown NVENC tune 'film'"),
    (dict(rc="abr", bitrate=10**6, params={"peak_bitrate": 10**5}), "peak_bitrate 100000 is below"),
    (dict(height=361), "odd dimension"),
])
def test_settings_nvenc_cannot_take(kw, message):
    with pytest.raises(EncoderError, match=message):
        nv.build_params(settings(**kw))


def test_presets_tunes_intervals_and_headers():
    p = nv.build_params(settings(preset="veryfast", keyint=60, params={"codec": "hevc",
                                                                       "idr_interval": 120}))
    assert (p.codec, p.preset, p.tuning, p.gop, p.idr_period) == ("hevc", 3, "HIGH_QUALITY", 60,
                                                                   120)
    p = nv.build_params(settings(preset="P7", tune="zerolatency", global_headers=True))
    assert (p.preset, p.tuning, p.global_headers) == (7, "ULTRA_LOW_LATENCY", True)
    s = settings(keyint=60)
    s.caller_idr = True  # the pipeline places every IDR
    p = nv.build_params(s)
    assert p.gop == p.idr_period == nv.INFINITE


def test_intra_refresh_replaces_idrs():
    p = nv.build_params(settings(keyint=30, intra_refresh=True))
    assert (p.intra_refresh, p.gop, p.idr_period) == (30, nv.INFINITE, nv.INFINITE)
    assert nv.build_params(settings(intra_refresh=True)).intra_refresh == nv.REFRESH_PERIOD
    assert nv.build_params(settings(keyint=30)).intra_refresh == 0
    with pytest.raises(EncoderError, match="idr_interval with intra_refresh"):
        nv.build_params(settings(intra_refresh=True, params={"idr_interval": 60}))


@pytest.mark.parametrize("kw, change, want", [
    (dict(rc="cbr", bitrate=2_000_000), (300_000, 23.0), (300_000, 300_000, 300_000, 23.0)),
    (dict(rc="crf", crf=23.0, bitrate=2_000_000), (300_000, 30.0), (0, 300_000, 300_000, 30.0)),
    (dict(rc="crf", crf=23.0), (None, 35.5), (0, 0, 0, 35.5)),
    # a VBR peak keeps its ratio to the average
    (dict(rc="abr", bitrate=2_000_000, params={"peak_bitrate": 3_000_000}), (1_000_000, 23.0),
     (1_000_000, 1_500_000, 0, 23.0)),
])
def test_a_live_change_maps_like_the_settings(kw, change, want):
    s = nv.retuned(settings(**kw), *change, "nvenc")
    p = nv.build_params(s)
    assert (p.bitrate, p.max_bitrate, p.vbv_size, p.cq) == want


@pytest.mark.parametrize("kw, change, message", [
    (dict(rc="crf", crf=23.0), (500_000, 23.0), "set at the start"),
    (dict(rc="cbr", bitrate=10**6), (None, 23.0), "cannot turn its VBV cap off"),
    (dict(rc="cbr", bitrate=10**6), (-5, 23.0), "invalid bitrate -5"),
])
def test_live_changes_nvenc_cannot_take(kw, change, message):
    with pytest.raises(EncoderError, match=message):
        nv.retuned(settings(**kw), *change, "nvenc")


# --- the binding (compiled here against /usr/include/ffnvcodec) ---------------------------------

@pytest.fixture(scope="module")
def binding(tmp_path_factory):
    header, dirs = nb.header_path()
    if header is None:
        pytest.skip(f"{nb.HEADER} not found (looked in {', '.join(map(str, dirs))}): "
                    "apt-get install libffmpeg-nvenc-dev")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGE_SEMVC_CACHE", str(tmp_path_factory.mktemp("cffi")))  # a real build
    try:
        mod = nb.build()
    finally:
        mp.undo()
    return mod.ffi, mod.lib


def test_binding_compiles_with_the_headers_constants(binding):
    ffi, lib = binding
    assert lib.NV_ENC_QP_MAP_DELTA == 2
    version = lib.NVENCAPI_MAJOR_VERSION | (lib.NVENCAPI_MINOR_VERSION << 24)
    assert lib.NVENCAPI_VERSION == version
    assert lib.NV_ENC_PIC_PARAMS_VER & 0xFFFF == version & 0xFFFF  # struct versions carry it
    assert lib.NVENC_INFINITE_GOPLENGTH == nv.INFINITE
    assert ffi.sizeof("NV_ENC_CONFIG") > 1000  # the compiler's layout, not ours


@pytest.mark.parametrize("kw, codec", [
    (dict(rc="cbr", bitrate=800_000, keyint=50, params={"min_qp": 10, "max_qp": 45}), "h264"),
    (dict(rc="crf", crf=26.25, bitrate=3_000_000, global_headers=True,
          params={"codec": "hevc", "idr_interval": 100}), "hevc"),
])
def test_configuration_code_sets_delta_map_mode_and_our_settings(binding, kw, codec):
    ffi, lib = binding
    p = nv.build_params(settings(**kw))
    opts, eff = ffi.new("semvc_nvenc_opts_t *"), ffi.new("semvc_nvenc_opts_t *")
    p.fill(opts)
    cfg = ffi.new("NV_ENC_CONFIG *")  # zeroed, as a preset would not be: all our fields are set
    lib.semvc_nvenc_apply(cfg, opts)
    lib.semvc_nvenc_read(cfg, codec == "hevc", eff)
    assert eff.qp_map_mode == lib.NV_ENC_QP_MAP_DELTA
    assert (eff.aq, eff.lookahead, eff.frame_interval_p) == (0, 0, 1)
    assert eff.ctb == (32 if codec == "hevc" else 16)
    assert eff.rc_mode == nv.RC_MODES[p.rc]
    assert (eff.bitrate, eff.max_bitrate, eff.vbv_size) == (p.bitrate, p.max_bitrate, p.vbv_size)
    assert (eff.min_qp, eff.max_qp) == (-1 if p.min_qp is None else p.min_qp,
                                        -1 if p.max_qp is None else p.max_qp)
    assert (eff.gop, eff.idr_period) == (p.gop, p.idr_period or p.gop)
    assert (eff.repeat_headers, eff.no_headers) == (not p.global_headers, p.global_headers)
    if p.rc == "cq":
        assert eff.cq_q8 == round(p.cq * 256)
    assert tuple(eff.colour) == (2, 2, 2)  # nothing said of the input's colour: no VUI colour


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_the_inputs_colour_description_reaches_the_vui(binding, codec):
    """BT.709 / PQ / BT.2020 (an HDR10 input) is written as x264 writes it."""
    ffi, lib = binding
    p = nv.build_params(settings(rc="cbr", bitrate=800_000, colour=(9, 16, 9),
                                 params={"codec": codec}))
    opts, eff = ffi.new("semvc_nvenc_opts_t *"), ffi.new("semvc_nvenc_opts_t *")
    p.fill(opts)
    cfg = ffi.new("NV_ENC_CONFIG *")
    lib.semvc_nvenc_apply(cfg, opts)
    lib.semvc_nvenc_read(cfg, codec == "hevc", eff)
    assert tuple(eff.colour) == (9, 16, 9)


def test_intra_refresh_configuration(binding):
    ffi, lib = binding
    for codec in ("h264", "hevc"):
        p = nv.build_params(settings(keyint=30, intra_refresh=True, params={"codec": codec}))
        opts, eff = ffi.new("semvc_nvenc_opts_t *"), ffi.new("semvc_nvenc_opts_t *")
        p.fill(opts)
        cfg = ffi.new("NV_ENC_CONFIG *")
        lib.semvc_nvenc_apply(cfg, opts)
        lib.semvc_nvenc_read(cfg, codec == "hevc", eff)
        assert (eff.intra_refresh, eff.gop, eff.idr_period) == (30, nv.INFINITE, nv.INFINITE)


def _applied(binding, s):
    """A configuration as the session is initialised with for ``s``, and its init params."""
    ffi, lib = binding
    opts = ffi.new("semvc_nvenc_opts_t *")
    nv.build_params(s).fill(opts)
    cfg, ip = ffi.new("NV_ENC_CONFIG *"), ffi.new("NV_ENC_INITIALIZE_PARAMS *")
    lib.semvc_nvenc_apply(cfg, opts)
    ip.encodeConfig = cfg
    return cfg, ip


@pytest.mark.parametrize("status", ["taken", "refused"])
def test_reconfigure_hands_the_driver_the_new_rate_without_idr_or_reset(binding, status):
    """NVENC does not run here: the driver's NvEncReconfigureEncoder is replaced by a recorder,
    which reads what the glue hands it as the driver would."""
    ffi, lib = binding
    s = settings(rc="cbr", bitrate=2_000_000, params={"min_qp": 10, "max_qp": 45})
    cfg, ip = _applied(binding, s)
    seen = {}

    @ffi.callback("NVENCSTATUS(void *, NV_ENC_RECONFIGURE_PARAMS *)")
    def reconfigure(enc, rp):
        raw = bytes(ffi.buffer(rp, ffi.sizeof("NV_ENC_RECONFIGURE_PARAMS")))
        at = ffi.offsetof("NV_ENC_RECONFIGURE_PARAMS", "reInitEncodeParams") + ffi.sizeof(
            "NV_ENC_INITIALIZE_PARAMS")
        eff = ffi.new("semvc_nvenc_opts_t *")
        lib.semvc_nvenc_read(rp.reInitEncodeParams.encodeConfig, 0, eff)
        seen.update(version=rp.version, flags=raw[at] & 3, bitrate=eff.bitrate,
                    max_bitrate=eff.max_bitrate, vbv=eff.vbv_size, max_qp=eff.max_qp,
                    rc_mode=eff.rc_mode, config_is_a_copy=rp.reInitEncodeParams.encodeConfig != cfg)
        return lib.NV_ENC_SUCCESS if status == "taken" else lib.NV_ENC_ERR_NEED_MORE_INPUT

    fl = ffi.new("NV_ENCODE_API_FUNCTION_LIST *")
    fl.nvEncReconfigureEncoder = reconfigure
    opts = ffi.new("semvc_nvenc_opts_t *")
    nv.build_params(nv.retuned(s, 300_000, 23.0, "nvenc")).fill(opts)
    st = lib.semvc_nvenc_reconfig(fl, ffi.NULL, ip, opts)
    assert seen == {"version": lib.NV_ENC_RECONFIGURE_PARAMS_VER, "flags": 0,  # no reset, no IDR
                    "bitrate": 300_000, "max_bitrate": 300_000, "vbv": 300_000, "max_qp": 45,
                    "rc_mode": nv.RC_MODES["cbr"], "config_is_a_copy": True}
    eff = ffi.new("semvc_nvenc_opts_t *")
    lib.semvc_nvenc_read(cfg, 0, eff)  # the session's configuration: new only once taken
    assert (st == lib.NV_ENC_SUCCESS) == (status == "taken")
    assert eff.bitrate == (300_000 if status == "taken" else 2_000_000)


def test_missing_driver_is_reported_by_the_c_loader(binding):
    if _driver_present():
        pytest.skip("libnvidia-encode.so.1 is present here")
    with pytest.raises(EncoderError, match=r"^libnvidia-encode\.so\.1 not found: "):
        nb.load_runtime()


# --- registry, availability, encoding -----------------------------------------------------------

def test_registered():
    assert "nvenc" in known_encoders()
    assert get_encoder("nvenc") is nv.NvencEncoder


def test_unavailable_without_the_driver():
    if _driver_present():
        pytest.skip("libnvidia-encode.so.1 is present here")
    ok, why = nv.NvencEncoder.available()
    assert not ok and why.startswith("libnvidia-encode.so.1 not found: ")


def test_settings_are_checked_before_the_driver_is_needed():
    with pytest.raises(EncoderError, match="min_qp == max_qp"):
        nv.NvencEncoder(settings(params={"min_qp": 30, "max_qp": 30}))


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_encode_on_nvenc(codec):
    ok, why = nv.NvencEncoder.available()
    if not ok:
        pytest.skip(f"no NVENC here: {why}")
    av = pytest.importorskip("av")
    s = settings(width=320, height=240, rc="cbr", bitrate=500_000, keyint=10,
                 params={"codec": codec})
    m = np.full((s.mb_h, s.mb_w), 2.0, np.float32)
    m[4:10, 6:14] = -6
    rng = np.random.default_rng(1)
    packets = []
    with nv.NvencEncoder(s) as enc:
        assert enc.codec == codec
        for i in range(20):
            rgb = rng.integers(0, 255, (240, 320, 3), np.uint8)
            packets += enc.encode(Frame.from_rgb(rgb, i, TB, i), m if i % 2 else None,
                                  force_idr=i == 15)
        packets += enc.flush()
        assert enc.headers()
    assert len(packets) == 20 and packets[0].keyframe and packets[15].keyframe
    with av.open(io.BytesIO(b"".join(p.data for p in packets)),
                 format="h264" if codec == "h264" else "hevc") as c:
        assert sum(1 for _ in c.decode(video=0)) == 20


def test_reconfigure_on_nvenc():
    ok, why = nv.NvencEncoder.available()
    if not ok:
        pytest.skip(f"no NVENC here: {why}")
    s = settings(width=320, height=240, rc="cbr", bitrate=1_000_000, keyint=1000)
    assert helpers.check_live_rate_drop(nv.NvencEncoder, s)["effective"]["bitrate"] == 200_000

"""libx264 through cffi (API / out-of-line mode), with a per-macroblock QP-offset map.

The binding is compiled against the installed ``x264.h`` on first use and cached in
``$EDGE_SEMVC_CACHE/cffi`` (default ``~/.cache/edge_semvc/cffi``), under a name that hashes the
declarations, the C glue, ``x264.h``/``x264_config.h`` and the Python ABI: it is rebuilt only when
one of them changes (e.g. another x264 build on a Jetson). Only the struct fields used here are
declared (partial structs, ``...;``), so the C compiler lays them out; no offset is hard-coded.
The nested ``rc`` block of ``x264_param_t`` is read through a small C accessor for the same
reason.

x264 applies ``x264_picture_t.prop.quant_offsets`` only with adaptive quantisation on, and never
in constant-QP mode. This backend refuses CQP and turns AQ back on (with a warning) where a
preset, tune or parameter switched it off, so a map is never silently ignored.

Usage::

    with X264Encoder(settings) as enc:
        packets = enc.encode(frame, qp_map)   # qp_map: float32[mb_h, mb_w] or None
        packets += enc.flush()
"""
from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import shutil
import subprocess
import sysconfig
import tempfile
import threading
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..checksums import intact, record
from ..frame import Frame
from .base import RATE_CONTROLS, Encoder, EncoderError, EncoderSettings, Packet

log = logging.getLogger(__name__)

INSTALL_HINT = "install libx264-dev and gcc (Debian/Ubuntu: sudo apt-get install libx264-dev gcc)"

# --- the binding -------------------------------------------------------------------------------

# The rate-control fields we read, copied out of x264_param_t.rc by the C glue (declared once
# for both cffi and the compiler).
_RC_STRUCT = r"""
typedef struct {
    int rc_method;
    int qp_constant;
    int qp_min;
    int qp_max;
    int bitrate;
    int vbv_max_bitrate;
    int vbv_buffer_size;
    int aq_mode;
    int mb_tree;
    int lookahead;
    float rf_constant;
    float aq_strength;
} semvc_rc_t;
"""

_CDEF = r"""
typedef struct x264_t x264_t;

typedef struct {
    int i_type;
    int i_payload;
    uint8_t *p_payload;
    ...;
} x264_nal_t;

typedef struct {
    int i_threads;
    int i_width;
    int i_height;
    int i_csp;
    int i_keyint_max;
    int i_bframe;
    int b_annexb;
    int b_repeat_headers;
    int b_vfr_input;
    uint32_t i_fps_num;
    uint32_t i_fps_den;
    uint32_t i_timebase_num;
    uint32_t i_timebase_den;
    ...;
} x264_param_t;

typedef struct {
    int i_csp;
    int i_plane;
    int i_stride[4];
    uint8_t *plane[4];
    ...;
} x264_image_t;

typedef struct {
    float *quant_offsets;
    ...;
} x264_image_properties_t;

typedef struct {
    int i_type;
    int b_keyframe;
    int64_t i_pts;
    int64_t i_dts;
    x264_image_t img;
    x264_image_properties_t prop;
    ...;
} x264_picture_t;

#define X264_BUILD ...
#define X264_CSP_I420 ...
#define X264_PARAM_BAD_NAME ...
#define X264_PARAM_BAD_VALUE ...
#define X264_TYPE_AUTO ...
#define X264_TYPE_IDR ...
#define X264_RC_CQP ...
#define X264_RC_CRF ...
#define X264_RC_ABR ...
#define X264_LOG_NONE ...
#define X264_LOG_ERROR ...
#define X264_LOG_WARNING ...
#define X264_LOG_INFO ...
#define X264_LOG_DEBUG ...

int x264_param_default_preset(x264_param_t *, const char *preset, const char *tune);
int x264_param_parse(x264_param_t *, const char *name, const char *value);
int x264_param_apply_profile(x264_param_t *, const char *profile);
void x264_picture_init(x264_picture_t *);
x264_t *x264_encoder_open(x264_param_t *);
void x264_encoder_parameters(x264_t *, x264_param_t *);
int x264_encoder_headers(x264_t *, x264_nal_t **pp_nal, int *pi_nal);
int x264_encoder_encode(x264_t *, x264_nal_t **pp_nal, int *pi_nal,
                        x264_picture_t *pic_in, x264_picture_t *pic_out);
int x264_encoder_delayed_frames(x264_t *);
void x264_encoder_close(x264_t *);

/* glue (defined in _CSRC) */
""" + _RC_STRUCT + r"""void semvc_get_rc(const x264_param_t *p, semvc_rc_t *out);
void semvc_set_log(x264_param_t *p, void *priv, int level);
void semvc_param_cleanup(x264_param_t *p);
const char *semvc_preset_name(int i);
const char *semvc_tune_name(int i);
const char *semvc_profile_name(int i);
const char *semvc_version(void);
extern "Python" void semvc_log_cb(void *priv, int level, const char *msg);
"""

_CSRC = r"""
#include <stdint.h>
#include <stdarg.h>
#include <stdio.h>
#include <x264.h>

""" + _RC_STRUCT + r"""
static void semvc_get_rc(const x264_param_t *p, semvc_rc_t *o)
{
    o->rc_method = p->rc.i_rc_method;
    o->qp_constant = p->rc.i_qp_constant;
    o->qp_min = p->rc.i_qp_min;
    o->qp_max = p->rc.i_qp_max;
    o->bitrate = p->rc.i_bitrate;
    o->vbv_max_bitrate = p->rc.i_vbv_max_bitrate;
    o->vbv_buffer_size = p->rc.i_vbv_buffer_size;
    o->aq_mode = p->rc.i_aq_mode;
    o->mb_tree = p->rc.b_mb_tree;
    o->lookahead = p->rc.i_lookahead;
    o->rf_constant = p->rc.f_rf_constant;
    o->aq_strength = p->rc.f_aq_strength;
}

/* x264 logs through a printf-style callback taking a va_list; format here, hand a string on. */
static void semvc_log_cb(void *priv, int level, const char *msg);  /* extern "Python" */

static void semvc_log_trampoline(void *priv, int level, const char *fmt, va_list ap)
{
    char buf[1024];
    vsnprintf(buf, sizeof buf, fmt, ap);
    semvc_log_cb(priv, level, buf);
}

static void semvc_set_log(x264_param_t *p, void *priv, int level)
{
    p->pf_log = semvc_log_trampoline;
    p->p_log_private = priv;
    p->i_log_level = level;
}

static void semvc_param_cleanup(x264_param_t *p)
{
#ifdef X264_PARAM_ALLOC_FAILED  /* introduced together with x264_param_cleanup */
    x264_param_cleanup(p);
#else
    (void)p;
#endif
}

static const char *semvc_preset_name(int i) { return x264_preset_names[i]; }
static const char *semvc_tune_name(int i) { return x264_tune_names[i]; }
static const char *semvc_profile_name(int i) { return x264_profile_names[i]; }
static const char *semvc_version(void)
{
#ifdef X264_POINTVER
    return X264_POINTVER;
#else
    return "";
#endif
}
"""

_lib_lock = threading.Lock()
_binding = None  # (ffi, lib) once loaded


def cache_dir() -> Path:
    """Where compiled bindings live: ``$EDGE_SEMVC_CACHE/cffi`` or ``~/.cache/edge_semvc/cffi``."""
    root = os.environ.get("EDGE_SEMVC_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "edge_semvc"
    return base / "cffi"


def _pkg_config() -> dict[str, list[str]]:
    out = {"include_dirs": [], "library_dirs": [], "libraries": [], "define_macros": []}
    exe = shutil.which("pkg-config")
    if exe:
        try:
            res = subprocess.run([exe, "--cflags", "--libs", "x264"], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            res = None
        if res is not None and res.returncode == 0:
            for tok in res.stdout.split():
                if tok.startswith("-I"):
                    out["include_dirs"].append(tok[2:])
                elif tok.startswith("-L"):
                    out["library_dirs"].append(tok[2:])
                elif tok.startswith("-l"):
                    out["libraries"].append(tok[2:])
    if "x264" not in out["libraries"]:
        out["libraries"].append("x264")
    return out


def _header_dirs(extra: list[str]) -> list[Path]:
    dirs = [Path(d) for d in extra]
    for var in ("C_INCLUDE_PATH", "CPATH"):
        dirs += [Path(d) for d in os.environ.get(var, "").split(os.pathsep) if d]
    multiarch = sysconfig.get_config_var("MULTIARCH") or ""
    dirs += [Path("/usr/local/include"), Path("/usr/include")]
    if multiarch:
        dirs += [Path("/usr/local/include") / multiarch, Path("/usr/include") / multiarch]
    return dirs


def _find(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        if (d / name).is_file():
            return d / name
    return None


def _module_name(header: Path, config_h: Path | None) -> str:
    h = hashlib.sha256()
    for part in (_CDEF.encode(), _CSRC.encode(), header.read_bytes(),
                 config_h.read_bytes() if config_h else b"",
                 (sysconfig.get_config_var("EXT_SUFFIX") or "").encode()):
        h.update(part)
        h.update(b"\0")
    try:
        import cffi
        h.update(cffi.__version__.encode())
    except ImportError:  # pragma: no cover - reported by _build
        pass
    return "_semvc_x264_" + h.hexdigest()[:16]


def _load_module(name: str, path: Path):
    loader = importlib.machinery.ExtensionFileLoader(name, str(path))
    spec = importlib.util.spec_from_file_location(name, str(path), loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def _build_and_load():
    try:
        import cffi
    except ImportError as e:
        raise EncoderError(f"cffi is not installed ({e}); pip install cffi") from e
    pc = _pkg_config()
    dirs = _header_dirs(pc["include_dirs"])
    header = _find("x264.h", dirs)
    if header is None:
        raise EncoderError(f"x264.h not found (looked in {', '.join(map(str, dirs))}); "
                           f"{INSTALL_HINT}")
    config_h = _find("x264_config.h", dirs)
    name = _module_name(header, config_h)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    folder = cache_dir()
    target = folder / (name + suffix)
    if target.is_file():
        if not intact(target):  # loading a truncated .so can crash the process (SIGBUS)
            log.warning("cached x264 binding %s does not match the sha256 recorded when it was "
                        "built (damaged?); rebuilding", target)
        else:
            try:
                return _load_module(name, target)
            except ImportError as e:  # stale or broken file: rebuild below
                log.warning("cached x264 binding %s failed to load (%s); rebuilding", target, e)
    if not (shutil.which(os.environ.get("CC", "gcc").split()[0]) or shutil.which("cc")):
        raise EncoderError(f"no C compiler found to build the x264 binding; {INSTALL_HINT}")
    ffi = cffi.FFI()
    ffi.cdef(_CDEF)
    ffi.set_source(name, _CSRC, libraries=pc["libraries"], library_dirs=pc["library_dirs"],
                   include_dirs=[str(header.parent)] + pc["include_dirs"])
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix="build-", dir=folder))
    except OSError as e:
        raise EncoderError(f"cannot write the binding cache folder {folder} ({e}); point "
                           "EDGE_SEMVC_CACHE at a writable folder") from e
    try:
        log.info("building the x264 binding %s against %s (X264 header changed or first use)",
                 name, header)
        try:
            built = Path(ffi.compile(tmpdir=str(tmp), verbose=False))
        except Exception as e:  # CompileError, LinkError, VerificationError, ...
            raise EncoderError(f"building the x264 binding failed ({type(e).__name__}: {e}); "
                               f"{INSTALL_HINT}") from e
        record(built)
        os.replace(built.with_name(built.name + ".sha256"),
                   target.with_name(target.name + ".sha256"))
        os.replace(built, target)  # atomic: concurrent builders race harmlessly
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        return _load_module(name, target)
    except ImportError as e:
        raise EncoderError(f"loading the x264 binding {target} failed ({e}); {INSTALL_HINT}") from e


def _get_binding():
    """(ffi, lib), compiled on first use, cached per process and on disk."""
    global _binding
    if _binding is not None:
        return _binding
    with _lib_lock:
        if _binding is None:
            mod = _build_and_load()
            ffi, lib = mod.ffi, mod.lib

            @ffi.def_extern()
            def semvc_log_cb(priv, level, msg):  # may run on x264's threads
                try:
                    sink = ffi.from_handle(priv) if priv != ffi.NULL else None
                    text = ffi.string(msg).decode("utf-8", "replace").rstrip()
                    if sink is not None:
                        sink.emit(int(level), text)
                    else:
                        log.warning("x264: %s", text)
                except Exception:  # never let an exception cross into C
                    pass

            _binding = (ffi, lib)
    return _binding


def _names(fn) -> list[str]:
    ffi, lib = _get_binding()
    out, i = [], 0
    while True:
        p = fn(i)
        if p == ffi.NULL:
            return out
        out.append(ffi.string(p).decode())
        i += 1


def preset_names() -> list[str]:
    _, lib = _get_binding()
    return _names(lib.semvc_preset_name)


def tune_names() -> list[str]:
    _, lib = _get_binding()
    return _names(lib.semvc_tune_name)


def profile_names() -> list[str]:
    _, lib = _get_binding()
    return _names(lib.semvc_profile_name)


class _LogSink:
    """Receives x264's log lines (from any thread); keeps errors for exception messages."""

    def __init__(self, levels) -> None:
        self.errors: list[str] = []
        self._map = {levels.X264_LOG_ERROR: logging.ERROR, levels.X264_LOG_WARNING: logging.WARNING,
                     levels.X264_LOG_INFO: logging.INFO, levels.X264_LOG_DEBUG: logging.DEBUG}
        self._error_level = levels.X264_LOG_ERROR

    def emit(self, level: int, text: str) -> None:
        if level <= self._error_level:
            self.errors.append(text)
            if len(self.errors) > 20:
                del self.errors[0]
        log.log(self._map.get(level, logging.DEBUG), "x264: %s", text)


# --- the encoder --------------------------------------------------------------------------------

# keys handled by EncoderSettings; setting them through params would break the packet contract
_MANAGED = {"annexb", "repeat-headers", "fps", "timebase", "input-csp", "input-res", "input-depth",
            "csp", "output-csp", "bitdepth", "input-fmt"}


def _norm_key(k: str) -> str:
    return k.strip().lower().replace("_", "-")


class X264Encoder(Encoder):
    """H.264 through libx264. Output: Annex-B access units with x264's pts/dts."""

    type_key = "x264"

    def __init__(self, settings: EncoderSettings) -> None:
        super().__init__(settings)
        self._enc = None
        self._param = None
        self._flushed = False
        self._corrections: list[str] = []
        s = settings
        if s.width % 2 or s.height % 2:
            raise EncoderError(
                f"frame size {s.width}x{s.height} has an odd dimension: H.264 4:2:0 can only crop "
                "to even sizes; crop or pad the source by one pixel")
        self._ffi, self._lib = _get_binding()
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        s, ffi, lib = self.settings, self._ffi, self._lib
        self._check_preset_tune()
        self._log = _LogSink(lib)
        self._log_handle = ffi.new_handle(self._log)

        p = self._param = ffi.new("x264_param_t *")
        if lib.x264_param_default_preset(p, s.preset.encode(),
                                         s.tune.encode() if s.tune else ffi.NULL) < 0:
            raise EncoderError(f"x264 rejected preset {s.preset!r} / tune {s.tune!r}")
        level = lib.X264_LOG_INFO if log.isEnabledFor(logging.DEBUG) else lib.X264_LOG_WARNING
        lib.semvc_set_log(p, self._log_handle, level)
        p.i_width, p.i_height, p.i_csp = s.width, s.height, lib.X264_CSP_I420
        p.i_fps_num, p.i_fps_den = s.fps.numerator, s.fps.denominator
        p.i_timebase_num, p.i_timebase_den = s.time_base.numerator, s.time_base.denominator
        # b_vfr_input stays as preset/tune set it: 1 (rate control follows the timestamps) except
        # with tune zerolatency, which sets 0 (force-cfr): VFR costs one frame of delay.
        p.b_annexb = 1
        p.b_repeat_headers = 0 if s.global_headers else 1
        p.i_threads = s.threads

        self._apply_rc()
        bad, profile = [], None
        for k, v in s.params.items():
            if _norm_key(k) in _MANAGED:
                raise EncoderError(f"x264 param {k!r} is set from EncoderSettings "
                                   "(size, fps, time_base, global_headers); remove it from params")
            if _norm_key(k) == "profile":  # not a param_parse option: applied last, as x264's
                # command line does
                profile = str(v)
                continue
            err = self._parse(k, v)
            if err:
                bad.append(err)
        if bad:
            raise EncoderError("invalid x264 params: " + "; ".join(bad))
        if profile is not None:
            known = profile_names()
            if profile not in known:
                raise EncoderError(f"unknown x264 profile {profile!r}; known: {', '.join(known)}")
            if lib.x264_param_apply_profile(p, profile.encode()) < 0:
                raise EncoderError(f"x264 profile {profile!r} cannot be applied to these settings "
                                   "(e.g. lossless or 4:4:4 with a lower profile)")
        self._check_rc_and_aq()

        self._enc = lib.x264_encoder_open(p)
        if self._enc == ffi.NULL:
            self._enc = None
            why = "; ".join(self._log.errors) or "no reason given"
            raise EncoderError(f"x264_encoder_open failed: {why}")
        eff = ffi.new("x264_param_t *")
        lib.x264_encoder_parameters(self._enc, eff)
        self._eff_rc = ffi.new("semvc_rc_t *")
        lib.semvc_get_rc(eff, self._eff_rc)
        self._eff = {"threads": eff.i_threads, "bframes": eff.i_bframe, "keyint": eff.i_keyint_max,
                     "vfr_input": bool(eff.b_vfr_input)}
        if self._eff_rc.aq_mode == 0 or self._eff_rc.aq_strength <= 0:
            raise EncoderError("x264 turned adaptive quantisation off after validation; it would "
                               "ignore the QP-offset map")
        self._headers: bytes | None = None

        # per-frame state, allocated once
        self._pic_in = ffi.new("x264_picture_t *")
        lib.x264_picture_init(self._pic_in)
        self._pic_in.img.i_csp = lib.X264_CSP_I420
        self._pic_in.img.i_plane = 3
        self._pic_out = ffi.new("x264_picture_t *")
        self._pp_nal = ffi.new("x264_nal_t **")
        self._pi_nal = ffi.new("int *")
        self._ticks_per_frame = 1 / (s.fps * s.time_base)

    # -- setup helpers

    def _check_preset_tune(self) -> None:
        s = self.settings
        presets = preset_names()
        if s.preset not in presets and not (s.preset.isdigit() and int(s.preset) < len(presets)):
            raise EncoderError(f"unknown x264 preset {s.preset!r}; known: {', '.join(presets)}")
        if s.tune:
            tunes = tune_names()
            parts = [t for t in s.tune.replace(".", ",").replace("/", ",").replace("-", ",")
                     .replace("+", ",").split(",") if t]
            unknown = [t for t in parts if t not in tunes]
            if unknown or not parts:
                raise EncoderError(f"unknown x264 tune {s.tune!r}; known: {', '.join(tunes)}")
            psy = [t for t in parts if t not in ("fastdecode", "zerolatency")]
            if len(psy) > 1:
                raise EncoderError(f"x264 tune {s.tune!r} combines {psy}: only one of "
                                   "film/animation/grain/stillimage/psnr/ssim may be used")

    def _parse(self, name: str, value) -> str | None:
        ffi, lib = self._ffi, self._lib
        v = None if value is None else str(value)
        ret = lib.x264_param_parse(self._param, str(name).encode(),
                                   ffi.NULL if v is None else v.encode())
        if ret == lib.X264_PARAM_BAD_NAME:
            return f"unknown option {name!r}"
        if ret == lib.X264_PARAM_BAD_VALUE:
            return f"bad value {v!r} for {name!r}"
        if ret < 0:
            return f"{name!r}={v!r} failed (error {ret})"
        return None

    def _set(self, name: str, value) -> None:
        err = self._parse(name, value)
        if err:
            raise EncoderError(f"invalid x264 setting: {err}")

    def _apply_rc(self) -> None:
        s = self.settings
        if s.rc not in RATE_CONTROLS:
            if str(s.rc).lower() in ("cqp", "qp", "constqp", "const_qp"):
                raise EncoderError(
                    f"rc={s.rc!r} refused: x264 ignores quant_offsets (the QP-offset map) in "
                    "constant-QP mode; use rc='crf', 'abr' or 'cbr'")
            raise EncoderError(f"unknown rate control {s.rc!r}; use one of "
                               f"{', '.join(RATE_CONTROLS)}")
        if s.keyint is not None:
            self._set("keyint", s.keyint)
        kbps = None if s.bitrate is None else max(1, round(s.bitrate / 1000))
        if s.rc == "crf":
            self._set("crf", f"{float(s.crf):g}")
            if kbps is not None:
                self._set("vbv-maxrate", kbps)
                self._set("vbv-bufsize", kbps)
        elif s.rc == "abr":
            self._set("bitrate", kbps)
        else:  # cbr: 1 s VBV buffer at the target rate
            self._set("bitrate", kbps)
            self._set("vbv-maxrate", kbps)
            self._set("vbv-bufsize", kbps)

    def _rc(self):
        out = self._ffi.new("semvc_rc_t *")
        self._lib.semvc_get_rc(self._param, out)
        return out

    def _check_rc_and_aq(self) -> None:
        s, lib = self.settings, self._lib
        rc = self._rc()
        if rc.rc_method == lib.X264_RC_CQP:
            raise EncoderError(
                "constant-QP rate control requested (a 'qp' param): x264 ignores quant_offsets "
                "(the QP-offset map) in CQP; use rc='crf', 'abr' or 'cbr' and drop 'qp'")
        if rc.qp_min >= rc.qp_max:
            raise EncoderError(
                f"qpmin={rc.qp_min} >= qpmax={rc.qp_max} pins the quantiser, so x264 could not "
                "apply the QP-offset map; widen the qpmin/qpmax range")
        keys = {_norm_key(k) for k in s.params}
        if rc.aq_mode == 0:
            if "aq-mode" in keys:
                src = "params aq-mode=0"
            elif s.preset in ("ultrafast", "0"):
                src = f"preset {s.preset!r}"
            elif s.tune and "psnr" in s.tune:
                src = f"tune {s.tune!r}"
            else:
                src = "the preset/tune"
            self._set("aq-mode", "1")
            msg = (f"aq-mode 0 (from {src}) changed to aq-mode 1: x264 ignores the QP-offset map "
                   "with adaptive quantisation off")
            self._corrections.append(msg)
            log.warning("x264: %s", msg)
        rc = self._rc()
        if not rc.aq_strength > 0:
            self._set("aq-strength", "1.0")
            msg = (f"aq-strength {rc.aq_strength:g} changed to 1.0: x264 turns adaptive "
                   "quantisation, and with it the QP-offset map, off at strength 0")
            self._corrections.append(msg)
            log.warning("x264: %s", msg)

    # -- Encoder API

    @classmethod
    def available(cls) -> tuple[bool, str]:
        try:
            _get_binding()
        except EncoderError as e:
            return False, str(e)
        return True, ""

    def _require_open(self) -> None:
        if self._enc is None:
            raise EncoderError("encoder is closed")

    def _packets(self, ret: int) -> list[Packet]:
        if ret < 0:
            why = "; ".join(self._log.errors[-3:]) or f"error {ret}"
            raise EncoderError(f"x264_encoder_encode failed: {why}")
        if ret == 0:
            return []
        nal = self._pp_nal[0]
        data = bytes(self._ffi.buffer(nal[0].p_payload, ret))  # copy: invalid after next call
        o = self._pic_out
        return [Packet(data, int(o.i_pts), int(o.i_dts), bool(o.b_keyframe))]

    def _pts_for(self, frame: Frame) -> int:
        s = self.settings
        if frame.pts is None:
            pts = round(frame.index * self._ticks_per_frame)
        elif frame.time_base is not None and Fraction(frame.time_base) != s.time_base:
            pts = round(frame.pts * Fraction(frame.time_base) / s.time_base)
        else:
            pts = int(frame.pts)
        return pts

    def _plane(self, a: np.ndarray, h: int, w: int, name: str) -> np.ndarray:
        if a.dtype != np.uint8 or a.ndim != 2:
            raise EncoderError(f"{name} plane must be 2-D uint8, got {a.dtype} {a.shape}")
        if a.shape[0] < h or a.shape[1] < w:
            raise EncoderError(f"{name} plane is {a.shape[1]}x{a.shape[0]}, expected {w}x{h}")
        if a.strides[1] != 1 or a.strides[0] < w:
            a = np.ascontiguousarray(a)
        return a

    def encode(self, frame: Frame, qp_offsets: np.ndarray | None = None,
               force_idr: bool = False) -> list[Packet]:
        self._require_open()
        if self._flushed:
            raise EncoderError("encode() after flush(): the stream has ended; open a new encoder")
        s, ffi, lib = self.settings, self._ffi, self._lib
        if frame.width != s.width or frame.height != s.height:
            raise EncoderError(f"frame is {frame.width}x{frame.height}, encoder was opened for "
                               f"{s.width}x{s.height}")
        cw, ch = s.width // 2, s.height // 2
        planes = (self._plane(frame.y, s.height, s.width, "Y"),
                  self._plane(frame.u, ch, cw, "U"),
                  self._plane(frame.v, ch, cw, "V"))
        pic = self._pic_in
        for i, a in enumerate(planes):
            pic.img.plane[i] = ffi.cast("uint8_t *", a.ctypes.data)
            pic.img.i_stride[i] = a.strides[0]
        qbuf = None
        if qp_offsets is not None:
            q = np.ascontiguousarray(qp_offsets, dtype=np.float32)
            if q.shape != (s.mb_h, s.mb_w):
                raise EncoderError(f"QP-offset map has shape {tuple(np.shape(qp_offsets))}, "
                                   f"expected (mb_h, mb_w) = ({s.mb_h}, {s.mb_w}) for "
                                   f"{s.width}x{s.height}")
            if not np.isfinite(q).all():
                raise EncoderError("QP-offset map contains NaN or infinite values")
            qbuf = ffi.from_buffer("float[]", q)
            pic.prop.quant_offsets = qbuf
        else:
            pic.prop.quant_offsets = ffi.NULL
        pts = self._pts_for(frame)
        pic.i_pts = pts
        # IDR (not X264_TYPE_KEYFRAME, an I-frame under open-GOP): a segment must decode alone.
        pic.i_type = lib.X264_TYPE_IDR if force_idr else lib.X264_TYPE_AUTO
        try:
            ret = lib.x264_encoder_encode(self._enc, self._pp_nal, self._pi_nal, pic, self._pic_out)
        finally:  # x264 copied planes and offsets; drop the borrowed pointers
            pic.prop.quant_offsets = ffi.NULL
            for i in range(3):
                pic.img.plane[i] = ffi.NULL
        del planes, qbuf
        return self._packets(ret)

    def flush(self) -> list[Packet]:
        self._require_open()
        self._flushed = True
        out: list[Packet] = []
        lib, ffi = self._lib, self._ffi
        while lib.x264_encoder_delayed_frames(self._enc) > 0:
            ret = lib.x264_encoder_encode(self._enc, self._pp_nal, self._pi_nal, ffi.NULL,
                                          self._pic_out)
            out += self._packets(ret)
        return out

    def headers(self) -> bytes:
        """SPS and PPS (Annex-B, with start codes); x264's version SEI is left out."""
        self._require_open()
        if self._headers is None:
            ret = self._lib.x264_encoder_headers(self._enc, self._pp_nal, self._pi_nal)
            if ret < 0:
                raise EncoderError("x264_encoder_headers failed")
            nals = self._pp_nal[0]
            self._headers = b"".join(bytes(self._ffi.buffer(nals[i].p_payload, nals[i].i_payload))
                                     for i in range(self._pi_nal[0]) if nals[i].i_type in (7, 8))
        return self._headers

    def close(self) -> None:
        enc = getattr(self, "_enc", None)
        if enc is not None:
            self._enc = None
            self._lib.x264_encoder_close(enc)
        param = getattr(self, "_param", None)
        if param is not None:
            self._param = None
            self._lib.semvc_param_cleanup(param)

    def settings_summary(self) -> dict:
        s = self.settings
        rc = getattr(self, "_eff_rc", None)
        ffi, lib = self._ffi, self._lib
        out = {
            "backend": self.type_key,
            "x264_build": int(lib.X264_BUILD),
            "x264_version": ffi.string(lib.semvc_version()).decode(),
            "width": s.width, "height": s.height,
            "fps": str(s.fps), "time_base": str(s.time_base),
            "preset": s.preset, "tune": s.tune, "rc": s.rc,
            "crf": float(s.crf) if s.rc == "crf" else None,
            "bitrate": s.bitrate,
            "global_headers": s.global_headers,
            "params": dict(s.params),
            "corrections": list(self._corrections),
        }
        if rc is not None:
            out.update({
                "rc_method": {lib.X264_RC_CQP: "cqp", lib.X264_RC_CRF: "crf",
                              lib.X264_RC_ABR: "abr"}.get(int(rc.rc_method), str(rc.rc_method)),
                "aq_mode": int(rc.aq_mode), "aq_strength": round(float(rc.aq_strength), 4),
                "vbv_maxrate_kbps": int(rc.vbv_max_bitrate),
                "vbv_bufsize_kbit": int(rc.vbv_buffer_size),
                "mb_tree": bool(rc.mb_tree), "rc_lookahead": int(rc.lookahead),
                **self._eff,
            })
        return out

"""The libx264 binding: cffi (API / out-of-line mode) compiled against the installed ``x264.h``
on first use and cached in ``$EDGE_SEMVC_CACHE/cffi`` (default ``~/.cache/edge_semvc/cffi``),
under a name that hashes the declarations, the C glue, ``x264.h``/``x264_config.h`` and the
Python ABI: it is rebuilt only when one of them changes (e.g. another x264 build on a Jetson).
Only the struct fields used are declared (partial structs, ``...;``), so the C compiler lays them
out; no offset is hard-coded. The nested ``rc`` block of ``x264_param_t`` is read through a small
C accessor for the same reason. The encoder itself is ``x264.py``.
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
from pathlib import Path

from ..checksums import intact, record
from .base import EncoderError

log = logging.getLogger("edge_semvc.encoders.x264")

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

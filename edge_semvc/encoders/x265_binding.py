"""The libx265 binding: cffi (API / out-of-line mode) compiled against the installed ``x265.h``
on first use and cached beside the x264 binding (``$EDGE_SEMVC_CACHE/cffi``), under a name that
hashes the declarations, the C glue, ``x265.h``/``x265_config.h`` and the Python ABI.

The library is reached through ``x265_api_get(8)`` (a macro over the build number, so a header
and a library of different builds fail at link time rather than at run time) and its function
table; the table's struct sizes are checked against this header before use. Only the fields used
are declared (partial structs), so the compiler lays them out; the nested ``rc`` block of
``x265_param`` is copied out by a small C accessor. The encoder itself is ``x265.py``.
"""
from __future__ import annotations

import hashlib
import importlib.machinery
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
from .x264_binding import _find, _header_dirs, _load_module, cache_dir  # one cache, one search

log = logging.getLogger("edge_semvc.encoders.x265")

INSTALL_HINT = "install libx265-dev and gcc (Debian/Ubuntu: sudo apt-get install libx265-dev gcc)"
BIT_DEPTH = 8  # frames are 8-bit I420; x265_api_get(8) picks (or dlopens) an 8-bit build

# The rate-control fields we read and write, copied to and from x265_param.rc by the C glue.
_RC_STRUCT = r"""
typedef struct {
    int rc_method;
    int qp;
    int qp_min;
    int qp_max;
    int bitrate;
    int vbv_max_bitrate;
    int vbv_buffer_size;
    int aq_mode;
    int hevc_aq;
    int cu_tree;
    int stat_read;
    int qg_size;
    double rf_constant;
    double aq_strength;
} semvc265_rc_t;
"""

_CDEF = r"""
typedef struct x265_encoder x265_encoder;

typedef struct {
    uint32_t type;
    uint32_t sizeBytes;
    uint8_t *payload;
    ...;
} x265_nal;

typedef struct {
    int frameNumThreads;
    int logLevel;
    int internalBitDepth;
    int internalCsp;
    uint32_t fpsNum;
    uint32_t fpsDenom;
    int sourceWidth;
    int sourceHeight;
    int bRepeatHeaders;
    int bAnnexB;
    int bOpenGOP;
    int keyframeMax;
    int bframes;
    int lookaheadDepth;
    uint32_t maxCUSize;
    uint32_t minCUSize;
    int bLossless;
    ...;
} x265_param;

typedef struct {
    int64_t pts;
    int64_t dts;
    void *planes[3];
    int stride[3];
    int bitDepth;
    int sliceType;
    int poc;
    int colorSpace;
    int forceqp;
    float *quantOffsets;
    ...;
} x265_picture;

typedef struct {
    int api_major_version;
    int api_build_number;
    int sizeof_param;
    int sizeof_picture;
    int bit_depth;
    const char *version_str;
    x265_param *(*param_alloc)(void);
    void (*param_free)(x265_param *);
    void (*param_default)(x265_param *);
    int (*param_parse)(x265_param *, const char *, const char *);
    int (*param_apply_profile)(x265_param *, const char *);
    int (*param_default_preset)(x265_param *, const char *, const char *);
    x265_picture *(*picture_alloc)(void);
    void (*picture_free)(x265_picture *);
    void (*picture_init)(x265_param *, x265_picture *);
    x265_encoder *(*encoder_open)(x265_param *);
    void (*encoder_parameters)(x265_encoder *, x265_param *);
    int (*encoder_headers)(x265_encoder *, x265_nal **, uint32_t *);
    int (*encoder_encode)(x265_encoder *, x265_nal **, uint32_t *, x265_picture *,
                          x265_picture *);
    void (*encoder_close)(x265_encoder *);
    ...;
} x265_api;

#define X265_BUILD ...
#define X265_MAJOR_VERSION ...
#define X265_CSP_I420 ...
#define X265_PARAM_BAD_NAME ...
#define X265_PARAM_BAD_VALUE ...
#define X265_TYPE_AUTO ...
#define X265_TYPE_IDR ...
#define X265_LOG_ERROR ...
#define X265_LOG_WARNING ...
#define X265_LOG_INFO ...

typedef enum { X265_RC_ABR, X265_RC_CQP, X265_RC_CRF } X265_RC_METHODS;

/* glue (defined in _CSRC) */
""" + _RC_STRUCT + r"""const x265_api *semvc265_api(int bit_depth);
int semvc265_sizeof_param(void);
int semvc265_sizeof_picture(void);
void semvc265_get_rc(const x265_param *p, semvc265_rc_t *out);
const char *semvc265_preset_name(int i);
const char *semvc265_tune_name(int i);
const char *semvc265_profile_name(int i);
"""

_CSRC = r"""
#include <stdint.h>
#include <stdio.h>
#include <x265.h>

""" + _RC_STRUCT + r"""
/* x265_api_get expands to x265_api_get_<X265_BUILD>: a header/library mismatch fails to link */
static const x265_api *semvc265_api(int bit_depth) { return x265_api_get(bit_depth); }
static int semvc265_sizeof_param(void) { return (int)sizeof(x265_param); }
static int semvc265_sizeof_picture(void) { return (int)sizeof(x265_picture); }

static void semvc265_get_rc(const x265_param *p, semvc265_rc_t *o)
{
    o->rc_method = p->rc.rateControlMode;
    o->qp = p->rc.qp;
    o->qp_min = p->rc.qpMin;
    o->qp_max = p->rc.qpMax;
    o->bitrate = p->rc.bitrate;
    o->vbv_max_bitrate = p->rc.vbvMaxBitrate;
    o->vbv_buffer_size = p->rc.vbvBufferSize;
    o->aq_mode = p->rc.aqMode;
    o->hevc_aq = p->rc.hevcAq;
    o->cu_tree = p->rc.cuTree;
    o->stat_read = p->rc.bStatRead;
    o->qg_size = (int)p->rc.qgSize;
    o->rf_constant = p->rc.rfConstant;
    o->aq_strength = p->rc.aqStrength;
}

static const char *semvc265_preset_name(int i) { return x265_preset_names[i]; }
static const char *semvc265_tune_name(int i) { return x265_tune_names[i]; }
static const char *semvc265_profile_name(int i) { return x265_profile_names[i]; }
"""

_lib_lock = threading.Lock()
_binding = None  # (ffi, lib) once loaded
_apis: dict[int, object] = {}  # bit depth -> checked x265_api pointer


def _pkg_config() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"include_dirs": [], "library_dirs": [], "libraries": []}
    exe = shutil.which("pkg-config")
    if exe:
        try:
            res = subprocess.run([exe, "--cflags", "--libs", "x265"], capture_output=True,
                                 text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            res = None
        if res is not None and res.returncode == 0:
            for tok in res.stdout.split():
                for flag, key in (("-I", "include_dirs"), ("-L", "library_dirs"),
                                  ("-l", "libraries")):
                    if tok.startswith(flag):
                        out[key].append(tok[2:])
    if "x265" not in out["libraries"]:
        out["libraries"].append("x265")
    return out


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
    except ImportError:  # pragma: no cover - reported by _build_and_load
        pass
    return "_semvc_x265_" + h.hexdigest()[:16]


def _build_and_load():
    try:
        import cffi
    except ImportError as e:
        raise EncoderError(f"cffi is not installed ({e}); pip install cffi") from e
    pc = _pkg_config()
    dirs = _header_dirs(pc["include_dirs"])
    header = _find("x265.h", dirs)
    if header is None:
        raise EncoderError(f"x265.h not found (looked in {', '.join(map(str, dirs))}); "
                           f"{INSTALL_HINT}")
    config_h = _find("x265_config.h", dirs)
    name = _module_name(header, config_h)
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    folder = cache_dir()
    target = folder / (name + suffix)
    if target.is_file():
        if not intact(target):  # loading a truncated .so can crash the process (SIGBUS)
            log.warning("cached x265 binding %s does not match the sha256 recorded when it was "
                        "built (damaged?); rebuilding", target)
        else:
            try:
                return _load_module(name, target)
            except ImportError as e:  # stale or broken file: rebuild below
                log.warning("cached x265 binding %s failed to load (%s); rebuilding", target, e)
    if not (shutil.which(os.environ.get("CC", "gcc").split()[0]) or shutil.which("cc")):
        raise EncoderError(f"no C compiler found to build the x265 binding; {INSTALL_HINT}")
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
        log.info("building the x265 binding %s against %s (x265 header changed or first use)",
                 name, header)
        try:
            built = Path(ffi.compile(tmpdir=str(tmp), verbose=False))
        except Exception as e:  # CompileError, LinkError, VerificationError, ...
            raise EncoderError(f"building the x265 binding failed ({type(e).__name__}: {e}); "
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
        raise EncoderError(f"loading the x265 binding {target} failed ({e}); {INSTALL_HINT}") from e


def _get_binding():
    """(ffi, lib), compiled on first use, cached per process and on disk."""
    global _binding
    if _binding is not None:
        return _binding
    with _lib_lock:
        if _binding is None:
            mod = _build_and_load()
            _binding = (mod.ffi, mod.lib)
    return _binding


def get_api(bit_depth: int = BIT_DEPTH):
    """(ffi, lib, api): the library's function table for ``bit_depth``, checked against the
    header this binding was compiled with (major version, build, struct sizes)."""
    ffi, lib = _get_binding()
    api = _apis.get(bit_depth)
    if api is None:
        api = lib.semvc265_api(bit_depth)
        if api == ffi.NULL:
            raise EncoderError(f"libx265 has no {bit_depth}-bit encoder (x265_api_get({bit_depth}) "
                               "returned NULL); install a libx265 built for 8-bit (Debian/Ubuntu: "
                               "libx265-dev)")
        want = {"api_major_version": lib.X265_MAJOR_VERSION, "api_build_number": lib.X265_BUILD,
                "sizeof_param": lib.semvc265_sizeof_param(),
                "sizeof_picture": lib.semvc265_sizeof_picture()}
        bad = [f"{k} {getattr(api, k)} != {v}" for k, v in want.items() if getattr(api, k) != v]
        if bad:
            raise EncoderError("libx265 does not match the x265.h the binding was built with ("
                               + ", ".join(bad) + "); reinstall libx265-dev so header and library "
                               "come from one build")
        _apis[bit_depth] = api
    return ffi, lib, api


def _names(fn) -> list[str]:
    ffi, _ = _get_binding()
    out, i = [], 0
    while True:
        p = fn(i)
        if p == ffi.NULL:
            return out
        out.append(ffi.string(p).decode())
        i += 1


def preset_names() -> list[str]:
    return _names(_get_binding()[1].semvc265_preset_name)


def tune_names() -> list[str]:
    return _names(_get_binding()[1].semvc265_tune_name)


def profile_names() -> list[str]:
    return _names(_get_binding()[1].semvc265_profile_name)

"""The libx265 binding: cffi (API / out-of-line mode) compiled against the installed ``x265.h``
on first use and cached beside the x264 binding (``$EDGE_SEMVC_CACHE/cffi``) by ``cffi_build``,
under a name that hashes the declarations, the C glue, ``x265.h``/``x265_config.h`` and the
Python ABI.

The library is reached through ``x265_api_get(8)`` (a macro over the build number, so a header
and a library of different builds fail at link time rather than at run time) and its function
table; the table's struct sizes are checked against this header before use. Only the fields used
are declared (partial structs), so the compiler lays them out; the nested ``rc`` block of
``x265_param`` is copied out by a small C accessor. The encoder itself is ``x265.py``.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from .base import EncoderError
from .cffi_build import Binding, c_names, compile_library, module_name
from .cffi_build import find_file as _find

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
    int (*encoder_reconfig)(x265_encoder *, x265_param *);
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
int semvc265_reconfig_rate(const x265_api *api, x265_encoder *enc, x265_param *scratch,
                           int bitrate, int vbv_max, int vbv_buf, double crf,
                           semvc265_rc_t *now);
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

/* A new rate target while encoding (as x264's: the bit rate and VBV only where VBV was on from
   the start); `scratch` holds a copy of the encoder's parameters, `now` what it reports after.
   Not called by the encoder: libx265 3.5 reports the new values but its rate control keeps the
   old ones (X265Encoder.reconfigure refuses); tests/test_live_rate.py calls it to notice a
   libx265 that follows. */
static int semvc265_reconfig_rate(const x265_api *api, x265_encoder *enc, x265_param *scratch,
                                  int bitrate, int vbv_max, int vbv_buf, double crf,
                                  semvc265_rc_t *now)
{
    api->encoder_parameters(enc, scratch);
    if (bitrate > 0)
        scratch->rc.bitrate = bitrate;
    if (vbv_max > 0) {
        scratch->rc.vbvMaxBitrate = vbv_max;
        scratch->rc.vbvBufferSize = vbv_buf;
    }
    if (crf >= 0)
        scratch->rc.rfConstant = crf;
    int ret = api->encoder_reconfig(enc, scratch);
    api->encoder_parameters(enc, scratch);
    semvc265_get_rc(scratch, now);
    return ret;
}

static const char *semvc265_preset_name(int i) { return x265_preset_names[i]; }
static const char *semvc265_tune_name(int i) { return x265_tune_names[i]; }
static const char *semvc265_profile_name(int i) { return x265_profile_names[i]; }
"""

_apis: dict[int, object] = {}  # bit depth -> checked x265_api pointer
_PREFIX = "_semvc_x265"


def _module_name(header: Path, config_h: Path | None) -> str:
    return module_name(_PREFIX, _CDEF, _CSRC, [header, config_h])


def _build_and_load():
    return compile_library("x265", _PREFIX, _CDEF, _CSRC, hint=INSTALL_HINT, log=log, find=_find)


# (ffi, lib), compiled on first use, cached per process and on disk
_get_binding = Binding(_build_and_load)


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


# the names x265 accepts, read from its NULL-terminated arrays: list[str] on each call
preset_names = partial(c_names, _get_binding, "semvc265_preset_name")
tune_names = partial(c_names, _get_binding, "semvc265_tune_name")
profile_names = partial(c_names, _get_binding, "semvc265_profile_name")

"""The libx264 binding: cffi (API / out-of-line mode) compiled against the installed ``x264.h``
on first use and cached in ``$EDGE_SEMVC_CACHE/cffi`` (default ``~/.cache/edge_semvc/cffi``) by
``cffi_build``, under a name that hashes the declarations, the C glue, ``x264.h``/``x264_config.h``
and the Python ABI: it is rebuilt only when one of them changes (e.g. another x264 build on a
Jetson). Only the struct fields used are declared (partial structs, ``...;``), so the C compiler
lays them out; no offset is hard-coded. The nested ``rc`` block of ``x264_param_t`` is read
through a small C accessor for the same reason. The encoder itself is ``x264.py``.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

from .cffi_build import (
    Binding,
    c_names,
    cache_dir,  # noqa: F401  (re-exported: where the bindings are cached)
    compile_library,
    module_name,
)
from .cffi_build import find_file as _find

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
void x264_encoder_intra_refresh(x264_t *);
void x264_encoder_close(x264_t *);

/* glue (defined in _CSRC) */
""" + _RC_STRUCT + r"""void semvc_get_rc(const x264_param_t *p, semvc_rc_t *out);
void semvc_set_log(x264_param_t *p, void *priv, int level);
int semvc_reconfig_rate(x264_t *h, int bitrate, int vbv_max, int vbv_buf, float crf,
                        semvc_rc_t *now);
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

/* A new rate target while encoding: x264_encoder_reconfig copies the bit rate and the VBV
   only when VBV was on from the start, the CRF always; `now` gets what it runs with after. */
static int semvc_reconfig_rate(x264_t *h, int bitrate, int vbv_max, int vbv_buf, float crf,
                               semvc_rc_t *now)
{
    x264_param_t p;
    x264_encoder_parameters(h, &p);
    if (bitrate > 0)
        p.rc.i_bitrate = bitrate;
    if (vbv_max > 0) {
        p.rc.i_vbv_max_bitrate = vbv_max;
        p.rc.i_vbv_buffer_size = vbv_buf;
    }
    if (crf >= 0)
        p.rc.f_rf_constant = crf;
    int ret = x264_encoder_reconfig(h, &p);
    x264_encoder_parameters(h, &p);
    semvc_get_rc(&p, now);
    return ret;
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

_PREFIX = "_semvc_x264"


def _module_name(header: Path, config_h: Path | None) -> str:
    return module_name(_PREFIX, _CDEF, _CSRC, [header, config_h])


def _build_and_load():
    return compile_library("x264", _PREFIX, _CDEF, _CSRC, hint=INSTALL_HINT, log=log, find=_find)


def _define_log_callback(ffi, lib) -> None:
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


# (ffi, lib), compiled on first use, cached per process and on disk
_get_binding = Binding(_build_and_load, setup=_define_log_callback)


# the names x264 accepts, read from its NULL-terminated arrays: list[str] on each call
preset_names = partial(c_names, _get_binding, "semvc_preset_name")
tune_names = partial(c_names, _get_binding, "semvc_tune_name")
profile_names = partial(c_names, _get_binding, "semvc_profile_name")

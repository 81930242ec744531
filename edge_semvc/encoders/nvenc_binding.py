"""The NVENC binding: cffi (API mode) compiled against ``nvEncodeAPI.h`` (the MIT-licensed
headers of Debian's ``libffmpeg-nvenc-dev``, /usr/include/ffnvcodec, or a Video Codec SDK's),
cached like the x264 binding. Only the struct fields used are declared (``...;``); the config
structs, which are full of bit-fields and unions, are filled by the C glue below, so Python never
touches their layout. ``libnvidia-encode.so.1`` and ``libcuda.so.1`` (the driver's) are opened
with dlopen at run time: the binding builds, and its configuration code runs, without a GPU.
The cached build and the header search are ``cffi_build``'s.
"""
from __future__ import annotations

import logging

from .base import EncoderError
from .cffi_build import (
    Binding,
    BuildMessages,
    LinkSpec,
    compile_cached,
    find_header,
    header_missing,
)

log = logging.getLogger(__name__)

HEADER = "nvEncodeAPI.h"
INCLUDE_ENV = "NVENC_INCLUDE"
HEADER_DIRS = ("/usr/include/ffnvcodec", "/usr/local/include/ffnvcodec")
INSTALL_HINT = ("install the NVENC headers (Debian/Ubuntu: sudo apt-get install "
                "libffmpeg-nvenc-dev) or set NVENC_INCLUDE to a folder with nvEncodeAPI.h")

# --- the binding ------------------------------------------------------------------------------

# Settings in, effective settings out (read back after the preset), shared by cffi and the C glue.
_OPTS = r"""
typedef struct {
    int hevc;              /* 0: H.264, 1: HEVC */
    int rc_mode;           /* 0: constant quality (VBR + target quality), 1: VBR, 2: CBR,
                              3: constant QP (read back only) */
    uint32_t bitrate;      /* bits/s: average (VBR, CBR); 0 = none */
    uint32_t max_bitrate;  /* bits/s: VBR peak; 0 = the driver's */
    uint32_t vbv_size;     /* bits; 0 = the driver's */
    uint32_t cq_q8;        /* target quality x 256 (rc_mode 0) */
    int min_qp, max_qp;    /* -1: unset */
    uint32_t gop;          /* frames between I-frames; 0 = the preset's */
    uint32_t idr_period;   /* frames between IDRs; 0 = gop */
    int repeat_headers;    /* parameter sets at every IDR */
    int no_headers;        /* no in-band parameter sets (the container keeps them) */
    uint32_t intra_refresh;  /* frames a refresh sweeps the picture in, instead of IDRs; 0: off */
    uint32_t colour[3];    /* H.273 primaries, transfer, matrix; 2 each: unspecified (no VUI) */
    int qp_map_mode, aq, lookahead, frame_interval_p, ctb;  /* read back */
} semvc_nvenc_opts_t;
"""

_CDEF = _OPTS + r"""
typedef int... NVENCSTATUS;
typedef int... NV_ENC_BUFFER_FORMAT;
typedef int... NV_ENC_PIC_STRUCT;
typedef int... NV_ENC_PIC_TYPE;

#define NVENCAPI_MAJOR_VERSION ...
#define NVENCAPI_MINOR_VERSION ...
#define NVENCAPI_VERSION ...
#define NVENC_INFINITE_GOPLENGTH ...
#define NV_MAX_SEQ_HDR_LEN ...
#define NV_ENC_SUCCESS ...
#define NV_ENC_ERR_NEED_MORE_INPUT ...
#define NV_ENC_QP_MAP_DELTA ...
#define NV_ENC_BUFFER_FORMAT_NV12 ...
#define NV_ENC_PIC_STRUCT_FRAME ...
#define NV_ENC_PIC_TYPE_IDR ...
#define NV_ENC_PIC_FLAG_FORCEIDR ...
#define NV_ENC_PIC_FLAG_OUTPUT_SPSPPS ...
#define NV_ENC_PIC_FLAG_EOS ...
#define NV_ENC_CREATE_INPUT_BUFFER_VER ...
#define NV_ENC_CREATE_BITSTREAM_BUFFER_VER ...
#define NV_ENC_LOCK_INPUT_BUFFER_VER ...
#define NV_ENC_LOCK_BITSTREAM_VER ...
#define NV_ENC_PIC_PARAMS_VER ...
#define NV_ENC_SEQUENCE_PARAM_PAYLOAD_VER ...
#define NV_ENC_CONFIG_VER ...
#define NV_ENC_RECONFIGURE_PARAMS_VER ...
#define NV_ENC_CAPS_SUPPORT_DYN_BITRATE_CHANGE ...
#define NV_ENC_CAPS_SUPPORT_INTRA_REFRESH ...
#define NV_ENC_TUNING_INFO_HIGH_QUALITY ...
#define NV_ENC_TUNING_INFO_LOW_LATENCY ...
#define NV_ENC_TUNING_INFO_ULTRA_LOW_LATENCY ...

typedef struct { uint32_t version; ...; } NV_ENC_CONFIG;
typedef struct { uint32_t version; NV_ENC_CONFIG *encodeConfig; ...; } NV_ENC_INITIALIZE_PARAMS;
typedef struct {  /* then the bit-fields resetEncoder, forceIDR: set by the C glue */
    uint32_t version; NV_ENC_INITIALIZE_PARAMS reInitEncodeParams; ...;
} NV_ENC_RECONFIGURE_PARAMS;
typedef struct {
    uint32_t version; uint32_t width; uint32_t height; NV_ENC_BUFFER_FORMAT bufferFmt;
    void *inputBuffer; ...;
} NV_ENC_CREATE_INPUT_BUFFER;
typedef struct { uint32_t version; void *bitstreamBuffer; ...; } NV_ENC_CREATE_BITSTREAM_BUFFER;
typedef struct {
    uint32_t version; void *inputBuffer; void *bufferDataPtr; uint32_t pitch; ...;
} NV_ENC_LOCK_INPUT_BUFFER;
typedef struct {
    uint32_t version; uint32_t inputWidth; uint32_t inputHeight; uint32_t inputPitch;
    uint32_t encodePicFlags; uint32_t frameIdx; uint64_t inputTimeStamp; void *inputBuffer;
    void *outputBitstream; NV_ENC_BUFFER_FORMAT bufferFmt; NV_ENC_PIC_STRUCT pictureStruct;
    int8_t *qpDeltaMap; uint32_t qpDeltaMapSize; ...;
} NV_ENC_PIC_PARAMS;
typedef struct {
    uint32_t version; void *outputBitstream; uint32_t bitstreamSizeInBytes;
    uint64_t outputTimeStamp; void *bitstreamBufferPtr; NV_ENC_PIC_TYPE pictureType;
    uint32_t frameAvgQP; ...;
} NV_ENC_LOCK_BITSTREAM;
typedef struct {
    uint32_t version; uint32_t inBufferSize; void *spsppsBuffer;
    uint32_t *outSPSPPSPayloadSize; ...;
} NV_ENC_SEQUENCE_PARAM_PAYLOAD;
typedef struct {
    uint32_t version;
    NVENCSTATUS (*nvEncCreateInputBuffer)(void *, NV_ENC_CREATE_INPUT_BUFFER *);
    NVENCSTATUS (*nvEncDestroyInputBuffer)(void *, void *);
    NVENCSTATUS (*nvEncCreateBitstreamBuffer)(void *, NV_ENC_CREATE_BITSTREAM_BUFFER *);
    NVENCSTATUS (*nvEncDestroyBitstreamBuffer)(void *, void *);
    NVENCSTATUS (*nvEncEncodePicture)(void *, NV_ENC_PIC_PARAMS *);
    NVENCSTATUS (*nvEncLockBitstream)(void *, NV_ENC_LOCK_BITSTREAM *);
    NVENCSTATUS (*nvEncUnlockBitstream)(void *, void *);
    NVENCSTATUS (*nvEncLockInputBuffer)(void *, NV_ENC_LOCK_INPUT_BUFFER *);
    NVENCSTATUS (*nvEncUnlockInputBuffer)(void *, void *);
    NVENCSTATUS (*nvEncGetSequenceParams)(void *, NV_ENC_SEQUENCE_PARAM_PAYLOAD *);
    NVENCSTATUS (*nvEncDestroyEncoder)(void *);
    const char *(*nvEncGetLastErrorString)(void *);
    NVENCSTATUS (*nvEncReconfigureEncoder)(void *, NV_ENC_RECONFIGURE_PARAMS *);
    ...;
} NV_ENCODE_API_FUNCTION_LIST;

int semvc_nvenc_load(char *err, int n);
int semvc_nvenc_driver_version(uint32_t *driver, uint32_t *header);
int semvc_nvenc_create(NV_ENCODE_API_FUNCTION_LIST *fl);
int semvc_cuda_ctx_create(int ordinal, void **ctx, char *err, int n);
void semvc_cuda_ctx_destroy(void *ctx);
NVENCSTATUS semvc_nvenc_open(NV_ENCODE_API_FUNCTION_LIST *fl, void *cuda_ctx, void **enc);
NVENCSTATUS semvc_nvenc_init(NV_ENCODE_API_FUNCTION_LIST *fl, void *enc,
                             const semvc_nvenc_opts_t *o, int preset, int tuning,
                             uint32_t width, uint32_t height, uint32_t fps_num, uint32_t fps_den,
                             NV_ENC_CONFIG *cfg, NV_ENC_INITIALIZE_PARAMS *ip);
int semvc_nvenc_cap(NV_ENCODE_API_FUNCTION_LIST *fl, void *enc, int hevc, int cap);
NVENCSTATUS semvc_nvenc_reconfig(NV_ENCODE_API_FUNCTION_LIST *fl, void *enc,
                                 NV_ENC_INITIALIZE_PARAMS *ip, const semvc_nvenc_opts_t *o);
void semvc_nvenc_apply(NV_ENC_CONFIG *c, const semvc_nvenc_opts_t *o);
void semvc_nvenc_rate(NV_ENC_CONFIG *c, const semvc_nvenc_opts_t *o);
void semvc_nvenc_read(const NV_ENC_CONFIG *c, int hevc, semvc_nvenc_opts_t *o);
"""

_CSRC = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <dlfcn.h>
#include <nvEncodeAPI.h>

""" + _OPTS + r"""
typedef NVENCSTATUS (NVENCAPI *semvc_create_fn)(NV_ENCODE_API_FUNCTION_LIST *);
typedef NVENCSTATUS (NVENCAPI *semvc_maxver_fn)(uint32_t *);
/* the CUDA driver API, declared here (CUresult, CUdevice: int; CUcontext: a pointer) */
typedef int (*semvc_cu_init_fn)(unsigned int);
typedef int (*semvc_cu_device_get_fn)(int *, int);
typedef int (*semvc_cu_ctx_create_fn)(void **, unsigned int, int);
typedef int (*semvc_cu_ctx_destroy_fn)(void *);
typedef int (*semvc_cu_error_fn)(int, const char **);

static semvc_create_fn semvc_create;
static semvc_maxver_fn semvc_maxver;
static semvc_cu_init_fn semvc_cu_init;
static semvc_cu_device_get_fn semvc_cu_device_get;
static semvc_cu_ctx_create_fn semvc_cu_ctx_create;
static semvc_cu_ctx_destroy_fn semvc_cu_ctx_destroy;
static semvc_cu_error_fn semvc_cu_error;

static int semvc_nvenc_load(char *err, int n)
{
    void *enc, *cuda;
    if (semvc_create) return 0;
    enc = dlopen("libnvidia-encode.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!enc) { snprintf(err, n, "libnvidia-encode.so.1 not found: %s", dlerror()); return -1; }
    cuda = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!cuda) { snprintf(err, n, "libcuda.so.1 not found: %s", dlerror()); return -1; }
    *(void **)&semvc_maxver = dlsym(enc, "NvEncodeAPIGetMaxSupportedVersion");
    *(void **)&semvc_cu_init = dlsym(cuda, "cuInit");
    *(void **)&semvc_cu_device_get = dlsym(cuda, "cuDeviceGet");
    *(void **)&semvc_cu_ctx_create = dlsym(cuda, "cuCtxCreate_v2");
    *(void **)&semvc_cu_ctx_destroy = dlsym(cuda, "cuCtxDestroy_v2");
    *(void **)&semvc_cu_error = dlsym(cuda, "cuGetErrorString");
    if (!semvc_maxver || !semvc_cu_init || !semvc_cu_device_get || !semvc_cu_ctx_create ||
        !semvc_cu_ctx_destroy) {
        snprintf(err, n, "the NVIDIA driver libraries lack NvEncodeAPIGetMaxSupportedVersion or "
                 "cuInit/cuDeviceGet/cuCtxCreate_v2/cuCtxDestroy_v2 (driver too old?)");
        return -1;
    }
    *(void **)&semvc_create = dlsym(enc, "NvEncodeAPICreateInstance");
    if (!semvc_create) { snprintf(err, n, "NvEncodeAPICreateInstance not found"); return -1; }
    return 0;
}

/* 1 when the driver supports the API version of the header compiled against */
static int semvc_nvenc_driver_version(uint32_t *driver, uint32_t *header)
{
    *driver = 0;
    *header = (NVENCAPI_MAJOR_VERSION << 4) | NVENCAPI_MINOR_VERSION;  /* the driver's format */
    if (semvc_maxver(driver) != NV_ENC_SUCCESS) return 0;
    return *driver >= *header;
}

static int semvc_nvenc_create(NV_ENCODE_API_FUNCTION_LIST *fl)
{
    memset(fl, 0, sizeof *fl);
    fl->version = NV_ENCODE_API_FUNCTION_LIST_VER;
    return semvc_create(fl);
}

static int semvc_cuda_ctx_create(int ordinal, void **ctx, char *err, int n)
{
    const char *what = "cuInit", *msg = "unknown error";
    int dev = 0, r = semvc_cu_init(0);
    if (r == 0) { what = "cuDeviceGet"; r = semvc_cu_device_get(&dev, ordinal); }
    if (r == 0) { what = "cuCtxCreate"; r = semvc_cu_ctx_create(ctx, 0, dev); }
    if (r == 0) return 0;
    if (semvc_cu_error) semvc_cu_error(r, &msg);
    snprintf(err, n, "%s failed for GPU %d (CUDA error %d: %s)", what, ordinal, r, msg);
    return -1;
}

static void semvc_cuda_ctx_destroy(void *ctx) { if (ctx) semvc_cu_ctx_destroy(ctx); }

static NVENCSTATUS semvc_nvenc_open(NV_ENCODE_API_FUNCTION_LIST *fl, void *cuda_ctx, void **enc)
{
    NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS p;
    memset(&p, 0, sizeof p);
    p.version = NV_ENC_OPEN_ENCODE_SESSION_EX_PARAMS_VER;
    p.deviceType = NV_ENC_DEVICE_TYPE_CUDA;
    p.device = cuda_ctx;
    p.apiVersion = NVENCAPI_VERSION;
    return fl->nvEncOpenEncodeSessionEx(&p, enc);
}

static void semvc_set_qp(NV_ENC_QP *q, int qp)
{
    q->qpInterP = q->qpInterB = q->qpIntra = (uint32_t)qp;
}

/* The rate control's targets: at initialisation and in a live change (semvc_nvenc_reconfig). */
static void semvc_nvenc_rate(NV_ENC_CONFIG *c, const semvc_nvenc_opts_t *o)
{
    NV_ENC_RC_PARAMS *rc = &c->rcParams;
    rc->averageBitRate = rc->maxBitRate = 0;
    rc->targetQuality = rc->targetQualityLSB = 0;
    if (o->rc_mode == 2) {
        rc->rateControlMode = NV_ENC_PARAMS_RC_CBR;
        rc->averageBitRate = rc->maxBitRate = o->bitrate;
    } else {
        rc->rateControlMode = NV_ENC_PARAMS_RC_VBR;
        rc->averageBitRate = o->rc_mode == 0 ? 0 : o->bitrate;  /* 0: quality-targeted */
        rc->maxBitRate = o->max_bitrate;
        if (o->rc_mode == 0) {
            rc->targetQuality = (uint8_t)(o->cq_q8 >> 8);
            rc->targetQualityLSB = (uint8_t)(o->cq_q8 & 255);
        }
    }
    if (o->vbv_size) rc->vbvBufferSize = rc->vbvInitialDelay = o->vbv_size;
}

/* The input's colour description into the VUI (as x264's colorprim/transfer/colormatrix). */
static void semvc_nvenc_colour(NV_ENC_CONFIG_H264_VUI_PARAMETERS *v, const semvc_nvenc_opts_t *o)
{
    if (o->colour[0] == 2 && o->colour[1] == 2 && o->colour[2] == 2) return;
    v->videoSignalTypePresentFlag = 1;
    v->videoFormat = 5;  /* unspecified */
    v->colourDescriptionPresentFlag = 1;
    v->colourPrimaries = o->colour[0];
    v->transferCharacteristics = o->colour[1];
    v->colourMatrix = o->colour[2];
}

/* Our settings over a preset's configuration. */
static void semvc_nvenc_apply(NV_ENC_CONFIG *c, const semvc_nvenc_opts_t *o)
{
    NV_ENC_RC_PARAMS *rc = &c->rcParams;
    uint32_t idr, refresh = o->intra_refresh;
    c->frameIntervalP = 1;  /* no B-frames: output in input order, pts = dts */
    if (o->gop) c->gopLength = o->gop;
    idr = o->idr_period ? o->idr_period : c->gopLength;
    semvc_nvenc_rate(c, o);
    rc->enableMinQP = o->min_qp >= 0;
    if (o->min_qp >= 0) semvc_set_qp(&rc->minQP, o->min_qp);
    rc->enableMaxQP = o->max_qp >= 0;
    if (o->max_qp >= 0) semvc_set_qp(&rc->maxQP, o->max_qp);
    /* the map is the only QP modulation: NVENC's own AQ does not combine with it */
    rc->enableAQ = rc->enableTemporalAQ = 0;
    rc->aqStrength = 0;
    rc->enableLookahead = 0;  /* one packet out per frame in */
    rc->lookaheadDepth = 0;
    rc->qpMapMode = NV_ENC_QP_MAP_DELTA;
    if (o->hevc) {
        NV_ENC_CONFIG_HEVC *h = &c->encodeCodecConfig.hevcConfig;
        h->idrPeriod = idr;
        h->repeatSPSPPS = o->repeat_headers ? 1 : 0;
        h->disableSPSPPS = o->no_headers ? 1 : 0;
        h->maxCUSize = NV_ENC_HEVC_CUSIZE_32x32;  /* the delta map is per CTB: fix its size */
        /* a refresh over `refresh` frames every `refresh` frames; needs an infinite GOP */
        h->enableIntraRefresh = refresh ? 1 : 0;
        h->intraRefreshPeriod = refresh;
        h->intraRefreshCnt = refresh ? refresh - 1 : 0;  /* "smaller than the period" */
        semvc_nvenc_colour(&h->hevcVUIParameters, o);
    } else {
        NV_ENC_CONFIG_H264 *h = &c->encodeCodecConfig.h264Config;
        h->idrPeriod = idr;
        h->repeatSPSPPS = o->repeat_headers ? 1 : 0;
        h->disableSPSPPS = o->no_headers ? 1 : 0;
        h->enableIntraRefresh = refresh ? 1 : 0;
        h->intraRefreshPeriod = refresh;
        h->intraRefreshCnt = refresh ? refresh - 1 : 0;
        h->outputRecoveryPointSEI = refresh ? 1 : 0;  /* where a decoder joining may start */
        semvc_nvenc_colour(&h->h264VUIParameters, o);
    }
}

static void semvc_nvenc_read_colour(const NV_ENC_CONFIG_H264_VUI_PARAMETERS *v,
                                    semvc_nvenc_opts_t *o)
{
    int described = v->videoSignalTypePresentFlag && v->colourDescriptionPresentFlag;
    o->colour[0] = described ? v->colourPrimaries : 2;
    o->colour[1] = described ? v->transferCharacteristics : 2;
    o->colour[2] = described ? v->colourMatrix : 2;
}

static void semvc_nvenc_read(const NV_ENC_CONFIG *c, int hevc, semvc_nvenc_opts_t *o)
{
    const NV_ENC_RC_PARAMS *rc = &c->rcParams;
    memset(o, 0, sizeof *o);
    o->hevc = hevc;
    if (rc->rateControlMode == NV_ENC_PARAMS_RC_CONSTQP) o->rc_mode = 3;
    else if (rc->rateControlMode == NV_ENC_PARAMS_RC_CBR) o->rc_mode = 2;
    else o->rc_mode = (rc->averageBitRate == 0 && rc->targetQuality) ? 0 : 1;
    o->bitrate = rc->averageBitRate;
    o->max_bitrate = rc->maxBitRate;
    o->vbv_size = rc->vbvBufferSize;
    o->cq_q8 = ((uint32_t)rc->targetQuality << 8) | rc->targetQualityLSB;
    o->min_qp = rc->enableMinQP ? (int)rc->minQP.qpInterP : -1;
    o->max_qp = rc->enableMaxQP ? (int)rc->maxQP.qpInterP : -1;
    o->gop = c->gopLength;
    o->qp_map_mode = rc->qpMapMode;
    o->aq = rc->enableAQ || rc->enableTemporalAQ;
    o->lookahead = rc->enableLookahead;
    o->frame_interval_p = c->frameIntervalP;
    if (hevc) {
        const NV_ENC_CONFIG_HEVC *h = &c->encodeCodecConfig.hevcConfig;
        static const int cu[] = {0, 8, 16, 32, 64};
        o->idr_period = h->idrPeriod;
        o->repeat_headers = h->repeatSPSPPS;
        o->no_headers = h->disableSPSPPS;
        o->ctb = (unsigned)h->maxCUSize < 5 ? cu[h->maxCUSize] : 0;
        o->intra_refresh = h->enableIntraRefresh ? h->intraRefreshPeriod : 0;
        semvc_nvenc_read_colour(&h->hevcVUIParameters, o);
    } else {
        const NV_ENC_CONFIG_H264 *h = &c->encodeCodecConfig.h264Config;
        o->idr_period = h->idrPeriod;
        o->repeat_headers = h->repeatSPSPPS;
        o->no_headers = h->disableSPSPPS;
        o->ctb = 16;
        o->intra_refresh = h->enableIntraRefresh ? h->intraRefreshPeriod : 0;
        semvc_nvenc_read_colour(&h->h264VUIParameters, o);
    }
}

static NVENCSTATUS semvc_nvenc_init(NV_ENCODE_API_FUNCTION_LIST *fl, void *enc,
                                    const semvc_nvenc_opts_t *o, int preset, int tuning,
                                    uint32_t width, uint32_t height, uint32_t fps_num,
                                    uint32_t fps_den, NV_ENC_CONFIG *cfg,
                                    NV_ENC_INITIALIZE_PARAMS *ip)
{
    static const GUID *const presets[7] = {&NV_ENC_PRESET_P1_GUID, &NV_ENC_PRESET_P2_GUID,
        &NV_ENC_PRESET_P3_GUID, &NV_ENC_PRESET_P4_GUID, &NV_ENC_PRESET_P5_GUID,
        &NV_ENC_PRESET_P6_GUID, &NV_ENC_PRESET_P7_GUID};
    GUID codec = o->hevc ? NV_ENC_CODEC_HEVC_GUID : NV_ENC_CODEC_H264_GUID;
    NV_ENC_PRESET_CONFIG pc;
    NVENCSTATUS st;
    if (preset < 1 || preset > 7) return NV_ENC_ERR_INVALID_PARAM;
    memset(&pc, 0, sizeof pc);
    pc.version = NV_ENC_PRESET_CONFIG_VER;
    pc.presetCfg.version = NV_ENC_CONFIG_VER;
    st = fl->nvEncGetEncodePresetConfigEx(enc, codec, *presets[preset - 1],
                                          (NV_ENC_TUNING_INFO)tuning, &pc);
    if (st != NV_ENC_SUCCESS) return st;
    *cfg = pc.presetCfg;
    cfg->version = NV_ENC_CONFIG_VER;
    semvc_nvenc_apply(cfg, o);
    /* kept by the caller (with cfg): a live change re-initialises with the same parameters */
    memset(ip, 0, sizeof *ip);
    ip->version = NV_ENC_INITIALIZE_PARAMS_VER;
    ip->encodeGUID = codec;
    ip->presetGUID = *presets[preset - 1];
    ip->tuningInfo = (NV_ENC_TUNING_INFO)tuning;
    ip->encodeWidth = ip->darWidth = ip->maxEncodeWidth = width;
    ip->encodeHeight = ip->darHeight = ip->maxEncodeHeight = height;
    ip->frameRateNum = fps_num;
    ip->frameRateDen = fps_den;
    ip->enablePTD = 1;          /* NVENC picks picture types; FORCEIDR still works per picture */
    ip->enableEncodeAsync = 0;  /* Linux has no asynchronous mode */
    ip->encodeConfig = cfg;
    return fl->nvEncInitializeEncoder(enc, ip);
}

/* A capability of this GPU's encoder for the session's codec (NV_ENC_CAPS_*); 0 when unknown. */
static int semvc_nvenc_cap(NV_ENCODE_API_FUNCTION_LIST *fl, void *enc, int hevc, int cap)
{
    NV_ENC_CAPS_PARAM p;
    int v = 0;
    memset(&p, 0, sizeof p);
    p.version = NV_ENC_CAPS_PARAM_VER;
    p.capsToQuery = (NV_ENC_CAPS)cap;
    if (fl->nvEncGetEncodeCaps(enc, hevc ? NV_ENC_CODEC_HEVC_GUID : NV_ENC_CODEC_H264_GUID, &p,
                               &v) != NV_ENC_SUCCESS) return 0;
    return v;
}

/* A new rate target while encoding: the session's initialisation parameters again, with the
   new rate in a copy of its configuration; no IDR and no reset of the rate control's state
   (NvEncReconfigureEncoder). The copy becomes the session's configuration once taken. */
static NVENCSTATUS semvc_nvenc_reconfig(NV_ENCODE_API_FUNCTION_LIST *fl, void *enc,
                                        NV_ENC_INITIALIZE_PARAMS *ip, const semvc_nvenc_opts_t *o)
{
    NV_ENC_RECONFIGURE_PARAMS rp;
    NV_ENC_CONFIG c = *ip->encodeConfig;
    NVENCSTATUS st;
    semvc_nvenc_rate(&c, o);
    memset(&rp, 0, sizeof rp);
    rp.version = NV_ENC_RECONFIGURE_PARAMS_VER;
    rp.reInitEncodeParams = *ip;
    rp.reInitEncodeParams.encodeConfig = &c;
    rp.resetEncoder = 0;
    rp.forceIDR = 0;
    st = fl->nvEncReconfigureEncoder(enc, &rp);
    if (st == NV_ENC_SUCCESS) *ip->encodeConfig = c;
    return st;
}
"""


def header_path():
    return find_header(HEADER, INCLUDE_ENV, HEADER_DIRS)


def build():
    """The compiled module (``.ffi``, ``.lib``); needs the header, not the driver."""
    header, dirs = header_path()
    if header is None:
        raise header_missing(HEADER, dirs, INSTALL_HINT)
    return compile_cached("_semvc_nvenc", _CDEF, _CSRC, [header],
                          link=LinkSpec(include_dirs=[str(header.parent)], libraries=["dl"]),
                          messages=BuildMessages("NVENC", INSTALL_HINT), log=log)


# (ffi, lib), compiled on first use
get_binding = Binding(build)


def load_runtime() -> None:
    """dlopen the driver's NVENC and CUDA libraries and check the API version; EncoderError
    with the reason (``libnvidia-encode.so.1 not found: ...`` on a machine without the driver)."""
    ffi, lib = get_binding()
    err = ffi.new("char[]", 512)
    if lib.semvc_nvenc_load(err, 512) != 0:
        raise EncoderError(ffi.string(err).decode(errors="replace"))
    drv, hdr = ffi.new("uint32_t *"), ffi.new("uint32_t *")
    if not lib.semvc_nvenc_driver_version(drv, hdr):
        raise EncoderError(
            f"the NVIDIA driver supports NVENC API {drv[0] >> 4}.{drv[0] & 15} but the binding was "
            f"built against {hdr[0] >> 4}.{hdr[0] & 15} ({HEADER}): update the driver, or point "
            f"{INCLUDE_ENV} at headers of an older nv-codec-headers release")

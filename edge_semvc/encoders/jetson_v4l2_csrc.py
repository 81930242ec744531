"""The C side of the Jetson V4L2 binding (``jetson_v4l2_binding.py``): ``CDEF``, what cffi
declares, and ``CSRC``, the glue compiled against ``v4l2_nv_extensions.h`` and ``videodev2.h``.

The flow follows the Multimedia API's NvVideoEncoder (read, not run here): formats on both
planes, controls, ROI enabled, buffers requested (MMAP, exported as dmabuf and mapped), streaming;
per frame the ROI rectangles go in as input metadata with the buffer's index as config store.
"""

# One ROI rectangle as Python hands it over (declared once for both cffi and the compiler).
ROI_STRUCT = r"""
typedef struct {
    int32_t left;
    int32_t top;
    uint32_t width;
    uint32_t height;
    int32_t delta;
} semvc_roi_t;
"""

CDEF = ROI_STRUCT + r"""
typedef struct semvc_jenc semvc_jenc_t;

#define V4L2_MAX_ROI_REGIONS ...
#define V4L2_CID_MPEG_VIDEO_BITRATE ...
#define V4L2_CID_MPEG_VIDEO_BITRATE_PEAK ...
#define V4L2_CID_MPEG_VIDEO_BITRATE_MODE ...
#define V4L2_MPEG_VIDEO_BITRATE_MODE_VBR ...
#define V4L2_MPEG_VIDEO_BITRATE_MODE_CBR ...
#define V4L2_CID_MPEG_VIDEO_GOP_SIZE ...
#define V4L2_CID_MPEG_VIDEO_IDR_INTERVAL ...
#define V4L2_CID_MPEG_VIDEO_H264_PROFILE ...
#define V4L2_MPEG_VIDEO_H264_PROFILE_HIGH ...
#define V4L2_CID_MPEG_VIDEO_H265_PROFILE ...
#define V4L2_MPEG_VIDEO_H265_PROFILE_MAIN ...
#define V4L2_CID_MPEG_VIDEOENC_NUM_BFRAMES ...
#define V4L2_CID_MPEG_VIDEOENC_INSERT_SPS_PPS_AT_IDR ...
#define V4L2_CID_MPEG_VIDEOENC_HW_PRESET_TYPE_PARAM ...
#define V4L2_ENC_HW_PRESET_ULTRAFAST ...
#define V4L2_ENC_HW_PRESET_FAST ...
#define V4L2_ENC_HW_PRESET_MEDIUM ...
#define V4L2_ENC_HW_PRESET_SLOW ...

int semvc_v4l2_load(char *err, int n);
semvc_jenc_t *semvc_jenc_open(const char *dev, int hevc, uint32_t width, uint32_t height,
                              uint32_t capture_size, char *err, int n);
int semvc_jenc_set_ctrl(semvc_jenc_t *e, uint32_t id, int32_t value);
int semvc_jenc_set_fps(semvc_jenc_t *e, uint32_t num, uint32_t den);
int semvc_jenc_set_qp_range(semvc_jenc_t *e, int32_t min_qp, int32_t max_qp);
int semvc_jenc_set_intra_refresh(semvc_jenc_t *e, uint32_t interval);
int semvc_jenc_enable_roi(semvc_jenc_t *e);
int semvc_jenc_start(semvc_jenc_t *e, int n_out, int n_cap);
int semvc_jenc_put(semvc_jenc_t *e, const uint8_t *y, int ys, const uint8_t *u, int us,
                   const uint8_t *v, int vs, uint64_t seq, const semvc_roi_t *rois, int n_roi,
                   int force_idr);
int semvc_jenc_eos(semvc_jenc_t *e);
int semvc_jenc_get(semvc_jenc_t *e, uint8_t *dst, uint32_t cap, uint32_t *len, uint64_t *seq);
const char *semvc_jenc_error(semvc_jenc_t *e);
void semvc_jenc_close(semvc_jenc_t *e);
"""

CSRC = r"""
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <linux/videodev2.h>
/* JetPack headers carry their own (unused, pre-5.11) copies of the stateless-codec structs that
 * newer kernel uapi headers define too: give NVIDIA's copies other names so both compile. */
#define v4l2_ctrl_h264_sps semvc_nv_h264_sps
#define v4l2_ctrl_h264_pps semvc_nv_h264_pps
#define v4l2_ctrl_h264_scaling_matrix semvc_nv_h264_scaling_matrix
#define v4l2_h264_weight_factors semvc_nv_h264_weight_factors
#define v4l2_h264_pred_weight_table semvc_nv_h264_pred_weight_table
#define v4l2_ctrl_h264_slice_param semvc_nv_h264_slice_param
#define v4l2_h264_dpb_entry semvc_nv_h264_dpb_entry
#define v4l2_ctrl_h264_decode_param semvc_nv_h264_decode_param
#define v4l2_vp8_sgmnt_hdr semvc_nv_vp8_sgmnt_hdr
#define v4l2_vp8_loopfilter_hdr semvc_nv_vp8_loopfilter_hdr
#define v4l2_vp8_quantization_hdr semvc_nv_vp8_quantization_hdr
#define v4l2_vp8_entropy_hdr semvc_nv_vp8_entropy_hdr
#define v4l2_ctrl_vp8_frame_hdr semvc_nv_vp8_frame_hdr
#undef V4L2_H264_DPB_ENTRY_FLAG_ACTIVE    /* redefined (differently) there; neither is used */
#undef V4L2_H264_DPB_ENTRY_FLAG_LONG_TERM
#include <v4l2_nv_extensions.h>

""" + ROI_STRUCT + r"""
#define SEMVC_MAX_BUFS 32

typedef struct { void *data[3]; uint32_t length[3]; int fd[3]; } semvc_buf_t;

typedef struct semvc_jenc {
    int fd, hevc, n_out, n_cap, streaming, roi;
    uint32_t width, height, stride[3], rows[3];
    semvc_buf_t out[SEMVC_MAX_BUFS], cap[SEMVC_MAX_BUFS];
    int out_free[SEMVC_MAX_BUFS];
    char err[320];
} semvc_jenc_t;

/* libv4l2 routes the ioctls through NVIDIA's codec plugin: opened at run time. */
static int (*semvc_open)(const char *, int, ...);
static int (*semvc_close)(int);
static int (*semvc_ioctl)(int, unsigned long, ...);
/* CPU writes must be flushed to the device: JetPack 5+ (NvBufSurface) or JetPack 4. */
static int (*semvc_surf_from_fd)(int, void **);
static int (*semvc_surf_sync)(void *, int, int);
static int (*semvc_buf_sync)(int, unsigned int, void **);

static void *semvc_dlopen_any(const char *const *names)
{
    for (; *names; names++) {
        void *h = dlopen(*names, RTLD_NOW | RTLD_LOCAL);
        if (h) return h;
    }
    return NULL;
}

static int semvc_v4l2_load(char *err, int n)
{
    static const char *const v4l2[] = {"libv4l2.so.0", "libv4l2.so", NULL};
    static const char *const surf[] = {"libnvbufsurface.so.1.0.0", "libnvbufsurface.so",
        "/usr/lib/aarch64-linux-gnu/nvidia/libnvbufsurface.so.1.0.0",
        "/usr/lib/aarch64-linux-gnu/tegra/libnvbufsurface.so.1.0.0", NULL};
    static const char *const utils[] = {"libnvbuf_utils.so.1.0.0", "libnvbuf_utils.so",
        "/usr/lib/aarch64-linux-gnu/tegra/libnvbuf_utils.so.1.0.0", NULL};
    void *h, *s;
    if (semvc_ioctl) return 0;
    h = semvc_dlopen_any(v4l2);
    if (!h) { snprintf(err, n, "libv4l2.so.0 not found: %s", dlerror()); return -1; }
    *(void **)&semvc_open = dlsym(h, "v4l2_open");
    *(void **)&semvc_close = dlsym(h, "v4l2_close");
    *(void **)&semvc_ioctl = dlsym(h, "v4l2_ioctl");
    if (!semvc_open || !semvc_close || !semvc_ioctl) {
        snprintf(err, n, "libv4l2.so.0 lacks v4l2_open/v4l2_close/v4l2_ioctl");
        semvc_ioctl = NULL;
        return -1;
    }
    if ((s = semvc_dlopen_any(surf)) != NULL) {
        *(void **)&semvc_surf_from_fd = dlsym(s, "NvBufSurfaceFromFd");
        *(void **)&semvc_surf_sync = dlsym(s, "NvBufSurfaceSyncForDevice");
    } else if ((s = semvc_dlopen_any(utils)) != NULL) {
        *(void **)&semvc_buf_sync = dlsym(s, "NvBufferMemSyncForDevice");
    }
    return 0;
}

static void semvc_buf_init(struct v4l2_buffer *b, struct v4l2_plane *p, uint32_t type, int planes)
{
    memset(b, 0, sizeof *b);
    memset(p, 0, planes * sizeof *p);
    b->type = type;
    b->memory = V4L2_MEMORY_MMAP;
    b->length = planes;
    b->m.planes = p;
}

static int semvc_fail(semvc_jenc_t *e, const char *what)
{
    snprintf(e->err, sizeof e->err, "%s failed: %s (errno %d)", what, strerror(errno), errno);
    return -1;
}

static int semvc_ext_ctrl(semvc_jenc_t *e, uint32_t id, int32_t value, void *ptr)
{
    struct v4l2_ext_control c;
    struct v4l2_ext_controls cs;
    memset(&c, 0, sizeof c);
    memset(&cs, 0, sizeof cs);
    c.id = id;
    if (ptr) c.string = (char *)ptr;  /* NVIDIA's struct-valued controls travel as a pointer */
    else c.value = value;
    cs.ctrl_class = V4L2_CTRL_CLASS_MPEG;
    cs.count = 1;
    cs.controls = &c;
    if (semvc_ioctl(e->fd, VIDIOC_S_EXT_CTRLS, &cs) < 0) {
        char what[64];
        snprintf(what, sizeof what, "VIDIOC_S_EXT_CTRLS(0x%x)", id);
        return semvc_fail(e, what);
    }
    return 0;
}

static int semvc_jenc_set_ctrl(semvc_jenc_t *e, uint32_t id, int32_t value)
{
    return semvc_ext_ctrl(e, id, value, NULL);
}

static int semvc_jenc_set_fps(semvc_jenc_t *e, uint32_t num, uint32_t den)
{
    struct v4l2_streamparm p;
    memset(&p, 0, sizeof p);
    p.type = V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE;
    p.parm.output.timeperframe.numerator = den;
    p.parm.output.timeperframe.denominator = num;
    return semvc_ioctl(e->fd, VIDIOC_S_PARM, &p) < 0 ? semvc_fail(e, "VIDIOC_S_PARM") : 0;
}

static int semvc_jenc_set_qp_range(semvc_jenc_t *e, int32_t min_qp, int32_t max_qp)
{
    v4l2_ctrl_video_qp_range r;
    memset(&r, 0, sizeof r);
    /* QP_RETAIN_VAL (-1) keeps the encoder's own bound */
    r.MinQpI = r.MinQpP = r.MinQpB = (uint32_t)(min_qp < 0 ? QP_RETAIN_VAL : min_qp);
    r.MaxQpI = r.MaxQpP = r.MaxQpB = (uint32_t)(max_qp < 0 ? QP_RETAIN_VAL : max_qp);
    return semvc_ext_ctrl(e, V4L2_CID_MPEG_VIDEOENC_QP_RANGE, 0, &r);
}

/* NvVideoEncoder::setSliceIntrarefresh: before buffers are requested. The header counts the
   interval "in number of slices"; with one slice a picture that is frames (not run here). */
static int semvc_jenc_set_intra_refresh(semvc_jenc_t *e, uint32_t interval)
{
    v4l2_enc_slice_intrarefresh_param p;
    memset(&p, 0, sizeof p);
    p.interval = interval;
    return semvc_ext_ctrl(e, V4L2_CID_MPEG_VIDEOENC_SLICE_INTRAREFRESH_PARAM, 0, &p);
}

static int semvc_jenc_enable_roi(semvc_jenc_t *e)
{
    v4l2_enc_enable_roi_param p;
    memset(&p, 0, sizeof p);
    p.bEnableROI = 1;
    if (semvc_ext_ctrl(e, V4L2_CID_MPEG_VIDEOENC_ENABLE_ROI_PARAM, 0, &p) < 0) return -1;
    e->roi = 1;
    return 0;
}

static semvc_jenc_t *semvc_jenc_open(const char *dev, int hevc, uint32_t width, uint32_t height,
                                     uint32_t capture_size, char *err, int n)
{
    struct v4l2_format f;
    semvc_jenc_t *e = calloc(1, sizeof *e);
    int i;
    if (!e) { snprintf(err, n, "out of memory"); return NULL; }
    e->hevc = hevc;
    e->width = width;
    e->height = height;
    e->fd = semvc_open(dev, O_RDWR | O_NONBLOCK);
    if (e->fd < 0) {
        snprintf(err, n, "cannot open %s: %s", dev, strerror(errno));
        free(e);
        return NULL;
    }
    /* the capture (bitstream) plane's format must be set before the output (raw) plane's */
    memset(&f, 0, sizeof f);
    f.type = V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE;
    f.fmt.pix_mp.pixelformat = hevc ? V4L2_PIX_FMT_H265 : V4L2_PIX_FMT_H264;
    f.fmt.pix_mp.width = width;
    f.fmt.pix_mp.height = height;
    f.fmt.pix_mp.num_planes = 1;
    f.fmt.pix_mp.plane_fmt[0].sizeimage = capture_size;
    if (semvc_ioctl(e->fd, VIDIOC_S_FMT, &f) < 0) goto fail_capture;
    memset(&f, 0, sizeof f);
    f.type = V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE;
    f.fmt.pix_mp.pixelformat = V4L2_PIX_FMT_YUV420M;
    f.fmt.pix_mp.width = width;
    f.fmt.pix_mp.height = height;
    f.fmt.pix_mp.num_planes = 3;
    if (semvc_ioctl(e->fd, VIDIOC_S_FMT, &f) < 0) goto fail_output;
    if (semvc_ioctl(e->fd, VIDIOC_G_FMT, &f) < 0) goto fail_output;
    for (i = 0; i < 3; i++) {
        e->stride[i] = f.fmt.pix_mp.plane_fmt[i].bytesperline;
        e->rows[i] = i ? (height + 1) / 2 : height;
        if (!e->stride[i]) e->stride[i] = i ? (width + 1) / 2 : width;
    }
    return e;
fail_capture:
    snprintf(err, n, "VIDIOC_S_FMT (%s, %ux%u) on %s failed: %s", hevc ? "H.265" : "H.264",
             width, height, dev, strerror(errno));
    goto fail;
fail_output:
    snprintf(err, n, "VIDIOC_S_FMT (YUV420M, %ux%u) on %s failed: %s", width, height, dev,
             strerror(errno));
fail:
    semvc_close(e->fd);
    free(e);
    return NULL;
}

static int semvc_setup_plane(semvc_jenc_t *e, uint32_t type, int count, int planes,
                             semvc_buf_t *bufs)
{
    struct v4l2_requestbuffers rb;
    int i, j;
    memset(&rb, 0, sizeof rb);
    rb.count = count;
    rb.type = type;
    rb.memory = V4L2_MEMORY_MMAP;
    if (semvc_ioctl(e->fd, VIDIOC_REQBUFS, &rb) < 0) return semvc_fail(e, "VIDIOC_REQBUFS");
    if ((int)rb.count < count) count = rb.count;
    for (i = 0; i < count; i++) {
        struct v4l2_buffer b;
        struct v4l2_plane p[3];
        semvc_buf_init(&b, p, type, planes);
        b.index = i;
        if (semvc_ioctl(e->fd, VIDIOC_QUERYBUF, &b) < 0) return semvc_fail(e, "VIDIOC_QUERYBUF");
        for (j = 0; j < planes; j++) {
            struct v4l2_exportbuffer x;
            memset(&x, 0, sizeof x);
            x.type = type;
            x.index = i;
            x.plane = j;
            if (semvc_ioctl(e->fd, VIDIOC_EXPBUF, &x) < 0) return semvc_fail(e, "VIDIOC_EXPBUF");
            bufs[i].fd[j] = x.fd;
            bufs[i].length[j] = p[j].length;
            /* mapped through the exported dmabuf, as NvBuffer::map does */
            bufs[i].data[j] = mmap(NULL, p[j].length, PROT_READ | PROT_WRITE, MAP_SHARED, x.fd,
                                   p[j].m.mem_offset);
            if (bufs[i].data[j] == MAP_FAILED) {
                bufs[i].data[j] = NULL;
                return semvc_fail(e, "mmap");
            }
        }
    }
    return count;
}

static int semvc_queue_capture(semvc_jenc_t *e, int i)
{
    struct v4l2_buffer b;
    struct v4l2_plane p[1];
    semvc_buf_init(&b, p, V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE, 1);
    b.index = i;
    return semvc_ioctl(e->fd, VIDIOC_QBUF, &b) < 0 ? semvc_fail(e, "VIDIOC_QBUF (capture)") : 0;
}

static int semvc_jenc_start(semvc_jenc_t *e, int n_out, int n_cap)
{
    int type, i;
    if (n_out > SEMVC_MAX_BUFS) n_out = SEMVC_MAX_BUFS;
    if (n_cap > SEMVC_MAX_BUFS) n_cap = SEMVC_MAX_BUFS;
    if ((e->n_out = semvc_setup_plane(e, V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE, n_out, 3, e->out)) < 0)
        return -1;
    if ((e->n_cap = semvc_setup_plane(e, V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE, n_cap, 1, e->cap)) < 0)
        return -1;
    for (i = 0; i < e->n_out; i++) e->out_free[i] = 1;
    type = V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE;
    if (semvc_ioctl(e->fd, VIDIOC_STREAMON, &type) < 0) return semvc_fail(e, "STREAMON (output)");
    type = V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE;
    if (semvc_ioctl(e->fd, VIDIOC_STREAMON, &type) < 0) return semvc_fail(e, "STREAMON (capture)");
    e->streaming = 1;
    for (i = 0; i < e->n_cap; i++)
        if (semvc_queue_capture(e, i) < 0) return -1;
    return 0;
}

/* A free output buffer's index, -2 when all are with the encoder, -1 on error. */
static int semvc_free_output(semvc_jenc_t *e)
{
    int i;
    for (;;) {  /* collect what the encoder has finished reading */
        struct v4l2_buffer b;
        struct v4l2_plane p[3];
        semvc_buf_init(&b, p, V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE, 3);
        if (semvc_ioctl(e->fd, VIDIOC_DQBUF, &b) < 0) {
            if (errno == EAGAIN) break;
            return semvc_fail(e, "VIDIOC_DQBUF (output)");
        }
        if (b.index < (uint32_t)e->n_out) e->out_free[b.index] = 1;
    }
    for (i = 0; i < e->n_out; i++)
        if (e->out_free[i]) return i;
    return -2;
}

static int semvc_queue_output(semvc_jenc_t *e, int i, int empty, uint64_t seq, int meta)
{
    struct v4l2_buffer b;
    struct v4l2_plane p[3];
    int j;
    semvc_buf_init(&b, p, V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE, 3);
    b.index = i;
    for (j = 0; j < 3; j++) p[j].bytesused = empty ? 0 : e->stride[j] * e->rows[j];
    /* the sequence number travels as the timestamp and comes back with the bitstream */
    b.flags |= V4L2_BUF_FLAG_TIMESTAMP_COPY;
    b.timestamp.tv_sec = (long)(seq / 1000000);
    b.timestamp.tv_usec = (long)(seq % 1000000);
    if (meta) b.reserved2 = i;  /* config store: which input metadata belongs to this buffer */
    if (semvc_ioctl(e->fd, VIDIOC_QBUF, &b) < 0) return semvc_fail(e, "VIDIOC_QBUF (output)");
    e->out_free[i] = 0;
    return 1;
}

static void semvc_copy_plane(uint8_t *dst, uint32_t dstride, const uint8_t *src, int sstride,
                             uint32_t w, uint32_t rows)
{
    uint32_t r;
    for (r = 0; r < rows; r++) memcpy(dst + (size_t)r * dstride, src + (size_t)r * sstride, w);
}

static int semvc_jenc_put(semvc_jenc_t *e, const uint8_t *y, int ys, const uint8_t *u, int us,
                          const uint8_t *v, int vs, uint64_t seq, const semvc_roi_t *rois,
                          int n_roi, int force_idr)
{
    const uint8_t *src[3] = {y, u, v};
    int sstr[3] = {ys, us, vs}, i, j;
    i = semvc_free_output(e);
    if (i < 0) return i == -2 ? 0 : -1;
    for (j = 0; j < 3; j++) {
        uint32_t w = j ? (e->width + 1) / 2 : e->width;
        if ((size_t)e->stride[j] * e->rows[j] > e->out[i].length[j]) {
            snprintf(e->err, sizeof e->err, "output plane %d is %u bytes, need %u", j,
                     e->out[i].length[j], e->stride[j] * e->rows[j]);
            return -1;
        }
        semvc_copy_plane(e->out[i].data[j], e->stride[j], src[j], sstr[j], w, e->rows[j]);
        if (semvc_surf_from_fd && semvc_surf_sync) {
            void *surf = NULL;
            if (semvc_surf_from_fd(e->out[i].fd[j], &surf) == 0 && surf)
                semvc_surf_sync(surf, 0, j);
        } else if (semvc_buf_sync) {
            void *addr = e->out[i].data[j];
            semvc_buf_sync(e->out[i].fd[j], j, &addr);
        }
    }
    if (e->roi) {  /* every frame, so an empty list clears the previous frame's rectangles */
        v4l2_enc_frame_ROI_params rp;
        v4l2_ctrl_videoenc_input_metadata md;
        memset(&rp, 0, sizeof rp);
        memset(&md, 0, sizeof md);
        if (n_roi > V4L2_MAX_ROI_REGIONS) n_roi = V4L2_MAX_ROI_REGIONS;
        rp.num_ROI_regions = n_roi < 0 ? 0 : n_roi;
        for (j = 0; j < (int)rp.num_ROI_regions; j++) {
            rp.ROI_params[j].ROIRect.left = rois[j].left;
            rp.ROI_params[j].ROIRect.top = rois[j].top;
            rp.ROI_params[j].ROIRect.width = rois[j].width;
            rp.ROI_params[j].ROIRect.height = rois[j].height;
            rp.ROI_params[j].QPdelta = rois[j].delta;
        }
        rp.config_store = i;
        md.flag = V4L2_ENC_INPUT_ROI_PARAM_FLAG;
        md.VideoEncROIParams = &rp;
        md.config_store = i;
        if (semvc_ext_ctrl(e, V4L2_CID_MPEG_VIDEOENC_INPUT_METADATA, 0, &md) < 0) return -1;
    }
    if (force_idr) {
#ifdef V4L2_CID_MPEG_VIDEOENC_FORCE_IDR_FRAME
        if (semvc_ext_ctrl(e, V4L2_CID_MPEG_VIDEOENC_FORCE_IDR_FRAME, 1, NULL) < 0) return -1;
#else
        if (semvc_ext_ctrl(e, V4L2_CID_MPEG_MFC51_VIDEO_FORCE_FRAME_TYPE, 1, NULL) < 0) return -1;
#endif
    }
    return semvc_queue_output(e, i, 0, seq, e->roi);
}

static int semvc_jenc_eos(semvc_jenc_t *e)
{
    int i = semvc_free_output(e);
    if (i < 0) return i == -2 ? 0 : -1;
    return semvc_queue_output(e, i, 1, 0, 0);  /* an empty buffer ends the stream */
}

/* 1: a packet in dst, 0: none ready, 2: end of stream, -1: error */
static int semvc_jenc_get(semvc_jenc_t *e, uint8_t *dst, uint32_t cap, uint32_t *len,
                          uint64_t *seq)
{
    struct v4l2_buffer b;
    struct v4l2_plane p[1];
    semvc_buf_init(&b, p, V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE, 1);
    if (semvc_ioctl(e->fd, VIDIOC_DQBUF, &b) < 0)
        return errno == EAGAIN ? 0 : semvc_fail(e, "VIDIOC_DQBUF (capture)");
    if (p[0].bytesused == 0) return 2;
    if (p[0].bytesused > cap || b.index >= (uint32_t)e->n_cap) {
        snprintf(e->err, sizeof e->err, "encoded frame of %u bytes exceeds the %u-byte buffer",
                 p[0].bytesused, cap);
        return -1;
    }
    memcpy(dst, (uint8_t *)e->cap[b.index].data[0] + p[0].data_offset, p[0].bytesused);
    *len = p[0].bytesused;
    *seq = (uint64_t)b.timestamp.tv_sec * 1000000u + (uint64_t)b.timestamp.tv_usec;
    return semvc_queue_capture(e, b.index) < 0 ? -1 : 1;
}

static const char *semvc_jenc_error(semvc_jenc_t *e) { return e->err; }

static void semvc_release(semvc_jenc_t *e, uint32_t type, semvc_buf_t *bufs, int n, int planes)
{
    struct v4l2_requestbuffers rb;
    int i, j;
    for (i = 0; i < n; i++)
        for (j = 0; j < planes; j++) {
            if (bufs[i].data[j]) munmap(bufs[i].data[j], bufs[i].length[j]);
            if (bufs[i].fd[j] > 0) close(bufs[i].fd[j]);
        }
    memset(&rb, 0, sizeof rb);
    rb.type = type;
    rb.memory = V4L2_MEMORY_MMAP;
    semvc_ioctl(e->fd, VIDIOC_REQBUFS, &rb);  /* count 0 frees them */
}

static void semvc_jenc_close(semvc_jenc_t *e)
{
    int type;
    if (!e) return;
    if (e->streaming) {
        type = V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE;
        semvc_ioctl(e->fd, VIDIOC_STREAMOFF, &type);
        type = V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE;
        semvc_ioctl(e->fd, VIDIOC_STREAMOFF, &type);
    }
    semvc_release(e, V4L2_BUF_TYPE_VIDEO_OUTPUT_MPLANE, e->out, e->n_out, 3);
    semvc_release(e, V4L2_BUF_TYPE_VIDEO_CAPTURE_MPLANE, e->cap, e->n_cap, 1);
    semvc_close(e->fd);
    free(e);
}
"""

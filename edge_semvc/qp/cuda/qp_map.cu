// The QP map on the GPU: C, V, regions, Q, offsets. Compiled at run time by NVRTC
// (qp/cuda/nvrtc.py) for both launchers (CuPy, pycuda); no #include, so NVRTC needs no headers.
//
// The numpy code is the reference and each kernel names the function it mirrors. Four launches
// per frame, in stream order:
//   mb_measure  one pass over the sampled luma: C and V per macroblock (analysis/complexity.py,
//               analysis/change.py) and the expected reuse (analysis/temporal.py, kept on the
//               device from frame to frame), this frame's samples kept for the next one; also
//               resets the union-find forest and the sums the next two kernels fill
//   ccl_merge   4-connected components of equal non-background labels (regions.label_regions)
//               by union-find with atomicMin (Playne & Hawick 2018)
//   region_sum  each macroblock's root; sums of C and V per region and macroblocks per class,
//               by warp-aggregated atomics (regions.region_means, the count for importance_gain)
//   offsets     one block: Q from the region means (policy.base_q), the importance per
//               macroblock with the moving background's share (qpmap.macroblock_weight), the
//               importance gain (qpmap.importance_gain), the raw offsets with the reuse term,
//               and the mean pinned by the reference's own Newton/bisection on block
//               reductions (qpmap.pin_mean), then the clamp.
// Compiled with --fmad=false: every float32 product and sum is rounded on its own, as numpy's.

#define SUB 4     // luma subsampling step (analysis/complexity.py SUB)
#define BLOCK 4   // samples per macroblock side (MB / SUB)
#define FULL 0xffffffffu

__device__ __forceinline__ int find_root(const volatile int* parent, int i)
{
    int p = parent[i];
    while (p != i) {
        i = p;
        p = parent[i];
    }
    return i;
}

// Union of the trees holding a and b: the larger root is hung under the smaller one. A lost
// race (another thread re-hung that root first) is retried from the new roots.
__device__ void unite(int* parent, int a, int b)
{
    bool done;
    do {
        a = find_root(parent, a);
        b = find_root(parent, b);
        if (a < b) {
            int old = atomicMin(parent + b, a);
            done = (old == b);
            b = old;
        } else if (b < a) {
            int old = atomicMin(parent + a, b);
            done = (old == a);
            a = old;
        } else {
            done = true;
        }
    } while (!done);
}

// The sum of `x` over the lanes that share `peers` (same region or class), the same at each.
__device__ __forceinline__ double peer_sum(unsigned peers, float x)
{
    double s = 0.0;
    for (unsigned m = peers; m; m &= m - 1)
        s += (double)__shfl_sync(peers, x, __ffs(m) - 1);
    return s;
}

// Block-wide reductions (blockDim.x a multiple of 32); `sh` holds 32 entries. The leading
// barrier lets one buffer serve reductions back to back.
__device__ double block_sum(double x, double* sh)
{
    for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(FULL, x, o);
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = x;
    __syncthreads();
    if (warp == 0) {
        x = lane < (int)(blockDim.x >> 5) ? sh[lane] : 0.0;
        for (int o = 16; o > 0; o >>= 1) x += __shfl_down_sync(FULL, x, o);
        if (lane == 0) sh[0] = x;
    }
    __syncthreads();
    return sh[0];
}

__device__ float block_max(float x, float* sh)
{
    for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_down_sync(FULL, x, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    __syncthreads();
    if (lane == 0) sh[warp] = x;
    __syncthreads();
    if (warp == 0) {
        x = lane < (int)(blockDim.x >> 5) ? sh[lane] : -3.0e38f;
        for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_down_sync(FULL, x, o));
        if (lane == 0) sh[0] = x;
    }
    __syncthreads();
    return sh[0];
}

__device__ __forceinline__ float clampf(float x, float lo, float hi)
{
    return fminf(fmaxf(x, lo), hi);  // np.clip
}

// Q of macroblock i from its region's means (policy.base_q on RegionStats.region_*).
__device__ __forceinline__ float region_q(int i, const int* region, const double* sum_c,
                                          const double* sum_v, const unsigned* count, float v_th,
                                          float a_slow, float b_slow, float a_fast, float b_fast)
{
    int r = region[i];
    double n = (double)count[r];
    float c = (float)(sum_c[r] / n), v = (float)(sum_v[r] / n);  // float64 means, as float32
    bool fast = v > v_th;
    return (fast ? a_fast : a_slow) * c + (fast ? b_fast : b_slow) * v;
}

extern "C" {

// One thread per macroblock. `luma` points at the first sampled row; `row_pitch` bytes lead to
// the next sampled row (4 * width for a whole luma plane, width for one uploaded row-sampled).
// Samples past the frame repeat the last sampled row and column (frame.luma_grid, the grid
// complexity.block_samples reads).
__global__ void mb_measure(const unsigned char* __restrict__ luma, long long row_pitch,
                           int n_rows, int n_cols, int mb_w, int mb_h,
                           const unsigned char* __restrict__ prev, int has_prev,
                           unsigned char* __restrict__ samples, double log_full_var,
                           float full_mad, float intra_floor, float horizon,
                           float* __restrict__ reuse, float* __restrict__ c_out,
                           float* __restrict__ v_out,
                           int* __restrict__ parent, double* __restrict__ sum_c,
                           double* __restrict__ sum_v, unsigned* __restrict__ count,
                           unsigned* __restrict__ class_count, int n_classes)
{
    int mx = blockIdx.x * blockDim.x + threadIdx.x;
    int my = blockIdx.y * blockDim.y + threadIdx.y;
    if (mx >= mb_w || my >= mb_h) return;
    int i = my * mb_w + mx, n = mb_w * mb_h, stride = mb_w * BLOCK;
    int s = 0, ss = 0, sad = 0;
    for (int r = 0; r < BLOCK; ++r) {
        int sy = my * BLOCK + r;
        const unsigned char* row = luma + (long long)min(sy, n_rows - 1) * row_pitch;
        for (int k = 0; k < BLOCK; ++k) {
            int sx = mx * BLOCK + k;
            int p = row[min(sx, n_cols - 1) * SUB];
            s += p;
            ss += p * p;
            samples[sy * stride + sx] = (unsigned char)p;
            if (has_prev) sad += abs(p - (int)prev[sy * stride + sx]);
        }
    }
    // numpy's float32 var = mean(b*b) - mean^2 is exact here (every term an integer / 256 below
    // 2^24), so the integer form gives the same value.
    float var = (float)(16 * ss - s * s) / 256.0f;
    double c = (double)log1pf(fmaxf(var, 0.0f)) / log_full_var;
    c_out[i] = (float)fmin(fmax(c, 0.0), 1.0);
    float mad = (float)sad / 16.0f;
    v_out[i] = has_prev ? clampf(mad / full_mad, 0.0f, 1.0f) : 0.0f;
    // temporal.ReuseTracker.update: the share the next frame can take from this one, and the
    // reuse accumulated over the past (0 on a first frame)
    float kept = clampf(1.0f - mad / (sqrtf(fmaxf(var, 0.0f)) + intra_floor), 0.0f, 1.0f);
    reuse[i] = has_prev ? fminf(kept * (1.0f + reuse[i]), horizon) : 0.0f;
    parent[i] = i;
    sum_c[i] = 0.0;
    sum_v[i] = 0.0;
    count[i] = 0u;
    if (i == 0) {  // the background's slot, n, and the per-class counts
        sum_c[n] = 0.0;
        sum_v[n] = 0.0;
        count[n] = 0u;
        for (int k = 0; k < n_classes; ++k) class_count[k] = 0u;
    }
}

__global__ void ccl_merge(const short* __restrict__ labels, int* parent, int mb_w, int n)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    int lab = labels[i];
    if (lab == 0) return;  // background is one region whatever its shape
    if (i % mb_w > 0 && labels[i - 1] == lab) unite(parent, i, i - 1);
    if (i >= mb_w && labels[i - mb_w] == lab) unite(parent, i, i - mb_w);
}

// Leaves `parent[i]` = the region id of macroblock i: its root, or n for the background.
__global__ void region_sum(const short* __restrict__ labels, int* parent,
                           const float* __restrict__ c, const float* __restrict__ v, int n,
                           double* sum_c, double* sum_v, unsigned* count, unsigned* class_count)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    bool valid = i < n;  // every lane stays to the end: the warp votes below need all 32
    int lab = valid ? labels[i] : -1;
    int root = -1;
    float ci = 0.0f, vi = 0.0f;
    if (valid) {
        root = lab == 0 ? n : find_root(parent, i);
        ci = c[i];
        vi = v[i];
    }
    unsigned peers = __match_any_sync(FULL, root);
    double sc = peer_sum(peers, ci), sv = peer_sum(peers, vi);
    unsigned classes = __match_any_sync(FULL, lab);
    int lane = threadIdx.x & 31;
    if (valid) {
        parent[i] = root;  // a shortcut to the root: safe while other lanes still search
        if (lane == __ffs(peers) - 1) {
            atomicAdd(sum_c + root, sc);
            atomicAdd(sum_v + root, sv);
            atomicAdd(count + root, (unsigned)__popc(peers));
        }
        if (lane == __ffs(classes) - 1) atomicAdd(class_count + lab, (unsigned)__popc(classes));
    }
}

// A background macroblock's share of `moving_background` (qpmap.macroblock_weight's `moving`).
__device__ __forceinline__ float moving(float v, float low, float span)
{
    return clampf((v - low) / span, 0.0f, 1.0f);
}

// One block of 1024 threads (PIN_THREADS in mapper.py). `q_out` set: store Q and stop (the
// caller adjusts it on the host: the method's extensions); `q_in` set: use that Q instead of
// the regions'. `out` holds the raw offsets while the shift is searched, then the map.
// `moving_bg` 0: no moving-background term; `reuse_gain` 0: no reuse term and
// `refresh_period` 0: no still refresh (the encoder weighs reuse itself: qpmap decides on
// the host); `refresh_phase` is the frame's number modulo the period.
__global__ void __launch_bounds__(1024)
offsets(const short* __restrict__ labels, const int* __restrict__ region,
        const double* __restrict__ sum_c, const double* __restrict__ sum_v,
        const unsigned* __restrict__ count, const unsigned* __restrict__ class_count,
        const float* __restrict__ importance, int n_classes, int n,
        const float* __restrict__ v, const float* __restrict__ reuse,
        const float* __restrict__ q_in, float* __restrict__ q_out, float v_th, float a_slow,
        float b_slow, float a_fast, float b_fast, float q_gain, double imp_gain,
        double imp_budget, double imp_ref, double imp_exponent, double imp_boost_exponent,
        double imp_boost_max, double moving_bg, float motion_low, float motion_span,
        double still_from, double still_full, float reuse_gain, int mb_w, int refresh_period,
        int refresh_phase, float refresh_gain, float refresh_hold, float refresh_full_reuse,
        double target, double lo, double hi, double tolerance, int max_steps,
        float* __restrict__ out)
{
    __shared__ double sh_d[32];
    __shared__ float sh_f[32];
    // still_camera: the share of still background macroblocks sets the moving background's
    // scale and the refresh's (0 on a moving camera)
    unsigned n_bg = class_count[0];
    double still = 0.0;
    if ((moving_bg > 0.0 || refresh_period > 0) && n_bg > 0u) {
        double share = 0.0;
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            share += (labels[i] == 0 && v[i] < motion_low) ? 1.0 : 0.0;
        share = block_sum(share, sh_d) / (double)n_bg;
        still = fmin(fmax((share - still_from) / (still_full - still_from), 0.0), 1.0);
    }
    float scale = (float)(moving_bg * still);
    // importance_gain: the frame's mean importance, from exact per-class counts plus the
    // moving background's part
    double weight_sum = 0.0;
    for (int k = 0; k < n_classes; ++k)
        weight_sum += (double)class_count[k] * (double)importance[k];
    if (scale > 0.0f) {
        double extra = 0.0;
        for (int i = threadIdx.x; i < n; i += blockDim.x)
            if (labels[i] == 0) extra += (double)(scale * moving(v[i], motion_low, motion_span));
        weight_sum += block_sum(extra, sh_d);
    }
    double mean_weight = weight_sum / n;
    double exponent = mean_weight < imp_ref ? imp_boost_exponent : imp_exponent;
    double scaled = mean_weight > 0.0
        ? imp_gain * fmin(imp_boost_max, pow(imp_ref / mean_weight, exponent)) : imp_gain;
    float gain = (float)(mean_weight * scaled <= imp_budget ? scaled
                                                            : imp_budget / mean_weight);
    double raw_sum = 0.0;
    float raw_max = -3.0e38f, raw_min = 3.0e38f;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        float q = q_in ? q_in[i] : region_q(i, region, sum_c, sum_v, count, v_th, a_slow,
                                            b_slow, a_fast, b_fast);
        if (q_out) {
            q_out[i] = q;
            continue;
        }
        int lab = labels[i];
        float weight = importance[lab];
        if (lab == 0 && scale > 0.0f)
            weight = weight + scale * moving(v[i], motion_low, motion_span);
        float raw = q_gain * q - gain * weight;
        if (reuse_gain != 0.0f) raw = raw - reuse_gain * log2f(1.0f + reuse[i]);
        if (refresh_period > 0 && still > 0.0) {  // still_refresh
            bool due = (i % mb_w + 2 * (i / mb_w) + refresh_phase) % refresh_period == 0;
            raw = raw + (due ? -refresh_gain : refresh_hold)
                      * fminf(reuse[i] / refresh_full_reuse, 1.0f) * (float)still;
        }
        out[i] = raw;
        raw_sum += raw;
        raw_max = fmaxf(raw_max, raw);
        raw_min = fminf(raw_min, raw);
    }
    if (q_out) return;
    // pin_mean: the clamped mean grows monotonically with the shift; Newton steps, bisection
    // when a step leaves the bracket. Every thread takes the same branches (block-wide values).
    double s_lo = lo - (double)block_max(raw_max, sh_f);
    double s_hi = hi + (double)block_max(-raw_min, sh_f);
    double shift = target - block_sum(raw_sum, sh_d) / n;
    float flo = (float)lo, fhi = (float)hi;
    for (int step = 0; step < max_steps; ++step) {
        float fs = (float)shift;
        double clamped = 0.0, inside = 0.0;
        for (int i = threadIdx.x; i < n; i += blockDim.x) {
            float moved = out[i] + fs;
            clamped += clampf(moved, flo, fhi);
            inside += (moved > flo && moved < fhi) ? 1.0 : 0.0;
        }
        double error = block_sum(clamped, sh_d) / n - target;
        double slope = block_sum(inside, sh_d) / n;
        if (fabs(error) < tolerance) break;
        if (error < 0.0) s_lo = shift;
        else s_hi = shift;
        double next = slope > 0.0 ? shift - error / slope : s_lo - 1.0;
        shift = (s_lo < next && next < s_hi) ? next : 0.5 * (s_lo + s_hi);
    }
    float fs = (float)shift;
    for (int i = threadIdx.x; i < n; i += blockDim.x) out[i] = clampf(out[i] + fs, flo, fhi);
}

}  // extern "C"

"""CudaQpMapper: a frame's QP map computed on the GPU, the same map as the numpy path
(`Analyser.analyse` then `build_qp_map`; the parity test holds them within 1e-3 QP).

What runs where, per frame (the kernels are in qp_map.cu, compiled by nvrtc.py):

- Fused, one pass over the luma: `mb_measure` reads the 16 luma samples of each macroblock
  (every 4th pixel of every 4th row) and the previous frame's, and computes C, V and the
  expected reuse (`analysis/temporal.py`). The samples and the reuse stay on the device for
  the next frame; the luma is read once.
- Not per macroblock in the reference, so not in that pass, but on the GPU as well: the regions
  (4-connected components of equal labels: `ccl_merge`, union-find), their mean C and V and the
  count of macroblocks per class (`region_sum`, atomics), then in one block (`offsets`) Q per
  macroblock from its region's means, the importance per macroblock (the moving background's
  share and the refresh's need the frame's share of still background: a block reduction), the
  importance gain (a frame mean), the raw offsets with the reuse term and the still
  refresh, the mean pinning (the reference's Newton/bisection search, each step a block
  reduction) and the clamp. Four launches; the host waits once, for the map.
- Read: the labels (`LabelMap.labels`, 2 bytes a macroblock), not the probabilities: the
  reference's map depends on the probabilities only through those labels (labeler fusion
  thresholds them per model and applies `labeler.priority` before either path sees them).
- On the host: the method's extensions (`adjust`, Python code on Q). With one, Q comes down,
  is adjusted, goes back up, and a second `offsets` launch finishes the map.
- Copied per frame: every 4th luma row up (one 2-D copy: a quarter of the plane), labels and
  the importance table up, the offsets (4 bytes a macroblock) down.
"""
from __future__ import annotations

from typing import Callable, Protocol

import numpy as np

from ...frame import GRID, mb_grid
from ...values import LabelMap, QpMap
from .. import qpmap
from ..config import QpConfig
from . import nvrtc
from .backends import Buffer, bandwidth, installed, open_gpu
from .nvrtc import CudaError

SUB = GRID  # the luma sampling step: the CPU analysers' grid (Frame.luma_grid)
MEASURE_BLOCK = (32, 8, 1)  # macroblocks per mb_measure block
LINEAR = 256  # threads per block of ccl_merge and region_sum
PIN_THREADS = 1024  # the one block of `offsets` (its __launch_bounds__)


class AnalysisScales(Protocol):
    """What the map needs of `AnalysisConfig` (passed in: qp does not import analysis)."""

    complexity_full_var: float
    change_full_mad: float
    intra_floor: float
    reuse_horizon: float


def unavailable_reason() -> str | None:
    """Why `qp.device: cuda` cannot work here, checked without touching a GPU (the pre-flight):
    a launcher installed and libnvrtc loadable. None when both are there."""
    if not installed():
        return ("neither CuPy nor pycuda is installed (pip install cupy-cuda12x or "
                "cupy-cuda13x; on a Jetson, JetPack's python3-pycuda)")
    return nvrtc.unavailable_reason()


class CudaQpMapper:
    """Keeps the previous frame's luma samples on the device, like `Analyser` keeps them.

    `backend`: "pycuda" or "cupy" (default: pycuda where installed, else CuPy). Raises
    CudaError saying why when no launcher, GPU or NVRTC is usable."""

    @staticmethod
    def unavailable_reason() -> str | None:
        return unavailable_reason()

    def __init__(self, backend: str | None = None, device: int = 0):
        self.gpu = open_gpu(backend, device)
        with self.gpu.activate():
            self.arch = nvrtc.arch_for(*self.gpu.capability)
            image = nvrtc.kernel_image(self.arch)
            try:
                self._k = self.gpu.load(image, nvrtc.KERNELS)
            except Exception as e:  # noqa: BLE001 - each launcher raises its own driver errors
                raise CudaError(f"loading the {self.arch} image on {self.gpu.device_name} "
                                f"failed: {type(e).__name__}: {e}") from e
        self._grid: tuple[int, int] | None = None
        self._size = (0, 0)
        self._caps = {"rows": 0, "classes": 0}
        self._b: dict[str, Buffer] = {}
        self._classes = 0
        self._has_prev = False
        self._flip = 0  # which samples buffer this frame writes

    def describe(self) -> str:
        major, minor = self.gpu.capability
        return (f"{self.gpu.name} on {self.gpu.device_name} (compute {major}.{minor}, "
                f"{self.arch}, NVRTC {'.'.join(map(str, nvrtc.version()))})")

    def bandwidth(self) -> dict:
        return bandwidth(self.gpu)

    def reset(self) -> None:
        """Forget the previous frame (the next one gets V = 0), as `Analyser.reset`."""
        self._has_prev = False

    def map(self, frame, labels: LabelMap, importance: np.ndarray, cfg: QpConfig,
            analysis: AnalysisScales,
            adjust: Callable[[np.ndarray], np.ndarray] | None = None,
            encoder_weighs_reuse: bool = False) -> QpMap:
        """The QpMap of `frame` (a Frame: its luma is read): the numpy path's
        `build_qp_map(Analyser(analysis).analyse(frame, labels), labels, importance, cfg,
        adjust, encoder_weighs_reuse)` with this mapper's previous frame as the Analyser's."""
        with self.gpu.activate():
            self.upload(frame.y, labels.labels, importance)
            self.launch(cfg, analysis, adjust, encoder_weighs_reuse, frame.index)
            return QpMap(self.result())

    # The three steps of `map`, apart for the benchmark (kernel time without the copies).

    def upload(self, y: np.ndarray, labels: np.ndarray, importance: np.ndarray) -> None:
        if y.dtype != np.uint8 or y.ndim != 2:
            raise ValueError(f"luma must be a 2-D uint8 plane, got {y.dtype} {y.shape}")
        h, w = y.shape
        mb_w, mb_h = mb_grid(w, h)
        labels = np.ascontiguousarray(labels, np.int16)
        if labels.shape != (mb_h, mb_w):
            raise ValueError(f"labels {labels.shape} do not match the {w}x{h} frame's "
                             f"{mb_h}x{mb_w} macroblocks")
        imp = np.ascontiguousarray(importance, np.float32)
        if labels.min() < 0 or labels.max() >= len(imp):  # the kernel would read past the table
            raise IndexError(f"labels {labels.min()}..{labels.max()} for {len(imp)} "
                             "importance entries")
        self._ensure(w, h, len(imp))
        if y.strides[1] != 1:
            y = np.ascontiguousarray(y)
        self.gpu.upload_rows(self._b["rows"], y, SUB, -(-h // SUB))
        self.gpu.upload(self._b["labels"], labels)
        self.gpu.upload(self._b["importance"], imp)
        self._classes = len(imp)

    def launch(self, cfg: QpConfig, analysis: AnalysisScales,
               adjust: Callable[[np.ndarray], np.ndarray] | None = None,
               encoder_weighs_reuse: bool = False, index: int = 0) -> None:
        """Queue the kernels on the uploaded frame (number `index`: the still refresh's
        phase; no wait, unless `adjust` needs Q)."""
        (w, h), (mb_w, mb_h) = self._size, self._grid
        n, b, k, launch = mb_w * mb_h, self._b, self._k, self.gpu.launch
        cur, prev = b[f"samples{self._flip}"], b[f"samples{1 - self._flip}"]
        i32, f32, f64 = np.int32, np.float32, np.float64
        period = qpmap.refresh_period(cfg, encoder_weighs_reuse)
        launch(k["mb_measure"], (-(-mb_w // MEASURE_BLOCK[0]), -(-mb_h // MEASURE_BLOCK[1]), 1),
               MEASURE_BLOCK,
               [b["rows"].arg, np.int64(w), i32(-(-h // SUB)), i32(-(-w // SUB)), i32(mb_w),
                i32(mb_h), prev.arg, i32(self._has_prev), cur.arg,
                f64(np.log1p(analysis.complexity_full_var)), f32(analysis.change_full_mad),
                f32(analysis.intra_floor), f32(analysis.reuse_horizon), b["reuse"].arg,
                b["c"].arg, b["v"].arg, b["parent"].arg, b["sum_c"].arg, b["sum_v"].arg,
                b["count"].arg, b["class_count"].arg, i32(self._classes)])
        self._flip ^= 1
        self._has_prev = True
        linear = (-(-n // LINEAR), 1, 1)
        launch(k["ccl_merge"], linear, (LINEAR, 1, 1),
               [b["labels"].arg, b["parent"].arg, i32(mb_w), i32(n)])
        launch(k["region_sum"], linear, (LINEAR, 1, 1),
               [b["labels"].arg, b["parent"].arg, b["c"].arg, b["v"].arg, i32(n),
                b["sum_c"].arg, b["sum_v"].arg, b["count"].arg, b["class_count"].arg])
        # float32 where numpy meets a Python float with a float32 array (NEP 50), else float64
        head = [b["labels"].arg, b["parent"].arg, b["sum_c"].arg, b["sum_v"].arg,
                b["count"].arg, b["class_count"].arg, b["importance"].arg, i32(self._classes),
                i32(n), b["v"].arg, b["reuse"].arg]
        tail = [f32(cfg.v_threshold), f32(cfg.alpha_slow), f32(cfg.beta_slow),
                f32(cfg.alpha_fast), f32(cfg.beta_fast), f32(cfg.q_gain),
                f64(cfg.importance_gain), f64(cfg.importance_budget),
                f64(cfg.importance_reference), f64(cfg.importance_exponent),
                f64(cfg.importance_boost_exponent), f64(cfg.importance_boost_max),
                f64(cfg.moving_background), f32(cfg.motion_low),
                f32(cfg.motion_high - cfg.motion_low), f64(qpmap.STILL_FROM),
                f64(qpmap.STILL_FULL), f32(qpmap.reuse_gain(cfg, encoder_weighs_reuse)),
                i32(mb_w), i32(period), i32(index % period if period else 0),
                f32(cfg.refresh_gain), f32(cfg.refresh_hold), f32(qpmap.REFRESH_FULL_REUSE),
                f64(cfg.target_mean),
                f64(cfg.offset_min), f64(cfg.offset_max), f64(qpmap._TOLERANCE),
                i32(qpmap._BISECTIONS), b["out"].arg]
        null = np.uint64(0)
        one = ((1, 1, 1), (PIN_THREADS, 1, 1))
        if adjust is None:
            launch(k["offsets"], *one, head + [null, null] + tail)
            return
        launch(k["offsets"], *one, head + [null, b["q"].arg] + tail)
        q = self.gpu.download(np.empty((mb_h, mb_w), np.float32), b["q"])
        adjusted = np.asarray(adjust(q), np.float32)
        if adjusted.shape != q.shape:
            raise ValueError(f"adjust returned {adjusted.shape} for Q of {q.shape}")
        self.gpu.upload(b["q"], adjusted)
        launch(k["offsets"], *one, head + [b["q"].arg, null] + tail)

    def result(self) -> np.ndarray:
        """The map of the last launch: float32[mb_h, mb_w] (waits for it)."""
        mb_w, mb_h = self._grid
        return self.gpu.download(np.empty((mb_h, mb_w), np.float32), self._b["out"])

    def intermediates(self) -> dict[str, np.ndarray]:
        """C, V and the region of each macroblock (a root index; mb_w * mb_h = background)
        of the last launch, for tests that locate a difference."""
        mb_w, mb_h = self._grid
        with self.gpu.activate():
            return {name: self.gpu.download(np.empty((mb_h, mb_w), dtype), self._b[name])
                    for name, dtype in (("c", np.float32), ("v", np.float32),
                                        ("parent", np.int32))}

    def _ensure(self, w: int, h: int, classes: int) -> None:
        """Device buffers for this size; a new macroblock grid forgets the previous frame
        (as `change_map` ignores samples of another shape)."""
        mb_w, mb_h = mb_grid(w, h)
        n, rows = mb_w * mb_h, -(-h // SUB) * w
        if (self._grid != (mb_w, mb_h) or rows > self._caps["rows"]
                or classes > self._caps["classes"]):
            self.gpu.synchronize()  # nothing queued may still use a buffer given back
        if self._grid != (mb_w, mb_h):
            sizes = {"samples0": 16 * n, "samples1": 16 * n, "labels": 2 * n, "c": 4 * n,
                     "v": 4 * n, "parent": 4 * n, "sum_c": 8 * (n + 1), "sum_v": 8 * (n + 1),
                     "count": 4 * (n + 1), "q": 4 * n, "out": 4 * n, "reuse": 4 * n}
            self._b.update({name: self.gpu.alloc(size) for name, size in sizes.items()})
            self._grid, self._has_prev = (mb_w, mb_h), False
        if rows > self._caps["rows"]:
            self._b["rows"], self._caps["rows"] = self.gpu.alloc(rows), rows
        if classes > self._caps["classes"]:
            self._b["importance"] = self.gpu.alloc(4 * classes)
            self._b["class_count"] = self.gpu.alloc(4 * classes)
            self._caps["classes"] = classes
        self._size = (w, h)


def traffic(width: int, height: int) -> dict[str, int]:
    """Bytes one frame's map moves in device memory.

    `compulsory`: each input read once and each output written once: the sampled luma rows
    (every 4th row: each 32-byte sector holds 8 of the samples, so whole rows move), the
    previous samples (16 per macroblock), this frame's samples, the reuse kept from frame to
    frame (read and written, 4 bytes a macroblock each way), the labels, the offsets. No
    implementation of the method moves less; its time at the card's bandwidth is the floor.
    `kernels`: the four kernels' own reads and writes with nothing kept in cache between them
    (C, V, the union-find forest and the region sums go through memory; `offsets` counted
    with three passes of its search). `upload`/`download`: the host copies."""
    mb_w, mb_h = mb_grid(width, height)
    n = mb_w * mb_h
    luma = -(-height // SUB) * width
    compulsory = luma + 16 * n + 16 * n + 8 * n + 2 * n + 4 * n
    sums = 20 * (n + 1)  # two doubles and a count per region slot
    kernels = {
        "mb_measure": luma + 32 * n + 8 * n + 4 * n + 8 * n + sums,
        "ccl_merge": 2 * n + 4 * n,
        "region_sum": 2 * n + 4 * n + 8 * n + 4 * n + 2 * sums,
        "offsets": 2 * n + 4 * n + sums + 4 * n + 3 * 4 * n + 2 * 4 * n + 2 * 4 * n,
    }
    return {"compulsory": compulsory, "kernels": sum(kernels.values()), **kernels,
            "upload": luma + 2 * n, "download": 4 * n}

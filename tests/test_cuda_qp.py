"""The CUDA QP map (edge_semvc/qp/cuda): on every machine, the kernel source compiles with NVRTC
(where libnvrtc is found), every launch's arguments match the kernel's parameters, and
`qp.device: cuda` is refused with a reason where it cannot run; on a GPU (`-m gpu`), the map
equals the numpy reference within 1e-3 QP on random and real frames."""
import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edge_semvc import preflight
from edge_semvc.analysis import Analyser
from edge_semvc.analysis.config import AnalysisConfig
from edge_semvc.bench import gpu_qp
from edge_semvc.config import load_config
from edge_semvc.errors import ConfigError
from edge_semvc.frame import mb_grid
from edge_semvc.qp import QP_DEVICES, cuda, qpmap
from edge_semvc.qp.config import QpConfig
from edge_semvc.qp.cuda import backends, mapper, nvrtc
from edge_semvc.qp.policy import base_q
from edge_semvc.qp.qpmap import build_qp_map, importance_vector, macroblock_weight
from edge_semvc.values import LabelMap

CLASSES = gpu_qp.CLASSES
NVRTC_WHY = nvrtc.unavailable_reason()
needs_nvrtc = pytest.mark.skipif(NVRTC_WHY is not None, reason=f"no NVRTC: {NVRTC_WHY}")
GPU_WHY = cuda.gpu_unavailable_reason("cupy") if "cupy" in backends.installed() else \
    "CuPy is not installed"


# scripts/gpu_check.sh sets it: there a missing GPU or missing real frames is a failure
REQUIRED = bool(os.environ.get("EDGE_SEMVC_REQUIRE_GPU"))


def needs_gpu(test):  # gpu: not in the default run; scripts/gpu_check.sh runs them
    return pytest.mark.gpu(pytest.mark.skipif(
        GPU_WHY is not None and not REQUIRED, reason=f"needs CuPy and a GPU: {GPU_WHY}")(test))


def skip_or_fail(reason: str):
    (pytest.fail if REQUIRED else pytest.skip)(reason)


# ---- on every machine ----------------------------------------------------------------------

def test_the_kernel_source_compiles_with_nvcc(tmp_path):
    """Where the toolkit's compiler is (also without a GPU or libnvrtc): the same source to PTX
    with every kernel the launchers name, so an error cannot wait for a GPU to show."""
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        pytest.skip("no nvcc here (the CUDA toolkit)")
    ptx = tmp_path / "qp_map.ptx"
    subprocess.run([nvcc, "-ptx", "-arch=compute_75", str(nvrtc.SOURCE), "-o", str(ptx)],
                   check=True, capture_output=True, timeout=300)
    entries = re.findall(r"\.entry (\w+)\(", ptx.read_text())
    assert sorted(entries) == sorted(nvrtc.KERNELS)


@needs_nvrtc
@pytest.mark.parametrize("arch", ["compute_75", "sm_87", "sm_90"])  # PTX, Jetson Orin, H100/200
def test_the_kernel_source_compiles_with_nvrtc(arch):
    image = nvrtc.compile_source(nvrtc.SOURCE.read_text(), arch)
    if arch.startswith("compute_"):
        entries = re.findall(r"\.entry (\w+)\(", image.decode())
        assert sorted(entries) == sorted(nvrtc.KERNELS)
    else:
        assert image[:4] == b"\x7fELF"
        assert all(name.encode() in image for name in nvrtc.KERNELS)


@needs_nvrtc
def test_a_compile_error_carries_nvrtc_s_log():
    with pytest.raises(nvrtc.CudaError, match="no_such_name"):
        nvrtc.compile_source('extern "C" __global__ void k() { no_such_name(); }', "compute_75")


def test_the_library_is_looked_for_where_edge_semvc_nvrtc_says_first(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGE_SEMVC_NVRTC", str(tmp_path / "libnvrtc.so.13"))
    assert nvrtc._candidates()[0] == str(tmp_path / "libnvrtc.so.13")
    (tmp_path / "libnvrtc.so.12").write_bytes(b"")
    monkeypatch.setenv("EDGE_SEMVC_NVRTC", str(tmp_path))
    assert nvrtc._candidates()[0] == str(tmp_path / "libnvrtc.so.12")


def test_the_target_is_the_gpu_s_own_cubin_else_ptx_below_it(monkeypatch):
    monkeypatch.setattr(nvrtc, "supported_archs", lambda: [75, 80, 87, 90])
    monkeypatch.setattr(nvrtc, "version", lambda: (13, 0))
    assert nvrtc.arch_for(8, 7) == "sm_87"
    assert nvrtc.arch_for(8, 9) == "compute_87"  # the driver JITs the PTX
    with pytest.raises(nvrtc.CudaError, match="cannot compile for compute capability 7.2"):
        nvrtc.arch_for(7, 2)


def test_qp_device_cuda_is_refused_by_the_preflight_saying_why(monkeypatch):
    """Validation checks the name only; whether CUDA runs here is the pre-flight's answer."""
    cfg = load_config(None, ["qp.device=cuda"])  # no hardware probed at load
    monkeypatch.setattr(mapper, "installed", lambda: [])
    with pytest.raises(ConfigError, match="qp.device.*neither CuPy nor pycuda is installed"):
        preflight.resolve(cfg)
    monkeypatch.setattr(mapper, "installed", lambda: ["cupy"])
    monkeypatch.setattr(nvrtc, "unavailable_reason", lambda: "libnvrtc not found (...)")
    with pytest.raises(ConfigError, match="cuda is not usable here: libnvrtc not found"):
        preflight.resolve(cfg)
    monkeypatch.setattr(nvrtc, "unavailable_reason", lambda: None)
    preflight.resolve(cfg)
    assert QP_DEVICES.why_unavailable("cuda") is None
    with pytest.raises(ConfigError, match="expected cpu or cuda"):
        QpConfig(device="gpu").validate()


def test_importing_the_cuda_package_imports_no_gpu_library():
    code = ("import sys, edge_semvc.qp.cuda, edge_semvc.qp.config; "
            "print([m for m in sys.modules if m.split('.')[0] in ('cupy', 'pycuda')])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "[]"


def _kernel_parameters() -> dict[str, list[type]]:
    """Each kernel's parameters in qp_map.cu as the numpy scalar type a launch must pass."""
    types = {"int": np.int32, "long long": np.int64, "float": np.float32, "double": np.float64}
    out = {}
    source = nvrtc.SOURCE.read_text()
    for name, params in re.findall(r"__global__ void (?:__launch_bounds__\(\d+\)\s*)?(\w+)"
                                   r"\(([^)]*)\)", source):
        kinds = []
        for p in params.split(","):
            words = p.replace("__restrict__", "").replace("const", "").replace("*", " * ")
            words = words.split()[:-1]  # drop the parameter's name
            kinds.append(np.uint64 if "*" in words else types[" ".join(words)])
        out[name] = kinds
    return out


class FakeGpu:
    """Records launches; device memory as address ranges (nothing runs)."""

    name, device_name, capability, versions = "fake", "no GPU", (9, 0), {}

    def __init__(self):
        self.launches, self.buffers, self._next = [], [], 1 << 20

    def activate(self):
        return contextlib.nullcontext()

    def alloc(self, nbytes):
        buf = backends.Buffer(None, self._next, nbytes)
        self.buffers.append(buf)
        self._next += nbytes + 4096
        return buf

    def upload(self, dst, host):
        assert np.asarray(host).nbytes <= dst.nbytes

    def upload_rows(self, dst, plane, step, rows):
        assert step == 4 and rows * plane.shape[1] <= dst.nbytes and rows == -(-len(plane) // 4)

    def download(self, host, src):
        assert host.nbytes <= src.nbytes
        host[...] = 0
        return host

    def load(self, image, names):
        return {n: n for n in names}

    def launch(self, fn, grid, block, args):
        self.launches.append((fn, grid, block, args))

    def synchronize(self):
        pass


@pytest.fixture
def fake_mapper(monkeypatch):
    gpu = FakeGpu()
    monkeypatch.setattr(mapper, "open_gpu", lambda backend, device: gpu)
    monkeypatch.setattr(nvrtc, "arch_for", lambda major, minor: "sm_90")
    monkeypatch.setattr(nvrtc, "kernel_image", lambda arch: b"")
    return mapper.CudaQpMapper(), gpu


def test_every_launch_passes_the_kernel_s_parameters(fake_mapper):
    m, gpu = fake_mapper
    params = _kernel_parameters()
    assert sorted(params) == sorted(nvrtc.KERNELS)
    seen = []
    for w, h in ((854, 480), (64, 48)):
        frames, labels = gpu_qp.scene(w, h)
        importance = importance_vector(CLASSES, QpConfig())
        gpu.launches.clear()
        m.map(frames[0], labels, importance, QpConfig(), AnalysisConfig())
        m.map(frames[1], labels, importance, QpConfig(), AnalysisConfig(),
              adjust=lambda q: seen.append(q.shape) or q)
        names = [launch[0] for launch in gpu.launches]
        assert names == ["mb_measure", "ccl_merge", "region_sum", "offsets"] * 2 + ["offsets"]
        mb_w, mb_h = mb_grid(w, h)
        addresses = {b.ptr for b in gpu.buffers} | {0}
        for name, grid, block, args in gpu.launches:
            assert [type(a) for a in args] == params[name], name
            assert all(int(a) in addresses for a in args if isinstance(a, np.uint64)), name
            if name == "mb_measure":
                assert grid[0] * block[0] >= mb_w and grid[1] * block[1] >= mb_h
            elif name == "offsets":
                assert grid == (1, 1, 1) and block[0] == mapper.PIN_THREADS
            else:
                assert grid[0] * block[0] >= mb_w * mb_h and block[0] % 32 == 0
        assert seen[-1] == (mb_h, mb_w)
    assert f"__launch_bounds__({mapper.PIN_THREADS})" in nvrtc.SOURCE.read_text()


def test_labels_outside_the_importance_table_are_refused(fake_mapper):
    m, _ = fake_mapper
    frames, labels = gpu_qp.scene(64, 48)
    labels.labels[0, 0] = 7
    with pytest.raises(IndexError, match="5 importance entries"):
        m.map(frames[0], labels, importance_vector(CLASSES, QpConfig()), QpConfig(),
              AnalysisConfig())


def test_traffic_counts_the_sampled_rows_and_each_macroblock():
    t = cuda.traffic(1920, 1080)
    n = 120 * 68
    assert t["compulsory"] == 270 * 1920 + (16 + 16 + 8 + 2 + 4) * n
    assert t["upload"] == 270 * 1920 + 2 * n and t["download"] == 4 * n
    assert t["kernels"] == sum(t[k] for k in nvrtc.KERNELS) > t["compulsory"]


def test_the_benchmark_s_sizes_and_its_cpu_only_run(tmp_path):
    assert gpu_qp.parse_sizes("720p, 1080p,4K,300x168") == [
        ("720p", 1280, 720), ("1080p", 1920, 1080), ("4k", 3840, 2160), ("300x168", 300, 168)]
    with pytest.raises(Exception, match="not a size"):
        gpu_qp.parse_sizes("720q")
    out = tmp_path / "r.json"
    assert gpu_qp.main(["--sizes", "64x48", "--cpu-only", "--cpu-repeats", "2",
                        "--json", str(out)]) == 0
    row = json.loads(out.read_text())["sizes"][0]
    assert row["size"] == "64x48" and row["numpy_ms"] > 0 and "map_ms" not in row
    rows = [{"size": s, "macroblocks": n, "gpu_pays_off": ok}
            for s, n, ok in (("4k", 9, True), ("720p", 1, True), ("1080p", 4, False))]
    assert gpu_qp.pays_off_from(rows) == "4k"
    assert gpu_qp.pays_off_from(rows[1:]) is None


# ---- on a GPU ------------------------------------------------------------------------------

def label_map(labels: np.ndarray) -> LabelMap:
    probs = np.zeros((len(CLASSES) - 1, *labels.shape), np.float32)
    return LabelMap(probs, CLASSES, labels.astype(np.int16), ["test"])


def random_labels(rng, mb_w: int, mb_h: int, kind: str) -> np.ndarray:
    labels = np.zeros((mb_h, mb_w), np.int16)
    if kind == "boxes":
        for _ in range(rng.integers(1, 8)):
            y, x = rng.integers(0, mb_h), rng.integers(0, mb_w)
            h, w = rng.integers(1, max(2, mb_h // 3)), rng.integers(1, max(2, mb_w // 3))
            labels[y:y + h, x:x + w] = rng.integers(1, len(CLASSES))
    elif kind == "maze":  # many components, some long and winding: the union-find's worst
        labels[rng.random((mb_h, mb_w)) < 0.45] = 1
        spots = rng.random((mb_h, mb_w)) < 0.1
        labels[spots] = rng.integers(2, len(CLASSES), int(spots.sum()))
    elif kind == "comb":  # one region whose teeth meet only along the bottom row
        labels[:, ::2] = 2
        labels[-1, :] = 2
    elif kind == "most":  # a face over most of the frame: the importance budget applies
        labels[:] = 2
        labels[: max(1, mb_h // 5)] = 0
    return labels


def luma_pair(rng, w: int, h: int) -> list[np.ndarray]:
    frames, _ = gpu_qp.scene(w, h, seed=int(rng.integers(1 << 16)))
    return [f.y for f in frames]


def compare(m, ys, label_arrays, cfg=None, analysis=None, adjust=None, resets=(),
            weighs_reuse=False):
    """Both paths over one sequence of frames; asserts C, V, the regions and the map (reuse
    accumulates over the sequence; `weighs_reuse`: the encoder's own, so no reuse term)."""
    cfg, analysis = cfg or QpConfig(), analysis or AnalysisConfig()
    importance = importance_vector(CLASSES, cfg)
    ref = Analyser(analysis)
    m.reset()
    worst = 0.0
    for i, (y, labels) in enumerate(zip(ys, label_arrays)):
        if i in resets:
            ref.reset()
            m.reset()
        lm, frame = label_map(labels), gpu_qp.frame_of(y, i)
        stats = ref.analyse(frame, lm)
        want = build_qp_map(stats, lm, importance, cfg, adjust, weighs_reuse).offsets
        got = m.map(frame, lm, importance, cfg, analysis, adjust, weighs_reuse).offsets
        mid = m.intermediates()
        np.testing.assert_allclose(mid["c"], stats.complexity, atol=1e-6, rtol=0)
        np.testing.assert_allclose(mid["v"], stats.change, atol=1e-6, rtol=0)
        pairs = set(zip(mid["parent"].ravel().tolist(), stats.regions.ravel().tolist()))
        assert len(pairs) == len(np.unique(mid["parent"])) == len(np.unique(stats.regions))
        assert (mid["parent"] == labels.size).tolist() == (stats.regions == 0).tolist()
        assert got.shape == want.shape and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - want).max()))
        assert worst <= 1e-3, f"frame {i}: max abs diff {worst} QP"
    return worst


@pytest.fixture(scope="module")
def gpu_mapper():
    return cuda.CudaQpMapper("cupy")


@needs_gpu
@pytest.mark.parametrize("w, h", [(64, 48), (300, 168), (854, 480), (1280, 720), (1920, 1080),
                                  (3840, 2160)])
@pytest.mark.parametrize("kind", ["boxes", "maze", "comb", "most", "none"])
def test_the_gpu_map_equals_numpy_s_on_random_frames(gpu_mapper, w, h, kind):
    rng = np.random.default_rng(w * 7 + h)
    mb_w, mb_h = mb_grid(w, h)
    ys = luma_pair(rng, w, h) + luma_pair(rng, w, h)[:1]
    ys += [rng.integers(0, 256, (h, w), dtype=np.uint8)]  # noise: C and V near 1
    labels = [random_labels(rng, mb_w, mb_h, kind) for _ in ys]
    compare(gpu_mapper, ys, labels, resets=(2,))


@needs_gpu
@pytest.mark.parametrize("cfg", [
    QpConfig(offset_min=-3.0, offset_max=3.0, q_gain=20.0, target_mean=2.5),  # heavy clamping
    QpConfig(v_threshold=0.02, importance_budget=0.3),
    QpConfig(importance_reference=0.02, importance_exponent=1.5, importance_boost_exponent=0.3,
             importance_boost_max=4.0),  # every frame above the reference: milder
    QpConfig(importance_reference=0.9, importance_exponent=1.5, importance_boost_exponent=0.3,
             importance_boost_max=4.0),  # every frame below it: firmer
    QpConfig(q_gain=0.0, importance_gain=0.0, target_mean=0.0),
    QpConfig(moving_background=0.0, reuse="never"),  # the map before the background terms
    QpConfig(moving_background=1.0, motion_low=0.02, motion_high=0.05, reuse="always",
             reuse_gain=3.0),
    QpConfig(refresh_period=3, refresh_gain=6.0, refresh_hold=0.5, reuse_gain=0.0),
    QpConfig(refresh_period=0),
], ids=["clamped", "fast-budget", "area-gain-large", "area-gain-small", "flat",
        "no-background-terms", "strong-background", "refresh-only", "no-refresh"])
def test_the_gpu_map_follows_the_configuration(gpu_mapper, cfg):
    rng = np.random.default_rng(5)
    ys = luma_pair(rng, 1280, 720) + still_camera(rng, 1280, 720, 3)
    labels = [random_labels(rng, 80, 45, "boxes") for _ in ys]
    compare(gpu_mapper, ys, labels, cfg=cfg, resets=(2,),
            analysis=AnalysisConfig(complexity_full_var=300.0, change_full_mad=5.0,
                                    intra_floor=1.0, reuse_horizon=5.0))


def still_camera(rng, w: int, h: int, frames: int) -> list[np.ndarray]:
    """A fixed textured picture with sensor noise and a bright walker crossing it: most of the
    background is still, so the moving-background term and the reuse build up."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    picture = 100 + 40 * np.sin(xx / 29) * np.cos(yy / 17) + 30 * xx / w
    out = []
    for i in range(frames):
        y = picture + rng.normal(0, 0.8, (h, w))
        x0 = int((0.1 + 0.12 * i) * w)
        y[h // 3:h // 3 + h // 4, x0:x0 + w // 12] = 220
        out.append(np.clip(y, 0, 255).astype(np.uint8))
    return out


@needs_gpu
@pytest.mark.parametrize("weighs_reuse", [False, True])
@pytest.mark.parametrize("w, h", [(300, 168), (1280, 720)])
def test_the_gpu_map_equals_numpy_s_on_a_still_camera(gpu_mapper, w, h, weighs_reuse):
    rng = np.random.default_rng(w + weighs_reuse)
    ys = still_camera(rng, w, h, 6)
    mb_w, mb_h = mb_grid(w, h)
    labels = [random_labels(rng, mb_w, mb_h, "boxes") for _ in ys]
    ref = Analyser(AnalysisConfig())
    for i, (y, lab) in enumerate(zip(ys, labels)):  # the case is what it claims to be
        stats = ref.analyse(gpu_qp.frame_of(y, i), label_map(lab))
    still = qpmap.still_camera(lab, stats.change, QpConfig())
    moving = macroblock_weight(lab, stats.change, np.zeros(len(CLASSES), np.float32),
                               QpConfig(), still)
    assert still == 1.0 and moving.max() > 0.3 and stats.reuse.max() > 3
    compare(gpu_mapper, ys, labels, resets=(4,), weighs_reuse=weighs_reuse)


@needs_gpu
def test_the_extensions_adjust_the_gpu_s_q(gpu_mapper):
    rng = np.random.default_rng(9)
    ys = luma_pair(rng, 854, 480)
    labels = [random_labels(rng, 54, 30, "maze") for _ in ys]
    seen = []

    def adjust(q):
        seen.append(q.copy())
        return np.clip(q * 0.7 + 0.05, 0.0, None)

    compare(gpu_mapper, ys, labels, adjust=adjust)
    ref = Analyser(AnalysisConfig())
    for i, (y, lab) in enumerate(zip(ys, labels)):
        stats = ref.analyse(gpu_qp.frame_of(y, i), label_map(lab))
        want = base_q(stats.region_complexity, stats.region_change, QpConfig())
        np.testing.assert_allclose(seen[2 * i + 1], want, atol=1e-6, rtol=0)  # 2i: numpy's


@needs_gpu
def test_a_new_frame_size_starts_over_like_the_analyser(gpu_mapper):
    rng = np.random.default_rng(3)
    sizes = [(1920, 1080), (1918, 1080), (1920, 1072), (1920, 1080)]  # same grid, new, back
    ys = [luma_pair(rng, w, h)[0] for w, h in sizes]
    labels = [random_labels(rng, *mb_grid(w, h), "boxes") for w, h in sizes]
    compare(gpu_mapper, ys, labels)


def real_pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Luma pairs from $EDGE_SEMVC_REAL_FRAMES (gpu_qp --save-frames), else decoded from the
    shared clips with PyAV."""
    path = os.environ.get("EDGE_SEMVC_REAL_FRAMES")
    if path and Path(path).exists():
        return real_pairs_from(Path(path))
    video = Path(__file__).resolve().parents[2] / "shared" / "data" / "video"
    try:
        import av  # noqa: F401
    except ImportError:
        skip_or_fail("no real frames: set EDGE_SEMVC_REAL_FRAMES (`scripts/gpu_check.sh "
                     "prepare`, then carry out/gpu_carry) or install PyAV")
    if not video.exists():
        skip_or_fail(f"{video} is missing (../shared holds the test clips)")
    out = Path(os.environ.get("TMPDIR", "/tmp")) / "edge_semvc_real_frames.npz"
    gpu_qp.save_frames(out, video)
    return real_pairs_from(out)


def real_pairs_from(path: Path):
    data = np.load(path)
    stems = sorted({k.rsplit("_", 1)[0] for k in data.files})
    return [(s, data[f"{s}_0"], data[f"{s}_1"]) for s in stems]


@needs_gpu
def test_the_gpu_map_equals_numpy_s_on_real_frames(gpu_mapper):
    pairs = real_pairs()
    if not pairs:
        skip_or_fail("no real frames found")
    rng = np.random.default_rng(11)
    for name, y0, y1 in pairs:
        mb_w, mb_h = mb_grid(y0.shape[1], y0.shape[0])
        labels = [random_labels(rng, mb_w, mb_h, "boxes") for _ in range(2)]
        worst = compare(gpu_mapper, [y0, y1], labels)
        print(f"{name}: max abs diff {worst:.2e} QP")


@needs_gpu
def test_pycuda_launches_the_same_image_to_the_same_map(gpu_mapper):
    if "pycuda" not in backends.installed():
        pytest.skip("pycuda is not installed (a Jetson's JetPack has it)")
    rng = np.random.default_rng(2)
    ys = luma_pair(rng, 1280, 720)
    labels = [random_labels(rng, 80, 45, "maze") for _ in ys]
    compare(cuda.CudaQpMapper("pycuda"), ys, labels)

"""The two launchers of the QP-map kernels: pycuda (a Jetson's JetPack ships it) and CuPy.

Both take the same NVRTC image (nvrtc.py) and the same arguments: device addresses as
numpy.uint64 and scalars as numpy scalars of the kernel's C type, so mapper.py drives either
without knowing which. Each imports its library only when opened: importing this module costs
nothing on a machine without CUDA.
"""
from __future__ import annotations

import contextlib
import importlib.util
from typing import Callable, Iterator

import numpy as np

from .nvrtc import CudaError

ORDER = ("pycuda", "cupy")  # pycuda where present (a Jetson), CuPy otherwise
# The device attributes bandwidth() reads: CU_DEVICE_ATTRIBUTE_* names, their numbers.
ATTRIBUTES = {"MEMORY_CLOCK_RATE": 36, "GLOBAL_MEMORY_BUS_WIDTH": 37}


def installed() -> list[str]:
    """The launchers whose package is installed (found without importing it)."""
    return [name for name in ORDER if importlib.util.find_spec(name) is not None]


class Buffer:
    """A device allocation: its address and whatever keeps it alive."""

    def __init__(self, owner, ptr: int, nbytes: int):
        self.owner, self.ptr, self.nbytes = owner, int(ptr), nbytes

    @property
    def arg(self) -> np.uint64:
        return np.uint64(self.ptr)


class CupyGpu:
    """CuPy: a non-blocking stream of its own; copies are asynchronous on it."""

    name = "cupy"

    def __init__(self, device: int = 0):
        import cupy
        from cupy.cuda import runtime  # CuPy: optional, a GPU machine's

        self._cupy, self._rt = cupy, runtime
        if runtime.getDeviceCount() <= device:
            raise CudaError(f"CuPy sees {runtime.getDeviceCount()} GPU(s), no device {device}")
        self._device = cupy.cuda.Device(device)
        self.index = device
        with self._device:
            self._stream = cupy.cuda.Stream(non_blocking=True)
        self._staged: list[np.ndarray] = []  # host arrays of queued copies, kept to the wait
        props = runtime.getDeviceProperties(device)
        name = props["name"]
        self.device_name = name.decode() if isinstance(name, bytes) else str(name)
        self.capability = (int(props["major"]), int(props["minor"]))
        self.versions = {"cupy": cupy.__version__, "cuda_runtime": runtime.runtimeGetVersion(),
                         "cuda_driver": runtime.driverGetVersion()}

    def activate(self):
        return self._device  # a context manager: this device current in the calling thread

    def attribute(self, name: str) -> int:
        return int(self._rt.deviceGetAttribute(ATTRIBUTES[name], self.index))

    def alloc(self, nbytes: int) -> Buffer:
        mem = self._cupy.cuda.alloc(max(nbytes, 8))
        return Buffer(mem, mem.ptr, nbytes)

    def upload(self, dst: Buffer, host: np.ndarray) -> None:
        host = np.ascontiguousarray(host)
        self._staged.append(host)
        self._rt.memcpyAsync(dst.ptr, host.ctypes.data, host.nbytes,
                             self._rt.memcpyHostToDevice, self._stream.ptr)

    def upload_rows(self, dst: Buffer, plane: np.ndarray, step: int, rows: int) -> None:
        """Rows 0, step, 2*step, ... of a uint8 plane (unit column stride), packed."""
        self._staged.append(plane)
        self._rt.memcpy2DAsync(dst.ptr, plane.shape[1], plane.ctypes.data,
                               step * plane.strides[0], plane.shape[1], rows,
                               self._rt.memcpyHostToDevice, self._stream.ptr)

    def download(self, host: np.ndarray, src: Buffer) -> np.ndarray:
        self._rt.memcpyAsync(host.ctypes.data, src.ptr, host.nbytes,
                             self._rt.memcpyDeviceToHost, self._stream.ptr)
        self.synchronize()
        return host

    def load(self, image: bytes, names: tuple[str, ...]) -> dict[str, Callable]:
        from cupy.cuda import function  # CuPy: optional, a GPU machine's

        module = function.Module()
        module.load(image)
        self._module = module  # the functions need it loaded
        return {n: module.get_function(n) for n in names}

    def launch(self, fn, grid: tuple[int, ...], block: tuple[int, ...], args: list) -> None:
        fn(grid, block, args, stream=self._stream)

    def synchronize(self) -> None:
        self._stream.synchronize()
        self._staged.clear()

    @contextlib.contextmanager
    def timed(self) -> Iterator[list[float]]:
        """Milliseconds of the GPU work queued inside the block (CUDA events), appended to the
        list it yields once the block's work is done."""
        start, end = self._cupy.cuda.Event(), self._cupy.cuda.Event()
        result: list[float] = []
        start.record(self._stream)
        yield result
        end.record(self._stream)
        end.synchronize()
        result.append(float(self._cupy.cuda.get_elapsed_time(start, end)))


class PycudaGpu:
    """pycuda on the device's primary context (shared with anything else in the process,
    e.g. TensorRT), pushed around each use because pycuda contexts are per thread and the
    pipeline maps on its own thread. The legacy default stream and synchronous copies: on a
    Jetson host and device share memory, so there is no copy to overlap."""

    name = "pycuda"

    def __init__(self, device: int = 0):
        import pycuda.driver as drv

        drv.init()
        if drv.Device.count() <= device:
            raise CudaError(f"pycuda sees {drv.Device.count()} GPU(s), no device {device}")
        self._drv = drv
        self._dev = drv.Device(device)
        self._ctx = self._dev.retain_primary_context()
        self.index = device
        self.device_name = self._dev.name()
        self.capability = tuple(self._dev.compute_capability())
        self.versions = {"pycuda": importlib.import_module("pycuda").VERSION_TEXT,
                         "cuda_driver": drv.get_driver_version()}

    @contextlib.contextmanager
    def activate(self) -> Iterator[None]:
        self._ctx.push()
        try:
            yield
        finally:
            self._drv.Context.pop()

    def attribute(self, name: str) -> int:
        return int(self._dev.get_attribute(getattr(self._drv.device_attribute, name)))

    def alloc(self, nbytes: int) -> Buffer:
        mem = self._drv.mem_alloc(max(nbytes, 8))
        return Buffer(mem, int(mem), nbytes)

    def upload(self, dst: Buffer, host: np.ndarray) -> None:
        self._drv.memcpy_htod(dst.ptr, np.ascontiguousarray(host))

    def upload_rows(self, dst: Buffer, plane: np.ndarray, step: int, rows: int) -> None:
        copy = self._drv.Memcpy2D()
        copy.set_src_host(plane)
        copy.set_dst_device(dst.ptr)
        copy.src_pitch = step * plane.strides[0]
        copy.dst_pitch = copy.width_in_bytes = plane.shape[1]
        copy.height = rows
        copy()

    def download(self, host: np.ndarray, src: Buffer) -> np.ndarray:
        self._drv.memcpy_dtoh(host, src.ptr)
        return host

    def load(self, image: bytes, names: tuple[str, ...]) -> dict[str, Callable]:
        module = self._drv.module_from_buffer(image)
        self._module = module
        return {n: module.get_function(n) for n in names}

    def launch(self, fn, grid: tuple[int, ...], block: tuple[int, ...], args: list) -> None:
        fn(*args, grid=grid, block=block)

    def synchronize(self) -> None:
        self._drv.Context.synchronize()

    @contextlib.contextmanager
    def timed(self) -> Iterator[list[float]]:
        start, end = self._drv.Event(), self._drv.Event()
        result: list[float] = []
        start.record()
        yield result
        end.record()
        end.synchronize()
        result.append(float(end.time_since(start)))


def open_gpu(backend: str | None = None, device: int = 0):
    """The launcher named, or the first of ORDER that opens; CudaError saying why none did."""
    names = [backend] if backend else installed()
    if not names:
        raise CudaError("qp.device cuda needs CuPy or pycuda: neither is installed")
    problems = []
    for name in names:
        if name not in ORDER:
            raise CudaError(f"unknown CUDA launcher {name!r} (known: {', '.join(ORDER)})")
        try:
            return (PycudaGpu if name == "pycuda" else CupyGpu)(device)
        except CudaError as e:
            problems.append(f"{name}: {e}")
        except Exception as e:  # noqa: BLE001 - a missing driver or GPU raises anything
            problems.append(f"{name}: {type(e).__name__}: {e}")
    raise CudaError("no usable GPU: " + "; ".join(problems))


def bandwidth(gpu) -> dict:
    """Peak memory bandwidth from the device's attributes: clock (kHz) x bus width x 2 (DDR)."""
    khz, bits = gpu.attribute("MEMORY_CLOCK_RATE"), gpu.attribute("GLOBAL_MEMORY_BUS_WIDTH")
    return {"memory_clock_khz": khz, "bus_width_bits": bits,
            "bytes_per_s": khz * 1e3 * bits / 8 * 2}

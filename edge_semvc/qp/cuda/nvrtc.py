"""NVRTC through ctypes: the one compile path of `qp_map.cu` for every launcher.

CuPy and pycuda would each compile CUDA source their own way (CuPy through its own NVRTC
binding, pycuda through nvcc, which a Jetson image may lack); compiling here and handing both
the same image keeps one source, one set of options and one result. Needs libnvrtc alone, no
GPU and no driver, so the CPU test suite compiles the kernel too (a syntax error cannot wait
for a GPU to show).

The library is looked for in: `$EDGE_SEMVC_NVRTC` (a file or a folder), the CUDA toolkit
(`$CUDA_PATH`, `$CUDA_HOME`, /usr/local/cuda: on a Jetson that is JetPack's), the
`nvidia-cuda-nvrtc` wheels on sys.path (what CuPy's CUDA 12/13 wheels use), then the dynamic
loader's own search.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import os
import sys
from pathlib import Path

from ...errors import EdgeSemvcError

SOURCE = Path(__file__).with_name("qp_map.cu")
KERNELS = ("mb_measure", "ccl_merge", "region_sum", "offsets")
# --fmad=false: float32 products and sums rounded one by one, as numpy's (the parity test).
OPTIONS = ("--fmad=false", "--std=c++17")
_SONAMES = ("libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so")


class CudaError(EdgeSemvcError, RuntimeError):
    """The CUDA QP map cannot be compiled, loaded or run here (names what is missing)."""


def _candidates() -> list[str]:
    paths: list[str] = []
    env = os.environ.get("EDGE_SEMVC_NVRTC")
    if env:
        paths += _in_folder(env) if os.path.isdir(env) else [env]
    roots = [os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"]
    for root in filter(None, roots):
        for sub in ("lib64", "lib", "targets/*/lib"):
            for folder in sorted(glob.glob(os.path.join(root, sub))):
                paths += _in_folder(folder)
    for entry in sys.path:  # pip wheels: nvidia/cu13/lib (CUDA 13), nvidia/cuda_nvrtc/lib (12)
        for folder in sorted(glob.glob(os.path.join(entry or ".", "nvidia", "*", "lib"))):
            paths += _in_folder(folder)
    return paths + list(_SONAMES)


def _in_folder(folder: str) -> list[str]:
    return [os.path.join(folder, s) for s in _SONAMES if os.path.exists(os.path.join(folder, s))]


@functools.lru_cache(maxsize=1)
def _library() -> tuple[ctypes.CDLL | None, str]:
    """(the loaded libnvrtc, its path) or (None, why not)."""
    tried = []
    for path in dict.fromkeys(_candidates()):  # ordered, without repeats
        try:
            _builtins_beside(path)
            lib = ctypes.CDLL(path)
        except OSError as e:
            tried.append(f"{path}: {e}" if os.sep in path else path)
            continue
        _declare(lib)
        return lib, path
    return None, ("libnvrtc not found (install the CUDA toolkit or `pip install "
                  "nvidia-cuda-nvrtc`, or point $EDGE_SEMVC_NVRTC at libnvrtc.so; tried "
                  + "; ".join(tried) + ")")


def _builtins_beside(path: str) -> None:
    """libnvrtc opens libnvrtc-builtins by name through the loader's search, which does not
    look beside libnvrtc itself (a wheel's folder is on no search path): loading it first from
    there satisfies that open."""
    if os.sep in path:
        for builtins in sorted(glob.glob(os.path.join(os.path.dirname(path),
                                                      "libnvrtc-builtins.so*"))):
            ctypes.CDLL(builtins)


def _declare(lib: ctypes.CDLL) -> None:
    p, c, sz = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_size_t
    lib.nvrtcGetErrorString.restype = c
    lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
    lib.nvrtcCreateProgram.argtypes = [ctypes.POINTER(p), c, c, ctypes.c_int,
                                       ctypes.POINTER(c), ctypes.POINTER(c)]
    lib.nvrtcCompileProgram.argtypes = [p, ctypes.c_int, ctypes.POINTER(c)]
    lib.nvrtcDestroyProgram.argtypes = [ctypes.POINTER(p)]
    for kind in ("ProgramLog", "PTX", "CUBIN"):
        getattr(lib, f"nvrtcGet{kind}Size").argtypes = [p, ctypes.POINTER(sz)]
        getattr(lib, f"nvrtcGet{kind}").argtypes = [p, ctypes.c_char_p]


def library_path() -> str | None:
    return _library()[1] if _library()[0] is not None else None


def unavailable_reason() -> str | None:
    """None where libnvrtc loads, else why not (one line)."""
    lib, why = _library()
    return None if lib is not None else why


def _lib() -> ctypes.CDLL:
    lib, why = _library()
    if lib is None:
        raise CudaError(why)
    return lib


def version() -> tuple[int, int]:
    major, minor = ctypes.c_int(), ctypes.c_int()
    _check(_lib().nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
    return major.value, minor.value


def supported_archs() -> list[int]:
    """The compute capabilities this NVRTC compiles for, e.g. [75, 80, ..., 120]."""
    lib = _lib()
    n = ctypes.c_int()
    _check(lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "nvrtcGetNumSupportedArchs")
    archs = (ctypes.c_int * n.value)()
    _check(lib.nvrtcGetSupportedArchs(archs), "nvrtcGetSupportedArchs")
    return list(archs)


def _check(status: int, what: str, log: str = "") -> None:
    if status != 0:
        name = _lib().nvrtcGetErrorString(status).decode(errors="replace")
        raise CudaError(f"{what} failed: {name}" + (f"\n{log}" if log else ""))


def compile_source(source: str, arch: str, name: str = "qp_map.cu",
                   options: tuple[str, ...] = OPTIONS) -> bytes:
    """Compile CUDA C++ for `arch`: "sm_XY" gives a CUBIN for that GPU (no JIT at load, no
    dependence on the driver's PTX version), "compute_XY" gives PTX. Raises CudaError with
    NVRTC's log on a compile error."""
    lib = _lib()
    prog = ctypes.c_void_p()
    _check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(), 0,
                                  None, None), "nvrtcCreateProgram")
    try:
        opts = [f"--gpu-architecture={arch}".encode(), *(o.encode() for o in options)]
        status = lib.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
        size = ctypes.c_size_t()
        _check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "nvrtcGetProgramLogSize")
        log = ctypes.create_string_buffer(size.value)
        _check(lib.nvrtcGetProgramLog(prog, log), "nvrtcGetProgramLog")
        _check(status, f"compiling {name} for {arch}", log.value.decode(errors="replace"))
        kind = "CUBIN" if arch.startswith("sm_") else "PTX"
        _check(getattr(lib, f"nvrtcGet{kind}Size")(prog, ctypes.byref(size)),
               f"nvrtcGet{kind}Size")
        image = ctypes.create_string_buffer(size.value)
        _check(getattr(lib, f"nvrtcGet{kind}")(prog, image), f"nvrtcGet{kind}")
        return image.raw if kind == "CUBIN" else image.value + b"\0"
    finally:
        lib.nvrtcDestroyProgram(ctypes.byref(prog))


@functools.lru_cache(maxsize=4)
def kernel_image(arch: str) -> bytes:
    """`qp_map.cu` compiled for `arch` (once per process)."""
    return compile_source(SOURCE.read_text(), arch)


def arch_for(major: int, minor: int) -> str:
    """The best target for a GPU of compute capability major.minor: its own CUBIN where this
    NVRTC knows it, else PTX for the newest capability below it (the driver JITs that)."""
    cc = 10 * major + minor
    archs = supported_archs()
    if cc in archs:
        return f"sm_{cc}"
    lower = [a for a in archs if a < cc]
    if not lower:
        raise CudaError(f"NVRTC {'.'.join(map(str, version()))} cannot compile for compute "
                        f"capability {major}.{minor} (it knows {archs})")
    return f"compute_{max(lower)}"

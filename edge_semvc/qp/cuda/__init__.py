"""The QP map on an NVIDIA GPU (`qp.device: cuda`): one CUDA source (qp_map.cu), compiled at
run time by NVRTC (nvrtc.py), launched through pycuda where installed (a Jetson) or CuPy
(backends.py), driven by `CudaQpMapper` (mapper.py; its docstring says which steps are fused
and which are not). The numpy path stays the reference; the GPU libraries are imported only
when a mapper is made.
"""
from __future__ import annotations

from .mapper import CudaQpMapper, traffic, unavailable_reason
from .nvrtc import CudaError

__all__ = ["CudaError", "CudaQpMapper", "traffic", "unavailable_reason", "gpu_unavailable_reason"]


def gpu_unavailable_reason(backend: str | None = None) -> str | None:
    """As `unavailable_reason`, and a GPU that the launcher opens and NVRTC compiles for."""
    why = unavailable_reason()
    if why is not None:
        return why
    try:
        CudaQpMapper(backend)
    except CudaError as e:
        return str(e)
    return None

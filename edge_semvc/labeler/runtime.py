"""Inference runtimes behind one small interface. ONNX Runtime on the CPU is the default.

A runtime is built as `RUNTIMES[name](path, threads)` and has `input_name`, `input_shape`,
`output_names` and `run(x) -> {output name: array}`. `tensorrt` (labeler/tensorrt.py) is
imported only when chosen: TensorRT and CUDA exist on few machines. `available(name)` says
whether a runtime can run here, and why not.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LabelerError  # noqa: F401  (re-exported)


class OnnxRuntime:
    """One ONNX model in an ONNX Runtime session (CPU)."""

    type_key = "onnxruntime"

    def __init__(self, path: Path, threads: int = 1):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own untyped errors
            raise LabelerError(f"cannot load model {path}: {str(e).splitlines()[0]}") from None
        inp = self.session.get_inputs()[0]
        self.input_name = inp.name
        self.input_shape = tuple(inp.shape)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        outs = self.session.run(self.output_names, {self.input_name: x})
        return dict(zip(self.output_names, outs))


def _tensorrt(path: Path, threads: int = 1):
    """TensorRT engines (labeler/tensorrt.py), imported on first use."""
    from .tensorrt import TensorRTRuntime

    return TensorRTRuntime(path, threads)


_tensorrt.type_key = "tensorrt"

RUNTIMES = {OnnxRuntime.type_key: OnnxRuntime, "tensorrt": _tensorrt}
AUTO = "auto"  # chosen per machine by the pre-flight (preflight.py): TensorRT on a Jetson
CPU_RUNTIME = OnnxRuntime.type_key  # ... and what `auto` means where no pre-flight ran


def available(name: str) -> tuple[bool, str]:
    """(True, what runs) if runtime `name` can run on this machine, else (False, why not)."""
    if name == "onnxruntime":
        try:
            import onnxruntime as ort
        except ImportError as e:
            return False, f"onnxruntime cannot be imported: {e}"
        return True, f"ONNX Runtime {ort.__version__} (CPU)"
    if name == "tensorrt":
        from .tensorrt import available as trt_available

        return trt_available()
    return False, f"unknown labeler runtime {name!r} (known: {', '.join(RUNTIMES)})"


def open_runtime(name: str, path: Path, threads: int):
    name = CPU_RUNTIME if name == AUTO else name
    try:
        cls = RUNTIMES[name]
    except KeyError:
        raise LabelerError(f"unknown labeler runtime {name!r} (available: "
                           f"{', '.join(RUNTIMES)})") from None
    return cls(path, threads)

"""Inference runtimes behind one small interface. ONNX Runtime on the CPU is the default.

A runtime is built as `RUNTIMES.get(name)(path, threads)` and has `input_name`, `input_shape`,
`output_names` and `run(x) -> {output name: array}`. `tensorrt` (labeler/tensorrt.py) is
imported only when chosen: TensorRT and CUDA exist on few machines.
`RUNTIMES.why_unavailable(name)` says whether a runtime can run here, and why not.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import LabelerError  # noqa: F401  (re-exported)
from ..registry import Registry


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

    @staticmethod
    def unavailable_reason() -> str | None:
        try:
            import onnxruntime  # noqa: F401  (optional at import time: the check itself)
        except ImportError as e:
            return f"onnxruntime cannot be imported: {e}"
        return None


RUNTIMES = Registry("labeler runtime", {
    "onnxruntime": "edge_semvc.labeler.runtime:OnnxRuntime",
    "tensorrt": "edge_semvc.labeler.tensorrt:TensorRTRuntime",
}, LabelerError)
AUTO = "auto"  # chosen per machine by the pre-flight (preflight.py): TensorRT on a Jetson
CPU_RUNTIME = OnnxRuntime.type_key  # ... and what `auto` means where no pre-flight ran


def open_runtime(name: str, path: Path, threads: int):
    return RUNTIMES.get(CPU_RUNTIME if name == AUTO else name)(path, threads)

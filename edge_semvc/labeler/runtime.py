"""Inference runtimes behind one small interface. ONNX Runtime on the CPU is the default."""
from __future__ import annotations

from pathlib import Path

import numpy as np


class LabelerError(RuntimeError):
    pass


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


RUNTIMES = {OnnxRuntime.type_key: OnnxRuntime}


def open_runtime(name: str, path: Path, threads: int):
    try:
        cls = RUNTIMES[name]
    except KeyError:
        raise LabelerError(f"unknown labeler runtime {name!r} (available: "
                           f"{', '.join(RUNTIMES)})") from None
    return cls(path, threads)

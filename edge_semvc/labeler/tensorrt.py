"""TensorRT engines at run time: check them against the machine and run them. Building them is
the offline tool `edge_semvc/tools/engines.py` (`edge-semvc engines build|list`).

A TensorRT engine only runs with the TensorRT version and on the GPU model it was built with, so
engines are built on the device that runs them (a Jetson, or a PC with an NVIDIA GPU), never
shipped. `build` parses the model's ONNX file (`trt.OnnxParser`), builds a serialized engine
(`builder.build_serialized_network`) and writes, in OUT:

- `<model>.<precision>.engine`: the plan;
- `<model>.<precision>.engine.json`: its manifest: TensorRT version, GPU name and compute
  capability, CUDA runtime version, input and output names/shapes/types, the sha256 of the ONNX
  file parsed and of the FP32 model it derives from, precision, workspace, build time.

Precisions: FP32 (default) and `--fp16` build from the FP32 model (FP16 through
`BuilderFlag.FP16` on a weakly typed network); `--int8` builds from the QDQ model written by
`edge-semvc calibrate MODEL` (`calibration/<model>.int8.qdq.onnx`): explicit quantization, a
strongly typed network whose Q/DQ layers fix where INT8 runs; no calibrator and no precision
flag (NVIDIA's recommendation for Q/DQ networks in TensorRT 10).

The runtime (`labeler.runtime: tensorrt`) refuses an engine whose manifest does not match this
machine (TensorRT version, GPU, or a model file that changed since the build) with the command
that rebuilds it. It implements the interface of `OnnxRuntime` (`input_name`, `input_shape`,
`output_names`, `run(x) -> {name: array}`), with device buffers and a stream from
cuda-python (`pip install cuda-python`; `cuda.bindings.runtime`, or `cuda.cudart` before
cuda-python 12.6). TensorRT and cuda-python are imported only when this runtime is chosen.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..checksums import sha256_file
from ..errors import LabelerError

MANIFEST_VERSION = 1
PRECISIONS = ("fp32", "fp16", "int8")
PREFERENCE = ("int8", "fp16", "fp32")  # which engine the runtime takes when several match
DEFAULT_WORKSPACE_MIB = 1024


def engines_dir() -> Path:
    """$EDGE_SEMVC_ENGINES, else `engines/` in the working directory."""
    return Path(os.environ.get("EDGE_SEMVC_ENGINES") or "engines")


# ---- availability and the machine --------------------------------------------------------------

def _import_trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise LabelerError(f"TensorRT is not available: the tensorrt Python package cannot be "
                           f"imported ({e}); it comes with JetPack on a Jetson, or `pip install "
                           f"tensorrt` on a PC with an NVIDIA GPU") from None
    return trt


def _import_cudart():
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        try:
            from cuda import cudart  # older cuda-python
        except ImportError as e:
            raise LabelerError(f"TensorRT runtime needs cuda-python for device buffers "
                               f"(`pip install cuda-python`): {e}") from None
    return cudart


def _check(cudart, result):
    """cuda-python returns (error, value...): raise on error, return the value(s)."""
    err, rest = result[0], result[1:]
    if int(err) != 0:
        try:
            msg = cudart.cudaGetErrorString(err)[1]
            msg = msg.decode() if isinstance(msg, bytes) else str(msg)
        except Exception:  # noqa: BLE001 - best effort for the message only
            msg = str(err)
        raise LabelerError(f"CUDA error: {msg}")
    return rest[0] if len(rest) == 1 else rest


def machine_info() -> dict:
    """What an engine is tied to: TensorRT version, GPU name and compute capability, CUDA
    runtime version (device 0). Raises LabelerError when TensorRT or CUDA is missing."""
    trt = _import_trt()
    cudart = _import_cudart()
    count = _check(cudart, cudart.cudaGetDeviceCount())
    if count < 1:
        raise LabelerError("TensorRT is not usable: no CUDA device")
    dev = _check(cudart, cudart.cudaGetDevice())
    prop = _check(cudart, cudart.cudaGetDeviceProperties(dev))
    name = prop.name
    if isinstance(name, (bytes, bytearray)):
        name = bytes(name).split(b"\0")[0].decode(errors="replace")
    runtime = _check(cudart, cudart.cudaRuntimeGetVersion())
    return {"tensorrt": trt.__version__, "gpu": str(name).strip(),
            "compute_capability": f"{prop.major}.{prop.minor}",
            "cuda_runtime": f"{runtime // 1000}.{runtime % 1000 // 10}"}


def available() -> tuple[bool, str]:
    """(True, description) where engines can be built and run here, else (False, why not)."""
    try:
        m = machine_info()
    except LabelerError as e:
        return False, str(e)
    except Exception as e:  # noqa: BLE001 - a broken driver install raises anything
        return False, f"TensorRT is not usable: {type(e).__name__}: {e}"
    return True, (f"TensorRT {m['tensorrt']} on {m['gpu']} (compute {m['compute_capability']}, "
                  f"CUDA {m['cuda_runtime']})")


# ---- manifests -------------------------------------------------------------------------------

def manifest_path(engine: Path) -> Path:
    engine = Path(engine)
    return engine.with_name(engine.name + ".json")


def read_manifest(engine: Path) -> dict:
    path = manifest_path(engine)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise LabelerError(f"TensorRT engine {engine} has no manifest ({path.name}); rebuild it "
                           f"with `edge-semvc engines build MODEL`") from None
    except (OSError, ValueError) as e:
        raise LabelerError(f"cannot read the manifest {path}: {e}") from None
    if not isinstance(data, dict) or data.get("manifest") != MANIFEST_VERSION:
        raise LabelerError(f"{path} is not an edge-semvc engine manifest (version "
                           f"{MANIFEST_VERSION}); rebuild the engine")
    return data


def rebuild_command(manifest: dict) -> str:
    cmd = ["edge-semvc", "engines", "build", str(manifest.get("model", "MODEL"))]
    precision = manifest.get("precision", "fp32")
    if precision != "fp32":
        cmd.append(f"--{precision}")
    if manifest.get("workspace_mib", DEFAULT_WORKSPACE_MIB) != DEFAULT_WORKSPACE_MIB:
        cmd += ["--workspace", str(manifest["workspace_mib"])]
    if manifest.get("out_dir") and manifest["out_dir"] != "engines":
        cmd += ["--out", str(manifest["out_dir"])]
    return " ".join(cmd)


def manifest_problems(manifest: dict, machine: dict, onnx_sha256: str | None = None) -> list[str]:
    """Why an engine with this manifest cannot run on `machine` (empty when it can).
    TensorRT's plan format is tied to the exact TensorRT version and to the GPU model (compute
    capability and its tuned kernels); `onnx_sha256` is the model file it should come from."""
    problems = []
    if manifest.get("tensorrt") != machine.get("tensorrt"):
        problems.append(f"built with TensorRT {manifest.get('tensorrt')}, this machine has "
                        f"{machine.get('tensorrt')}")
    want_gpu = (manifest.get("gpu"), manifest.get("compute_capability"))
    have_gpu = (machine.get("gpu"), machine.get("compute_capability"))
    if want_gpu != have_gpu:
        problems.append(f"built for {want_gpu[0]} (compute {want_gpu[1]}), this machine has "
                        f"{have_gpu[0]} (compute {have_gpu[1]})")
    if onnx_sha256 and onnx_sha256 not in (manifest.get("onnx_sha256"),
                                            manifest.get("source_onnx_sha256")):
        problems.append("the model file changed since the engine was built (ONNX sha256 "
                        f"{manifest.get('onnx_sha256', '?')[:12]}..., now {onnx_sha256[:12]}...)")
    return problems


def check_manifest(manifest: dict, machine: dict, onnx_sha256: str | None = None,
                   engine: Path | str = "the engine") -> None:
    """Raise LabelerError (saying how to rebuild) unless the engine fits this machine."""
    problems = manifest_problems(manifest, machine, onnx_sha256)
    if problems:
        raise LabelerError(f"TensorRT engine {engine} does not match this machine: "
                           f"{'; '.join(problems)}. Rebuild it here with: "
                           f"{rebuild_command(manifest)}")


def find_engine(onnx_path: Path, directory: Path | None = None,
                precision: str | None = None) -> Path:
    """The engine built from `onnx_path` (matched by its sha256, directly or as the FP32 source
    of a QDQ model) in `directory`: the given precision, else the first of int8, fp16, fp32."""
    directory = Path(directory or engines_dir())
    sha = sha256_file(onnx_path)
    found: dict[str, Path] = {}
    for m in sorted(directory.glob("*.engine.json")):
        try:
            data = json.loads(m.read_text())
        except (OSError, ValueError):
            continue
        if sha in (data.get("onnx_sha256"), data.get("source_onnx_sha256")):
            engine = m.with_name(m.name[:-len(".json")])
            if engine.exists():
                found.setdefault(data.get("precision", "fp32"), engine)
    for p in ([precision] if precision else PREFERENCE):
        if p in found:
            return found[p]
    name = Path(onnx_path).name.split(".")[0]
    flag = f" --{precision}" if precision and precision != "fp32" else " --fp16"
    raise LabelerError(f"no TensorRT engine{' (' + precision + ')' if precision else ''} for "
                       f"{onnx_path} in {directory}/: build one on this machine with "
                       f"`edge-semvc engines build {name}{flag}`")


# ---- running --------------------------------------------------------------------------------

class TensorRTRuntime:
    """One TensorRT engine, with the interface of `OnnxRuntime`.

    `path`: an `.engine` (its manifest beside it), or the model's `.onnx` (what the labeler
    passes): then the engine built from that file is looked up in `engines_dir()` (by sha256;
    `precision` picks one, else int8, fp16, fp32 in that order). `threads` is accepted for the
    interface and unused (the work runs on the GPU).
    """

    type_key = "tensorrt"

    @staticmethod
    def unavailable_reason() -> str | None:
        ok, why = available()
        return None if ok else why

    def __init__(self, path: Path, threads: int = 1, precision: str | None = None,
                 directory: Path | None = None):
        path = Path(path)
        machine = machine_info()  # first: where TensorRT is missing, that is the message
        onnx_sha = None
        if path.suffix.lower() == ".onnx":
            if not path.is_file():
                raise LabelerError(f"model file not found: {path}")
            onnx_sha = sha256_file(path)
            path = find_engine(path, directory, precision)
        if not path.is_file():
            raise LabelerError(f"TensorRT engine not found: {path}")
        manifest = read_manifest(path)
        if onnx_sha is None and manifest.get("onnx") and Path(manifest["onnx"]).is_file():
            onnx_sha = sha256_file(Path(manifest["onnx"]))  # has the model changed since?
        check_manifest(manifest, machine, onnx_sha, path)
        self.path, self.manifest = path, manifest
        self._buffers: list[int] = []
        self._stream = None
        trt = _import_trt()
        self._cudart = cudart = _import_cudart()
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self.engine = self._runtime.deserialize_cuda_engine(path.read_bytes())
        if self.engine is None:
            raise LabelerError(f"TensorRT cannot load {path} (corrupt, or built by another "
                               f"TensorRT); rebuild it with: {rebuild_command(manifest)}")
        self.context = self.engine.create_execution_context()
        self._stream = _check(cudart, cudart.cudaStreamCreate())
        shapes = {i["name"]: i["shape"] for i in manifest.get("inputs", [])}
        self._inputs, self._outputs = [], []
        for i in range(self.engine.num_io_tensors):
            name = self.engine.get_tensor_name(i)
            is_input = self.engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT
            shape = tuple(int(d) for d in self.engine.get_tensor_shape(name))
            if is_input and any(d < 0 for d in shape):
                shape = tuple(shapes[name])  # dynamic: the shape the engine was built for
                self.context.set_input_shape(name, shape)
            (self._inputs if is_input else self._outputs).append(
                [name, shape, np.dtype(trt.nptype(self.engine.get_tensor_dtype(name)))])
        for entry in self._outputs:  # output shapes are known once the inputs are set
            entry[1] = tuple(int(d) for d in self.context.get_tensor_shape(entry[0]))
        self._host = {}
        for name, shape, dtype in self._inputs + self._outputs:
            host = np.empty(shape, dtype)
            dev = _check(cudart, cudart.cudaMalloc(max(1, host.nbytes)))
            self._buffers.append(dev)
            self._host[name] = (host, dev)
            self.context.set_tensor_address(name, int(dev))
        if len(self._inputs) != 1:
            raise LabelerError(f"{path}: {len(self._inputs)} inputs; the labeler's models take "
                               f"one")
        self.input_name = self._inputs[0][0]
        self.input_shape = self._inputs[0][1]
        self.output_names = [o[0] for o in self._outputs]

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        cudart = self._cudart
        name, shape, dtype = self._inputs[0]
        x = np.ascontiguousarray(x, dtype)
        if x.shape != shape:
            raise LabelerError(f"{self.path}: input of shape {x.shape}, the engine takes {shape}")
        h2d = cudart.cudaMemcpyKind.cudaMemcpyHostToDevice
        d2h = cudart.cudaMemcpyKind.cudaMemcpyDeviceToHost
        dev = self._host[name][1]
        _check(cudart, cudart.cudaMemcpyAsync(dev, x.ctypes.data, x.nbytes, h2d, self._stream))
        if not self.context.execute_async_v3(stream_handle=int(self._stream)):
            raise LabelerError(f"{self.path}: TensorRT execution failed")
        out = {}
        for oname, _, _ in self._outputs:
            host, odev = self._host[oname]
            _check(cudart, cudart.cudaMemcpyAsync(host.ctypes.data, odev, host.nbytes, d2h,
                                                  self._stream))
        _check(cudart, cudart.cudaStreamSynchronize(self._stream))
        for oname, _, _ in self._outputs:
            out[oname] = self._host[oname][0].copy()
        return out

    def close(self) -> None:
        cudart = getattr(self, "_cudart", None)
        if cudart is None:
            return
        for dev in self._buffers:
            cudart.cudaFree(dev)
        self._buffers = []
        if self._stream is not None:
            cudart.cudaStreamDestroy(self._stream)
            self._stream = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

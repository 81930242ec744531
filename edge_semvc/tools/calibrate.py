"""INT8 calibration: a statically quantised QDQ ONNX model from representative frames.

    edge-semvc calibrate MODEL --frames DIR_OR_CLIP [DIR_OR_CLIP...] [--out calibration/]
                               [--count N] [--method minmax|entropy|percentile]
                               [--per-tensor] [--asymmetric] [--quantize-heads]
                               [--check DIR_OR_CLIP...]

MODEL is a `labeler.models` registry name (`edge-semvc models list`). Frames come from a folder
of images (.png, .jpg, ...) or from video clips/URIs (anything `encode` reads; raw .yuv with
--input-width/--input-height/--input-rate), N of them spread evenly over all sources. Each frame
becomes the model's input tensor through the labeler's own adapter (`adapter.input(frame)`:
the very resize, colour conversion, letterbox and normalisation the labeler uses), and ONNX
Runtime's `quantize_static` calibrates activation ranges on them (MinMax by default) after
`quant_pre_process` (shape inference, graph optimisation).

Written to OUT (default `calibration/`):
- `<model>.int8.qdq.onnx`: QDQ format, INT8 weights (per output channel) and activations,
  **symmetric** (zero point 0) unless --asymmetric: what TensorRT's explicit quantization
  requires, so the same file is what `edge-semvc engines build MODEL --int8` builds an INT8
  engine from. The output heads (the layers from the last weighted layer to each output) stay
  in float: quantising BlazeFace's score head turned near-threshold anchors into false faces
  (detection F1 0.78 against 1.0 with float heads, measured). It also runs on ONNX Runtime's
  CPU provider, but is slower there than FP32 for these small models (Q/DQ overhead around
  the ops ONNX Runtime does not fuse; see calibration/README.md).
- `<model>.int8.frames.txt`: the frames used (source path and frame index, or image path) and
  the settings, so a calibration can be repeated and held-out frames chosen.

`--check CLIP...` then compares the INT8 model with the FP32 one on frames of those sources
that were not used for calibration: agreement of the labeller's output (macroblock-grid IoU of
the thresholded class planes; per-pixel mask IoU for segmentation; detection F1 at IoU 0.5
against the FP32 detections for detectors) and CPU latency of both on one thread.
"""
from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..checksums import sha256_file
from ..errors import LabelerError
from ..frame import Frame
from ..labeler.decoders import match_counts
from .calibration_frames import load_frames, read_frames_list, select_frames

METHODS = ("minmax", "entropy", "percentile")
DEFAULT_COUNT = 64


def open_model(model, cache_dir=None, log=print):
    """(name, adapter, fp32 .onnx path) for a `labeler.models` entry (a registry name or a
    mapping), built by the labeler itself, so preprocessing is the labeler's."""
    from ..config import Config, LabelerConfig
    from ..labeler import Labeler
    from ..labeler.registry import describe
    from .models import model_file

    cache_dir = cache_dir or Config().cache_dir()
    # The model's description -> its .onnx (registry models are prepared in the cache first).
    path = model_file(describe(model), "model", cache_dir, log=log)
    lab = Labeler(LabelerConfig(models=[model], interval=1), cache_dir, log=log)
    name, adapter = lab.models[0]
    return name, adapter, Path(path)


class _Recorder:
    """A runtime stand-in that records the input tensor and forwards to the real runtime."""

    def __init__(self, inner):
        self.inner = inner
        self.input_name, self.input_shape = inner.input_name, inner.input_shape
        self.output_names = inner.output_names
        self.x = None

    def run(self, x):
        self.x = x
        return self.inner.run(x)


def model_input(adapter, frame: Frame) -> np.ndarray:
    """The tensor the labeler feeds the model for `frame`."""
    transform = getattr(adapter, "input", None)
    if callable(transform):  # labeler adapters expose their InputTransform
        return np.ascontiguousarray(transform(frame)[0], np.float32)
    rec = _Recorder(adapter.rt)  # older adapters: catch the tensor on its way to the runtime
    adapter.rt = rec
    try:
        adapter(frame)
    finally:
        adapter.rt = rec.inner
    return np.ascontiguousarray(rec.x, np.float32)


# ---- calibration -------------------------------------------------------------------------------

_PASS_THROUGH = {"Reshape", "Transpose", "Concat", "Identity", "Flatten", "Squeeze", "Unsqueeze",
                 "Sigmoid", "Softmax", "Relu", "Clip", "Cast", "Split", "Slice"}


def output_head_nodes(model) -> list[str]:
    """Names of the nodes that compute the model's outputs: from each graph output back
    through layout and activation ops to (and including) the first layer with weights. Kept in
    float by default: a detector's box and score heads are where 8 bits hurt most (scores near
    the threshold flip), and they cost little."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {i.name for i in model.graph.initializer}
    out, todo, seen = [], [o.name for o in model.graph.output], set()
    while todo:
        n = producer.get(todo.pop())
        if n is None or n.name in seen:
            continue
        seen.add(n.name)
        out.append(n.name)
        if n.op_type in _PASS_THROUGH:
            todo += [i for i in n.input if i and i not in inits]
    return out


def output_paths(name: str, out_dir) -> tuple[Path, Path]:
    out = Path(out_dir)
    return out / f"{name}.int8.qdq.onnx", out / f"{name}.int8.frames.txt"


@dataclass
class Quantisation:
    """How `calibrate` quantises. `op_types`: only these operator types get Q/DQ (default: all
    ONNX Runtime quantises); `exclude_nodes`: node names kept in float (unnamed nodes are named
    `<OpType>_<index>` in graph order before quantisation, so these names are stable for a given
    model); `float_heads`: also keep the output heads in float (`output_head_nodes`)."""

    per_channel: bool = True
    method: str = "minmax"
    symmetric: bool = True
    op_types: list[str] | None = None
    exclude_nodes: list[str] | None = None
    float_heads: bool = True


def calibrate(model, frames_source, out_dir="calibration", n_frames: int = DEFAULT_COUNT,
              q: Quantisation | None = None, raw=None, cache_dir=None, log=print) -> Path:
    """Quantise `model` (a registry name or `labeler.models` entry) to a QDQ INT8 ONNX model
    calibrated on `n_frames` frames of `frames_source` (a folder of images, a clip/URI, or a
    list of them), as `q` says. Returns the path of `<out>/<model>.int8.qdq.onnx`."""
    from onnxruntime.quantization import (  # the quantiser: offline only, and heavy
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    q = q or Quantisation()
    if q.method not in METHODS:
        raise LabelerError(f"unknown calibration method {q.method!r} ({', '.join(METHODS)})")
    if n_frames < 1:
        raise LabelerError(f"--count must be at least 1, got {n_frames}")
    sources = [str(s) for s in ([frames_source] if isinstance(frames_source, (str, Path))
                                else frames_source)]
    name, adapter, fp32 = open_model(model, cache_dir, log=log)
    refs = select_frames(sources, n_frames, raw)
    inputs, used = [], []
    for ref, frame in load_frames(refs, raw):
        inputs.append(model_input(adapter, frame))
        used.append(ref)
    if not inputs:
        raise LabelerError(f"no frames could be read from {', '.join(sources)}")
    log(f"{name}: calibrating on {len(inputs)} frames ({q.method}, "
        f"{'per-channel' if q.per_channel else 'per-tensor'} weights, "
        f"{'symmetric' if q.symmetric else 'asymmetric'} activations)")
    input_name = adapter.rt.input_name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self._it = iter(inputs)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x}

        def rewind(self):
            self._it = iter(inputs)

    out_model, out_list = output_paths(name, out_dir)
    out_model.parent.mkdir(parents=True, exist_ok=True)
    calib = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
             "percentile": CalibrationMethod.Percentile}[q.method]
    import onnx

    with tempfile.TemporaryDirectory(prefix="edge-semvc-calib-") as tmp:
        named = Path(tmp) / "named.onnx"
        m = onnx.load(str(fp32))
        opset = max((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")),
                    default=0)
        if opset < 13:  # per-channel Q/DQ (the `axis` attribute) needs opset 13
            from onnx import version_converter
            log(f"{name}: converting the model from opset {opset} to 13 for per-channel Q/DQ")
            m = version_converter.convert_version(m, 13)
        for i, node in enumerate(m.graph.node):
            if not node.name:  # the quantiser addresses nodes by name
                node.name = f"{node.op_type}_{i}"
        onnx.save(m, str(named))
        exclude = list(q.exclude_nodes or []) + (output_head_nodes(m) if q.float_heads else [])
        pre = Path(tmp) / "pre.onnx"
        try:
            # Static shapes: ONNX's own shape inference suffices (symbolic needs sympy).
            quant_pre_process(str(named), str(pre), skip_symbolic_shape=True)
        except Exception as e:  # shape inference or optimisation failed: quantise as is
            log(f"{name}: quant_pre_process failed ({str(e).splitlines()[0]}); "
                "quantising the model as converted")
            pre = named
        tmp_out = Path(tmp) / "model.int8.qdq.onnx"
        quantize_static(
            str(pre), str(tmp_out), Reader(), quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QInt8 if q.symmetric else QuantType.QUInt8,
            weight_type=QuantType.QInt8, per_channel=q.per_channel, calibrate_method=calib,
            op_types_to_quantize=q.op_types, nodes_to_exclude=exclude,
            extra_options={"ActivationSymmetric": q.symmetric, "WeightSymmetric": True})
        # Record where it came from in the model itself (metadata), then move it in place.
        m = onnx.load(str(tmp_out))
        meta = {"edge_semvc.source_onnx_sha256": sha256_file(fp32),
                "edge_semvc.float_nodes": ",".join(exclude),
                "edge_semvc.calibration_frames": str(len(used)),
                "edge_semvc.calibration": f"{q.method}, per_channel={q.per_channel}, "
                                          f"symmetric={q.symmetric}"}
        for k, v in meta.items():
            e = m.metadata_props.add()
            e.key, e.value = k, v
        onnx.save(m, str(tmp_out))
        shutil.move(str(tmp_out), str(out_model))
    header = [f"# edge-semvc calibrate {name}: {len(used)} frames, {q.method}, "
              f"per_channel={q.per_channel}, symmetric={q.symmetric}",
              f"# fp32 model {fp32} (sha256 {sha256_file(fp32)})",
              f"# written {datetime.now(timezone.utc).isoformat(timespec='seconds')}",
              "# source<TAB>frame index (images: path only)"]
    out_list.write_text("\n".join(header + [r.line() for r in used]) + "\n")
    log(f"{name}: wrote {out_model} and {out_list}")
    return out_model


# ---- INT8 against FP32 --------------------------------------------------------------------------

def _counts(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(intersection, union) of two boolean masks."""
    return np.array([np.count_nonzero(a & b), np.count_nonzero(a | b)], np.int64)


def _detections(adapter, outs: list[np.ndarray]) -> np.ndarray | None:
    """Decoded boxes (input pixels or fractions, x1 y1 x2 y2 score) of a BlazeFace-style
    adapter from its raw outputs; None for other decoders."""
    from ..labeler.decoders import decode_blazeface

    if getattr(adapter, "desc", {}).get("decoder", "ssd-anchors") != "ssd-anchors" or \
            len(outs) < 2:
        return None
    reg, logits = sorted(outs, key=lambda a: -a.shape[-1])[:2]
    opts = getattr(adapter, "opts", {}) or {}
    size = adapter.rt.input_shape[1]
    try:
        return decode_blazeface(reg, logits, adapter.min_score, size,
                                opts.get("iou_threshold", 0.3), adapter.anchors)
    except (AttributeError, TypeError):
        return decode_blazeface(reg, logits, adapter.min_score, size)


def _latency_ms(rt, xs: list[np.ndarray], repeats: int = 3) -> float:
    """Median per-inference time over `repeats` passes (the best pass)."""
    best = float("inf")
    for _ in range(repeats):
        ts = []
        for x in xs:
            t0 = time.perf_counter()
            rt.run(x)
            ts.append(time.perf_counter() - t0)
        best = min(best, float(np.median(ts)) * 1e3)
    return best


def compare(model, int8_path, sources, exclude=(), count: int = 60, raw=None,
            cache_dir=None, log=print) -> dict:
    """INT8 against FP32 on `count` frames of `sources` not in `exclude` (FrameRefs)."""
    from ..labeler.runtime import OnnxRuntime

    name, adapter, fp32 = open_model(model, cache_dir, log=log)
    rt32 = adapter.rt
    rt8 = OnnxRuntime(Path(int8_path), 1)
    threshold = getattr(adapter, "threshold", None)
    if threshold is None:
        from ..config import Config

        threshold = Config().labeler.threshold
    refs = select_frames([str(s) for s in sources], count, raw, set(exclude))
    # IoU pooled over frames (intersections summed / unions summed): per-frame means are
    # dominated by frames where a class covers a handful of pixels.
    mb = np.zeros(2, np.int64)
    px = np.zeros(2, np.int64)
    xs = []
    tp = fp = fn = 0
    max_diff = 0.0
    is_mask = None
    for _, frame in load_frames(refs, raw):
        x = model_input(adapter, frame)
        xs.append(x)
        o32 = list(rt32.run(x).values())
        o8 = list(rt8.run(x).values())
        max_diff = max(max_diff, max(float(np.abs(a - b).max()) for a, b in zip(o32, o8)))
        adapter.rt = rt32
        p32 = adapter(frame)
        adapter.rt = rt8
        try:
            p8 = adapter(frame)
        finally:
            adapter.rt = rt32
        mb += _counts(p32 > threshold, p8 > threshold)
        d32, d8 = _detections(adapter, o32), _detections(adapter, o8)
        if d32 is not None:
            a, b, c = match_counts(d32, d8)
            tp, fp, fn = tp + a, fp + b, fn + c
        else:
            if is_mask is None:  # one probability map in [0, 1]
                is_mask = len(o32) == 1 and 0.0 <= float(o32[0].min()) and \
                    float(o32[0].max()) <= 1.0
            if is_mask:
                px += _counts(o32[0] > threshold, o8[0] > threshold)
    if not xs:
        raise LabelerError("no held-out frames to compare on")
    t32 = _latency_ms(rt32, xs[:30])
    t8 = _latency_ms(rt8, xs[:30])
    out = {"model": name, "int8": str(int8_path), "frames": len(xs), "threshold": threshold,
           "mb_iou": float(mb[0] / mb[1]) if mb[1] else None,
           "max_abs_output_diff": max_diff,
           "fp32_ms": t32, "int8_ms": t8, "speedup": t32 / t8}
    if px[1]:
        out["pixel_iou"] = float(px[0] / px[1])
    if tp + fp + fn:
        out.update({"detections_fp32": tp + fn, "detections_int8": tp + fp,
                    "detection_f1": 2 * tp / (2 * tp + fp + fn)})
    return out


# ---- command line ---------------------------------------------------------------------------

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a labeler model (registry name, see "
                                                  "`edge-semvc models list`)")
    p.add_argument("--frames", nargs="+", required=True, metavar="DIR_OR_CLIP",
                   help="representative frames: folders of images and/or clips (paths or URIs)")
    p.add_argument("--out", default="calibration", help="output folder (default calibration/)")
    p.add_argument("--count", type=int, default=DEFAULT_COUNT,
                   help=f"frames to calibrate on, spread evenly (default {DEFAULT_COUNT})")
    p.add_argument("--method", choices=METHODS, default="minmax",
                   help="activation range estimate (default minmax)")
    p.add_argument("--per-tensor", action="store_true",
                   help="one scale per weight tensor (default: per output channel)")
    p.add_argument("--quantize-heads", action="store_true",
                   help="quantise the output heads too (default: kept in float)")
    p.add_argument("--asymmetric", action="store_true",
                   help="uint8 activations with a zero point (CPU only: TensorRT needs symmetric)")
    p.add_argument("--check", nargs="+", metavar="DIR_OR_CLIP",
                   help="then compare INT8 with FP32 on frames of these sources not used above")
    p.add_argument("--check-count", type=int, default=60, help="frames for --check (default 60)")
    p.add_argument("--input-width", type=int, default=0, help="raw .yuv input width")
    p.add_argument("--input-height", type=int, default=0, help="raw .yuv input height")
    p.add_argument("--input-rate", default="25", help="raw .yuv frame rate")
    p.add_argument("--cache-dir", help="model cache (default $EDGE_SEMVC_CACHE or "
                                       "~/.cache/edge_semvc)")


def _raw(args):
    if not args.input_width:
        return None
    from ..sources import RawVideoOptions

    return RawVideoOptions(args.input_width, args.input_height, Fraction(args.input_rate))


def run(args) -> int:
    raw = _raw(args)
    q = Quantisation(per_channel=not args.per_tensor, method=args.method,
                     symmetric=not args.asymmetric, float_heads=not args.quantize_heads)
    path = calibrate(args.model, args.frames, args.out, args.count, q, raw, args.cache_dir)
    if args.check:
        used = read_frames_list(output_paths(path.name.split(".int8.")[0], args.out)[1])
        print(json.dumps(compare(args.model, path, args.check, used, args.check_count, raw,
                                 args.cache_dir), indent=1))
    return 0

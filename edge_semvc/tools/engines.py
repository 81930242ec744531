"""Building TensorRT engines (offline, on the device that will run them):

    edge-semvc engines build MODEL [--int8 | --fp16] [--workspace MiB] [--out engines/]
    edge-semvc engines list [--dir engines/]

What an engine and its manifest hold, and how the runtime checks them: labeler/tensorrt.py.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from ..checksums import sha256_file
from ..errors import LabelerError
from ..labeler.tensorrt import (
    DEFAULT_WORKSPACE_MIB,
    MANIFEST_VERSION,
    PRECISIONS,
    _import_trt,
    available,
    engines_dir,
    machine_info,
    manifest_path,
    manifest_problems,
)
from ..options import bounded

# ---- building ------------------------------------------------------------------------------

def resolve_onnx(model: str, precision: str, calibration_dir="calibration",
                 cache_dir=None, log=print) -> tuple[str, Path, Path]:
    """(name, ONNX file to parse, FP32 source model) for a registry name or an .onnx path.
    INT8 takes the QDQ model `edge-semvc calibrate` writes."""
    p = Path(model)
    if p.suffix.lower() == ".onnx":
        if not p.is_file():
            raise LabelerError(f"model file not found: {model}")
        name = p.name.split(".")[0]
        source = p
        if precision == "int8" and ".int8." not in p.name:
            raise LabelerError(f"--int8 builds from a quantised QDQ model; {p.name} is not one "
                               f"(make one with `edge-semvc calibrate {name} --frames ...`)")
        return name, p, source
    from .models import prepare_model

    name = model
    source = Path(prepare_model(name, cache_dir, log=log))
    if precision != "int8":
        return name, source, source
    qdq = Path(calibration_dir) / f"{name}.int8.qdq.onnx"
    if not qdq.is_file():
        raise LabelerError(f"--int8 needs the calibrated model {qdq}: make it first with "
                           f"`edge-semvc calibrate {name} --frames DIR_OR_CLIP "
                           f"--out {calibration_dir}`")
    return name, qdq, source


def _trt_shape(dims) -> list[int]:
    return [int(d) for d in dims]


def build_engine(model: str, precision: str = "fp32", workspace_mib: int = DEFAULT_WORKSPACE_MIB,
                 out_dir="engines", calibration_dir="calibration", input_shape=None,
                 cache_dir=None, log=print) -> Path:
    """Build `<out>/<model>.<precision>.engine` and its manifest; returns the engine's path.
    `input_shape` fixes dynamic input dimensions (one optimisation profile, min = opt = max)."""
    if precision not in PRECISIONS:
        raise LabelerError(f"unknown precision {precision!r} ({', '.join(PRECISIONS)})")
    if workspace_mib < 1:
        raise LabelerError(f"--workspace must be at least 1 MiB, got {workspace_mib}")
    name, onnx_path, source = resolve_onnx(model, precision, calibration_dir, cache_dir, log)
    machine = machine_info()  # raises with the reason where TensorRT or CUDA is missing
    trt = _import_trt()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if precision == "int8":  # explicit quantization: Q/DQ layers decide, types are strict
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise LabelerError(f"TensorRT cannot parse {onnx_path}: "
                           f"{'; '.join(errors) or 'unknown error'}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if precision == "fp16":
        config.set_flag(trt.BuilderFlag.FP16)
    inputs = []
    profile = None
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = _trt_shape(t.shape)
        if any(d < 0 for d in shape):
            if input_shape is None:
                raise LabelerError(f"{onnx_path}: input {t.name} has dynamic shape {shape}; "
                                   f"give --input-shape (e.g. 1x3x288x512)")
            fixed = list(input_shape)
            if len(fixed) != len(shape) or any(s >= 0 and s != f for s, f in zip(shape, fixed)):
                raise LabelerError(f"--input-shape {fixed} does not fit input {t.name} {shape}")
            profile = profile or builder.create_optimization_profile()
            profile.set_shape(t.name, fixed, fixed, fixed)
            shape = fixed
        inputs.append({"name": t.name, "shape": shape, "dtype": str(t.dtype).split(".")[-1]})
    if profile is not None:
        config.add_optimization_profile(profile)
    outputs = [{"name": network.get_output(i).name,
                "shape": _trt_shape(network.get_output(i).shape),
                "dtype": str(network.get_output(i).dtype).split(".")[-1]}
               for i in range(network.num_outputs)]
    log(f"{name}: building a {precision.upper()} TensorRT engine from {onnx_path.name} on "
        f"{machine['gpu']} (TensorRT {machine['tensorrt']}, workspace {workspace_mib} MiB)")
    t0 = time.perf_counter()
    plan = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - t0
    if plan is None:
        raise LabelerError(f"TensorRT could not build an engine from {onnx_path} (see the "
                           f"TensorRT messages above)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    engine = out / f"{name}.{precision}.engine"
    tmp = engine.with_name(f".{engine.name}.{os.getpid()}.tmp")
    tmp.write_bytes(bytes(plan))
    os.replace(tmp, engine)
    manifest = {
        "manifest": MANIFEST_VERSION, "model": name, "precision": precision,
        "engine": engine.name, "engine_sha256": sha256_file(engine),
        "onnx": str(onnx_path), "onnx_sha256": sha256_file(onnx_path),
        "source_onnx": str(source), "source_onnx_sha256": sha256_file(source),
        **machine, "inputs": inputs, "outputs": outputs, "workspace_mib": workspace_mib,
        "out_dir": str(out_dir),
        "built": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(seconds, 1),
    }
    manifest_path(engine).write_text(json.dumps(manifest, indent=1) + "\n")
    log(f"{name}: wrote {engine} ({engine.stat().st_size} bytes, {seconds:.0f} s) and its "
        f"manifest")
    return engine


# ---- command line -----------------------------------------------------------------------------

def _shape(text: str) -> list[int]:
    try:
        dims = [int(d) for d in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid shape {text!r} (e.g. 1x3x288x512)") from None
    if not dims or any(d < 1 for d in dims):
        raise argparse.ArgumentTypeError(f"invalid shape {text!r} (e.g. 1x3x288x512)")
    return dims


_workspace = bounded(int, 1, what="workspace (MiB, e.g. 1024)")


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="engines_action", required=True, metavar="{build,list}",
                           parser_class=type(p))
    b = sub.add_parser("build", help="build a TensorRT engine for a labeler model, here")
    b.add_argument("model", metavar="MODEL",
                   help="a registry model name (`edge-semvc models list`) or an .onnx file")
    prec = b.add_mutually_exclusive_group()
    prec.add_argument("--int8", action="store_const", const="int8", dest="precision",
                      help="INT8 from the calibrated QDQ model (edge-semvc calibrate first)")
    prec.add_argument("--fp16", action="store_const", const="fp16", dest="precision",
                      help="FP16 where TensorRT finds it faster")
    b.set_defaults(precision="fp32")
    b.add_argument("--workspace", type=_workspace, default=DEFAULT_WORKSPACE_MIB, metavar="MiB",
                   help=f"builder workspace limit (default {DEFAULT_WORKSPACE_MIB} MiB)")
    b.add_argument("--out", default="engines", help="output folder (default engines/)")
    b.add_argument("--calibration", default="calibration",
                   help="where --int8 finds <model>.int8.qdq.onnx (default calibration/)")
    b.add_argument("--input-shape", type=_shape, metavar="NxCxHxW",
                   help="fix a dynamic input shape (e.g. 1x3x288x512)")
    b.add_argument("--cache-dir", help="model cache (default $EDGE_SEMVC_CACHE or "
                                       "~/.cache/edge_semvc)")
    ls = sub.add_parser("list", help="the engines in a folder and whether they fit this machine")
    ls.add_argument("--dir", default=None, help="engines folder (default $EDGE_SEMVC_ENGINES "
                                                "or engines/)")


def run(args) -> int:
    if args.engines_action == "build":
        build_engine(args.model, args.precision, args.workspace, args.out, args.calibration,
                     args.input_shape, args.cache_dir)
        return 0
    directory = Path(args.dir) if args.dir else engines_dir()
    ok, why = available()
    machine = machine_info() if ok else None
    print(f"this machine: {why}")
    if not directory.is_dir():
        raise LabelerError(f"--dir {directory}: no such folder")
    manifests = sorted(directory.glob("*.engine.json"))
    if not manifests:
        print(f"no engines in {directory}/")
    for m in manifests:
        try:
            data = json.loads(m.read_text())
        except (OSError, ValueError) as e:
            print(f"{m.name}: unreadable manifest ({e})")
            continue
        status = "unchecked (no TensorRT here)"
        if machine is not None:
            problems = manifest_problems(data, machine)
            status = "ok" if not problems else "rebuild: " + "; ".join(problems)
        print(f"{m.name[:-5]}: {data.get('model')} {data.get('precision')}, TensorRT "
              f"{data.get('tensorrt')}, {data.get('gpu')} (compute "
              f"{data.get('compute_capability')}), built {data.get('built')}: {status}")
    return 0

"""The TFJS graph-model -> ONNX converter: NanoDet against golden tensors, other input sizes, and
small hand-made graphs checked against numpy."""
from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import shared_file

from edge_semvc.tools.tfjs2onnx import CONVERTER_VERSION, convert_tfjs

ort = pytest.importorskip("onnxruntime")


def _run(onnx_path, x: np.ndarray) -> dict[str, np.ndarray]:
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    return {o.name: v for o, v in zip(sess.get_outputs(), outs)}


def _op_count(onnx_path, op_type: str) -> int:
    return sum(n.op_type == op_type for n in onnx.load(str(onnx_path)).graph.node)


# ---- NanoDet ---------------------------------------------------------------------------------
def test_nanodet_matches_golden(nanodet_tfjs, tmp_path):
    x = np.load(shared_file("models", "golden", "nanodet_g_416.input.npy"))
    golden = np.load(shared_file("models", "golden", "nanodet_g_416.outputs.npz"))
    out = tmp_path / "nanodet.onnx"
    convert_tfjs(nanodet_tfjs, out)
    got = _run(out, x)
    assert sorted(got) == [f"Identity{s}" for s in ("", "_1", "_2", "_3", "_4", "_5")]
    for name, ref in golden.items():
        assert got[name].shape == ref.shape
        assert np.abs(got[name] - ref).max() <= 1e-4, name
    # The onnx-tf NHWC<->NCHW Transpose pairs around each conv cancel: one per output remains.
    assert _op_count(out, "Transpose") == 6


def test_nanodet_16_9_size(nanodet_tfjs, tmp_path):
    out = tmp_path / "nanodet_512x288.onnx"
    convert_tfjs(nanodet_tfjs, out, input_size=(512, 288))
    model = onnx.load(str(out))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 288, 512]
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta == {"source_sha256": hashlib.sha256(Path(nanodet_tfjs).read_bytes()).hexdigest(),
                    "converter_version": str(CONVERTER_VERSION), "input_size": "512x288"}
    got = _run(out, np.random.default_rng(0).normal(size=(1, 3, 288, 512)).astype(np.float32))
    cells = [(288 // s) * (512 // s) for s in (8, 16, 32)]
    expect = {f"Identity{s}": (1, n, 80) for s, n in zip(("", "_1", "_2"), cells)}
    expect |= {f"Identity_{k}": (1, n, 44) for k, n in zip((3, 4, 5), cells)}
    assert {k: v.shape for k, v in got.items()} == expect
    assert all(np.isfinite(v).all() for v in got.values())


@pytest.mark.parametrize("size, bad", [((415, 416), "415"), ((416, 300), "300"),
                                       ((0, 416), "0"), ((416, -32), "-32")])
def test_bad_size_is_named(tmp_path, size, bad):
    with pytest.raises(ValueError, match=f"{bad} is not a positive multiple of 32"):
        convert_tfjs(tmp_path / "absent.json", tmp_path / "x.onnx", input_size=size)


# ---- hand-made graphs ------------------------------------------------------------------------
def _s(text: str) -> dict:
    return {"s": base64.b64encode(text.encode()).decode()}


def _ints(values) -> dict:
    return {"list": {"i": [str(v) for v in values]}}


def _write_tfjs(folder: Path, nodes: list[dict], consts: dict, input_shape, outputs) -> Path:
    """A TFJS graph model in `folder`: `nodes` plus a Const node per `consts` entry, floats
    stored as float16 (as the TFJS converter's quantization does), int64 stored as int32."""
    weights, blobs, const_nodes = [], [], []
    for name, arr in consts.items():
        arr = np.asarray(arr)
        if arr.dtype.kind == "f":
            weights.append({"name": name, "shape": list(arr.shape), "dtype": "float32",
                            "quantization": {"dtype": "float16", "original_dtype": "float32"}})
            blobs.append(arr.astype("<f2").tobytes())
            dtype = "DT_FLOAT"
        else:
            weights.append({"name": name, "shape": list(arr.shape), "dtype": "int32"})
            blobs.append(arr.astype("<i4").tobytes())
            dtype = "DT_INT64" if arr.dtype == np.int64 else "DT_INT32"
        const_nodes.append({"name": name, "op": "Const", "attr": {"dtype": {"type": dtype}}})
    placeholder = {"name": "input", "op": "Placeholder", "attr": {
        "dtype": {"type": "DT_FLOAT"},
        "shape": {"shape": {"dim": [{"size": str(d)} for d in input_shape]}}}}
    (folder / "g.bin").write_bytes(b"".join(blobs))
    spec = {"format": "graph-model",
            "signature": {"outputs": {f"{o}:0": {"name": f"{o}:0"} for o in outputs}},
            "modelTopology": {"node": [placeholder, *const_nodes, *nodes]},
            "weightsManifest": [{"paths": ["g.bin"], "weights": weights}]}
    path = folder / "g.json"
    path.write_text(json.dumps(spec))
    return path


def _conv_nhwc(x, w, stride: int, pads) -> np.ndarray:
    """x [1,H,W,C], w HWIO, pads (top, bottom, left, right)."""
    x = np.pad(x, [(0, 0), pads[:2], pads[2:], (0, 0)])
    kh, kw = w.shape[:2]
    oh, ow = (x.shape[1] - kh) // stride + 1, (x.shape[2] - kw) // stride + 1
    return sum(x[:, i:i + stride * oh:stride, j:j + stride * ow:stride] @ w[i, j]
               for i in range(kh) for j in range(kw))


def _resize_axis(x, axis: int, out: int) -> np.ndarray:
    """TF bilinear resize with half_pixel_centers along one axis (edge samples clamped)."""
    n = x.shape[axis]
    pos = (np.arange(out) + 0.5) * n / out - 0.5
    lo = np.floor(pos)
    frac = (pos - lo).reshape([-1 if a == axis else 1 for a in range(x.ndim)])
    lo_i, hi_i = np.clip(lo, 0, n - 1).astype(int), np.clip(lo + 1, 0, n - 1).astype(int)
    return np.take(x, lo_i, axis) * (1 - frac) + np.take(x, hi_i, axis) * frac


def _small_graph(folder: Path, rng) -> tuple[Path, dict]:
    """NHWC input (32x32 baked in) -> Conv2D stride 2 SAME + bias -> LeakyRelu -> ResizeBilinear
    x2 (baked [16,16] -> [32,32]), + a 3x5 Conv2D of the input padded by PadV2 (value 0.5) ->
    ConcatV2 with the input ->
    Transpose to NCHW -> Reshape to [1, 11, 32*32] (baked) and a Sigmoid branch."""
    w = {"w3": rng.normal(size=(3, 3, 3, 8)).astype(np.float32),
         "bias": rng.normal(size=8).astype(np.float32),
         "w35": rng.normal(size=(3, 5, 3, 8)).astype(np.float32)}
    consts = {**w, "size": np.array([32, 32], np.int32), "axis": np.array(3, np.int32),
              "perm": np.array([0, 3, 1, 2], np.int32),
              "shape": np.array([1, 11, 1024], np.int64),
              "pads": np.array([[0, 0], [1, 1], [2, 2], [0, 0]], np.int32),
              "value": np.array(0.5, np.float32)}
    conv = {"data_format": _s("NHWC"), "dilations": _ints([1] * 4)}
    nodes = [
        {"name": "c3", "op": "Conv2D", "input": ["input", "w3"],
         "attr": {**conv, "strides": _ints([1, 2, 2, 1]), "padding": _s("SAME")}},
        {"name": "b", "op": "Add", "input": ["c3", "bias"]},
        {"name": "a", "op": "LeakyRelu", "input": ["b"], "attr": {"alpha": {"f": 0.1}}},
        {"name": "up", "op": "ResizeBilinear", "input": ["a", "size"],
         "attr": {"half_pixel_centers": {"b": True}, "align_corners": {"b": False}}},
        {"name": "p", "op": "PadV2", "input": ["input", "pads", "value"]},
        {"name": "c35", "op": "Conv2D", "input": ["p", "w35"],
         "attr": {**conv, "strides": _ints([1] * 4), "padding": _s("VALID")}},
        {"name": "s", "op": "AddV2", "input": ["up", "c35"]},
        {"name": "cat", "op": "ConcatV2", "input": ["s", "input", "axis"]},
        {"name": "t", "op": "Transpose", "input": ["cat", "perm"]},
        {"name": "r", "op": "Reshape", "input": ["t", "shape"]},
        {"name": "Identity", "op": "Identity", "input": ["r"]},
        {"name": "Identity_1", "op": "Sigmoid", "input": ["cat"]},
    ]
    path = _write_tfjs(folder, nodes, consts, [1, 32, 32, 3], ["Identity", "Identity_1"])
    return path, {k: v.astype(np.float16).astype(np.float32) for k, v in w.items()}


@pytest.mark.parametrize("width, height", [(32, 32), (64, 32)])
def test_small_graph_matches_numpy(tmp_path, width, height):
    rng = np.random.default_rng(1)
    path, w = _small_graph(tmp_path, rng)
    out = tmp_path / "g.onnx"
    convert_tfjs(path, out, input_size=(width, height))
    x = rng.normal(size=(1, 3, height, width)).astype(np.float32)  # ONNX input is NCHW
    got = _run(out, x)

    xh = x.transpose(0, 2, 3, 1)
    a = _conv_nhwc(xh, w["w3"], 2, (0, 1, 0, 1)) + w["bias"]  # SAME, stride 2: odd pixel after
    a = np.where(a > 0, a, 0.1 * a)
    up = _resize_axis(_resize_axis(a, 1, height), 2, width)
    padded = np.pad(xh, [(0, 0), (1, 1), (2, 2), (0, 0)], constant_values=0.5)
    cat = np.concatenate([up + _conv_nhwc(padded, w["w35"], 1, (0, 0, 0, 0)), xh], axis=3)
    ref = cat.transpose(0, 3, 1, 2).reshape(1, 11, height * width)
    assert got["Identity"].shape == ref.shape
    assert np.abs(got["Identity"] - ref).max() < 1e-4
    assert np.abs(got["Identity_1"] - 1 / (1 + np.exp(-cat))).max() < 1e-5
    # NHWC input, NCHW convs, TF Transpose to NCHW: all cancel; only the NHWC output needs one
    assert _op_count(out, "Transpose") == 1


def test_unsupported_op_is_named(tmp_path):
    nodes = [{"name": "my_erf", "op": "Erf", "input": ["input"]},
             {"name": "Identity", "op": "Identity", "input": ["my_erf"]}]
    path = _write_tfjs(tmp_path, nodes, {}, [1, 32, 32, 3], ["Identity"])
    with pytest.raises(ValueError, match=r"unsupported TFJS op.*Erf \(node 'my_erf'\)"):
        convert_tfjs(path, tmp_path / "x.onnx", input_size=(32, 32))


def test_baked_size_that_does_not_scale(tmp_path):
    """A resize baked as 48x48 -> 10x10 has no integer counterpart for a 32x32 input."""
    nodes = [{"name": "Identity", "op": "ResizeBilinear", "input": ["input", "size"],
              "attr": {"half_pixel_centers": {"b": True}}}]
    path = _write_tfjs(tmp_path, nodes, {"size": np.array([10, 10], np.int32)},
                       [1, 48, 48, 3], ["Identity"])
    with pytest.raises(ValueError, match="ResizeBilinear.*does not scale"):
        convert_tfjs(path, tmp_path / "x.onnx", input_size=(32, 32))

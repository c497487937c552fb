"""Import an ONNX QDQ model (``onnxruntime.quantization.quantize_static``) as an engine program.

:func:`import_onnx` reads ``QuantizeLinear``/``DequantizeLinear`` pairs around Conv, Gemm,
MatMul, Add, MaxPool, AveragePool, GlobalAveragePool, Relu, Flatten and Reshape and writes one
engine op per quantized node: ``y_q = Q(f(DQ(x_q), DQ(w_q), DQ(b_q)))`` as integer arithmetic
on ``q - zp`` with the exact real scale ratio folded into a 31-bit multiplier and a shift and
**round half to even** (eq. 5b), as ``QuantizeLinear`` rounds. Weights may be per channel,
8-bit or 4-bit (opset 21 ``int4``), activations 8- or 16-bit.

onnxruntime runs these graphs partly in float (on this CPU a QDQ ``Conv`` stays
``DequantizeLinear -> float Conv -> QuantizeLinear``; only some patterns become integer
``QLinear*`` kernels), so its result is ``Q`` of a float32 computation whose rounding errors
the exact integer program does not have: outputs agree except where the exact value lies
within float32 error of a rounding boundary (docs/interop.md gives the measured rates; never
more than 1 LSB per op in the tests).

The program's layout and interface are the ONNX model's: an NCHW input holding the integers of
the graph's first ``QuantizeLinear`` (``model.meta["onnx"]`` keeps its scale and zero point),
integer outputs in the model's layout (``predict(x, output="int")``), to be dequantized with
the scales in the same metadata. Inside, the program runs NHWC (two ``permute`` ops at the
edges).

Example:
    >>> import fixedq.interop                                           # doctest: +SKIP
    >>> prog = fixedq.interop.import_onnx("model_qdq.onnx")             # doctest: +SKIP
    >>> q_out = prog.predict(q_in, output="int")                        # doctest: +SKIP
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fixedq.engine.kernels import conv_geometry
from fixedq.engine.model import Model
from fixedq.engine.ops import Op
from fixedq.interop.program import ProgramBuilder, multipliers, neural_attrs

#: ONNX operators :func:`import_onnx` reads (with their QDQ pairs).
SUPPORTED_OPS = ("QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "MatMul", "Add",
                 "MaxPool", "AveragePool", "GlobalAveragePool", "Relu", "Flatten", "Reshape")
#: Opsets read (QDQ with int4 weights needs 21).
OPSETS = range(10, 23)
#: Extra bits kept when an Add rescales its inputs before summing (then one rounding); fewer
#: for 16-bit activations, so that every product stays inside int64.
ADD_BITS = 20
_INT_TYPES = {"INT8": (-128, 127), "UINT8": (0, 255), "INT16": (-(2**15), 2**15 - 1),
              "UINT16": (0, 2**16 - 1), "INT4": (-8, 7), "UINT4": (0, 15)}


@dataclass
class _Q:
    """A quantized activation: the engine tensor holding ``q``, layout, scale, zero point."""

    tensor: str
    shape: tuple  # NHWC (rank 4) or (N, C)
    scale: float
    zp: int
    lo: int
    hi: int


def _load_onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise ImportError("importing ONNX models needs the 'onnx' package: pip install "
                          "\"fixedq[onnx]\"") from None
    return onnx, numpy_helper


class _Importer:
    def __init__(self, model, name: str):
        onnx, self.nh = _load_onnx()
        self.onnx = onnx
        self.m = model
        self.g = model.graph
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                    default=0)
        if opset not in OPSETS:
            raise ValueError(f"opset {opset} is not read (opsets {OPSETS.start}.."
                             f"{OPSETS.stop - 1} are)")
        self.name = name
        self.const = {t.name: t for t in self.g.initializer}
        self.consumers: dict[str, list] = {}
        for n in self.g.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.q: dict[str, _Q] = {}  # quantized tensor name -> _Q
        self.dq: dict[str, _Q] = {}  # float tensor (a DQ output) -> _Q

    # ------------------------------------------------------------------ constants
    def array(self, name: str, what: str) -> np.ndarray:
        t = self.const.get(name)
        if t is None:
            for n in self.g.node:  # a Constant node
                if n.op_type == "Constant" and n.output[0] == name:
                    return self.nh.to_array(n.attribute[0].t)
            raise ValueError(f"{what}: {name!r} must be a constant")
        return self.nh.to_array(t)

    def type_range(self, name: str, what: str) -> tuple[int, int]:
        t = self.const.get(name)
        dtype = None if t is None else self.onnx.TensorProto.DataType.Name(t.data_type)
        if dtype not in _INT_TYPES:
            raise ValueError(f"{what}: zero point {name!r} has type {dtype}; the importer "
                             f"reads {', '.join(_INT_TYPES)}")
        return _INT_TYPES[dtype]

    def dq_const(self, node, what: str):
        """A DequantizeLinear of a constant: integers, scales, zero points, axis."""
        values = self.array(node.input[0], what).astype(np.int64)
        scale = self.array(node.input[1], what).astype(np.float64)
        zp = self.array(node.input[2], what).astype(np.int64) if len(node.input) > 2 and \
            node.input[2] else np.zeros_like(scale, dtype=np.int64)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if any(a.name == "block_size" and a.i for a in node.attribute):
            raise ValueError(f"{what}: blocked quantization is not supported")
        return values, scale, zp, axis

    def producer_dq(self, name: str):
        for n in self.g.node:
            if n.output and n.output[0] == name:
                return n if n.op_type == "DequantizeLinear" else None
        return None

    # ------------------------------------------------------------------ activations
    def act(self, name: str, what: str) -> _Q:
        try:
            return self.dq[name]
        except KeyError:
            raise ValueError(f"{what}: input {name!r} is not a dequantized activation (the "
                             "importer reads QDQ models: every compute node between "
                             "DequantizeLinear and QuantizeLinear)") from None

    def out_q(self, node, what: str):
        """The QuantizeLinear that consumes the node's output: (q name, scale, zp, lo, hi)."""
        cons = self.consumers.get(node.output[0], [])
        qs = [c for c in cons if c.op_type == "QuantizeLinear"]
        if len(qs) != 1 or len(cons) != 1:
            raise ValueError(f"{what}: its output must feed exactly one QuantizeLinear (got "
                             f"{[c.op_type for c in cons]})")
        qn = qs[0]
        scale = float(np.float32(self.array(qn.input[1], what)).reshape(-1)[0])
        zp_name = qn.input[2] if len(qn.input) > 2 else ""
        lo, hi = self.type_range(zp_name, what) if zp_name else (0, 255)
        zp = int(self.array(zp_name, what).reshape(-1)[0]) if zp_name else 0
        return qn.output[0], scale, zp, lo, hi

    def record(self, qname: str, tensor: str, shape, scale, zp, lo, hi) -> None:
        self.q[qname] = _Q(tensor, tuple(shape), scale, zp, lo, hi)

    def offsets(self, op: Op, ins: list[_Q], zp_out: int | None) -> Op:
        for i, x in enumerate(ins):
            if x.zp:
                op.arrays[f"in_offset{i}"] = np.array([-x.zp], dtype=np.int64)
        if zp_out:
            op.arrays["out_offset"] = np.array([-zp_out], dtype=np.int64)
        return op

    def symmetric_weights(self, node, what: str):
        """``(w, scale, axis)`` of ``node``'s second input: a DequantizeLinear of a constant
        with zero points 0."""
        wdq = self.producer_dq(node.input[1])
        if wdq is None:
            raise ValueError(f"{what}: the weights must be a DequantizeLinear of a constant")
        w, ws, wzp, axis = self.dq_const(wdq, what)
        if np.any(wzp):
            raise ValueError(f"{what}: weight zero points must be 0 (symmetric weights)")
        return w, ws, axis

    # ------------------------------------------------------------------ nodes
    def conv(self, node, what: str) -> None:
        x = self.act(node.input[0], what)
        w, ws, axis = self.symmetric_weights(node, what)
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        group = int(attrs.get("group", 1))
        cout, cin_g, kh, kw = w.shape
        strides = list(attrs.get("strides", [1, 1]))
        dil = list(attrs.get("dilations", [1, 1]))
        padding = self.padding(attrs, x.shape[1:3], (kh, kw), strides, dil, what)
        if group == 1:
            kind, kernel = "conv2d", w.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif group == x.shape[3] and cin_g == 1:
            kind = "depthwise"
            kernel = w.reshape(group, cout // group, kh, kw).transpose(2, 3, 0, 1)
        else:
            raise ValueError(f"{what}: grouped convolution with group={group} is not "
                             "supported (1 or depthwise)")
        conv = {"strides": strides, "dilation_rate": dil, "padding": padding,
                "kernel_size": [kh, kw]}
        self.neural(node, kind, kernel, ws, x, conv, what)

    def padding(self, attrs, hw, k, strides, dil, what) -> str:
        pads = list(attrs.get("pads", [0, 0, 0, 0]))
        auto = attrs.get("auto_pad", b"NOTSET")
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("SAME_UPPER",):
            return "same"
        if auto == "VALID" or (auto == "NOTSET" and not any(pads)):
            return "valid"
        same = []
        for i in range(2):
            _, before, after = conv_geometry(int(hw[i]), k[i], strides[i], "same", dil[i])
            same.append((before, after))
        if auto == "NOTSET" and [pads[0], pads[2]] == list(same[0]) and \
                [pads[1], pads[3]] == list(same[1]):
            return "same"
        raise ValueError(f"{what}: padding {pads} (auto_pad {auto}) is neither 'valid' nor "
                         f"TensorFlow's 'same' ({same}) for this input")

    def neural(self, node, kind, kernel, w_scale, x: _Q, conv: dict, what: str) -> None:
        qname, s_y, zp_y, lo, hi = self.out_q(node, what)
        cout = kernel.shape[-1] if kind != "depthwise" else kernel.shape[2] * kernel.shape[3]
        bias = np.zeros(cout, np.int64)
        b_name = node.input[2] if len(node.input) > 2 else ""
        if b_name:
            bdq = self.producer_dq(b_name)
            if bdq is None:
                raise ValueError(f"{what}: the bias must be a DequantizeLinear of an int32 "
                                 "constant")
            b, bs, bzp, _ = self.dq_const(bdq, what)
            want = np.float32(x.scale) * np.broadcast_to(np.float32(w_scale), (cout,))
            if np.any(bzp) or not np.array_equal(np.broadcast_to(np.float32(bs), (cout,)),
                                                 want):
                raise ValueError(f"{what}: the bias scale must be input scale x weight scale "
                                 "with zero point 0")
            bias = b.reshape(-1)
        ratio = x.scale * np.broadcast_to(w_scale, (cout,)) / s_y
        mult, shift = multipliers(ratio)
        attrs = neural_attrs(kind, kernel, x.zp, x.lo, x.hi, qname, "half_even",
                             list(x.shape[1:]), weight_bits=int(np.abs(kernel).max(
                                 initial=1)).bit_length() + 1,
                             out_bits=int(hi - lo).bit_length(), **conv)
        arrays = {"kernel": kernel, "bias": bias, "multiplier": mult, "shift": shift,
                  "out_lo": np.array([lo - zp_y]), "out_hi": np.array([hi - zp_y])}
        op = self.offsets(Op(qname, "neural", [x.tensor], attrs, arrays), [x], zp_y)
        name = self.b.add(op)
        shape = (None, *self._out_hw(x, kernel, kind, conv), cout) if conv else (None, cout)
        self.record(qname, name, shape, s_y, zp_y, lo, hi)

    @staticmethod
    def _out_hw(x: _Q, kernel, kind, conv):
        out = []
        for i in range(2):
            o, _, _ = conv_geometry(int(x.shape[1 + i]), kernel.shape[i], conv["strides"][i],
                                    conv["padding"], conv["dilation_rate"][i])
            out.append(o)
        return out

    def gemm(self, node, what: str) -> None:
        x = self.act(node.input[0], what)
        if len(x.shape) != 2:
            raise ValueError(f"{what}: {node.op_type} of a rank-{len(x.shape)} input is not "
                             "supported (flatten first)")
        w, ws, axis = self.symmetric_weights(node, what)
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Gemm":
            if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or \
                    attrs.get("beta", 1.0) != 1.0:
                raise ValueError(f"{what}: Gemm with transA, alpha or beta != 1 is not "
                                 "supported")
            kernel = w.T if attrs.get("transB", 0) else w
        else:
            kernel = w
        self.neural(node, "dense", kernel, ws, x, {}, what)

    def add(self, node, what: str) -> None:
        a, c = self.act(node.input[0], what), self.act(node.input[1], what)
        if a.shape != c.shape:
            raise ValueError(f"{what}: broadcasting Add is not supported ({a.shape} + "
                             f"{c.shape})")
        qname, s_y, zp_y, lo, hi = self.out_q(node, what)
        top = max(a.scale, c.scale)
        # |q - zp| * 2^bits * M (31 bits) stays below 2^62
        bits = min(ADD_BITS, 31 - max(int(t.hi - t.lo).bit_length() for t in (a, c)))
        arrays = {}
        for i, t in enumerate((a, c)):
            m, s = multipliers([t.scale / top])
            arrays.update({f"align{i}": np.array([bits]), f"multiplier_in{i}": m,
                           f"shift_in{i}": s})
        m, s = multipliers([top / (2.0**bits * s_y)])
        arrays.update(multiplier=m, shift=s, out_lo=np.array([lo - zp_y]),
                      out_hi=np.array([hi - zp_y]))
        attrs = {"rounding": "half_even", "value_bits": int(hi - lo).bit_length() - 1,
                 "signed": lo < 0, "out_frac": [0], "layers": [qname]}
        op = self.offsets(Op(qname, "add", [a.tensor, c.tensor], attrs, arrays), [a, c], zp_y)
        self.record(qname, self.b.add(op), a.shape, s_y, zp_y, lo, hi)

    def pool(self, node, what: str) -> None:
        x = self.act(node.input[0], what)
        qname, s_y, zp_y, lo, hi = self.out_q(node, what)
        attrs = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "GlobalAveragePool":
            count = int(x.shape[1]) * int(x.shape[2])
            m, s = multipliers([x.scale / (count * s_y)])
            arrays = {"multiplier": m, "shift": s, "out_lo": np.array([lo - zp_y]),
                      "out_hi": np.array([hi - zp_y])}
            op = Op(qname, "gap", [x.tensor], {"rounding": "half_even", "layers": [qname]},
                    arrays)
            name = self.b.add(self.offsets(op, [x], zp_y))
            name = self.b.add(Op(f"{qname}/keepdims", "reshape", [name],
                                 {"target_shape": [1, 1, int(x.shape[3])]}))
            self.record(qname, name, (None, 1, 1, x.shape[3]), s_y, zp_y, lo, hi)
            return
        k = list(attrs["kernel_shape"])
        strides = list(attrs.get("strides", [1, 1]))
        if attrs.get("ceil_mode", 0) or any(d != 1 for d in attrs.get("dilations", [1, 1])):
            raise ValueError(f"{what}: ceil_mode and dilations are not supported")
        padding = self.padding(attrs, x.shape[1:3], k, strides, [1, 1], what)
        geo = {"pool_size": k, "strides": strides, "padding": padding}
        hw = [conv_geometry(int(x.shape[1 + i]), k[i], strides[i], padding)[0]
              for i in range(2)]
        if node.op_type == "MaxPool":
            if (np.float32(s_y), zp_y) != (np.float32(x.scale), x.zp):
                raise ValueError(f"{what}: MaxPool must keep its input's quantization")
            name = self.b.add(Op(qname, "maxpool", [x.tensor], dict(geo)))
        else:
            if padding == "same" and attrs.get("count_include_pad", 0):
                raise ValueError(f"{what}: count_include_pad=1 is not supported")
            from fixedq.interop.tflite_import import window_counts

            counts = window_counts(x.shape[1:3], geo)
            ratio = x.scale / (counts.astype(np.float64) * s_y)
            m, s = multipliers(ratio)
            # one shift for all positions: rescale the multipliers to the largest shift
            top = int(s.max())
            m = (m << (top - s)).reshape(counts.shape)[..., None]
            arrays = {"multiplier": m, "shift": np.array([top]),
                      "out_lo": np.array([lo - zp_y]), "out_hi": np.array([hi - zp_y])}
            op = Op(qname, "avgpool", [x.tensor], {**geo, "rounding": "half_even",
                                                    "layers": [qname]}, arrays)
            name = self.b.add(self.offsets(op, [x], zp_y))
        self.record(qname, name, (None, *hw, x.shape[3]), s_y, zp_y, lo, hi)

    def relu(self, node, what: str) -> None:
        x = self.act(node.input[0], what)
        qname, s_y, zp_y, lo, hi = self.out_q(node, what)
        if (np.float32(s_y), zp_y) != (np.float32(x.scale), x.zp):
            raise ValueError(f"{what}: Relu must keep its input's quantization")
        op = Op(qname, "clip", [x.tensor], {}, {"lo": np.array([max(zp_y, lo)]),
                                                "hi": np.array([hi])})
        self.record(qname, self.b.add(op), x.shape, s_y, zp_y, lo, hi)

    def flatten(self, node, what: str) -> None:
        x = self.act(node.input[0], what)
        qname, s_y, zp_y, lo, hi = self.out_q(node, what)
        if (np.float32(s_y), zp_y) != (np.float32(x.scale), x.zp):
            raise ValueError(f"{what}: {node.op_type} must keep its input's quantization")
        size = int(np.prod([int(d) for d in x.shape[1:]]))
        src = x.tensor
        if len(x.shape) == 4 and (x.shape[1], x.shape[2]) != (1, 1):  # NCHW element order
            src = self.b.add(Op(f"{qname}/nchw", "permute", [src], {"dims": [3, 1, 2]}))
        if node.op_type == "Reshape":
            want = [int(d) for d in self.array(node.input[1], what)]
            if len(want) != 2 or want[1] not in (-1, size):
                raise ValueError(f"{what}: Reshape to {want} is not supported (to (N, "
                                 "features) is)")
        name = self.b.add(Op(qname, "reshape", [src], {"target_shape": [size]}))
        self.record(qname, name, (None, size), s_y, zp_y, lo, hi)

    # ------------------------------------------------------------------ program
    def run(self) -> Model:
        g = self.g
        real_inputs = [i for i in g.input if i.name not in self.const]
        if len(real_inputs) != 1:
            raise ValueError(f"the model has {len(real_inputs)} inputs; the importer reads "
                             "single-input models")
        inp = real_inputs[0]
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in inp.type.tensor_type.shape.dim]
        if len(dims) not in (2, 4) or any(d is None for d in dims[1:]):
            raise ValueError(f"input {inp.name!r} has shape {dims}; the importer reads "
                             "(N, C, H, W) or (N, features) inputs with fixed sizes")
        if any(n.op_type.startswith("QLinear") or n.op_type in ("ConvInteger",
                                                                "MatMulInteger")
               for n in g.node):
            bad = next(n.op_type for n in g.node if n.op_type.startswith("QLinear")
                       or n.op_type in ("ConvInteger", "MatMulInteger"))
            raise ValueError(f"this is a QOperator-format ONNX model ({bad}); the importer "
                             "reads QDQ models (quantize_static(..., quant_format="
                             "QuantFormat.QDQ))")
        first = [n for n in self.consumers.get(inp.name, [])]
        if len(first) != 1 or first[0].op_type != "QuantizeLinear":
            raise ValueError(f"input {inp.name!r} must feed exactly one QuantizeLinear (a QDQ "
                             "model quantizes its input first)")
        qin = first[0]
        s_in = float(np.float32(self.array(qin.input[1], "input QuantizeLinear")).reshape(-1)[0])
        zp_name = qin.input[2] if len(qin.input) > 2 else ""
        lo, hi = self.type_range(zp_name, "input QuantizeLinear") if zp_name else (0, 255)
        zp_in = int(self.array(zp_name, "input").reshape(-1)[0]) if zp_name else 0
        nchw = len(dims) == 4
        shape = (None, dims[2], dims[3], dims[1]) if nchw else (None, dims[1])
        self.b = ProgramBuilder(self.name, qin.output[0], (None, *dims[1:]), lo, hi)
        src = self.b.input_name
        if nchw:
            src = self.b.add(Op(f"{qin.output[0]}/nhwc", "permute", [src], {"dims": [2, 3, 1]}))
        self.record(qin.output[0], src, shape, s_in, zp_in, lo, hi)
        handlers = {"Conv": self.conv, "Gemm": self.gemm, "MatMul": self.gemm,
                    "Add": self.add, "MaxPool": self.pool, "AveragePool": self.pool,
                    "GlobalAveragePool": self.pool, "Relu": self.relu,
                    "Flatten": self.flatten, "Reshape": self.flatten}
        for k, node in enumerate(g.node):
            what = f"node {k} ({node.op_type} {node.name!r})"
            op = node.op_type
            if node.domain not in ("", "ai.onnx") or op not in SUPPORTED_OPS + ("Constant",):
                raise ValueError(f"{what}: ONNX operator {node.domain + '.' if node.domain else ''}"
                                 f"{op} is not supported; the importer reads "
                                 f"{', '.join(SUPPORTED_OPS)}")
            if op == "Constant" or node is qin:
                continue
            if op == "DequantizeLinear":
                if node.input[0] in self.const:
                    continue  # weights and biases: read by their consumer
                x = self.q.get(node.input[0])
                if x is None:
                    raise ValueError(f"{what}: dequantizes {node.input[0]!r}, which no "
                                     "QuantizeLinear of the importer produced")
                self.dq[node.output[0]] = x
                continue
            if op == "QuantizeLinear":
                if node.output[0] not in self.q:
                    raise ValueError(f"{what}: a QuantizeLinear that follows no supported "
                                     "node (only compute nodes' outputs are quantized)")
                continue
            handlers[op](node, what)
        outs, meta_out = [], []
        for o in g.output:
            x = self.dq.get(o.name) or self.q.get(o.name)
            if x is None:
                raise ValueError(f"output {o.name!r} is not a (de)quantized activation")
            tensor = x.tensor
            if len(x.shape) == 4:  # back to NCHW
                tensor = self.b.add(Op(f"{o.name}/nchw", "permute", [tensor],
                                       {"dims": [3, 1, 2]}))
            outs.append((tensor, o.name))
            meta_out.append({"name": o.name, "scale": x.scale, "zero_point": x.zp,
                             "dequantized": o.name in self.dq})
        meta = {"source": "onnx", "onnx": {"input": {"name": inp.name, "scale": s_in,
                                                     "zero_point": zp_in},
                                           "outputs": meta_out}}
        return self.b.build(outs, meta)


def import_onnx(path: str | os.PathLike | bytes, name: str | None = None) -> Model:
    """Read an ONNX QDQ model into an engine program (docs/interop.md).

    Args:
        path: an ``.onnx`` file (or its bytes) written by
            ``onnxruntime.quantization.quantize_static(..., quant_format=QuantFormat.QDQ)``.
        name: program name (default: the file's stem).

    Returns:
        A :class:`fixedq.engine.Model`: ``predict(q, output="int")`` on the integers of the
        model's input ``QuantizeLinear`` (NCHW) gives the quantized outputs.

    Raises:
        ValueError: not an ONNX model, truncated or corrupt, a QOperator model, an opset or
            operator the importer does not read (the message names it).
    """
    onnx, _ = _load_onnx()
    data = path if isinstance(path, (bytes, bytearray)) else Path(path).read_bytes()
    where = "the data" if isinstance(path, (bytes, bytearray)) else repr(str(path))
    try:
        model = onnx.load_model_from_string(bytes(data))
    except Exception as err:  # protobuf DecodeError and friends
        raise ValueError(f"{where} is not a readable ONNX model ({type(err).__name__}: "
                         f"{err})") from None
    if not model.graph.node:
        raise ValueError(f"{where} is not an ONNX model (no graph nodes; truncated?)")
    if name is None:
        name = "onnx" if isinstance(path, (bytes, bytearray)) else Path(path).stem
    try:
        return _Importer(model, name).run()
    except (IndexError, KeyError, AttributeError, TypeError) as err:
        raise ValueError(f"corrupt ONNX model ({type(err).__name__}: {err})") from None

"""Import a full-integer (int8) TFLite model as an engine program with TFLite's arithmetic.

:func:`import_tflite` reads the flatbuffer with TensorFlow's own generated schema
(``tensorflow/lite/python/schema_py_generated.py``, loaded from the installed TensorFlow
without importing TensorFlow itself) and builds a :class:`fixedq.engine.Model` whose integer
outputs equal ``tf.lite.Interpreter``'s (docs/interop.md). Engine tensors hold TFLite's int8
values ``q``; every op subtracts its input zero point (``in_offset``) and adds its output zero
point back (``out_offset``). Requantizing ops use TFLite's own Q31 multipliers with the rounding
of TFLite's reference kernels: ``rounding="tflite"`` (eq. 7b: ``SaturatingRoundingDoublingHighMul``
then ``RoundingDivideByPOT``) for CONV_2D, DEPTHWISE_CONV_2D, ADD, MEAN and int8 QUANTIZE;
one half-up rounding (eq. 7) for FULLY_CONNECTED; average pooling divides half away from zero
as TFLite's integer division does.

Ops: CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED, ADD, MAX_POOL_2D, AVERAGE_POOL_2D, MEAN
(over H and W), RESHAPE, CONCATENATION, PAD (folded into the VALID convolution that follows it
as SAME padding), QUANTIZE (int8 -> int8 requantization; float -> int8 only as the first op)
and DEQUANTIZE (int8 -> float, last ops only), with fused RELU, RELU6 and RELU_N1_TO_1;
SHAPE/STRIDED_SLICE/PACK computing a RESHAPE's int32 shape are skipped (Keras 3 Flatten).
LOGISTIC is an exact 256-entry table (eq. 38), SOFTMAX the engine's softmax (eq. 39, equal
except near ties). Anything else is a ``ValueError`` naming the op.

``kernels="xnnpack"`` reproduces TFLite's default interpreter instead, which delegates int8 ops
to XNNPACK (measured, docs/interop.md): CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED and MEAN use
XNNPACK's float32 requantization (``rounding="fp32"``, eq. 7c, with float32 scales), ADD
XNNPACK's integer add (:func:`xnnpack_add_arrays`); the other ops compute as the reference.

The program's input is the model's int8 input tensor (a leading float QUANTIZE is left to the
caller: its scale and zero point are in ``model.meta["tflite"]``), its outputs the int8
outputs (``predict(x, output="int")``), dequantized by the scales in the same metadata.

Example:
    >>> import fixedq.interop                                           # doctest: +SKIP
    >>> prog = fixedq.interop.import_tflite("model_int8.tflite")        # doctest: +SKIP
    >>> q_out = prog.predict(q_in, output="int")   # == the interpreter  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import importlib.util
import os
from pathlib import Path

import numpy as np

from fixedq.engine.kernels import conv_geometry
from fixedq.engine.model import Model
from fixedq.engine.ops import Op
from fixedq.interop.program import ProgramBuilder, multipliers, neural_attrs
from fixedq.tensors.rounding import float32_multiplier_shift

#: TFLite builtin operators :func:`import_tflite` reads.
SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "MAX_POOL_2D",
                 "AVERAGE_POOL_2D", "MEAN", "RESHAPE", "CONCATENATION", "QUANTIZE",
                 "DEQUANTIZE", "PAD", "LOGISTIC", "SOFTMAX")
#: Operators that only compute int32 shapes (a dynamic-batch Flatten: SHAPE -> STRIDED_SLICE ->
#: PACK -> RESHAPE): skipped, as RESHAPE takes its output tensor's static shape.
SHAPE_OPS = ("SHAPE", "STRIDED_SLICE", "PACK")
#: ``ADD``'s inputs are shifted left by 20 bits before their rescaling (TFLite's int8 add).
ADD_LEFT_SHIFT = 20
MAX_AVGPOOL_COUNT = 1 << 22
#: The interpreter arithmetics :func:`import_tflite` reproduces (``kernels=``): TFLite's
#: reference kernels, or its default interpreter, which delegates int8 ops to XNNPACK.
KERNELS = ("reference", "xnnpack")


class _Tensor:
    """One TFLite tensor: shape, type name, quantization, constant data."""

    def __init__(self, t, model, schema, index: int):
        self.index = index
        self.name = t.name.decode() if isinstance(t.name, bytes) else str(t.name)
        self.shape = [int(d) for d in (t.shape if t.shape is not None else [])]
        self.type = _enum_name(schema.TensorType, t.type)
        q = t.quantization
        has_q = q is not None and q.scale is not None and len(q.scale) > 0
        self.scale = np.asarray(q.scale, dtype=np.float32) if has_q else None
        self.zero_point = (np.asarray(q.zeroPoint, dtype=np.int64) if has_q
                           and q.zeroPoint is not None else None)
        self.axis = int(q.quantizedDimension) if has_q else 0
        buf = model.buffers[t.buffer] if 0 < t.buffer < len(model.buffers) else None
        self.data = None
        if buf is not None and buf.data is not None and len(buf.data):
            dtype = {"INT8": np.int8, "INT32": np.int32, "INT64": np.int64,
                     "FLOAT32": np.float32, "INT16": np.int16, "UINT8": np.uint8}.get(self.type)
            if dtype is None:
                raise ValueError(f"constant tensor {self.name!r} has type {self.type}, which "
                                 "the importer does not read")
            raw = np.asarray(buf.data, dtype=np.uint8).tobytes()
            self.data = np.frombuffer(raw, dtype=dtype).reshape(self.shape)

    @property
    def zp(self) -> int:
        """The (per-tensor) zero point."""
        return 0 if self.zero_point is None or not self.zero_point.size \
            else int(self.zero_point[0])

    @property
    def s(self) -> float:
        """The (per-tensor) scale, float32 as TFLite holds it."""
        return float(self.scale[0])


def _enum_name(enum, value: int) -> str:
    for k, v in vars(enum).items():
        if not k.startswith("_") and v == value:
            return k
    return str(value)


@functools.lru_cache(maxsize=1)
def tflite_schema():
    """TensorFlow's generated TFLite flatbuffer schema module (its Python object API).

    Loaded from the installed ``tensorflow`` package's files without running TensorFlow's
    ``__init__`` (which takes seconds); it needs only the ``flatbuffers`` package.
    """
    spec = importlib.util.find_spec("tensorflow")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("reading .tflite files needs TensorFlow's schema: pip install "
                          "tensorflow (a fixedq dependency)")
    path = Path(list(spec.submodule_search_locations)[0]) / "lite" / "python" / \
        "schema_py_generated.py"
    if not path.is_file():
        from tensorflow.lite.python import schema_py_generated  # noqa: PLC0415

        return schema_py_generated
    mod_spec = importlib.util.spec_from_file_location("fixedq_tflite_schema", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    return module


def read_tflite(path_or_bytes):
    """Parse a ``.tflite`` file (or its bytes) into the schema's ``ModelT`` object tree.

    Raises:
        ValueError: not a TFLite flatbuffer (identifier ``TFL3``), truncated or corrupt.
    """
    data = path_or_bytes if isinstance(path_or_bytes, (bytes, bytearray)) else \
        Path(path_or_bytes).read_bytes()
    where = "the data" if isinstance(path_or_bytes, (bytes, bytearray)) else \
        repr(str(path_or_bytes))
    if len(data) < 8 or bytes(data[4:8]) != b"TFL3":
        raise ValueError(f"{where} is not a TFLite model (no 'TFL3' flatbuffer identifier)")
    schema = tflite_schema()
    try:
        model = schema.ModelT.InitFromPackedBuf(bytes(data), 0)
    except Exception as err:  # flatbuffers raises struct/index errors on damaged data
        raise ValueError(f"{where} is a truncated or corrupt TFLite file "
                         f"({type(err).__name__}: {err})") from None
    if not model.subgraphs:
        raise ValueError(f"{where} has no subgraph")
    return model


class _Importer:
    def __init__(self, model, schema, name: str, kernels: str = "reference"):
        self.m, self.schema = model, schema
        self.xnn = kernels == "xnnpack"
        self.g = model.subgraphs[0]
        if len(model.subgraphs) != 1:
            raise ValueError(f"the model has {len(model.subgraphs)} subgraphs; the importer "
                             "reads single-subgraph models")
        try:
            self.t = [_Tensor(t, model, schema, i) for i, t in enumerate(self.g.tensors)]
        except Exception as err:
            if isinstance(err, ValueError):
                raise
            raise ValueError(f"corrupt tensor table ({type(err).__name__}: {err})") from None
        self.name = name
        self.dequantized: dict[int, int] = {}
        self.pads: dict[int, tuple[int, list]] = {}  # PAD output -> (its input, pads)

    # ------------------------------------------------------------------ helpers
    def opname(self, op) -> str:
        code = self.m.operatorCodes[op.opcodeIndex]
        value = max(int(code.builtinCode), int(code.deprecatedBuiltinCode))
        return _enum_name(self.schema.BuiltinOperator, value)

    def act_range(self, fused: int, out: _Tensor, what: str) -> tuple[int, int]:
        """TFLite's ``CalculateActivationRangeQuantized`` for an int8 output."""
        name = _enum_name(self.schema.ActivationFunctionType, fused)
        zp, s = out.zp, np.float32(out.s)

        def q(f: float) -> int:
            v = np.float32(f) / s  # float division, as TFLite
            return zp + int(np.sign(v) * np.floor(np.abs(v) + np.float32(0.5)))

        if name == "NONE":
            return -128, 127
        if name == "RELU":
            return max(-128, q(0.0)), 127
        if name == "RELU6":
            return max(-128, q(0.0)), min(127, q(6.0))
        if name == "RELU_N1_TO_1":
            return max(-128, q(-1.0)), min(127, q(1.0))
        raise ValueError(f"{what}: fused activation {name} is not supported (NONE, RELU, "
                         "RELU6, RELU_N1_TO_1 are)")

    def int8(self, t: _Tensor, what: str) -> None:
        if t.type != "INT8":
            raise ValueError(f"{what}: tensor {t.name!r} is {t.type}; the importer reads "
                             "full-integer int8 models (convert with "
                             "inference_input_type=tf.int8 and TFLITE_BUILTINS_INT8)")
        if t.scale is None:
            raise ValueError(f"{what}: tensor {t.name!r} has no quantization parameters")

    def src(self, index: int, what: str) -> str:
        if index in self.pads:
            raise ValueError(f"{what}: reads the output of a PAD; a PAD is supported only "
                             "folded into the VALID conv or depthwise conv that follows it")
        try:
            return self.b.tensor[index]
        except KeyError:
            raise ValueError(f"{what}: input tensor {self.t[index].name!r} is neither the "
                             "model input nor produced by an earlier op") from None

    def offsets(self, op: Op, ins: list[_Tensor], out: _Tensor | None) -> Op:
        for i, t in enumerate(ins):
            if t.zp:
                op.arrays[f"in_offset{i}"] = np.array([-t.zp], dtype=np.int64)
        if out is not None and out.zp:
            op.arrays["out_offset"] = np.array([-out.zp], dtype=np.int64)
        return op

    def emit(self, op: Op, out_index: int) -> None:
        self.b.tensor[out_index] = self.b.add(op)

    # ------------------------------------------------------------------ ops
    def conv(self, op, kind: str, what: str) -> None:
        x, w, out = (self.t[i] for i in op.inputs[:2]), None, self.t[op.outputs[0]]
        x, w = list(x)
        for t in (x, out, w):
            self.int8(t, what)
        opt = op.builtinOptions
        if w.data is None:
            raise ValueError(f"{what}: the filter is not a constant")
        bias = self.bias(op, what)
        if kind == "dense":
            kernel = w.data.astype(np.int64).T  # (out, in) -> (in, out)
            conv = {}
        elif kind == "conv2d":
            kernel = w.data.astype(np.int64).transpose(1, 2, 3, 0)  # (out,kh,kw,in)->(kh,kw,in,out)
            conv = {"strides": [opt.strideH, opt.strideW],
                    "dilation_rate": [opt.dilationHFactor, opt.dilationWFactor]}
        else:  # depthwise (1, kh, kw, c*mult) -> (kh, kw, c, mult)
            cin = x.shape[-1]
            kernel = w.data.astype(np.int64)[0]
            kernel = kernel.reshape(kernel.shape[0], kernel.shape[1], cin, -1)
            conv = {"strides": [opt.strideH, opt.strideW],
                    "dilation_rate": [opt.dilationHFactor, opt.dilationWFactor]}
        src_index = op.inputs[0]
        if conv:
            conv["padding"] = _enum_name(self.schema.Padding, opt.padding).lower()
            conv["kernel_size"] = list(kernel.shape[:2])
            if src_index in self.pads:  # PAD + VALID conv == SAME conv when the pads agree
                src_index = self.fold_pad(src_index, x, kernel.shape[:2], conv, what)
                x = self.t[src_index]
        if w.zero_point is not None and np.any(w.zero_point):
            raise ValueError(f"{what}: filter zero points must be 0 (TFLite int8 weights are "
                             "symmetric)")
        cout = kernel.shape[-1] if kind != "depthwise" else kernel.shape[2] * kernel.shape[3]
        w_scale = np.broadcast_to(w.scale.astype(np.float64), (cout,))
        if kind == "dense" and w.scale.size == 1:  # GetQuantizedConvolutionMultipler: the
            # input x filter scale product is a float32 product, then double
            prod = np.float64(np.float32(x.s) * np.float32(w.scale[0]))
            scale = np.full(cout, prod / np.float64(np.float32(out.s)))
        else:  # PopulateConvolutionQuantizationParams: double products
            scale = np.float64(np.float32(x.s)) * w_scale / np.float64(np.float32(out.s))
        mult, shift = multipliers(scale)
        if self.xnn:  # XNNPACK: float32 s_x·s_w[c] / s_y, fp32 requantization (eq. 7c)
            w32 = np.broadcast_to(w.scale.astype(np.float32), (cout,))
            scale32 = np.float32(x.s) * w32 / np.float32(out.s)
            if np.any(scale32 < np.float32(2.0**-32)) or np.any(scale32 >= np.float32(256)):
                raise ValueError(f"{what}: requantization scale outside XNNPACK's "
                                 f"[2^-32, 256) ({scale32.min()!r} .. {scale32.max()!r}); "
                                 "import with kernels='reference'")
            mult, shift = float32_multiplier_shift(scale32)
        lo, hi = self.act_range(opt.fusedActivationFunction, out, what)
        src = self.src(src_index, what)
        in_shape = self.t[src_index].shape[1:]
        if kind == "dense":
            src = self.flatten_for_dense(x, kernel.shape[0], src, what)
            in_shape = [kernel.shape[0]]
            if opt.keepNumDims:
                raise ValueError(f"{what}: keep_num_dims is not supported")
        # the reference FULLY_CONNECTED rounds once, half up (measured: its outputs equal
        # eq. 7 on every element where eq. 7b differs); convolutions use eq. 7b
        rule = "fp32" if self.xnn else "half_up" if kind == "dense" else "tflite"
        attrs = neural_attrs(kind, kernel, x.zp, -128, 127, out.name, rule, in_shape, **conv)
        arrays = {"kernel": kernel, "bias": bias if bias is not None else
                  np.zeros(cout, np.int64), "multiplier": mult, "shift": shift,
                  "out_lo": np.array([lo - out.zp]), "out_hi": np.array([hi - out.zp])}
        self.emit(self.offsets(Op(out.name, "neural", [src], attrs, arrays), [x], out),
                  op.outputs[0])

    def fold_pad(self, index: int, x: _Tensor, k, conv: dict, what: str) -> int:
        """The input of a PAD whose padding a VALID conv can take as SAME padding."""
        src, pads = self.pads[index]
        inner = self.t[src]
        same = []
        for i in range(2):
            _, before, after = conv_geometry(inner.shape[1 + i], k[i], conv["strides"][i],
                                             "same", conv["dilation_rate"][i])
            same.append([before, after])
        if conv["padding"] != "valid" or pads[1:3] != same or pads[0] != [0, 0] \
                or pads[3] != [0, 0]:
            raise ValueError(f"{what}: reads a PAD {pads} that is not the SAME padding "
                             f"{same} of this conv (a PAD is supported only folded into "
                             "the VALID conv that follows it)")
        conv["padding"] = "same"
        return src

    def pad(self, op, what: str) -> None:
        x, out = self.t[op.inputs[0]], self.t[op.outputs[0]]
        self.int8(x, what)
        self.same_quant(x, out, what)
        p = self.t[op.inputs[1]].data
        if p is None or p.shape != (4, 2):
            raise ValueError(f"{what}: paddings must be a constant (4, 2) tensor")
        self.src(op.inputs[0], what)
        self.pads[int(op.outputs[0])] = (int(op.inputs[0]), p.astype(int).tolist())

    def flatten_for_dense(self, x: _Tensor, cin: int, src: str, what: str) -> str:
        if len(x.shape) == 2:
            return src
        if int(np.prod(x.shape[1:])) != cin:
            raise ValueError(f"{what}: input {x.shape} does not flatten to {cin} features "
                             "per sample")
        return self.b.add(Op(f"{x.name}/flatten", "reshape", [src],
                             {"target_shape": [cin]}))

    def bias(self, op, what: str):
        if len(op.inputs) < 3 or op.inputs[2] < 0:
            return None
        b = self.t[op.inputs[2]]
        if b.data is None or b.type != "INT32":
            raise ValueError(f"{what}: the bias must be a constant int32 tensor, got {b.type}")
        return b.data.astype(np.int64).ravel()

    def add(self, op, what: str) -> None:
        a, c = self.t[op.inputs[0]], self.t[op.inputs[1]]
        out = self.t[op.outputs[0]]
        for t in (a, c, out):
            self.int8(t, what)
        if a.shape != c.shape:
            raise ValueError(f"{what}: broadcasting ADD ({a.shape} + {c.shape}) is not "
                             "supported")
        lo, hi = self.act_range(op.builtinOptions.fusedActivationFunction, out, what)
        if self.xnn:
            arrays = xnnpack_add_arrays(a.s, c.s, out.s)
            arrays.update(out_lo=np.array([lo - out.zp]), out_hi=np.array([hi - out.zp]))
            attrs = {"rounding": "half_up", "value_bits": 7, "signed": True,
                     "out_frac": [0], "layers": [out.name]}
            ins = [self.src(i, what) for i in op.inputs[:2]]
            self.emit(self.offsets(Op(out.name, "add", ins, attrs, arrays), [a, c], out),
                      op.outputs[0])
            return
        twice = np.float64(np.float32(2) * max(np.float32(a.s), np.float32(c.s)))
        arrays = {"align0": np.array([ADD_LEFT_SHIFT]), "align1": np.array([ADD_LEFT_SHIFT])}
        for i, t in enumerate((a, c)):
            m, s = multipliers([np.float64(np.float32(t.s)) / twice])
            arrays[f"multiplier_in{i}"], arrays[f"shift_in{i}"] = m, s
        m, s = multipliers([twice / (np.float64(1 << ADD_LEFT_SHIFT)
                                     * np.float64(np.float32(out.s)))])
        lo, hi = self.act_range(op.builtinOptions.fusedActivationFunction, out, what)
        arrays.update(multiplier=m, shift=s, out_lo=np.array([lo - out.zp]),
                      out_hi=np.array([hi - out.zp]))
        attrs = {"rounding": "tflite", "value_bits": 7, "signed": True, "out_frac": [0],
                 "layers": [out.name]}
        ins = [self.src(i, what) for i in op.inputs[:2]]
        self.emit(self.offsets(Op(out.name, "add", ins, attrs, arrays), [a, c], out),
                  op.outputs[0])

    def requantize(self, op, what: str) -> None:
        """int8 -> int8 QUANTIZE: ``MultiplyByQuantizedMultiplier(q - zp_in) + zp_out``."""
        x, out = self.t[op.inputs[0]], self.t[op.outputs[0]]
        self.int8(out, what)
        m, s = multipliers([np.float64(np.float32(x.s)) / np.float64(np.float32(out.s))])
        arrays = {"align0": np.array([0]), "multiplier": m, "shift": s,
                  "out_lo": np.array([-128 - out.zp]), "out_hi": np.array([127 - out.zp])}
        attrs = {"rounding": "tflite", "value_bits": 7, "signed": True, "out_frac": [0],
                 "layers": [out.name]}
        self.emit(self.offsets(Op(out.name, "add", [self.src(op.inputs[0], what)], attrs,
                                  arrays), [x], out), op.outputs[0])

    def same_quant(self, x: _Tensor, out: _Tensor, what: str) -> None:
        if not (np.float32(x.s) == np.float32(out.s) and x.zp == out.zp):
            raise ValueError(f"{what}: input and output quantization differ (scale {x.s} zp "
                             f"{x.zp} vs {out.s} zp {out.zp}); TFLite requires them equal here")

    def pool(self, op, name: str, what: str) -> None:
        x, out = self.t[op.inputs[0]], self.t[op.outputs[0]]
        for t in (x, out):
            self.int8(t, what)
        self.same_quant(x, out, what)
        opt = op.builtinOptions
        geo = {"pool_size": [opt.filterHeight, opt.filterWidth],
               "strides": [opt.strideH, opt.strideW],
               "padding": _enum_name(self.schema.Padding, opt.padding).lower()}
        src = self.src(op.inputs[0], what)
        lo, hi = self.act_range(opt.fusedActivationFunction, out, what)
        if name == "MAX_POOL_2D":
            y = Op(out.name if (lo, hi) == (-128, 127) else f"{out.name}/max", "maxpool",
                   [src], dict(geo))
            y_name = self.b.add(y)
            if (lo, hi) != (-128, 127):
                y_name = self.b.add(Op(out.name, "clip", [y_name], {},
                                       {"lo": np.array([lo]), "hi": np.array([hi])}))
            self.b.tensor[op.outputs[0]] = y_name
            return
        counts = window_counts(x.shape[1:3], geo)
        if counts.max() > MAX_AVGPOOL_COUNT:
            raise ValueError(f"{what}: pooling windows of {counts.max()} values are too large")
        mult, shift = division_multiplier(counts, 128 * int(counts.max()))
        arrays = {"multiplier": mult[..., None], "shift": np.array([shift]),
                  "out_lo": np.array([lo]),
                  "out_hi": np.array([hi])}
        attrs = {**geo, "rounding": "half_away", "value_bits": 7, "signed": True,
                 "out_frac": [0], "layers": [out.name]}
        self.emit(Op(out.name, "avgpool", [src], attrs, arrays), op.outputs[0])

    def mean(self, op, what: str) -> None:
        x, axes_t, out = self.t[op.inputs[0]], self.t[op.inputs[1]], self.t[op.outputs[0]]
        for t in (x, out):
            self.int8(t, what)
        axes = sorted(int(a) % len(x.shape) for a in np.ravel(axes_t.data))
        if len(x.shape) != 4 or axes != [1, 2]:
            raise ValueError(f"{what}: MEAN over axes {axes} of a rank-{len(x.shape)} tensor "
                             "is not supported (over H and W of NHWC is)")
        count = x.shape[1] * x.shape[2]
        m, s = multipliers([np.float64(np.float32(x.s)) / np.float64(np.float32(out.s))])
        # TFLite folds 1/count into the multiplier: k = min(floor(log2 count), 32, 31 + e),
        # M' = floor(M · 2^k / count), e' = e - k; then MultiplyByQuantizedMultiplier of
        # sum(q - zp_in) (eq. 7b)
        e = 31 - int(s[0])
        k = min(count.bit_length() - 1, 32, 31 + e)
        mult = (int(m[0]) << k) // count
        arrays = {"multiplier": np.array([mult]), "shift": np.array([31 - (e - k)]),
                  "out_lo": np.array([-128 - out.zp]), "out_hi": np.array([127 - out.zp])}
        attrs = {"rounding": "tflite", "value_bits": 7, "signed": True, "out_frac": [0],
                 "layers": [out.name]}
        if self.xnn:  # XNNPACK: float32 s_x / (s_y · count), fp32 requantization (eq. 7c)
            m32, s32 = float32_multiplier_shift(
                [np.float32(x.s) / (np.float32(out.s) * np.float32(count))])
            arrays.update(multiplier=m32, shift=s32)
            attrs["rounding"] = "fp32"
        y = self.offsets(Op(out.name, "gap", [self.src(op.inputs[0], what)], attrs, arrays),
                         [x], out)
        name = self.b.add(y)
        if op.builtinOptions is not None and op.builtinOptions.keepDims:
            name = self.b.add(Op(f"{out.name}/keepdims", "reshape", [name],
                                 {"target_shape": [1, 1, x.shape[3]]}))
        self.b.tensor[op.outputs[0]] = name

    def reshape(self, op, what: str) -> None:
        x, out = self.t[op.inputs[0]], self.t[op.outputs[0]]
        self.same_quant(x, out, what)
        self.emit(Op(out.name, "reshape", [self.src(op.inputs[0], what)],
                     {"target_shape": out.shape[1:]}), op.outputs[0])

    def concat(self, op, what: str) -> None:
        out = self.t[op.outputs[0]]
        ins = [self.t[i] for i in op.inputs]
        for t in ins:
            self.int8(t, what)
            self.same_quant(t, out, what)
        axis = op.builtinOptions.axis % len(out.shape)
        if axis == 0:
            raise ValueError(f"{what}: concatenation over the batch axis is not supported")
        if _enum_name(self.schema.ActivationFunctionType,
                      op.builtinOptions.fusedActivationFunction) != "NONE":
            raise ValueError(f"{what}: a fused activation on CONCATENATION is not supported")
        self.emit(Op(out.name, "concat", [self.src(i, what) for i in op.inputs],
                     {"axis": axis}), op.outputs[0])

    def logistic(self, op, what: str) -> None:
        """The 256-entry table of TFLite's int8 LOGISTIC (``PopulateLookupTable``): float32
        ``s_x·(q − zp_x)``, ``1 / (1 + exp(−x))`` (exp correctly rounded to float32),
        ``round(· × (1/s_y))`` half away from zero, ``+ zp_y``, clamped (eq. 38)."""
        x, out = self.t[op.inputs[0]], self.t[op.outputs[0]]
        for t in (x, out):
            self.int8(t, what)
        v = np.arange(-128, 128)
        deq = np.float32(x.s) * (v - x.zp).astype(np.float32)
        e = np.exp(-deq.astype(np.float64)).astype(np.float32)
        sig = (np.float32(1) / (np.float32(1) + e)).astype(np.float32)
        scaled = sig * (np.float32(1) / np.float32(out.s))
        rounded = np.sign(scaled) * np.floor(np.abs(scaled) + np.float32(0.5))
        table = np.clip(rounded.astype(np.int64) + out.zp, -128, 127)
        arrays = {"table": table, "base": np.array([128]), "out_lo": np.array([-128]),
                  "out_hi": np.array([127])}
        self.emit(Op(out.name, "table", [self.src(op.inputs[0], what)],
                     {"layers": [out.name]}, arrays), op.outputs[0])

    def softmax(self, op, what: str) -> None:
        """TFLite's int8 SOFTMAX (output scale 1/256, zero point -128) as eq. 39: an exp table
        of the 256 differences ``max − q`` (``round(exp(−β·s_x·d)·2^30)``), exact sum,
        ``round_half_up(256·e/Σe)`` − 128. TFLite's kernel approximates the same value; the
        two differ only near rounding ties (docs/interop.md gives the measured rate)."""
        x, out = self.t[op.inputs[0]], self.t[op.outputs[0]]
        for t in (x, out):
            self.int8(t, what)
        if not (np.float32(out.s) == np.float32(1 / 256) and out.zp == -128):
            raise ValueError(f"{what}: an int8 SOFTMAX output has scale 1/256 and zero point "
                             f"-128, got {out.s} and {out.zp}")
        beta = float(op.builtinOptions.beta) if op.builtinOptions is not None else 1.0
        d = np.arange(256, dtype=np.float64)
        table = np.floor(np.exp(-beta * float(np.float32(x.s)) * d) * 2.0**30 + 0.5)
        attrs = {"shift": 0, "prob_frac": 8, "out_lo": 0, "out_hi": 255,
                 "layers": [out.name]}
        arrays = {"exp_table": table.astype(np.int64), "in_align": np.array([0]),
                  "out_offset": np.array([128])}
        self.emit(Op(out.name, "softmax", [self.src(op.inputs[0], what)], attrs, arrays),
                  op.outputs[0])

    # ------------------------------------------------------------------ program
    def run(self) -> Model:
        g = self.g
        if len(g.inputs) != 1:
            raise ValueError(f"the model has {len(g.inputs)} inputs; the importer reads "
                             "single-input models")
        ops = list(g.operators or [])
        inp = self.t[g.inputs[0]]
        first_in = g.inputs[0]
        meta_in = None
        if inp.type == "FLOAT32":
            if not ops or self.opname(ops[0]) != "QUANTIZE" or ops[0].inputs[0] != first_in:
                raise ValueError("this is a float TFLite model (its input is float32 and no "
                                 "QUANTIZE follows it); the importer reads full-integer "
                                 "models: convert with TFLITE_BUILTINS_INT8, a representative "
                                 "dataset and inference_input_type=tf.int8")
            first_in = ops[0].outputs[0]
            ops = ops[1:]
            inp = self.t[first_in]
        self.int8(inp, "the model input")
        meta_in = {"tensor": inp.name, "scale": inp.s, "zero_point": inp.zp}
        self.b = ProgramBuilder(self.name, inp.name, inp.shape)
        self.b.tensor[first_in] = self.b.input_name
        outputs = {int(i) for i in g.outputs}
        for k, op in enumerate(ops):
            name = self.opname(op)
            what = f"op {k} ({name})"
            if name in SHAPE_OPS and all(self.t[i].type == "INT32" for i in op.outputs):
                continue  # shape arithmetic (RESHAPE uses its output's static shape)
            if name not in SUPPORTED_OPS:
                raise ValueError(f"{what}: TFLite operator {name} is not supported; the "
                                 f"importer reads {', '.join(SUPPORTED_OPS)}")
            if name == "DEQUANTIZE":
                if int(op.outputs[0]) not in outputs:
                    raise ValueError(f"{what}: DEQUANTIZE is supported only as a model output")
                self.dequantized[int(op.outputs[0])] = int(op.inputs[0])
                continue
            if name == "QUANTIZE":
                if self.t[op.inputs[0]].type != "INT8":
                    raise ValueError(f"{what}: QUANTIZE from {self.t[op.inputs[0]].type} is "
                                     "supported only as the first op (float input)")
                self.requantize(op, what)
            elif name in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
                self.conv(op, {"CONV_2D": "conv2d", "DEPTHWISE_CONV_2D": "depthwise",
                               "FULLY_CONNECTED": "dense"}[name], what)
            elif name == "ADD":
                self.add(op, what)
            elif name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
                self.pool(op, name, what)
            elif name == "MEAN":
                self.mean(op, what)
            elif name == "PAD":
                self.pad(op, what)
            elif name == "RESHAPE":
                self.reshape(op, what)
            elif name == "CONCATENATION":
                self.concat(op, what)
            elif name == "LOGISTIC":
                self.logistic(op, what)
            elif name == "SOFTMAX":
                self.softmax(op, what)
            else:  # pragma: no cover - every name of SUPPORTED_OPS has a branch above
                raise AssertionError(name)
        outs, meta_out = [], []
        for i in g.outputs:
            src = self.dequantized.get(int(i), int(i))
            t = self.t[src]
            outs.append((self.src(src, "the model output"), self.t[int(i)].name))
            meta_out.append({"tensor": self.t[int(i)].name, "scale": t.s,
                             "zero_point": t.zp, "dequantized": src != int(i)})
        meta = {"source": "tflite", "tflite": {"input": meta_in, "outputs": meta_out,
                                               "float_input": self.t[g.inputs[0]].type
                                               == "FLOAT32"}}
        return self.b.build(outs, meta)


def xnnpack_add_arrays(scale_a: float, scale_b: float, scale_out: float) -> dict:
    """The ``add`` op arrays of XNNPACK's int8 add (``qs8`` vadd, integer arithmetic).

    XNNPACK takes the float32 ratios ``r_i = s_i / s_y``, a shift ``S = 20 − e`` from the
    float32 exponent ``e`` of the larger ratio, multipliers ``M_i = lrintf(r_i · 2^S)`` (ties to
    even) and computes ``((q_a − zp_a)·M_a + (q_b − zp_b)·M_b + 2^(S−1)) >> S`` (one rounding,
    half up) plus ``zp_y``. Here: ``multiplier_in<i> = M_i`` with ``shift_in<i> = 0`` (an
    exact product), ``multiplier = 1``, ``shift = S``, rounding ``half_up``.

    Ratios outside XNNPACK's ``[2^-10, 2^8)`` are a ``ValueError`` (XNNPACK does not take such
    an ADD).

    Example:
        >>> r = xnnpack_add_arrays(0.5, 0.25, 1.0)   # ratios 0.5 and 0.25: e = -1, S = 21
        >>> int(r["multiplier_in0"][0]), int(r["multiplier_in1"][0]), int(r["shift"][0])
        (1048576, 524288, 21)
    """
    ra = np.float32(scale_a) / np.float32(scale_out)
    rb = np.float32(scale_b) / np.float32(scale_out)
    for r in (ra, rb):
        if not 2.0**-10 <= float(r) < 2.0**8:
            raise ValueError(f"ADD: input/output scale ratio {float(r)!r} is outside "
                             "XNNPACK's [2^-10, 2^8) (the default interpreter would not "
                             "delegate this ADD); import with kernels='reference'")
    _, e = np.frexp(max(ra, rb))  # max = m·2^e, m in [0.5, 1): the float32 exponent is e - 1
    shift = 20 - (int(e) - 1)
    mults = [int(np.rint(np.ldexp(np.float64(r), shift))) for r in (ra, rb)]
    arrays = {"align0": np.array([0]), "align1": np.array([0]),
              "multiplier": np.array([1]), "shift": np.array([shift])}
    for i, m in enumerate(mults):
        arrays[f"multiplier_in{i}"], arrays[f"shift_in{i}"] = np.array([m]), np.array([0])
    return arrays


def division_multiplier(counts: np.ndarray, amax: int) -> tuple[np.ndarray, int]:
    """``(M, S)`` with ``round_half_away(a · M · 2^-S) == round_half_away(a / n)`` for every
    integer ``|a| <= amax`` and count ``n`` (TFLite's integer division ``(a ± n/2) / n``).

    ``M = ceil(2^S / n)`` overshoots ``a / n`` by less than ``|a| · 2^-S``, and ``a / n`` is at
    least ``1/(2n)`` from any rounding boundary it is not on (on one, the overshoot keeps the
    same side under half-away rounding), so ``2^S > 2 · n · amax`` makes it exact.

    Example:
        >>> m, s = division_multiplier(np.array([4, 3]), 512)
        >>> from fixedq.tensors.rounding import requantize
        >>> requantize(np.array([[-6, 7]]), m, s, -999, 999, "half_away").tolist()
        [[-2, 2]]
    """
    counts = np.asarray(counts, dtype=np.int64)
    shift = (2 * int(counts.max()) * int(amax)).bit_length()
    mult = -(-(1 << shift) // counts)
    if int(amax) * int(mult.max()) >= 2**62:
        raise ValueError(f"a division by {int(counts.max())} of values up to {amax} does not "
                         "fit int64")
    return mult.astype(np.int64), shift


def window_counts(hw, geo: dict) -> np.ndarray:
    """Valid input elements under each pooling window (``same`` windows at the border see
    fewer), shape ``(Ho, Wo)``."""
    dims = []
    for i in range(2):
        size, k, s = int(hw[i]), geo["pool_size"][i], geo["strides"][i]
        out, before, _ = conv_geometry(size, k, s, geo["padding"])
        starts = np.arange(out) * s - before
        dims.append(np.minimum(starts + k, size) - np.maximum(starts, 0))
    return np.outer(dims[0], dims[1]).astype(np.int64)


def import_tflite(path: str | os.PathLike | bytes, name: str | None = None,
                  kernels: str = "reference") -> Model:
    """Read a full-integer TFLite model into an engine program with TFLite's arithmetic.

    Args:
        path: a ``.tflite`` file (or its bytes).
        name: program name (default: the file's stem).
        kernels: whose arithmetic to reproduce: ``"reference"`` (TFLite's reference kernels,
            ``OpResolverType.BUILTIN_REF``) or ``"xnnpack"`` (the default interpreter, which
            delegates int8 convolutions, dense layers, ADD, ... to XNNPACK: float32
            requantization, eq. 7c). docs/interop.md lists what each computes.

    Returns:
        A :class:`fixedq.engine.Model` whose ``predict(q, output="int")`` on the model's int8
        input ``q`` equals ``tf.lite.Interpreter``'s int8 outputs (docs/interop.md).

    Raises:
        ValueError: not a TFLite file, truncated or corrupt, a float model, or an operator,
            option or quantization the importer does not read (the message names it).
    """
    if kernels not in KERNELS:
        raise ValueError(f"kernels must be one of {list(KERNELS)}, got {kernels!r}")
    model = read_tflite(path)
    if name is None:
        name = "tflite" if isinstance(path, (bytes, bytearray)) else Path(path).stem
    try:
        return _Importer(model, tflite_schema(), name, kernels).run()
    except (IndexError, AttributeError, TypeError) as err:  # a damaged but parseable file
        raise ValueError(f"corrupt TFLite model ({type(err).__name__}: {err})") from None

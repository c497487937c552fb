"""Schema of the ``.fqe`` header: every field's type and range, checked before anything is read.

:func:`check_header` walks the decoded JSON header of an engine file and raises
``ValueError("<field>: <why>")`` naming the first offending field (``ops[3].attrs.strides``,
``outputs[0].tensor``, ...). It checks what the kernels rely on: op kinds, input references
(an op reads the input or earlier ops only, so programs are acyclic), the attrs and arrays each
kind uses (strides, pool sizes and dilations positive and bounded, shift-like attrs in a sane
range, padding names, accumulator dtypes), and the declared array shapes and encodings. It
returns the arrays to read so that :func:`fixedq.engine.fileformat.load` can check their total
size against its limit before it decompresses anything. :func:`check_values` checks the
shift-like arrays once read.

Example:
    >>> check_shape([None, 28, 28, 1], "input_shape", free=True)
    >>> check_shape([None, 0], "input_shape", free=True)
    Traceback (most recent call last):
    ...
    ValueError: input_shape[1]: expected a positive integer (or null), got 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fixedq.engine.ops import KERNELS, NEURAL_TYPES
from fixedq.tensors.rounding import ROUNDINGS

#: Array encodings of the file format (``int4x2``: two signed 4-bit values per byte).
ENCODINGS = {"int4x2": np.dtype(np.uint8), "int8": np.dtype(np.int8),
             "int16": np.dtype(np.int16), "int32": np.dtype(np.int32),
             "int64": np.dtype(np.int64)}
INPUT_DTYPES = ("float16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
                "uint16", "uint32", "uint64")
ACCUM_DTYPES = ("float32", "float64", "int64")
PADDINGS = ("same", "valid")
#: Largest stride, dilation, pool or kernel size along one axis.
MAX_WINDOW = 1024
#: Largest magnitude of a shift, alignment or frac_bits (attrs and shift-like arrays).
MAX_SHIFT = 127
#: Largest rank of any shape, and largest dimension.
MAX_RANK = 16
MAX_DIM = 2**31 - 1
I64 = (-(2**63), 2**63 - 1)


@dataclass(frozen=True)
class ArrayRef:
    """One array a header declares: where it is declared, its shape, encoding and entry."""

    field: str
    shape: tuple[int, ...]
    encoding: str
    entry: str

    @property
    def size(self) -> int:
        return math.prod(self.shape)


def _bad(where: str, want: str, got) -> ValueError:
    text = repr(got)
    if len(text) > 80:
        text = text[:77] + "..."
    return ValueError(f"{where}: expected {want}, got {text}")


def check_int(v, where: str, lo: int = I64[0], hi: int = I64[1]) -> int:
    """``v`` is an int (not a bool) in ``[lo, hi]``."""
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise _bad(where, f"an integer in [{lo}, {hi}]", v)
    return v


def check_ints(v, where: str, lo: int = I64[0], hi: int = I64[1], length: int | None = None,
               min_len: int = 0, max_len: int = 1 << 24) -> list[int]:
    """``v`` is a list of ints in ``[lo, hi]`` (of ``length`` items, when given)."""
    if not isinstance(v, list) or (length is not None and len(v) != length) \
            or not min_len <= len(v) <= max_len:
        want = f"a list of {length} integers" if length is not None else "a list of integers"
        raise _bad(where, want, v)
    for i, x in enumerate(v):
        check_int(x, f"{where}[{i}]", lo, hi)
    return v


def check_str(v, where: str, choices=None) -> str:
    """``v`` is a string (one of ``choices``, when given)."""
    if not isinstance(v, str) or (choices is not None and v not in choices):
        raise _bad(where, "a string" if choices is None else f"one of {list(choices)}", v)
    return v


def check_dict(v, where: str) -> dict:
    """``v`` is a JSON object."""
    if not isinstance(v, dict):
        raise _bad(where, "an object", v)
    return v


def check_shape(v, where: str, free: bool = False) -> None:
    """A list of dimensions in ``[0, MAX_DIM]``; with ``free``, a non-empty list of positive
    dimensions or nulls (free sizes)."""
    if not isinstance(v, list) or len(v) > MAX_RANK or (free and not v):
        raise _bad(where, f"a list of at most {MAX_RANK} dimensions", v)
    for i, d in enumerate(v):
        if free and d is None:
            continue
        if free and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
            raise _bad(f"{where}[{i}]", "a positive integer (or null)", d)
        check_int(d, f"{where}[{i}]", 0, MAX_DIM)


def _window(v, where: str) -> None:
    check_ints(v, where, 1, MAX_WINDOW, length=2)


def _spec_attrs(a: dict, where: str) -> None:
    """Attrs every kind may carry (output spec, fused layer names, summary fields)."""
    if "value_bits" in a:
        check_int(a["value_bits"], f"{where}.value_bits", 0, 64)
    if "signed" in a and not isinstance(a["signed"], bool):
        raise _bad(f"{where}.signed", "true or false", a["signed"])
    if "out_frac" in a or "value_bits" in a:  # the summary shows them together
        check_ints(a.get("out_frac"), f"{where}.out_frac", -MAX_SHIFT, MAX_SHIFT, min_len=1)
    if "layers" in a:
        layers = a["layers"]
        if not isinstance(layers, list) or not layers:
            raise _bad(f"{where}.layers", "a non-empty list of strings", layers)
        for i, s in enumerate(layers):
            check_str(s, f"{where}.layers[{i}]")
    if "type" in a:
        check_str(a["type"], f"{where}.type")
    if "rounding" in a:  # eq. 5b: only the requantizing kinds take it (absent: half up)
        check_str(a["rounding"], f"{where}.rounding", ROUNDINGS)
    if "weight_bits" in a:  # the summary shows it with accum_dtype
        check_int(a["weight_bits"], f"{where}.weight_bits", 1, 64)
        check_str(a.get("accum_dtype"), f"{where}.accum_dtype", ACCUM_DTYPES)


def _neural_attrs(a: dict, where: str) -> None:
    check_str(a.get("type"), f"{where}.type", tuple(NEURAL_TYPES))
    check_str(a.get("accum_dtype"), f"{where}.accum_dtype", ACCUM_DTYPES)
    check_int(a.get("acc_lo"), f"{where}.acc_lo")
    check_int(a.get("acc_hi"), f"{where}.acc_hi", a["acc_lo"])
    for key in ("accum_bound",):
        if key in a:
            check_int(a[key], f"{where}.{key}", 0, 2**62)
    for key in ("buffer_bits", "in_frac"):
        if key in a:
            check_int(a[key], f"{where}.{key}", -MAX_SHIFT, MAX_SHIFT)
    for key in ("linear_shape", "in_shape"):  # null: a dynamic dimension
        if key in a:
            check_shape(a[key], f"{where}.{key}", free=True)
    if a["type"] != "dense":
        _window(a.get("strides"), f"{where}.strides")
        _window(a.get("dilation_rate"), f"{where}.dilation_rate")
        check_str(a.get("padding"), f"{where}.padding", PADDINGS)
        if "kernel_size" in a:
            _window(a["kernel_size"], f"{where}.kernel_size")
    if "conv1d" in a:  # a Conv1D: a conv2d over a (1, steps) image, rank-3 inputs
        if not isinstance(a["conv1d"], bool) or (a["conv1d"] and a["type"] != "conv2d"):
            raise _bad(f"{where}.conv1d", "a boolean, true only for type 'conv2d'",
                       a["conv1d"])
        if a["conv1d"] and a.get("pool"):
            raise _bad(f"{where}.pool", "no pooling on a conv1d op", a["pool"])
    pool = a.get("pool")
    if pool:
        if a["type"] == "dense":
            raise _bad(f"{where}.pool", "no pooling on a dense op", pool)
        _pool_attrs(check_dict(pool, f"{where}.pool"), f"{where}.pool")
    elif pool is not None and pool != {}:
        raise _bad(f"{where}.pool", "an object or null", pool)


def _pool_attrs(a: dict, where: str) -> None:
    _window(a.get("pool_size"), f"{where}.pool_size")
    _window(a.get("strides"), f"{where}.strides")
    check_str(a.get("padding"), f"{where}.padding", PADDINGS)


def _shiftmax_attrs(a: dict, where: str) -> None:
    check_int(a.get("score_frac"), f"{where}.score_frac", 0, 24)
    for key in ("exp_bits", "k_max", "prob_frac"):
        check_int(a.get(key), f"{where}.{key}", 0, 62)
    check_int(a.get("prob_hi"), f"{where}.prob_hi", 0, 2**62)


def _attention_attrs(a: dict, where: str) -> None:
    _shiftmax_attrs(a, where)
    check_int(a.get("num_heads"), f"{where}.num_heads", 1, 1 << 16)
    for key in ("score_bound", "out_bound"):
        check_int(a.get(key), f"{where}.{key}", 0)
    check_int(a.get("score_multiplier"), f"{where}.score_multiplier", -(2**62), 2**62)
    check_int(a.get("score_shift"), f"{where}.score_shift", -MAX_SHIFT, MAX_SHIFT)
    check_int(a.get("acc_lo"), f"{where}.acc_lo")
    check_int(a.get("acc_hi"), f"{where}.acc_hi", a["acc_lo"])


def _other_attrs(checks: dict):
    def run(a: dict, where: str) -> None:
        for key, check in checks.items():
            check(a.get(key), f"{where}.{key}")
    return run


def _dims(v, where: str) -> None:
    check_ints(v, where, 1, MAX_RANK, max_len=MAX_RANK)
    if sorted(v) != list(range(1, len(v) + 1)):
        raise _bad(where, "a permutation of 1..rank", v)


def _pads(v, where: str) -> None:
    if not isinstance(v, list) or not 1 <= len(v) <= 2:
        raise _bad(where, "[[before, after]] per spatial axis (1 or 2 axes)", v)
    for i, p in enumerate(v):
        check_ints(p, f"{where}[{i}]", 0, MAX_DIM, max_len=2)
        if len(p) != 2:
            raise _bad(f"{where}[{i}]", "[before, after]", p)


def _slice_attrs(a: dict, where: str) -> None:
    for key in ("begin", "end"):
        check_ints(a.get(key), f"{where}.{key}", -1, MAX_DIM, max_len=MAX_RANK)
    check_ints(a.get("strides"), f"{where}.strides", -MAX_DIM, MAX_DIM, max_len=MAX_RANK)
    check_ints(a.get("shrink", []), f"{where}.shrink", 1, MAX_RANK, max_len=MAX_RANK)
    n = len(a["begin"])
    if len(a["end"]) != n or len(a["strides"]) != n or 0 in a["strides"]:
        raise _bad(where, "begin, end and non-zero strides, one per non-batch axis",
                   {k: a.get(k) for k in ("begin", "end", "strides")})


def _small(lo: int, hi: int):
    return lambda v, where: check_int(v, where, lo, hi)


def _shiftmax_rule(a: dict, where: str) -> None:
    _shiftmax_attrs(a, where)
    check_int(a.get("in_shift"), f"{where}.in_shift", -MAX_SHIFT, MAX_SHIFT)


#: Per kind: attrs checker, required arrays, (min, max) number of inputs.
#: ``{i}`` in an array name means one array per input.
KIND_RULES: dict[str, tuple] = {
    "input": (None, ("frac", "lo", "hi"), (0, 0)),
    "neural": (_neural_attrs, ("kernel", "bias", "multiplier", "shift", "out_lo", "out_hi"),
               (1, 1)),
    "affine": (None, ("multiplier", "shift", "offset", "out_lo", "out_hi"), (1, 1)),
    "gap": (None, ("multiplier", "shift", "out_lo", "out_hi"), (1, 1)),
    "add": (None, ("shift", "out_lo", "out_hi", "align{i}"), (1, 1 << 16)),
    "mul": (None, ("shift", "out_lo", "out_hi"), (2, 2)),
    "pad": (_other_attrs({"pads": _pads}), (), (1, 1)),
    "gmp": (None, (), (1, 1)),
    "upsample": (_other_attrs({"size": lambda v, where: check_ints(v, where, 1, 1 << 16,
                                                                   length=2)}), (), (1, 1)),
    "shift": (None, ("shift", "out_lo", "out_hi"), (1, 1)),
    "concat": (_other_attrs({"axis": _small(0, MAX_RANK)}), (), (1, 1 << 16)),
    "clip": (None, ("lo", "hi"), (1, 1)),
    "maxpool": (_pool_attrs, (), (1, 1)),
    "avgpool": (_pool_attrs, ("multiplier", "shift", "out_lo", "out_hi"), (1, 1)),
    "reshape": (_other_attrs({"target_shape": check_shape}), (), (1, 1)),
    "permute": (_other_attrs({"dims": _dims}), (), (1, 1)),
    "identity": (None, (), (1, 1)),
    "slice": (_slice_attrs, (), (1, 1)),
    "shiftmax": (_shiftmax_rule, ("in_align", "exp_table"), (1, 1)),
    "attention": (_attention_attrs, ("align{i}", "exp_table", "out_shift", "out_lo", "out_hi"),
                  (3, 3)),
    "attention_softmax": (_attention_attrs, ("align{i}", "exp_table", "out_shift", "out_lo",
                                             "out_hi"),
                  (3, 3)),
    "madnorm": (_other_attrs({"eps_int": _small(0, 2**62),
                              "norm_frac": _small(0, 62)}),
                ("in_align", "multiplier", "shift", "offset", "out_lo", "out_hi"), (1, 1)),
    "layernorm": (_other_attrs({"eps_int": _small(0, 2**62),
                                "norm_frac": _small(0, 20)}),
                  ("in_align", "multiplier", "shift", "offset", "out_lo", "out_hi"), (1, 1)),
    "class_token": (None, ("token", "shift", "out_lo", "out_hi"), (1, 1)),
    "add_pos": (None, ("pos", "in_align", "shift", "out_lo", "out_hi"), (1, 1)),
    "extract_token": (_other_attrs({"token": _small(0, MAX_DIM)}), (), (1, 1)),
    "table": (None, ("table", "base", "out_lo", "out_hi"), (1, 1)),
    "softmax": (_other_attrs({"shift": _small(0, 62), "prob_frac": _small(0, 40),
                              "out_lo": _small(0, 2**40), "out_hi": _small(0, 2**40)}),
                ("exp_table", "in_align"), (1, 1)),
    "buffer_conv": (_other_attrs({"kernel_size": _small(1, MAX_DIM)}),
                    ("kernel", "bias", "multiplier", "shift", "out_lo", "out_hi"), (1, 1)),
    "recurrent": (_other_attrs({"coef_frac": _small(0, 62)}),
                  ("a_re", "a_im", "in_shift", "out_shift", "state_hi", "out_lo", "out_hi"),
                  (1, 1)),
}




def _arrays(arrays, where: str) -> list[ArrayRef]:
    refs = []
    for key, meta in check_dict(arrays, where).items():
        field = f"{where}.{key}"
        check_dict(meta, field)
        check_shape(meta.get("shape"), f"{field}.shape")
        encoding = check_str(meta.get("encoding"), f"{field}.encoding", tuple(ENCODINGS))
        entry = check_str(meta.get("entry"), f"{field}.entry")
        refs.append(ArrayRef(field, tuple(meta["shape"]), encoding, entry))
    return refs


def _op(rec, where: str, index: int, known: set[str]) -> list[ArrayRef]:
    check_dict(rec, where)
    name = check_str(rec.get("name"), f"{where}.name")
    if not name or name in known:
        raise _bad(f"{where}.name", "a non-empty name no earlier op has", name)
    kind = check_str(rec.get("kind"), f"{where}.kind", tuple(KERNELS))
    if (index == 0) != (kind == "input"):
        raise _bad(f"{where}.kind", "'input' for ops[0] only", kind)
    inputs = rec.get("inputs")
    if not isinstance(inputs, list):
        raise _bad(f"{where}.inputs", "a list of op names", inputs)
    check_attrs, required, (lo, hi) = KIND_RULES.get(kind, (None, (), (1, 1 << 16)))
    if not lo <= len(inputs) <= hi:
        raise _bad(f"{where}.inputs", f"{lo} to {hi} inputs for kind {kind!r}", inputs)
    for i, t in enumerate(inputs):
        if not isinstance(t, str) or t not in known:
            raise _bad(f"{where}.inputs[{i}]", "the name of an earlier op", t)
    attrs = check_dict(rec.get("attrs"), f"{where}.attrs")
    _spec_attrs(attrs, f"{where}.attrs")
    if "rounding" in attrs and kind not in ROUNDING_KINDS:
        raise _bad(f"{where}.attrs.rounding", f"no rounding on a {kind!r} op (only "
                   f"{list(ROUNDING_KINDS)} requantize)", attrs["rounding"])
    if check_attrs is not None:
        check_attrs(attrs, f"{where}.attrs")
    refs = _arrays(rec.get("arrays"), f"{where}.arrays")
    have = {r.field.rsplit(".", 1)[1]: r for r in refs}
    for key in required:
        names = [key.format(i=i) for i in range(len(inputs))] if "{i}" in key else [key]
        for k in names:
            if k not in have:
                raise ValueError(f"{where}.arrays.{k}: missing (kind {kind!r} needs it)")
    if kind == "neural":
        rank = 2 if attrs["type"] == "dense" else 4
        if len(have["kernel"].shape) != rank:
            raise _bad(f"{where}.arrays.kernel.shape", f"rank {rank}", list(have["kernel"].shape))
    if (kind in ("shiftmax", "attention", "attention_softmax")
            and have["exp_table"].size < 2 ** attrs["score_frac"]):
        raise _bad(f"{where}.arrays.exp_table.shape",
                   f"at least 2^score_frac = {2 ** attrs['score_frac']} values",
                   list(have["exp_table"].shape))
    known.add(name)
    return refs


def _outputs(outputs, where: str, known: set[str]) -> None:
    if not isinstance(outputs, list) or not outputs:
        raise _bad(where, "a non-empty list of outputs", outputs)
    for i, out in enumerate(outputs):
        w = f"{where}[{i}]"
        check_dict(out, w)
        if check_str(out.get("tensor"), f"{w}.tensor") not in known:
            raise _bad(f"{w}.tensor", "the name of an op", out["tensor"])
        check_str(out.get("name"), f"{w}.name")
        check_ints(out.get("frac"), f"{w}.frac", -MAX_SHIFT, MAX_SHIFT, min_len=1)
        if out.get("offset") is not None:
            check_ints(out["offset"], f"{w}.offset", min_len=1)


def check_header(header, format_name: str, version: int) -> list[ArrayRef]:
    """Check a decoded header; return the arrays it declares (in op order).

    Raises:
        ValueError: ``"<field>: expected ..., got ..."`` for the first bad field.
    """
    check_dict(header, "header")
    if header.get("format") != format_name:
        raise ValueError(f"format is {header.get('format')!r}, expected {format_name!r}")
    if header.get("version") != version or isinstance(header.get("version"), bool):
        raise ValueError(f"version {header.get('version')!r} is not supported (this fixedq "
                         f"reads version {version})")
    check_str(header.get("name"), "name")
    check_shape(header.get("input_shape"), "input_shape", free=True)
    check_str(header.get("input_dtype"), "input_dtype", INPUT_DTYPES)
    if header.get("target") is not None:
        check_str(header["target"], "target")
    if header.get("meta") is not None:
        check_dict(header["meta"], "meta")
    ops = header.get("ops")
    if not isinstance(ops, list) or not ops:
        raise _bad("ops", "a non-empty list of ops", ops)
    known: set[str] = set()
    refs = []
    for i, rec in enumerate(ops):
        refs.extend(_op(rec, f"ops[{i}]", i, known))
    _outputs(header.get("outputs"), "outputs", known)
    _check_input_shape(header["input_shape"], ops)
    return refs


def _check_input_shape(input_shape: list, ops: list) -> None:
    """Neural ops reading the model input record its shape (``in_shape``): they must agree."""
    have = input_shape[1:]
    for i, rec in enumerate(ops):
        want = rec["attrs"].get("in_shape")
        if rec["kind"] != "neural" or rec["inputs"] != [ops[0]["name"]] or want is None:
            continue
        if len(want) != len(have) or any(a is not None and b is not None and a != b
                                         for a, b in zip(want, have, strict=True)):
            raise ValueError(f"input_shape: {input_shape} does not match "
                             f"ops[{i}].attrs.in_shape {want} (the op reading the input)")


#: Kinds that requantize and so take a ``rounding`` attr (eq. 5b).
ROUNDING_KINDS = ("neural", "affine", "gap", "avgpool", "add", "shift", "concat")

#: Arrays whose values are shift amounts or alignments (checked by :func:`check_values`).
SHIFT_ARRAYS = ("shift", "in_align", "out_shift", "frac")


def check_values(ref: ArrayRef, values: np.ndarray) -> None:
    """Range of a shift-like array once read (``shift``, ``align<i>``, ``frac``, ...)."""
    key = ref.field.rsplit(".", 1)[1]
    if key in SHIFT_ARRAYS or key.startswith(("align", "shift")):
        if values.size and not -MAX_SHIFT <= int(values.min()) <= int(values.max()) <= MAX_SHIFT:
            raise ValueError(f"{ref.field}: values must be in [-{MAX_SHIFT}, {MAX_SHIFT}] "
                             f"(shift amounts), got {int(values.min())}..{int(values.max())}")


# ------------------------------------------------------------------ static shapes
def _geometry(size, k: int, stride: int, padding: str, dilation: int = 1):
    """``(out, padded)`` of one spatial axis (TensorFlow's rule); ``None`` when dynamic."""
    if size is None:
        return None, None
    eff = (k - 1) * dilation + 1
    if padding == "same":
        out = -(-size // stride)
        return out, max(size, (out - 1) * stride + eff)
    out = (size - eff) // stride + 1
    if out <= 0:
        raise ValueError(f"input size {size} is smaller than the window extent {eff}")
    return out, size


def _transpose_geometry(size, k: int, stride: int, padding: str, dilation: int = 1):
    """``(out, full)`` of a transposed conv axis: output size and the accumulation buffer's."""
    if size is None:
        return None, None
    eff = (k - 1) * dilation + 1
    out = size * stride if padding == "same" else size * stride + max(eff - stride, 0)
    return out, max((size - 1) * stride + eff, out)


def _same(a, b) -> bool:
    return a is None or b is None or a == b


def _need(cond: bool, why: str) -> None:
    if not cond:
        raise ValueError(why)


def _spatial(shape, what: str):
    _need(len(shape) == 4, f"expects a rank-4 (N, H, W, C) {what}, got {_fmt(shape)}")
    return shape[1], shape[2], shape[3]


def _fmt(shape) -> str:
    return "(" + ", ".join("N" if i == 0 else ("?" if d is None else str(d))
                           for i, d in enumerate(shape)) + ")"


def _window_shape(shape, a: dict, kernel):
    """Output shape and largest buffer (values per sample) of a conv-like window op."""
    h, w, c = _spatial(shape, "input")
    ho, hp = _geometry(h, kernel[0], a["strides"][0], a["padding"], a.get("dilation", [1, 1])[0])
    wo, wp = _geometry(w, kernel[1], a["strides"][1], a["padding"], a.get("dilation", [1, 1])[1])
    return ho, wo, _prod((hp, wp, c))


def _prod(dims):
    return None if any(d is None for d in dims) else math.prod(dims)


def _neural_shape(a: dict, arrays: dict, shape):
    kind, kernel = a["type"], arrays["kernel"]
    if kind == "dense":
        _need(len(shape) >= 2 and _same(shape[-1], kernel[0]),
              f"a dense kernel {list(kernel)} needs inputs (N, ..., {kernel[0]}), "
              f"got {_fmt(shape)}")
        return (*shape[:-1], kernel[1]), None
    if a.get("conv1d"):
        _need(len(shape) == 3 and kernel[0] == 1,
              f"a conv1d op needs rank-3 (N, W, C) inputs and a (1, k, in, out) kernel, got "
              f"{_fmt(shape)} and {list(kernel)}")
        out, buffer = _neural_shape({**a, "conv1d": False}, arrays,
                                    (shape[0], 1, shape[1], shape[2]))
        return (None, out[2], out[3]), buffer
    h, w, c = _spatial(shape, "input")
    geo = {"strides": a["strides"], "padding": a["padding"], "dilation": a["dilation_rate"]}
    cin = kernel[3] if kind == "transpose" else kernel[2]
    _need(_same(c, cin), f"a {kind} kernel {list(kernel)} needs {cin} input channels, "
          f"got {_fmt(shape)}")
    if kind == "transpose":
        dims = [_transpose_geometry(size, kernel[i], a["strides"][i], a["padding"],
                                    a["dilation_rate"][i]) for i, size in enumerate((h, w))]
        out = (None, dims[0][0], dims[1][0], kernel[2])
        buffer = _prod((dims[0][1], dims[1][1], kernel[2]))
    else:
        ho, wo, buffer = _window_shape(shape, geo, kernel)
        out = (None, ho, wo, kernel[2] * kernel[3] if kind == "depthwise" else kernel[3])
    pool = a.get("pool")
    if pool:
        ho, wo, _ = _window_shape(out, pool, pool["pool_size"])
        out = (None, ho, wo, out[3])
    return out, buffer


def _attention_shape(a: dict, shapes):
    for s in shapes:
        _need(len(s) == 3, f"expects rank-3 (N, tokens, channels) q, k, v, got {_fmt(s)}")
        _need(s[2] is None or s[2] % a["num_heads"] == 0,
              f"{s[2]} channels do not split into {a['num_heads']} heads")
    q, k, v = shapes
    _need(_same(q[2], k[2]) and _same(k[1], v[1]),
          f"q {_fmt(q)}, k {_fmt(k)}, v {_fmt(v)} do not fit (q, k channels and k, v tokens "
          "must agree)")
    return (None, q[1], v[2])


def _concat_shape(axis: int, shapes):
    rank = len(shapes[0])
    _need(1 <= axis < rank, f"axis {axis} is not a non-batch axis of rank-{rank} inputs")
    for s in shapes[1:]:
        _need(len(s) == rank and all(_same(s[i], shapes[0][i]) for i in range(rank)
                                     if i != axis),
              f"inputs {[_fmt(t) for t in shapes]} differ off axis {axis}")
    parts = [s[axis] for s in shapes]
    total = None if None in parts else sum(parts)
    return tuple(total if i == axis else next((s[i] for s in shapes if s[i] is not None), None)
                 for i in range(rank))


def _merge(shapes, kind: str):
    rank = len(shapes[0])
    for s in shapes[1:]:
        _need(len(s) == rank and all(map(_same, s, shapes[0])),
              f"inputs {[_fmt(t) for t in shapes]} of an {kind} op differ")
    return tuple(next((s[i] for s in shapes if s[i] is not None), None) for i in range(rank))


def _broadcast(shapes):
    a, b = shapes
    _need(len(a) == len(b), f"inputs {_fmt(a)} and {_fmt(b)} of a mul op differ in rank")
    out = []
    for da, db in zip(a, b, strict=True):
        _need(da is None or db is None or da == db or 1 in (da, db),
              f"inputs {_fmt(a)} and {_fmt(b)} of a mul op do not broadcast")
        out.append(db if da == 1 else da if db == 1 else da if da is not None else db)
    return tuple(out)


def _slice_shape(a: dict, x: tuple) -> tuple:
    """Output shape of a ``slice`` op; every index must lie inside a static input axis (a
    dynamic axis is checked by the kernel, at run time, against the real size)."""
    _need(len(a["begin"]) == len(x) - 1, f"a slice of {len(a['begin'])} axes does not fit "
          f"{_fmt(x)}")
    shrink = set(a.get("shrink", []))
    out = [None]
    for axis, (b, e, s) in enumerate(zip(a["begin"], a["end"], a["strides"], strict=True),
                                     start=1):
        n = x[axis]
        _need(s != 0 and b >= 0 and e >= (0 if s > 0 else -1), f"slice {b}:{e}:{s} of axis "
              f"{axis} is not normalized (begin >= 0; end >= 0, or -1 with a negative stride)")
        if n is None:  # a dynamic axis: the kernel checks the indices against the real size
            if axis not in shrink:
                out.append(None)
            continue
        idx = range(b, e, s)
        _need(all(0 <= i < n for i in (idx[0], idx[-1])) if len(idx) else 0 <= b <= n,
              f"slice {b}:{e}:{s} of axis {axis} is outside its {n} entries")
        _need(axis not in shrink or len(idx) == 1, f"shrunk axis {axis} must select one entry")
        if axis not in shrink:
            out.append(len(idx))
    return tuple(out)


def _op_shape(rec: dict, arrays: dict, shapes: list):
    """Output shape (``None``: a dynamic dimension) and largest buffer of one op."""
    kind, a, x = rec["kind"], rec["attrs"], shapes[0] if shapes else None
    if kind == "neural":
        return _neural_shape(a, arrays, x)
    if kind == "buffer_conv":  # (k, C, F) kernel, or depthwise (k, C)
        k = arrays["kernel"]
        _need(k[0] == a["kernel_size"] and k[1] == x[-1], f"kernel {list(k)} does not fit "
              f"kernel_size {a['kernel_size']} and input {_fmt(x)}")
        return (*x[:-1], x[-1] if a.get("depthwise") else k[-1]), None
    if kind == "gap":
        _need(len(x) in (3, 4), f"expects a rank-3 (N, steps, C) or rank-4 (N, H, W, C) input, "
              f"got {_fmt(x)}")
        return (None, x[-1]), None
    if kind in ("maxpool", "avgpool"):
        ho, wo, buffer = _window_shape(x, a, a["pool_size"])
        return (None, ho, wo, x[3]), buffer
    if kind == "add":
        return _merge(shapes, kind), None
    if kind == "mul":
        return _broadcast(shapes), None
    if kind == "gmp":
        _need(len(x) in (3, 4), f"expects a rank-3 (N, steps, C) or rank-4 (N, H, W, C) input, "
              f"got {_fmt(x)}")
        return (None, x[-1]), None
    if kind == "upsample":
        _need(len(x) == 4, f"expects a rank-4 (N, H, W, C) input, got {_fmt(x)}")
        sh, sw = a["size"]
        return (None, None if x[1] is None else x[1] * sh, None if x[2] is None else x[2] * sw,
                x[3]), None
    if kind == "pad":
        _need(len(x) == len(a["pads"]) + 2, f"pads {a['pads']} do not fit {_fmt(x)}")
        grown = [None if d is None else d + sum(p) for d, p in zip(x[1:-1], a["pads"],
                                                                     strict=True)]
        return (None, *grown, x[-1]), None
    if kind == "concat":
        return _concat_shape(a["axis"], shapes), None
    if kind == "reshape":
        want, have = math.prod(a["target_shape"]), _prod(x[1:])
        _need(have is None or have == want, f"cannot reshape {_fmt(x)} to "
              f"{_fmt((None, *a['target_shape']))}")
        return (None, *a["target_shape"]), None
    if kind == "permute":
        _need(len(a["dims"]) == len(x) - 1, f"dims {a['dims']} do not permute {_fmt(x)}")
        return (None, *(x[d] for d in a["dims"])), None
    if kind == "slice":
        return _slice_shape(a, x), None
    if kind in ("attention", "attention_softmax"):
        return _attention_shape(a, shapes), None
    if kind in ("class_token", "extract_token"):
        _need(len(x) == 3, f"expects rank-3 (N, tokens, channels) inputs, got {_fmt(x)}")
        if kind == "class_token":
            return (None, None if x[1] is None else x[1] + 1, x[2]), None
        _need(x[1] is None or a["token"] < x[1],
              f"token {a['token']} is past the {x[1]} tokens of {_fmt(x)}")
        return (None, x[2]), None
    return x, None  # elementwise: affine, shift, clip, identity, shiftmax, (layer)norm, add_pos


def check_shapes(header: dict, max_values: int | None = None) -> list[tuple]:
    """Propagate shapes op by op from ``input_shape`` (``None``: dynamic) through a header that
    passed :func:`check_header`; return each op's output shape.

    Raises:
        ValueError: ``"ops[i] ('name', kind): ..."`` for the first op whose inputs do not fit
            (rank, channels, window larger than the input, token index, reshape size), or
            whose output or working buffer holds more than ``max_values`` values per sample.

    Example:
        >>> h = {"input_shape": [None, 4], "ops": [
        ...     {"name": "x", "kind": "input", "inputs": [], "attrs": {}, "arrays": {}},
        ...     {"name": "t", "kind": "extract_token", "inputs": ["x"], "attrs": {"token": 0},
        ...      "arrays": {}}]}
        >>> check_shapes(h)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: ops[1] ('t', extract_token): expects rank-3 (N, tokens, channels) inputs, ...
    """
    known: dict[str, tuple] = {}
    out = []
    for i, rec in enumerate(header["ops"]):
        try:
            if rec["kind"] == "input":
                shape, buffer = (None, *header["input_shape"][1:]), None
            else:
                arrays = {k: tuple(v["shape"]) for k, v in rec["arrays"].items()}
                shape, buffer = _op_shape(rec, arrays, [known[t] for t in rec["inputs"]])
            for what, size in ((f"output {_fmt(shape)}", _prod(shape[1:])),
                               ("working buffer", buffer)):
                if max_values is not None and size is not None and size > max_values:
                    raise ValueError(f"its {what} holds {size} values per sample, more than "
                                     f"the limit of {max_values} (FIXEDQ_ENGINE_MAX_VALUES)")
        except ValueError as err:
            raise ValueError(f"ops[{i}] ({rec['name']!r}, {rec['kind']}): {err}") from None
        known[rec["name"]] = shape
        out.append(shape)
    return out

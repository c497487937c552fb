"""The op registry: one :class:`OpSpec` per supported operation (DESIGN.md decision 8).

Each module of :mod:`fixedq.ops` describes one operation completely -- the float Keras layer(s)
it matches and the config conditions, its ``kind`` (the q-config / calibration kind), whether
it requantizes, what fuses into it, how its quantized Keras layer is built and its weights set,
which quantized layer(s) it converts from and how the engine op is made, and the engine op
kinds it produces -- and calls :func:`register`. ``quantize`` (``kind_of``,
``quantized_layer``, ``set_weights``, ReLU fusion), the converter and the docs' table loop
over :func:`all_ops`; none of them switches on type names.

Example:
    >>> import fixedq.ops
    >>> from fixedq.ops.registry import by_name
    >>> by_name("relu").kind, by_name("relu").engine_kinds
    ('relu', ('clip',))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

#: Fusion patterns: a ReLU right after the op, or a ReLU after a max-pool after the op
#: (ReLU and max-pool commute, so the ReLU moves into the op's requantization clip).
RELU = ("relu",)
MAXPOOL_RELU = ("maxpool", "relu")
#: The rules of :attr:`OpSpec.output_sign`.
OUTPUT_SIGNS = ("signed", "unsigned", "input", "any_input", "fused_relu")
#: How weight rounding (:mod:`fixedq.models.weight_rounding`) reads a weighted op's inputs and
#: kernel as rows of one least-squares problem per group: ``"dense"`` (inputs' last axis, kernel
#: ``(in, out)``), ``"conv2d"`` (input patches, kernel ``(kh, kw, in, out)``), ``"conv1d"`` (the
#: same over a ``(1, steps)`` image, kernel ``(k, in, out)``), ``"depthwise"`` (one group per
#: channel, kernel ``(kh, kw, channels, multiplier)``).
WEIGHT_ROWS = ("dense", "conv2d", "conv1d", "depthwise")


@dataclass(frozen=True)
class OpSpec:
    """Everything fixedq knows about one operation.

    Attributes:
        name: the op's registry name (its module name), e.g. ``"conv2d"``.
        kind: what ``quantize`` calls it (q-config / calibration kind, e.g. ``"neural"``);
            several ops may share a kind (they are quantized alike).
        float_layers: the float Keras layer classes it matches (exact class match).
        quantized_layers: the quantized layer classes it builds and converts from.
        engine_kinds: engine op kinds it becomes (keys of :data:`fixedq.engine.ops.KERNELS`).
        neural_type: for ``neural`` engine ops, the ``type`` attribute (targets allow it).
        accepts: ``accepts(node) -> str | None``: why this node's config is not supported
            (``None``: supported). Unsupported configs fall back to float.
        requantizes: its output is requantized with calibrated frac_bits.
        fuses: fusion patterns (:data:`RELU`, :data:`MAXPOOL_RELU`) whose ReLU folds into
            this op's output clip -- only when the op is actually quantized.
        weighted: it has a float kernel (and bias): weight bits, bias correction and weight
            rounding apply to it.
        build: ``build(node, in_specs, ctx) -> (layer, output_spec, pre)``; ``pre`` holds an
            optional re-gridding quantizer per input. Raises ``ValueError``/``KeyError`` when the
            node cannot be quantized (quantization then stops before it).
        set_weights: ``set_weights(layer, node)`` copies the float weights (``None``: none).
        to_engine: ``to_engine(layer, node, ins, specs, channels) -> Op`` (``None``: the
            quantized layer has no engine op yet).
        absorbs: names of the ops whose engine op the converter folds into this op's engine
            op when this op's output feeds only that op (conv-type neural ops absorb
            ``max_pooling2d`` as a fused pool).
        epilogue: for an op that others absorb: ``epilogue(op) -> attrs``, the attributes its
            engine ``op`` adds to the absorbing op (``max_pooling2d``: ``{"pool": {...}}``).
        fold_input_offset: ``fold_input_offset(op, lo)`` folds the window start ``lo`` of an
            asymmetric first input (eq. 37) into the engine ``op``'s parameters (neural ops:
            into the bias). ``None``: the engine adds ``lo`` back before the op runs
            (``in_offset<i>``).
        in_channel_axis: kernel axis of the input channels of a weighted op that can absorb a
            per-input-channel factor (range alignment); ``None``: it cannot.
        channel_homogeneous: scaling an input channel by ``s > 0`` scales the same output
            channel by ``s`` (ReLU without ``max_value``, max/global pooling, Dropout, Add):
            range alignment passes channel factors through it.
        size_dependent: its integer parameters depend on the input's spatial size (global
            average pooling's ``1/(H*W)``): a dynamic input size is pinned before calibration.
        output_sign: whether its quantized output is signed, as range alignment must know
            before anything is built (one of :data:`OUTPUT_SIGNS`): ``"signed"`` (the
            default), ``"unsigned"`` (ReLU), ``"input"`` (that of its first input: pooling,
            Dropout, reshapes), ``"any_input"`` (signed if any input is: Add),
            ``"fused_relu"`` (unsigned exactly when a ReLU is fused into it: neural ops).
        weight_rows: for a weighted op, how weight rounding reads its inputs and kernel (one of
            :data:`WEIGHT_ROWS`); ``None``: weight rounding leaves the op at nearest rounding.
        description: one line for the docs' table.
        example: optional ``example(rng) -> (float keras.Model, samples)``: a tiny float model
            that exercises this op and calibration samples for it. The shared layer harness
            (``tests/ops/harness.py``) runs every op's example through quantize, config and
            ``.keras`` round trips, engine parity at worst-case magnitudes and a
            straight-through gradient; ops without one use the harness' own table.
    """

    name: str
    kind: str
    float_layers: tuple[type, ...]
    quantized_layers: tuple[type, ...]
    engine_kinds: tuple[str, ...]
    to_engine: Callable | None
    build: Callable | None = None
    set_weights: Callable | None = None
    accepts: Callable | None = None
    requantizes: bool = False
    fuses: tuple[tuple[str, ...], ...] = ()
    weighted: bool = False
    neural_type: str | None = None
    absorbs: tuple[str, ...] = ()
    epilogue: Callable | None = None
    fold_input_offset: Callable | None = None
    in_channel_axis: int | None = None
    channel_homogeneous: bool = False
    size_dependent: bool = False
    output_sign: str = "signed"
    weight_rows: str | None = None
    description: str = ""
    example: Callable | None = None

    def __post_init__(self):
        if self.output_sign not in OUTPUT_SIGNS:
            raise ValueError(f"op {self.name!r}: output_sign {self.output_sign!r} is not one of "
                             f"{OUTPUT_SIGNS}")
        if self.weight_rows is not None and (self.weight_rows not in WEIGHT_ROWS
                                             or not self.weighted):
            raise ValueError(f"op {self.name!r}: weight_rows {self.weight_rows!r} needs a "
                             f"weighted op and one of {WEIGHT_ROWS}")

    def signed_output(self, node, inputs_signed: list[bool], relu_fused: bool) -> bool:
        """Whether this op's quantized output is signed (:attr:`output_sign`'s rule)."""
        rule = self.output_sign
        if rule == "unsigned":
            return False
        if rule == "input":
            return inputs_signed[0] if inputs_signed else True
        if rule == "any_input":
            return any(inputs_signed)
        if rule == "fused_relu":
            return not relu_fused
        return True

    def reason(self, node) -> str | None:
        """Why ``node`` cannot be quantized by this op (``None`` when it can)."""
        if node.config.get("data_format", "channels_last") != "channels_last":
            return f"data_format {node.config.get('data_format')!r} (only channels_last)"
        return None if self.accepts is None else self.accepts(node)


_OPS: dict[str, OpSpec] = {}
_BY_FLOAT: dict[type, OpSpec] = {}
_BY_QUANTIZED: dict[type, OpSpec] = {}


def register(spec: OpSpec) -> OpSpec:
    """Add ``spec`` to the registry; a float or quantized class may belong to one op only."""
    if spec.name in _OPS:
        raise ValueError(f"op {spec.name!r} is already registered")
    for cls in spec.float_layers:
        if cls in _BY_FLOAT:
            raise ValueError(f"{cls.__name__} is already matched by op "
                             f"{_BY_FLOAT[cls].name!r}")
    for cls in spec.quantized_layers:
        if cls in _BY_QUANTIZED:
            raise ValueError(f"{cls.__name__} already converts through op "
                             f"{_BY_QUANTIZED[cls].name!r}")
    _OPS[spec.name] = spec
    _BY_FLOAT.update(dict.fromkeys(spec.float_layers, spec))
    _BY_QUANTIZED.update(dict.fromkeys(spec.quantized_layers, spec))
    return spec


def all_ops() -> list[OpSpec]:
    """Every registered op, in registration order."""
    return list(_OPS.values())


def by_name(name: str) -> OpSpec:
    """The op registered as ``name`` (``KeyError`` if none)."""
    return _OPS[name]


def for_float(cls: type) -> OpSpec | None:
    """The op that matches float layer class ``cls`` (``None``: unsupported)."""
    return _BY_FLOAT.get(cls)


def for_node(node) -> OpSpec | None:
    """The op that quantizes graph ``node``: matched by class and accepted config."""
    spec = _BY_FLOAT.get(node.cls)
    if spec is None or spec.reason(node) is not None:
        return None
    return spec


def for_layer(layer) -> OpSpec | None:
    """The op that converts quantized Keras ``layer`` to the engine (``None``: none)."""
    return _BY_QUANTIZED.get(type(layer))


def kind_of(node) -> str:
    """What ``quantize`` does with ``node``: its op's kind, or ``"unsupported"``."""
    spec = for_node(node)
    return "unsupported" if spec is None else spec.kind


def requantizing_kinds() -> set[str]:
    """Kinds whose outputs are requantized with calibrated frac_bits."""
    return {s.kind for s in _OPS.values() if s.requantizes}


def quantized_classes() -> tuple[type, ...]:
    """Every quantized layer class the converter can turn into an engine op."""
    return tuple(cls for cls, spec in _BY_QUANTIZED.items() if spec.to_engine is not None)

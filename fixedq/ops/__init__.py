"""The op registry: one module per supported operation (DESIGN.md decision 8).

Importing this package registers every op. :func:`supported_layers` lists them for users,
:func:`markdown_table` renders the table in ``docs/quantization.md``. See
``docs/architecture.md`` ("How to add an op").

Example:
    >>> import fixedq.ops
    >>> row = next(r for r in fixedq.ops.supported_layers() if r.op == "conv2d")
    >>> row.float_layers, row.quantized_layers, row.engine_ops
    (('Conv2D',), ('QuantizedConv2D',), ('neural/conv2d',))
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass

from fixedq.ops.registry import OpSpec, all_ops, by_name, for_layer, for_node, kind_of

#: The op modules, one per operation; importing one registers it (order = the docs' table).
OP_MODULES = (
    "input_quantizer", "conv2d", "conv1d", "depthwise_conv2d", "conv2d_transpose",
    "depthwise_conv2d_transpose", "dense", "batch_normalization", "rescaling", "normalization",
    "relu", "activation", "leaky_relu", "prelu", "elu", "softmax",
    "max_pooling2d", "average_pooling2d", "global_average_pooling2d",
    "global_average_pooling1d", "global_max_pooling", "upsampling2d",
    "add", "multiply", "concatenate", "zero_padding", "reshape", "strided_slice",
    "dropout",
    "attention", "shiftmax", "layer_normalization", "layer_mad_normalization", "class_token",
    "add_position_embs",
    "extract_token", "buffer_temp_conv", "depthwise_buffer_temp_conv", "stateful_recurrent",
    "output_quantizer",
)
for _module in OP_MODULES:
    importlib.import_module(f"fixedq.ops.{_module}")

__all__ = ["OP_MODULES", "OpSpec", "SupportedLayer", "all_ops", "by_name", "for_layer",
           "for_node", "kind_of", "markdown_table", "supported_layers"]


@dataclass(frozen=True)
class SupportedLayer:
    """One row of :func:`supported_layers`.

    Attributes:
        op: registry name of the op (its module in :mod:`fixedq.ops`).
        float_layers: float Keras layer class names it quantizes.
        quantized_layers: the fixedq quantized layer class names it builds.
        engine_ops: engine op kinds (``neural/<type>`` for neural ops); empty: Keras only.
        targets: hardware profiles (:data:`fixedq.engine.targets.TARGETS`) that accept it.
        description: one line.
    """

    op: str
    float_layers: tuple[str, ...]
    quantized_layers: tuple[str, ...]
    engine_ops: tuple[str, ...]
    targets: tuple[str, ...]
    description: str


def _targets(spec: OpSpec) -> tuple[str, ...]:
    from fixedq.engine.targets import TARGETS

    if not spec.engine_kinds:
        return ()
    return tuple(name for name, t in TARGETS.items()
                 if all(k in t.kinds for k in spec.engine_kinds)
                 and (spec.neural_type is None or spec.neural_type in t.neural_types))


def supported_layers() -> list[SupportedLayer]:
    """The float Keras layers ``quantize`` supports: one row per registered op.

    Example:
        >>> import fixedq
        >>> "Dense" in {n for r in fixedq.supported_layers() for n in r.float_layers}
        True
    """
    rows = []
    for spec in all_ops():
        if not spec.float_layers:
            continue  # inserted by quantize itself (OutputQuantizer)
        engine = tuple(f"{k}/{spec.neural_type}" if k == "neural" else k
                       for k in spec.engine_kinds)
        rows.append(SupportedLayer(spec.name, tuple(c.__name__ for c in spec.float_layers),
                                   tuple(c.__name__ for c in spec.quantized_layers), engine,
                                   _targets(spec), spec.description))
    return rows


def markdown_table() -> str:
    """The supported-layer table of ``docs/quantization.md`` (a test checks they agree).

    Example:
        >>> markdown_table().splitlines()[0]
        '| Float layer | Quantized layer | Engine op | Targets | Notes |'
    """
    lines = ["| Float layer | Quantized layer | Engine op | Targets | Notes |",
             "|---|---|---|---|---|"]
    for row in supported_layers():
        lines.append("| " + " | ".join([
            ", ".join(row.float_layers), ", ".join(row.quantized_layers),
            ", ".join(f"`{e}`" for e in row.engine_ops) or "(Keras only)",
            ", ".join(row.targets) or "-", row.description]) + " |")
    return "\n".join(lines) + "\n"

"""Power-of-two range alignment: rescale activation channels so their ranges fill the grid.

Activations are quantized with power-of-two steps ``2^-f`` (``f = value_bits -
ceil(log2(range))``, eq. 22), so a channel whose calibrated range is just above a power of two
uses only about half of its integer levels: up to one bit of resolution is lost, half a bit on
average. At 4 bits that costs as much as all the weight quantization together.

The float function has a degree of freedom the grid does not: for a ReLU network, multiplying an
output channel ``c`` of a layer by ``s_c > 0`` and dividing the weights that read that channel by
``s_c`` changes nothing (``relu(s x) = s relu(x)``, max-pooling, average pooling, dropout and
``Add`` are positively homogeneous too). This transform picks, per channel, the ``s_c`` in
``[1, 2)`` that moves the channel's calibrated range (as chosen by its calibration method) to
just below the top of a power-of-two grid, so every channel uses all its levels. It is the
per-channel analogue of a float activation scale, expressed in power-of-two frac_bits.

A *channel group* is the set of tensors that must carry the same per-channel factor: a layer with
weights (the *producer*: its kernel's output channels and bias are multiplied), the ReLU /
MaxPool / GlobalAveragePooling / Dropout layers after it, ``Add`` layers together with all their
other inputs (and those inputs' producers), and the layers with weights that read any tensor of
the group (the *consumers*: their kernel's input channels are divided). A group is left alone
when it contains anything else (a model output, a standalone ReLU with ``max_value`` (one fused
into the layer before it is a per-channel cap instead, see :func:`channel_groups`),
BatchNormalization that was not folded, Concatenate, Flatten/Reshape, a consumer with a folded
Rescaling, ...), or when one of its tensors uses per-tensor activations. When a group holds
several requantized tensors (e.g. both inputs and the output of an ``Add``) the factor minimizes
the summed relative squared step ``sum_t (2^-f_t / range_t)^2`` over them.

Weight quantization is unaffected for producers (per-output-channel scales absorb ``s_c``
exactly) and for depthwise consumers; a Conv2D/Dense consumer sees its input rows divided by
factors in ``(1/2, 1]``.

The factors are recorded in the input quantizer's q-config entry (``range_alignment``:
``{layer: {"out": [...], "in": [...]}}``) and re-applied by ``quantize(model, q_config=cfg)``.

Example:
    >>> qmodel = quantize(model, qp, samples=x, range_alignment=True)  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fixedq.layers.spec import frac_bits_for_range
from fixedq.models import builders
from fixedq.models.asymmetric import select_window
from fixedq.models.calibration_methods import select_range
from fixedq.ops import registry
from fixedq.transforms.fold_batchnorm import scale_output_channels
from fixedq.transforms.graph import Graph, GraphNode

_MARGIN = 1.0 - 2.0**-20  # stay strictly below the grid top despite float rounding


@dataclass(frozen=True)
class ChannelGroup:
    """Tensors sharing one per-channel factor, the layers that produce them and that read them."""

    tensors: tuple[str, ...]
    producers: tuple[str, ...]
    consumers: tuple[str, ...]
    #: ``(tensor, max_value)`` of the group's tensors whose fused ReLU has a ``max_value`` cap
    caps: tuple[tuple[str, float], ...] = ()


def _in_axis(node: GraphNode) -> int | None:
    """The kernel axis of ``node``'s input channels when it can absorb ``1/s`` on its inputs
    (``OpSpec.in_channel_axis`` of its op), else ``None``."""
    spec = registry.for_node(node)
    if spec is None or spec.in_channel_axis is None or node.weight("kernel") is None:
        return None
    return spec.in_channel_axis


def _producible(node: GraphNode) -> bool:
    return _in_axis(node) is not None


def _transparent(node: GraphNode) -> bool:
    """Channel factors pass through ``node`` (its op is ``channel_homogeneous`` and it has no
    ``max_value`` clip)."""
    spec = registry.for_node(node)
    return (spec is not None and spec.channel_homogeneous
            and node.config.get("max_value") is None)


def _group_from(graph: Graph, start: str, capped: dict[str, float],
                passes: set[str]) -> ChannelGroup | None:
    tensors, todo = {start}, [start]
    producers, consumers = set(), set()
    while todo:
        name = todo.pop()
        node = graph.node(name)
        if graph.is_output(name):
            return None
        if _producible(node):
            producers.add(name)
        elif _transparent(node) or name in passes:
            for ref in node.refs:
                if ref.name not in tensors:
                    tensors.add(ref.name)
                    todo.append(ref.name)
        else:
            return None
        for user in graph.consumers(name):
            if builders.kind_of(user) == "neural":
                if (_in_axis(user) is None or len(user.refs) != 1
                        or user.folded_input is not None):
                    return None
                consumers.add(user.name)
            elif _transparent(user) or user.name in passes:
                if user.name not in tensors:
                    tensors.add(user.name)
                    todo.append(user.name)
            else:
                return None
    order = [n.name for n in graph.nodes]
    key = order.index
    # a ReLU(max_value) may be fused into a producer, an Add or a pooling: every tensor of
    # the group that carries such a cap is checked against it
    caps = tuple((t, capped[t]) for t in sorted(tensors, key=key) if t in capped)
    return ChannelGroup(tuple(sorted(tensors, key=key)), tuple(sorted(producers, key=key)),
                        tuple(sorted(consumers, key=key)), caps)


def _fused_path(graph: Graph, prod: str, relu: str) -> set[str]:
    """The nodes from ``prod`` (excluded) to its fused ``relu`` (included), e.g. a max-pool
    and the ReLU after it."""
    path, node = set(), graph.sole_consumer(prod)
    while node is not None:
        path.add(node.name)
        if node.name == relu:
            return path
        node = graph.sole_consumer(node.name)
    return path


def channel_groups(graph: Graph, fused: dict[str, str]) -> list[ChannelGroup]:
    """All alignable channel groups of ``graph`` (after sanitize / split / fold).

    A ReLU with ``max_value`` that is fused into the node before it (a layer with weights, an
    ``Add``, a pooling) does not stop a group: that node is recorded in
    :attr:`ChannelGroup.caps` and :func:`group_scales` keeps every
    scaled range of such a channel at or below the cap (``relu(min(s x, m)) = s relu(min(x,
    m / s))`` equals ``s relu(min(x, m))`` wherever ``x <= m / s``, i.e. on every value up to
    the scaled calibrated range). A standalone ReLU with ``max_value`` still does."""
    capped, passes = {}, set()
    for prod, relu in fused.items():
        max_value = graph.node(relu).config.get("max_value")
        if max_value is not None:
            capped[prod] = float(max_value)
            passes |= _fused_path(graph, prod, relu)
    groups, seen = [], set()
    for node in graph.nodes:
        if node.name in seen or not _producible(node):
            continue
        group = _group_from(graph, node.name, capped, passes)
        if group is None:
            seen.add(node.name)
            continue
        seen |= set(group.tensors)
        groups.append(group)
    return groups


def _signedness(graph: Graph, fused: dict[str, str], stats) -> dict[str, bool]:
    """Whether each node's quantized output is signed: its op's ``output_sign`` rule
    (:class:`fixedq.ops.registry.OpSpec`); unsupported nodes are signed."""
    signed: dict[str, bool] = {}
    for node in graph.nodes:
        if node.is_input:
            st = stats.get(node.name)
            signed[node.name] = st is None or bool(np.any(st.minimum < 0))
            continue
        spec = registry.for_node(node)
        ins = [signed.get(r.name, True) for r in node.refs]
        signed[node.name] = True if spec is None else spec.signed_output(
            node, ins, node.name in fused)
    return signed


def _value_bits(node: GraphNode, signed: bool, ctx: builders.BuildContext) -> int:
    bits = builders.activation_bits(node, ctx)
    return bits - 1 if signed else bits


def _aligned(rng: np.ndarray, vb: int) -> np.ndarray:
    """Per channel, the factor in ``[1, 2)`` that puts ``rng`` just under a grid's top."""
    top = (2.0**vb - 0.5) * _MARGIN
    r = np.where(rng > 0, rng, 1.0)
    f = np.floor(np.log2(top / r))
    s = top * 2.0**-f / r
    return np.where(rng > 0, s, np.nan)


def _cost(rng: np.ndarray, vb: int) -> np.ndarray:
    """Relative squared step ``(2^-f / range)^2`` per channel (0 for dead channels)."""
    out = np.zeros(len(rng))
    live = rng > 0
    if np.any(live):
        f = np.asarray(frac_bits_for_range(rng[live], vb, spread=10**6), dtype=np.float64)
        out[live] = (2.0**-f / rng[live]) ** 2
    return out


def group_scales(group: ChannelGroup, graph: Graph, stats, ctx: builders.BuildContext,
                 signed: dict[str, bool]) -> np.ndarray | None:
    """The per-channel factor of ``group`` (``None`` when there is nothing to align)."""
    items, names = [], []
    for name in group.tensors:
        node = graph.node(name)
        if builders.kind_of(node) not in builders.REQUANTIZING or name not in stats:
            continue
        cfg = ctx.layer_cfg.get(name, {})
        per_tensor = ctx.override(name, "per_tensor", ctx.qparams.per_tensor_activations)
        asym = signed[name] and ctx.override(name, "asymmetric",
                                             ctx.qparams.asymmetric_activations)
        if per_tensor or "frac_bits" in cfg or "range" in cfg or "window" in cfg:
            return None
        vb = _value_bits(node, signed[name], ctx)
        if asym:  # an n-bit window [low, high] fills like a symmetric range (high-low)/2, n-1
            low, high = select_window(stats[name], ctx.method_for(name), vb + 1)
            rng = (high - low) / 2.0
        else:
            rng = select_range(stats[name], ctx.method_for(name), signed[name], vb)
        items.append((np.asarray(rng, np.float64), vb))
        names.append(name)
    if not items:
        return None
    channels = len(items[0][0])
    if any(len(r) != channels for r, _ in items):
        return None
    caps = dict(group.caps)
    if any(name not in names for name in caps):  # a cap this group cannot check: leave it
        return None
    # against the largest value seen, not the method's clipped range:
    capped = [np.maximum(np.asarray(stats[name].maximum, np.float64), 0.0) / caps[name]
              for name in names if name in caps]  # exact on every calibration sample
    candidates = [_aligned(r, vb) for r, vb in items]
    best, best_cost = np.ones(channels), np.full(channels, np.inf)
    for cand in candidates:
        s = np.where(np.isnan(cand), 1.0, cand)
        for ratio in capped:  # a capped channel's scaled range must stay under its cap
            s = np.where(ratio * s <= 1.0, s, 1.0)
        cost = sum(_cost(r * s, vb) for r, vb in items)
        better = cost < best_cost
        best, best_cost = np.where(better, s, best), np.where(better, cost, best_cost)
    return best


def _scale_in(node: GraphNode, factor: np.ndarray) -> None:
    kernel = node.weight("kernel").astype(np.float64)
    shape = [1] * kernel.ndim
    axis = _in_axis(node)
    shape[axis] = kernel.shape[axis]
    node.weights = [(k, (kernel * factor.reshape(shape)).astype(v.dtype) if k == "kernel" else v)
                    for k, v in node.weights]


def _scale_out(node: GraphNode, factor: np.ndarray) -> None:
    kind = node.cls.__name__
    new = []
    for key, value in node.weights:
        if key == "kernel":
            value = scale_output_channels(value, factor, kind).astype(value.dtype)
        elif key == "bias":
            value = (value.astype(np.float64) * factor).astype(value.dtype)
        new.append((key, value))
    node.weights = new
    if node.folded_input is not None:  # keep the unfolded kernel consistent with the folded one
        unit, kernel = node.folded_input
        kernel = scale_output_channels(kernel, factor, kind).astype(kernel.dtype)
        node.folded_input = (unit, kernel)
        shape = [1] * kernel.ndim
        shape[-2] = len(unit)
        folded = (kernel.astype(np.float64) * np.asarray(unit).reshape(shape)).astype(np.float32)
        node.weights = [(k, folded if k == "kernel" else v) for k, v in node.weights]


def apply_alignment(graph: Graph, record: dict) -> None:
    """Apply recorded factors ``{layer: {"out": [...], "in": [...]}}`` to ``graph`` in place."""
    if not isinstance(record, dict):
        raise ValueError(f"q_config: range_alignment must be a dict, got {record!r:.80}")
    for name, entry in record.items():
        node = graph.node(name)
        if "in" in entry:
            _scale_in(node, 1.0 / np.asarray(entry["in"], np.float64))
        if "out" in entry:
            _scale_out(node, np.asarray(entry["out"], np.float64))


def _scale_stats(st, factor: np.ndarray) -> None:
    st.minimum = st.minimum * factor
    st.maximum = st.maximum * factor
    st.batch_pos = [np.asarray(v) * factor for v in st.batch_pos]
    st.batch_neg = [np.asarray(v) * factor for v in st.batch_neg]
    # histograms are relative to ``top`` (the scaled max): their counts stay valid


def align_ranges(graph: Graph, stats, ctx: builders.BuildContext,
                 fused: dict[str, str]) -> dict:
    """Choose and apply the factors of every channel group; scale ``stats`` to match.

    Returns the record ``{layer: {"out": [...], "in": [...]}}`` for the q-config.
    """
    signed = _signedness(graph, fused, stats)
    record: dict[str, dict] = {}
    for group in channel_groups(graph, fused):
        s = group_scales(group, graph, stats, ctx, signed)
        if s is None or np.all(s == 1.0):
            continue
        for name in group.tensors:
            if name in stats:
                _scale_stats(stats[name], s)
        for name in group.producers:
            record.setdefault(name, {})["out"] = s
        for name in group.consumers:
            entry = record.setdefault(name, {})
            entry["in"] = entry["in"] * s if "in" in entry else s
    out = {}
    for name in [n.name for n in graph.nodes if n.name in record]:
        out[name] = {k: [float(v) for v in vals] for k, vals in record[name].items()}
    apply_alignment(graph, out)
    return out


def wanted(value, qparams) -> bool:
    """``range_alignment`` argument -> on/off (``"auto"``: on at <= 4-bit activations)."""
    if isinstance(value, str) and value == "auto":
        return qparams.activation_bits <= 4 and not qparams.per_tensor_activations
    if isinstance(value, bool):
        return value
    raise TypeError(f"range_alignment must be True, False or 'auto', got {value!r}")



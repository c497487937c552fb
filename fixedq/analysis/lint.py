"""``lint(model)``: is a *float* model quantization-friendly? (seed 001, guidelines E.3)

Run it before quantizing, on the float model you train. It reports:

- ``depthwise_without_batchnorm``: a ``DepthwiseConv2D`` (or the depthwise stage of a
  ``SeparableConv2D``, which has no BatchNormalization between its two stages) not followed
  directly by ``BatchNormalization``. TIDL's rule has no exception: per-channel depthwise
  kernels without BN have wildly different ranges, which few bits cannot hold.
- ``conv_without_batchnorm``: any other convolution (``Conv2D``, ``Conv2DTranspose``, ...) not
  followed directly by ``BatchNormalization``, except the *last* convolutions: those from which
  no other convolution can be reached (e.g. the prediction layer of a detection head), where BN
  may hurt. A convolution with a fused non-linear activation (``activation="relu"``) followed
  by BN counts as without BN: BN comes after the activation and cannot be folded.
- ``missing_weight_decay`` / ``small_weight_decay``: kernels without an L2 regularizer, or with
  an L2 factor below ``min_weight_decay`` (default ``1e-5``; TIDL recommends about ``1e-4``).
  The factor is the one of ``keras.regularizers.L2(l2)`` (or ``L1L2``), i.e. the loss term
  ``l2 * sum(w^2)``. A compiled model whose optimizer has ``weight_decay >= min_weight_decay``
  counts as regularized everywhere. When *no* kernel is regularized, one model-level problem is
  reported instead of one per layer.

Example:
    >>> import keras
    >>> from fixedq.analysis.lint import lint
    >>> x = keras.Input((8, 8, 3))
    >>> y = keras.layers.DepthwiseConv2D(3, name="dw")(x)
    >>> y = keras.layers.Conv2D(4, 1, name="head")(y)
    >>> report = lint(keras.Model(x, y))
    >>> sorted({p.kind for p in report.problems})
    ['depthwise_without_batchnorm', 'missing_weight_decay']
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import keras

from fixedq.analysis.check import Problem

__all__ = ["LintReport", "lint"]

PROBLEM_KINDS = ("depthwise_without_batchnorm", "conv_without_batchnorm", "missing_weight_decay",
                 "small_weight_decay")

_DEPTHWISE = ("DepthwiseConv2D", "DepthwiseConv1D")
_SEPARABLE = ("SeparableConv2D", "SeparableConv1D")
_CONV = ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose",
         "DepthwiseConv2DTranspose")
# Kernel attributes that weight decay should cover, per layer type.
_REGULARIZED = {"DepthwiseConv2D": ("depthwise_regularizer",),
                "DepthwiseConv1D": ("depthwise_regularizer",),
                "SeparableConv2D": ("depthwise_regularizer", "pointwise_regularizer"),
                "SeparableConv1D": ("depthwise_regularizer", "pointwise_regularizer")}


@dataclass
class LintReport:
    """What :func:`lint` found in a float model; same interface as ``CheckReport``."""

    model: str
    layers_checked: int
    problems: list[Problem]
    thresholds: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"model": self.model, "kind": "float_model_lint", "ok": self.ok,
                "layers_checked": self.layers_checked, "thresholds": dict(self.thresholds),
                "problems": [asdict(p) for p in self.problems]}

    def format_table(self) -> str:
        lines = [f"float model {self.model!r}: {self.layers_checked} layers with weights "
                 "checked for quantization-friendliness (BatchNormalization, weight decay)", ""]
        if self.ok:
            lines.append("no problems found")
        else:
            lines.append(f"{len(self.problems)} problem(s) found:")
            lines.extend(f"  {p.layer}: {p.kind}: {p.message}" for p in self.problems)
        return "\n".join(lines)


def _l2_factor(regularizer) -> float | None:
    """The L2 factor of a regularizer (0.0 for one without L2; None when there is none)."""
    if regularizer is None:
        return None
    l2 = getattr(regularizer, "l2", None)
    if l2 is None and hasattr(regularizer, "get_config"):
        l2 = regularizer.get_config().get("l2")
    return float(l2) if l2 is not None else 0.0


def _optimizer_decay(model) -> float:
    opt = getattr(model, "optimizer", None)
    wd = getattr(opt, "weight_decay", None) if opt is not None else None
    try:
        return float(wd) if wd is not None else 0.0
    except (TypeError, ValueError):
        return 0.0


def lint(model, min_weight_decay: float = 1e-5) -> LintReport:
    """Report BatchNormalization and weight-decay problems of a float model (seed 001 §E.3).

    Args:
        model: a float Keras 3 functional/Sequential model (or a live tf-keras model).
        min_weight_decay: smallest acceptable L2 factor of a kernel regularizer.

    Returns:
        A :class:`LintReport` (``ok``, ``problems``, ``format_table()``, ``to_dict()``).

    Raises:
        TypeError: ``model`` is not a Keras model.
        ValueError: ``min_weight_decay`` is negative or not finite.

    Example:
        >>> print(lint(model).format_table())  # doctest: +SKIP
    """
    from fixedq.models.quantize import as_keras3
    from fixedq.transforms.graph import read_graph
    from fixedq.transforms.split_activations import is_linear_activation

    if isinstance(min_weight_decay, bool) or not isinstance(min_weight_decay, (int, float)) \
            or not 0 <= min_weight_decay < float("inf"):
        raise ValueError(f"min_weight_decay must be a finite number >= 0, got "
                         f"{min_weight_decay!r}")
    model = as_keras3(model)
    graph = read_graph(model)
    kind = {n.name: n.cls.__name__ for n in graph.nodes}
    convs = [n.name for n in graph.nodes if kind[n.name] in _DEPTHWISE + _SEPARABLE + _CONV]
    problems: list[Problem] = []

    reach: dict[str, bool] = {}  # node -> a convolution is reachable strictly after it
    for node in reversed(graph.nodes):
        users = graph.consumers(node.name)
        reach[node.name] = any(reach[u.name] or u.name in convs for u in users)
    for name in convs:
        node = graph.node(name)
        users = graph.consumers(name)
        activation = node.config.get("activation")
        linear = is_linear_activation(activation)
        has_bn = (len(users) == 1 and kind[users[0].name] == "BatchNormalization"
                  and not graph.is_output(name))
        fused = "" if linear else (f" (its fused activation {activation!r} comes before the "
                                   "BatchNormalization, which then cannot be folded)")
        if kind[name] in _SEPARABLE:
            problems.append(Problem(
                name, "depthwise_without_batchnorm",
                f"{kind[name]} has no BatchNormalization between its depthwise and pointwise "
                "stages: use DepthwiseConv2D + BatchNormalization + Conv2D 1x1 instead", 0.0,
                1.0))
            continue
        if has_bn and linear:
            continue
        if kind[name] in _DEPTHWISE:
            problems.append(Problem(
                name, "depthwise_without_batchnorm",
                f"{kind[name]} is not followed by BatchNormalization{fused}: every depthwise "
                "convolution needs one for quantization (seed 001 E.3)", 0.0, 1.0))
        elif reach[name]:
            problems.append(Problem(
                name, "conv_without_batchnorm",
                f"{kind[name]} is not followed by BatchNormalization{fused}; only the last "
                "convolutions of a network may go without", 0.0, 1.0))

    weighted = []
    for node in graph.nodes:
        try:
            layer = model.get_layer(node.name)
        except ValueError:
            continue
        attrs = _REGULARIZED.get(type(layer).__name__,
                                 ("kernel_regularizer",) if hasattr(layer, "kernel") else ())
        if not attrs or not layer.weights:
            continue
        factors = [_l2_factor(getattr(layer, a, None)) for a in attrs]
        weighted.append((layer.name, factors))
    opt_decay = _optimizer_decay(model)
    if opt_decay < min_weight_decay and weighted:
        if all(f is None or f == 0.0 for _, fs in weighted for f in fs):
            problems.append(Problem(
                model.name, "missing_weight_decay",
                f"no layer has weight decay (kernel_regularizer L2) and the optimizer has none: "
                f"train with keras.regularizers.L2(1e-4) on the {len(weighted)} layers with "
                "weights (seed 001 recommends about 1e-4)", 0.0, float(min_weight_decay)))
        else:
            for name, factors in weighted:
                known = [f for f in factors if f is not None and f > 0]
                if len(known) < len(factors):
                    problems.append(Problem(
                        name, "missing_weight_decay",
                        "kernel without an L2 regularizer: add keras.regularizers.L2(1e-4)",
                        0.0, float(min_weight_decay)))
                elif min(known) < min_weight_decay:
                    problems.append(Problem(
                        name, "small_weight_decay",
                        f"L2 factor {min(known):g} < {min_weight_decay:g}: too weak to keep "
                        "the weights compact; use about 1e-4", min(known),
                        float(min_weight_decay)))
    problems.sort(key=lambda p: PROBLEM_KINDS.index(p.kind))
    return LintReport(model.name, len(weighted), problems,
                      {"min_weight_decay": float(min_weight_decay)})


def is_quantized(model: keras.Model) -> bool:
    """Whether ``model`` contains fixedq quantized layers (``check``) or not (``lint``): the
    one check, :func:`fixedq.is_quantized` (kept here for existing importers)."""
    from fixedq.layers.base import is_quantized as check

    return check(model)

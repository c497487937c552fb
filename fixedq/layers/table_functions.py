"""The elementwise functions fixedq runs as integer tables (DESIGN.md decision 9, eq. 38):
every elementwise activation of ``keras.activations`` (relu/relu6 are clips, softmax has its
own op; glu, sparsemax, log_softmax and threshold are not elementwise or need arguments), and
:func:`tf_keras_hard_sigmoid`, tf-keras' ``hard_sigmoid`` (``clip(0.2 x + 0.5, 0, 1)``, not
Keras 3's ``relu6(x + 3) / 6``), which tf-keras files loaded by ``fixedq.load_model`` use.

Each :class:`TableFunction` has a float64 NumPy definition (what the table entries are
computed from, once, at build time), the Keras definition it reproduces (used for the
straight-through gradient in QAT), whether its output can be negative, and its parameters
(``negative_slope`` of ``leaky_relu``, ``alpha`` of ``elu``/``celu``). Parameters are rounded to
float32 first -- the value the float32 model multiplies by -- so that ``alpha * x`` of a
16-bit grid point is exact in float64.

:func:`for_activation` maps a Keras activation (a name like ``"swish"``, a config, or the
function object) to ``(name, params)``; ``None`` when it has no table here.

Example:
    >>> import numpy as np
    >>> FUNCTIONS["hard_sigmoid"].numpy(np.array([-3.0, 0.0, 1.5, 3.0])).tolist()
    [0.0, 0.5, 0.75, 1.0]
    >>> for_activation("swish"), for_activation("relu")
    (('silu', {}), None)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import keras
import numpy as np
from keras import activations, ops

__all__ = ["FUNCTIONS", "ReLUFunction", "TableFunction", "check_params", "for_activation",
           "output_signed", "tf_keras_hard_sigmoid"]

_SQRT2 = math.sqrt(2.0)
_GELU_C = math.sqrt(2.0 / math.pi)
_erf = np.frompyfunc(math.erf, 1, 1)


def _f32(value: float) -> float:
    """``value`` rounded to float32 (the value the float model computes with)."""
    return float(np.float32(value))


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # no overflow for large |x|


def _hard_sigmoid(x):
    return np.clip(x + 3.0, 0.0, 6.0) / 6.0  # one correctly rounded division: exact ties


def _tf_keras_hard_sigmoid(x):
    return np.clip(_f32(0.2) * x + 0.5, 0.0, 1.0)


@keras.saving.register_keras_serializable(package="fixedq", name="tf_keras_hard_sigmoid")
def tf_keras_hard_sigmoid(x):
    """tf-keras' (Keras 2) ``hard_sigmoid``: ``clip(0.2 x + 0.5, 0, 1)`` in the input's dtype,
    as ``tf_keras.backend.hard_sigmoid`` computes it. Keras 3 redefined ``hard_sigmoid`` as
    ``relu6(x + 3) / 6``; :func:`fixedq.load_model` maps the name in tf-keras files to this
    function so that a loaded model computes what it computed in tf-keras.

    Example:
        >>> import numpy as np
        >>> np.asarray(tf_keras_hard_sigmoid(np.array([-3.0, 0.0, 1.0], "float32"))).tolist()
        [0.0, 0.5, 0.699999988079071]
    """
    return ops.clip(ops.add(ops.multiply(x, 0.2), 0.5), 0.0, 1.0)


def _relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    """``keras.activations.relu`` with all its parameters (Keras 3's and tf-keras' formula):
    ``x`` above the threshold (0 below), clipped to ``[0, max_value]`` when given, minus
    ``negative_slope * relu(threshold - x)``."""
    s, t = _f32(negative_slope), _f32(threshold)
    y = np.where(x > t, x, 0.0) if t != 0 else np.maximum(x, 0.0)
    if max_value is not None:
        y = np.clip(y, 0.0, _f32(max_value))
    if s != 0:
        y = y - s * np.maximum(t - x, 0.0)
    return y


def _keras_relu(x, negative_slope=0.0, max_value=None, threshold=0.0):
    return activations.relu(x, negative_slope=_f32(negative_slope), threshold=_f32(threshold),
                            max_value=None if max_value is None else _f32(max_value))


@keras.saving.register_keras_serializable(package="fixedq")
class ReLUFunction:
    """``keras.layers.ReLU(max_value, negative_slope, threshold)`` as an activation function
    object (serializable, so an ``Activation`` layer can hold it). ``sanitize`` rewrites the
    ReLU layers that are not a plain clip (a threshold, or a negative slope with a
    ``max_value``) to ``Activation(ReLUFunction(...))``, which ``quantize`` turns into the
    integer table of the ``relu`` function; it computes exactly what the layer computed
    (``keras.activations.relu`` with the same arguments).

    Example:
        >>> import numpy as np
        >>> f = ReLUFunction(negative_slope=0.5, threshold=1.0)
        >>> np.asarray(f(np.array([-1.0, 0.5, 2.0], "float32"))).tolist()
        [-1.0, -0.25, 2.0]
    """

    def __init__(self, negative_slope: float = 0.0, max_value: float | None = None,
                 threshold: float = 0.0):
        self.negative_slope = float(negative_slope)
        self.max_value = None if max_value is None else float(max_value)
        self.threshold = float(threshold)

    def __call__(self, x):
        return activations.relu(x, negative_slope=self.negative_slope,
                                max_value=self.max_value, threshold=self.threshold)

    def params(self) -> dict:
        """The ``relu`` table function's parameters."""
        return {"negative_slope": self.negative_slope, "max_value": self.max_value,
                "threshold": self.threshold}

    def get_config(self) -> dict:
        return self.params()

    @classmethod
    def from_config(cls, config: dict) -> ReLUFunction:
        return cls(**config)


def _hard_silu(x):
    return x * np.clip(x + 3.0, 0.0, 6.0) / 6.0


def _gelu(x, approximate=False):
    if approximate:
        return 0.5 * x * (1.0 + np.tanh(_GELU_C * (x + 0.044715 * x**3)))
    return 0.5 * x * (1.0 + _erf(x / _SQRT2).astype(np.float64))


def _softplus(x):
    return np.logaddexp(0.0, x)


def _leaky(x, negative_slope=0.2):
    return np.where(x >= 0, x, _f32(negative_slope) * x)


def _elu(x, alpha=1.0):
    return np.where(x > 0, x, _f32(alpha) * np.expm1(np.minimum(x, 0.0)))


def _selu(x):
    alpha, scale = 1.6732632423543772848170429916717, 1.0507009873554804934193349852946
    return scale * np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0)))


def _celu(x, alpha=1.0):
    a = _f32(alpha)
    return np.maximum(x, 0.0) + a * np.expm1(np.minimum(x, 0.0) / a)


def _sparse_plus(x):
    return np.where(x <= -1, 0.0, np.where(x < 1, 0.25 * (x + 1.0) ** 2, x))


def _shrink(x, threshold=0.5, soft=True):
    t = _f32(threshold)
    if not soft:
        return np.where(np.abs(x) > t, x, 0.0)
    return np.where(x > t, x - t, np.where(x < -t, x + t, 0.0))


def _keras_shrink(fn):
    return lambda x, threshold=0.5: fn(x, threshold=_f32(threshold))


@dataclass(frozen=True)
class TableFunction:
    """One elementwise function.

    Attributes:
        name: its name in fixedq's layer configs (Keras' canonical name).
        numpy: ``numpy(x, **params)``: the float64 definition the table is computed from.
        keras: ``keras(x, **params)``: the Keras definition (straight-through gradient).
        signed: whether its output can be negative (unsigned outputs use all bits).
        params: parameter names and defaults.
    """

    name: str
    numpy: Callable
    keras: Callable
    signed: bool
    params: dict = field(default_factory=dict)


def _k(fn, **fixed):
    return lambda x, **p: fn(x, **{**fixed, **p})


def _keras_leaky(x, negative_slope=0.2):
    return ops.leaky_relu(x, negative_slope=_f32(negative_slope))


def _keras_elu(x, alpha=1.0):
    return ops.elu(x, alpha=_f32(alpha))


def _keras_celu(x, alpha=1.0):
    return ops.celu(x, alpha=_f32(alpha))


#: Every function with an integer table, by name.
FUNCTIONS: dict[str, TableFunction] = {f.name: f for f in (
    TableFunction("sigmoid", _sigmoid, _k(ops.sigmoid), False),
    TableFunction("hard_sigmoid", _hard_sigmoid, _k(ops.hard_sigmoid), False),
    TableFunction("tf_keras_hard_sigmoid", _tf_keras_hard_sigmoid, _k(tf_keras_hard_sigmoid),
                  False),
    TableFunction("relu", _relu, _keras_relu, True,
                  {"negative_slope": 0.0, "max_value": None, "threshold": 0.0}),
    TableFunction("silu", lambda x: x * _sigmoid(x), _k(ops.silu), True),
    TableFunction("hard_silu", _hard_silu, _k(ops.hard_silu), True),
    TableFunction("gelu", _gelu, _k(ops.gelu), True, {"approximate": False}),
    TableFunction("tanh", np.tanh, _k(ops.tanh), True),
    TableFunction("softplus", _softplus, _k(ops.softplus), False),
    TableFunction("softsign", lambda x: x / (1.0 + np.abs(x)), _k(ops.softsign), True),
    TableFunction("mish", lambda x: x * np.tanh(_softplus(x)), _k(activations.mish), True),
    TableFunction("leaky_relu", _leaky, _keras_leaky, True, {"negative_slope": 0.2}),
    TableFunction("elu", _elu, _keras_elu, True, {"alpha": 1.0}),
    TableFunction("selu", _selu, _k(ops.selu), True),
    TableFunction("celu", _celu, _keras_celu, True, {"alpha": 1.0}),
    TableFunction("linear", lambda x: x, lambda x: x, True),
    TableFunction("exponential", np.exp, _k(ops.exp), False),
    TableFunction("hard_tanh", lambda x: np.clip(x, -1.0, 1.0), _k(ops.hard_tanh), True),
    TableFunction("log_sigmoid", lambda x: -_softplus(-x), _k(ops.log_sigmoid), True),
    TableFunction("tanh_shrink", lambda x: x - np.tanh(x), _k(ops.tanh_shrink), True),
    TableFunction("squareplus", lambda x, b=4.0: (x + np.sqrt(x * x + _f32(b))) / 2,
                  lambda x, b=4.0: ops.squareplus(x, b=_f32(b)), False, {"b": 4.0}),
    TableFunction("sparse_plus", _sparse_plus, _k(ops.sparse_plus), False),
    TableFunction("sparse_sigmoid", lambda x: np.clip(0.5 * (x + 1.0), 0.0, 1.0),
                  _k(ops.sparse_sigmoid), False),
    TableFunction("soft_shrink", _shrink, _keras_shrink(ops.soft_shrink), True,
                  {"threshold": 0.5}),
    TableFunction("hard_shrink", lambda x, threshold=0.5: _shrink(x, threshold, soft=False),
                  _keras_shrink(ops.hard_shrink), True, {"threshold": 0.5}),
)}

#: Keras activation functions (as ``keras.activations.get`` returns them) -> table name.
_BY_KERAS = {getattr(activations, n): n for n in (
    "sigmoid", "hard_sigmoid", "silu", "hard_silu", "gelu", "tanh", "softplus", "softsign",
    "mish", "leaky_relu", "elu", "selu", "celu", "linear", "exponential", "hard_tanh",
    "log_sigmoid", "tanh_shrink", "squareplus", "sparse_plus", "sparse_sigmoid", "soft_shrink",
    "hard_shrink") if hasattr(activations, n)}
_BY_KERAS[tf_keras_hard_sigmoid] = "tf_keras_hard_sigmoid"


def for_activation(activation) -> tuple[str, dict] | None:
    """``(name, params)`` of the table for a Keras activation, or ``None``.

    Example:
        >>> for_activation("gelu"), for_activation("hard_swish")
        (('gelu', {'approximate': False}), ('hard_silu', {}))
    """
    try:
        fn = activations.get(activation)
    except (ValueError, TypeError):
        return None
    if isinstance(fn, ReLUFunction):
        return "relu", check_params("relu", fn.params())
    name = _BY_KERAS.get(fn)
    if name is None:
        return None
    return name, dict(FUNCTIONS[name].params)


def check_params(name: str, params: dict | None) -> dict:
    """The full parameter dict of function ``name`` (defaults filled in), checked.

    Raises:
        ValueError: ``name`` is not in :data:`FUNCTIONS`, or a parameter is unknown / not a
            finite number (``approximate``: a bool).

    Example:
        >>> check_params("leaky_relu", {"negative_slope": 0.1})
        {'negative_slope': 0.1}
    """
    if name not in FUNCTIONS:
        raise ValueError(f"function {name!r} has no integer table; known: {sorted(FUNCTIONS)}")
    fn = FUNCTIONS[name]
    params = dict(params or {})
    unknown = set(params) - set(fn.params)
    if unknown:
        raise ValueError(f"function {name!r} takes parameters {sorted(fn.params) or 'none'}, "
                         f"got {sorted(unknown)}")
    out = {**fn.params, **params}
    for key, value in out.items():
        if key == "max_value" and value is None:  # relu without an upper clip
            continue
        if key == "approximate":
            if not isinstance(value, bool):
                raise ValueError(f"{name}: approximate must be true or false, got {value!r}")
        elif isinstance(value, bool) or not isinstance(value, int | float) \
                or not math.isfinite(value):
            raise ValueError(f"{name}: {key} must be a finite number, got {value!r}")
        else:
            out[key] = float(value)
    return out


def output_signed(name: str, params: dict | None) -> bool:
    """Whether function ``name`` with ``params`` can give negative outputs (the table's output
    spec is then signed). ``relu``: with a negative slope, or a negative threshold without a
    ``max_value`` clip.

    Example:
        >>> output_signed("relu", {"threshold": 0.5}), output_signed("relu", {"threshold": -1.0})
        (False, True)
    """
    if name == "relu":
        p = check_params(name, params)
        return p["negative_slope"] != 0 or (p["threshold"] < 0 and p["max_value"] is None)
    return FUNCTIONS[name].signed

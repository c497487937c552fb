"""Quantization-aware training that cannot make a model worse: :func:`qat`.

``qat(qmodel, train)`` fine-tunes a copy of a quantized model (the output of
:func:`fixedq.quantize`) with Keras ``fit`` and returns the weights a validation metric chooses
(step 4), never a model worse than the starting point on that metric:

1. **validation**: ``validation`` if given, else a seeded split of ``train``
   (``validation_split``, 15 % by default); the starting model is evaluated on it first;
2. **peak learning rate from the data** (unless ``lr`` is given): a learning-rate range test,
   :func:`lr_range_test`: 48 Adam steps on training batches with the learning rate growing
   geometrically from 1e-6 to 1e-1, on the copy's weights (restored afterwards), the loss on a
   fixed probe of 256 training samples measured after each step. **Rule**: lr* = the largest
   lr before the smoothed probe loss passes 4x its start (the last lr tried if it never does);
   peak = lr* / ``safety`` (3), clipped to ``[min_lr, max_lr]`` = [1e-5, 3e-3]; with a
   ``teacher`` whose optimizer is known, at most the float model's own peak learning rate;
3. **training**: Adam, the peak learning rate cosine-decayed to 0 over ``epochs`` epochs of
   ``batch_size``; the loss is sparse categorical cross-entropy, from logits unless the model's
   output is a softmax (its last layer, or rows of probabilities), or ``loss`` if given;
4. **keep**: after each epoch the validation accuracy (ties: lower validation loss) is
   measured. With ``keep="end"`` (the default with a ``teacher``) the last epoch, the end of
   the cosine schedule, is returned unless it is below the start or below an earlier epoch
   whose gain is clear on its own; with ``keep="clear"`` (the default without a teacher) only
   such an epoch: it fixes clearly more validation samples than it breaks (``fixed - broken >
   significance * sqrt(fixed + broken)``, a one-sided McNemar-style test, 2.5 by default:
   bench/studies/qat_keep_study.md). If no epoch qualifies, the returned model has the
   start's weights, unchanged, and ``history.kept_epoch == 0``; either way it is not below
   the start on validation;
5. **collapse guard**: when the range test chose the peak and no epoch was kept while the last
   one is clearly below the start (``broken - fixed > 3 sqrt(fixed + broken)``, or a training
   loss that is not finite), the peak broke the model: training runs again from the start at a
   third of the peak, twice at most (``history.collapsed_peaks``).

The returned model stays bit-exact with the integer engine: the trainable variables are the float
weights, which the layers re-quantize on every call. The model passed in is never modified.

Example:
    >>> qmodel = fixedq.quantize(model, qparams, samples=x)  # doctest: +SKIP
    >>> best, history = fixedq.qat(qmodel, (x_train, y_train), epochs=3)  # doctest: +SKIP
    >>> history.kept_epoch, history.peak_lr  # doctest: +SKIP
    (3, 0.00031)
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from dataclasses import asdict, dataclass

import keras
import numpy as np

from fixedq.io.arrays import check_input_shape, check_samples, class_ids, read_labelled_samples
from fixedq.layers.base import is_quantized
from fixedq.progress import Progress

__all__ = ["DistillationLoss", "LRRangeTest", "LayerScaledAdam", "QATHistory", "float_training_lr",
           "low_bit_layers", "lr_range_test", "qat"]

RANGE_START, RANGE_END, RANGE_STEPS = 1e-6, 1e-1, 48
SAFETY, MIN_LR, MAX_LR, SIGNIFICANCE = 3.0, 1e-5, 3e-3, 2.5
DISTILL, TEMPERATURE = 0.5, 2.0
MIX_ALPHA = 0.4
#: a run that collapsed (see ``_collapsed``) is run again from the start at peak / 3, twice at most
RETRIES, RETRY_FACTOR, COLLAPSE = 2, 3.0, 3.0
_DIVERGED, _RISE, _WINDOW = 4.0, 4.0, 5


@dataclass(frozen=True)
class LRRangeTest:
    """What :func:`lr_range_test` measured (one entry per step) and the learning rate chosen.

    ``losses`` are the training-batch losses, ``probe`` the loss on a fixed probe set of training
    samples after each step (``probe_start`` before the first); ``lr_edge`` the largest learning
    rate before the smoothed probe loss passed 4x its start, ``basis`` ``"edge"`` if it did,
    ``"end"`` if it never did (``lr_edge`` is then the last learning rate tried);
    ``lr_at_min`` (where the smoothed probe loss was lowest) is recorded for information.

    Example:
        >>> t = LRRangeTest((1e-4, 1e-3), (0.5, 2.4), 0.5, (0.45, 2.4), 1e-4, 1e-4, "edge", 3.3e-5)
        >>> t.suggested
        3.3e-05
    """

    lrs: tuple[float, ...]
    losses: tuple[float, ...]
    probe_start: float
    probe: tuple[float, ...]
    lr_at_min: float
    lr_edge: float
    basis: str
    suggested: float


@dataclass(frozen=True)
class QATHistory:
    """Per-epoch record of :func:`qat` (epoch ``i`` is index ``i - 1`` of every tuple).

    ``val_metric`` is the validation accuracy in [0, 1] (``metric == "accuracy"``) or the
    validation loss (``metric == "loss"``); ``lr`` is the learning rate at the start of each
    epoch; ``val_changes`` the validation samples (fixed, broken) relative to the start;
    ``kept_epoch`` is the epoch whose weights were returned, 0 for the starting weights;
    ``distill`` the weight of the teacher term (0: no teacher); ``train_loss`` is the training
    objective (with the teacher term when distilling), ``val_loss`` always the labels' loss.
    ``collapsed_peaks`` are the peak learning rates of earlier runs that collapsed and were run
    again from the start at a third of the peak (the epochs recorded are the last run's;
    ``peak_lr`` is its peak). ``keep`` is the rule that chose ``kept_epoch`` (``"end"`` or
    ``"clear"``, see :func:`qat`).

    Example:
        >>> h = QATHistory("accuracy", 0.9, 0.3, (0.2,), (0.92,), (0.25,), (1e-4,), 1, 1e-4,
        ...                "range test")
        >>> h.improved, h.best_metric
        (True, 0.92)
    """

    metric: str
    start_metric: float
    start_loss: float
    train_loss: tuple[float, ...]
    val_metric: tuple[float, ...]
    val_loss: tuple[float, ...]
    lr: tuple[float, ...]
    kept_epoch: int
    peak_lr: float
    lr_source: str
    range_test: LRRangeTest | None = None
    val_changes: tuple[tuple[int, int], ...] = ()
    distill: float = 0.0
    collapsed_peaks: tuple[float, ...] = ()
    keep: str = "clear"

    @property
    def improved(self) -> bool:
        """Whether an epoch replaced the starting model (else the start was returned)."""
        return self.kept_epoch > 0

    @property
    def best_metric(self) -> float:
        """The validation metric of the returned model."""
        return self.val_metric[self.kept_epoch - 1] if self.kept_epoch else self.start_metric

    def to_dict(self) -> dict:
        """A JSON-ready dict (tuples become lists)."""
        return asdict(self)


# --------------------------------------------------------------------------- inputs


def _dataset_arrays(data, name: str):
    """Concatenate a ``tf.data.Dataset`` of ``(x, y)`` elements (batched or not) into arrays."""
    xs, ys = [], []
    for element in data.as_numpy_iterator():
        if not (isinstance(element, tuple) and len(element) == 2):
            raise ValueError(f"{name}: a tf.data.Dataset of (x, y) pairs is expected, got "
                             f"elements of type {type(element).__name__}")
        xs.append(np.asarray(element[0]))
        ys.append(np.asarray(element[1]))
    if not xs:
        raise ValueError(f"{name}: the dataset is empty")
    batched = data.element_spec[0].shape.rank is not None and xs[0].ndim == len(
        data.element_spec[0].shape) and data.element_spec[0].shape[0] is None
    join = np.concatenate if batched else np.stack
    return join(xs), join(ys)


def _arrays(data, name: str):
    """``(x, y)`` from a tuple, a ``.npz`` path or a ``tf.data.Dataset``."""
    if isinstance(data, (str, os.PathLike)):
        x, y = read_labelled_samples(data, what=name)
        if y is None:
            raise ValueError(f"{name} {str(data)!r} has no labels: store them as array 'y' "
                             "next to the samples 'x'")
        return x, y
    if type(data).__name__.endswith("Dataset") and hasattr(data, "as_numpy_iterator"):
        return _dataset_arrays(data, name)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return np.asarray(data[0]), np.asarray(data[1])
    raise TypeError(f"{name} must be an (x, y) tuple, a .npz path or a tf.data.Dataset, got "
                    f"{type(data).__name__}")


def _classes(model: keras.Model) -> int:
    if not _class_output(model):
        raise ValueError(f"qat infers a classification loss for outputs (N, C), C >= 2; model "
                         f"{model.name!r} has outputs {[tuple(o.shape) for o in model.outputs]}"
                         ": pass loss=... and labels that match them")
    return int(model.outputs[0].shape[1])


def _class_output(model: keras.Model) -> bool:
    """One output of shape ``(N, C)``, ``C >= 2``: integer labels can be class ids (else, with
    a given loss, they are targets and the metric is the loss)."""
    shape = tuple(model.outputs[0].shape)
    return len(model.outputs) == 1 and len(shape) == 2 and bool(shape[1]) and shape[1] >= 2


def _checked(model: keras.Model, data, name: str, classes: int | None):
    """Checked float32 samples and labels (int64 class ids when ``classes`` is known)."""
    x, y = _arrays(data, name)
    x = check_samples(x, f"{name} samples")
    if len(model.inputs) == 1:
        check_input_shape(x, model.inputs[0].shape, f"{name} samples")
    if classes is None:
        if len(y) != len(x):
            raise ValueError(f"{name}: {len(y)} labels for {len(x)} samples")
        return x.astype("float32"), y
    if y.ndim == 2 and y.shape[1] > 1 and y.shape[1] != classes:
        raise ValueError(f"{name} labels are one-hot rows of {y.shape[1]} classes but the model "
                         f"has {classes} outputs")
    ids = class_ids(y, len(x), f"{name} labels")
    if ids.max() >= classes:
        raise ValueError(f"{name} labels contain class id {int(ids.max())} but the model has "
                         f"{classes} outputs (ids 0..{classes - 1})")
    return x.astype("float32"), ids


def _is_probability_output(model: keras.Model, outputs: np.ndarray) -> bool:
    """A softmax last layer (a quantized model's integer softmax before its output
    Dequantizer included), or outputs that are rows of probabilities."""
    last = model.layers[-1]
    if type(last).__name__ == "Dequantizer" and len(model.layers) > 1:
        last = model.layers[-2]  # quantize puts the output's Dequantizer right after it
    kind = type(last).__name__.lower()
    activation = getattr(last, "activation", None)
    name = getattr(activation, "__name__", str(activation)).lower()
    if "softmax" in kind or "shiftmax" in kind or name == "softmax":
        return True
    return bool(np.all(outputs >= 0) and np.allclose(outputs.sum(axis=-1), 1.0, atol=2e-2))


# --------------------------------------------------------------------------- evaluation


def _evaluate(model, x, y, loss_fn, batch_size: int):
    """(loss, accuracy, per-sample correctness) on ``(x, y)``; accuracy is nan and correctness
    ``None`` for labels that are not class ids."""
    out = model.predict(x, batch_size=max(batch_size, 256), verbose=0)
    loss = float(keras.ops.convert_to_numpy(loss_fn(y, out)))
    if y.ndim == 1 and y.dtype.kind in "iu":
        hits = np.argmax(out, axis=-1) == y
        return loss, float(np.mean(hits)), hits
    return loss, math.nan, None


def _changes(start_hits, hits) -> tuple[int, int]:
    """(samples fixed, samples broken) relative to the start."""
    if start_hits is None:
        return 0, 0
    return int(np.sum(~start_hits & hits)), int(np.sum(start_hits & ~hits))


def _significant(fixed: int, broken: int, significance: float) -> bool:
    """One-sided McNemar-style test: ``fixed - broken > significance * sqrt(fixed + broken)``."""
    return fixed - broken > significance * math.sqrt(fixed + broken)


def _score(metric: str, loss: float, correct) -> tuple:
    """Larger is better: accuracy first, then lower loss; or lower loss alone."""
    loss = loss if math.isfinite(loss) else math.inf
    return (int(np.sum(correct)), -loss) if metric == "accuracy" else (-loss,)


# --------------------------------------------------------------------------- range test


def lr_range_test(model: keras.Model, x: np.ndarray, y, loss, *, batch_size: int = 32,
                  steps: int = RANGE_STEPS, start_lr: float = RANGE_START,
                  end_lr: float = RANGE_END, safety: float = SAFETY, min_lr: float = MIN_LR,
                  max_lr: float = MAX_LR, probe_size: int = 256, seed: int = 0,
                  progress=None) -> LRRangeTest:
    """Learning-rate range test on ``model``; its weights are restored afterwards.

    Runs up to ``steps`` Adam steps on shuffled training batches, the learning rate growing
    geometrically from ``start_lr`` to ``end_lr``, and measures after each step the loss on a
    fixed probe set (``probe_size`` training samples, inference mode): a fixed probe removes the
    batch-to-batch noise that hides the signal when a converged model is fine-tuned. Stops when
    the probe loss passes 4x its minimum or is not finite. With ``L0`` the probe loss before the
    first step and the probe losses smoothed by a centered moving average over 5 steps, the rule
    (bench/studies/qat_lr_study.md) is:

    - ``lr* =`` the **edge**, the largest lr before the smoothed probe loss first passes
      ``4 L0`` (training breaks down), or the last lr tried if it never does;
    - suggested peak ``= clip(lr* / safety, min_lr, max_lr)``, ``safety`` 3.

    The first rule (the edge at ``1.1 L0``, or the lr of the minimum when the loss fell, divided
    by 10) gave 1e-5 to 1.6e-4 on converged models: the rounding flips of 4-bit weights move the
    probe loss of a converged model by 10-60 % at any learning rate, so a small rise measured
    noise, and such peaks left the models where they started.

    Example:
        >>> t = lr_range_test(qmodel, x, y, "sparse_categorical_crossentropy")  # doctest: +SKIP
        >>> 1e-5 <= t.suggested <= 3e-3  # doctest: +SKIP
        True
    """
    optimizer = keras.optimizers.Adam(float(start_lr))
    model.compile(optimizer=optimizer, loss=loss)
    return _range_test(model, optimizer, x, y, loss, batch_size=batch_size, steps=steps,
                       start_lr=start_lr, end_lr=end_lr, safety=safety, min_lr=min_lr,
                       max_lr=max_lr, probe_size=probe_size, seed=seed, progress=progress)


def _range_test(model, optimizer, x, y, loss, *, batch_size, steps, start_lr, end_lr, safety,
                min_lr, max_lr, probe_size, seed, progress) -> LRRangeTest:
    """:func:`lr_range_test` on a model already compiled with ``optimizer`` (an Adam whose
    learning rate is a variable); its weights are restored, not the optimizer's state."""
    loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    saved = [w.copy() for w in model.get_weights()]
    rng = np.random.default_rng(seed)
    probe_idx = rng.permutation(len(x))[:probe_size]
    xp, yp = x[probe_idx], y[probe_idx]

    def probe_loss() -> float:
        out = model.predict_on_batch(xp)
        return float(keras.ops.convert_to_numpy(loss_fn(yp, out)))

    lrs = np.geomspace(start_lr, end_lr, steps)
    order = np.concatenate([rng.permutation(len(x)) for _ in range(
        -(-steps * batch_size // len(x)))])
    start = probe_loss()
    losses, probe = [], []
    try:
        for i, lr in enumerate(lrs):
            optimizer.learning_rate.assign(float(lr))
            idx = order[i * batch_size:(i + 1) * batch_size]
            value = float(np.asarray(model.train_on_batch(x[idx], y[idx])).ravel()[0])
            after = probe_loss()
            if progress is not None:
                progress.update(i + 1)
            if not (math.isfinite(value) and math.isfinite(after)):
                break
            losses.append(value)
            probe.append(after)
            if after > _DIVERGED * min(min(probe), start):
                break
    finally:
        model.set_weights(saved)
    lr_min, lr_edge, basis = _choose(lrs[:len(probe)], start, np.asarray(probe))
    suggested = float(min(max(lr_edge / safety, min_lr), max_lr))
    return LRRangeTest(tuple(float(v) for v in lrs[:len(probe)]), tuple(losses), start,
                       tuple(probe), lr_min, lr_edge, basis, suggested)


def _smooth(values: np.ndarray) -> np.ndarray:
    """Centered moving average over ``_WINDOW`` steps (fewer at the ends)."""
    kernel = np.ones(_WINDOW)
    return (np.convolve(values, kernel, mode="same")
            / np.convolve(np.ones_like(values), kernel, mode="same"))


def _choose(lrs, start: float, probe: np.ndarray) -> tuple[float, float, str]:
    """(lr at the minimum smoothed probe loss, the edge lr, "edge" or "end")."""
    if len(probe) == 0:
        return float(RANGE_START), float(RANGE_START), "edge"
    smooth = _smooth(probe)
    lr_min = float(lrs[int(np.argmin(smooth))])
    above = np.nonzero(smooth > _RISE * start)[0]
    if len(above) == 0:
        return lr_min, float(lrs[-1]), "end"
    return lr_min, float(lrs[max(int(above[0]) - 1, 0)]), "edge"


# --------------------------------------------------------------------------- distillation


@keras.saving.register_keras_serializable(package="fixedq")
class DistillationLoss(keras.losses.Loss):
    """Cross-entropy on the labels plus a softened teacher term (Hinton-style distillation).

    ``y_true`` packs one row per sample: the class id in column 0, then the teacher's
    log-probabilities (``C`` columns). With ``a = weight`` and ``T = temperature``::

        loss = (1 - a) * CE(id, student) + a * T^2 * KL(softmax(t / T) || softmax(s / T))

    A sample whose class id is ``-1`` has no label (a mixture of two training samples, see
    :func:`qat`'s ``mix``): its loss is the soft term alone, ``T^2 * KL(...)``.

    where ``t`` are the teacher's log-probabilities and ``s`` the student's logits (or its
    log-probabilities when ``from_logits`` is False). ``T^2`` keeps the gradient scale of the
    soft term independent of ``T``. Probability outputs (a quantized softmax) are exactly 0
    for the classes below their grid: the soft term then compares the two distributions over
    the classes where the student's probability is positive (both renormalized there); over
    all classes it pushed the largest probability down without end (MobileNetV2 0.35 at
    4 bits fell from 66 % to 22-43 % validation accuracy in the bench before this rule).

    Example:
        >>> import numpy as np
        >>> loss = DistillationLoss(0.5, 2.0)
        >>> logits = np.array([[2.0, 0.0]], "float32")
        >>> teacher = np.log(np.array([[0.8, 0.2]], "float32"))
        >>> y = np.concatenate([np.array([[0.0]], "float32"), teacher], axis=1)
        >>> round(float(loss(y, logits)), 4)
        0.0836
        >>> round(float(DistillationLoss(0.0, 2.0)(y, logits)), 4)  # labels only: CE
        0.1269
    """

    def __init__(self, weight: float = DISTILL, temperature: float = TEMPERATURE,
                 from_logits: bool = True, name: str = "distillation", **kwargs):
        super().__init__(name=name, **kwargs)
        self.weight, self.temperature, self.from_logits = (float(weight), float(temperature),
                                                           bool(from_logits))

    def call(self, y_true, y_pred):
        ops = keras.ops
        labelled = y_true[:, 0] >= 0  # -1: a sample with the teacher's targets only
        ids = ops.cast(ops.maximum(y_true[:, 0], 0.0), "int32")
        teacher = y_true[:, 1:]
        student = y_pred if self.from_logits else ops.log(ops.clip(y_pred, 1e-7, 1.0))
        ce = keras.losses.sparse_categorical_crossentropy(ids, student, from_logits=True)
        t = self.temperature
        t_logits, s_logits = teacher / t, student / t
        if not self.from_logits:
            # a quantized softmax outputs 0 below its grid (1/256 at 8 bits): the log of those
            # classes is unknown and gets no gradient, so the soft term compares the two
            # distributions over the classes the student represents (both renormalized there);
            # over all classes it would push the largest probability down without end
            present = y_pred > 0
            t_logits = ops.where(present, t_logits, -1e9)
            s_logits = ops.where(present, s_logits, -1e9)
        soft_t = ops.softmax(t_logits, axis=-1)
        kl = ops.sum(ops.where(soft_t > 0, soft_t * (ops.log_softmax(t_logits, axis=-1)
                                                     - ops.log_softmax(s_logits, axis=-1)),
                               0.0), axis=-1)
        labels_weight = ops.where(labelled, 1.0 - self.weight, 0.0)
        soft_weight = ops.where(labelled, self.weight, 1.0)
        return labels_weight * ce + soft_weight * t * t * kl

    def get_config(self) -> dict:
        return {**super().get_config(), "weight": self.weight,
                "temperature": self.temperature, "from_logits": self.from_logits}


def _check_distill(teacher, distill, temperature) -> None:
    if teacher is not None and not isinstance(teacher, keras.Model):
        raise TypeError(f"teacher must be the float keras.Model, got {type(teacher).__name__}")
    if not _real(distill) or not 0.0 <= distill <= 1.0:
        raise ValueError(f"distill must be a number in [0, 1], got {distill!r}")
    if not _real(temperature) or not (
            math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive finite number, got {temperature!r}")


def _real(value) -> bool:
    """A real number (Python or NumPy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_mix(teacher, mix, mix_alpha) -> None:
    if not _real(mix) or not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be a number in [0, 1], got {mix!r}")
    if not _real(mix_alpha) or not (
            math.isfinite(mix_alpha) and mix_alpha > 0):
        raise ValueError(f"mix_alpha must be a positive finite number, got {mix_alpha!r}")
    if mix and teacher is None:
        raise ValueError("mix= needs teacher= (the mixtures' only targets are the teacher's "
                         "outputs on them): pass the float model as teacher, or mix=0")


def _mixed(x: np.ndarray, y_fit: np.ndarray, teacher: keras.Model, qmodel: keras.Model,
           fraction: float, alpha: float, rng: np.random.Generator,
           batch_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y_fit)`` with ``round(fraction * n)`` random rows (at least one; ``fraction >
    0``) replaced by mixtures of two training samples, labelled ``-1`` with the teacher's
    log-probabilities on the mixture.

    Example:
        >>> import numpy as np, keras
        >>> m = keras.Sequential([keras.Input((2,)), keras.layers.Dense(3)])
        >>> x = np.eye(2, dtype="float32")[[0, 1, 0, 1]]
        >>> y = np.zeros((4, 4), "float32")
        >>> xm, ym = _mixed(x, y, m, m, 0.5, 0.4, np.random.default_rng(0), 32)
        >>> int((ym[:, 0] == -1).sum()), bool(np.allclose(xm.sum(1), 1))
        (2, True)
    """
    n = len(x)
    picked = rng.choice(n, max(1, int(round(fraction * n))), replace=False)
    partner = rng.integers(0, n, len(picked))
    lam = rng.beta(alpha, alpha, len(picked)).astype(x.dtype).reshape(-1, *[1] * (x.ndim - 1))
    x, y_fit = x.copy(), y_fit.copy()
    x[picked] = lam * x[picked] + (1 - lam) * x[partner]
    y_fit[picked, 0] = -1.0
    y_fit[picked, 1:] = _teacher_log_probs(teacher, qmodel, x[picked], batch_size)
    return x, y_fit


def _teacher_log_probs(teacher: keras.Model, qmodel: keras.Model, x: np.ndarray,
                       batch_size: int) -> np.ndarray:
    """The teacher's log-probabilities on ``x`` (float32), checked against ``qmodel``."""
    t_in = [tuple(i.shape[1:]) for i in teacher.inputs]
    q_in = [tuple(i.shape[1:]) for i in qmodel.inputs]
    t_out = [tuple(o.shape[1:]) for o in teacher.outputs]
    q_out = [tuple(o.shape[1:]) for o in qmodel.outputs]
    if t_in != q_in or t_out != q_out:
        raise ValueError(f"teacher {teacher.name!r} has inputs {t_in} and outputs {t_out}; the "
                         f"quantized model has inputs {q_in} and outputs {q_out}: pass the float "
                         "model it was quantized from")
    out = np.asarray(teacher.predict(x, batch_size=max(batch_size, 256), verbose=0), "float64")
    if _is_probability_output(teacher, out):
        out = np.log(np.clip(out, 1e-7, 1.0))
    out = out - out.max(axis=-1, keepdims=True)
    return (out - np.log(np.exp(out).sum(axis=-1, keepdims=True))).astype("float32")


# --------------------------------------------------------------------------- learning rates


def float_training_lr(model: keras.Model) -> float | None:
    """The peak learning rate of the optimizer ``model`` was compiled with, or ``None``.

    A constant learning rate is returned as is; a schedule's largest value as its config states
    it (``initial_learning_rate``, or ``warmup_target`` when a warm-up leads to a larger one).
    ``None`` when the model has no optimizer (not compiled, or loaded with ``compile=False``)
    or its learning rate is not a number or a known schedule. A model saved to ``.keras``
    after ``compile`` keeps its optimizer, so a float model loaded from its file still knows it.

    Example:
        >>> import keras
        >>> m = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
        >>> float_training_lr(m) is None
        True
        >>> m.compile(keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(2e-3, 100)),
        ...           "mse")
        >>> float_training_lr(m)
        0.002
    """
    optimizer = getattr(model, "optimizer", None)
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        return None
    value = optimizer.get_config().get("learning_rate")
    if isinstance(value, dict):
        config = value.get("config", {})
        peaks = [config.get(key) for key in ("initial_learning_rate", "warmup_target")]
        peaks = [float(v) for v in peaks if isinstance(v, (int, float)) and not isinstance(
            v, bool)]
        value = max(peaks) if peaks else None
    if isinstance(value, (int, float, np.floating)) and not isinstance(value, bool):
        value = float(f"{float(value):.7g}")  # a float32 variable: 0.002, not 0.0020000000949...
        return value if math.isfinite(value) and value > 0 else None
    return None


def low_bit_layers(model: keras.Model, max_bits: int = 4) -> tuple[str, ...]:
    """Names of the layers of ``model`` whose weights have at most ``max_bits`` bits.

    Example:
        >>> low_bit_layers(qmodel)  # doctest: +SKIP
        ('conv2', 'logits')
    """
    return tuple(layer.name for layer in model.layers
                 if isinstance(getattr(layer, "qmax", None), int) and layer.trainable_weights
                 and layer.qmax <= 2 ** (max_bits - 1) - 1)


def max_calibrated_low_bit(model: keras.Model, max_bits: int = 4) -> tuple[str, ...]:
    """Names (as the q-config and ``overrides=`` spell them: an input by its input layer's
    name) of the layers of ``model`` whose output of at most ``max_bits`` bits was
    calibrated by ``max`` (their q-config entry records ranges but no method, range or
    frac_bits): QAT trains weights but never moves these grids, and ``mse`` (quantize's
    default at 4 bits since docs/calibration.md "Default") starts QAT from better ones.

    Example:
        >>> max_calibrated_low_bit(qmodel)  # doctest: +SKIP
        ('conv2', 'add')
    """
    names = []
    for layer in model.layers:
        entry = getattr(layer, "qconfig", None)
        if not isinstance(entry, dict) or "calibration" not in entry:
            continue
        bits = entry.get("activation_bits")
        if (isinstance(bits, int) and bits <= max_bits
                and not {"calibration_method", "range", "frac_bits", "window"} & set(entry)):
            names.append(str(entry.get("layer", layer.name)))  # the q-config's name
    return tuple(names)


@keras.saving.register_keras_serializable(package="fixedq")
class LayerScaledAdam(keras.optimizers.Adam):
    """Adam whose learning rate is multiplied by ``scales[variable.path]`` (1 elsewhere).

    :func:`qat` uses it for ``low_bit_lr_scale``: the variables of layers with at most 4-bit
    weights take ``scale`` times the learning rate of the others.

    Example:
        >>> opt = LayerScaledAdam({"dense/kernel": 3.0}, learning_rate=1e-3)
        >>> opt.scales
        {'dense/kernel': 3.0}
    """

    def __init__(self, scales: dict | None = None, **kwargs):
        super().__init__(**kwargs)
        self.scales = {str(k): float(v) for k, v in (scales or {}).items()}

    def build(self, variables):
        super().build(variables)
        # update_step receives the backend's variables: look the scale up by position
        self._by_index = [self.scales.get(v.path, 1.0) for v in variables]

    def update_step(self, gradient, variable, learning_rate):
        scale = self._by_index[self._get_variable_index(variable)]
        if scale != 1.0:
            learning_rate = keras.ops.multiply(learning_rate, scale)
        return super().update_step(gradient, variable, learning_rate)

    def get_config(self) -> dict:
        return {**super().get_config(), "scales": dict(self.scales)}


# --------------------------------------------------------------------------- qat


def _copy(qmodel: keras.Model) -> keras.Model:
    model = keras.models.clone_model(qmodel)
    model.set_weights(qmodel.get_weights())
    return model


def _split(x, y, fraction: float, seed: int):
    if not 0 < fraction < 1:
        raise ValueError(f"validation_split must be in (0, 1), got {fraction!r}")
    n_val = int(round(len(x) * fraction))
    if n_val < 1 or n_val >= len(x):
        raise ValueError(f"validation_split {fraction} of {len(x)} training samples leaves an "
                         f"empty {'validation' if n_val < 1 else 'training'} split; give more "
                         "samples or validation=(x, y)")
    order = np.random.default_rng(seed).permutation(len(x))
    val, fit = order[:n_val], order[n_val:]
    return (x[fit], y[fit]), (x[val], y[val])


def _check_options(epochs, batch_size, lr) -> None:
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    if lr is not None and (not _real(lr) or not math.isfinite(lr) or lr <= 0):
        raise ValueError(f"lr must be a positive finite number or None (range test), got {lr!r}")


def _optimizer(model: keras.Model, low_bit_lr_scale: float):
    """Adam, or :class:`LayerScaledAdam` scaling the low-bit layers' variables."""
    if low_bit_lr_scale == 1.0:
        return keras.optimizers.Adam(1e-3)
    low = set(low_bit_layers(model))
    scales = {v.path: float(low_bit_lr_scale) for layer in model.layers if layer.name in low
              for v in layer.trainable_variables}
    return LayerScaledAdam(scales, learning_rate=1e-3)


class _Cosine(keras.callbacks.Callback):
    """Set Adam's learning rate before every step: ``peak`` cosine-decayed to 0 over ``total``."""

    def __init__(self, optimizer, peak: float, total: int):
        super().__init__()
        self.optimizer, self.peak, self.total, self.step = optimizer, float(peak), total, 0

    def lr(self, step: int) -> float:
        return 0.5 * self.peak * (1.0 + math.cos(math.pi * min(step, self.total) / self.total))

    def on_train_batch_begin(self, batch, logs=None):
        self.optimizer.learning_rate.assign(self.lr(self.step))
        self.step += 1


class _Steps(keras.callbacks.Callback):
    def __init__(self, bar: Progress):
        super().__init__()
        self.bar = bar

    def on_train_batch_end(self, batch, logs=None):
        self.bar.update(batch + 1)


def qat(qmodel: keras.Model, train, validation=None, epochs: int = 3, *, lr: float | None = None,
        batch_size: int = 32, loss=None, validation_split: float = 0.15, seed: int = 0,
        safety: float = SAFETY, min_lr: float = MIN_LR, max_lr: float = MAX_LR,
        range_steps: int = RANGE_STEPS, keep: str = "auto", significance: float = SIGNIFICANCE,
        teacher: keras.Model | None = None, distill: float = DISTILL,
        temperature: float = TEMPERATURE, mix: float = 0.0, mix_alpha: float = MIX_ALPHA,
        low_bit_lr_scale: float = 1.0, on_epoch=None, verbose: bool = True,
        stream=None) -> tuple[keras.Model, QATHistory]:
    """Fine-tune a copy of a quantized model; return the kept one by validation and its history.

    Args:
        qmodel: a model returned by :func:`fixedq.quantize` (not modified).
        train: ``(x, y)`` arrays, a ``.npz`` path holding ``x`` and ``y``, or a
            ``tf.data.Dataset`` of ``(x, y)``; labels are class ids or one-hot rows.
        validation: the same kinds; ``None`` splits ``validation_split`` of ``train`` (seeded).
        epochs: training epochs (the cosine decay reaches 0 at the end of the last one). 12
            ended higher than 3 in 13 of 15 QAT bench runs (4-bit, with a teacher; mean +1.3
            points) at about twice the wall time (docs/quantization.md, "More epochs").
        lr: peak learning rate; ``None`` runs :func:`lr_range_test` on the training data (and,
            when the ``teacher``'s optimizer is known, :func:`float_training_lr`, caps the peak
            at the float model's own peak learning rate). A run at the range test's peak that
            collapses (no epoch kept, the last one clearly below the start: ``_collapsed``)
            runs again from the start at a third of the peak, twice at most; a given ``lr`` is
            used as is.
        batch_size: training batch size.
        loss: a Keras loss; ``None`` infers sparse categorical cross-entropy (from logits unless
            the output is a softmax). With a given loss and non-class labels the metric is the
            validation loss.
        validation_split: fraction of ``train`` held out when ``validation`` is ``None``.
        seed: seeds the split, the range test's batches and the shuffling of every epoch.
        safety, min_lr, max_lr, range_steps: the range test's rule (see :func:`lr_range_test`)
            and its number of steps.
        keep: which epoch replaces the start. ``"end"``: the last epoch (the end of the cosine
            schedule) whenever its validation metric is not below the start's nor below the
            epoch ``"clear"`` would keep; otherwise ``"clear"``'s choice. ``"clear"``: only an
            epoch whose gain is clear on its own (``significance``). ``"auto"`` (default):
            ``"end"`` with a ``teacher``, ``"clear"`` without. Why: on the 24 earlier bench
            runs of the small nets the last epoch was never below the start on validation and,
            pooled, clearly above it (fixed 251 / broken 129 images, z = 6.3; 138/62 with a
            teacher, 113/67 without), while each run's gain of ~1 point is too small for 600
            validation images to show; on 30 bench runs per variant, ``"end"`` ended below
            the PTQ start on the test images in 0 runs with a teacher and 2 without (0.1 and
            0.3 point), so the call without a teacher keeps the stricter rule
            (docs/quantization.md, "How the rule was chosen").
        significance: the ``"clear"`` rule (the only rule with ``keep="clear"``; with
            ``"end"`` it can still pick an earlier epoch over the last): an epoch's gain is
            clear if, on the validation samples, it fixes clearly more than it breaks:
            ``fixed - broken > significance *
            sqrt(fixed + broken)`` (a one-sided McNemar-style test; 2.5 ~ 99.4 % confidence,
            chosen on validation data by bench/studies/qat_keep_study.py; 0 accepts any gain).
            Noise-level gains are not kept: they do not carry to new data. The bar grows with
            the validation split: on more images the same gain rate is clearer.
        teacher: the float model ``qmodel`` was quantized from (optional): its outputs on the
            training samples become soft targets (distillation). Training then minimizes
            ``(1 - distill) * CE(labels) + distill * T^2 * KL(teacher_T || student_T)`` with both
            outputs softened by ``temperature`` ``T`` (logits divided by ``T``; probability
            outputs are turned back into log-probabilities first). Selection and the reported
            validation loss still use the labels only. Needs class labels.
        distill: the weight of the teacher term in [0, 1] (0: labels only).
        temperature: the softening temperature ``T > 0``.
        mix: with a ``teacher``, the fraction (at least one sample when > 0) of every
            epoch's training samples replaced by
            mixtures ``lam * x_i + (1 - lam) * x_j`` of two training samples (``lam ~
            Beta(mix_alpha, mix_alpha)``, drawn anew every epoch) whose only target is the
            teacher's output on the mixture (:class:`DistillationLoss` with label ``-1``): the
            teacher's outputs on new inputs instead of repeating the training samples, which
            the float and quantized models already fit (their soft term has weight 1
            whatever ``distill``, which weighs the labelled rows). 0: off. Same steps per
            epoch. Measured no better than 0 (docs/quantization.md).
        mix_alpha: the Beta distribution's parameter (> 0) for ``mix``.
        low_bit_lr_scale: the learning rate of layers with at most 4-bit weights
            (:func:`low_bit_layers`) is this times the peak (range test and training); 1.0:
            one learning rate for every layer.
        on_epoch: called as ``on_epoch(epoch, model)`` after every training epoch (1-based,
            the model holding that epoch's weights, before the next epoch starts) for your own
            logging, metrics or checkpoints; it must not change the model. Its return value is
            ignored; an exception it raises stops ``qat``. After a collapsed run (see ``lr``)
            the new run's epochs are numbered from 1 again.
        verbose: one line per stage and epoch on ``stream`` (default ``sys.stderr``).

    Returns:
        ``(model, history)``: a new model holding the kept epoch's weights (the starting
        weights if no epoch qualified under ``keep``) and a :class:`QATHistory`.

    Raises:
        ValueError: a float model, labels that do not match the outputs (count, class ids,
            one-hot width), samples of the wrong shape, an empty split, bad options, a teacher
            whose inputs or outputs do not match ``qmodel``'s.
        TypeError: ``qmodel`` is not a Keras model, or ``train`` of an unsupported kind.

    Example:
        >>> best, history = qat(qmodel, (x, y), epochs=2, verbose=False)  # doctest: +SKIP
        >>> history.best_metric >= history.start_metric  # doctest: +SKIP
        True
    """
    if not isinstance(qmodel, keras.Model):
        raise TypeError(f"qat expects a quantized keras.Model, got {type(qmodel).__name__}")
    if not is_quantized(qmodel):
        raise ValueError(f"model {qmodel.name!r} is not quantized (no fixedq quantized layers): "
                         "quantize it first with fixedq.quantize(model, qparams, samples)")
    _check_options(epochs, batch_size, lr)
    if not _real(low_bit_lr_scale) or not (
            math.isfinite(low_bit_lr_scale) and low_bit_lr_scale > 0):
        raise ValueError(f"low_bit_lr_scale must be a positive finite number, got "
                         f"{low_bit_lr_scale!r}")
    _check_distill(teacher, distill, temperature)
    _check_mix(teacher, mix, mix_alpha)
    if keep not in ("auto", "end", "clear"):
        raise ValueError(f"keep must be 'auto', 'end' or 'clear', got {keep!r}")
    if keep == "auto":
        keep = "end" if teacher is not None else "clear"
    if on_epoch is not None and not callable(on_epoch):
        raise TypeError(f"on_epoch must be callable as on_epoch(epoch, model), got "
                        f"{type(on_epoch).__name__}")
    stream = sys.stderr if stream is None else stream
    classes = _classes(qmodel) if loss is None else None
    x, y = _checked(qmodel, train, "train", classes)
    if validation is None:
        (x, y), (xv, yv) = _split(x, y, validation_split, seed)
    else:
        xv, yv = _checked(qmodel, validation, "validation", classes)
    class_labels = y.ndim == 1 and y.dtype.kind in "iu" and _class_output(qmodel)
    metric = "accuracy" if classes is not None or class_labels else "loss"
    model = _copy(qmodel)
    if loss is None:
        probs = _is_probability_output(
            model, keras.ops.convert_to_numpy(model(xv[:64], training=False)))
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=not probs)
    loss_fn = keras.losses.get(loss) if isinstance(loss, str) else loss
    train_loss_fn, y_fit = loss, y
    if teacher is not None:
        if metric != "accuracy":
            raise ValueError("teacher= (distillation) needs class labels and the inferred "
                             "classification loss; got non-class labels or loss=...")
        probs = _is_probability_output(
            model, keras.ops.convert_to_numpy(model(xv[:64], training=False)))
        soft = _teacher_log_probs(teacher, qmodel, x, batch_size)
        train_loss_fn = DistillationLoss(distill, temperature, from_logits=not probs)
        y_fit = np.concatenate([y[:, None].astype("float32"), soft], axis=1)
    # one compile: the range test, the evaluations and the epochs share the traced functions;
    # the learning rate is set before every step (range test, then the cosine schedule)
    optimizer = _optimizer(model, low_bit_lr_scale)
    model.compile(optimizer=optimizer, loss=train_loss_fn)

    def say(text):
        if verbose:
            print(text, file=stream, flush=True)

    stale = max_calibrated_low_bit(qmodel)
    if stale:
        say(f"qat: note: {len(stale)} layer(s) with activations of 4 bits or less were "
            f"calibrated by max ({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}); "
            "QAT cannot move an activation's grid: quantize with the default calibration "
            "(mse at 4 bits; samples as a NumPy array or a tf.data.Dataset) for a better "
            "start (docs/calibration.md)")
    start_loss, start_acc, start_hits = _evaluate(model, xv, yv, loss_fn, batch_size)
    start_metric = start_acc if metric == "accuracy" else start_loss
    say(f"qat: start: validation {_fmt(metric, start_metric)}, loss {start_loss:.4f} "
        f"({len(xv)} samples; {len(x)} training)")
    best_score = _score(metric, start_loss, start_hits)
    best_weights, kept = [w.copy() for w in model.get_weights()], 0

    range_test = None
    if lr is None:
        with Progress("qat: lr range test", total=range_steps, unit="steps", stream=stream,
                      enabled=verbose) as bar:
            range_test = _range_test(model, optimizer, x, y_fit, train_loss_fn,
                                     batch_size=batch_size,
                                     steps=range_steps, start_lr=RANGE_START, end_lr=RANGE_END,
                                     safety=safety, min_lr=min_lr, max_lr=max_lr,
                                     probe_size=256, seed=seed, progress=bar)
            t = range_test
            found = (f"loss passes 4x its start after lr {t.lr_edge:.2g}" if t.basis == "edge"
                     else f"stopped at lr {t.lr_edge:.2g}")
            bar.update(len(t.lrs), f"{found} -> peak lr {t.suggested:.2g}")
        for var in optimizer.variables:  # fresh Adam state (moments, step count) for training
            var.assign(np.zeros(var.shape, var.dtype))
        peak, source = range_test.suggested, "range test"
        float_lr = None if teacher is None else float_training_lr(teacher)
        if float_lr is not None and float_lr < peak:
            peak, source = float_lr, "range test, capped at the float model's peak lr"
            say(f"qat: peak lr {peak:.2g}: the float model's own peak learning rate (its "
                f"optimizer), below the range test's {range_test.suggested:.2g}")
    else:
        peak, source = float(lr), "given"

    steps_per_epoch = -(-len(x) // batch_size)
    start_weights, collapsed = best_weights, []
    for attempt in range(RETRIES + 1):
        if attempt:  # the start's weights and a fresh Adam state, a third of the peak
            collapsed.append(peak)
            peak = peak / RETRY_FACTOR
            model.set_weights(start_weights)
            for var in optimizer.variables:
                var.assign(np.zeros(var.shape, var.dtype))
            say(f"qat: the run at peak lr {collapsed[-1]:.2g} collapsed (no epoch kept, the "
                f"last one clearly below the start); again from the start at {peak:.2g}")
        cosine = _Cosine(optimizer, peak, epochs * steps_per_epoch)
        rng = np.random.default_rng(seed + 1)
        train_loss, val_metric, val_loss, lrs, changes = [], [], [], [], []
        for epoch in range(1, epochs + 1):
            lr_now = cosine.lr((epoch - 1) * steps_per_epoch)
            order = rng.permutation(len(x))
            with Progress(f"qat: epoch {epoch}/{epochs}", total=steps_per_epoch, unit="steps",
                          stream=stream, enabled=verbose) as bar:
                x_ep, y_ep = x[order], y_fit[order]
                if mix:
                    x_ep, y_ep = _mixed(x_ep, y_ep, teacher, qmodel, mix, mix_alpha, rng,
                                        batch_size)
                fit = model.fit(x_ep, y_ep, batch_size=batch_size, epochs=1,
                                shuffle=False, verbose=0, callbacks=[cosine, _Steps(bar)])
                tl = float(fit.history["loss"][-1])
                vl, acc, hits = _evaluate(model, xv, yv, loss_fn, batch_size)
                value = acc if metric == "accuracy" else vl
                score = _score(metric, vl, hits)
                fixed, broken = _changes(start_hits if metric == "accuracy" else None, hits)
                clear = metric != "accuracy" or _significant(fixed, broken, significance)
                better = math.isfinite(tl) and clear and score > best_score
                if better:
                    best_score, kept = score, epoch
                    best_weights = [w.copy() for w in model.get_weights()]
                bar.update(steps_per_epoch, f"lr {lr_now:.2g}, train loss {tl:.4f}, validation "
                           f"{_fmt(metric, value)} (+{fixed}/-{broken}), loss {vl:.4f}"
                           f"{', best' if better else ''}")
            if on_epoch is not None:
                on_epoch(epoch, model)
            train_loss.append(tl)
            val_metric.append(value)
            val_loss.append(vl)
            changes.append((fixed, broken))
            lrs.append(lr_now)
            if not math.isfinite(tl):
                say(f"qat: training diverged at epoch {epoch} (loss {tl}); stopping")
                break
        if (keep == "end" and kept != epochs and len(val_metric) == epochs
                and math.isfinite(tl) and math.isfinite(vl) and score >= best_score):
            # the end of the schedule: not below the clear epoch, or the start when there is
            # none (best_score is never below the start's; accuracy, then lower loss on a tie;
            # the loss alone for a loss metric)
            kept, best_score = epochs, score
            best_weights = [w.copy() for w in model.get_weights()]
        if kept or lr is not None or not _collapsed(metric, start_loss, tl, vl, fixed, broken):
            break
    model.set_weights(best_weights)
    if kept:
        how = " (the end of the schedule)" if kept == epochs and keep == "end" else ""
        say(f"qat: kept epoch {kept}{how}: validation {_fmt(metric, val_metric[kept - 1])} "
            f"(start {_fmt(metric, start_metric)})")
    else:
        say(f"qat: no epoch beat the start (validation {_fmt(metric, start_metric)}); "
            "returning the starting weights unchanged")
    history = QATHistory(metric, start_metric, start_loss, tuple(train_loss), tuple(val_metric),
                         tuple(val_loss), tuple(lrs), kept, peak, source, range_test,
                         tuple(changes), distill if teacher is not None else 0.0,
                         tuple(collapsed), keep)
    return model, history


def _collapsed(metric: str, start_loss: float, train_loss: float, val_loss: float, fixed: int,
               broken: int) -> bool:
    """Whether a run's last epoch shows the peak learning rate broke the model: the training
    loss is not finite, or the last epoch is clearly below the start on validation (``broken -
    fixed > 3 sqrt(fixed + broken)``; for a loss metric: more than twice the start's loss).

    Example:
        >>> _collapsed("accuracy", 0.5, 2.3, 2.3, 9, 337)
        True
        >>> _collapsed("accuracy", 0.5, 0.4, 0.4, 7, 5)
        False
    """
    if not (math.isfinite(train_loss) and math.isfinite(val_loss)):
        return True
    if metric == "accuracy":
        return broken - fixed > COLLAPSE * math.sqrt(fixed + broken)
    return val_loss > 2.0 * start_loss


def _fmt(metric: str, value: float) -> str:
    return f"accuracy {100 * value:.2f} %" if metric == "accuracy" else f"loss {value:.4f}"

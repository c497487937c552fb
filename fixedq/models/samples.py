"""Calibration samples: NumPy arrays, ``tf.data.Dataset`` objects or generators, streamed.

:func:`iter_batches` yields validated float32 batches without ever holding all samples in
memory (only NumPy arrays, which are already in memory, are sliced). Dtypes and shapes are
checked by :mod:`fixedq.io.arrays`, the reader of ``.npy``/``.npz`` files that the ``fixedq``
command uses too: ``quantize(model, samples=read_samples("calib.npz"))``.

Example:
    >>> import numpy as np
    >>> batches = list(iter_batches(np.zeros((10, 4), "float32"), (None, 4), 8, batch_size=4))
    >>> [len(b) for b in batches]
    [4, 4]
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator

import numpy as np

from fixedq.io import check_dtype, check_input_shape

DEFAULT_NUM_SAMPLES = 1024


def rereadable(samples) -> bool:
    """Whether calibration can read ``samples`` twice (its histogram pass): ``None`` (random
    samples are made), a NumPy array or a ``tf.data.Dataset``.

    Example:
        >>> rereadable(np.zeros((2, 3))), rereadable(iter([np.zeros((2, 3))]))
        (True, False)
    """
    return samples is None or isinstance(samples, np.ndarray) or hasattr(
        samples, "as_numpy_iterator")


def random_samples(input_shape, num_samples: int, uint8_like: bool, seed: int = 0) -> np.ndarray:
    """Random calibration data when the user gives none (with a warning from the caller)."""
    rng = np.random.default_rng(seed)
    shape = (num_samples, *input_shape[1:])
    if uint8_like:
        return rng.uniform(0, 255, shape).astype("float32")
    return rng.standard_normal(shape).astype("float32")


def _to_array(batch) -> np.ndarray:
    if isinstance(batch, dict):
        raise TypeError("samples yielding dicts are not supported: yield arrays or (x, y) tuples")
    if isinstance(batch, (tuple, list)) and len(batch) in (2, 3) and not np.isscalar(batch[0]):
        batch = batch[0]  # (x, y) or (x, y, weights): keep x
    return np.asarray(batch)


def _is_one_sample(arr: np.ndarray, input_shape) -> bool:
    """Whether ``arr`` is exactly one sample (no batch axis) of ``input_shape``."""
    expected = tuple(input_shape[1:])
    return arr.ndim == len(expected) and all(e is None or e == g
                                             for e, g in zip(expected, arr.shape, strict=True))


def _check_batch(arr: np.ndarray, input_shape, index: int) -> np.ndarray:
    name = f"samples (batch {index})"
    check_dtype(arr.dtype, name)
    if _is_one_sample(arr, input_shape):
        arr = arr[None]
    check_input_shape(arr, input_shape, name)
    arr = arr.astype("float32", copy=False)
    finite = np.isfinite(arr)
    if not finite.all():
        nan = int(np.count_nonzero(np.isnan(arr)))
        inf = arr.size - int(np.count_nonzero(finite)) - nan
        raise ValueError(f"{name} contain {nan} NaN and {inf} infinite values (of {arr.size}); "
                         "calibration needs finite inputs")
    return arr


def iter_batches(samples, input_shape, num_samples: int, batch_size: int | None = None,
                 epochs: int = 1) -> Iterator[np.ndarray]:
    """Yield float32 batches of at most ``num_samples`` samples per epoch.

    Raises:
        ValueError: empty samples, wrong shapes, non-finite values, bad counts.
        TypeError: samples of an unsupported kind.
    """
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) \
            or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")
    if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
        raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
    bs = int(batch_size or 32)
    if isinstance(samples, np.ndarray) or (hasattr(samples, "__array__")
                                          and not hasattr(samples, "__iter__")):
        arr = np.asarray(samples)
        check_dtype(arr.dtype, "samples")
        if arr.size == 0 or arr.ndim == 0:
            raise ValueError(f"samples are empty (shape {arr.shape}); give at least one sample")
        if _is_one_sample(arr, input_shape):
            arr = arr[None]
        check_input_shape(arr, input_shape)  # the whole array's shape, not a batch's
        arr = arr[:num_samples]
        for _ in range(epochs):
            for i, start in enumerate(range(0, len(arr), bs)):
                yield _check_batch(arr[start:start + bs], input_shape, i)
        return
    if samples is None:
        raise ValueError("samples is None")
    for epoch in range(epochs):
        source = samples
        if hasattr(samples, "as_numpy_iterator"):  # tf.data.Dataset
            source = samples.as_numpy_iterator()
        elif epoch > 0 and iter(samples) is samples:
            warnings.warn("a generator of samples can be read only once; using 1 epoch",
                          stacklevel=3)
            return
        seen = 0
        pending: list[np.ndarray] = []
        for i, batch in enumerate(itertools.islice(iter(source), None)):
            arr = _check_batch(_to_array(batch), input_shape, i)
            arr = arr[: num_samples - seen]
            pending.append(arr)
            seen += len(arr)
            if batch_size is None:
                yield np.concatenate(pending)
                pending = []
            while pending and sum(len(p) for p in pending) >= bs:
                joined = np.concatenate(pending)
                yield joined[:bs]
                pending = [joined[bs:]] if len(joined) > bs else []
            if seen >= num_samples:
                break
        if pending and sum(len(p) for p in pending):
            yield np.concatenate(pending)
        if seen == 0:
            raise ValueError("samples are empty: the dataset or generator yielded nothing")

"""Calibration samples: NumPy arrays, ``tf.data.Dataset`` objects or generators, streamed.

:func:`iter_batches` yields validated float32 batches without ever holding all samples in
memory (only NumPy arrays, which are already in memory, are sliced).

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

DEFAULT_NUM_SAMPLES = 1024


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
    arr = np.asarray(batch)
    if arr.dtype == object:
        raise TypeError(f"samples must be numeric arrays, got dtype {arr.dtype}")
    return arr


def _check_batch(arr: np.ndarray, input_shape, index: int) -> np.ndarray:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise TypeError(f"samples must be numeric, got dtype {arr.dtype} in batch {index}")
    expected = tuple(input_shape[1:])
    if arr.ndim == len(expected):  # a single sample
        arr = arr[None]
    got = arr.shape[1:]
    if len(got) != len(expected) or any(e is not None and e != g
                                        for e, g in zip(expected, got, strict=True)):
        raise ValueError(f"samples have shape {tuple(arr.shape)} (batch {index}); the model "
                         f"expects (N, {', '.join(str(e) for e in expected)})")
    arr = arr.astype("float32", copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"samples contain NaN or Inf values (batch {index}); calibration "
                         "needs finite inputs")
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
        if arr.size == 0 or arr.ndim == 0:
            raise ValueError(f"samples are empty (shape {arr.shape}); give at least one sample")
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

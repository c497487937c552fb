"""Strided slices of the non-batch axes, in the normalized form both executors use.

A key such as ``x[:, 1:]``, ``x[..., :3]`` or ``x[:, ::2, 0]`` on a tensor of static non-batch
shape is normalized per non-batch axis to ``(begin, end, stride)`` as ``slice.indices`` gives
them (the selected indices are ``range(begin, end, stride)``; ``end`` may be ``-1`` for a
negative stride) plus the axes an integer index removes (``shrink``, 1-based tensor axes).
:func:`normalize_key` does it once when the graph is read; :func:`slice_key` turns the stored
form back into the key the Keras layer and the engine apply (the integers are copied, never
changed). Importing this module never imports Keras.

Example:
    >>> spec = normalize_key((slice(None), Ellipsis, slice(None, 3)), (None, 4, 5))
    >>> spec
    {'begin': [0, 0], 'end': [4, 3], 'strides': [1, 1], 'shrink': []}
    >>> slice_key(**spec)
    (slice(0, 4, 1), slice(0, 3, 1))
    >>> sliced_shape(**spec)
    (4, 3)
"""

from __future__ import annotations

import numbers
from typing import Any

__all__ = ["normalize_key", "slice_key", "sliced_shape"]


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def normalize_key(key: Any, shape: tuple) -> dict | None:
    """The normalized slice of ``key`` (a getitem key, batch axis included) on a tensor of
    ``shape`` (batch axis first, every other axis static), or ``None`` when the key is not a
    static strided slice that keeps the whole batch (``None``/newaxis, boolean or tensor
    indices, an integer or a partial slice on the batch axis, an index out of range).

    Example:
        >>> normalize_key((slice(None), slice(None, None, -1), 1), (None, 3, 2))
        {'begin': [2, 1], 'end': [-1, 2], 'strides': [-1, 1], 'shrink': [2]}
        >>> normalize_key((0, slice(None)), (None, 3)) is None
        True
    """
    key = key if isinstance(key, tuple) else (key,)
    rank = len(shape)
    if any(d is None for d in shape[1:]):
        return None
    if sum(k is Ellipsis for k in key) > 1:
        return None
    if Ellipsis in key:
        i = key.index(Ellipsis)
        fill = rank - (len(key) - 1)
        if fill < 0:
            return None
        key = key[:i] + (slice(None),) * fill + key[i + 1:]
    if len(key) > rank:
        return None
    key = key + (slice(None),) * (rank - len(key))
    if not isinstance(key[0], slice) or key[0] != slice(None):
        return None
    begin, end, strides, shrink = [], [], [], []
    for axis, (k, n) in enumerate(zip(key[1:], shape[1:], strict=True), start=1):
        n = int(n)
        if _is_int(k):
            i = int(k)
            if not -n <= i < n:
                return None
            i %= n
            begin.append(i), end.append(i + 1), strides.append(1), shrink.append(axis)
        elif isinstance(k, slice) and all(v is None or _is_int(v) for v in
                                          (k.start, k.stop, k.step)):
            if k.step is not None and int(k.step) == 0:
                return None
            b, e, s = slice(*(None if v is None else int(v)
                              for v in (k.start, k.stop, k.step))).indices(n)
            begin.append(b), end.append(e), strides.append(s)
        else:
            return None
    return {"begin": begin, "end": end, "strides": strides, "shrink": shrink}


def slice_key(begin: list, end: list, strides: list, shrink: list) -> tuple:
    """The key (non-batch axes) that selects the normalized slice: an ``int`` on the shrunk
    axes, else ``slice(begin, end, stride)`` (``end`` ``None`` where the normalized end is
    -1, i.e. a negative stride down to index 0)."""
    out = []
    for axis, (b, e, s) in enumerate(zip(begin, end, strides, strict=True), start=1):
        if axis in shrink:
            out.append(int(b))
        else:
            out.append(slice(int(b), None if int(e) < 0 else int(e), int(s)))
    return tuple(out)


def sliced_shape(begin: list, end: list, strides: list, shrink: list) -> tuple:
    """The non-batch output shape of the normalized slice."""
    out = []
    for axis, (b, e, s) in enumerate(zip(begin, end, strides, strict=True), start=1):
        if axis not in shrink:
            out.append(len(range(int(b), int(e), int(s))))
    return tuple(out)

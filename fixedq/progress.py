"""Progress of long work on stderr: a live bar on a terminal, one line per stage in a log.

On a terminal, :class:`Progress` redraws one line in place (``\\r``, at most 10 times a second)
and ends it with a newline. When the stream is not a terminal (a CI log, a file, a pipe) it
writes **one line when the stage ends**, so logs never get a long line of carriage returns::

    calibrating: 1024/1024 samples in 3.2 s

and, for a stage that runs longer than :data:`LOG_SECONDS`, one ``(running)`` line per
:data:`LOG_SECONDS` while it runs, so a log shows that a long stage is alive and how far it
got (written from :meth:`Progress.update`, i.e. between units of work)::

    weight rounding (running): 12/53 layers (conv4_block1_2_conv), 61 s so far

Every long stage of fixedq (calibration, weight rounding, bias correction, inspection, the
engine's ``predict(verbose=True)``) reports through this class.

Example:
    >>> import io
    >>> log = io.StringIO()
    >>> with Progress("calibrating", total=64, unit="samples", stream=log) as bar:
    ...     for done in (32, 64):
    ...         bar.update(done)
    >>> log.getvalue().startswith("calibrating: 64/64 samples in ")
    True
"""

from __future__ import annotations

import sys
import time

__all__ = ["Progress"]

_REDRAW_SECONDS = 0.1
#: Seconds between the ``(running)`` lines of a long stage in a log (not a terminal).
LOG_SECONDS = 30.0
_WIDTH = 30


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Report the progress of one stage of work.

    Args:
        stage: what is being done, e.g. ``"calibrating"`` or ``"weight rounding"``.
        total: the amount of work (``None``: unknown, the count is shown without a bar).
        unit: the unit of the counts, e.g. ``"samples"`` or ``"layers"``.
        stream: where to write (default: ``sys.stderr`` at the time of the call).
        enabled: ``False`` writes nothing at all (the ``verbose=False`` of the callers).

    Use it as a context manager, calling :meth:`update` with the amount done so far; the
    final line is written when the ``with`` block ends (also on an exception, so a log shows
    how far the stage got).
    """

    def __init__(self, stage: str, total: int | None = None, unit: str = "",
                 stream=None, enabled: bool = True):
        self.stage = stage
        self.total = None if total is None else max(int(total), 0)
        self.unit = unit
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.live = enabled and _is_terminal(self.stream)
        self.done = 0
        self.detail = ""
        self._start = time.perf_counter()
        self._last_draw = 0.0
        self._last_log = self._start

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close()

    def _counts(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        if self.total is None:
            return f"{self.done}{unit}"
        return f"{min(self.done, self.total)}/{self.total}{unit}"

    def _line(self) -> str:
        text = f"{self.stage}"
        if self.live and self.total:
            filled = int(_WIDTH * min(self.done, self.total) / self.total)
            text += f" [{'#' * filled}{'.' * (_WIDTH - filled)}]"
        elif not self.live:
            text += ":"
        text += f" {self._counts()}"
        if self.detail:
            text += f" ({self.detail})"
        return text

    def update(self, done: int, detail: str = "") -> None:
        """Set the amount done so far (and an optional short detail, e.g. ``"pass 2/3"``)."""
        self.done = int(done)
        self.detail = detail
        if not self.enabled:
            return
        now = time.perf_counter()
        if not self.live:
            if now - self._last_log >= LOG_SECONDS:
                self._last_log = now
                line = self._line().replace(f"{self.stage}:", f"{self.stage} (running):", 1)
                self.stream.write(f"{line}, {now - self._start:.0f} s so far\n")
                self.stream.flush()
            return
        finished = self.total is not None and self.done >= self.total
        if now - self._last_draw >= _REDRAW_SECONDS or finished:
            self._last_draw = now
            self.stream.write(f"\r{self._line()}\x1b[K")
            self.stream.flush()

    def close(self) -> None:
        """End the stage: the final line (with the elapsed time), once."""
        if not self.enabled:
            return
        self.enabled = False
        elapsed = time.perf_counter() - self._start
        if self.live:
            self.stream.write(f"\r{self._line()} in {elapsed:.1f} s\x1b[K\n")
        else:
            self.stream.write(f"{self._line()} in {elapsed:.1f} s\n")
        self.stream.flush()

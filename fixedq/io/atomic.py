"""Atomic output files: write a temporary file beside the target, then rename it over it.

:func:`atomic_path` yields a temporary file name for writers that want a path (Keras'
``save_model``, ``savefig``, ...); :func:`atomic_open` yields an open file; :func:`write_atomic`
writes bytes or text. In every case the target is either left as it was or replaced by the
complete new file, never half-written:

- the temporary file (``.<name>.<random><suffix>`` in the target's directory, so the rename
  stays on one file system) is removed on any exception, and on SIGTERM and SIGINT: for the
  duration of the write (in the main thread) SIGTERM raises :class:`Terminated` and SIGINT
  ``KeyboardInterrupt``, even if they were ignored; the previous handlers are restored after;
- a signal that a writer swallowed is raised again once the temporary file is removed;
- the new file gets the permissions a plain ``open()`` would give: those of the file it
  replaces, else ``0o666 & ~umask`` (not the ``0o600`` of ``tempfile.mkstemp``).

Example:
    >>> import os, tempfile
    >>> from fixedq.io import atomic_open, write_atomic
    >>> path = os.path.join(tempfile.mkdtemp(), "report.json")
    >>> write_atomic(path, '{"ok": true}')
    >>> with atomic_open(path, "wb") as f:
    ...     _ = f.write(b"{}")
    >>> open(path).read(), sorted(os.listdir(os.path.dirname(path)))
    ('{}', ['report.json'])
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

__all__ = ["Terminated", "atomic_open", "atomic_path", "file_mode", "signals_raise",
           "write_atomic"]


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised as an exception so that cleanup code runs (``finally``, ``except``).

    A ``KeyboardInterrupt`` subclass: code that stops cleanly on Ctrl-C stops cleanly on
    SIGTERM too; ``fixedq`` exits with 143 (128 + SIGTERM) on it.

    Example:
        >>> issubclass(Terminated, KeyboardInterrupt)
        True
    """

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(f"terminated by signal {signum}")
        self.signum = signum


def _umask() -> int:
    """The process umask, read without changing it where Linux allows."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode(path: str | os.PathLike) -> int:
    """Permission bits a plain ``open(path, "w")`` would leave on ``path``.

    The mode of the existing file, else ``0o666 & ~umask``.

    Example:
        >>> import os
        >>> old = os.umask(0o022)
        >>> oct(file_mode("/nonexistent/new.txt"))
        '0o644'
        >>> _ = os.umask(old)
    """
    try:
        st = os.stat(path)
    except OSError:
        return 0o666 & ~_umask()
    if stat.S_ISREG(st.st_mode):
        return stat.S_IMODE(st.st_mode)
    return 0o666 & ~_umask()


class _SignalGuard:
    """Signal handlers that raise, and whether a signal arrived (even if swallowed)."""

    def __init__(self):
        self.received: int | None = None
        self.deferred = False  # during cleanup: remember the signal, raise it afterwards

    def handler(self, signum, frame):
        self.received = signum
        if not self.deferred:
            self.raise_received()

    def raise_received(self):
        if self.received == signal.SIGTERM:
            raise Terminated(self.received)
        if self.received is not None:
            raise KeyboardInterrupt


@contextlib.contextmanager
def _guarded() -> Iterator[_SignalGuard]:
    guard = _SignalGuard()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            old = signal.getsignal(signum)
            if old is None:  # installed outside Python: cannot be restored, leave it
                continue
            if old is signal.SIG_IGN:  # ignored by the parent (nohup, `&` in a script): the
                continue  # process must not die of it now; the write completes
            previous[signum] = old
            signal.signal(signum, guard.handler)
    try:
        yield guard
    finally:
        guard.deferred = True
        for signum, old in previous.items():
            signal.signal(signum, old)


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` and SIGINT ``KeyboardInterrupt``.

    Only in the main thread (elsewhere it does nothing); a signal the process ignores
    (``SIG_IGN``, e.g. inherited from ``nohup`` or a shell's background job) stays ignored; the
    previous handlers are restored on exit. Used by :func:`atomic_path`; useful around any work
    that must clean up.

    Example:
        >>> with signals_raise():
        ...     pass
    """
    with _guarded():
        yield


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; on success it is renamed over ``path``.

    Args:
        path: the target file; its directory must exist. A symbolic link is followed (the
            file it points to is replaced, as ``open()`` would write it).
        suffix: the temporary file's extension (default: ``path``'s, which writers such as
            Keras' ``save_model`` look at).

    Raises:
        FileNotFoundError: the directory does not exist.
        Terminated, KeyboardInterrupt: SIGTERM or SIGINT during the write (the temporary file
            is removed first; ``path`` is untouched).

    Example:
        >>> import os, tempfile
        >>> target = os.path.join(tempfile.mkdtemp(), "weights.bin")
        >>> with atomic_path(target) as tmp:
        ...     with open(tmp, "wb") as f:
        ...         _ = f.write(b"\\x00" * 8)
        >>> os.path.getsize(target), oct(os.stat(target).st_mode & 0o777) == oct(file_mode(target))
        (8, True)
    """
    target = Path(path)
    if target.is_symlink():
        target = Path(os.path.realpath(target))
    if suffix is None:
        suffix = target.suffix
    mode = file_mode(target)
    with _guarded() as guard:
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=suffix,
                                       dir=target.parent)
            os.close(fd)
            yield tmp
            if guard.received is not None:  # a writer swallowed the exception
                guard.raise_received()
            os.chmod(tmp, mode)
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
            guard.deferred = True  # a signal after the rename must not report a failed write
            os.replace(tmp, target)
            tmp = None
        finally:
            guard.deferred = True  # a second signal must not stop the cleanup
            if tmp is not None:
                with contextlib.suppress(OSError):
                    os.remove(tmp)
        if guard.received is not None:  # arrived during the cleanup or the rename
            guard.raise_received()


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb",
                encoding: str | None = None) -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; renamed over ``path`` on success.

    Args:
        path: the target file.
        mode: ``"w"`` or ``"wb"`` (text or binary; the old content is always replaced).
        encoding: for text mode (default UTF-8).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "notes.txt")
        >>> with atomic_open(path, "w") as f:
        ...     _ = f.write("hello")
        >>> open(path).read()
        'hello'
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a new file: mode must be 'w' or 'wb', got {mode!r}")
    if mode == "w" and encoding is None:
        encoding = "utf-8"
    with atomic_path(path) as tmp, open(tmp, mode, encoding=encoding) as f:
        yield f


def write_atomic(path: str | os.PathLike, data: bytes | str, encoding: str = "utf-8") -> None:
    """Write ``data`` (bytes, or text in ``encoding``) to ``path`` atomically.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "c.json")
        >>> write_atomic(path, "{}\\n")
        >>> open(path).read()
        '{}\\n'
    """
    payload = data.encode(encoding) if isinstance(data, str) else bytes(data)
    with atomic_open(path, "wb") as f:
        f.write(payload)

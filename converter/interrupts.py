"""Ctrl-C that no library can swallow: remembered, and checked before any file gets its final name.

Some libraries catch ``KeyboardInterrupt`` (torch.export wraps it in its own error; others catch
``BaseException`` and go on). The CLI installs :func:`handler` for SIGINT: it records the interrupt
and raises ``KeyboardInterrupt`` as Python's default does; :func:`check` raises it again wherever a
swallowed interrupt must not be ignored (``AtomicFile.commit``: nothing is committed after Ctrl-C).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

_hit = threading.Event()


def handler(signum, frame) -> None:  # noqa: ARG001 - signal handler signature
    """SIGINT: remember it, then raise KeyboardInterrupt (the default behaviour)."""
    _hit.set()
    raise KeyboardInterrupt


def interrupted() -> bool:
    """Whether Ctrl-C came since :func:`installed` began."""
    return _hit.is_set()


def check() -> None:
    """Raise KeyboardInterrupt if Ctrl-C came, even when a library swallowed it."""
    if _hit.is_set():
        raise KeyboardInterrupt


@contextlib.contextmanager
def installed() -> Iterator[None]:
    """:func:`handler` as the SIGINT handler for the block (main thread only; restored after)."""
    _hit.clear()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN or previous is None:  # ignored (a background job), or not Python's
        yield
        return
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _hit.clear()

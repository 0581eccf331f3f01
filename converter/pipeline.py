"""Overlap the stages of a conversion: read/re-lay ahead, flush to disk while writing, hash beside.

A conversion is three streams of work that need not wait for each other: reading and re-laying
tensors (CPU, numpy releases the GIL), writing them (page cache), and getting them onto the disk
(fsync). Hashing the source for the metadata is a fourth. Each helper here keeps the order and the
memory bound of the plain loop; errors surface in the caller's thread, where they would have.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import os
import queue
import threading
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Tuple, TypeVar

T = TypeVar("T")

_DONE = object()


class _Failure:
    def __init__(self, exc: BaseException):
        self.exc = exc


def prefetch(items: Iterable[T], depth: int = 2) -> Iterator[T]:
    """Yield ``items`` in order while a worker thread computes up to ``depth`` items ahead.

    An exception raised while producing an item is raised here, at that item. Closing the
    generator early (an error downstream) stops the worker after its current item.
    """
    if depth < 1:
        yield from items
        return
    q: "queue.Queue[object]" = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                while not stop.is_set():
                    try:
                        q.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
            q.put(_DONE)
        except BaseException as e:  # noqa: B902 - handed to the consumer, raised there
            q.put(_Failure(e))

    t = threading.Thread(target=work, name="effnet-prefetch", daemon=True)
    t.start()
    try:
        while True:
            item = q.get()
            if item is _DONE:
                return
            if isinstance(item, _Failure):
                raise item.exc
            yield item  # type: ignore[misc]
    finally:
        stop.set()
        while t.is_alive():  # unblock a worker waiting on a full queue, then let it finish
            try:
                q.get(timeout=0.1)
            except queue.Empty:
                pass
        t.join()


class SyncingWriter:
    """A binary file wrapper that starts flushing to disk in the background every ``every`` bytes.

    ``AtomicFile.commit`` fsyncs the whole file before the rename; flushing while the rest is
    still being written leaves that final fsync only the tail. Only one flush runs at a time.
    """

    def __init__(self, fh, every: int = 128 << 20):
        self._fh = fh
        self._every = every
        self._since = 0
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="effnet-fsync")
        self._pending: Optional[concurrent.futures.Future] = None

    def write(self, data) -> int:
        n = self._fh.write(data)
        self._since += memoryview(data).nbytes
        if self._since >= self._every and (self._pending is None or self._pending.done()):
            self._check()
            self._fh.flush()
            self._pending = self._pool.submit(os.fdatasync, self._fh.fileno())
            self._since = 0
        return n

    def _check(self) -> None:
        if self._pending is not None:
            self._pending.result()  # a failed background flush (EIO, ENOSPC) is an error here

    def finish(self) -> None:
        """Wait for the background flush; raise what it raised."""
        try:
            self._check()
        finally:
            self._pool.shutdown(wait=True)

    def abandon(self) -> None:
        """Stop without raising (the file is being discarded)."""
        self._pool.shutdown(wait=True)

    def __getattr__(self, name):
        return getattr(self._fh, name)


def sha256_files(paths: Sequence[Path], chunk: int = 1 << 22) -> str:
    """sha256 over the files' bytes, one after the other, in the given order."""
    h = hashlib.sha256()
    buf = bytearray(chunk)
    view = memoryview(buf)
    for p in paths:
        with open(p, "rb", buffering=0) as fh:
            while True:
                n = fh.readinto(buf)
                if not n:
                    break
                h.update(view[:n])  # hashlib drops the GIL for large buffers
    return h.hexdigest()


class Deferred:
    """A metadata value computed beside the conversion (e.g. the source's sha256).

    The header is written with ``width`` placeholder characters and patched in place once the
    value is known, so the conversion need not wait for it. The value must be ``width`` ASCII
    characters long.
    """

    PLACEHOLDER_CHAR = "?"

    def __init__(self, future: "concurrent.futures.Future[str]", width: int = 64):
        self.future = future
        self.width = width

    @property
    def placeholder(self) -> str:
        return self.PLACEHOLDER_CHAR * self.width

    def result(self) -> str:
        value = self.future.result()
        if len(value) != self.width or not value.isascii():
            raise RuntimeError(f"deferred value {value!r} is not {self.width} ASCII characters")
        return value

    @classmethod
    def run(cls, fn, *args, width: int = 64) -> "Deferred":
        """Start ``fn(*args)`` in a daemon thread; its string result becomes the value."""
        fut: "concurrent.futures.Future[str]" = concurrent.futures.Future()

        def work() -> None:
            try:
                fut.set_result(fn(*args))
            except BaseException as e:  # noqa: B902 - re-raised by result()
                fut.set_exception(e)

        threading.Thread(target=work, name="effnet-deferred", daemon=True).start()
        return cls(fut, width)


def patch_header(path: Path, header: bytes, patches: Iterable[Tuple[str, str, str]]) -> None:
    """Overwrite placeholders in a written safetensors header: (key, placeholder, value) each.

    The header is JSON; each ``"key":"placeholder"`` occurs exactly once and the value has the
    placeholder's length, so nothing else in the file moves.
    """
    import json

    with open(path, "r+b") as fh:
        for key, placeholder, value in patches:
            needle = (json.dumps(key) + ":" + json.dumps(placeholder)).encode()
            at = header.find(needle)
            if at < 0 or header.find(needle, at + 1) >= 0 or len(value) != len(placeholder):
                raise RuntimeError(f"cannot patch metadata {key}: placeholder not found exactly once")
            fh.seek(at + len(json.dumps(key)) + 1)
            fh.write(json.dumps(value).encode())

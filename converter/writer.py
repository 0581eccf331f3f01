"""Atomic, streaming writers for the converted weights and their metadata."""
from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import stat
import struct
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from . import interrupts
from .errors import ConversionError

# safetensors format: 8-byte little-endian header size, JSON header, raw little-endian data
SAFETENSORS_DTYPES = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("float64"): "F64",
                      np.dtype("int64"): "I64", np.dtype("int32"): "I32"}


def write_json(path: Path, doc, what: str = "") -> None:
    """``doc`` as JSON to ``path`` through a temporary file beside it: all of it or nothing; a write
    that fails is one ConversionError naming ``what`` (default the path)."""
    f = AtomicFile(Path(path))
    try:
        f.tmp.write_text(json.dumps(doc, indent=1) + "\n", encoding="utf-8")
        f.commit()
    except OSError as e:
        raise ConversionError(f"cannot write {what or path}: {e.strerror or e}") from None
    finally:
        f.discard()


class AtomicFile:
    """A temporary file beside ``path`` that becomes ``path`` only on :meth:`commit`.

    A failed or killed run leaves at most a hidden ``.NAME.tmp-PID-RAND.EXT`` file (the final
    extension kept, so the pending file can be read as what it is), never a partial ``path``.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(
            f".{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{self.path.suffix}")
        self._done = False

    def create(self) -> None:
        """Create the (empty) temp file; a folder that refuses it is one error naming the folder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.tmp, "xb"):
                pass
        except OSError as e:
            raise ConversionError(folder_error(self.path.parent, e)) from None

    def sync(self) -> None:
        """fsync the temp file (its data is durable; it keeps its temp name)."""
        fd = os.open(self.tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def commit(self, to: Optional[Path] = None, replace: bool = True) -> None:
        """fsync the temp file and atomically rename it over ``path`` (or ``to``).

        ``replace=False``: publish only where nothing has that name (``link`` + ``unlink``, atomic):
        a file another run wrote meanwhile is kept and this one refused (ConversionError).
        Never after Ctrl-C, even one a library swallowed (converter.interrupts).
        """
        interrupts.check()
        self.sync()
        target = self.path if to is None else Path(to)
        if replace:
            os.replace(self.tmp, target)
        else:
            _publish_new(self.tmp, target)
        sync_folder(target.parent)
        self._done = True

    def discard(self) -> None:
        """Remove the temp file (idempotent)."""
        if not self._done:
            try:
                os.unlink(self.tmp)
            except FileNotFoundError:
                pass
            self._done = True


class AtomicFolder:
    """A temporary folder beside ``path`` that becomes ``path`` only on :meth:`commit` (the export's
    TensorFlow checkpoint and SavedModel folders): :class:`AtomicFile`'s contract for a folder."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(f".{self.path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        self._done = False

    def create(self) -> None:
        """Create the (empty) temp folder; a folder that refuses it is one error naming the folder."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            os.mkdir(self.tmp)
        except OSError as e:
            raise ConversionError(folder_error(self.path.parent, e)) from None

    def sync(self) -> None:
        """fsync every file and folder below the temp folder."""
        for root, _, names in os.walk(self.tmp):
            for p in [os.path.join(root, n) for n in names] + [root]:
                fd = os.open(p, os.O_RDONLY)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def commit(self, to: Optional[Path] = None, replace: bool = True) -> None:
        """fsync the temp folder and rename it to ``path``; ``replace``: an existing folder of that name
        is replaced whole (moved aside, then removed), else a name taken meanwhile is refused."""
        import shutil

        interrupts.check()
        self.sync()
        target = self.path if to is None else Path(to)
        if os.path.lexists(target):
            if not replace:
                raise appeared_error(target)
            if not target.is_dir() or target.is_symlink():
                raise ConversionError(f"{target} exists and is not a folder; remove it")
            old = target.with_name(f".{target.name}.old-{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(target, old)
            try:
                os.rename(self.tmp, target)
            except BaseException:
                os.rename(old, target)
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(self.tmp, target)
        sync_folder(target.parent)
        self._done = True

    def discard(self) -> None:
        """Remove the temp folder and what it holds (idempotent)."""
        import shutil

        if not self._done:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self._done = True


def appeared_error(target: Path) -> ConversionError:
    """The one line for an output name another run took while this one was converting."""
    return ConversionError(f"{target} was written by another run while this one was converting: it is kept and "
                           "this run's output discarded; pass --force to replace it")


def _publish_new(tmp: Path, target: Path) -> None:
    """Give ``tmp`` the name ``target`` only if no file has it (never replaces)."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise appeared_error(target) from None
    except OSError:  # a filesystem without hard links: check, then rename (a window of a few microseconds)
        if os.path.lexists(target):
            raise appeared_error(target) from None
        os.rename(tmp, target)
        return
    os.unlink(tmp)


def publish(files: Sequence["AtomicFile"], replace: bool = True) -> None:
    """Commit ``files`` together: with ``replace=False`` none is published when any name is taken."""
    if not replace:
        for f in files:
            if os.path.lexists(f.path):
                raise appeared_error(f.path)
    done: List[AtomicFile] = []
    try:
        for f in files:
            f.commit(replace=replace)
            done.append(f)
    except ConversionError:
        for f in done:  # ours, published a moment ago: the set is all or nothing
            if isinstance(f, AtomicFolder):
                import shutil

                shutil.rmtree(f.path, ignore_errors=True)
            else:
                os.unlink(f.path)
        raise


# --- claims: one run at a time per output name ----------------------------------------------------
try:  # POSIX; elsewhere outputs are not claimed (publishing still never replaces without --force)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None


def claim_path(path: Path) -> Path:
    """The claim file of output ``path``: ``.NAME.claim`` beside it (exists only while a run holds it)."""
    path = Path(path)
    return path.with_name(f".{path.name}.claim")


def _claim(path: Path) -> Optional[int]:
    """Lock ``path``'s claim file (flock; released by the kernel if the run dies); its fd, None without locks."""
    cp = claim_path(path)
    for _ in range(10):
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(cp, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConversionError(folder_error(path.parent, e)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            raise ConversionError(f"{path} is being written by another convert-effnet run (pid {holder}); "
                                  "wait for it to finish, or pass --force to replace its output") from None
        except OSError:  # a filesystem without locks: unclaimed
            os.close(fd)
            return None
        try:  # the holder before us may have removed the file after we opened it: lock a fresh one
            same = os.stat(cp).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)
    raise ConversionError(f"cannot claim {path}: its claim file {cp} keeps changing; retry")


@contextlib.contextmanager
def claimed(paths: Sequence[Path], force: bool = False) -> Iterator[None]:
    """Hold the final names ``paths`` for the block: another run claiming one is refused in one line
    (unless ``force``); the claim files are removed at the end, and a crashed run's claim does not
    block (its lock died with it)."""
    held: List[Tuple[Path, int]] = []
    try:
        if fcntl is not None and not force:
            for p in paths:
                fd = _claim(Path(p))
                if fd is not None:
                    held.append((claim_path(Path(p)), fd))
        yield
    finally:
        for cp, fd in held:
            try:
                os.unlink(cp)  # still locked by us: nobody else holds it
            except OSError:
                pass
            os.close(fd)


def sync_folder(folder: Path) -> None:
    """Make renames in ``folder`` durable (best effort)."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def folder_error(folder: Path, e: OSError) -> str:
    """One line for a folder that refuses a new file (its name, not a hidden temp file's)."""
    why = e.strerror or str(e)
    return f"cannot write to the folder {folder}: {why}; choose a writable folder"


def check_writable_folder(folder: Path, what: str = "output folder") -> None:
    """Create ``folder`` if needed and prove a file can be created in it (a probe, removed at once).

    ``os.access`` is not asked: it says yes to root on a read-only mount and knows no ACLs.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConversionError(f"{what} {folder} is a file, not a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".effnet-write-test-", dir=folder)
    except OSError as e:
        raise ConversionError(f"cannot write to the {what} {folder}: {e.strerror or e}; choose a writable folder") from None
    os.close(fd)
    os.unlink(probe)


# a temp file is stale only when its writer is gone AND it has not changed for this long: a writer
# on another host or in another PID namespace sharing the folder keeps its own file fresh
STALE_TEMP_AGE_S = 3600.0


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` is a live process on this machine (unknown counts as alive)."""
    if pid <= 0:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):  # EPERM: alive, someone else's
        return True
    return True


def remove_stale_temps(path: Path, min_age_s: float = STALE_TEMP_AGE_S) -> List[Path]:
    """Delete the ``.NAME.tmp-PID[-RAND][.EXT]`` files that killed writers of ``path`` left beside it.

    Removes only regular files of exactly that name pattern, owned by this user, whose PID is
    not a live process here (``os.kill(pid, 0)``) and that were not modified for ``min_age_s``
    seconds. Never touches ``path`` itself. Does nothing outside POSIX. Returns what it removed.
    """
    if os.name != "posix":  # os.kill(pid, 0) would send CTRL_C_EVENT on Windows
        return []
    path = Path(path)
    pattern = re.compile(r"\." + re.escape(path.name) + r"\.tmp-(\d+)(?:-[0-9a-f]+(?:" + re.escape(path.suffix) + ")?)?")
    removed: List[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(path.parent))
    except OSError:
        return removed
    for entry in entries:
        m = pattern.fullmatch(entry.name)
        if not m:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _pid_alive(pid):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or now - st.st_mtime < min_age_s:
                continue
            os.unlink(entry.path)
        except OSError:  # gone already (another cleanup), or not ours to remove
            continue
        removed.append(Path(entry.path))
    return removed


def safetensors_header(specs: Sequence[Tuple[str, Tuple[int, ...], np.dtype]],
                       metadata: Dict[str, str]) -> Tuple[bytes, List[Tuple[int, int]]]:
    """The header bytes (size prefix included) and each tensor's byte range, tensors in ``specs`` order."""
    header: Dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offsets = []
    pos = 0
    for key, shape, dtype in specs:
        dtype = np.dtype(dtype)
        if dtype not in SAFETENSORS_DTYPES:
            raise ConversionError(f"cannot write {key}: dtype {dtype} has no safetensors code")
        n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [pos, pos + n]}
        offsets.append((pos, pos + n))
        pos += n
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-(len(raw) + 8) % 8)  # data starts 8-byte aligned
    return struct.pack("<Q", len(raw)) + raw, offsets


def write_safetensors(out, specs: Sequence[Tuple[str, Tuple[int, ...], np.dtype]],
                      arrays: Iterable[Tuple[str, np.ndarray]], metadata: Dict[str, str]) -> bytes:
    """Stream tensors into an open binary file: header first, then each tensor as it arrives.

    ``arrays`` must yield (key, array) in ``specs`` order; only one tensor is held at a time.
    Returns the header bytes written (size prefix included).
    """
    head, offsets = safetensors_header(specs, metadata)
    out.write(head)
    count = 0
    for (key, shape, dtype), (got_key, arr), (start, end) in zip(specs, arrays, offsets):
        if got_key != key or tuple(arr.shape) != tuple(shape) or arr.dtype != np.dtype(dtype):
            raise RuntimeError(f"writer got {got_key} {arr.shape} {arr.dtype}, expected {key} {shape} {dtype}")
        data = np.ascontiguousarray(arr, dtype=np.dtype(dtype).newbyteorder("<"))
        out.write(memoryview(data).cast("B"))
        count += 1
    if count != len(specs):
        raise RuntimeError(f"writer got {count} tensors, expected {len(specs)}")
    return head


def read_safetensors_metadata(path: Path) -> Dict[str, str]:
    """The ``__metadata__`` of a safetensors file, read from its header alone."""
    with open(path, "rb") as f:
        size_bytes = f.read(8)
        if len(size_bytes) != 8:
            raise ConversionError(f"{path} is not a safetensors file (too short)")
        (size,) = struct.unpack("<Q", size_bytes)
        if size > 100_000_000:
            raise ConversionError(f"{path} is not a safetensors file (header size {size})")
        try:
            header = json.loads(f.read(size))
        except ValueError:
            raise ConversionError(f"{path} is not a safetensors file (bad header)") from None
    return dict(header.get("__metadata__") or {})

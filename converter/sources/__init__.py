"""Where checkpoints come from: local paths, folders, tarballs, and the official downloads.

No torch or tensorflow here. Every problem a user can cause (a wrong path, a corrupt or
malicious tarball, a failed download, being offline) raises :class:`ConversionError` with a
one-line message that says what is wrong and what to do.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import stat
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import weakref
import zlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Dict, Iterator, List, Optional, Union

from ..errors import ConversionError
from .tarball import corrupt_tarball_error

try:  # POSIX; elsewhere the cache is used without a lock
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:  # pragma: no cover
    from ..checkpoint import Checkpoint

log = logging.getLogger(__name__)

CACHE_ENV = "EFFNET_CACHE"
DEFAULT_CACHE = Path("~/.cache/effnet-convert")

CHUNK_SIZE = 1 << 20
# Backoff between download attempts: RETRY_BASE_DELAY * 2**n seconds, at most RETRY_MAX_DELAY.
RETRY_BASE_DELAY = 1.0
RETRY_MAX_DELAY = 30.0
MAX_ATTEMPTS = 1000  # hard cap, even while every attempt makes progress
DOWNLOAD_TIMEOUT = 60.0  # seconds without data before an attempt counts as dropped
USER_AGENT = "effnet-convert"

_TAR_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_DATA_RE = re.compile(r"^(?P<prefix>.+)\.data-(?P<i>\d{5})-of-(?P<n>\d{5})$")
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
# tarfile.FilterError: Python >= 3.11.4 (with the extraction filters)
_FILTER_ERRORS = getattr(tarfile, "FilterError", ())

PathLike = Union[str, "os.PathLike[str]"]


def _one_line(obj: object) -> str:
    return " ".join(str(obj).split())


def cache_dir() -> Path:
    """The download/extraction cache: ``$EFFNET_CACHE``, else ``~/.cache/effnet-convert``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else DEFAULT_CACHE.expanduser()


# sha256 of files already hashed by this process, keyed by (path, device, inode, size, mtime_ns):
# a conversion from the cache checks, names and records the same tarball; hash it once
_HASHED: dict = {}


def sha256_file(path: PathLike) -> str:
    """Hex sha256 of a file, read in chunks (remembered while the file's stat is unchanged)."""
    try:
        with open(path, "rb") as f:
            st = os.fstat(f.fileno())
            key = (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
            if key in _HASHED:
                return _HASHED[key]
            h = hashlib.sha256()
            for block in iter(lambda: f.read(CHUNK_SIZE), b""):
                h.update(block)
            if os.fstat(f.fileno()).st_mtime_ns != st.st_mtime_ns:  # changed while read: do not remember
                return h.hexdigest()
    except OSError as e:
        raise ConversionError(f"cannot read {path}: {_one_line(e.strerror or e)}") from e
    _HASHED[key] = h.hexdigest()
    return _HASHED[key]


def _normalize_sha(value: Optional[str], what: str = "sha256") -> Optional[str]:
    if value is None:
        return None
    v = value.strip().lower()
    if not _SHA_RE.match(v):
        raise ConversionError(f"{what} must be 64 hexadecimal digits, got {value!r}")
    return v


@contextlib.contextmanager
def _file_lock(lock_path: Path, quiet: bool = False) -> Iterator[None]:
    """Exclusive advisory lock (fcntl.flock) on ``lock_path`` for the duration of the block; the
    file is removed on the way out. ``quiet``: no "waiting for another process" line.

    Removing a lock file is safe only with a check on taking it: a process that waited on the
    file its holder then removed holds a lock on a file no longer at ``lock_path``, so it drops
    it and starts over on the current file (the holder removes the file while it still holds the
    lock; an inode cannot be reused while a waiter keeps it open).
    """
    said = False
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise ConversionError(
                f"cannot create lock file {lock_path}: {_one_line(e.strerror or e)}; "
                f"set {CACHE_ENV} to a writable folder") from e
        if fcntl is None:  # pragma: no cover - no advisory locks: no mutual exclusion either
            break
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not (quiet or said):
                    log.info("waiting for another process using %s", lock_path)
                said = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            now = os.stat(lock_path)
        except FileNotFoundError:  # removed by the holder we waited for
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        if (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino):
            break
        os.close(fd)  # replaced by a newer lock file: take that one
    try:
        yield
    finally:
        if fcntl is not None:
            with contextlib.suppress(OSError):
                os.unlink(lock_path)  # while held: a waiter on this file then starts over
        os.close(fd)  # releases the lock


# --------------------------------------------------------------------------- resolving


def resolve_checkpoint(path: PathLike) -> str:
    """Turn what the user passed as --checkpoint into a TF checkpoint prefix (PREFIX.index exists).

    Accepts a prefix (``.../model.ckpt``), its ``.index`` or ``.data-*-of-*`` file, the TF
    ``checkpoint`` text file, or a folder holding one checkpoint anywhere below it; a tarball
    has no prefix on disk (see :func:`checkpoint_files`). Checks that every data shard is
    present. Returns an absolute path.
    """
    raw = os.fspath(path)
    if not raw.strip():
        raise ConversionError("--checkpoint is empty; pass a checkpoint prefix, folder or .tar.gz")
    p = Path(raw).expanduser()
    name = p.name

    if p.is_dir():
        return _resolve_folder(p)
    kind = classify(p)
    if kind == "keras":
        raise ConversionError(
            f"{p} is a Keras HDF5 file, not a TensorFlow checkpoint: convert it with "
            f"convert-effnet --checkpoint {p} (verification runs on TensorFlow checkpoints only)")
    if kind == "tarball":  # a caller's mistake, not the user's
        raise ValueError(f"{p} is a tarball: open it with Source.open or checkpoint_files")
    if p.is_file() and name == "checkpoint":
        return _resolve_folder(p.parent)

    if name.endswith(".index"):
        prefix = Path(str(p)[: -len(".index")])
    elif name.endswith(".meta"):  # the graph file next to the checkpoint
        prefix = Path(str(p)[: -len(".meta")])
    elif _DATA_RE.match(name):
        prefix = p.with_name(_DATA_RE.match(name).group("prefix"))  # type: ignore[union-attr]
    else:
        prefix = p
    index = Path(str(prefix) + ".index")
    if not index.is_file():
        if p.exists() and p.is_file():
            raise ConversionError(
                f"{p} is not a TensorFlow checkpoint: pass the prefix (.../model.ckpt), "
                f"its .index file, the folder holding it, or the official .tar.gz")
        if prefix != p or p.exists():
            raise ConversionError(
                f"checkpoint index {index} not found; the checkpoint is incomplete or the path is wrong")
        raise ConversionError(
            f"{p} does not exist (no file, folder, or {p.name}.index); pass a checkpoint prefix "
            f"(.../model.ckpt), a folder or a .tar.gz")
    _check_shards(prefix)
    return os.path.abspath(prefix)


def is_tarball(path: PathLike) -> bool:
    """Whether ``path`` is a tar archive (``.tar.gz``/``.tgz``/``.tar`` or tar content)."""
    p = Path(path)
    name = p.name.lower()
    if not p.is_file() or name.endswith(".index") or _DATA_RE.match(p.name) or p.name == "checkpoint":
        return False
    return name.endswith(_TAR_SUFFIXES) or _looks_like_tar(p)


def _looks_like_tar(p: Path) -> bool:
    try:
        return tarfile.is_tarfile(p)
    except OSError:
        return False


def _check_shards(prefix: Path) -> None:
    """At least one PREFIX.data-I-of-N must exist, and for each N seen all N shards."""
    base = prefix.name
    seen: Dict[int, set] = {}
    try:
        entries = os.listdir(prefix.parent)
    except OSError as e:
        raise ConversionError(f"cannot list {prefix.parent}: {_one_line(e.strerror or e)}") from e
    for entry in entries:
        m = _DATA_RE.match(entry)
        if m and m.group("prefix") == base:
            seen.setdefault(int(m.group("n")), set()).add(int(m.group("i")))
    if not seen:
        raise ConversionError(
            f"checkpoint {prefix} has an index but no data file ({base}.data-00000-of-00001 missing); "
            f"the checkpoint is incomplete: extract or download it again")
    for n, have in sorted(seen.items()):
        missing = [f"{base}.data-{i:05d}-of-{n:05d}" for i in range(n) if i not in have]
        if missing:
            shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
            raise ConversionError(
                f"checkpoint {prefix} is missing data shard(s) {shown}; "
                f"the checkpoint is incomplete: extract or download it again")


def _find_prefixes(folder: Path) -> List[Path]:
    out = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))  # skips our temp folders too
        for f in sorted(files):
            # "._x.index": macOS AppleDouble metadata that some tarballs carry
            if f.endswith(".index") and not f.startswith("._") and len(f) > len(".index"):
                out.append(Path(root) / f[: -len(".index")])
    return out


def _read_checkpoint_file(path: Path) -> Optional[str]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    m = re.search(r'^\s*model_checkpoint_path\s*:\s*"((?:[^"\\]|\\.)*)"', text, re.MULTILINE)
    return re.sub(r"\\(.)", r"\1", m.group(1)) if m else None


def _resolve_folder(folder: Path) -> str:
    prefixes = _find_prefixes(folder)
    if not prefixes:
        raise ConversionError(
            f"no TensorFlow checkpoint (*.index file) found in folder {folder}; "
            f"pass the folder that holds model.ckpt.index or the official .tar.gz")
    if len(prefixes) == 1:
        chosen = prefixes[0]
    else:
        by_abs = {os.path.abspath(q): q for q in prefixes}
        named = set()
        for ckfile in folder.rglob("checkpoint"):
            if not ckfile.is_file():
                continue
            value = _read_checkpoint_file(ckfile)
            if not value:
                continue
            candidates = [ckfile.parent / value]
            # the path may be absolute on the training machine (or gs://...): try its name here
            candidates.append(ckfile.parent / PurePosixPath(value.replace("\\", "/")).name)
            for c in candidates:
                hit = by_abs.get(os.path.abspath(c))
                if hit is not None:
                    named.add(hit)
                    break
        if len(named) != 1:
            listed = ", ".join(str(q.relative_to(folder)) for q in prefixes[:6])
            if len(prefixes) > 6:
                listed += f" and {len(prefixes) - 6} more"
            why = ("its 'checkpoint' files name different ones" if named
                   else "no 'checkpoint' file names one of them")
            raise ConversionError(
                f"folder {folder} holds {len(prefixes)} checkpoints ({listed}) and {why}; "
                f"pass the prefix you want as --checkpoint")
        chosen = named.pop()
    _check_shards(chosen)
    return os.path.abspath(chosen)


def _tar_stem(name: str) -> str:
    lower = name.lower()
    for suf in _TAR_SUFFIXES:
        if lower.endswith(suf):
            return name[: -len(suf)]
    return name


def _check_member(member: tarfile.TarInfo, tarball: Path) -> None:
    """Refuse anything but plain files and folders with relative names inside the archive."""
    name = member.name
    bad = None
    if not name or "\x00" in name:
        bad = "an empty or invalid name"
    elif name.startswith(("/", "\\")) or PurePosixPath(name).is_absolute() or re.match(r"^[A-Za-z]:", name):
        bad = "an absolute path"
    elif ".." in PurePosixPath(name.replace("\\", "/")).parts:
        bad = "a '..' component"
    elif member.issym() or member.islnk():
        bad = f"a {'symbolic' if member.issym() else 'hard'} link to {member.linkname!r}"
    elif member.isdev():
        bad = "a device or fifo"
    elif not (member.isreg() or member.isdir()):
        bad = "an unsupported entry type"
    if bad:
        raise ConversionError(
            f"refusing unsafe tarball {tarball}: member {name!r} is {bad}; "
            f"use the official checkpoint tarball")


def _make_filter(tarball: Path):
    data_filter = getattr(tarfile, "data_filter", None)

    def _filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
        _check_member(member, tarball)
        if data_filter is not None:
            member = data_filter(member, dest)
        # sane permissions whatever the archive says (a read-only folder would block cleanup)
        return member.replace(mode=0o755 if member.isdir() else 0o644, deep=False)

    return _filter


EXTRACT_MIN_AGE = 60.0  # seconds: an extraction folder younger than this is never taken for a stale one


class Extraction:
    """A tarball extracted safely into a private folder below ``root`` (``cache_dir()/"extracted"``)
    for TensorFlow, which reads files; ``prefix`` is the checkpoint in it.

    The cache keeps one form, the tarball: the conversion streams it (converter.sources.tarball) and only
    TensorFlow (``--verify``, ``--reader tf``, ``verify``) needs files, so each such run extracts it
    and :meth:`remove` deletes the folder (at the latest when the object is collected or the
    process exits). A folder left by a killed process is removed by a later extraction once no
    process holds it locked.
    """

    def __init__(self, tarball: Path, root: Optional[PathLike] = None, on_corrupt=None):
        root = Path(os.path.abspath(Path(root).expanduser() if root is not None else cache_dir() / "extracted"))
        for attempt in range(2):  # the last one out of root removes it: once more if it just went
            try:
                root.mkdir(parents=True, exist_ok=True)
                _remove_stale(root)
                self.folder = Path(tempfile.mkdtemp(prefix=f"{_tar_stem(tarball.name)}-", dir=root))
                break
            except FileNotFoundError:
                if attempt:
                    raise ConversionError(f"cannot create an extraction folder in {root}: it keeps "
                                          f"disappearing; set {CACHE_ENV} to a private folder") from None
            except OSError as e:
                raise ConversionError(
                    f"cannot create extraction folder {root}: {_one_line(e.strerror or e)}; "
                    f"set {CACHE_ENV} to a writable folder") from e
        self._finalizer = weakref.finalize(self, _discard, self.folder, _lock_folder(self.folder))
        try:
            try:
                _extract_into(tarball, self.folder, on_corrupt)
            except OSError as e:
                raise ConversionError(
                    f"cannot extract {tarball} into {root}: {_one_line(e.strerror or e)}; "
                    f"check free space and permissions") from e
            try:
                self.prefix = _resolve_folder(self.folder)
            except ConversionError as e:
                reason = str(e).split(";")[0].replace(str(self.folder), "the archive")
                raise ConversionError(
                    f"tarball {tarball} holds no usable checkpoint ({reason}); "
                    f"use the official checkpoint tarball") from None
        except BaseException:
            self.remove()
            raise

    def remove(self) -> None:
        """Delete the extracted files (idempotent)."""
        self._finalizer()


def _lock_folder(folder: Path) -> Optional[int]:
    """An fd holding an exclusive flock on ``folder``; None where that cannot be had."""
    if fcntl is None:  # pragma: no cover
        return None
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _discard(folder: Path, fd: Optional[int]) -> None:
    shutil.rmtree(folder, ignore_errors=True)
    if fd is not None:
        os.close(fd)
    with contextlib.suppress(OSError):
        folder.parent.rmdir()  # only when empty: the last one out


def _remove_stale(root: Path) -> None:
    """Remove from ``root`` what no live extraction holds: folders of killed processes, and the
    extracted copies and lock files earlier versions kept (older than EXTRACT_MIN_AGE)."""
    now = time.time()
    with contextlib.suppress(OSError), os.scandir(root) as entries:
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if now - st.st_mtime < EXTRACT_MIN_AGE or not (is_dir or entry.name.endswith(".lock")):
                continue
            fd = _lock_folder(Path(entry.path))  # a file's flock as well
            if fd is None:
                continue  # in use (or no locks here: leave it)
            try:
                if is_dir:
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass
            finally:
                os.close(fd)


@contextlib.contextmanager
def checkpoint_files(path: PathLike) -> Iterator[str]:
    """The prefix of ``--checkpoint`` on disk for TensorFlow for the duration of the block: a
    tarball extracted (see :class:`Extraction`), anything else as :func:`resolve_checkpoint`."""
    p = Path(os.fspath(path)).expanduser()
    if not is_tarball(p):
        yield resolve_checkpoint(p)
        return
    extraction = Extraction(p)
    try:
        yield extraction.prefix
    finally:
        extraction.remove()


def _extract_into(tarball: Path, dest: Path, on_corrupt=None) -> None:
    """One streaming pass: every member is checked before it is written. ``on_corrupt(detail)``
    gives the error for a damaged archive (a download's: see :func:`_corrupt_download_hook`)."""
    member_filter = _make_filter(tarball)
    try:
        with tarfile.open(tarball, mode="r|*") as tf:
            for member in tf:
                tf.extract(member, path=dest, set_attrs=True, filter=member_filter)
    except ConversionError:
        raise
    except _FILTER_ERRORS as e:  # tarfile's own 'data' filter caught what our checks did not
        raise ConversionError(
            f"refusing unsafe tarball {tarball}: {_one_line(e)}; use the official checkpoint tarball") from e
    except OSError as e:
        if isinstance(e, PermissionError) or e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
            raise  # our side, not the tarball's: reported by the caller
        raise corrupt_tarball_error(tarball, _one_line(e), on_corrupt) from e
    except (tarfile.TarError, EOFError, zlib.error, ValueError) as e:
        raise corrupt_tarball_error(tarball, _one_line(e), on_corrupt) from e


class CorruptDownload(ConversionError):
    """A cached download found damaged while read; it was moved to ``aside`` (PATH.corrupt), so the
    next fetch downloads it again (:func:`rerun_if_corrupt_download` does so at once)."""

    def __init__(self, path: Path, detail: str, aside: Path):
        self.path, self.detail, self.aside = path, detail, aside
        super().__init__(f"cached download {path} is damaged ({detail}); moved it to {aside.name}: "
                         f"run again to download it afresh")


def _corrupt_download_hook(path: Path):
    """``on_corrupt`` of a cached download: set the file aside (if it is still the one read)."""
    st = os.stat(path)
    ident = (st.st_dev, st.st_ino)

    def hook(detail: str) -> ConversionError:
        try:
            with _file_lock(_lock_path(path), quiet=True):
                aside = _set_aside(path, ident)
        except (OSError, ConversionError):
            aside = None
        if aside is None:  # replaced meanwhile, or cannot be moved
            return ConversionError(f"cached download {path} is damaged ({detail}); delete it and run again")
        return CorruptDownload(path, detail, aside)

    return hook


def _set_aside(path: Path, ident=None) -> Optional[Path]:
    """Move a damaged download to PATH.corrupt (replacing an older one) and drop its sidecar; the
    caller holds its lock. None when it is gone, or (``ident``) is another file by now."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if ident is not None and (st.st_dev, st.st_ino) != ident:
        return None
    aside = path.with_name(path.name + ".corrupt")
    os.replace(path, aside)
    with contextlib.suppress(FileNotFoundError):
        _sidecar(path).unlink()
    return aside


def rerun_if_corrupt_download(run, *args):
    """``run(*args)``; when it finds a cached download damaged (set aside by then), one line
    saying so, and ``run(*args)`` once more, which downloads it again."""
    try:
        return run(*args)
    except CorruptDownload as e:
        log.warning("%s is damaged (%s); moved it to %s and downloading it again", e.path, e.detail, e.aside.name)
    return run(*args)


_ARCHIVE_CHUNK = 1 << 20
_MAX_INFLATE = 1 << 24  # bytes of output per decompress call (bounded memory on any input)


def archive_problem(path: PathLike) -> Optional[str]:
    """Why ``path`` is not a complete tar archive (None when it is): one pass through a gzip,
    bzip2 or xz stream checks its own checksums and its end; a plain tar, that its members'
    data lies inside the file."""
    import bz2
    import lzma

    try:
        with open(path, "rb") as f:
            head = f.read(6)
            if head[:2] == b"\x1f\x8b":
                make = lambda: _ZlibStream(zlib.decompressobj(16 + zlib.MAX_WBITS))  # noqa: E731
            elif head[:3] == b"BZh":
                make = lambda: _ZlibStream(bz2.BZ2Decompressor())  # noqa: E731
            elif head == b"\xfd7zXZ\x00":
                make = lambda: _ZlibStream(lzma.LZMADecompressor())  # noqa: E731
            else:
                return _plain_tar_problem(Path(path))
            f.seek(0)
            d = make()
            for chunk in iter(lambda: f.read(_ARCHIVE_CHUNK), b""):
                while chunk:
                    chunk = d.feed(chunk)
                    if d.eof:  # another stream may follow (concatenated gzip members)
                        if not chunk.startswith(head[:2]):
                            return None  # trailing bytes past the archive are never read
                        d = make()
            if not d.eof:
                return "the compressed stream ends early (truncated)"
    except (zlib.error, OSError, EOFError, ValueError, lzma.LZMAError) as e:
        return _one_line(e.strerror if isinstance(e, OSError) and e.strerror else e)
    return None


class _ZlibStream:
    """zlib/bz2/lzma decompressors behind one ``feed``: returns the input not yet consumed."""

    def __init__(self, d):
        self.d = d

    @property
    def eof(self) -> bool:
        return self.d.eof

    def feed(self, data: bytes) -> bytes:
        d = self.d
        if hasattr(d, "unconsumed_tail"):  # zlib
            d.decompress(data, _MAX_INFLATE)
            return d.unused_data if d.eof else d.unconsumed_tail
        d.decompress(data, _MAX_INFLATE)
        while not d.eof and not d.needs_input:  # output left inside: drain it
            d.decompress(b"", _MAX_INFLATE)
        return d.unused_data if d.eof else b""


def _plain_tar_problem(path: Path) -> Optional[str]:
    try:
        size = path.stat().st_size
        with tarfile.open(path, mode="r:") as tf:
            members = tf.getmembers()
    except (tarfile.TarError, EOFError, OSError) as e:
        return f"not a tar archive ({_one_line(e)})"
    if not members:
        return "an empty tar archive"
    last = max(members, key=lambda m: m.offset_data + m.size)
    if last.offset_data + last.size > size:
        return f"truncated: {last.name} ends at byte {last.offset_data + last.size} of {size}"
    return None


# --------------------------------------------------------------------------- downloading


class _Retryable(Exception):
    """A failed attempt worth retrying (dropped connection, truncated body, 5xx)."""

    def __init__(self, message: str, offline: bool = False):
        super().__init__(message)
        self.offline = offline


def _manual_hint(url: str) -> str:
    return f"download {url} by hand and pass the file as --checkpoint"


def download(url: str, dest: PathLike, expected_sha256: Optional[str] = None, progress: bool = True,
             retries: int = 4, *, retry_delay: Optional[float] = None,
             timeout: float = DOWNLOAD_TIMEOUT) -> str:
    """Download ``url`` to ``dest`` atomically and return the file's sha256.

    Writes a unique temp file next to ``dest`` and renames it into place only when complete
    (Content-Length matched, ``expected_sha256`` matched when given); resumes after a dropped
    connection with an HTTP Range request (restarts when the server ignores Range); retries
    ``retries`` times with exponential backoff (``retry_delay`` or ``RETRY_BASE_DELAY`` seconds,
    doubled each time) on dropped connections, truncated bodies and 5xx. Writes
    ``dest + ".sha256"``. On failure nothing is left behind and ConversionError is raised.
    """
    expected = _normalize_sha(expected_sha256, "expected sha256")
    dest = Path(dest).expanduser()
    base_delay = RETRY_BASE_DELAY if retry_delay is None else retry_delay
    host = urllib.parse.urlsplit(url).hostname or url
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    except OSError as e:
        raise ConversionError(
            f"cannot write to {dest.parent}: {_one_line(e.strerror or e)}; "
            f"set {CACHE_ENV} to a writable folder") from e
    tmp = Path(tmp_name)
    done = False
    try:
        with os.fdopen(fd, "r+b") as out:
            state = {"hash": hashlib.sha256(), "have": 0}
            best = 0
            failures = 0
            attempts = 0
            while True:
                attempts += 1
                try:
                    _attempt(url, out, state, progress, timeout, dest.name)
                    break
                except _Retryable as e:
                    if state["have"] > best:  # progress made: this drop does not count
                        best = state["have"]
                    else:
                        failures += 1
                    if failures > retries or attempts >= MAX_ATTEMPTS:
                        if e.offline:
                            raise ConversionError(
                                f"cannot reach {host} (offline? {e}); {_manual_hint(url)}") from None
                        raise ConversionError(
                            f"download of {url} failed after {attempts} attempts ({e}); "
                            f"try again later or {_manual_hint(url)}") from None
                    delay = min(RETRY_MAX_DELAY, base_delay * (2 ** max(0, failures - 1)))
                    log.info("download of %s interrupted (%s); retrying in %.1fs", url, e, delay)
                    if delay > 0:
                        time.sleep(delay)
            out.flush()
            os.fsync(out.fileno())
        digest = state["hash"].hexdigest()
        if expected is not None and digest != expected:
            # complete (its length as the server said): the pin, or the file upstream, is what differs
            raise ConversionError(
                f"the download of {url} does not match the pinned sha256: pinned {expected}, downloaded {digest}; "
                f"check the pin (--sha256), or whether the file changed upstream")
        os.replace(tmp, dest)
        done = True
        _write_sidecar(dest, digest)
        return digest
    except OSError as e:
        raise ConversionError(f"cannot write {dest}: {_one_line(e.strerror or e)}; check free space "
                              f"and permissions") from e
    finally:
        if not done:
            with contextlib.suppress(OSError):
                tmp.unlink()


def _attempt(url: str, out, state: dict, progress: bool, timeout: float, label: str) -> None:
    """One GET; appends to ``out`` (resuming at state['have']) or restarts from zero."""
    have = state["have"]
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    scheme = urllib.parse.urlsplit(url).scheme.lower()
    try:
        req = urllib.request.Request(url, headers=headers)
    except ValueError as e:
        raise ConversionError(f"invalid download URL {url!r}: {_one_line(e)}") from None
    try:
        resp = urllib.request.urlopen(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        code = e.code
        e.close()
        if code == 416 and have:
            _restart(out, state)
            raise _Retryable("server refused to resume (HTTP 416)")
        if code >= 500 or code in (408, 429):
            raise _Retryable(f"HTTP {code} {_one_line(e.reason)}")
        raise ConversionError(
            f"download failed: {url} answered HTTP {code} {_one_line(e.reason)}; check the URL "
            f"(or $EFFNET_BASE_URL), or {_manual_hint(url)}") from None
    except urllib.error.URLError as e:
        reason = e.reason
        if scheme not in ("http", "https"):
            raise ConversionError(f"cannot open {url}: {_one_line(reason)}") from None
        raise _Retryable(_one_line(reason), offline=True)
    except (http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
        raise _Retryable(_one_line(f"{type(e).__name__}: {e}"))
    except OSError as e:
        raise _Retryable(_one_line(f"{type(e).__name__}: {e}"), offline=True)
    except ValueError as e:
        raise ConversionError(f"invalid download URL {url!r}: {_one_line(e)}") from None

    with resp:
        status = getattr(resp, "status", None) or 200
        length = resp.headers.get("Content-Length")
        length_i = int(length) if length and length.strip().isdigit() else None
        if have and status == 206:
            m = re.match(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != have:
                _restart(out, state)
                raise _Retryable("server resumed at the wrong offset")
            total = int(m.group(3)) if m.group(3) != "*" else (have + length_i if length_i is not None else None)
        else:  # full body (200, or the server ignored Range): start over
            if have:
                _restart(out, state)
                have = 0
            total = length_i
        bar = _progress_bar(progress, total, have, label)
        try:
            while True:
                try:
                    block = resp.read(CHUNK_SIZE)
                except (http.client.HTTPException, ConnectionError, socket.timeout, TimeoutError) as e:
                    raise _Retryable(_one_line(f"connection dropped: {type(e).__name__}: {e}"))
                except OSError as e:
                    raise _Retryable(_one_line(f"connection dropped: {e}"))
                if not block:
                    break
                out.write(block)
                state["hash"].update(block)
                state["have"] += len(block)
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
        if total is not None and state["have"] != total:
            raise _Retryable(f"truncated body: got {state['have']} of {total} bytes")


def _restart(out, state: dict) -> None:
    out.seek(0)
    out.truncate()
    state["have"] = 0
    state["hash"] = hashlib.sha256()


def _progress_bar(progress: bool, total: Optional[int], initial: int, label: str):
    if not progress:
        return None
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, initial=initial, unit="B", unit_scale=True, unit_divisor=1024,
                desc=label, leave=False, file=sys.stderr,
                disable=not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()))


def _sidecar(path: Path) -> Path:
    return Path(str(path) + ".sha256")


def _write_sidecar(dest: Path, digest: str) -> None:
    side = _sidecar(dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{side.name}.", suffix=".part", dir=dest.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(f"{digest}  {dest.name}\n")
        os.replace(tmp, side)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_sidecar(path: Path) -> Optional[str]:
    try:
        words = _sidecar(path).read_text().split()
    except (OSError, UnicodeDecodeError):
        return None
    return words[0].lower() if words and _SHA_RE.match(words[0].lower()) else None


def _lock_path(path: Path) -> Path:
    return Path(str(path) + ".lock")


def fetch_checkpoint(ckpt: "Checkpoint", sha256: Optional[str] = None, progress: bool = True) -> Path:
    """The official tarball of ``ckpt`` in the cache, downloaded from ``ckpt.download_url()`` if needed.

    Cached at ``cache_dir() / ckpt.bucket_path`` (the bucket's own paths); reused when it matches
    its ``.sha256`` sidecar (and ``sha256`` when given), downloaded again otherwise. A download is
    checked as an archive (:func:`archive_problem`) before it is kept: a damaged one is set aside
    as ``PATH.corrupt`` and refused. An exclusive lock on ``PATH.lock`` (removed when done)
    serializes processes sharing the cache; ``progress`` False: no bars, no "waiting" line.
    """
    want = _normalize_sha(sha256, "--sha256")
    dest = cache_dir() / ckpt.bucket_path
    url = ckpt.download_url()
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConversionError(
            f"cannot create cache folder {dest.parent}: {_one_line(e.strerror or e)}; "
            f"set {CACHE_ENV} to a writable folder") from e
    with _file_lock(_lock_path(dest), quiet=not progress):
        _adopt_legacy(cache_dir() / ckpt.relative_path, dest)
        if dest.is_file():
            recorded = _read_sidecar(dest)
            if recorded is not None:
                actual = sha256_file(dest)
                if actual == recorded:
                    if want is not None and actual != want:  # an intact download: the pin differs from it
                        raise ConversionError(
                            f"the download of {url} (cached intact as {dest}) does not match the "
                            f"pinned sha256: pinned {want}, downloaded {actual}; check the pin (--sha256)")
                    return dest
            log.warning("cached %s is incomplete or does not match its sha256; downloading it again", dest)
        download(url, dest, expected_sha256=want, progress=progress)
        problem = archive_problem(dest)
        if problem is not None:
            aside = _set_aside(dest)
            raise ConversionError(
                f"the download of {url} is not a readable tarball ({problem}); kept it as {aside}; "
                f"the server sent a damaged file: try again later or {_manual_hint(url)}")
    return dest


def _adopt_legacy(legacy: Path, dest: Path) -> None:
    """Move a tarball cached where earlier versions put it (below the family's folder, without
    ``efficientnet/``) to its place, with its sidecar; the caller holds ``dest``'s lock."""
    if legacy == dest or dest.exists() or not legacy.is_file():
        return
    with contextlib.suppress(OSError):
        os.replace(legacy, dest)
        if _sidecar(legacy).is_file():
            os.replace(_sidecar(legacy), _sidecar(dest))
        log.info("moved cached %s to %s", legacy, dest)


# --------------------------------------------------------------------------- the resolved source

SOURCE_KINDS = ("keras", "tarball", "folder", "prefix", "download")


def classify(path: PathLike) -> str:
    """What a --checkpoint argument is: ``keras`` (an .h5), ``tarball``, ``folder`` or ``prefix``
    (a prefix, its .index/.data file or the ``checkpoint`` file; checked when it is opened)."""
    from .keras import is_keras_file

    p = Path(os.fspath(path)).expanduser()
    if p.is_dir():
        return "folder"
    if is_keras_file(p):
        return "keras"
    if is_tarball(p):
        return "tarball"
    return "prefix"


class Source:
    """One resolved checkpoint source, built once: its kind (SOURCE_KINDS), the reader over it, the
    prefix on disk (None while a tarball is streamed), what the metadata records as its origin and
    its sha256 (a pipeline.Deferred computed beside the conversion)."""

    def __init__(self, kind: str, path: Path, origin: str, reader, prefix: Optional[str], sha256,
                 extraction: Optional[Extraction] = None):
        self.kind, self.path, self.origin = kind, path, origin
        self.reader, self.prefix, self.sha256 = reader, prefix, sha256
        self._extraction = extraction

    @classmethod
    def open(cls, path: PathLike, need_files: bool = False, reader: Optional[str] = None,
             kind: Optional[str] = None, origin: Optional[str] = None, sha256: Optional[str] = None,
             variant: Optional[str] = None) -> "Source":
        """Open --checkpoint ``path`` (a download: ``kind="download"`` and its URL as ``origin``).

        A tarball is read as a stream, nothing extracted, unless files are needed (``need_files``:
        TensorFlow verifies, or ``reader`` is ``tf``); then it is extracted (:class:`Extraction`)
        until :meth:`close`. ``sha256`` (--sha256) pins a local tarball: checked here, before
        anything is read; a download's pin is checked by :func:`fetch_checkpoint`. A Keras .h5
        (``keras``) is read by converter.sources.keras (``variant``: checked against the file, or inferred).
        """
        from ..pipeline import Deferred, sha256_files
        from .readers import READER_ENV, open_reader

        p = Path(os.fspath(path)).expanduser()
        kind = kind or classify(p)
        if sha256 is not None and kind != "download":
            check_pin(p, sha256, kind)
        origin = origin or (str(p.resolve()) if p.exists() else os.fspath(path))
        if kind == "keras":
            from .keras import KerasH5Reader

            return cls(kind, p, origin, KerasH5Reader(p, variant=variant), None, Deferred.run(sha256_file, p))
        reader_kind = (reader or os.environ.get(READER_ENV) or "bundle").lower()
        if kind in ("tarball", "download"):
            sha = Deferred.run(sha256_file, p)  # memoized: free when the pin or the cache hashed it
            on_corrupt = _corrupt_download_hook(p) if kind == "download" else None
            if not need_files and reader_kind == "bundle":
                from .tarball import TarballReader

                return cls(kind, p, origin, TarballReader(p, on_corrupt=on_corrupt), None, sha)
            extraction = Extraction(p, on_corrupt=on_corrupt)
            try:
                return cls(kind, p, origin, open_reader(extraction.prefix, reader), extraction.prefix, sha,
                           extraction)
            except BaseException:
                extraction.remove()
                raise
        prefix = resolve_checkpoint(p)
        index = Path(prefix + ".index")
        shards = sorted(index.parent.glob(Path(prefix).name + ".data-*"))
        sha = Deferred.run(sha256_files, [index, *shards])  # the .index, then each .data shard
        return cls(kind, p, origin, open_reader(prefix, reader), prefix, sha)

    def close(self) -> None:
        """Close the reader; delete the extracted files, if any."""
        close = getattr(self.reader, "close", None)
        if close is not None:
            close()
        if self._extraction is not None:
            self._extraction.remove()


def check_pin(path: PathLike, sha256: Optional[str], kind: Optional[str] = None) -> None:
    """Refuse a local file that differs from its --sha256 pin (one line), or a pin on a
    checkpoint of several files (a folder or prefix), which has no one sha256 to pin."""
    want = _normalize_sha(sha256, "--sha256")
    if want is None:
        return
    p = Path(os.fspath(path)).expanduser()
    kind = kind or classify(p)
    if kind in ("folder", "prefix"):
        raise ConversionError(f"--sha256 pins one file (a tarball or .h5); {p} is a checkpoint {kind} of "
                              f"several files: drop --sha256, or pass the tarball it came from")
    actual = sha256_file(p)
    if actual != want:
        raise ConversionError(f"{p} does not match the pinned sha256: pinned {want}, file {actual}; "
                              f"check the pin (--sha256) or the file")

"""The one exception type a user can trigger; the CLI turns it into a one-line error."""
import contextlib
from typing import Callable, Iterator


class ConversionError(Exception):
    """Bad input or a failed check: the message is one line that says what is wrong and what to do."""

    exit_code = 2


class VerificationError(ConversionError):
    """The converted model does not compute what the TensorFlow reference computes."""

    exit_code = 3


def first_line(e: BaseException, default: str = "", limit: int = 300) -> str:
    """The first non-empty line of ``e``'s message (TensorFlow's ``e.message``, else ``str(e)``; ``default``,
    else the type's name, when it has none), cut to ``limit``."""
    for line in str(getattr(e, "message", None) or e).strip().splitlines():
        if line.strip():
            return line.strip()[:limit]
    return (default or type(e).__name__)[:limit]


MAX_LISTED = 6  # names shown in one error line before "... (N more)"


def listing(items, limit: int = MAX_LISTED) -> str:
    """``a, b, c, ... (N more)``: the first ``limit`` of ``items`` for a one-line error."""
    items = [str(i) for i in items]
    shown = ", ".join(items[:limit])
    return shown + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")


# --- a full disk as one line (shared by conversion and export) ---------------------------------
# torch.save's zip writer turns a failed write into RuntimeError("[enforce fail at inline_container.cc...]
# ... PytorchStreamWriter failed writing file ...: file write failed"), without the errno
_TORCH_WRITE_FAILED = ("PytorchStreamWriter", "inline_container", "file write failed")


def human_size(n: float) -> str:
    """``n`` bytes as ``12.3 MB`` (decimal units, as ``df -H`` shows them)."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000.0
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"


def free_space(folder) -> "int | None":
    """Bytes an unprivileged writer may still use in ``folder`` (None when it cannot be asked)."""
    import shutil

    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


def disk_full(folder, needed: "int | None" = None, what: str = "the output") -> ConversionError:
    """The one-line error for ``folder`` lacking room: what is needed, what is free, what to do."""
    free = free_space(folder)
    have = "free space unknown" if free is None else "no space there" if not free else f"{human_size(free)} free there"
    need = f"{what} needs {human_size(needed)}" if needed else f"{what} did not fit"
    return ConversionError(f"not enough space in {folder}: {need}, {have}; "
                           "free some space or choose another folder")


def check_space(folder, needed: int, what: str = "the output") -> None:
    """Refuse before writing when ``folder`` has less than ``needed`` bytes free (raises disk_full)."""
    free = free_space(folder)
    if free is not None and free < needed:
        raise disk_full(folder, needed, what)


def is_disk_full(e: BaseException, folder=None, needed: "int | None" = None) -> bool:
    """Whether ``e`` (or what it wraps) is a write that found no room: ENOSPC/EDQUOT, or torch.save's
    errno-less zip-writer failure while ``folder`` has less than ``needed`` (or 1 MiB) free."""
    import errno

    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", 122)):
            return True
        if isinstance(e, RuntimeError) and any(t in str(e) for t in _TORCH_WRITE_FAILED) and folder is not None:
            free = free_space(folder)
            if free is not None and free < max(needed or 0, 1 << 20):
                return True
        e = e.__cause__ or e.__context__
    return False


@contextlib.contextmanager
def disk_full_as_error(folder, needed: "int | None" = None, what: str = "the output",
                       cleanup: "Callable[[], object] | None" = None) -> Iterator[None]:
    """``with disk_full_as_error(folder, needed, cleanup):`` a write in the block that finds no room
    becomes :func:`disk_full`'s one-line ConversionError (exit 2), the free space measured after
    ``cleanup`` (removing the partial temp files; the caller's own removal stays harmless); other
    errors pass unchanged."""
    try:
        yield
    except ConversionError:
        raise
    except Exception as e:  # noqa: B902 - only no-room writes are translated
        if is_disk_full(e, folder, needed):
            if cleanup is not None:
                cleanup()
            raise disk_full(folder, needed, what) from e
        raise

"""The one exception type a user can trigger; the CLI turns it into a one-line error."""


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

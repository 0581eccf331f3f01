"""Import TensorFlow without its start-up chatter on stderr (errors stay one line)."""
from __future__ import annotations

import os
import sys
import tempfile

# what TensorFlow 2.21 writes to stderr while importing, whatever TF_CPP_MIN_LOG_LEVEL says
# (absl logging is not initialised yet): absl's notice, and oneDNN's on CPUs where it is on
STARTUP_NOISE = ("All log messages before absl::InitializeLog() is called are written to STDERR",
                 "oneDNN custom operations are on")


def import_tensorflow():
    """``import tensorflow`` with its known start-up lines dropped; any other stderr output is kept.

    Raises ImportError as the import does.
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no usable fd 2 (an embedding host): import as is
        import tensorflow as tf

        return tf
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow as tf
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines() if line and not any(n in line for n in STARTUP_NOISE)]
            if kept:
                sys.stderr.write("\n".join(kept) + "\n")
    return tf

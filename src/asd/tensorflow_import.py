"""TensorFlow, imported without the lines its C++ start-up writes to stderr.

Importing TensorFlow 2.20 (as 2.21) prints, twice, absl's "All log messages before
absl::InitializeLog() is called are written to STDERR" and a oneDNN notice, plus a
CPU-feature notice, whatever ``TF_CPP_MIN_LOG_LEVEL`` says for the first two: a command
whose error is one line would print eight. The CLI imports TensorFlow through here, with
file descriptor 2 pointed at ``/dev/null`` for the import only; Python's own exceptions
(an ImportError) still reach the caller, and later TensorFlow warnings are not hidden.
"""

from __future__ import annotations

import os
import sys


def import_tensorflow():
    """Import and return ``tensorflow`` (once; later calls return the loaded module), its
    start-up notices kept off stderr. Sets ``TF_CPP_MIN_LOG_LEVEL=3`` unless the user set it.

    Raises
    ------
    ImportError
        TensorFlow is not installed (the ``train`` extra).
    """
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow

"""How many input rows one request to TF Serving may hold: ``max_batch_size`` of its
``batching.config`` (imports no TensorFlow).

TF Serving with ``--enable_batching`` refuses a request whose batch dimension exceeds
``max_batch_size`` (INVALID_ARGUMENT, "Task size N is larger than maximum input batch
size M"; tensorflow/serving ``batching_session.cc`` / TensorFlow's
``shared_batch_scheduler.h``). Clients split a clip's rows into requests that fit, so the
limit is read from the same file the server reads, never copied.

Where the file is looked for, in order: ``ASD_BATCHING_CONFIG``; ``batching.config`` next
to ``ASD_MODELS_CONFIG`` (compose mounts both at ``/config``); this repository's
``production/serving/batching.config``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

BATCHING_CONFIG_ENV = "ASD_BATCHING_CONFIG"
REPOSITORY_BATCHING_CONFIG = Path(__file__).resolve().parents[3] / "production" / "serving" / "batching.config"


def max_batch_size(path: str | Path) -> int:
    """``max_batch_size { value: N }`` of a ``BatchingParameters`` text proto.

    Raises
    ------
    FileNotFoundError
        No such file.
    ValueError
        The file sets no ``max_batch_size``.
    """
    # a regular expression, not text_format: the BatchingParameters proto is not in
    # tensorflow-serving-api, and TensorFlow's own copy would load TensorFlow in the app
    text = Path(path).read_text(encoding="utf-8")
    text = "\n".join(line.split("#", 1)[0] for line in text.splitlines())  # comments out
    found = re.search(r"\bmax_batch_size\s*\{\s*value\s*:\s*(\d+)\s*\}", text)
    if not found:
        raise ValueError(f"{path}: no max_batch_size {{ value: N }} in this batching config")
    return int(found.group(1))


def batching_config_path(environ: dict | None = None) -> Path | None:
    """The batching config the serving side uses (module docstring), or None if none is found."""
    environ = os.environ if environ is None else environ
    if environ.get(BATCHING_CONFIG_ENV):
        return Path(environ[BATCHING_CONFIG_ENV])
    candidates = [Path(environ["ASD_MODELS_CONFIG"]).parent / "batching.config"] if environ.get("ASD_MODELS_CONFIG") else []
    candidates.append(REPOSITORY_BATCHING_CONFIG)
    return next((p for p in candidates if p.is_file()), None)


def max_request_rows(environ: dict | None = None) -> int | None:
    """Rows one request may hold (:func:`max_batch_size` of :func:`batching_config_path`),
    or None when no batching config is found (no limit known).

    Raises
    ------
    FileNotFoundError, ValueError
        ``ASD_BATCHING_CONFIG`` names a missing file, or a file without the setting.
    """
    path = batching_config_path(environ)
    return None if path is None else max_batch_size(path)

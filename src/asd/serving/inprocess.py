"""In-process backend: the SavedModel loaded with ``tf.saved_model.load``.

For use without Docker or TF Serving; it runs the very signature TF Serving would.
Importing this module imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from ..layout import resolve_version_dir
from ..metadata import INPUT_NAME, SERVING_SIGNATURE, ModelMetadata
from . import Prediction


class InProcessBackend:
    """A SavedModel version served in this process.

    Parameters
    ----------
    path : str or Path
        A models directory, a model directory or a version directory (see
        :func:`asd.layout.resolve_version_dir`).
    name, version : optional
        Which model and version, where ``path`` leaves it open.

    Raises
    ------
    asd.layout.ModelNotFoundError
        No SavedModel there.
    asd.metadata.ModelMismatchError
        No or invalid asd metadata.
    """

    def __init__(self, path: str | Path, name: str | None = None, version: int | None = None):
        self.path = resolve_version_dir(path, name=name, version=version)
        self.metadata = ModelMetadata.read(self.path)
        self._loaded = tf.saved_model.load(str(self.path))
        self._serve = self._loaded.signatures[SERVING_SIGNATURE]

    def describe(self) -> str:
        return f"in-process SavedModel {self.path}, model '{self.metadata.name}' version {self.metadata.version}"

    def predict(self, patches: np.ndarray) -> Prediction:
        """Run ``serving_default`` on ``(n_patches, n_mels, patch_frames)`` float32 patches."""
        outputs = self._serve(**{INPUT_NAME: tf.constant(patches, dtype=tf.float32)})
        return Prediction.from_outputs({k: v.numpy() for k, v in outputs.items()}, len(patches))

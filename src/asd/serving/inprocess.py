"""In-process backend: the SavedModel loaded with ``tf.saved_model.load``.

For use without Docker or TF Serving; it runs the very signature TF Serving would.
Importing this module imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf

from ..layout import resolve_version_dir
from ..metadata import SERVING_SIGNATURE, ModelMetadata
from .base import Prediction


class FunctionBackend:
    """A ``serving_default``-shaped TensorFlow function behind the Backend interface.

    Training scores its test clips through this before export, so they take the same
    Detector path as ``asd evaluate``; :class:`InProcessBackend` is the same over a
    loaded SavedModel.

    Parameters
    ----------
    serve : callable
        Takes ``logmel_patches`` float32 ``(n_patches, n_mels, patch_frames)`` and
        returns the dict of :data:`asd.metadata.OUTPUT_NAMES` tensors.
    metadata : ModelMetadata
    """

    def __init__(self, serve, metadata: ModelMetadata):
        self._serve = serve
        self.metadata = metadata

    def describe(self) -> str:
        return f"serving function of model '{self.metadata.name}' version {self.metadata.version} (not exported)"

    def predict(self, inputs: np.ndarray) -> Prediction:
        """Run the function on its input (see :meth:`asd.serving.Backend.predict`)."""
        outputs = self._serve(**{self.metadata.input: tf.constant(inputs, dtype=tf.float32)})
        return Prediction.from_outputs({k: v.numpy() for k, v in outputs.items()}, len(inputs))


class InProcessBackend(FunctionBackend):
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
        metadata = ModelMetadata.read(self.path)
        self._loaded = tf.saved_model.load(str(self.path))
        super().__init__(self._loaded.signatures[SERVING_SIGNATURE], metadata)

    def describe(self) -> str:
        return f"in-process SavedModel {self.path}, model '{self.metadata.name}' version {self.metadata.version}"

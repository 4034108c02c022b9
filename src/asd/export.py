"""Export a trained autoencoder as a SavedModel in TF Serving's layout (imports TensorFlow).

The SavedModel has two signatures:

- ``serving_default``: input ``logmel_patches`` float32 ``(batch, n_mels, patch_frames)``
  in dB; outputs ``reconstruction`` (same shape, dB), ``patch_error`` ``(batch,)`` and
  ``frame_error`` ``(batch, patch_frames)``, mean squared errors in standardised units.
  The per-mel standardisation is part of the graph, so clients send plain log-mel.
- ``metadata``: input ``unused`` float32 ``(n,)``, output ``metadata_json``: the same JSON
  as ``assets.extra/asd_metadata.json``, for clients that see only the server.

Written with ``keras.export.ExportArchive`` (the Keras 3 way to custom signatures with
named outputs; plain ``tf.saved_model.save`` of a Keras 3 model is discouraged, keras#19458).
"""

from __future__ import annotations

from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .features import FeatureConfig
from .metadata import INPUT_NAME, METADATA_INPUT_NAME, METADATA_OUTPUT_NAME, METADATA_SIGNATURE, SERVING_SIGNATURE, ModelMetadata


def make_serving_function(
    autoencoder: keras.Model, mean: np.ndarray, std: np.ndarray, features: FeatureConfig
) -> tf.types.experimental.PolymorphicFunction:
    """The ``serving_default`` computation, as a ``tf.function``.

    Training scores clips with this same function before export, so the threshold and
    the evaluation figures come from exactly what is served.

    Parameters
    ----------
    autoencoder : keras.Model
        Maps standardised ``(batch, n_mels, patch_frames, 1)`` patches to their
        reconstruction.
    mean, std : np.ndarray [shape=(n_mels,)]
        Per-mel standardisation (dB) from the training clips.
    """
    mean_t = tf.constant(np.asarray(mean, np.float32)[None, :, None])
    std_t = tf.constant(np.asarray(std, np.float32)[None, :, None])
    spec = tf.TensorSpec([None, features.n_mels, features.patch_frames], tf.float32, name=INPUT_NAME)

    @tf.function(input_signature=[spec])
    def serve(logmel_patches):
        standardised = (logmel_patches - mean_t) / std_t
        recon = autoencoder(standardised[..., None], training=False)[..., 0]
        squared = tf.square(standardised - recon)
        return {
            "reconstruction": recon * std_t + mean_t,
            "patch_error": tf.reduce_mean(squared, axis=[1, 2]),
            "frame_error": tf.reduce_mean(squared, axis=1),
        }

    return serve


def export_savedmodel(
    models: keras.Model | list[keras.Model],
    serve: tf.types.experimental.PolymorphicFunction,
    metadata: ModelMetadata,
    version_dir: str | Path,
) -> Path:
    """Write the SavedModel and its metadata to ``<models>/<name>/<version>/``.

    ``models``: the Keras model(s) whose variables ``serve`` uses (an ensemble is a list).

    Raises
    ------
    FileExistsError
        If the version directory already exists (versions are immutable once served).
    """
    version_dir = Path(version_dir)
    if version_dir.exists():
        raise FileExistsError(f"{version_dir} exists; model versions are never overwritten (choose another version)")
    metadata_json = tf.constant(metadata.to_json())

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name=METADATA_INPUT_NAME)])
    def metadata_fn(unused):
        del unused
        return {METADATA_OUTPUT_NAME: metadata_json}

    archive = keras.export.ExportArchive()
    # Not archive.track(model): it would store every weight a second time next to the
    # tf.Variables the endpoints capture (keras-team/keras#23553, open), doubling the
    # SavedModel's size and TF Serving's memory. The endpoints' captured variables are
    # tracked by the archive itself.
    del models
    archive.add_endpoint(SERVING_SIGNATURE, serve)
    archive.add_endpoint(METADATA_SIGNATURE, metadata_fn)
    archive.write_out(str(version_dir), verbose=False)
    metadata.write(version_dir)
    return version_dir

"""Export a fitted servable detector as a SavedModel in TF Serving's layout (imports TensorFlow).

The SavedModel has two signatures:

- ``serving_default``: the detector's served function (:mod:`asd.detectors`): input
  ``logmel_patches`` float32 ``(batch, n_mels, patch_frames)`` in dB (or ``waveform``
  ``(batch, n_samples)`` for whole-clip detectors); outputs ``patch_error`` ``(batch,)``,
  ``frame_error`` and, for autoencoders, ``reconstruction``; waveform models also
  ``unfamiliarity``, and reference-bank models (``multispec_scac``) ``embedding``
  ``(batch, dim)``, the L2-normalised clip embedding their score is the cosine distance of
  (a version exported before it gets it with ``asd resave --add-embedding``,
  :func:`asd.enrolment.add_embedding_output`). Any normalisation is part of the graph, so
  clients send plain log-mel (or samples).
- ``metadata``: input ``unused`` float32 ``(n,)``, output ``metadata_json`` string ``(n,)``:
  the same JSON as ``assets.extra/asd_metadata.json`` once per input row, for clients that
  see only the server. Every output has the batch dimension because TF Serving's request
  batching (``--enable_batching``) concatenates and splits outputs along it and refuses
  scalars ("Batched output tensor has 0 dimensions", tensorflow/serving#276).

Written with ``keras.export.ExportArchive`` (the Keras 3 way to custom signatures with
named outputs; plain ``tf.saved_model.save`` of a Keras 3 model is discouraged, keras#19458).

:func:`resave_savedmodel` writes an exported version again with the installed TensorFlow
(the serving image's version, pinned in constraints.txt), its scores unchanged.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .layout import ModelNotFoundError
from .metadata import METADATA_INPUT_NAME, METADATA_OUTPUT_NAME, METADATA_SIGNATURE, SERVING_SIGNATURE, ModelMetadata
from .warmup import warmup_input, write_warmup_requests

# What tf.saved_model.save writes besides assets.extra/ (which it leaves alone):
# the graph with its signatures, the checkpoint, and the fingerprint TF Serving logs.
SAVEDMODEL_PARTS = ("saved_model.pb", "fingerprint.pb", "variables")


class ResaveMismatchError(ValueError):
    """A re-saved SavedModel does not answer exactly as the one it was written from."""


def _metadata_function(metadata: ModelMetadata) -> tf.types.experimental.PolymorphicFunction:
    """The ``metadata`` signature: the metadata JSON once per input row."""
    metadata_json = tf.constant(metadata.to_json())

    @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name=METADATA_INPUT_NAME)])
    def metadata_fn(unused):
        return {METADATA_OUTPUT_NAME: tf.fill(tf.shape(unused), metadata_json)}

    return metadata_fn


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
    archive = keras.export.ExportArchive()
    # Not archive.track(model): it would store every weight a second time next to the
    # tf.Variables the endpoints capture (keras-team/keras#23553, open), doubling the
    # SavedModel's size and TF Serving's memory. The endpoints' captured variables are
    # tracked by the archive itself.
    del models
    archive.add_endpoint(SERVING_SIGNATURE, serve)
    archive.add_endpoint(METADATA_SIGNATURE, _metadata_function(metadata))
    archive.write_out(str(version_dir), verbose=False)
    metadata.write(version_dir)
    write_warmup_requests(version_dir, metadata)
    return version_dir


def _signature_specs(function) -> tuple[dict, dict]:
    """A signature's inputs and outputs as name -> (dtype name, shape list)."""
    _, inputs = function.structured_input_signature
    outputs = function.structured_outputs
    spec = lambda s: (s.dtype.name, s.shape.as_list())  # noqa: E731
    return {k: spec(v) for k, v in inputs.items()}, {k: spec(v) for k, v in outputs.items()}


def resave_savedmodel(version_dir: str | Path, out_dir: str | Path) -> Path:
    """Write an exported model version again with the installed TensorFlow, scores unchanged.

    For serving a shipped version with the TensorFlow of the serving image without
    training it again: TensorFlow promises that a graph loads in the same or a later
    minor release, and a later one's graph in an earlier one only within patch releases
    ("TensorFlow version compatibility", tensorflow.org/guide/versions). ``serving_default`` is the loaded graph function itself: the same ops and the
    same variables, re-traced by ``tf.saved_model.save``, so its answers are bit-identical.
    ``metadata`` is rebuilt from ``assets.extra/asd_metadata.json`` as the export builds
    it, so the served JSON is the file's. ``assets.extra/`` is copied unchanged; the
    metadata's ``training.versions`` keeps the TensorFlow the model was trained with, and
    ``saved_model.pb``'s ``meta_info_def.tensorflow_version`` says which one wrote it.

    Checked before returning: both signatures have the same input and output names,
    dtypes and shapes as before, and the warm-up clip's input (:func:`asd.warmup.warmup_input`,
    12 s) gives bit-identical ``serving_default`` outputs from both.

    Parameters
    ----------
    version_dir : str or Path
        ``<models>/<name>/<version>`` holding ``saved_model.pb`` and asd metadata.
    out_dir : str or Path
        Where to write the new version directory (must not exist).

    Returns
    -------
    Path
        ``out_dir``, in the same layout: :data:`SAVEDMODEL_PARTS` and ``assets.extra/``.

    Raises
    ------
    FileExistsError
        ``out_dir`` exists.
    asd.layout.ModelNotFoundError
        No ``saved_model.pb`` in ``version_dir``.
    asd.metadata.ModelMismatchError
        No or invalid asd metadata.
    ResaveMismatchError
        A signature or an output differs (``out_dir`` is then removed).
    """
    version_dir, out_dir = Path(version_dir), Path(out_dir)
    if not (version_dir / "saved_model.pb").is_file():
        raise ModelNotFoundError(f"{version_dir}: no saved_model.pb; expected a model version directory")
    if out_dir.exists():
        raise FileExistsError(f"{out_dir} exists; choose a new directory")
    metadata = ModelMetadata.read(version_dir)
    loaded = tf.saved_model.load(str(version_dir))
    if set(loaded.signatures.keys()) != {SERVING_SIGNATURE, METADATA_SIGNATURE}:
        raise ResaveMismatchError(f"{version_dir}: signatures {sorted(loaded.signatures.keys())}, "
                                  f"expected {SERVING_SIGNATURE} and {METADATA_SIGNATURE}")
    signatures = {SERVING_SIGNATURE: loaded.signatures[SERVING_SIGNATURE],
                  METADATA_SIGNATURE: _metadata_function(metadata).get_concrete_function()}
    tf.saved_model.save(loaded, str(out_dir), signatures=signatures)
    try:
        if (out_dir / "assets").is_dir() and not any((out_dir / "assets").iterdir()):
            (out_dir / "assets").rmdir()  # empty: the exported versions have none
        shutil.copytree(version_dir / "assets.extra", out_dir / "assets.extra")
        _check_resaved(loaded, tf.saved_model.load(str(out_dir)), metadata)
    except BaseException:
        shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return out_dir


def _check_resaved(before, after, metadata: ModelMetadata) -> None:
    """Raise :class:`ResaveMismatchError` unless ``after`` answers exactly as ``before``."""
    for name in (SERVING_SIGNATURE, METADATA_SIGNATURE):
        if _signature_specs(before.signatures[name]) != _signature_specs(after.signatures[name]):
            raise ResaveMismatchError(f"signature {name} changed: {_signature_specs(before.signatures[name])} "
                                      f"-> {_signature_specs(after.signatures[name])}")
    inputs = {metadata.input: tf.constant(warmup_input(metadata))}
    old, new = before.signatures[SERVING_SIGNATURE](**inputs), after.signatures[SERVING_SIGNATURE](**inputs)
    for key in old:
        if not np.array_equal(old[key].numpy(), new[key].numpy()):
            difference = np.max(np.abs(old[key].numpy().astype(np.float64) - new[key].numpy()))
            raise ResaveMismatchError(f"output {key} changed on the warm-up clip (max abs difference {difference:.3g})")
    served = after.signatures[METADATA_SIGNATURE](**{METADATA_INPUT_NAME: tf.zeros(1)})[METADATA_OUTPUT_NAME]
    if served.numpy()[0].decode() != metadata.to_json():
        raise ResaveMismatchError("the metadata signature does not serve assets.extra/asd_metadata.json")


def replace_savedmodel(version_dir: str | Path) -> Path:
    """Re-save a version in place with the installed TensorFlow (:func:`resave_savedmodel`).

    Only :data:`SAVEDMODEL_PARTS` are replaced; ``assets.extra/`` is not touched. The new
    version is written and checked in a temporary directory beside it first, so a failure
    leaves the version as it was when the check fails.

    Returns
    -------
    Path
        ``version_dir``.

    Raises
    ------
    As :func:`resave_savedmodel`.
    """
    version_dir = Path(version_dir)
    with tempfile.TemporaryDirectory(dir=version_dir.parent, prefix=f".resave-{version_dir.name}-") as scratch:
        written = resave_savedmodel(version_dir, Path(scratch) / version_dir.name)
        for part in SAVEDMODEL_PARTS:
            old = version_dir / part
            if old.is_dir():
                shutil.rmtree(old)
            else:
                old.unlink(missing_ok=True)
            shutil.move(str(written / part), str(old))
    return version_dir

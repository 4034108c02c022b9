"""Backends that run an exported model: one interface, one implementation per runtime.

- :class:`asd.serving.rest.RestBackend`: TensorFlow Serving's REST API (no TensorFlow
  needed in the client's process);
- :class:`asd.serving.inprocess.InProcessBackend`: the SavedModel loaded with
  ``tf.saved_model.load``, for use without Docker.

Each gives the model's :class:`~asd.metadata.ModelMetadata` and ``predict(patches)``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..metadata import OUTPUT_NAMES, REQUIRED_OUTPUT_NAMES, ModelMetadata


class ServingError(RuntimeError):
    """The model server cannot be reached, or refused or garbled a request."""


@dataclass
class Prediction:
    """The ``serving_default`` signature's outputs for a batch of patches.

    Attributes
    ----------
    patch_error : np.ndarray [shape=(n_patches,), dtype=float32]
        Anomaly score of each patch (autoencoders: mean squared error in standardised
        log-mel units).
    frame_error : np.ndarray [shape=(n_patches, patch_frames), dtype=float32]
        Score of each frame of each patch (autoencoders: mean over mel bands).
    reconstruction : np.ndarray [shape=(n_patches, n_mels, patch_frames), dtype=float32] or None
        An autoencoder's reconstruction, in dB like the input; None for other detectors.
    unfamiliarity : np.ndarray [shape=(n_clips,), dtype=float32] or None
        How far each clip is from every training clip (:mod:`asd.familiarity`); None for
        models without that output.
    """

    patch_error: np.ndarray
    frame_error: np.ndarray
    reconstruction: np.ndarray | None = None
    unfamiliarity: np.ndarray | None = None

    @classmethod
    def from_outputs(cls, outputs: dict, n_patches: int) -> "Prediction":
        """Build from a mapping of output name -> array, checking the batch size.

        Raises
        ------
        ServingError
            If an output is missing or its first dimension is not ``n_patches``.
        """
        missing = [k for k in REQUIRED_OUTPUT_NAMES if k not in outputs]
        if missing:
            raise ServingError(f"the model's answer lacks the output '{missing[0]}'; is it an asd model?")
        arrays = {k: np.asarray(outputs[k], dtype=np.float32) for k in OUTPUT_NAMES if k in outputs}
        for key, value in arrays.items():
            if value.ndim == 0 or value.shape[0] != n_patches:
                raise ServingError(f"output '{key}' has shape {value.shape}, expected {n_patches} rows")
        return cls(**arrays)


class Backend(Protocol):
    """What the app and the CLI need of a model runtime."""

    metadata: ModelMetadata

    def predict(self, inputs: np.ndarray) -> Prediction:
        """Run ``serving_default`` on the model's input (``metadata.input``): log-mel
        patches ``(n_patches, n_mels, patch_frames)`` dB, or waveforms
        ``(n_clips, input_samples)``; float32."""

    def describe(self) -> str:
        """One line naming the runtime and the model, for status displays."""


def make_backend(
    model_dir: str | None = None,
    server_url: str | None = None,
    name: str | None = None,
    version: int | None = None,
    timeout_s: float = 10.0,
) -> Backend:
    """Open a backend: a TF Serving address, or a model directory served in-process.

    The server address's scheme chooses the API: ``grpc://host:port`` (TF Serving's
    gRPC port, 8500: :class:`asd.serving.grpc.GrpcBackend`, which imports TensorFlow for
    its protos) or ``http://host:port`` / ``https://...`` (TF Serving's REST port, 8501:
    :class:`asd.serving.rest.RestBackend`).

    Raises
    ------
    ValueError
        If neither or both of ``model_dir`` and ``server_url`` are given, a server
        URL comes without a model name, or its scheme is none of grpc, http, https.
    ServingError, asd.layout.ModelNotFoundError, asd.metadata.ModelMismatchError
        From the backend.
    """
    if bool(model_dir) == bool(server_url):
        raise ValueError("give either a model directory or a TF Serving URL (not both)")
    if server_url:
        if not name:
            raise ValueError("a TF Serving URL needs the model name (e.g. --name toycar)")
        scheme = server_url.split("://", 1)[0].lower() if "://" in server_url else ""
        if scheme == "grpc":
            from .grpc import GrpcBackend  # imports TensorFlow when opened

            return GrpcBackend(server_url[len("grpc://"):], name, version=version, timeout_s=timeout_s)
        if scheme not in ("http", "https"):
            raise ValueError(
                f"TF Serving URL {server_url!r} must start with grpc:// (gRPC, e.g. grpc://localhost:8500) "
                "or http:// (REST, e.g. http://localhost:8501)"
            )
        from .rest import RestBackend

        return RestBackend(server_url, name, version=version, timeout_s=timeout_s)
    from .inprocess import InProcessBackend  # imports TensorFlow

    return InProcessBackend(model_dir, name=name, version=version)


def backend_from_env(environ: dict | None = None) -> Backend:
    """One model's backend from the environment (the variables of
    :class:`asd.serving.catalog.Deployment`, which also lists every served model).

    ``ASD_SERVING_URL`` (TF Serving's REST base URL, e.g. ``http://serving:8501``, or
    its gRPC address, e.g. ``grpc://serving:8500``; see :func:`make_backend`) or
    ``ASD_MODEL_DIR`` (a models directory in TF Serving's layout, served in-process);
    ``ASD_MODEL_NAME`` names the model (with a URL, it or ``ASD_MODELS_CONFIG`` is needed;
    optional with a directory holding one model); ``ASD_MODEL_VERSION`` pins a version (default: latest);
    ``ASD_SERVING_TIMEOUT_S`` bounds each request (default 10 s).

    Raises
    ------
    ValueError
        If neither or both variables are set, or a value is malformed.
    """
    from .catalog import Deployment  # catalog builds on this module

    env = os.environ if environ is None else environ
    deployment = Deployment.from_env(env)
    version = env.get("ASD_MODEL_VERSION")
    try:
        version_number = int(version) if version else None
    except ValueError:
        raise ValueError(f"ASD_MODEL_VERSION must be an integer, got {version!r}") from None
    names = deployment.names
    return deployment.open(env.get("ASD_MODEL_NAME") or (names[0] if len(names) == 1 else None), version_number)

"""What every model client shares: its interface (:class:`Backend`), its answer
(:class:`Prediction`) and its error (:class:`ServingError`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np

from ..metadata import EMBEDDING_OUTPUT_NAME, OUTPUT_NAMES, REQUIRED_OUTPUT_NAMES, ModelMetadata


class ServingError(RuntimeError):
    """The model server cannot be reached, or refused or garbled a request.

    Attributes
    ----------
    retryable : bool
        True where the same request may succeed later: the server unreachable or
        overloaded (gRPC UNAVAILABLE, REST connection refused or 503), or too slow
        (DEADLINE_EXCEEDED, a timeout, REST 504). False for answers a retry would repeat
        (an unknown model, a refused input).
    """

    def __init__(self, message: str, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


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
    embedding : np.ndarray [shape=(n_clips, dim), dtype=float32] or None
        A reference-bank model's clip embedding (L2-normalised; its score is the cosine
        distance to the nearest reference clip); None for models without that output.
    """

    patch_error: np.ndarray
    frame_error: np.ndarray
    reconstruction: np.ndarray | None = None
    unfamiliarity: np.ndarray | None = None
    embedding: np.ndarray | None = None

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
        if EMBEDDING_OUTPUT_NAME in arrays and arrays[EMBEDDING_OUTPUT_NAME].ndim != 2:
            raise ServingError(f"output '{EMBEDDING_OUTPUT_NAME}' has shape {arrays[EMBEDDING_OUTPUT_NAME].shape}, "
                               "expected (rows, dim)")
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

"""Anomaly detectors with one interface: fit on normal clips, score clips.

:data:`DETECTORS` maps each detector kind to its class; :func:`make_detector` builds one
from settings (as read from YAML). See :mod:`asd.detectors.base` for the interface.
Importing a detector module imports its libraries (TensorFlow for the neural ones), so
the registry imports them only when asked.
"""

from __future__ import annotations

import importlib

from .base import AnomalyDetector, ClipSet, DetectorConfigError, ServableDetector, load_clipset, split_validation

# kind -> (module, class)
DETECTORS: dict[str, tuple[str, str]] = {
    "conv_ae": ("autoencoders", "ConvAutoencoder"),
    "dense_ae_mse": ("autoencoders", "DenseAutoencoder"),
    "dense_ae_mahalanobis": ("autoencoders", "DenseAutoencoderMahalanobis"),
    "lstm_ae": ("autoencoders", "LstmAutoencoder"),
    "vae": ("autoencoders", "VariationalAutoencoder"),
    "lof": ("classical", "LocalOutlierFactorDetector"),
    "iforest": ("classical", "IsolationForestDetector"),
    "ocsvm": ("classical", "OneClassSvmDetector"),
    "gmm": ("classical", "GaussianMixtureDetector"),
    "knn": ("classical", "KnnDetector"),
    "arcface": ("embedding", "ArcFaceDetector"),
    "spectrum_adacos": ("spectrum", "SpectrumAdaCosDetector"),
    "multispec_scac": ("multispec", "MultiSpecAdaCosDetector"),
}


def detector_class(kind: str) -> type[AnomalyDetector]:
    """The class of a detector kind.

    Raises
    ------
    DetectorConfigError
        Unknown kind (the message lists the known ones).
    """
    if kind not in DETECTORS:
        raise DetectorConfigError(f"unknown detector kind {kind!r}; known: {', '.join(DETECTORS)}")
    module, name = DETECTORS[kind]
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def make_detector(kind: str, features, model: dict | None, training, seed: int) -> AnomalyDetector:
    """Build an unfitted detector (see :class:`AnomalyDetector` for the arguments).

    Raises
    ------
    DetectorConfigError
        Unknown kind or invalid settings.
    """
    return detector_class(kind)(features, model, training, seed)


__all__ = [
    "AnomalyDetector",
    "ClipSet",
    "DETECTORS",
    "DetectorConfigError",
    "ServableDetector",
    "detector_class",
    "load_clipset",
    "make_detector",
    "split_validation",
]

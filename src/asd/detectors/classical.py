"""Classical detectors from scikit-learn on one vector per clip.

Two vector spaces (setting ``space``):

- ``stats``: pooled log-mel statistics, the per-mel-band mean and standard deviation
  over the clip's frames (``2 * n_mels`` values, dB), standardised on the training clips;
- ``latent``: the convolutional autoencoder's bottleneck (:class:`ConvAutoencoder`,
  trained here with the detector's ``training`` settings), mean and std over the clip's
  patches, standardised likewise.

Scores (higher = more anomalous): Local Outlier Factor, Isolation Forest and One-Class
SVM give ``-score_samples``; the Gaussian mixture the negative log-likelihood; k-NN the
mean Euclidean distance to the ``k`` nearest training clips. These run in scikit-learn,
not in a TensorFlow graph, so TF Serving cannot serve them.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from pydantic import Field
from sklearn.ensemble import IsolationForest
from sklearn.mixture import GaussianMixture
from sklearn.neighbors import LocalOutlierFactor, NearestNeighbors
from sklearn.preprocessing import StandardScaler
from sklearn.svm import OneClassSVM

from .base import AnomalyDetector, ClipSet, Params
from .progress import fitting


def pooled_statistics(clips: ClipSet) -> np.ndarray:
    """Per-mel mean and std over frames of each clip: ``(n_clips, 2 * n_mels)`` float64 (dB)."""
    return np.stack([np.concatenate([m.mean(axis=1), m.std(axis=1)]) for m in clips.logmels]).astype(np.float64)


class _Classical(AnomalyDetector):
    class Model(Params):
        space: Literal["stats", "latent"] = "stats"

    @property
    def neural(self) -> bool:
        """Latent-space ones depend on a trained network (and its seed)."""
        return self.params.space == "latent"

    def _vectors(self, clips: ClipSet) -> np.ndarray:
        if self.params.space == "stats":
            return pooled_statistics(clips)
        return self.autoencoder.latents(clips).astype(np.float64)

    def fit(self, train: ClipSet, run_dir=None, log=print):
        if self.params.space == "latent":
            from .autoencoders import fitted_conv_autoencoder

            self.autoencoder, reused = fitted_conv_autoencoder(self.features, self.training, self.seed, train, run_dir, log)
            self.info = {"autoencoder": self.autoencoder.info, "autoencoder_reused": reused}
            if reused and log:
                log("conv_ae of these settings and seed already trained in this process: its latent space reused")
        vectors = self._vectors(train)
        with fitting(log, self.kind, on=f"{len(train)} clips' {self.params.space} vectors ({vectors.shape[1]} dimensions)"):
            self.scaler = StandardScaler().fit(vectors)
            self.estimator = self.make_estimator(len(train))
            self.estimator.fit(self.scaler.transform(vectors))
        return self

    def score(self, clips: ClipSet) -> np.ndarray:
        return -self.estimator.score_samples(self.scaler.transform(self._vectors(clips)))

    def make_estimator(self, n_train: int):
        raise NotImplementedError

    def _state(self):
        state = {"scaler": self.scaler, "estimator": self.estimator}
        if self.params.space == "latent":
            state["autoencoder_weights"] = self.autoencoder.model.get_weights()
        return state


class LocalOutlierFactorDetector(_Classical):
    kind = "lof"
    description = "Local Outlier Factor (novelty mode)"

    class Model(_Classical.Model):
        n_neighbors: int = Field(default=10, gt=0)

    def make_estimator(self, n_train):
        return LocalOutlierFactor(n_neighbors=min(self.params.n_neighbors, n_train - 1), novelty=True)


class IsolationForestDetector(_Classical):
    kind = "iforest"
    description = "Isolation Forest"

    class Model(_Classical.Model):
        n_estimators: int = Field(default=200, gt=0)

    def make_estimator(self, n_train):
        return IsolationForest(n_estimators=self.params.n_estimators, random_state=self.seed)


class OneClassSvmDetector(_Classical):
    kind = "ocsvm"
    description = "One-Class SVM (RBF kernel)"

    class Model(_Classical.Model):
        nu: float = Field(default=0.1, gt=0, le=1)

    def make_estimator(self, n_train):
        return OneClassSVM(nu=self.params.nu, gamma="scale")


class GaussianMixtureDetector(_Classical):
    kind = "gmm"
    description = "Gaussian mixture (diagonal covariances), negative log-likelihood"

    class Model(_Classical.Model):
        n_components: int = Field(default=4, gt=0)

    def make_estimator(self, n_train):
        return GaussianMixture(self.params.n_components, covariance_type="diag", reg_covar=1e-3, random_state=self.seed)


class KnnDetector(_Classical):
    kind = "knn"
    description = "k-nearest-neighbour mean distance"

    class Model(_Classical.Model):
        k: int = Field(default=1, gt=0)

    def make_estimator(self, n_train):
        return NearestNeighbors(n_neighbors=min(self.params.k, n_train))

    def score(self, clips: ClipSet) -> np.ndarray:
        distances, _ = self.estimator.kneighbors(self.scaler.transform(self._vectors(clips)))
        return distances.mean(axis=1)

"""What every detector shares: the clips it sees and the interface it offers.

A detector is fitted on the log-mel spectrograms of normal clips and gives each clip an
anomaly score (higher = more anomalous). Detectors whose computation is a TensorFlow
graph (:class:`ServableDetector`) also give a ``serving_default`` function of the
signature family in :mod:`asd.metadata`; their scores are computed *through that
function*, so the figures the benchmark reports are those of what TF Serving would serve.
"""

from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from ..audio import load_audio
from ..data import ClipInfo
from ..features import FeatureConfig, clip_patches, feature_threads, to_patches
from ..metadata import INPUT_NAME
from ..scoring import clip_score
from ..validation import validation_problems


class DetectorConfigError(ValueError):
    """Unknown detector or invalid detector settings."""


class Params(BaseModel):
    """Base of every detector's settings: unknown keys are refused, so typos are caught."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class ClipSet:
    """Clips with their log-mel spectrograms, computed once and shared by all detectors.

    Attributes
    ----------
    clips : list of ClipInfo
    logmels : list of np.ndarray [shape=(n_mels, n_frames), dtype=float32]
        Log-mel spectrograms in dB (:func:`asd.features.clip_patches`).
    features : FeatureConfig
    """

    clips: list[ClipInfo]
    logmels: list[np.ndarray]
    features: FeatureConfig

    def __len__(self) -> int:
        return len(self.clips)

    @property
    def domains(self) -> np.ndarray:
        """``(n_clips,)`` str: ``"source"``/``"target"`` (``"source"`` where unknown)."""
        return np.array([c.domain or "source" for c in self.clips])

    @property
    def labels(self) -> np.ndarray:
        """``(n_clips,)`` bool: True for anomalies."""
        return np.array([c.is_anomaly for c in self.clips])

    @property
    def attributes(self) -> list[str]:
        """Attribute string of each clip (e.g. ``"car_B1_spd_31V_mic_1"``), or ``""``."""
        return [c.attribute_string or "" for c in self.clips]

    def subset(self, index) -> "ClipSet":
        """The clips at ``index`` (a sequence of ints or a bool mask)."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index, int)
        return ClipSet([self.clips[i] for i in index], [self.logmels[i] for i in index], self.features)

    def patches(self) -> tuple[np.ndarray, np.ndarray]:
        """All clips' patches ``(n_patches, n_mels, patch_frames)`` float32 and the clip
        index of each patch ``(n_patches,)`` int."""
        per_clip = [to_patches(m, self.features) for m in self.logmels]
        owner = np.concatenate([np.full(len(p), i) for i, p in enumerate(per_clip)])
        return np.concatenate(per_clip), owner


def load_clipset(clips: list[ClipInfo], features: FeatureConfig) -> ClipSet:
    """Decode clips and compute their log-mel spectrograms with the shared feature path.

    Raises
    ------
    asd.audio.AudioError, asd.features.ClipTooShortError
    """
    def logmel(clip: ClipInfo) -> np.ndarray:
        return clip_patches(load_audio(clip.path, features.sample_rate).samples, features)[0]

    with feature_threads() as pool:  # two clips at once: 409 ToyCar clips in ~1.5 s instead of ~3 s
        logmels = list(pool.map(logmel, clips))
    return ClipSet(list(clips), logmels, features)


def split_validation(clipset: ClipSet, fraction: float, seed: int) -> tuple[ClipSet, ClipSet]:
    """Hold out ``fraction`` of each domain's clips (at least one where a domain has two
    or more), chosen with ``seed``, for early stopping. Returns ``(train, validation)``."""
    rng = np.random.default_rng(seed)
    domains = clipset.domains
    train, validation = [], []
    for domain in ("source", "target"):
        members = np.flatnonzero(domains == domain)
        members = members[rng.permutation(len(members))]
        n_val = max(1, round(fraction * len(members))) if len(members) >= 2 else 0
        validation += members[:n_val].tolist()
        train += members[n_val:].tolist()
    return clipset.subset(sorted(train)), clipset.subset(sorted(validation))


class AnomalyDetector:
    """Interface of every detector.

    Subclasses set :attr:`kind` and :attr:`Model` (their settings) and implement
    :meth:`fit` and :meth:`score`.

    Parameters
    ----------
    features : FeatureConfig
    model : dict
        Settings of this detector (validated by its ``Model`` class).
    training : asd.config.TrainingSettings
        Epochs, batch size, learning rate, validation fraction, patience (neural ones).
    seed : int

    Raises
    ------
    DetectorConfigError
        Invalid or unknown settings.
    """

    kind: ClassVar[str] = ""
    description: ClassVar[str] = ""
    score_unit: ClassVar[str] = "anomaly score"
    servable: ClassVar[bool] = False
    neural: ClassVar[bool] = False
    Model: ClassVar[type[Params]] = Params

    def __init__(self, features: FeatureConfig, model: dict | None, training, seed: int):
        try:
            self.params = self.Model.model_validate(model or {})
        except ValidationError as exc:
            raise DetectorConfigError(f"detector {self.kind}: {validation_problems(exc)}") from None
        self.features = features
        self.training = training
        self.seed = seed
        self.info: dict[str, Any] = {}

    #: Labelled test clips evaluated at every epoch end into the TensorBoard run
    #: (:mod:`asd.tensorboard_logging`) by detectors whose ``epoch_evaluation`` is True;
    #: set before :meth:`fit` (``asd train``).
    monitor_clips: ClipSet | None = None
    epoch_evaluation: ClassVar[bool] = False

    def fit(self, train: ClipSet, run_dir: str | os.PathLike | None = None, log=print) -> "AnomalyDetector":
        """Fit on normal clips. ``run_dir``: where neural detectors write TensorBoard logs.
        ``log``: called with one line of progress per epoch (neural detectors) or before and
        after the fit (classical ones), :mod:`asd.detectors.progress`; ``None``: silent."""
        raise NotImplementedError

    def score(self, clips: ClipSet) -> np.ndarray:
        """Anomaly scores ``(n_clips,)`` float64, higher = more anomalous."""
        raise NotImplementedError

    #: True where :meth:`training_scores` leaves each clip out of the reference set it is
    #: scored against (detectors that keep the training clips' embeddings).
    leave_one_out_training_scores: ClassVar[bool] = False

    def training_scores(self, train: ClipSet) -> np.ndarray:
        """Scores of the training clips for the decision threshold (default: :meth:`score`)."""
        return self.score(train)

    def normalisation(self) -> dict:
        """Input normalisation inside the model, for its metadata (``{}`` if none)."""
        return {}

    def size_bytes(self) -> int:
        """Bytes the fitted detector takes: its pickled state (servable ones: float32 weights)."""
        return len(pickle.dumps(self._state()))

    def _state(self):
        return self.__dict__


class ServableDetector(AnomalyDetector):
    """A detector whose scoring is a TensorFlow graph with the ``serving_default``
    signature of :mod:`asd.metadata`: input ``logmel_patches`` ``(batch, n_mels,
    patch_frames)`` dB, outputs ``patch_error`` ``(batch,)`` and ``frame_error``
    ``(batch, patch_frames)`` (plus ``reconstruction`` for autoencoders). A clip's score is
    the mean of its patches' ``patch_error`` (:func:`asd.scoring.clip_score`)."""

    servable = True
    neural = True
    outputs: ClassVar[tuple[str, ...]] = ("reconstruction", "patch_error", "frame_error")
    input_name: ClassVar[str] = INPUT_NAME  # or WAVEFORM_INPUT_NAME (then input_samples)
    input_samples: int | None = None

    def serving_function(self):
        """The ``tf.function`` to export as ``serving_default`` (after :meth:`fit`; built once)."""
        if getattr(self, "_serve", None) is None:
            self._serve = self.build_serving_function()
        return self._serve

    def build_serving_function(self):
        raise NotImplementedError

    def trackable(self):
        """The Keras model(s) whose variables the SavedModel must hold."""
        raise NotImplementedError

    def score(self, clips: ClipSet, batch_patches: int = 2048) -> np.ndarray:
        patches, owner = clips.patches()
        return self.score_patches(patches, owner, len(clips), batch_patches)

    def score_patches(self, patches: np.ndarray, owner: np.ndarray, n_clips: int, batch_patches: int = 2048) -> np.ndarray:
        """:meth:`score` of clips already cut into patches (:meth:`ClipSet.patches`)."""
        import tensorflow as tf

        serve = self.serving_function()
        errors = np.concatenate(
            [serve(tf.constant(patches[i : i + batch_patches]))["patch_error"].numpy() for i in range(0, len(patches), batch_patches)]
        )
        return np.array([clip_score(errors[owner == i]) for i in range(n_clips)])

    def size_bytes(self) -> int:
        models = self.trackable()
        models = models if isinstance(models, (list, tuple)) else [models]
        return int(sum(4 * m.count_params() for m in models))

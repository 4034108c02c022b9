"""Whole-clip spectrum embeddings with sub-cluster AdaCos (imports TensorFlow/Keras).

The best detector found for the DCASE 2023 ToyCar clips, after the FFT branch of
Wilkinghoff's DCASE systems (Wilkinghoff, "Sub-cluster AdaCos", IJCNN 2021; DCASE 2023
technical report): the magnitude spectrum of the *whole* clip at 1/12 Hz resolution keeps
the narrow harmonics that damaged gears and shafts shift, which log-mel frames blur.

- Feature: ``|rfft|`` of the clip (zero-padded or cut to ``clip_seconds``), bins up to
  half the sample rate averaged in groups of ``bin_group``, ``log(x + 1e-8)``, minus the
  clip's own mean (removes the microphone's gain), divided by the training set's std.
- Network: Conv1D(64, 64, stride 16) - Conv1D(64, 32, stride 4) - Conv1D(128, 16,
  stride 4), each with batch norm and ReLU, then Dense(128)+BN+ReLU and a 128-d
  embedding; trained to classify the attribute combinations with sub-cluster AdaCos
  (16 fixed random centres per class, fixed scale sqrt(2) * ln(n_centres - 1)), mixup
  (p = 0.5) and the target-domain clips oversampled 10x; an ensemble of ``n_models``.
- Score: per model and domain, cosine distance to the nearest training clip of that
  domain, divided by that domain's mean leave-one-out nearest-neighbour distance; for
  the 10 target clips that distance is scaled by the ratio of the source domain's
  leave-one-out distance with all its clips to that with random 10-clip subsets (what
  target's would be with as many clips). Mean over models, minimum over domains.

Served with the waveform signature of :mod:`asd.metadata`: input ``waveform``
``(batch, clip_seconds * sample_rate)`` float32, outputs ``patch_error`` ``(batch,)`` (the
clip's score) and ``frame_error`` ``(batch, 1)``. The spectrum, the ensemble, the stored
training embeddings and the domain normalisation are all in the graph; training computes
its features with the same TensorFlow function.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from pydantic import Field

from ..audio import load_audio
from ..features import fit_waveform
from ..metadata import WAVEFORM_INPUT_NAME
from .base import ClipSet, Params, ServableDetector
from .progress import epoch_line


def whole_clip_log_spectrum(waveforms, n_samples: int, bin_group: int, max_bins: int | None = None) -> tf.Tensor:
    """Log magnitude spectrum of whole clips, clip mean removed (module docstring).

    Parameters
    ----------
    waveforms : tf.Tensor [shape=(batch, n_samples), dtype=float32]
        Samples in [-1, 1].
    n_samples : int
        FFT length (the clip's length: 1 / clip_seconds Hz per bin).
    bin_group : int
        Bins averaged per group (up to half the sample rate).
    max_bins : int, optional
        Keep only the first ``max_bins`` groups (the band below a frequency limit: group
        ``i`` starts at ``i * bin_group * sample_rate / n_samples`` Hz). Default: all.

    Returns
    -------
    tf.Tensor [shape=(batch, n_bins), dtype=float32]
        ``n_bins = min((n_samples // 2) // bin_group, max_bins)``; ``log(mean |rfft| +
        1e-8)`` minus each clip's mean over those bins (removes the gain).
    """
    n_bins = (n_samples // 2) // bin_group
    if max_bins is not None:
        n_bins = min(n_bins, max_bins)
    magnitude = tf.abs(tf.signal.rfft(waveforms, fft_length=[n_samples]))[:, : n_bins * bin_group]
    log = tf.math.log(tf.reduce_mean(tf.reshape(magnitude, [-1, n_bins, bin_group]), axis=2) + 1e-8)
    return log - tf.reduce_mean(log, axis=1, keepdims=True)


class SubClusterAdaCos(layers.Layer):
    """Class probabilities: softmax over fixed random sub-cluster centres (cosine logits,
    fixed AdaCos scale), summed per class (Wilkinghoff, IJCNN 2021)."""

    def __init__(self, n_classes: int, n_subclusters: int, **kwargs):
        super().__init__(**kwargs)
        self.n_classes, self.n_subclusters = n_classes, n_subclusters
        self.scale = float(np.sqrt(2) * np.log(n_classes * n_subclusters - 1))

    def build(self, input_shape):
        self.centres = self.add_weight(shape=(input_shape[-1], self.n_classes * self.n_subclusters),
                                       initializer="glorot_uniform", trainable=False, name="centres")

    def call(self, embedding):
        cosine = tf.matmul(tf.nn.l2_normalize(embedding, 1), tf.nn.l2_normalize(self.centres, 0))
        p = tf.nn.softmax(self.scale * cosine, axis=-1)
        return tf.reduce_sum(tf.reshape(p, (-1, self.n_classes, self.n_subclusters)), axis=-1)


def _cross_entropy(y_true, p):
    return -tf.reduce_mean(tf.reduce_sum(y_true * tf.math.log(p + 1e-9), axis=-1))


def mixup(xb: np.ndarray, yb: np.ndarray, rng: np.random.Generator, probability: float) -> tuple[np.ndarray, np.ndarray]:
    """Mixup (Zhang et al., ICLR 2018) of a batch with a shuffled copy of itself: each
    sample is mixed with probability ``probability``, with a weight drawn from U(0, 1).

    Parameters
    ----------
    xb : np.ndarray [shape=(batch, ...), dtype=float32]
        Inputs.
    yb : np.ndarray [shape=(batch, n_classes), dtype=float32]
        One-hot (or already soft) labels, mixed with the same weights.
    """
    n = len(xb)
    partner = rng.permutation(n)
    lam = rng.uniform(0, 1, n).astype(np.float32)
    lam[rng.uniform(size=n) >= probability] = 1.0
    weight = lam.reshape((n,) + (1,) * (xb.ndim - 1))
    return weight * xb + (1 - weight) * xb[partner], lam[:, None] * yb + (1 - lam[:, None]) * yb[partner]


class SpectrumAdaCosDetector(ServableDetector):
    leave_one_out_training_scores = True
    kind = "spectrum_adacos"
    description = "whole-clip FFT embeddings, sub-cluster AdaCos ensemble; per-domain normalised cosine 1-NN"
    score_unit = "normalised cosine distance to the nearest normal training clip"
    outputs = ("patch_error", "frame_error")
    input_name = WAVEFORM_INPUT_NAME

    class Model(Params):
        clip_seconds: float = Field(default=12.0, gt=0)
        bin_group: int = Field(default=4, gt=0)
        n_models: int = Field(default=5, gt=0)
        n_subclusters: int = Field(default=16, gt=0)
        target_oversampling: int = Field(default=10, ge=1)
        mixup_probability: float = Field(default=0.5, ge=0, le=1)
        filters: list[int] = Field(default=[64, 64, 128], min_length=3, max_length=3)
        pool: int = Field(default=1, ge=1, description="max-pool the last conv output by this factor (smaller dense layer)")

    @property
    def input_samples(self) -> int:
        return int(round(self.params.clip_seconds * self.features.sample_rate))

    def waveforms(self, clips: ClipSet) -> np.ndarray:
        """Clips' samples cut or zero-padded to ``input_samples``: ``(n_clips, input_samples)`` float32."""
        return np.stack([fit_waveform(load_audio(c.path, self.features.sample_rate).samples, self.input_samples,
                                      self.features.sample_rate)[0] for c in clips.clips])

    def spectra(self, waveforms) -> tf.Tensor:
        """The feature (module docstring) of ``(batch, input_samples)`` waveforms, before the
        division by the training spread: ``(batch, n_bins)`` float32. Used by training and
        by the served graph alike."""
        return whole_clip_log_spectrum(waveforms, self.input_samples, self.params.bin_group)

    def _spectra(self, clips: ClipSet) -> np.ndarray:
        waves = self.waveforms(clips)
        return np.concatenate([self.spectra(tf.constant(waves[i : i + 32])).numpy() for i in range(0, len(waves), 32)])

    def _build(self, n_inputs: int, n_classes: int):
        inputs = keras.Input((n_inputs,), name="spectrum")
        x = layers.Reshape((n_inputs, 1))(inputs)
        for filters, kernel, stride in zip(self.params.filters, (64, 32, 16), (16, 4, 4)):
            x = layers.Conv1D(filters, kernel, strides=stride, use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        if self.params.pool > 1:
            x = layers.MaxPool1D(self.params.pool)(x)
        x = layers.Flatten()(x)
        x = layers.Dense(128, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        embedding = layers.Dense(128, use_bias=False, name="embedding")(x)
        embedder = keras.Model(inputs, embedding)
        classifier = keras.Model(inputs, SubClusterAdaCos(n_classes, self.params.n_subclusters)(embedding))
        classifier.compile(keras.optimizers.Adam(self.training.learning_rate), _cross_entropy)
        return classifier, embedder

    def fit(self, train: ClipSet, run_dir=None, log=print):
        started = time.monotonic()
        x = self._spectra(train)
        self.spread = float(x.std())
        x /= self.spread
        names = [a or d for a, d in zip(train.attributes, train.domains)]
        classes = sorted(set(names))
        y = np.eye(len(classes), dtype=np.float32)[[classes.index(n) for n in names]]
        target = np.flatnonzero(train.domains == "target")
        index = np.concatenate([np.arange(len(x))] + [target] * (self.params.target_oversampling - 1))
        # whole batches only (the last partial one is dropped each epoch), but at least one:
        # fewer examples than batch_size would otherwise leave the network untrained
        batch = min(self.training.batch_size, len(index))
        self.embedders, self.banks, self.scales, epoch_seconds = [], [], [], []
        from ..tensorboard_logging import EnsembleLog  # imports this package's base module

        board = EnsembleLog(self, run_dir, self.params.n_models)
        for m in range(self.params.n_models):
            seed = self.seed * 100 + m
            keras.utils.set_random_seed(seed)
            rng = np.random.default_rng(seed)
            classifier, embedder = self._build(x.shape[1], len(classes))
            for epoch in range(self.training.epochs):
                t0 = time.monotonic()
                order = rng.permutation(index)
                losses = []
                for start in range(0, len(order) - batch + 1, batch):
                    i = order[start : start + batch]
                    xb, yb = mixup(x[i], y[i], rng, self.params.mixup_probability)
                    losses.append(float(classifier.train_on_batch(xb, yb)))
                epoch_seconds.append(round(time.monotonic() - t0, 2))
                board.epoch(m, epoch, losses, self.training.learning_rate)
                if log:
                    log(epoch_line(epoch + 1, self.training.epochs, np.mean(losses), epoch_seconds[-1],
                                   network=(m + 1, self.params.n_models)))
            bank = self._normalised(embedder.predict(x, batch_size=64, verbose=0))
            self.embedders.append(embedder)
            self.banks.append({d: bank[train.domains == d] for d in ("source", "target") if (train.domains == d).any()})
            self.scales.append(self._domain_scales(self.banks[-1], rng))
        self._serve = None
        self.info = {"n_models": self.params.n_models, "epochs": self.training.epochs, "classes": classes,
                     "parameters": int(sum(e.count_params() for e in self.embedders)),
                     "epoch_seconds": epoch_seconds, "seconds": round(time.monotonic() - started, 1)}
        return self

    @staticmethod
    def _normalised(e: np.ndarray) -> np.ndarray:
        return e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12)

    @staticmethod
    def _loo_distance(bank: np.ndarray) -> float:
        """Mean leave-one-out cosine nearest-neighbour distance within ``bank``."""
        similarity = bank @ bank.T
        np.fill_diagonal(similarity, -2.0)
        return float((1.0 - similarity.max(axis=1)).mean())

    def _domain_scales(self, banks: dict, rng) -> dict:
        """Divisor of each domain's distances (see the module docstring)."""
        scales = {d: self._loo_distance(b) for d, b in banks.items()}
        if "target" in banks and "source" in banks and len(banks["source"]) > len(banks["target"]) >= 2:
            n = len(banks["target"])
            subsets = [self._loo_distance(banks["source"][rng.choice(len(banks["source"]), n, replace=False)]) for _ in range(50)]
            scales["target"] *= scales["source"] / np.mean(subsets)
        return scales

    def build_serving_function(self):
        spread = tf.constant(self.spread, tf.float32)
        members = [
            (embedder, {d: tf.constant(b.T) for d, b in banks.items()}, {d: tf.constant(max(v, 1e-12), tf.float32) for d, v in scales.items()})
            for embedder, banks, scales in zip(self.embedders, self.banks, self.scales)
        ]
        domains = list(self.banks[0])

        @tf.function(input_signature=[tf.TensorSpec([None, self.input_samples], tf.float32, name=WAVEFORM_INPUT_NAME)])
        def serve(waveform):
            x = self.spectra(waveform) / spread
            per_domain = {d: [] for d in domains}
            for embedder, banks, scales in members:
                e = tf.nn.l2_normalize(embedder(x, training=False), axis=1)
                for d in domains:
                    per_domain[d].append((1.0 - tf.reduce_max(tf.matmul(e, banks[d]), axis=1)) / scales[d])
            score = tf.reduce_min(tf.stack([tf.reduce_mean(tf.stack(per_domain[d]), axis=0) for d in domains]), axis=0)
            return {"patch_error": score, "frame_error": score[:, None]}

        return serve

    def score(self, clips: ClipSet) -> np.ndarray:
        serve = self.serving_function()
        waves = self.waveforms(clips)
        return np.concatenate([serve(tf.constant(waves[i : i + 32]))["patch_error"].numpy() for i in range(0, len(waves), 32)]).astype(np.float64)

    def trackable(self):
        return self.embedders

    def training_scores(self, train: ClipSet) -> np.ndarray:
        """Leave-one-out: each training clip against the bank without itself."""
        x = self._spectra(train) / self.spread
        domains = train.domains
        per_domain: dict[str, list] = {}
        for embedder, banks, scales in zip(self.embedders, self.banks, self.scales):
            e = self._normalised(embedder.predict(x, batch_size=64, verbose=0))
            for domain, bank in banks.items():
                similarity = e @ bank.T
                own = np.flatnonzero(domains == domain)
                similarity[own, np.arange(len(own))] = -2.0
                per_domain.setdefault(domain, []).append((1.0 - similarity.max(axis=1)) / max(scales[domain], 1e-12))
        return np.min([np.mean(v, axis=0) for v in per_domain.values()], axis=0)


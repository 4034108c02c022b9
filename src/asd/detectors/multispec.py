"""Multi-resolution spectral embeddings with sub-cluster AdaCos (imports TensorFlow/Keras).

The recipe of ASDKit's ``dis_multispec_scac_trainable`` (Fujimura et al., ASDKit, a
toolkit for anomalous sound detection, arXiv 2507.10264; TakuyaFujimura/dcase-asd-toolkit,
``config/train/frontend/
dis_multiresnet_0256_1024_4096.yaml``), itself after Wilkinghoff's DCASE systems, which
combine STFT and whole-clip FFT branches trained with sub-cluster AdaCos (Wilkinghoff,
"Sub-cluster AdaCos: learning representations for anomalous sound detection", IJCNN 2021):

- Branches, all computed in the graph from the clip's waveform: the linear-frequency STFT
  magnitude at each of ``n_ffts`` (Hann window, hop n_fft / 2, bins from ``fmin`` to
  ``fmax`` Hz; log-compressed here, ``log(|X| + 1e-5)``), and the whole-clip FFT branch of
  :mod:`asd.detectors.spectrum` (bins up to ``fmax``).
- Robustness to the recording chain (this project's addition, measured by ``asd
  robustness``): with ``gain_normalise`` each clip is first scaled to unit RMS after its
  mean (DC offset) is removed, so a quieter microphone or a louder recorder gives the same
  features; an ``fmax`` below the Nyquist frequency (e.g. 7000 Hz) leaves out the top of
  the band, which resamplers' anti-aliasing filters, many microphones and lossy copies cut
  and where a faint noise floor dominates.
- Per STFT branch a small 2-D ResNet: batch norm per frequency bin, Conv2D 7x7 stride 2
  + max-pool, then 4 stages (``base_channels`` x 1, 2, 4, 8; stride 2 from the second) of
  ``blocks`` residual blocks with squeeze-excitation (Hu et al., CVPR 2018), max over
  time, batch norm, a dense ``embedding_dim`` projection. The FFT branch: three strided
  Conv1D, dense layers. Branch embeddings are concatenated.
- Training: sub-cluster AdaCos (``n_subclusters`` trainable centres per class, the
  adaptive AdaCos scale of Zhang et al., CVPR 2019) on the attribute classes of the
  training clips (for ToyCar: car, speed and microphone; the microphone names the domain),
  mixup with probability ``mixup_probability``, target-domain clips oversampled
  ``target_oversampling`` times, AdamW; optional random crops of ``crop_seconds``
  (embeddings of the whole clip are taken at the end: the max over time accepts any
  length).
- Scoring: a cosine reference-bank backend of :mod:`asd.detectors.backends` on the
  concatenated embedding; with ``n_models`` > 1 the mean over an ensemble of seeds.

Served with the waveform signature of :mod:`asd.metadata`: input ``waveform``
``(batch, clip_seconds * sample_rate)`` float32, outputs ``patch_error`` ``(batch,)`` (the
clip's score), ``frame_error`` ``(batch, 1)`` and ``embedding`` ``(batch, dim)`` (the clip
embedding the bank is searched with, L2-normalised; an ensemble's is its networks'
normalised embeddings side by side over sqrt(n_models), a unit vector whose cosine
distance is the mean of theirs); features, networks, bank and divisors are all in the
graph.
"""

from __future__ import annotations

import time
from typing import Literal

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from pydantic import Field, model_validator

from ..metadata import EMBEDDING_OUTPUT_NAME, WAVEFORM_INPUT_NAME
from .backends import build_bank
from .base import ClipSet, Params, ServableDetector
from .progress import epoch_line
from .spectrum import SpectrumAdaCosDetector, _cross_entropy, mixup, whole_clip_log_spectrum


# Trained networks by (training set, seed, settings other than the backend's): the
# benchmark's rows that differ only in their scoring backend share one training per seed.
_FITTED_NETWORKS: dict[tuple, tuple] = {}


def unit_rms(waveforms: tf.Tensor) -> tf.Tensor:
    """Waveforms ``(batch, n_samples)`` float32 with each row's mean removed and scaled to
    unit RMS: the features then ignore the recording's gain and DC offset. Silent rows
    (refused on loading, :data:`asd.audio.SILENCE_PEAK_DBFS`) stay finite."""
    centred = waveforms - tf.reduce_mean(waveforms, axis=1, keepdims=True)
    return centred * tf.math.rsqrt(tf.reduce_mean(tf.square(centred), axis=1, keepdims=True) + 1e-12)


class SqueezeExcitation(layers.Layer):
    """Channel gates from the global mean of a feature map (Hu et al., "Squeeze-and-
    excitation networks", CVPR 2018; reduction ``ratio``, at least 4 units)."""

    def __init__(self, channels: int, ratio: int = 16, **kwargs):
        super().__init__(**kwargs)
        self.squeeze = layers.Dense(max(channels // ratio, 4), activation="relu")
        self.excite = layers.Dense(channels, activation="sigmoid")

    def call(self, x):
        gates = self.excite(self.squeeze(tf.reduce_mean(x, axis=[1, 2])))
        return x * gates[:, None, None, :]


class SubClusterAdaCosHead(layers.Layer):
    """Class probabilities from cosine similarities to ``n_subclusters`` trainable centres
    per class, softmax at the AdaCos scale, summed per class (Wilkinghoff, "Sub-cluster
    AdaCos", IJCNN 2021). With labels in training, the scale is updated first by the
    dynamic AdaCos rule (Zhang et al., "AdaCos", CVPR 2019), as ASDKit's ``SCAdaCos``
    with ``trainable=True, dynamic=True`` does."""

    def __init__(self, n_classes: int, n_subclusters: int, **kwargs):
        super().__init__(**kwargs)
        self.n_classes, self.n_subclusters = n_classes, n_subclusters

    def build(self, input_shape):
        n = self.n_classes * self.n_subclusters
        self.centres = self.add_weight(shape=(input_shape[-1], n), initializer="glorot_uniform", name="centres")
        self.scale = self.add_weight(shape=(), initializer=keras.initializers.Constant(np.sqrt(2) * np.log(max(n - 1, 2))),
                                     trainable=False, name="scale")

    def call(self, embedding, labels=None, training=False):
        cosine = tf.matmul(tf.nn.l2_normalize(embedding, 1), tf.nn.l2_normalize(self.centres, 0))
        if training and labels is not None:
            logits = tf.stop_gradient(self.scale * cosine)
            top = tf.reduce_max(logits)
            b_avg = tf.reduce_mean(tf.reduce_sum(tf.exp(logits - top), axis=1))
            theta = tf.acos(tf.clip_by_value(tf.stop_gradient(cosine), -1 + 1e-7, 1 - 1e-7))
            theta_class = tf.reduce_sum(tf.tile(labels, [1, self.n_subclusters]) * theta, axis=1)
            median = tf.sort(theta_class)[tf.shape(theta_class)[0] // 2]
            self.scale.assign((top + tf.math.log(b_avg)) / (tf.cos(tf.minimum(np.pi / 4, median)) + 1e-7))
        p = tf.nn.softmax(self.scale * cosine, axis=-1)
        return tf.reduce_sum(tf.reshape(p, (-1, self.n_classes, self.n_subclusters)), axis=-1)


def _train_step(embedder: keras.Model, head: SubClusterAdaCosHead, optimizer):
    """One optimisation step on a batch ``(waveforms, soft labels)``; returns the loss
    (cross-entropy of the sub-cluster AdaCos class probabilities)."""
    variables = embedder.trainable_variables + head.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(xb, yb):
        with tf.GradientTape() as tape:
            loss = _cross_entropy(yb, head(embedder(xb, training=True), yb, training=True))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    return step


class MultiSpecAdaCosDetector(ServableDetector):
    leave_one_out_training_scores = True
    kind = "multispec_scac"
    description = "multi-resolution STFT + FFT embeddings (ASDKit dis_multispec_scac), sub-cluster AdaCos; cosine reference-bank backend"
    score_unit = "cosine distance to the nearest normal reference clip"
    outputs = ("patch_error", "frame_error", EMBEDDING_OUTPUT_NAME)
    input_name = WAVEFORM_INPUT_NAME

    class Model(Params):
        clip_seconds: float = Field(default=12.0, gt=0)
        crop_seconds: float | None = Field(default=None, gt=0, description="train on random crops this long (None: whole clips)")
        n_ffts: list[int] = Field(default=[256, 1024, 4096], min_length=0)
        fmin: float = Field(default=200.0, ge=0)
        fmax: float = Field(default=8000.0, gt=0, description="upper band edge (Hz) of every branch")
        gain_normalise: bool = Field(default=False, description="remove each clip's mean and scale it to unit RMS first")
        fft_branch: bool = True
        bin_group: int = Field(default=4, gt=0, description="FFT branch: bins averaged per group")
        base_channels: int = Field(default=16, gt=0)
        blocks: int = Field(default=1, ge=1, description="residual blocks per stage")
        embedding_dim: int = Field(default=128, gt=0, description="per branch")
        n_subclusters: int = Field(default=16, gt=0)
        n_models: int = Field(default=1, gt=0)
        target_oversampling: int = Field(default=10, ge=1)
        mixup_probability: float = Field(default=0.5, ge=0, le=1)
        weight_decay: float = Field(default=0.004, ge=0, description="AdamW (Keras default)")
        backend: Literal["knn", "knn_smote", "kmeans", "knn_rescale"] = "knn"
        smote_ratio: float = Field(default=0.2, gt=0)
        smote_neighbours: int = Field(default=2, gt=0)
        kmeans_centres: int = Field(default=16, gt=0)
        rescale_k: int = Field(default=4, gt=0)

        @model_validator(mode="after")
        def _crop_needs_no_fft_branch(self):
            if self.crop_seconds is not None and self.crop_seconds < self.clip_seconds and self.fft_branch:
                raise ValueError("crop_seconds needs fft_branch: false (the FFT branch's input is the whole clip's spectrum)")
            return self

    input_samples = SpectrumAdaCosDetector.input_samples
    waveforms = SpectrumAdaCosDetector.waveforms

    # --- the network ------------------------------------------------------------------
    def _stft_magnitude(self, waveforms, n_fft: int):
        """Log STFT magnitude ``(batch, n_frames, n_bins)`` between fmin and fmax."""
        magnitude = tf.abs(tf.signal.stft(waveforms, n_fft, n_fft // 2, n_fft))
        freqs = np.linspace(0, self.features.sample_rate / 2, n_fft // 2 + 1)
        low = int(np.searchsorted(freqs, self.params.fmin))
        high = int(np.searchsorted(freqs, self.params.fmax, side="right"))
        return tf.math.log(magnitude[:, :, low:high] + 1e-5)

    def _residual(self, x, channels: int, stride: int):
        y = layers.BatchNormalization()(x)
        y = layers.ReLU()(y)
        y = layers.Conv2D(channels, 3, strides=stride, padding="same", use_bias=False)(y)
        y = layers.BatchNormalization()(y)
        y = layers.ReLU()(y)
        y = layers.Conv2D(channels, 3, padding="same", use_bias=False)(y)
        y = SqueezeExcitation(channels)(y)
        if stride != 1 or x.shape[-1] != channels:
            x = layers.MaxPool2D(3, stride, padding="same")(x)
            x = layers.Conv2D(channels, 1, use_bias=False)(x)
        return x + y

    def _stft_branch(self, waveform, n_fft: int):
        x = layers.Lambda(lambda w: self._stft_magnitude(w, n_fft), name=f"stft_{n_fft}")(waveform)
        x = layers.BatchNormalization(axis=-1)(x)  # per frequency bin
        x = layers.Lambda(lambda t: tf.transpose(t, [0, 2, 1])[..., None])(x)  # (batch, bins, frames, 1)
        b = self.params.base_channels
        x = layers.Conv2D(b, 7, strides=2, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        x = layers.MaxPool2D(3, 2)(x)
        for stage, channels in enumerate((b, 2 * b, 4 * b, 8 * b)):
            for block in range(self.params.blocks):
                x = self._residual(x, channels, 2 if stage and not block else 1)
        x = layers.Lambda(lambda t: tf.reduce_max(t, axis=2))(x)  # max over time: any clip length
        x = layers.Flatten()(x)
        x = layers.BatchNormalization()(x)
        return layers.Dense(self.params.embedding_dim, use_bias=False, name=f"embedding_stft_{n_fft}")(x)

    def _fft_branch(self, waveform, n_samples: int):
        group = self.params.bin_group
        # group i starts at i * group * sample_rate / n_samples Hz
        max_bins = int(self.params.fmax * n_samples / (group * self.features.sample_rate))
        x = layers.Lambda(lambda w: whole_clip_log_spectrum(w, n_samples, group, max_bins)[..., None], name="fft")(waveform)
        x = layers.BatchNormalization(axis=-1)(x)
        for filters, kernel, stride in zip((32, 32, 64), (64, 32, 16), (16, 4, 4)):
            x = layers.Conv1D(filters, kernel, strides=stride, use_bias=False)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        x = layers.MaxPool1D(4)(x)
        x = layers.Flatten()(x)
        x = layers.Dense(128, use_bias=False)(x)
        x = layers.BatchNormalization()(x)
        x = layers.ReLU()(x)
        return layers.Dense(self.params.embedding_dim, use_bias=False, name="embedding_fft")(x)

    def build_embedder(self, n_samples: int) -> keras.Model:
        """The embedding network for waveforms of ``n_samples``: ``(batch, n_samples)`` ->
        ``(batch, embedding_dim * n_branches)``."""
        if not self.params.n_ffts and not self.params.fft_branch:
            raise ValueError("multispec_scac needs at least one branch (n_ffts or fft_branch)")
        waveform = keras.Input((n_samples,), name=WAVEFORM_INPUT_NAME)
        x = layers.Lambda(unit_rms, name="unit_rms")(waveform) if self.params.gain_normalise else waveform
        parts = [self._stft_branch(x, n) for n in self.params.n_ffts]
        if self.params.fft_branch:
            parts.append(self._fft_branch(x, n_samples))
        embedding = layers.Concatenate(name="embedding")(parts) if len(parts) > 1 else parts[0]
        return keras.Model(waveform, embedding, name="multispec_embedder")

    # --- training -----------------------------------------------------------------------
    def _network_key(self, train: ClipSet) -> tuple:
        scoring = {"backend", "smote_ratio", "smote_neighbours", "kmeans_centres", "rescale_k"}
        return (id(train), self.seed, self.training.model_dump_json(), self.features,
                self.params.model_dump_json(exclude=scoring))

    def fit(self, train: ClipSet, run_dir=None, log=print):
        started = time.monotonic()
        key = self._network_key(train)
        if key in _FITTED_NETWORKS:  # same networks and their embeddings, another backend (asd benchmark's rows)
            if log:
                log(f"networks of this seed already trained in this process: reused, {self.params.backend} backend fitted")
            _, self.embedders, self._train_embeddings, info = _FITTED_NETWORKS[key]
            self._fit_banks(train.domains)
            self._serve = None
            self.info = {**info, "backend": self.params.backend, "n_references": int(len(self.banks[0].refs)),
                         "networks_reused": True, "seconds": round(time.monotonic() - started, 1)}
            return self
        waves = self.waveforms(train)
        names = [a or d for a, d in zip(train.attributes, train.domains)]
        classes = sorted(set(names))
        y = np.eye(len(classes), dtype=np.float32)[[classes.index(n) for n in names]]
        target = np.flatnonzero(train.domains == "target")
        index = np.concatenate([np.arange(len(waves))] + [target] * (self.params.target_oversampling - 1))
        n = self.input_samples
        crop = min(n, int(round((self.params.crop_seconds or self.params.clip_seconds) * self.features.sample_rate)))
        # whole batches only (the last partial one is dropped each epoch), but at least one:
        # fewer examples than batch_size would otherwise leave the network untrained
        batch = min(self.training.batch_size, len(index))
        from ..tensorboard_logging import EnsembleLog

        board = EnsembleLog(self, run_dir, self.params.n_models)
        self.embedders, epoch_seconds = [], []
        for m in range(self.params.n_models):
            seed = self.seed * 100 + m
            keras.utils.set_random_seed(seed)
            rng = np.random.default_rng(seed)
            embedder = self.build_embedder(crop)
            head = SubClusterAdaCosHead(len(classes), self.params.n_subclusters)
            optimizer = keras.optimizers.AdamW(self.training.learning_rate, weight_decay=self.params.weight_decay)
            head(embedder(tf.zeros((2, crop))), tf.zeros((2, len(classes))))
            step = _train_step(embedder, head, optimizer)

            for epoch in range(self.training.epochs):
                t0 = time.monotonic()
                order = rng.permutation(index)
                losses = []
                for start in range(0, len(order) - batch + 1, batch):
                    i = order[start : start + batch]
                    if crop < n:
                        offsets = rng.integers(0, n - crop + 1, len(i))
                        xb = np.stack([waves[j, o : o + crop] for j, o in zip(i, offsets)])
                    else:
                        xb = waves[i]
                    xb, yb = mixup(xb, y[i], rng, self.params.mixup_probability)
                    losses.append(float(step(tf.constant(xb), tf.constant(yb))))
                epoch_seconds.append(round(time.monotonic() - t0, 2))
                board.epoch(m, epoch, losses, self.training.learning_rate)
                if log:
                    log(epoch_line(epoch + 1, self.training.epochs, np.mean(losses), epoch_seconds[-1],
                                   network=(m + 1, self.params.n_models), extra=f"AdaCos scale {float(head.scale.numpy()):.2f}"))
            if crop < n:  # the same weights on whole clips
                whole = self.build_embedder(n)
                whole.set_weights(embedder.get_weights())
                embedder = whole
            self.embedders.append(embedder)
        self._train_embeddings = self.embed(waves)
        self._fit_banks(train.domains)
        self._serve = None
        self.info = {"n_models": self.params.n_models, "epochs": self.training.epochs, "classes": classes,
                     "backend": self.params.backend, "n_references": int(len(self.banks[0].refs)),
                     "parameters": int(sum(e.count_params() for e in self.embedders)),
                     "epoch_seconds": epoch_seconds, "networks_reused": False, "seconds": round(time.monotonic() - started, 1)}
        # train kept alive, so that its id stays its own
        _FITTED_NETWORKS[key] = (train, self.embedders, self._train_embeddings, self.info)
        return self

    def embed(self, waves: np.ndarray) -> list[np.ndarray]:
        """Each network's embeddings of whole-clip waveforms ``(n, input_samples)``: a list
        of ``(n, dim)`` float32."""
        return [np.concatenate([e(tf.constant(waves[i : i + 16]), training=False).numpy() for i in range(0, len(waves), 16)])
                for e in self.embedders]

    def _fit_banks(self, domains: np.ndarray) -> None:
        """The backend's reference bank of each network from its training-clip embeddings."""
        p = self.params
        self.banks = [build_bank(e, domains, p.backend, smote_ratio=p.smote_ratio, smote_neighbours=p.smote_neighbours,
                                 kmeans_centres=p.kmeans_centres, rescale_k=p.rescale_k, seed=self.seed)
                      for e in self._train_embeddings]

    # --- serving ------------------------------------------------------------------------
    def build_serving_function(self):
        members = [(embedder, tf.constant(bank.refs.T), tf.constant(bank.divisors)) for embedder, bank in zip(self.embedders, self.banks)]

        @tf.function(input_signature=[tf.TensorSpec([None, self.input_samples], tf.float32, name=WAVEFORM_INPUT_NAME)])
        def serve(waveform):
            scores, embeddings = [], []
            for embedder, refs, divisors in members:
                e = tf.nn.l2_normalize(embedder(waveform, training=False), axis=1)
                embeddings.append(e)
                scores.append(tf.reduce_min((1.0 - tf.matmul(e, refs)) / divisors, axis=1))
            score = tf.reduce_mean(tf.stack(scores), axis=0)
            # one network: its embedding as the bank sees it; an ensemble: all side by side, unit length
            embedding = embeddings[0] if len(embeddings) == 1 else (
                tf.concat(embeddings, axis=1) / tf.sqrt(float(len(embeddings))))
            return {"patch_error": score, "frame_error": score[:, None], EMBEDDING_OUTPUT_NAME: embedding}

        return serve

    def score(self, clips: ClipSet) -> np.ndarray:
        serve = self.serving_function()
        waves = self.waveforms(clips)
        return np.concatenate([serve(tf.constant(waves[i : i + 16]))["patch_error"].numpy() for i in range(0, len(waves), 16)]).astype(np.float64)

    def training_scores(self, train: ClipSet) -> np.ndarray:
        """Leave-one-out: each training clip against the references not made from it."""
        leave_out = np.arange(len(train))
        return np.mean([bank.scores(e, leave_out) for bank, e in zip(self.banks, self._train_embeddings)], axis=0)

    def trackable(self):
        return self.embedders

    def size_bytes(self) -> int:
        return int(sum(4 * e.count_params() for e in self.embedders) + sum(b.refs.nbytes + b.divisors.nbytes for b in self.banks))

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
- Optional, this project's additions for issue 22: a pretrained encoder as one more
  branch (``encoder``: :mod:`asd.encoders`, frozen or fine-tuned at a scaled learning
  rate, fed 16 kHz mel bands or resampled to its own 44.1 kHz settings); feature exchange
  (``featex``; Wilkinghoff, "Self-Supervised Learning for Anomalous Sound Detection",
  ICASSP 2024, arXiv 2312.09578): a second sub-cluster AdaCos head classifies embeddings
  whose FFT-branch part was swapped with another clip's (:func:`featex_batch`); and
  ``labels: none`` or ``domains``, which train on FeatEx's self-supervised classes (with
  the domains as classes), so a folder of plain normal WAVs with no attributes trains a
  model (``development/configs/attribute_free.yaml``).
- Deterministic on CPU: TensorFlow's op determinism is enabled when training starts and
  every random draw is seeded (weights, data order, mixup, FeatEx, crops).
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

import contextlib
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


@contextlib.contextmanager
def deterministic_ops():
    """TensorFlow's op determinism (``tf.config.experimental.enable_op_determinism``:
    deterministic kernels, or an error for an op that has none) while the block runs; the
    earlier state after it, so that serving in the same process is not slowed."""
    from tensorflow.python.framework import config as tf_config

    was = tf_config.is_op_determinism_enabled()
    tf.config.experimental.enable_op_determinism()
    try:
        yield
    finally:
        if not was:
            tf_config.disable_op_determinism()


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
            # centre index class * n_subclusters + sub-cluster, as the reshape below reads it
            theta_class = tf.reduce_sum(tf.repeat(labels, self.n_subclusters, axis=1) * theta, axis=1)
            median = tf.sort(theta_class)[tf.shape(theta_class)[0] // 2]
            self.scale.assign((top + tf.math.log(b_avg)) / (tf.cos(tf.minimum(np.pi / 4, median)) + 1e-7))
        p = tf.nn.softmax(self.scale * cosine, axis=-1)
        return tf.reduce_sum(tf.reshape(p, (-1, self.n_classes, self.n_subclusters)), axis=-1)


def featex_batch(parts: tuple[tf.Tensor, tf.Tensor], labels: tf.Tensor, exchange: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Feature exchange (FeatEx; Wilkinghoff, "Self-Supervised Learning for Anomalous
    Sound Detection", ICASSP 2024, arXiv 2312.09578, code wilkinghoff/ssl4asd): the
    embedding of one group of branches is swapped with that of the batch's mirror image
    (row ``i`` takes row ``n - 1 - i``'s) in the rows where ``exchange`` is 1, and every
    row gets one of ``3 * n_classes`` classes: ``[y, 0, 0]`` as it is, ``[0, y_a / 2,
    y_b / 2]`` exchanged (``y_a`` the class of the clip the first group came from, ``y_b``
    that of the second group's).

    Parameters
    ----------
    parts : (tf.Tensor, tf.Tensor) [shape=(batch, dim_a), (batch, dim_b)]
        The two groups' embeddings (here: the STFT and encoder branches, the FFT branch).
    labels : tf.Tensor [shape=(batch, n_classes)]
        Soft class labels (after mixup).
    exchange : tf.Tensor [shape=(batch,)]
        1.0 where the second group is exchanged, 0.0 elsewhere.

    Returns
    -------
    embedding : tf.Tensor [shape=(batch, dim_a + dim_b)]
    labels : tf.Tensor [shape=(batch, 3 * n_classes)]
    """
    first, second = parts
    swapped = tf.reverse(second, axis=[0])
    gate = exchange[:, None]
    embedding = tf.concat([first, gate * swapped + (1.0 - gate) * second], axis=1)
    zeros = tf.zeros_like(labels)
    kept = tf.concat([labels, zeros, zeros], axis=1)
    exchanged = tf.concat([zeros, 0.5 * labels, 0.5 * tf.reverse(labels, axis=[0])], axis=1)
    return embedding, gate * exchanged + (1.0 - gate) * kept


def _train_step(embedder: keras.Model, head: SubClusterAdaCosHead, optimizers: list, featex_head: SubClusterAdaCosHead | None = None,
                split: int = 0, featex_weight: float = 1.0, slow_variables: tuple = ()):
    """One optimisation step on a batch ``(waveforms, soft labels, exchange mask)``;
    returns the loss: the cross-entropy of the sub-cluster AdaCos class probabilities,
    plus ``featex_weight`` times that of the FeatEx head on exchanged embeddings
    (:func:`featex_batch`; the embedding's first ``split`` columns are the first group)
    when ``featex_head`` is given. ``optimizers[0]`` updates every variable but
    ``slow_variables`` (a pretrained encoder's), which ``optimizers[1]`` updates."""
    variables = embedder.trainable_variables + head.trainable_variables
    if featex_head is not None:
        variables += featex_head.trainable_variables
    slow_ids = {id(v) for v in slow_variables}
    fast = [v for v in variables if id(v) not in slow_ids]
    slow = [v for v in variables if id(v) in slow_ids]

    @tf.function(reduce_retracing=True)
    def step(xb, yb, exchange):
        with tf.GradientTape() as tape:
            embedding = embedder(xb, training=True)
            loss = _cross_entropy(yb, head(embedding, yb, training=True))
            if featex_head is not None:
                mixed, y_ssl = featex_batch((embedding[:, :split], embedding[:, split:]), yb, exchange)
                loss += featex_weight * _cross_entropy(y_ssl, featex_head(mixed, y_ssl, training=True))
        gradients = tape.gradient(loss, fast + slow)
        optimizers[0].apply_gradients(zip(gradients[: len(fast)], fast))
        if slow:
            optimizers[1].apply_gradients(zip(gradients[len(fast):], slow))
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
        labels: Literal["attributes", "domains", "folders", "pseudo", "none"] = Field(
            default="attributes", description="classes of the auxiliary task: the clips' attribute strings (the domain "
            "where a clip has none); their domains only (no attributes needed); domain x sub-folder (a user's "
            "folders such as car_A1/, asd.data.folder_clip); domain x k-means pseudo-attribute of the log-mel "
            "statistics (asd.detectors.pseudo_attributes); or none at all: self-supervised classes only (needs featex)")
        pseudo_classes: int = Field(default=16, gt=0, description="labels: pseudo: k-means clusters")
        featex: bool = Field(default=False, description="feature exchange (FeatEx, Wilkinghoff ICASSP 2024): also "
                             "classify embeddings whose FFT-branch part comes from another clip")
        featex_probability: float = Field(default=0.5, ge=0, le=1, description="share of a batch's rows exchanged")
        featex_weight: float = Field(default=1.0, ge=0, description="weight of the FeatEx loss")
        encoder: Literal["aisfx", "musicnn_vgg"] | None = Field(
            default=None, description="a pretrained encoder as one more branch (asd.encoders; its weights converted "
            "once with development/convert_encoders.py)")
        encoder_input: Literal["original", "adapted"] = Field(
            default="adapted", description="aisfx: resampled to its 44.1 kHz settings (original) or 96 mel bands over "
            "0-8000 Hz at 16 kHz (adapted)")
        encoder_trainable: bool = Field(default=True, description="fine-tune the encoder (false: frozen)")
        encoder_projection: bool = Field(default=True, description="batch norm and a dense embedding_dim projection "
                                         "after the encoder (false: its own embedding, as it is)")
        encoder_learning_rate_scale: float = Field(default=0.1, gt=0, description="the encoder's learning rate as a "
                                                   "share of training.learning_rate (pretrained weights move slowly)")

        @model_validator(mode="after")
        def _featex_needs_two_groups(self):
            if self.featex and not (self.fft_branch and (self.n_ffts or self.encoder)):
                raise ValueError("featex exchanges the FFT branch's embedding with the other branches': it needs "
                                 "fft_branch and at least one n_fft or an encoder")
            if self.labels == "none" and not self.featex:
                raise ValueError("labels: none leaves no class to learn but FeatEx's: set featex: true")
            return self

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

    def _encoder_branch(self, waveform):
        from ..encoders.branch import EncoderBranch

        p = self.params
        x = EncoderBranch(p.encoder, self.features.sample_rate, p.encoder_input, trainable=p.encoder_trainable,
                          name=f"encoder_{p.encoder}")(waveform)
        if not p.encoder_projection:
            return x
        x = layers.BatchNormalization()(x)
        return layers.Dense(p.embedding_dim, use_bias=False, name=f"embedding_{p.encoder}")(x)

    def build_embedder(self, n_samples: int) -> keras.Model:
        """The embedding network for waveforms of ``n_samples``: ``(batch, n_samples)`` ->
        ``(batch, dim)``, the branches' embeddings side by side: the STFT branches', the
        encoder's, then the FFT branch's (FeatEx exchanges that last part)."""
        if not self.params.n_ffts and not self.params.fft_branch and not self.params.encoder:
            raise ValueError("multispec_scac needs at least one branch (n_ffts, fft_branch or encoder)")
        waveform = keras.Input((n_samples,), name=WAVEFORM_INPUT_NAME)
        x = layers.Lambda(unit_rms, name="unit_rms")(waveform) if self.params.gain_normalise else waveform
        parts = [self._stft_branch(x, n) for n in self.params.n_ffts]
        if self.params.encoder:
            parts.append(self._encoder_branch(x))
        if self.params.fft_branch:
            parts.append(self._fft_branch(x, n_samples))
        embedding = layers.Concatenate(name="embedding")(parts) if len(parts) > 1 else parts[0]
        return keras.Model(waveform, embedding, name="multispec_embedder")

    def _encoder_variables(self, embedder: keras.Model) -> tuple:
        """The pretrained encoder's trainable variables (updated at the scaled learning rate)."""
        if not self.params.encoder:
            return ()
        return tuple(embedder.get_layer(f"encoder_{self.params.encoder}").trainable_variables)

    # --- training -----------------------------------------------------------------------
    def _network_key(self, train: ClipSet) -> tuple:
        scoring = {"backend", "smote_ratio", "smote_neighbours", "kmeans_centres", "rescale_k"}
        return (id(train), self.seed, self.training.model_dump_json(), self.features,
                self.params.model_dump_json(exclude=scoring))

    def fit(self, train: ClipSet, run_dir=None, log=print):
        # deterministic on CPU (same config and seed, same weights): TensorFlow's
        # deterministic kernels, with every random draw seeded (weights, data order, mixup)
        with deterministic_ops():
            return self._fit(train, run_dir, log)

    def class_names(self, train: ClipSet) -> list[str]:
        """The auxiliary task's class of each training clip, by ``model.labels``.

        Returns
        -------
        list of str, one per clip
        """
        labels, domains = self.params.labels, list(train.domains)
        if labels == "attributes":
            return [a or d for a, d in zip(train.attributes, domains)]
        if labels == "domains":
            return domains
        if labels == "folders":  # the domain too: a user's source/ and target/ hold the same folder names
            return [f"{d}:{c.attributes.get('folder', '-')}" for c, d in zip(train.clips, domains)]
        if labels == "pseudo":
            from .pseudo_attributes import pseudo_attributes

            clusters = pseudo_attributes(train.logmels, self.params.pseudo_classes, self.seed)
            return [f"{d}:{c}" for c, d in zip(clusters, domains)]
        return ["normal"] * len(train)

    def _fit(self, train: ClipSet, run_dir=None, log=print):
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
        # attribute-free: the domains, or one class, so that FeatEx's self-supervised classes teach the rest
        names = self.class_names(train)
        classes = sorted(set(names))
        if len(classes) < 2 and not self.params.featex:
            raise ValueError(f"multispec_scac: the training clips make one class ({classes[0]}) for labels: "
                             f"{self.params.labels}, which leaves nothing to learn; set model.featex=true (FeatEx's "
                             "self-supervised classes), as development/configs/attribute_free.yaml does")
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
            lr, decay = self.training.learning_rate, self.params.weight_decay
            optimizers = [keras.optimizers.AdamW(lr, weight_decay=decay),
                          keras.optimizers.AdamW(lr * self.params.encoder_learning_rate_scale, weight_decay=decay)]
            probe = embedder(tf.zeros((2, crop)))
            head(probe, tf.zeros((2, len(classes))))
            featex_head = None
            if self.params.featex:
                featex_head = SubClusterAdaCosHead(3 * len(classes), self.params.n_subclusters, name="featex_head")
                featex_head(probe, tf.zeros((2, 3 * len(classes))))
            split = probe.shape[-1] - self.params.embedding_dim  # the FFT branch comes last
            step = _train_step(embedder, head, optimizers, featex_head, split, self.params.featex_weight,
                               self._encoder_variables(embedder))
            epochs = self.training.epochs if embedder.trainable_variables else 0  # a frozen encoder alone: nothing to fit

            for epoch in range(epochs):
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
                    # drawn only with FeatEx, so that configs without it keep their random stream
                    exchange = ((rng.uniform(size=len(i)) < self.params.featex_probability).astype(np.float32)
                                if self.params.featex else np.zeros(len(i), np.float32))
                    losses.append(float(step(tf.constant(xb), tf.constant(yb), tf.constant(exchange))))
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

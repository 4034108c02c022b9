"""Auxiliary-task embeddings: the approach of the top DCASE 2020-2024 systems (imports
TensorFlow/Keras).

A small CNN learns to tell the attribute combinations of normal training clips apart
(for DCASE 2023 ToyCar: car model x speed x microphone, 26 classes; the domain is part
of it through the microphone) with an additive angular margin loss (ArcFace: Deng et
al., CVPR 2019; used for ASD e.g. by Wilkinghoff, DCASE 2021-2023). Normal sounds then
map close to the embeddings of training clips; an anomalous one lands away from all of
them. The 10 target-domain clips are oversampled so that their classes are learnt.

Score of a patch: cosine distance of its embedding to the nearest training clip
embedding (mean over that clip's patches) of each domain, the minimum over domains, so
that a target-domain clip is compared with target-domain clips and domain shift is not
mistaken for anomaly. A clip's score is the mean over its patches. The training-clip
embeddings are stored in the graph, so TF Serving serves the whole computation.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from pydantic import Field

from .autoencoders import _patch_spec, normalisation_record, per_mel_standardisation
from .base import ClipSet, Params, ServableDetector
from .progress import keras_epoch_log


class ArcFaceHead(layers.Layer):
    """Logits ``s * cos(theta + m * onehot)`` of L2-normalised embeddings against
    L2-normalised class centres (Deng et al., "ArcFace", CVPR 2019)."""

    def __init__(self, n_classes: int, scale: float, margin: float, **kwargs):
        super().__init__(**kwargs)
        self.n_classes, self.scale, self.margin = n_classes, scale, margin

    def build(self, input_shape):
        self.centres = self.add_weight(shape=(input_shape[0][-1], self.n_classes), initializer="glorot_uniform", name="centres")

    def call(self, inputs):
        embedding, label = inputs
        cosine = tf.matmul(tf.nn.l2_normalize(embedding, 1), tf.nn.l2_normalize(self.centres, 0))
        theta = tf.acos(tf.clip_by_value(cosine, -1 + 1e-7, 1 - 1e-7))
        return self.scale * tf.cos(theta + self.margin * tf.one_hot(label, self.n_classes))


class ArcFaceDetector(ServableDetector):
    leave_one_out_training_scores = True
    kind = "arcface"
    description = "CNN attribute classifier with ArcFace loss; cosine 1-NN to training clips per domain, min over domains"
    outputs = ("patch_error", "frame_error")
    score_unit = "cosine distance to the nearest normal training clip"

    class Model(Params):
        filters: list[int] = Field(default=[16, 32, 64], min_length=1)
        embedding_dim: int = Field(default=128, gt=0)
        label: str = Field(default="attributes", pattern="^(attributes|domain)$",
                           description="classes to learn: attribute combinations, or just the domain")
        target_oversampling: int = Field(default=10, ge=1, description="repeat target-domain clips this often")
        scale: float = Field(default=30.0, gt=0)
        margin: float = Field(default=0.5, ge=0)

    def build_embedder(self) -> keras.Model:
        f = self.features
        inputs = keras.Input((f.n_mels, f.patch_frames, 1), name="patch")
        x = inputs
        for i, n in enumerate(self.params.filters):
            for j in range(2):
                x = layers.Conv2D(n, 3, padding="same", use_bias=False, name=f"conv{i}_{j}")(x)
                x = layers.BatchNormalization(name=f"bn{i}_{j}")(x)
                x = layers.ReLU(name=f"relu{i}_{j}")(x)
            x = layers.MaxPool2D(2, name=f"pool{i}")(x)
        x = layers.GlobalAveragePooling2D(name="pool")(x)
        outputs = layers.Dense(self.params.embedding_dim, name="embedding")(x)
        return keras.Model(inputs, outputs, name="arcface_embedder")

    def _classes(self, clips: ClipSet) -> list[str]:
        return [a or d for a, d in zip(clips.attributes, clips.domains)] if self.params.label == "attributes" else list(clips.domains)

    def _standardised_patches(self, clips: ClipSet) -> tuple[np.ndarray, np.ndarray]:
        patches, owner = clips.patches()
        return ((patches - self.mean[None, :, None]) / self.std[None, :, None])[..., None].astype(np.float32), owner

    def fit(self, train: ClipSet, run_dir=None, log=print):
        keras.utils.set_random_seed(self.seed)
        fit_part = train  # no early stopping: a fixed number of epochs, every clip learnt
        self.mean, self.std = per_mel_standardisation(fit_part)
        names = self._classes(fit_part)
        self.classes = sorted(set(names))
        clip_class = np.array([self.classes.index(n) for n in names])
        x, owner = self._standardised_patches(fit_part)
        y = clip_class[owner]
        # oversample the few target-domain clips so their classes weigh in the loss
        target = fit_part.domains[owner] == "target"
        index = np.concatenate([np.arange(len(x))] + [np.flatnonzero(target)] * (self.params.target_oversampling - 1))
        self.embedder = self.build_embedder()
        label_in = keras.Input((), dtype="int32", name="label")
        logits = ArcFaceHead(len(self.classes), self.params.scale, self.params.margin, name="arcface")(
            [self.embedder.output, label_in]
        )
        classifier = keras.Model([self.embedder.input, label_in], logits)
        classifier.compile(keras.optimizers.Adam(self.training.learning_rate), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        dataset = (
            tf.data.Dataset.from_tensor_slices(((x[index], y[index]), y[index]))
            .shuffle(len(index), seed=self.seed, reshuffle_each_iteration=True)
            .batch(self.training.batch_size)
            .prefetch(tf.data.AUTOTUNE)
        )
        callbacks = [keras.callbacks.TensorBoard(log_dir=str(run_dir), update_freq="epoch")] if run_dir is not None else []
        progress = keras_epoch_log(log, self.training.epochs)  # ArcFace loss; no clips held out
        callbacks += [progress] if progress else []
        started = time.monotonic()
        history = classifier.fit(dataset, epochs=self.training.epochs, callbacks=callbacks, verbose=0, shuffle=False).history
        self.info = {
            "epochs_run": len(history["loss"]),
            "best_epoch": len(history["loss"]),
            "best_loss": float(history["loss"][-1]),
            "seconds_per_epoch": round((time.monotonic() - started) / len(history["loss"]), 2),
            "parameters": int(self.embedder.count_params()),
            "classes": self.classes,
            "n_fit_clips": len(train),
            "n_validation_clips": 0,
        }
        self.bank = {d: self._clip_embeddings(train.subset(train.domains == d)) for d in ("source", "target") if (train.domains == d).any()}
        self._serve = None
        return self

    def _clip_embeddings(self, clips: ClipSet) -> np.ndarray:
        """L2-normalised mean patch embedding of each clip, ``(n_clips, embedding_dim)``."""
        x, owner = self._standardised_patches(clips)
        e = self.embedder.predict(x, batch_size=1024, verbose=0)
        e /= np.linalg.norm(e, axis=1, keepdims=True) + 1e-12
        means = np.stack([e[owner == i].mean(0) for i in range(len(clips))])
        return (means / (np.linalg.norm(means, axis=1, keepdims=True) + 1e-12)).astype(np.float32)

    def trackable(self):
        return self.embedder

    def training_scores(self, train: ClipSet) -> np.ndarray:
        """Leave-one-out scores of the training clips: each clip against the bank without
        itself (served scores would compare it with itself and put the threshold too low)."""
        x, owner = self._standardised_patches(train)
        e = self.embedder.predict(x, batch_size=1024, verbose=0)
        e /= np.linalg.norm(e, axis=1, keepdims=True) + 1e-12
        domains = train.domains
        scores = np.empty(len(train))
        for i in range(len(train)):
            per_domain = []
            for domain, bank in self.bank.items():
                members = np.flatnonzero(domains == domain)
                keep = members != i
                if keep.any():
                    per_domain.append(1.0 - (e[owner == i] @ bank[keep].T).max(axis=1))
            scores[i] = np.min(per_domain, axis=0).mean()
        return scores

    def normalisation(self) -> dict:
        return normalisation_record(self.mean, self.std)

    def build_serving_function(self):
        mean_t = tf.constant(self.mean[None, :, None])
        std_t = tf.constant(self.std[None, :, None])
        banks = [tf.constant(b.T) for b in self.bank.values()]  # each (embedding_dim, n_clips)
        embedder, frames = self.embedder, self.features.patch_frames

        @tf.function(input_signature=[_patch_spec(self.features)])
        def serve(logmel_patches):
            standardised = (logmel_patches - mean_t) / std_t
            embedding = tf.nn.l2_normalize(embedder(standardised[..., None], training=False), axis=1)
            distance = tf.reduce_min(tf.stack([1.0 - tf.reduce_max(tf.matmul(embedding, bank), axis=1) for bank in banks]), axis=0)
            # one score per patch; frames carry their patch's score (for the error-over-time plot)
            return {"patch_error": distance, "frame_error": tf.tile(distance[:, None], [1, frames])}

        return serve

    def size_bytes(self) -> int:
        return int(4 * self.embedder.count_params() + sum(b.nbytes for b in self.bank.values()))

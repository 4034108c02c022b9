"""Autoencoder detectors: the anomaly score is how badly a model trained on normal
sounds reconstructs a clip (imports TensorFlow/Keras).

- ``conv_ae``: this project's convolutional autoencoder on standardised log-mel patches
  (the model served by default; :func:`asd.model.build_conv_autoencoder`).
- ``dense_ae_mse`` / ``dense_ae_mahalanobis``: the DCASE 2020-2024 baseline dense
  autoencoder on 5 stacked frames (640 inputs, 4 x 128 Dense+BN+ReLU, 8-unit
  bottleneck), scored as in the DCASE 2023 baseline (nttcslab/dcase2023_task2_baseline_ae)
  by mean squared error, or by "selective Mahalanobis": the Mahalanobis distance of the
  reconstruction residual under each domain's residual covariance, minimum over domains.
- ``lstm_ae``: an LSTM sequence autoencoder over the frames of a patch.
- ``vae``: a convolutional variational autoencoder (Kingma & Welling, 2014); served
  deterministically (the latent mean), scored by reconstruction error.

All take plain dB log-mel patches ``(batch, n_mels, patch_frames)`` in the served graph.
"""

from __future__ import annotations

import time

import keras
import numpy as np
import tensorflow as tf
from keras import layers
from pydantic import Field
from sklearn.covariance import LedoitWolf

from ..features import FeatureConfig
from ..metadata import INPUT_NAME
from ..model import build_conv_autoencoder
from ..tensorboard_logging import run_callbacks
from .base import ClipSet, Params, ServableDetector, split_validation
from .progress import keras_epoch_log


def fit_keras(model: keras.Model, x, x_val, training, seed: int, run_dir=None, log=print, callbacks=()) -> dict:
    """Fit ``model`` to reconstruct ``x`` (Adam, MSE), with early stopping on ``x_val``
    and TensorBoard logs in ``run_dir`` (Keras's losses and learning rate, plus
    ``callbacks``: :func:`asd.tensorboard_logging.run_callbacks`). Returns what a report
    needs: epochs run, best epoch and losses, seconds per epoch."""
    extra = list(callbacks)
    model.compile(optimizer=keras.optimizers.Adam(training.learning_rate), loss="mse")
    monitor = "val_loss" if x_val is not None and len(x_val) else "loss"
    callbacks = [
        keras.callbacks.EarlyStopping(monitor=monitor, patience=training.early_stopping_patience, restore_best_weights=True)
    ]
    if run_dir is not None:
        callbacks.append(keras.callbacks.TensorBoard(log_dir=str(run_dir), update_freq="epoch"))
    callbacks += extra  # after EarlyStopping: their on_train_end sees the restored best weights
    timer = EpochTimer()
    callbacks.append(timer)
    progress = keras_epoch_log(log, training.epochs)  # last: its seconds include the others' epoch-end work
    callbacks += [progress] if progress else []
    dataset = (
        tf.data.Dataset.from_tensor_slices((x, x))
        .shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
        .batch(training.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val = tf.data.Dataset.from_tensor_slices((x_val, x_val)).batch(1024) if monitor == "val_loss" else None
    started = time.monotonic()
    history = model.fit(
        dataset, validation_data=val, epochs=training.epochs, callbacks=callbacks, verbose=0,
        shuffle=False,  # the dataset reshuffles itself every epoch
    ).history
    best = int(np.argmin(history[monitor]))
    if log and len(history["loss"]) < training.epochs:
        log(f"early stopping after epoch {len(history['loss'])}/{training.epochs}: best {monitor} at epoch {best + 1}, "
            "whose weights are kept")
    return {
        "epochs_run": len(history["loss"]),
        "best_epoch": best + 1,
        "best_loss": float(history["loss"][best]),
        "best_val_loss": float(history["val_loss"][best]) if "val_loss" in history else None,
        "seconds_per_epoch": round((time.monotonic() - started) / len(history["loss"]), 2),
        "epoch_seconds": [round(t, 3) for t in timer.seconds],
        "parameters": int(model.count_params()),
    }


class EpochTimer(keras.callbacks.Callback):
    """Wall time of each epoch in seconds (training and validation, and the callbacks
    before it, such as the per-epoch evaluation), for the training report and
    ``asd bench``."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._started)


def per_mel_standardisation(clips: ClipSet) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (dB) of every mel band over all frames of ``clips``, each ``(n_mels,)``;
    std floored at 1e-3 so that a constant band does not divide by ~0."""
    frames = np.concatenate(clips.logmels, axis=1)
    return frames.mean(axis=1).astype(np.float32), np.maximum(frames.std(axis=1), 1e-3).astype(np.float32)


def normalisation_record(mean: np.ndarray, std: np.ndarray) -> dict:
    """The per-mel standardisation inside a model, as stored in its metadata."""
    return {"kind": "per_mel_standardisation", "mean_db": mean.round(4).tolist(), "std_db": std.round(4).tolist()}


def _patch_spec(features: FeatureConfig) -> tf.TensorSpec:
    return tf.TensorSpec([None, features.n_mels, features.patch_frames], tf.float32, name=INPUT_NAME)


class _PatchAutoencoder(ServableDetector):
    score_unit = "reconstruction error (MSE, standardised log-mel)"
    epoch_evaluation = True  # asd.tensorboard_logging scores monitor_clips every epoch

    """An autoencoder of whole standardised patches; subclasses build the Keras model.

    Served outputs: ``reconstruction`` (dB), ``patch_error`` and ``frame_error``: mean
    squared error in standardised log-mel units, over the patch / over mel bands."""

    def build(self) -> keras.Model:
        raise NotImplementedError

    def _to_model(self, standardised):  # (batch, n_mels, frames) -> model input
        return standardised[..., None]

    def _from_model(self, output):
        return output[..., 0]

    def _model_input(self, clips: ClipSet) -> np.ndarray:
        patches, _ = clips.patches()
        standardised = (patches - self.mean[None, :, None]) / self.std[None, :, None]
        return np.asarray(self._to_model(tf.constant(standardised, tf.float32)))

    def fit(self, train: ClipSet, run_dir=None, log=print):
        keras.utils.set_random_seed(self.seed)
        fit_part, val_part = split_validation(train, self.training.validation_fraction, self.seed)
        self.mean, self.std = per_mel_standardisation(fit_part)
        self.model = self.build()
        x_val = self._model_input(val_part) if len(val_part) else None
        self._serve = None  # a serving function of this model (used by the TensorBoard callbacks)
        self.info = fit_keras(
            self.model, self._model_input(fit_part), x_val, self.training, self.seed, run_dir, log,
            callbacks=run_callbacks(self, run_dir, train),
        )
        self.info.update(n_fit_clips=len(fit_part), n_validation_clips=len(val_part))
        self._serve = None
        return self

    def trackable(self):
        return self.model

    def reconstruct(self, patches: np.ndarray) -> np.ndarray:
        """The model's reconstruction (dB) of log-mel patches ``(batch, n_mels, patch_frames)``."""
        return self.serving_function()(tf.constant(patches, tf.float32))["reconstruction"].numpy()

    def normalisation(self) -> dict:
        return normalisation_record(self.mean, self.std)

    def build_serving_function(self):
        mean_t = tf.constant(self.mean[None, :, None])
        std_t = tf.constant(self.std[None, :, None])
        model = self.model

        @tf.function(input_signature=[_patch_spec(self.features)])
        def serve(logmel_patches):
            standardised = (logmel_patches - mean_t) / std_t
            recon = self._from_model(model(self._to_model(standardised), training=False))
            squared = tf.square(standardised - recon)
            return {
                "reconstruction": recon * std_t + mean_t,
                "patch_error": tf.reduce_mean(squared, axis=[1, 2]),
                "frame_error": tf.reduce_mean(squared, axis=1),
            }

        return serve


class ConvAutoencoder(_PatchAutoencoder):
    kind = "conv_ae"
    description = "convolutional autoencoder on log-mel patches (128 mels x 32 frames), MSE"

    class Model(Params):
        filters: list[int] = Field(default=[16, 32, 64], min_length=1)
        latent_dim: int = Field(default=32, gt=0)

    def build(self):
        return build_conv_autoencoder(self.features.n_mels, self.features.patch_frames, self.params.filters, self.params.latent_dim)

    def fit(self, train: ClipSet, run_dir=None, log=print):
        super().fit(train, run_dir, log)
        for key in [k for k in _FITTED_CONV_AE if k[0] != id(train)]:
            del _FITTED_CONV_AE[key]  # another training set: the id of a freed one may be reused
        _FITTED_CONV_AE[_conv_ae_key(self.features, self.training, self.params, self.seed, train)] = self
        return self

    def latents(self, clips: ClipSet) -> np.ndarray:
        """Bottleneck activations of every patch, pooled per clip as mean and std:
        ``(n_clips, 2 * latent_dim)`` float32 (input of the latent-space classical detectors)."""
        encoder = keras.Model(self.model.input, self.model.get_layer("bottleneck").output)
        _, owner = clips.patches()
        z = encoder.predict(self._model_input(clips), batch_size=2048, verbose=0)
        return np.stack([np.concatenate([z[owner == i].mean(0), z[owner == i].std(0)]) for i in range(len(clips))])


# Fitted conv_ae of the current training set, by (id of the ClipSet, seed, settings): the
# latent-space classical detectors of a benchmark reuse conv_ae's network of each seed
# instead of training five more identical ones.
_FITTED_CONV_AE: dict[tuple, ConvAutoencoder] = {}


def _conv_ae_key(features, training, model_params, seed, train) -> tuple:
    return (id(train), seed, training.model_dump_json(), model_params.model_dump_json(), features)


def fitted_conv_autoencoder(features, training, seed, train: ClipSet, run_dir=None, log=print) -> tuple[ConvAutoencoder, bool]:
    """A conv_ae with default model settings fitted on ``train``: the one already fitted
    in this process with the same settings and seed, else a new one.
    Returns ``(autoencoder, reused)``."""
    key = _conv_ae_key(features, training, ConvAutoencoder.Model(), seed, train)
    if key in _FITTED_CONV_AE:
        return _FITTED_CONV_AE[key], True
    return ConvAutoencoder(features, {}, training, seed).fit(train, run_dir, log), False


class LstmAutoencoder(_PatchAutoencoder):
    kind = "lstm_ae"
    description = "LSTM sequence autoencoder over the 32 frames of a patch, MSE"

    class Model(Params):
        units: int = Field(default=64, gt=0)
        latent_dim: int = Field(default=32, gt=0)

    def _to_model(self, standardised):  # frames as the sequence axis
        return tf.transpose(standardised, [0, 2, 1])

    def _from_model(self, output):
        return tf.transpose(output, [0, 2, 1])

    def build(self):
        f = self.features
        inputs = keras.Input((f.patch_frames, f.n_mels), name="frames")
        x = layers.LSTM(self.params.units, name="enc_lstm")(inputs)
        x = layers.Dense(self.params.latent_dim, name="bottleneck")(x)
        x = layers.RepeatVector(f.patch_frames, name="repeat")(x)
        x = layers.LSTM(self.params.units, return_sequences=True, name="dec_lstm")(x)
        outputs = layers.TimeDistributed(layers.Dense(f.n_mels), name="reconstruction")(x)
        return keras.Model(inputs, outputs, name="lstm_autoencoder")


class _Sampling(layers.Layer):
    """Reparameterisation z = mu + sigma * eps while training (mu when serving); adds
    ``beta`` times the KL divergence to N(0, I) as a loss (Kingma & Welling, 2014)."""

    def __init__(self, beta: float, seed: int, **kwargs):
        super().__init__(**kwargs)
        self.beta = beta
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        mu, log_var = inputs
        kl = -0.5 * keras.ops.mean(keras.ops.sum(1 + log_var - keras.ops.square(mu) - keras.ops.exp(log_var), axis=-1))
        self.add_loss(self.beta * kl)
        if not training:
            return mu
        eps = keras.random.normal(keras.ops.shape(mu), seed=self.seed_generator)
        return mu + keras.ops.exp(0.5 * log_var) * eps


class VariationalAutoencoder(_PatchAutoencoder):
    kind = "vae"
    description = "convolutional variational autoencoder on log-mel patches, reconstruction MSE"

    class Model(ConvAutoencoder.Model):
        beta: float = Field(default=0.01, ge=0, description="weight of the KL term per patch")

    def build(self):
        base = build_conv_autoencoder(self.features.n_mels, self.features.patch_frames, self.params.filters, self.params.latent_dim)
        # Same encoder/decoder as conv_ae; the bottleneck becomes (mu, log_var) -> z.
        flat = base.get_layer("flatten").output
        mu = layers.Dense(self.params.latent_dim, name="z_mean")(flat)
        log_var = layers.Dense(self.params.latent_dim, name="z_log_var")(flat)
        z = _Sampling(self.params.beta, self.seed, name="sampling")([mu, log_var])
        decoder_in = base.get_layer("expand")
        x = z
        started = False
        for layer in base.layers:
            if layer is decoder_in:
                started = True
            if started:
                x = layer(x)
        return keras.Model(base.input, x, name="variational_autoencoder")


def stack_frames(patches, context: int):
    """``(batch, n_mels, frames)`` -> ``(batch, frames - context + 1, context * n_mels)``:
    ``context`` consecutive frames concatenated frame by frame, as the DCASE baseline's
    640-d input vectors (5 frames x 128 mels)."""
    frames_first = tf.transpose(patches, [0, 2, 1])
    windows = tf.signal.frame(frames_first, context, 1, axis=1)  # (batch, vectors, context, n_mels)
    shape = tf.shape(windows)
    return tf.reshape(windows, [shape[0], shape[1], context * patches.shape[1]])


def _vector_to_frame_matrix(n_frames: int, context: int) -> np.ndarray:
    """``(n_vectors, n_frames)``: averages each frame's share of the vectors covering it."""
    n_vectors = n_frames - context + 1
    cover = np.zeros((n_vectors, n_frames), np.float32)
    for v in range(n_vectors):
        cover[v, v : v + context] = 1.0
    return cover / cover.sum(axis=0, keepdims=True)


class DenseAutoencoder(ServableDetector):
    """The DCASE baseline dense autoencoder (see the module docstring)."""

    kind = "dense_ae_mse"
    description = "DCASE baseline dense AE (5 frames x 128 mels = 640 in, 4x128 + 8 bottleneck), MSE"
    scoring = "mse"
    score_unit = "reconstruction error (MSE of 640-d frame vectors, dB^2)"
    outputs = ("patch_error", "frame_error")
    epoch_evaluation = True  # by MSE while training, see fit

    class Model(Params):
        context_frames: int = Field(default=5, gt=0)
        hidden_units: int = Field(default=128, gt=0)
        hidden_layers: int = Field(default=4, gt=0)
        bottleneck: int = Field(default=8, gt=0)

    def build(self) -> keras.Model:
        p = self.params
        width = p.context_frames * self.features.n_mels
        inputs = keras.Input((width,), name="vector")
        x = inputs
        for name, units in [("enc", p.hidden_units)] * p.hidden_layers + [("bottleneck", p.bottleneck)] + [("dec", p.hidden_units)] * p.hidden_layers:
            x = layers.Dense(units)(x)
            x = layers.BatchNormalization()(x)
            x = layers.ReLU()(x)
        outputs = layers.Dense(width, name="reconstruction")(x)
        return keras.Model(inputs, outputs, name="dcase_dense_autoencoder")

    def _vectors(self, clips: ClipSet) -> np.ndarray:
        """All 640-d vectors of the clips' patches (patch hop = patch length, so each
        frame once but for patch edges), ``(n_vectors, 640)`` float32."""
        patches, _ = clips.patches()
        step = max(1, self.features.patch_frames // self.features.patch_hop)
        vectors = stack_frames(tf.constant(patches[::step]), self.params.context_frames)
        return vectors.numpy().reshape(-1, vectors.shape[-1])

    def fit(self, train: ClipSet, run_dir=None, log=print):
        keras.utils.set_random_seed(self.seed)
        fit_part, val_part = split_validation(train, self.training.validation_fraction, self.seed)
        self.model = self.build()
        x_val = self._vectors(val_part) if len(val_part) else None
        # While training, the serving function scores by MSE (the per-epoch TensorBoard
        # evaluation); the Mahalanobis statistics need the fitted model and come after.
        self.residual_stats, self._serve = None, None
        self.info = fit_keras(
            self.model, self._vectors(fit_part), x_val, self.training, self.seed, run_dir, log,
            callbacks=run_callbacks(self, run_dir, train),
        )
        self.info.update(n_fit_clips=len(fit_part), n_validation_clips=len(val_part))
        self.residual_stats = self._fit_residuals(train) if self.scoring == "mahalanobis" else None
        self._serve = None
        return self

    def _fit_residuals(self, train: ClipSet) -> dict:
        """Per domain: mean and shrunk inverse covariance (Ledoit-Wolf) of the
        reconstruction residual vectors of that domain's training clips."""
        stats = {}
        for domain in ("source", "target"):
            part = train.subset(train.domains == domain)
            if not len(part):
                continue
            x = self._vectors(part)
            residual = x - self.model.predict(x, batch_size=4096, verbose=0)
            lw = LedoitWolf().fit(residual)
            stats[domain] = (lw.location_.astype(np.float32), lw.precision_.astype(np.float32))
        return stats

    def trackable(self):
        return self.model

    def reconstruct(self, patches: np.ndarray) -> np.ndarray:
        """Log-mel patches ``(batch, n_mels, patch_frames)`` dB as the model rebuilds them:
        each frame the mean of its copies in the reconstructed overlapping 5-frame vectors."""
        context, n_mels = self.params.context_frames, self.features.n_mels
        vectors = stack_frames(tf.constant(patches, tf.float32), context).numpy()
        batch, n_vectors, width = vectors.shape
        recon = self.model(tf.constant(vectors.reshape(-1, width)), training=False).numpy()
        recon = recon.reshape(batch, n_vectors, context, n_mels)
        frames = np.zeros((batch, n_vectors + context - 1, n_mels), np.float32)
        for k in range(context):  # vector v holds frames v .. v + context - 1
            frames[:, k : k + n_vectors] += recon[:, :, k]
        frames /= np.convolve(np.ones(n_vectors), np.ones(context))[None, :, None]  # copies per frame
        return frames.transpose(0, 2, 1)

    def build_serving_function(self):
        model, context = self.model, self.params.context_frames
        to_frames = tf.constant(_vector_to_frame_matrix(self.features.patch_frames, context))
        domains = [(tf.constant(m), tf.constant(p)) for m, p in (self.residual_stats or {}).values()]

        @tf.function(input_signature=[_patch_spec(self.features)])
        def serve(logmel_patches):
            vectors = stack_frames(logmel_patches, context)  # (batch, n_vectors, 640)
            shape = tf.shape(vectors)
            flat = tf.reshape(vectors, [-1, vectors.shape[-1]])
            residual = tf.reshape(flat - model(flat, training=False), shape)
            if not domains:
                vector_error = tf.reduce_mean(tf.square(residual), axis=-1)  # (batch, n_vectors)
            else:
                per_domain = []
                for location, precision in domains:
                    centred = residual - location
                    squared = tf.reduce_sum(tf.einsum("bvi,ij->bvj", centred, precision) * centred, axis=-1)
                    per_domain.append(tf.sqrt(tf.maximum(squared, 0.0)))
                stacked = tf.stack(per_domain)  # (domains, batch, n_vectors)
                nearest = tf.argmin(tf.reduce_mean(stacked, axis=2), axis=0)  # domain of each patch
                vector_error = tf.gather(tf.transpose(stacked, [1, 0, 2]), nearest, batch_dims=1)
            frame_error = tf.matmul(vector_error, to_frames)
            return {"patch_error": tf.reduce_mean(vector_error, axis=1), "frame_error": frame_error}

        return serve


class DenseAutoencoderMahalanobis(DenseAutoencoder):
    kind = "dense_ae_mahalanobis"
    description = "DCASE baseline dense AE, selective Mahalanobis (residual covariance per domain, min over domains)"
    scoring = "mahalanobis"
    score_unit = "Mahalanobis distance of the reconstruction residual"

"""Training one model per machine type on its normal clips, then export (imports TensorFlow).

The flow, top to bottom (as in the DCASE baselines): list the normal training clips,
hold out a part of them (stratified by domain) for early stopping, compute log-mel
patches with the shared feature path, standardise per mel band, fit the convolutional
autoencoder with TensorBoard logging, score the training clips with the exact function
that will be served, fit the gamma decision threshold, evaluate on the labelled test
clips when present, and export a SavedModel with its metadata.
"""

from __future__ import annotations

import json
import platform
import subprocess
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from . import __version__
from .audio import load_audio
from .config import TrainConfig
from .data import ClipInfo, list_clips
from .evaluation import evaluate_directory, write_scores_csv
from .export import export_savedmodel, make_serving_function
from .features import FeatureConfig, clip_patches, to_patches
from .inference import Detector
from .layout import next_version
from .metadata import ModelMetadata
from .model import build_conv_autoencoder
from .scoring import clip_score, fit_gamma_threshold
from .serving.inprocess import FunctionBackend


@dataclass
class TrainResult:
    version_dir: Path
    run_dir: Path
    metadata: ModelMetadata


def split_train_validation(clips: list[ClipInfo], fraction: float, seed: int) -> tuple[list[ClipInfo], list[ClipInfo]]:
    """Hold out ``fraction`` of the clips of each domain (at least one where a domain
    has two or more), chosen with ``seed``. Returns ``(train, validation)``."""
    rng = np.random.default_rng(seed)
    train, validation = [], []
    for domain in ("source", "target"):
        group = [c for c in clips if c.domain == domain]
        order = rng.permutation(len(group))
        n_val = max(1, round(fraction * len(group))) if len(group) >= 2 else 0
        validation += [group[i] for i in order[:n_val]]
        train += [group[i] for i in order[n_val:]]
    return train, validation


def clip_features(clips: list[ClipInfo], features: FeatureConfig) -> list[np.ndarray]:
    """Log-mel spectrograms ``(n_mels, n_frames)`` of clips, via the shared feature path."""
    return [clip_patches(load_audio(c.path, features.sample_rate).samples, features)[0] for c in clips]


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=True)
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def train(config: TrainConfig, log=print) -> TrainResult:
    """Train, threshold, evaluate and export one model as ``config`` says.

    Returns
    -------
    TrainResult
        Where the model version and the TensorBoard run were written, and the metadata.

    Raises
    ------
    FileNotFoundError
        No training clips under ``config.data_dir/train``.
    FileExistsError
        The requested model version exists.
    ValueError
        Too few clips, or settings that do not fit together.
    """
    started = time.monotonic()
    features = config.feature_config()
    keras.utils.set_random_seed(config.seed)
    model_dir = config.models_dir / config.name
    version = config.version or next_version(model_dir)
    version_dir = model_dir / str(version)
    if version_dir.exists():
        raise FileExistsError(f"{version_dir} exists; model versions are never overwritten (set version=...)")
    clips = [c for c in list_clips(config.data_dir, split="train") if c.label != "anomaly"]
    if config.training.max_train_clips:
        order = np.random.default_rng(config.seed).permutation(len(clips))[: config.training.max_train_clips]
        clips = [clips[i] for i in sorted(order)]
    if len(clips) < 3:
        raise ValueError(f"{config.data_dir}: {len(clips)} normal training clips; at least 3 are needed")
    machine_type = config.machine_type or clips[0].machine_type or config.name
    train_clips, val_clips = split_train_validation(clips, config.training.validation_fraction, config.seed)
    log(f"{machine_type}: {len(train_clips)} training clips, {len(val_clips)} held out for early stopping")

    log("computing log-mel features ...")
    train_mels = clip_features(train_clips, features)
    val_mels = clip_features(val_clips, features)
    frames = np.concatenate(train_mels, axis=1)
    mean = frames.mean(axis=1)
    std = np.maximum(frames.std(axis=1), 1e-3)  # floor: a constant band must not divide by ~0

    def standardised_patches(mels: list[np.ndarray]) -> np.ndarray:
        patches = np.concatenate([to_patches(m, features) for m in mels])
        return ((patches - mean[None, :, None]) / std[None, :, None])[..., None].astype(np.float32)

    x_train = standardised_patches(train_mels)
    x_val = standardised_patches(val_mels) if val_mels else None
    log(f"{len(x_train)} training patches of shape {x_train.shape[1:3]}")

    autoencoder = build_conv_autoencoder(features.n_mels, features.patch_frames, config.model.filters, config.model.latent_dim)
    autoencoder.compile(optimizer=keras.optimizers.Adam(config.training.learning_rate), loss="mse")
    run_dir = config.runs_dir / config.name / f"{datetime.now():%Y%m%d-%H%M%S}-v{version}"
    monitor = "val_loss" if x_val is not None else "loss"
    callbacks = [
        keras.callbacks.TensorBoard(log_dir=str(run_dir), update_freq="epoch"),
        keras.callbacks.EarlyStopping(
            monitor=monitor, patience=config.training.early_stopping_patience, restore_best_weights=True
        ),
    ]
    train_ds = (
        tf.data.Dataset.from_tensor_slices((x_train, x_train))
        .shuffle(len(x_train), seed=config.seed, reshuffle_each_iteration=True)
        .batch(config.training.batch_size)
        .prefetch(tf.data.AUTOTUNE)
    )
    val_ds = tf.data.Dataset.from_tensor_slices((x_val, x_val)).batch(512) if x_val is not None else None
    history = autoencoder.fit(
        train_ds, validation_data=val_ds, epochs=config.training.epochs, callbacks=callbacks, verbose=2,
        shuffle=False,  # the dataset reshuffles itself every epoch
    ).history
    del x_train, x_val

    serve = make_serving_function(autoencoder, mean, std, features)
    train_scores = np.array(
        [clip_score(serve(tf.constant(to_patches(m, features)))["patch_error"].numpy()) for m in train_mels + val_mels]
    )
    threshold = fit_gamma_threshold(train_scores, config.threshold.quantile)
    log(f"decision threshold {threshold.value:.4f} (gamma fit of {threshold.n_scores} training clips, q={threshold.quantile})")

    best_epoch = int(np.argmin(history[monitor])) + 1
    metadata = ModelMetadata(
        name=config.name,
        version=version,
        machine_type=machine_type,
        detector="conv_autoencoder",
        features=features,
        threshold={**threshold.to_dict(), "fitted_on": "all normal training clips (DCASE 2021+ baseline practice)"},
        normalisation={"kind": "per_mel_standardisation", "mean_db": mean.round(4).tolist(), "std_db": std.round(4).tolist()},
        training={
            "config": config.model_dump(mode="json"),
            "seed": config.seed,
            "data_dir": str(config.data_dir),
            "n_train_clips": len(train_clips),
            "n_validation_clips": len(val_clips),
            "n_clips_by_domain": {d: sum(c.domain == d for c in clips) for d in ("source", "target")},
            "epochs_run": len(history["loss"]),
            "best_epoch": best_epoch,
            "best_loss": float(history["loss"][best_epoch - 1]),
            "best_val_loss": float(history["val_loss"][best_epoch - 1]) if "val_loss" in history else None,
            "parameters": int(autoencoder.count_params()),
            "train_score_mean": float(train_scores.mean()),
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "duration_s": None,
            "git_commit": _git_commit(),
            "versions": {
                "asd": __version__,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "numpy": np.__version__,
                "librosa": __import__("librosa").__version__,
                "python": platform.python_version(),
            },
            "tensorboard_run": str(run_dir),
        },
    )
    has_test = (config.data_dir / "test").is_dir()
    if config.evaluate and has_test:
        log("evaluating on the labelled test clips ...")
        metrics, rows = evaluate_directory(Detector(FunctionBackend(serve, metadata), features), config.data_dir)
        metadata.evaluation = metrics
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "evaluation.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_scores_csv(rows, threshold.value, run_dir / "anomaly_scores.csv")
        log(
            "AUC-source {auc_source:.4f}  AUC-target {auc_target:.4f}  pAUC {pauc:.4f}  official {official_score:.4f}".format(
                **metrics
            )
        )
    metadata.training["duration_s"] = round(time.monotonic() - started, 1)
    export_savedmodel(autoencoder, serve, metadata, version_dir)
    log(f"exported {version_dir}")
    return TrainResult(version_dir=version_dir, run_dir=run_dir, metadata=metadata)

"""Training one model per machine type on its normal clips, then export (imports TensorFlow).

The flow, top to bottom (as in the DCASE baselines): list the normal training clips
(a DCASE ``train/`` folder, or any folder of clips: :func:`asd.data.training_clips`),
check each one decodes (unusable clips listed and skipped, or refused with ``strict``;
notes on resampling and on clips of other lengths),
compute their log-mel spectrograms with the shared feature path, fit the configured
servable detector (:mod:`asd.detectors`; the autoencoders with TensorBoard logging,
:mod:`asd.tensorboard_logging`, including an evaluation of the labelled test clips at
every epoch when present, and early stopping on held-out normal clips), score the training
clips with the exact function that will be served, fit the gamma decision threshold (and,
for waveform models, the unfamiliar threshold of :mod:`asd.familiarity`), evaluate on the
labelled test clips when present, and export a SavedModel with its metadata.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from . import __version__
from .config import ThresholdSettings, TrainConfig
from .audio import AudioError, clip_problem, load_audio
from .data import ClipInfo, list_clips, training_clips
from .features import ClipTooShortError, FeatureConfig, feature_threads
from .detectors import ServableDetector, load_clipset, make_detector
from .evaluation import evaluate_directory, write_scores_csv
from .explanations import FRAME_RULE, BandProfiles, fit_frame_threshold, training_frame_errors
from .export import export_savedmodel
from .inference import Detector
from .layout import next_version
from .familiarity import OUTPUT_NAME as UNFAMILIARITY_OUTPUT
from .familiarity import RULE as UNFAMILIAR_RULE
from .familiarity import FamiliarityReference, with_unfamiliarity
from .metadata import WAVEFORM_INPUT_NAME, ModelMetadata
from .provenance import git
from .scoring import fit_gamma_threshold
from .serving.inprocess import FunctionBackend


# Fewest usable normal clips a training takes: the decision threshold is a gamma fit of
# the training clips' (leave-one-out) scores.
MIN_TRAIN_CLIPS = 3
# Unusable clips named in a message (the rest counted)
MAX_LISTED = 10
THRESHOLD_FROM_TRAINING_ONLY = ("no labelled test set: the threshold comes from the training clips alone (no anomalous "
                                "clip checked it)")


@dataclass
class Screening:
    """What decoding each training clip found (:func:`screen_clips`)."""

    usable: list[ClipInfo]
    problems: list[str] = field(default_factory=list)  # "<file>: <why>" per unusable clip
    sample_rates: Counter = field(default_factory=Counter)  # the files' own rates
    seconds: list[float] = field(default_factory=list)  # each usable clip's length


def screen_clips(clips: list[ClipInfo], features: FeatureConfig) -> Screening:
    """Decode every clip once (two at a time) at the model's rate: the ones that cannot be
    used (unreadable, empty, silent, not WAV/FLAC, shorter than one patch) with the reason,
    and the usable ones' sample rates and lengths."""
    import soundfile as sf

    def check(clip: ClipInfo):
        try:
            audio = load_audio(clip.path, features.sample_rate)
            if audio.duration_s < features.min_duration_s:
                raise ClipTooShortError(f"{audio.duration_s:.2f} s long; the model needs at least "
                                        f"{features.min_duration_s:.2f} s")
            return sf.info(str(clip.path)).samplerate, audio.duration_s, None
        except (AudioError, ClipTooShortError, OSError, RuntimeError) as exc:
            return None, None, clip_problem(clip.path, exc)

    with feature_threads() as pool:
        results = list(pool.map(check, clips))
    screening = Screening(usable=[])
    for clip, (rate, seconds, problem) in zip(clips, results):
        if problem:
            screening.problems.append(problem)
        else:
            screening.usable.append(clip)
            screening.sample_rates[rate] += 1
            screening.seconds.append(seconds)
    return screening


def _listed(items: list[str]) -> str:
    more = len(items) - MAX_LISTED
    return "; ".join(items[:MAX_LISTED]) + (f"; and {more} more" if more > 0 else "")


def report_screening(screening: Screening, n_found: int, data_dir: Path, detector, strict: bool, log=print) -> list[ClipInfo]:
    """Say what :func:`screen_clips` found, in one line each; return the usable clips.

    Raises
    ------
    ValueError
        Unusable clips with ``strict``; fewer than :data:`MIN_TRAIN_CLIPS` usable ones.
    """
    features = detector.features
    problems = screening.problems
    if problems and strict:
        raise ValueError(f"{len(problems)} of {n_found} training clips cannot be used (--strict refuses them): "
                         f"{_listed(problems)}")
    if problems:
        log(f"note: skipped {len(problems)} of {n_found} training clips that cannot be used: {_listed(problems)}")
    n = len(screening.usable)
    if n < MIN_TRAIN_CLIPS:
        skipped = f" ({len(problems)} of {n_found} could not be used)" if problems else ""
        raise ValueError(f"{data_dir}: {n} usable normal training clip{'s' * (n != 1)}{skipped}; the recipe needs at "
                         f"least {MIN_TRAIN_CLIPS} (its threshold is fitted on their leave-one-out scores)")
    rates = screening.sample_rates
    if set(rates) != {features.sample_rate}:
        by_rate = ", ".join(f"{r} Hz ({c} clip{'s' * (c != 1)})" for r, c in sorted(rates.items()))
        log(f"note: clips at {by_rate}: every clip is resampled to {features.sample_rate} Hz, the model's rate "
            "(as asd score does when serving)")
    seconds = np.round(screening.seconds, 2)
    if detector.input_name == WAVEFORM_INPUT_NAME:
        model_s = detector.input_samples / features.sample_rate
        longer, shorter = int(np.sum(seconds > model_s + 0.005)), int(np.sum(seconds < model_s - 0.005))
        if longer or shorter:
            log(f"note: clips are {seconds.min():.2f} to {seconds.max():.2f} s long; the model takes {model_s:g} s of each "
                f"(model.clip_seconds): the rule, in training and when served, is that a longer clip is cut to its first "
                f"{model_s:g} s ({longer} here) and a shorter one zero-padded ({shorter} here)")
    elif seconds.min() != seconds.max():
        log(f"note: clips are {seconds.min():.2f} to {seconds.max():.2f} s long; the model scores any length from "
            f"{features.min_duration_s:.2f} s by its patches of {features.patch_frames} frames (the mean over them)")
    domains = Counter(c.domain for c in screening.usable)
    if any(c.scheme == "folders" for c in screening.usable):
        named = "from source/ and target/ folders" if domains.get("target") else "every clip is source: no target/ folder"
        log(f"domains: {domains.get('source', 0)} source, {domains.get('target', 0)} target ({named})")
    return screening.usable


@dataclass
class TrainResult:
    version_dir: Path
    run_dir: Path
    metadata: ModelMetadata


def train(config: TrainConfig, log=print, strict: bool = False) -> TrainResult:
    """Train, threshold, evaluate and export one model as ``config`` says.

    ``config.data_dir`` is a DCASE machine-type folder or any folder of one machine
    type's normal clips (:func:`asd.data.training_clips`); clips that cannot be used are
    listed and skipped, or refused with ``strict``. Nothing is written under
    ``models_dir`` unless the whole version is (it is written aside, then renamed).

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
        Too few clips, a detector TF Serving cannot serve, or settings that do not fit together.
    """
    started = time.monotonic()
    features = config.feature_config()
    detector = make_detector(config.detector, features, config.model, config.training, config.seed)
    if not isinstance(detector, ServableDetector):
        raise ValueError(f"detector {config.detector!r} runs in scikit-learn, not in a TensorFlow graph; "
                         "TF Serving cannot serve it (use asd benchmark to compare it)")
    model_dir = config.models_dir / config.name
    version = config.version or next_version(model_dir)
    version_dir = model_dir / str(version)
    if version_dir.exists():
        raise FileExistsError(f"{version_dir} exists; model versions are never overwritten (set version=...)")
    clips = [c for c in training_clips(config.data_dir) if c.label != "anomaly"]
    if config.training.max_train_clips:
        order = np.random.default_rng(config.seed).permutation(len(clips))[: config.training.max_train_clips]
        clips = [clips[i] for i in sorted(order)]
    n_found = len(clips)
    clips = report_screening(screen_clips(clips, features), n_found, config.data_dir, detector, strict, log)
    machine_type = config.machine_type or clips[0].machine_type or config.name
    test_dir = labelled_test_dir(config.data_dir) if config.evaluate else None
    if test_dir is not None:
        list_clips(config.data_dir, split="test")  # unlabelled test clips refused now, not after training

    log(f"{machine_type}: computing log-mel features of {len(clips)} normal training clips ...")
    train_set = load_clipset(clips, features)
    run_dir = config.runs_dir / config.name / f"{datetime.now():%Y%m%d-%H%M%S}-v{version}"
    if test_dir is not None and detector.epoch_evaluation:
        # Labelled test clips, scored at every epoch end into TensorBoard (asd.tensorboard_logging).
        test_clips = [c for c in list_clips(config.data_dir, split="test") if c.label is not None]
        log(f"computing log-mel features of {len(test_clips)} labelled test clips for per-epoch evaluation ...")
        detector.monitor_clips = load_clipset(test_clips, features)
    log(f"training {config.detector}: {detector.description}")
    from .detectors.multispec import deterministic_ops

    with deterministic_ops():  # same config and seed, same weights (on CPU)
        detector.fit(train_set, run_dir=run_dir, log=log)
    metadata = export_fitted(
        detector, train_set, name=config.name, version_dir=version_dir, machine_type=machine_type,
        data_dir=config.data_dir, settings=config.model_dump(mode="json"), threshold_settings=config.threshold,
        evaluate=config.evaluate, run_dir=run_dir, started=started, log=log,
    )
    return TrainResult(version_dir=version_dir, run_dir=run_dir, metadata=metadata)


def labelled_test_dir(data_dir: str | Path) -> Path | None:
    """``data_dir/test`` when it exists (labelled by DCASE names or by ``normal/`` and
    ``anomaly/`` folders: :func:`asd.data.list_clips`), else None."""
    test = Path(data_dir) / "test"
    return test if test.is_dir() else None


def portable_path(path: str | Path) -> str:
    """``path`` as the metadata records it: relative to the working directory (the
    repository, where ``asd`` runs), so a shipped model does not carry the absolute paths
    of the machine that trained it (``/home/me/data/...`` becomes ``../data/...``)."""
    return os.path.relpath(path) if Path(path).is_absolute() else str(path)


def export_fitted(
    detector: ServableDetector,
    train_set,
    *,
    name: str,
    version_dir: Path,
    machine_type: str,
    data_dir: Path,
    settings: dict,
    threshold_settings: ThresholdSettings,
    evaluate: bool,
    run_dir: Path,
    started: float | None = None,
    log=print,
) -> ModelMetadata:
    """Threshold, evaluate and export a fitted servable detector to ``version_dir``
    (``<models>/<name>/<version>/``); used by ``asd train`` and ``asd benchmark``.

    The threshold is the gamma fit of the training clips' scores, computed by the very
    function that is exported; evaluation (when ``evaluate`` and ``data_dir/test``
    exists) scores the test clips through it too and stores the figures in the metadata.
    What the app explains a clip with is fitted on the training clips too
    (:mod:`asd.explanations`): a frame-level model's per-frame threshold (metadata
    ``frame_threshold``; one more pass of the training clips through the function), a
    whole-clip model's band profiles (``assets.extra/band_profiles.npz``).

    Raises
    ------
    FileExistsError
        ``version_dir`` exists.
    """
    started = time.monotonic() if started is None else started
    version = int(version_dir.name)
    serve = detector.serving_function()
    familiarity, outputs = None, list(detector.outputs)
    if detector.input_name == WAVEFORM_INPUT_NAME:  # the unfamiliar verdict (asd.familiarity)
        sample_rate = detector.features.sample_rate
        familiarity = FamiliarityReference.fit(detector.waveforms(train_set), sample_rate)
        serve = with_unfamiliarity(serve, familiarity, sample_rate, serve.input_signature[0])
        outputs.append(UNFAMILIARITY_OUTPUT)
        log(f"unfamiliar threshold {familiarity.threshold:.4f} ({UNFAMILIAR_RULE})")
    train_scores = detector.training_scores(train_set)  # through the served function (or leave-one-out)
    threshold = fit_gamma_threshold(train_scores, threshold_settings.quantile, threshold_settings.margin)
    log(f"decision threshold {threshold.value:.4f} (gamma fit of {threshold.n_scores} training clips, "
        f"q={threshold.quantile}, margin {threshold.margin:g})")
    clips = train_set.clips
    info = detector.info
    tested = evaluate and labelled_test_dir(data_dir) is not None
    if not tested:
        log(f"note: {THRESHOLD_FROM_TRAINING_ONLY}" + (" (evaluate: false)" if not evaluate else
            f"; {data_dir} has no test/ folder") + ": asd evaluate on labelled clips measures its false alarms and recall")
    metadata = ModelMetadata(
        name=name,
        version=version,
        machine_type=machine_type,
        detector=detector.kind,
        features=detector.features,
        threshold={
            **threshold.to_dict(),
            "fitted_on": "all normal training clips (DCASE 2021+ baseline practice)"
            + ("; leave-one-out scores" if detector.leave_one_out_training_scores else ""),
            "margin_chosen_on": threshold_settings.margin_chosen_on,
            # whether labelled clips measured it (evaluation); without, the training clips alone speak for it
            "labelled_test_set": portable_path(labelled_test_dir(data_dir)) if tested else None,
            **({} if tested else {"note": THRESHOLD_FROM_TRAINING_ONLY}),
        },
        normalisation=detector.normalisation(),
        outputs=outputs,
        unfamiliar=familiarity.metadata() if familiarity else None,
        score_unit=detector.score_unit,
        input=detector.input_name,
        input_samples=detector.input_samples,
        training={
            "config": {k: portable_path(v) if k in ("data_dir", "models_dir", "runs_dir") else v
                       for k, v in settings.items()},
            "seed": detector.seed,
            "data_dir": portable_path(data_dir),
            "n_train_clips": info.get("n_fit_clips", len(clips)),
            "n_validation_clips": info.get("n_validation_clips", 0),
            "n_clips_by_domain": {d: sum(c.domain == d for c in clips) for d in ("source", "target")},
            **{k: v for k, v in info.items() if k not in ("n_fit_clips", "n_validation_clips")},
            "train_score_mean": float(train_scores.mean()),
            "trained_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "duration_s": None,
            "git_commit": git("rev-parse", "HEAD"),
            "versions": {
                "asd": __version__,
                "tensorflow": tf.__version__,
                "keras": keras.__version__,
                "numpy": np.__version__,
                "librosa": __import__("librosa").__version__,
                "python": platform.python_version(),
            },
            "tensorboard_run": portable_path(run_dir),
        },
    )
    # What the app explains a clip with (asd.explanations): frame-level models' per-frame
    # threshold goes into the metadata (and so the metadata signature); whole-clip models'
    # band profiles into assets.extra once the version directory is written.
    band_profiles = None
    if detector.input_name == WAVEFORM_INPUT_NAME:
        band_profiles = BandProfiles.fit([c.path.name for c in clips], train_set.logmels)
    else:
        served = Detector(FunctionBackend(serve, metadata), detector.features)
        metadata.frame_threshold = {
            **fit_frame_threshold(training_frame_errors(served, [c.path.name for c in clips], train_set.logmels)),
            "fitted_on": "all normal training clips, through the exported function",
        }
        log(f"frame threshold {metadata.frame_threshold_value:.4f} ({FRAME_RULE})")
    if tested:
        log("evaluating on the labelled test clips ...")
        metrics, rows = evaluate_directory(Detector(FunctionBackend(serve, metadata), detector.features), data_dir)
        metadata.evaluation = metrics
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "evaluation.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_scores_csv(rows, run_dir / "anomaly_scores.csv")
        log(
            "AUC-source {auc_source:.4f}  AUC-target {auc_target:.4f}  pAUC {pauc:.4f}  official {official_score:.4f}".format(
                **metrics
            )
        )
    metadata.training["duration_s"] = round(time.monotonic() - started, 1)
    # written aside (a name TF Serving and asd.layout do not take for a version), then
    # renamed: an interrupted export leaves no half-written version behind
    if version_dir.exists():
        raise FileExistsError(f"{version_dir} exists; model versions are never overwritten (choose another version)")
    partial = version_dir.parent / f".{version_dir.name}.partial-{os.getpid()}"
    try:
        export_savedmodel(detector.trackable(), serve, metadata, partial)
        if band_profiles is not None:
            band_profiles.save(partial)
        partial.rename(version_dir)
    finally:
        if partial.exists():
            shutil.rmtree(partial, ignore_errors=True)
    log(f"exported {version_dir}")
    return metadata

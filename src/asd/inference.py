"""One clip from audio to verdict, through any backend.

The CLI, the app and evaluation all score clips with :class:`Detector`, so they share
the feature path (:func:`asd.features.clip_patches`), the score and the threshold.
"""

from __future__ import annotations

import itertools
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import BinaryIO

import numpy as np

from .audio import AudioClip, AudioError, load_audio
from .features import (
    ClipTooShortError,
    FeatureConfig,
    clip_patches,
    feature_threads,
    fit_waveform,
    patch_starts,
    patches_to_frames,
)
from .metadata import WAVEFORM_INPUT_NAME, ModelMetadata
from .scoring import clip_score, verdict
from .serving import Prediction, ServingError


# One length rule for the CLI and the app: longer clips are cut to their first minute (and
# the user told). DCASE clips are 10-12 s; the shipped model scores the first 12 s.
MAX_CLIP_SECONDS = 60.0


def _row_limited(batch: list, max_rows: int) -> Iterator[list]:
    """Consecutive runs of ``batch`` whose inputs hold at most ``max_rows`` rows each (a
    single larger clip forms its own run)."""
    chunk, rows = [], 0
    for item in batch:
        if chunk and rows + len(item.inputs) > max_rows:
            yield chunk
            chunk, rows = [], 0
        chunk.append(item)
        rows += len(item.inputs)
    if chunk:
        yield chunk


def clip_embedding(rows: np.ndarray) -> np.ndarray:
    """A clip's embedding ``(dim,)`` float32 from its rows of the ``embedding`` output
    ``(n_rows, dim)``: a waveform model's one row as it is (whichever request it came
    in); several rows (a model whose clip is several inputs) their mean, L2-normalised
    again so that it stays a unit vector like each row.

    Raises
    ------
    asd.serving.ServingError
        No rows, or a non-finite value (the model or its input is broken).
    """
    rows = np.asarray(rows, dtype=np.float32)
    if rows.ndim != 2 or not len(rows) or not np.isfinite(rows).all():
        raise ServingError(f"the model returned an unusable clip embedding (shape {rows.shape}, non-finite values "
                           "or no rows)")
    if len(rows) == 1:
        return rows[0].copy()
    mean = rows.mean(axis=0, dtype=np.float64)
    norm = np.linalg.norm(mean)
    return (mean / norm if norm > 0 else mean).astype(np.float32)


@dataclass
class ClipResult:
    """A scored clip, with what explains the score.

    Attributes
    ----------
    name : str
    score : float
        Anomaly score: mean patch reconstruction error (standardised log-mel units).
    threshold : float
        The model's decision threshold (same units).
    verdict : str
        ``"normal"``, ``"anomalous"``, or ``"unfamiliar"`` (unlike every training clip: the
        score says nothing; :mod:`asd.familiarity`).
    logmel : np.ndarray [shape=(n_mels, n_frames), dtype=float32]
        The clip's log-mel spectrogram (dB); ``(0, n_frames)`` when a waveform model's
        was skipped (``display=False``).
    reconstruction : np.ndarray [shape=(n_mels, n_frames), dtype=float32] or None
        An autoencoder's reconstruction (dB), overlap-averaged over patches; None for
        detectors that do not reconstruct.
    frame_error : np.ndarray [shape=(n_frames,), dtype=float32]
        Score of each frame, overlap-averaged over patches (autoencoders: reconstruction
        error); for waveform-input models the clip's score on every frame.
    patch_error : np.ndarray [shape=(n_patches,), dtype=float32]
    frame_seconds : float
        Seconds between frames, for time axes.
    notes : list of str
        What loading changed (downmix, resampling, cutting).
    backend_seconds : float
        Wall time of the model request (the backend's ``predict``: for a server, the
        round trip), in seconds.
    unfamiliarity : float or None
        Distance to the nearest training clip (:mod:`asd.familiarity`); None for models
        without it.
    unfamiliar_threshold : float or None
        Above it the verdict is ``"unfamiliar"``.
    embedding : np.ndarray [shape=(dim,), dtype=float32] or None
        The clip's embedding from the model's ``embedding`` output (reference-bank models:
        L2-normalised; the score is its cosine distance to the nearest reference clip);
        None for models without that output.
    """

    name: str
    score: float
    threshold: float
    verdict: str
    logmel: np.ndarray
    reconstruction: np.ndarray | None
    frame_error: np.ndarray
    patch_error: np.ndarray
    frame_seconds: float
    notes: list[str] = field(default_factory=list)
    backend_seconds: float = 0.0
    unfamiliarity: float | None = None
    unfamiliar_threshold: float | None = None
    embedding: np.ndarray | None = None

    @property
    def margin(self) -> float:
        """``score - threshold``: positive means anomalous."""
        return self.score - self.threshold

    @property
    def relative_score(self) -> float | None:
        """``score / threshold``, the score as a multiple of the decision threshold (1.0 is
        the threshold, above it anomalous), so clips and model versions whose scores come
        in different units compare. None when the threshold is not positive (a score that
        may be negative, such as a log-likelihood, has no meaningful ratio).
        """
        return self.score / self.threshold if self.threshold > 0 else None

    @property
    def frame_times_s(self) -> np.ndarray:
        """Start time of each frame in seconds, shape ``(n_frames,)``."""
        return np.arange(len(self.frame_error)) * self.frame_seconds


def model_input(
    samples: np.ndarray, metadata: ModelMetadata, features: FeatureConfig, display: bool = True
) -> tuple[np.ndarray, np.ndarray, str | None]:
    """What a model's ``serving_default`` takes from a clip, as every client sends it.

    Parameters
    ----------
    samples : np.ndarray [shape=(n_samples,), dtype=float32]
        Mono samples at ``features.sample_rate``.
    metadata : ModelMetadata
        Names the input: ``logmel_patches`` or ``waveform`` (with ``input_samples``).
    features : FeatureConfig
    display : bool
        Compute the log-mel spectrogram even where the model does not take it (waveform
        models), for the app's plots. ``asd score`` and evaluation skip it: about 2 ms a
        clip (benchmarks/speed).

    Returns
    -------
    logmel : np.ndarray [shape=(n_mels, n_frames), dtype=float32]
        The clip's log-mel spectrogram (dB), for display and frame alignment; shape
        ``(0, n_frames)`` when a waveform model's was skipped (``display=False``).
    inputs : np.ndarray [dtype=float32]
        Log-mel patches ``(n_patches, n_mels, patch_frames)`` dB, or one waveform
        ``(1, input_samples)``.
    note : str or None
        What fitting the waveform to the model's length did, for the user.

    Raises
    ------
    asd.features.ClipTooShortError
        Shorter than one patch.
    """
    if metadata.input == WAVEFORM_INPUT_NAME:
        if display:
            logmel, _ = clip_patches(samples, features)
        else:  # the frame count alone, and the same too-short rule as every clip
            n_frames = 1 + len(samples) // features.hop_length  # centred frames, as log_mel_spectrogram's
            patch_starts(n_frames, features)
            logmel = np.zeros((0, n_frames), np.float32)
        waveform, note = fit_waveform(samples, metadata.input_samples, features.sample_rate)
        return logmel, waveform[None, :], note
    logmel, patches = clip_patches(samples, features)
    return logmel, patches, None


@dataclass
class ClipFeatures:
    """A clip's features, ready for the model (see :meth:`Detector.prepare`).

    Attributes
    ----------
    name : str
    logmel : np.ndarray [shape=(n_mels, n_frames), dtype=float32]
        Log-mel spectrogram (dB), for display and frame alignment.
    inputs : np.ndarray [dtype=float32]
        The model's input: log-mel patches ``(n_patches, n_mels, patch_frames)`` dB, or
        one waveform ``(1, input_samples)``.
    notes : list of str
        What loading and fitting changed, for the user.
    """

    name: str
    logmel: np.ndarray
    inputs: np.ndarray
    notes: list[str] = field(default_factory=list)


class Detector:
    """Scores clips with a backend's model, after checking the model fits this code.

    Parameters
    ----------
    backend : asd.serving.Backend
    features : FeatureConfig, optional
        Features this code computes; default the package's :class:`FeatureConfig`.
    max_request_rows : int, optional
        Input rows one model request may hold; a clip with more is sent in several.
        Default: TF Serving's ``max_batch_size`` from the batching config the deployment
        uses (:func:`asd.serving.batching.max_request_rows`), or no limit without one.

    Raises
    ------
    asd.metadata.ModelMismatchError
        If the model was trained on other feature settings.
    ValueError
        ``ASD_BATCHING_CONFIG`` names a file without ``max_batch_size``.
    FileNotFoundError
        ``ASD_BATCHING_CONFIG`` names a missing file.
    """

    def __init__(self, backend, features: FeatureConfig | None = None, max_request_rows: int | None = None):
        from .serving.batching import max_request_rows as configured_rows

        self.backend = backend
        self.max_request_rows = max_request_rows or configured_rows()
        self.features = features or FeatureConfig()
        self.metadata = backend.metadata
        self.metadata.check_features(self.features)
        self.threshold = self.metadata.threshold_value
        self.unfamiliar_threshold = self.metadata.unfamiliar_threshold

    def prepare(self, clip: AudioClip, display: bool = True) -> "ClipFeatures":
        """Compute what the model takes from a decoded clip (no model call; cacheable);
        ``display=False`` skips a waveform model's log-mel (:func:`model_input`).

        Raises
        ------
        asd.features.ClipTooShortError
            Shorter than one patch.
        """
        logmel, inputs, note = model_input(clip.samples, self.metadata, self.features, display)
        return ClipFeatures(name=clip.name, logmel=logmel, inputs=inputs, notes=list(clip.notes) + ([note] if note else []))

    def score_features(self, prepared: "ClipFeatures") -> ClipResult:
        """Score prepared features with the backend's model.

        Raises
        ------
        asd.serving.ServingError
            The backend failed.
        """
        return self.score_batch([prepared])[0]

    def score_batch(self, batch: list["ClipFeatures"]) -> list[ClipResult]:
        """Score several clips' features with one model request (their inputs stacked;
        several requests when they hold more than :attr:`max_request_rows` rows).

        One request instead of one per clip pays the runtime's per-call cost once:
        measured on 2 cores, 8 waveforms through the shipped spectrum model took 1.9 ms
        a clip instead of 4.0 ms. Log-mel models gain little, their time being in the
        convolutions.

        Returns
        -------
        list of ClipResult
            One per clip, in order; each ``backend_seconds`` is the whole request's.

        Raises
        ------
        asd.serving.ServingError
            The backend failed.
        """
        if not batch:
            return []
        inputs = batch[0].inputs if len(batch) == 1 else np.concatenate([p.inputs for p in batch])
        started = time.perf_counter()
        prediction = self._predict(inputs)
        backend_seconds = time.perf_counter() - started
        ends = np.cumsum([len(p.inputs) for p in batch])
        results = []
        for prepared, start, end in zip(batch, np.concatenate([[0], ends[:-1]]), ends):
            rows = slice(int(start), int(end))
            reconstruction = None if prediction.reconstruction is None else prediction.reconstruction[rows]
            unfamiliarity = None if prediction.unfamiliarity is None else prediction.unfamiliarity[rows]
            embedding = None if prediction.embedding is None else clip_embedding(prediction.embedding[rows])
            results.append(
                self._result(prepared, prediction.patch_error[rows], prediction.frame_error[rows], reconstruction,
                             backend_seconds, unfamiliarity, embedding)
            )
        return results

    def _predict(self, inputs: np.ndarray) -> Prediction:
        """The backend's prediction, in requests of at most :attr:`max_request_rows` rows
        (TF Serving refuses larger ones), joined back in order."""
        limit = self.max_request_rows
        if limit is None or len(inputs) <= limit:
            return self.backend.predict(inputs)
        parts = [self.backend.predict(inputs[i : i + limit]) for i in range(0, len(inputs), limit)]
        return Prediction(**{
            f.name: None if getattr(parts[0], f.name) is None else np.concatenate([getattr(p, f.name) for p in parts])
            for f in fields(Prediction)
        })

    def _result(self, prepared, patch_error, frame_error, reconstruction, backend_seconds, unfamiliarity,
                embedding=None) -> ClipResult:
        """A clip's result from its rows of the model's outputs."""
        n_frames = prepared.logmel.shape[1]
        try:
            score = clip_score(patch_error)
        except ValueError:  # its check: TF Serving sends NaN/Infinity as such, never a verdict
            raise ServingError(f"the model returned a non-finite anomaly score for {prepared.name}; "
                               "the model or its input is broken, so no verdict is given") from None
        # a waveform model's one row per clip; None when the model has no such output
        unfamiliarity = None if unfamiliarity is None else float(np.max(unfamiliarity))
        if self.metadata.input == WAVEFORM_INPUT_NAME:
            frames = np.full(n_frames, score, np.float32)  # one score for the whole clip
        else:
            frames = patches_to_frames(frame_error, n_frames, self.features)
        return ClipResult(
            name=prepared.name,
            score=score,
            threshold=self.threshold,
            verdict=verdict(score, self.threshold, unfamiliarity, self.unfamiliar_threshold),
            logmel=prepared.logmel,
            reconstruction=None if reconstruction is None else patches_to_frames(reconstruction, n_frames, self.features),
            frame_error=frames,
            patch_error=patch_error,
            frame_seconds=self.features.frame_seconds,
            notes=list(prepared.notes),
            backend_seconds=backend_seconds,
            unfamiliarity=unfamiliarity,
            unfamiliar_threshold=self.unfamiliar_threshold,
            embedding=embedding,
        )

    def score_clip(self, clip: AudioClip) -> ClipResult:
        """Score a decoded clip (:meth:`prepare`, then :meth:`score_features`).

        Raises
        ------
        asd.features.ClipTooShortError
            Shorter than one patch.
        asd.serving.ServingError
            The backend failed.
        """
        return self.score_features(self.prepare(clip))

    def score_file(self, source: str | Path | bytes | BinaryIO, name: str | None = None,
                   channel: int | None = None, display: bool = True) -> ClipResult:
        """Load (see :func:`asd.audio.load_audio`; ``channel`` picks one of a multi-channel
        file's, 1 = first; clips longer than :data:`MAX_CLIP_SECONDS` are cut, noted) and
        score one file; ``display=False`` as in :meth:`prepare`.

        Raises
        ------
        asd.audio.AudioError, asd.features.ClipTooShortError, asd.serving.ServingError
        """
        clip = load_audio(source, self.features.sample_rate, name=name, channel=channel, max_seconds=MAX_CLIP_SECONDS)
        return self.score_features(self.prepare(clip, display))

    def score_files(
        self, paths: Iterable[str | Path], workers: int = 2, batch_size: int = 8, max_rows: int | None = None,
        channel: int | None = None, display: bool = True,
    ) -> Iterator[tuple[str | Path, ClipResult | Exception]]:
        """Score many files, in order: decoding and log-mel run ahead in threads, and the
        clips ready when the model is free go to it in one request.

        While the model scores some clips, ``workers`` threads decode the next ones and
        compute their log-mel (libsndfile, numpy's FFT and BLAS release the GIL), so on
        2 cores the feature work overlaps the model's instead of adding to it; and the
        model takes up to ``batch_size`` clips per request (see :meth:`score_batch`).

        Parameters
        ----------
        paths : iterable of str or Path
            Files, each also its name in results and messages.
        workers : int
            Threads for decoding and features (default 2: the cores of a small box).
        batch_size : int
            Clips per model request at most; also how far the threads run ahead (two
            batches, ~1 MB of features a clip).
        max_rows : int, optional
            Input rows (patches, or waveforms) per request at most: clips are not
            batched beyond it (a clip larger on its own is split, :meth:`score_batch`).
            Default :attr:`max_request_rows`, else 512.
        channel : int, optional
            Score only this channel (1 = first) of multi-channel files; default their
            average (:func:`asd.audio.load_audio`).
        display : bool
            Keep each clip's log-mel spectrogram for plots; ``False`` skips it where the
            model does not take it (``asd score``).

        Yields
        ------
        (path, ClipResult or Exception)
            In the order of ``paths``. A file that cannot be used yields its
            :class:`~asd.audio.AudioError`, :class:`~asd.features.ClipTooShortError` or
            ``OSError`` (missing, a directory, unreadable) instead of a result.

        Raises
        ------
        asd.serving.ServingError
            The backend failed (every later clip would fail the same way).
        """

        def prepare_file(path):
            return self.prepare(load_audio(Path(path), self.features.sample_rate, name=str(path), channel=channel,
                                           max_seconds=MAX_CLIP_SECONDS), display)

        batch_size = max(1, batch_size)
        max_rows = max_rows or self.max_request_rows or 512  # 512: one clip at a time stays cheap in-process
        paths = iter(paths)
        with feature_threads(workers) as pool:
            pending = deque((p, pool.submit(prepare_file, p)) for p in itertools.islice(paths, 2 * batch_size))
            while pending:
                # the next clip (waiting for it), then those behind it already prepared
                ready = [pending.popleft()]
                while pending and len(ready) < batch_size and pending[0][1].done():
                    ready.append(pending.popleft())
                pending.extend((p, pool.submit(prepare_file, p)) for p in itertools.islice(paths, len(ready)))
                outcomes: list = []
                for path, future in ready:
                    try:
                        outcomes.append(future.result())
                    except (AudioError, ClipTooShortError, OSError) as exc:
                        outcomes.append(exc)
                prepared = [o for o in outcomes if isinstance(o, ClipFeatures)]
                scored = iter([r for chunk in _row_limited(prepared, max_rows) for r in self.score_batch(chunk)])
                for (path, _), outcome in zip(ready, outcomes):
                    yield path, next(scored) if isinstance(outcome, ClipFeatures) else outcome

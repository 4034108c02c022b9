"""Log-mel spectrograms and the fixed-size patches the model sees.

One function, :func:`clip_patches`, turns samples into model input; training,
evaluation, the CLI and the app all call it, with one :class:`FeatureConfig`, so their
features cannot differ. The defaults are the DCASE 2020-2024 Task 2 baselines' settings
(n_fft 1024, hop 512, n_mels 128, power 2.0, dB), at the datasets' 16 kHz.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, fields

import numpy as np


class ClipTooShortError(ValueError):
    """A clip has fewer frames than one model patch."""


@dataclass(frozen=True)
class FeatureConfig:
    """Every setting that decides what the model sees.

    Attributes
    ----------
    sample_rate : int
        Hz; clips at other rates are resampled to it (DCASE data: 16000).
    n_fft : int
        FFT size in samples (1024 = 64 ms at 16 kHz; DCASE baseline).
    hop_length : int
        Samples between frames (512 = 32 ms at 16 kHz; DCASE baseline).
    n_mels : int
        Mel bands (128; DCASE baseline).
    power : float
        Exponent of the magnitude spectrogram (2.0 = power; DCASE baseline).
    fmin, fmax : float
        Mel filter bank range in Hz; ``fmax`` 0 means ``sample_rate / 2``.
    db_ref, db_amin : float
        ``librosa.power_to_db`` reference and floor: dB = 10 log10(max(S, amin) / ref).
        (The DCASE baseline's 20/power * log10(S + eps) equals this up to the floor.)
    patch_frames : int
        Frames per model patch (32 frames = 1.02 s).
    patch_hop : int
        Frames between consecutive patches (8 = 256 ms).
    """

    sample_rate: int = 16000
    n_fft: int = 1024
    hop_length: int = 512
    n_mels: int = 128
    power: float = 2.0
    fmin: float = 0.0
    fmax: float = 0.0
    db_ref: float = 1.0
    db_amin: float = 1e-10
    patch_frames: int = 32
    patch_hop: int = 8

    def __post_init__(self) -> None:
        for name in ("sample_rate", "n_fft", "hop_length", "n_mels", "patch_frames", "patch_hop"):
            if getattr(self, name) <= 0:
                raise ValueError(f"features.{name} must be positive, got {getattr(self, name)}")
        if self.fmax and not self.fmin < self.fmax <= self.sample_rate / 2:
            raise ValueError(f"features.fmax must lie in (fmin, sample_rate/2], got {self.fmax}")

    @property
    def frame_seconds(self) -> float:
        """Seconds between frames (hop_length / sample_rate)."""
        return self.hop_length / self.sample_rate

    @property
    def mel_band_hz(self) -> np.ndarray:
        """Centre frequency of each mel band in Hz, shape ``(n_mels,)``: the filter
        bank's peaks, as ``librosa.filters.mel`` places them (``librosa.mel_frequencies``
        over ``n_mels + 2`` edges), for frequency axes."""
        import librosa

        edges = librosa.mel_frequencies(self.n_mels + 2, fmin=self.fmin, fmax=self.fmax or self.sample_rate / 2)
        return edges[1:-1]

    @property
    def min_duration_s(self) -> float:
        """Shortest clip (seconds) that yields one patch."""
        return (self.patch_frames - 1) * self.frame_seconds

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "FeatureConfig":
        """Build from a mapping; unknown keys raise ValueError naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown feature settings: {', '.join(unknown)}")
        return cls(**values)

    def differences(self, other: "FeatureConfig") -> list[str]:
        """Settings that differ, as ``"name: mine != theirs"`` lines (empty if equal)."""
        return [
            f"{f.name}: {getattr(self, f.name)!r} != {getattr(other, f.name)!r}"
            for f in fields(self)
            if getattr(self, f.name) != getattr(other, f.name)
        ]


def log_mel_spectrogram(samples: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Log-mel spectrogram in dB.

    Parameters
    ----------
    samples : np.ndarray [shape=(n_samples,), dtype=float32]
        Mono audio at ``config.sample_rate``.
    config : FeatureConfig

    Returns
    -------
    np.ndarray [shape=(n_mels, n_frames), dtype=float32]
        dB values; ``n_frames = 1 + n_samples // hop_length`` (centred frames, librosa's
        default, as in the DCASE baselines). A 12 s clip at 16 kHz gives 376 frames.
    """
    import librosa  # deferred: importing librosa costs ~1 s, paid only when used

    # librosa.feature.melspectrogram step by step (same STFT, filter bank and dB), with
    # the filter bank built once per setting instead of on every call (~0.8 ms of the
    # ~4 ms a 12 s clip takes), |X|^2 as re^2 + im^2 (no square root), and the bank as a
    # sparse matrix (1,009 of its 65,664 weights are non-zero): its product takes 0.23 ms
    # instead of BLAS's 0.4 ms, sums in one fixed order, so training (clips in threads)
    # and the app get bit-identical features whatever BLAS's thread count, and leaves
    # no BLAS threads to oversubscribe the cores when clips are prepared in parallel.
    stft = librosa.stft(samples, n_fft=config.n_fft, hop_length=config.hop_length)
    if config.power == 2.0:
        spectrum = np.square(stft.real) + np.square(stft.imag)
    else:
        spectrum = np.abs(stft) ** config.power
    mel = mel_filter_bank(config) @ spectrum
    db = librosa.power_to_db(mel, ref=config.db_ref, amin=config.db_amin, top_db=None)
    return db.astype(np.float32, copy=False)


@functools.lru_cache(maxsize=8)
def mel_filter_bank(config: FeatureConfig):
    """The mel filter bank of ``config``, built once per setting, as a sparse matrix.

    Returns
    -------
    scipy.sparse.csr_array [shape=(n_mels, 1 + n_fft // 2), dtype=float32]
        ``librosa.filters.mel`` (Slaney mel scale and area normalisation, librosa's
        defaults, as ``librosa.feature.melspectrogram`` uses); shared between calls and
        threads, so not to be modified.
    """
    import librosa
    from scipy import sparse

    return sparse.csr_array(librosa.filters.mel(
        sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels, fmin=config.fmin,
        fmax=config.fmax or config.sample_rate / 2,
    ))


def patch_starts(n_frames: int, config: FeatureConfig) -> np.ndarray:
    """First frame of each patch: every ``patch_hop`` frames, plus one patch flush with
    the end so that the last frames are always covered.

    Returns
    -------
    np.ndarray [shape=(n_patches,), dtype=int64]

    Raises
    ------
    ClipTooShortError
        If ``n_frames < config.patch_frames``.
    """
    if n_frames < config.patch_frames:
        raise ClipTooShortError(
            f"clip too short: {n_frames} frames ({(n_frames - 1) * config.frame_seconds:.2f} s); "
            f"the model needs at least {config.patch_frames} frames ({config.min_duration_s:.2f} s)"
        )
    last = n_frames - config.patch_frames
    starts = np.arange(0, last + 1, config.patch_hop, dtype=np.int64)
    if starts[-1] != last:
        starts = np.append(starts, last)
    return starts


def to_patches(logmel: np.ndarray, config: FeatureConfig) -> np.ndarray:
    """Cut a log-mel spectrogram into overlapping fixed-size patches.

    Parameters
    ----------
    logmel : np.ndarray [shape=(n_mels, n_frames)]

    Returns
    -------
    np.ndarray [shape=(n_patches, n_mels, patch_frames), dtype=float32]
        A 376-frame clip with the default 32-frame patches every 8 frames gives 44.

    Raises
    ------
    ClipTooShortError
        If the clip has fewer frames than one patch.
    """
    starts = patch_starts(logmel.shape[1], config)
    index = starts[:, None] + np.arange(config.patch_frames)[None, :]
    return np.ascontiguousarray(logmel[:, index].transpose(1, 0, 2), dtype=np.float32)


def clip_patches(samples: np.ndarray, config: FeatureConfig) -> tuple[np.ndarray, np.ndarray]:
    """Samples to ``(log-mel, patches)``: the single feature path of the whole system.

    Returns
    -------
    logmel : np.ndarray [shape=(n_mels, n_frames), dtype=float32]
    patches : np.ndarray [shape=(n_patches, n_mels, patch_frames), dtype=float32]

    Raises
    ------
    ClipTooShortError
    """
    logmel = log_mel_spectrogram(samples, config)
    return logmel, to_patches(logmel, config)


def patches_to_frames(values: np.ndarray, n_frames: int, config: FeatureConfig) -> np.ndarray:
    """Average per-patch values back onto the clip's frames (overlap-average).

    Parameters
    ----------
    values : np.ndarray [shape=(n_patches, patch_frames) or (n_patches, n_mels, patch_frames)]
        E.g. the model's per-frame error of each patch, or its reconstruction.
    n_frames : int
        Frames of the clip the patches came from.

    Returns
    -------
    np.ndarray [shape=(n_frames,) or (n_mels, n_frames), dtype=float32]
        Each frame's value averaged over the patches that cover it.
    """
    starts = patch_starts(n_frames, config)
    values = np.asarray(values, dtype=np.float64)
    total = np.zeros(values.shape[1:-1] + (n_frames,))
    count = np.zeros(n_frames)
    for start, value in zip(starts, values):
        total[..., start : start + config.patch_frames] += value
        count[start : start + config.patch_frames] += 1
    return (total / count).astype(np.float32)


def fit_waveform(samples: np.ndarray, n_samples: int, sample_rate: int) -> tuple[np.ndarray, str | None]:
    """Cut or zero-pad a clip's samples to the ``n_samples`` a waveform-input model takes
    (training and serving alike).

    Returns
    -------
    waveform : np.ndarray [shape=(n_samples,), dtype=float32]
    note : str or None
        What was done, for the user (None when the length was right).
    """
    waveform = np.zeros(n_samples, np.float32)
    n = min(n_samples, len(samples))
    waveform[:n] = samples[:n]
    if len(samples) == n_samples:
        return waveform, None
    seconds = n_samples / sample_rate
    if len(samples) > n_samples:
        return waveform, f"the model scores the first {seconds:g} s; the rest of the clip was not used"
    return waveform, f"the clip is {len(samples) / sample_rate:.2f} s long; zero-padded to the model's {seconds:g} s"


@contextlib.contextmanager
def feature_threads(workers: int = 2) -> Iterator[ThreadPoolExecutor]:
    """Threads for decoding clips and computing their log-mel in parallel.

    libsndfile, numpy's FFT and scipy's sparse product release the GIL, so on 2 cores
    two clips go at once; the features are the same, bit for bit, as one at a time.

    Yields
    ------
    concurrent.futures.ThreadPoolExecutor
        With ``max(1, workers)`` threads.
    """
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="asd-features") as pool:
        yield pool

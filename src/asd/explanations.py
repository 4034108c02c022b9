"""What explains a clip's verdict in the app, fitted on the training clips at export.

Two references travel with a model (numpy only: the app's image has no TensorFlow):

- **Per-frame threshold** (frame-level models, e.g. the convolutional autoencoder): the
  app marks the frames of a clip whose error is unusually high. The clip's decision
  threshold cannot serve: it bounds the *mean* error of a clip, and about half the
  frames of a normal clip lie above their own mean. So the frame threshold is fitted on
  the training clips' frames instead, as the :data:`FRAME_QUANTILE` quantile of their
  per-frame errors (the app's ``ClipResult.frame_error``: each frame's error averaged
  over the patches that cover it, through the served model). One training frame in 100
  lies above it, so a normal clip of 376 frames gets about 4 marks; the rule is the
  DCASE baselines' way of thresholding (a high quantile of normal data's scores), taken
  on frames, empirically, as there are 100,000s of them. Stored in the model's metadata
  as ``frame_threshold``; models exported before it have none and the app marks nothing.
- **Band profiles** (whole-clip models, one score per clip): each training clip's band
  profile (:func:`band_profile`, from the log-mel of :mod:`asd.features`, as the app
  displays it), stored as float16 with the clips' names in :data:`BAND_PROFILES_FILE`.
  The app compares a clip's profile with its nearest training clip's (RMS difference
  over bands) and marks the bands that differ most, where they differ by more than
  training clips differ from their own nearest neighbours (:data:`MARK_QUANTILE`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import find_peaks

from .features import to_patches
from .inference import ClipFeatures, Detector

FRAME_QUANTILE = 0.99
FRAME_RULE = (f"the {FRAME_QUANTILE:g} quantile of the training clips' per-frame errors (each frame's error "
              "averaged over the patches that cover it, through the served model)")
BAND_PROFILES_FILE = "assets.extra/band_profiles.npz"
# Marked bands: at most this many, peaks of |difference| at least this many bands apart
# (neighbouring mel bands overlap, so one difference spans several).
N_MARKED_BANDS, MIN_BAND_SEPARATION = 5, 4
# A band is marked only where the difference exceeds this quantile of the per-band
# differences between each training clip and its nearest other training clip: 9 in 10
# normal neighbours differ by less (0.93 dB for toycar v4's 805 clips).
MARK_QUANTILE = 0.9


def fit_frame_threshold(frame_errors: list[np.ndarray], quantile: float = FRAME_QUANTILE) -> dict:
    """The per-frame threshold of a frame-level model (module docstring).

    Parameters
    ----------
    frame_errors : list of np.ndarray [shape=(n_frames,)]
        Each normal training clip's per-frame errors (``ClipResult.frame_error``), in the
        model's score unit.
    quantile : float
        In (0, 1).

    Returns
    -------
    dict
        ``value`` (the threshold), ``quantile``, ``rule``, ``n_clips``, ``n_frames``:
        the metadata's ``frame_threshold``.

    Raises
    ------
    ValueError
        No frames, a non-finite error, or a quantile outside (0, 1).
    """
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"the frame quantile must lie in (0, 1), got {quantile}")
    frames = np.concatenate([np.asarray(f, np.float64).ravel() for f in frame_errors]) if frame_errors else np.empty(0)
    if frames.size == 0 or not np.isfinite(frames).all():
        raise ValueError("the frame threshold needs a non-empty set of finite per-frame errors")
    return {"value": float(np.quantile(frames, quantile)), "quantile": quantile, "rule": FRAME_RULE,
            "n_clips": len(frame_errors), "n_frames": int(frames.size)}


def training_frame_errors(detector: Detector, names: list[str], logmels: list[np.ndarray],
                          batch_size: int = 8) -> list[np.ndarray]:
    """Each training clip's per-frame errors as the app sees them (``ClipResult.frame_error``),
    through ``detector``'s model (in training: the function about to be exported).

    Parameters
    ----------
    detector : Detector
        Of a log-mel (frame-level) model.
    names : list of str
    logmels : list of np.ndarray [shape=(n_mels, n_frames)]
        The clips' log-mel spectrograms (dB), as :func:`asd.detectors.base.load_clipset` computes them.
    batch_size : int
        Clips per model request.

    Returns
    -------
    list of np.ndarray [shape=(n_frames,), dtype=float32]

    Raises
    ------
    asd.serving.ServingError
        The model failed.
    """
    prepared = [ClipFeatures(str(n), m, to_patches(m, detector.features)) for n, m in zip(names, logmels)]
    return [r.frame_error for i in range(0, len(prepared), batch_size)
            for r in detector.score_batch(prepared[i : i + batch_size])]


def frames_above(frame_error: np.ndarray, frame_threshold: float | None) -> np.ndarray:
    """``(n_frames,)`` bool: the frames to mark; none without a frame threshold."""
    if frame_threshold is None:
        return np.zeros(len(frame_error), bool)
    return np.asarray(frame_error) > frame_threshold


def band_profile(logmel: np.ndarray) -> np.ndarray:
    """A clip's band profile: each mel band's mean level over time, the clip's level removed.

    Parameters
    ----------
    logmel : np.ndarray [shape=(n_mels, n_frames)]
        Log-mel spectrogram in dB (:func:`asd.features.log_mel_spectrogram`).

    Returns
    -------
    np.ndarray [shape=(n_mels,), dtype=float32]
        dB relative to the clip's mean over bands (so a louder recording of the same
        sound has the same profile, as in :mod:`asd.familiarity`).

    Raises
    ------
    ValueError
        Not a 2-D array with at least one frame.
    """
    logmel = np.asarray(logmel, np.float64)
    if logmel.ndim != 2 or logmel.shape[1] == 0:
        raise ValueError(f"a band profile needs a (n_mels, n_frames) log-mel with frames, got shape {logmel.shape}")
    means = logmel.mean(axis=1)
    return (means - means.mean()).astype(np.float32)


@dataclass
class NearestProfile:
    """A clip's band profile next to its nearest training clip's.

    Attributes
    ----------
    profile, reference : np.ndarray [shape=(n_mels,), dtype=float32]
        dB, level removed.
    reference_name : str
        The training clip's file name.
    distance_db : float
        RMS difference over bands (dB).
    marked : np.ndarray [shape=(n_marked,), dtype=int64]
        Bands that differ most, largest difference first (:func:`differing_bands`).
    mark_db : float
        The difference (dB) a band had to exceed to be marked (:attr:`BandProfiles.mark_db`).
    """

    profile: np.ndarray
    reference: np.ndarray
    reference_name: str
    distance_db: float
    marked: np.ndarray
    mark_db: float


@dataclass
class BandProfiles:
    """The training clips' band profiles of a whole-clip model.

    Attributes
    ----------
    names : np.ndarray [shape=(n_clips,), dtype=str]
        Training clips' file names.
    profiles : np.ndarray [shape=(n_clips, n_mels), dtype=float32]
        Their :func:`band_profile` (stored as float16: 0.01 dB steps at these levels).
    mark_db : float
        Smallest band difference (dB) that is marked: the :data:`MARK_QUANTILE` quantile
        of the per-band differences between each training clip and its nearest other one
        (leave-one-out); 0 for a single clip.
    """

    names: np.ndarray
    profiles: np.ndarray
    mark_db: float

    @classmethod
    def fit(cls, names: list[str], logmels: list[np.ndarray]) -> "BandProfiles":
        """From the training clips' names and log-mels ``(n_mels, n_frames)`` dB.

        Raises
        ------
        ValueError
            No clips, or as many names as log-mels not given.
        """
        if not logmels or len(names) != len(logmels):
            raise ValueError(f"band profiles need one name per log-mel and at least one clip "
                             f"({len(names)} names, {len(logmels)} log-mels)")
        profiles = np.stack([band_profile(m) for m in logmels]).astype(np.float16).astype(np.float32)  # as stored
        return cls(np.array([Path(n).name for n in names]), profiles, leave_one_out_band_difference(profiles))

    def save(self, version_dir: str | Path) -> Path:
        """Write :data:`BAND_PROFILES_FILE` under ``version_dir`` (about 2 kB a clip)."""
        path = Path(version_dir) / BAND_PROFILES_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, names=self.names.astype(str), profiles=self.profiles.astype(np.float16),
                            mark_db=np.float32(self.mark_db))
        return path

    @classmethod
    def load(cls, version_dir: str | Path | None) -> "BandProfiles | None":
        """The profiles stored with a model version; None where there are none (models
        exported before them, or a model seen only through a server).

        Raises
        ------
        ValueError
            The file exists but is not a band-profile file.
        """
        if version_dir is None or not (path := Path(version_dir) / BAND_PROFILES_FILE).is_file():
            return None
        try:
            with np.load(path, allow_pickle=False) as stored:
                names, profiles, mark_db = stored["names"], stored["profiles"].astype(np.float32), float(stored["mark_db"])
        except (OSError, KeyError, ValueError) as exc:
            raise ValueError(f"{path}: not a band-profile file ({exc})") from None
        if profiles.ndim != 2 or len(names) != len(profiles):
            raise ValueError(f"{path}: {len(names)} names for profiles of shape {profiles.shape}")
        return cls(names, profiles, mark_db)

    def nearest(self, logmel: np.ndarray) -> NearestProfile:
        """The clip's profile against its nearest training clip's (RMS over bands).

        Parameters
        ----------
        logmel : np.ndarray [shape=(n_mels, n_frames)]
            The clip's log-mel (dB), with the model's feature settings.

        Raises
        ------
        ValueError
            Its band count differs from the stored profiles'.
        """
        profile = band_profile(logmel)
        if profile.shape[0] != self.profiles.shape[1]:
            raise ValueError(f"the clip has {profile.shape[0]} mel bands, the stored profiles "
                             f"{self.profiles.shape[1]}")
        distances = np.sqrt(np.mean(np.square(self.profiles - profile), axis=1))
        best = int(np.argmin(distances))
        reference = self.profiles[best]
        return NearestProfile(profile, reference, str(self.names[best]), float(distances[best]),
                              differing_bands(profile, reference, self.mark_db), self.mark_db)


def leave_one_out_band_difference(profiles: np.ndarray, quantile: float = MARK_QUANTILE) -> float:
    """The ``quantile`` of ``|profile - nearest other profile|`` over every band of every
    training clip (dB): how much normal neighbours differ. ``profiles`` ``(n_clips, n_mels)``;
    0.0 for fewer than 2 clips."""
    if len(profiles) < 2:
        return 0.0
    p = np.asarray(profiles, np.float64)
    norms = (p**2).sum(axis=1)
    squared = norms[:, None] + norms[None, :] - 2.0 * p @ p.T  # (n, n), the expanded form as in asd.familiarity
    np.fill_diagonal(squared, np.inf)
    return float(np.quantile(np.abs(p - p[squared.argmin(axis=1)]), quantile))


def differing_bands(profile: np.ndarray, reference: np.ndarray, min_db: float = 0.0, n: int = N_MARKED_BANDS,
                    separation: int = MIN_BAND_SEPARATION) -> np.ndarray:
    """The bands where two profiles differ most: the ``n`` highest peaks of ``|profile -
    reference|`` at least ``separation`` bands apart (``scipy.signal.find_peaks``, which
    also counts a peak at either end), largest first, that exceed ``min_db`` (dB).

    Returns
    -------
    np.ndarray [shape=(<= n,), dtype=int64]
        Band indices.
    """
    difference = np.abs(np.asarray(profile, np.float64) - np.asarray(reference, np.float64))
    # padded with -1 so that a maximum at the first or last band counts as a peak
    peaks, _ = find_peaks(np.pad(difference, 1, constant_values=-1.0), height=min_db + 1e-9, distance=separation)
    peaks -= 1
    return peaks[np.argsort(-difference[peaks], kind="stable")][:n].astype(np.int64)

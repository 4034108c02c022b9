"""A machine's healthy baseline, window scores and threshold, as pure functions over
embeddings and scores (no SQL, no TensorFlow) (issue 29).

Each machine sounds a little different; a fleet-wide threshold cannot tell "this car is
louder than the training cars" from "this car is broken". So each machine records its
own healthy **baseline** at commissioning: the clip embeddings (L2-normalised, the
reference-bank models' ``embedding`` output) of its first clips, marked healthy.

- **Clip score with a baseline**: the cosine distance to the nearest clip of the model's
  training bank plus the baseline. A reference-bank model's served anomaly score is
  already the distance to the nearest bank clip (``knn`` backend:
  :mod:`asd.detectors.backends`), so the score is ``min(model score, nearest baseline
  distance)``: the bank never leaves the server.
- **Window score**: the mean of the last ``window`` clip scores (default 5): alarms come
  from a trend over several readings, never from one.
- **Threshold per machine**: fitted from the machine's own baseline clips only (their
  leave-one-out clip scores), never from test labels; the rule is
  :func:`fit_threshold`'s.
"""

from __future__ import annotations

import numpy as np

#: Clips a window averages, by default
DEFAULT_WINDOW = 5
#: Baseline clips taken at commissioning, by default
DEFAULT_BASELINE_CLIPS = 10


def _unit(e: np.ndarray) -> np.ndarray:
    e = np.asarray(e, np.float64)
    if e.ndim != 2:
        raise ValueError(f"embeddings must be (n, dim), got shape {e.shape}")
    return e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12)


def baseline_distances(embeddings: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Cosine distances ``1 - cos`` from each clip to each baseline clip.

    Parameters
    ----------
    embeddings : np.ndarray [shape=(m, dim)]
    baseline : np.ndarray [shape=(k, dim)]

    Returns
    -------
    np.ndarray [shape=(m, k), dtype=float64]

    Raises
    ------
    ValueError
        Not 2-D, or the dimensions differ (embeddings of another model).
    """
    a, b = _unit(embeddings), _unit(baseline)
    if a.shape[1] != b.shape[1] and len(b):
        raise ValueError(f"embedding dimensions differ: {a.shape[1]} vs the baseline's {b.shape[1]} "
                         "(a baseline belongs to the model version that embedded it)")
    return 1.0 - a @ b.T


def clip_scores(model_scores: np.ndarray, embeddings: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Scores against the model's training bank plus the baseline: ``min(model score,
    nearest baseline distance)`` per clip (no baseline: the model score).

    Parameters
    ----------
    model_scores : np.ndarray [shape=(m,)]
        The served anomaly scores (cosine distance to the nearest training clip).
    embeddings : np.ndarray [shape=(m, dim)]
    baseline : np.ndarray [shape=(k, dim)]

    Returns
    -------
    np.ndarray [shape=(m,), dtype=float64]
    """
    scores = np.asarray(model_scores, np.float64)
    if len(baseline) == 0:
        return scores.copy()
    return np.minimum(scores, baseline_distances(embeddings, baseline).min(axis=1))


def leave_one_out_scores(model_scores: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Each baseline clip's clip score against the bank and the *other* baseline clips.

    Parameters
    ----------
    model_scores : np.ndarray [shape=(k,)]
        The baseline clips' served scores.
    baseline : np.ndarray [shape=(k, dim)]

    Returns
    -------
    np.ndarray [shape=(k,), dtype=float64]
    """
    distances = baseline_distances(baseline, baseline)
    np.fill_diagonal(distances, np.inf)
    nearest = distances.min(axis=1) if len(baseline) > 1 else np.full(len(baseline), np.inf)
    return np.minimum(np.asarray(model_scores, np.float64), nearest)


def window_scores(scores: np.ndarray, window: int = DEFAULT_WINDOW) -> np.ndarray:
    """The running mean of the last ``window`` scores at each clip (fewer at the start).

    Parameters
    ----------
    scores : np.ndarray [shape=(m,)]
        Clip scores, oldest first.
    window : int

    Returns
    -------
    np.ndarray [shape=(m,), dtype=float64]

    Raises
    ------
    ValueError
        ``window`` below 1.
    """
    if window < 1:
        raise ValueError("a window holds at least 1 clip")
    s = np.asarray(scores, np.float64)
    sums = np.cumsum(np.concatenate([[0.0], s]))
    ends = np.arange(1, len(s) + 1)
    starts = np.maximum(0, ends - window)
    return (sums[ends] - sums[starts]) / (ends - starts)


#: Threshold rules :func:`fit_threshold` knows
RULES = ("max_spread",)
DEFAULT_RULE = "max_spread"


def fit_threshold(loo_scores: np.ndarray, window: int = DEFAULT_WINDOW, rule: str = DEFAULT_RULE) -> float:
    """A machine's decision threshold on window scores, from its baseline clips' leave-one-out
    scores alone (no test labels).

    ``max_spread``: ``mean + 2 (max - mean) / sqrt(window)``: the largest healthy clip
    score says how far one healthy clip strays; a mean over ``window`` clips strays about
    ``1 / sqrt(window)`` as far (independent clips), and 2 of those leaves room.

    Parameters
    ----------
    loo_scores : np.ndarray [shape=(k,)]
        :func:`leave_one_out_scores` of the baseline.
    window : int
        Clips per window score.
    rule : str
        One of :data:`RULES`.

    Raises
    ------
    ValueError
        Fewer than 2 scores, or an unknown rule.
    """
    s = np.asarray(loo_scores, np.float64)
    s = s[np.isfinite(s)]
    if len(s) < 2:
        raise ValueError("a threshold needs at least 2 baseline clips")
    if rule == "max_spread":
        mean = s.mean()
        return float(mean + 2.0 * (s.max() - mean) / np.sqrt(window))
    raise ValueError(f"unknown threshold rule {rule!r}; known: {', '.join(RULES)}")

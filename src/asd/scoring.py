"""Anomaly scores and the decision threshold.

A clip's anomaly score is the mean of its patches' reconstruction errors (the DCASE
autoencoder baselines average the error over a clip's feature vectors the same way).
The decision threshold follows the DCASE 2021-2024 baselines: fit a gamma distribution
to the anomaly scores of the normal training clips and take its 0.9 quantile. One
departure: the baselines fit all three parameters (``gamma.fit(scores)``); here the
location is fixed at 0 (``floc=0``), the two-parameter gamma of positive errors. With
a free location the fit degenerates when the scores sit far from zero with a small
spread, as a well-trained autoencoder's do: on the ToyCar training clips (scores 0.19 to
0.25) it gave shape 0.25, location = the smallest score, and a 0.9 quantile of 1.17,
above every test clip. With the location fixed it follows the data (0.9 quantile close to
the empirical one).

A second departure, for the verdict a user gets: the quantile may be multiplied by a
margin (:func:`choose_margin`). Normal clips of the training session sit closer to each
other than to clips recorded later, so the baselines' rule flags half or more of the
healthy test clips; the margin is chosen on labelled clips of another session (half A of
the test clips in ``asd benchmark``) to keep each domain's false-alarm rate in bounds.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

NORMAL, ANOMALOUS, UNFAMILIAR = "normal", "anomalous", "unfamiliar"
VERDICTS = (NORMAL, ANOMALOUS, UNFAMILIAR)
# What a user should check when a clip is unfamiliar (CLI and app say the same).
UNFAMILIAR_ADVICE = ("unlike every recording the model was trained on, so its anomaly score says nothing about this "
                     "machine's health; check that the model is the one for this machine type, and that the "
                     "microphone records this machine (placement, cable, no louder source nearby)")


def clip_score(patch_errors: np.ndarray) -> float:
    """Clip anomaly score: the mean reconstruction error over its patches.

    Parameters
    ----------
    patch_errors : np.ndarray [shape=(n_patches,)]
        Mean squared error of each patch, in standardised log-mel units.

    Raises
    ------
    ValueError
        If there are no patch errors or any is NaN/Inf.
    """
    patch_errors = np.asarray(patch_errors, dtype=np.float64)
    if patch_errors.size == 0 or not np.isfinite(patch_errors).all():
        raise ValueError("patch errors must be a non-empty array of finite values")
    return float(patch_errors.mean())


@dataclass(frozen=True)
class GammaThreshold:
    """A decision threshold from a gamma fit of normal clips' scores.

    Attributes
    ----------
    value : float
        The threshold: a clip scoring above it is anomalous.
    quantile : float
        The fitted distribution's quantile used (DCASE baselines: 0.9).
    shape, loc, scale : float
        ``scipy.stats.gamma`` parameters fitted to the scores (``loc`` fixed at 0).
    n_scores : int
        How many clips' scores were fitted.
    margin : float
        Factor applied to the quantile: ``value = margin * gamma.ppf(quantile)`` (1 in the
        DCASE baselines; see :func:`choose_margin`).
    """

    value: float
    quantile: float
    shape: float
    loc: float
    scale: float
    n_scores: int
    margin: float = 1.0

    def to_dict(self) -> dict:
        return {"method": "gamma_ppf", **asdict(self)}


def fit_gamma_threshold(scores: np.ndarray, quantile: float = 0.9, margin: float = 1.0) -> GammaThreshold:
    """Fit ``scipy.stats.gamma`` to normal clips' scores and take a quantile.

    As in the DCASE 2021-2024 Task 2 baselines (``gamma.fit``, then
    ``gamma.ppf(q=0.9, ...)``), with the location fixed at 0 (see the module docstring),
    times ``margin``.

    Parameters
    ----------
    scores : np.ndarray [shape=(n_clips,)]
        Anomaly scores of normal clips (at least 3).
    quantile : float
        In (0, 1).
    margin : float
        Positive factor on the quantile (1: the baselines' rule).

    Raises
    ------
    ValueError
        Too few or non-finite scores, a quantile outside (0, 1) or a margin <= 0.
    """
    from scipy import stats

    scores = np.asarray(scores, dtype=np.float64)
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"threshold quantile must lie in (0, 1), got {quantile}")
    if not margin > 0:
        raise ValueError(f"threshold margin must be positive, got {margin}")
    if scores.size < 3 or not np.isfinite(scores).all():
        raise ValueError("a gamma fit needs at least 3 finite scores")
    if (scores <= 0).any():
        raise ValueError("a gamma fit with location 0 needs positive scores")
    shape, loc, scale = stats.gamma.fit(scores, floc=0.0)
    value = margin * float(stats.gamma.ppf(quantile, shape, loc=loc, scale=scale))
    return GammaThreshold(value, quantile, float(shape), float(loc), float(scale), int(scores.size), float(margin))


def choose_margin(base_threshold: float, scores: np.ndarray, labels: np.ndarray, domains: np.ndarray,
                  max_false_alarms: dict[str, float]) -> float:
    """The smallest margin (so the most anomalies flagged) at which ``margin *
    base_threshold`` flags at most ``max_false_alarms[domain]`` of each domain's normal clips.

    The normal clips of a training session sit closer to each other than to a later
    session's (for ToyCar's embeddings, leave-one-out distances a third of the test normals'
    distances), so the baselines' gamma quantile of training scores flags many healthy test
    clips. The margin is chosen on labelled clips of another session: ``asd benchmark``
    chooses it on half A of the test clips and reports half B.

    Parameters
    ----------
    base_threshold : float
        ``gamma.ppf(quantile)`` of the training scores (> 0).
    scores, labels, domains : np.ndarray [shape=(n_clips,)]
        Anomaly scores, True for anomalies, ``"source"``/``"target"``.
    max_false_alarms : dict
        Domain -> largest share of its normal clips that may be flagged, e.g.
        ``{"source": 0.1, "target": 0.25}``.

    Returns
    -------
    float
        At least 1: the rule never flags more than the baselines' would.
    """
    scores = np.asarray(scores, float)
    needed = base_threshold
    for domain, share in max_false_alarms.items():
        normal = np.sort(scores[(np.asarray(domains) == domain) & ~np.asarray(labels, bool)])
        if normal.size == 0:
            continue
        allowed = int(np.floor(share * normal.size + 1e-9))  # clips above the threshold are flagged
        needed = max(needed, float(normal[normal.size - allowed - 1]) if allowed < normal.size else -np.inf)
    return max(1.0, needed / base_threshold)


def verdict(score: float, threshold: float, unfamiliarity: float | None = None,
            unfamiliar_threshold: float | None = None) -> str:
    """``"unfamiliar"`` when ``unfamiliarity > unfamiliar_threshold`` (both given: the clip is
    unlike every training clip, so its anomaly score means nothing; :mod:`asd.familiarity`),
    else ``"anomalous"`` when ``score > threshold``, else ``"normal"``."""
    if unfamiliarity is not None and unfamiliar_threshold is not None and unfamiliarity > unfamiliar_threshold:
        return UNFAMILIAR
    return ANOMALOUS if score > threshold else NORMAL

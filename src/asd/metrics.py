"""DCASE Task 2 evaluation metrics.

As computed by the DCASE 2023 Task 2 baseline (nttcslab/dcase2023_task2_baseline_ae)
and described by Dohi et al., "Description and discussion on DCASE 2023 challenge
task 2", arXiv 2305.07828:

- AUC-source: the section's source-domain normal clips against all its anomalies;
- AUC-target: the section's target-domain normal clips against all its anomalies;
- pAUC: over both domains, at FPR <= 0.1, ``roc_auc_score(y, s, max_fpr=0.1)``
  (McClish-standardised: chance is 0.5);
- official score: harmonic mean of every section's AUC-source, AUC-target and pAUC.

Precision, recall and F1 at the decision threshold are given per domain (that domain's
normals and anomalies, in each section and over all sections) and over all clips,
anomalies being the positive class; per domain also the false-alarm rate, the share of its normal clips flagged (normal clips flagged /
normal clips), and the counts of flagged normal and anomalous clips.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import hmean

from .data import ClipInfo

MAX_FPR = 0.1


def _prf(labels: np.ndarray, flagged: np.ndarray) -> dict[str, float]:
    """Precision, recall, F1 with anomalies as positives (0 where undefined)."""
    tp = int(np.sum(flagged & labels))
    fp = int(np.sum(flagged & ~labels))
    fn = int(np.sum(~flagged & labels))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1}


def section_metrics(
    labels: np.ndarray, domains: np.ndarray, scores: np.ndarray, threshold: float
) -> dict:
    """Metrics of one section.

    Parameters
    ----------
    labels : np.ndarray [shape=(n_clips,), dtype=bool]
        True for anomalies.
    domains : np.ndarray [shape=(n_clips,), dtype=str]
        ``"source"`` or ``"target"``.
    scores : np.ndarray [shape=(n_clips,), dtype=float]
        Anomaly scores (higher = more anomalous).
    threshold : float
        Decision threshold for precision/recall/F1.

    Returns
    -------
    dict
        ``auc_source``, ``auc_target`` (None where the domain has no normal clip),
        ``pauc``, per-domain and overall ``precision``/``recall``/``f1``, per domain
        ``false_alarm_rate`` (None without normal clips) and clip counts.

    Raises
    ------
    ValueError
        If the section lacks normal or anomalous clips.
    """
    from sklearn.metrics import roc_auc_score

    labels = np.asarray(labels, dtype=bool)
    domains = np.asarray(domains)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.all() or not labels.any():
        raise ValueError("a section needs both normal and anomalous clips to be evaluated")
    result: dict = {}
    for domain in ("source", "target"):
        normals = ~labels & (domains == domain)
        chosen = normals | labels
        result[f"auc_{domain}"] = (
            float(roc_auc_score(labels[chosen], scores[chosen])) if normals.any() else None
        )
    result["pauc"] = float(roc_auc_score(labels, scores, max_fpr=MAX_FPR))
    flagged = scores > threshold
    result.update(_prf(labels, flagged))
    result["per_domain"] = domain_rates(labels, domains, flagged)
    return result


def domain_rates(labels: np.ndarray, domains: np.ndarray, flagged: np.ndarray) -> dict:
    """Per domain present (``source``, ``target``): precision, recall, F1, the
    false-alarm rate (None without normal clips; recall is 0 without anomalies) and the
    counts ``n_normal``, ``n_anomaly``, ``n_normal_flagged``, ``n_anomaly_flagged``."""
    labels, domains, flagged = np.asarray(labels, dtype=bool), np.asarray(domains), np.asarray(flagged, dtype=bool)
    rates = {}
    for domain in ("source", "target"):
        mask = domains == domain
        if mask.any():
            normal = mask & ~labels
            rates[domain] = {
                **_prf(labels[mask], flagged[mask]),
                # what a user meets most: healthy recordings called anomalous
                "false_alarm_rate": float(flagged[normal].mean()) if normal.any() else None,
                "n_normal": int(normal.sum()),
                "n_anomaly": int(np.sum(labels[mask])),
                "n_normal_flagged": int(flagged[normal].sum()),
                "n_anomaly_flagged": int(flagged[mask & labels].sum()),
            }
    return rates


def evaluate_scores(clips: Sequence[ClipInfo], scores: Sequence[float], threshold: float) -> dict:
    """Official DCASE metrics over labelled test clips, per section and overall.

    Parameters
    ----------
    clips : sequence of ClipInfo
        Labelled clips (``label`` not None).
    scores : sequence of float [shape=(n_clips,)]
        Their anomaly scores, in the same order.
    threshold : float
        The model's decision threshold.

    Returns
    -------
    dict
        Top-level ``auc_source``, ``auc_target``, ``pauc`` (each the harmonic mean over
        sections), ``official_score`` (harmonic mean of all sections' AUC-source,
        AUC-target and pAUC), ``precision``/``recall``/``f1`` over all clips at the
        threshold, ``per_domain`` with each domain's rates at the threshold over all
        sections (:func:`domain_rates`: ``recall``, ``false_alarm_rate``, precision, F1
        and counts), and ``sections`` with each section's metrics (the same
        ``per_domain`` figures per section).

    Raises
    ------
    ValueError
        If a clip is unlabelled or the lengths differ.
    """
    if len(clips) != len(scores):
        raise ValueError(f"{len(clips)} clips but {len(scores)} scores")
    if any(c.label is None for c in clips):
        raise ValueError("evaluation needs labelled clips (file names with normal/anomaly)")
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.array([c.is_anomaly for c in clips])
    domains = np.array([c.domain for c in clips])
    sections = np.array([c.section for c in clips])
    per_section = {}
    for section in sorted(set(sections.tolist())):
        mask = sections == section
        per_section[f"{section:02d}"] = section_metrics(labels[mask], domains[mask], scores[mask], threshold)

    def overall(key: str) -> float | None:
        values = [m[key] for m in per_section.values() if m[key] is not None]
        return float(hmean(values)) if values else None

    official_terms = [
        m[k] for m in per_section.values() for k in ("auc_source", "auc_target", "pauc") if m[k] is not None
    ]
    flagged = scores > threshold
    return {
        "auc_source": overall("auc_source"),
        "auc_target": overall("auc_target"),
        "pauc": overall("pauc"),
        "official_score": float(hmean(official_terms)),
        **_prf(labels, flagged),
        "threshold": float(threshold),
        "n_clips": int(len(clips)),
        "n_flagged": int(flagged.sum()),
        "max_fpr": MAX_FPR,
        "per_domain": domain_rates(labels, domains, flagged),
        "sections": per_section,
    }


"""Scoring a labelled test set and computing its DCASE metrics."""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path

from .data import ClipInfo, list_clips
from .inference import Detector
from .metrics import evaluate_scores
from .scoring import UNFAMILIAR, VERDICTS


def evaluate_directory(
    detector: Detector,
    data_dir: str | Path,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[dict, list[tuple[ClipInfo, float]]]:
    """Score every test clip of a machine-type folder and compute the official metrics.

    Parameters
    ----------
    detector : Detector
    data_dir : str or Path
        A machine-type folder with ``test/`` (e.g. ``dev_data/ToyCar``) or a test
        folder itself; file names must carry normal/anomaly labels.
    progress : callable, optional
        Called as ``progress(done, total)`` after each clip.

    Returns
    -------
    metrics : dict
        :func:`asd.metrics.evaluate_scores` output, plus ``data_dir``, ``model``,
        ``verdicts`` (clips per verdict: normal, anomalous, unfamiliar) and, per domain
        under ``per_domain.<domain>`` (all sections) and
        ``sections.<id>.per_domain.<domain>``, ``n_unfamiliar`` beside ``recall`` and
        ``false_alarm_rate``. AUCs and the rates
        at the threshold use the anomaly score of every clip, unfamiliar ones included
        (DCASE's metrics know no third verdict).
    rows : list of (ClipInfo, float, str)
        Each clip's anomaly score and verdict.

    Raises
    ------
    FileNotFoundError, asd.data.FileNameError, asd.audio.AudioError, ValueError
    """
    clips = list_clips(data_dir, split=None if Path(data_dir).name == "test" else "test")
    scores, verdicts = [], []
    for done, clip in enumerate(clips, 1):
        result = detector.score_file(clip.path, display=False)
        scores.append(result.score)
        verdicts.append(result.verdict)
        if progress:
            progress(done, len(clips))
    metrics = evaluate_scores(clips, scores, detector.threshold)
    for section, values in metrics["sections"].items():
        for domain, figures in values["per_domain"].items():
            figures["n_unfamiliar"] = sum(v == UNFAMILIAR and f"{c.section:02d}" == section and c.domain == domain
                                          for c, v in zip(clips, verdicts))
    for domain, figures in metrics["per_domain"].items():
        figures["n_unfamiliar"] = sum(v == UNFAMILIAR and c.domain == domain for c, v in zip(clips, verdicts))
    meta = detector.metadata
    metrics = {"model": {"name": meta.name, "version": meta.version}, "data_dir": str(data_dir),
               **metrics, "verdicts": {v: verdicts.count(v) for v in VERDICTS}}
    return metrics, list(zip(clips, scores, verdicts))


def write_scores_csv(rows: list[tuple[ClipInfo, float, str]], path: str | Path) -> None:
    """Per-clip scores as CSV (file, section, domain, label, score, verdict), DCASE style;
    ``rows`` as :func:`evaluate_directory` returns them."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "section", "domain", "label", "anomaly_score", "verdict"])
        for clip, score, verdict in rows:
            writer.writerow([clip.path.name, f"{clip.section:02d}", clip.domain, clip.label, f"{score:.6f}", verdict])

"""PNG plots of a detector's test scores (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on servers and CI
    import matplotlib.pyplot as plt

    return plt


def plot_roc_per_domain(labels: np.ndarray, domains: np.ndarray, scores: np.ndarray, title: str, path: str | Path) -> Path:
    """ROC curves as the official AUCs define them: each domain's normal clips against all
    anomalies, with the FPR <= 0.1 band of pAUC shaded.

    Parameters
    ----------
    labels : np.ndarray [shape=(n_clips,), dtype=bool]
        True for anomalies.
    domains : np.ndarray [shape=(n_clips,), dtype=str]
    scores : np.ndarray [shape=(n_clips,)]
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 5))
    for domain in ("source", "target"):
        chosen = labels | ((domains == domain) & ~labels)
        if (chosen & ~labels).any():
            fpr, tpr, _ = roc_curve(labels[chosen], scores[chosen])
            ax.plot(fpr, tpr, label=f"{domain} normals vs all anomalies (AUC {roc_auc_score(labels[chosen], scores[chosen]):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="chance")
    ax.axvspan(0, 0.1, color="orange", alpha=0.15, label="pAUC range (FPR <= 0.1)")
    ax.set(xlabel="false positive rate", ylabel="true positive rate", title=f"ROC per domain: {title}", xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def plot_score_histogram(
    labels: np.ndarray, domains: np.ndarray, scores: np.ndarray, threshold: float, title: str, path: str | Path
) -> Path:
    """Histograms of normal vs anomalous clips' scores, per domain, with the decision
    threshold marked (same arguments as :func:`plot_roc_per_domain`, plus ``threshold``)."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 1, figsize=(7, 5), sharex=True)
    bins = np.histogram_bin_edges(scores, bins=30)
    for ax, domain in zip(axes, ("source", "target")):
        mask = domains == domain
        ax.hist(scores[mask & ~labels], bins=bins, alpha=0.6, label="normal")
        ax.hist(scores[mask & labels], bins=bins, alpha=0.6, label="anomalous")
        ax.axvline(threshold, color="red", linestyle="--", label=f"decision threshold {threshold:.4g}")
        ax.set(ylabel=f"{domain}: clips")
        ax.legend(fontsize=8)
    axes[0].set_title(f"Anomaly scores of the test clips: {title}")
    axes[1].set_xlabel("anomaly score")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)

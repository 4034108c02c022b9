"""Pseudo-attributes: classes for the auxiliary task where a machine type has none.

DCASE 2024 systems trained on machine types with hidden attributes by clustering the
training clips and using the clusters as classes (e.g. Wilkinghoff's and the challenge
baselines' discussions of ``noAttributes`` machines). Here each clip is described by the
mean and standard deviation of every log-mel band over its frames, standardised, and
grouped by k-means (scikit-learn); issue 30's row ``attribute_free_pseudo``.
"""

from __future__ import annotations

import numpy as np


def logmel_statistics(logmels: list[np.ndarray]) -> np.ndarray:
    """Per clip, the mean and standard deviation over frames of each log-mel band.

    Parameters
    ----------
    logmels : list of np.ndarray [shape=(n_mels, n_frames), dB]

    Returns
    -------
    np.ndarray [shape=(n_clips, 2 * n_mels), dtype=float32]
    """
    return np.stack([np.concatenate([m.mean(axis=1), m.std(axis=1)]) for m in logmels]).astype(np.float32)


def pseudo_attributes(logmels: list[np.ndarray], n_clusters: int, seed: int) -> np.ndarray:
    """k-means cluster of each clip's standardised log-mel statistics.

    Parameters
    ----------
    logmels : list of np.ndarray [shape=(n_mels, n_frames), dB]
    n_clusters : int
        At most this many clusters (fewer when there are fewer clips).
    seed : int
        k-means initialisation (10 initialisations, the best kept).

    Returns
    -------
    np.ndarray [shape=(n_clips,), dtype=int]
        Cluster index of each clip, in ``0 .. n_clusters - 1``.
    """
    from sklearn.cluster import KMeans
    from sklearn.preprocessing import StandardScaler

    stats = StandardScaler().fit_transform(logmel_statistics(logmels))
    k = max(1, min(n_clusters, len(stats)))
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(stats)

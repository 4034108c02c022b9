"""Scoring backends on clip embeddings: reference banks for cosine nearest-neighbour scores.

Every backend reduces to the same served computation, so TF Serving serves any of them
with one graph: a bank of L2-normalised reference embeddings ``(n_refs, dim)`` and a
divisor per reference ``(n_refs,)``; a clip's score is

    min over references r of (1 - cos(e, r)) / divisor_r

with ``e`` the clip's embedding. The backends differ in what the bank holds and how each
reference is weighed (the settings of ASDKit, TakuyaFujimura/dcase-asd-toolkit,
``config/score/experiments/default.yaml``):

- ``knn``: every training clip, separate source and target banks, k = 1, the minimum of
  the two distances (the union of the banks gives the same minimum), divisor 1.
- ``knn_smote``: as ``knn``, with the few target-domain clips oversampled by SMOTE
  (Chawla et al., JAIR 2002; for ASD e.g. SMOTE-TWFR-GMM, liuyoude/TWFR-GMM) to
  ``smote_ratio`` times the source bank's size, each new point on the segment between
  a target clip and one of its ``smote_neighbours`` nearest target clips.
- ``kmeans``: ``kmeans_centres`` k-means centres of the source clips (scikit-learn) plus
  every target clip as it is.
- ``knn_rescale``: one bank of all clips; each reference's distance divided by its mean
  distance to its ``rescale_k`` nearest other references, its local density (Wilkinghoff
  et al., "Keeping the balance: anomaly score calculation for domain generalization",
  ICASSP 2025; code merlresearch/anomaly-score-normalization): a reference in a sparse
  region (the few target clips) needs a larger distance to call a clip anomalous.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BACKENDS = ("knn", "knn_smote", "kmeans", "knn_rescale")


def l2_normalise(e: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length: ``(n, dim)`` float32."""
    e = np.asarray(e, np.float32)
    return e / (np.linalg.norm(e, axis=1, keepdims=True) + 1e-12)


@dataclass
class ReferenceBank:
    """What a backend keeps of the training clips.

    Attributes
    ----------
    refs : np.ndarray [shape=(n_refs, dim), dtype=float32]
        L2-normalised reference embeddings.
    divisors : np.ndarray [shape=(n_refs,), dtype=float32]
        Each reference's distance divisor (1 except for ``knn_rescale``).
    domains : np.ndarray [shape=(n_refs,), dtype=str]
        ``"source"``/``"target"`` of each reference.
    owners : list of frozenset
        Indices of the training clips each reference was made from (leave-one-out).
    """

    refs: np.ndarray
    divisors: np.ndarray
    domains: np.ndarray
    owners: list

    def scores(self, embeddings: np.ndarray, leave_out: np.ndarray | None = None) -> np.ndarray:
        """Anomaly scores ``(n,)`` float64 of embeddings ``(n, dim)``; with ``leave_out``
        (training-clip index of each row), the references made from that clip are skipped."""
        distance = (1.0 - l2_normalise(embeddings) @ self.refs.T) / self.divisors[None, :]
        if leave_out is not None:
            for row, clip in enumerate(leave_out):
                distance[row, [j for j, owner in enumerate(self.owners) if clip in owner]] = np.inf
        return distance.min(axis=1).astype(np.float64)


def build_bank(embeddings: np.ndarray, domains: np.ndarray, backend: str, *, smote_ratio: float = 0.2,
               smote_neighbours: int = 2, kmeans_centres: int = 16, rescale_k: int = 4, seed: int = 0) -> ReferenceBank:
    """The reference bank of ``backend`` (module docstring) from training-clip embeddings.

    Parameters
    ----------
    embeddings : np.ndarray [shape=(n_clips, dim)]
    domains : np.ndarray [shape=(n_clips,), dtype=str]
    backend : str
        One of :data:`BACKENDS`.

    Raises
    ------
    ValueError
        Unknown backend.
    """
    e = l2_normalise(embeddings)
    domains = np.asarray(domains)
    n = len(e)
    own = [frozenset([i]) for i in range(n)]
    if backend == "knn":
        return ReferenceBank(e, np.ones(n, np.float32), domains, own)
    if backend == "knn_smote":
        target = np.flatnonzero(domains == "target")
        n_new = int(smote_ratio * np.sum(domains == "source")) - len(target)
        if len(target) < 2 or n_new <= 0:
            return build_bank(e, domains, "knn")
        rng = np.random.default_rng(seed)
        t = e[target]
        similarity = t @ t.T
        np.fill_diagonal(similarity, -np.inf)
        neighbours = np.argsort(-similarity, axis=1)[:, : min(smote_neighbours, len(target) - 1)]
        first = rng.integers(0, len(target), n_new)
        second = neighbours[first, rng.integers(0, neighbours.shape[1], n_new)]
        lam = rng.uniform(0, 1, (n_new, 1)).astype(np.float32)
        synthetic = l2_normalise(t[first] + lam * (t[second] - t[first]))
        owners = own + [frozenset([int(target[a]), int(target[b])]) for a, b in zip(first, second)]
        refs = np.concatenate([e, synthetic])
        return ReferenceBank(refs, np.ones(len(refs), np.float32), np.concatenate([domains, ["target"] * n_new]), owners)
    if backend == "kmeans":
        from sklearn.cluster import KMeans

        source = np.flatnonzero(domains == "source")
        target = np.flatnonzero(domains == "target")
        k = min(kmeans_centres, len(source))
        fitted = KMeans(k, n_init=10, random_state=seed).fit(e[source])
        centres = l2_normalise(fitted.cluster_centers_)
        # a centre is made from its members: leaving one of them out leaves the centre (its
        # mean barely moves), so only the target clips, kept as they are, are left out
        owners = [frozenset() for _ in range(k)] + [own[i] for i in target]
        refs = np.concatenate([centres, e[target]])
        return ReferenceBank(refs, np.ones(len(refs), np.float32), np.array(["source"] * k + ["target"] * len(target)), owners)
    if backend == "knn_rescale":
        distance = 1.0 - e @ e.T
        np.fill_diagonal(distance, np.inf)
        k = min(rescale_k, n - 1)
        density = np.sort(distance, axis=1)[:, :k].mean(axis=1)
        return ReferenceBank(e, np.maximum(density, 1e-6).astype(np.float32), domains, own)
    raise ValueError(f"unknown scoring backend {backend!r}; known: {', '.join(BACKENDS)}")

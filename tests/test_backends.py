"""Scoring backends on embeddings (asd.detectors.backends): each one's bank and divisors
do what its source says, and leave-one-out drops exactly what a clip contributed.

The embeddings are real: log spectra of the subset's clips (mean log-mel per band), so the
geometry is that of real recordings, not of a toy."""

import numpy as np
import pytest

from asd.audio import load_audio
from asd.data import list_clips
from asd.detectors.backends import BACKENDS, build_bank, l2_normalise
from asd.features import FeatureConfig, log_mel_spectrogram

from .conftest import SUBSET


@pytest.fixture(scope="module")
def embeddings():
    features = FeatureConfig()

    def embed(split):
        clips = list_clips(SUBSET, split)
        e = np.stack([log_mel_spectrogram(load_audio(c.path, 16000).samples, features).mean(axis=1) for c in clips])
        return e - e.mean(axis=1, keepdims=True), np.array([c.domain for c in clips])

    (train, train_domains), (test, _) = embed("train"), embed("test")
    return train, train_domains, test


def _cosine_distance(a, b):
    return 1.0 - l2_normalise(a) @ l2_normalise(b).T


def test_knn_is_the_minimum_of_the_per_domain_nearest_neighbours(embeddings):
    train, domains, test = embeddings
    scores = build_bank(train, domains, "knn").scores(test)
    per_domain = [_cosine_distance(test, train[domains == d]).min(axis=1) for d in ("source", "target")]
    np.testing.assert_allclose(scores, np.minimum(*per_domain), rtol=1e-4, atol=1e-6)


def test_smote_adds_target_points_between_target_neighbours(embeddings):
    train, domains, _ = embeddings
    bank = build_bank(train, domains, "knn_smote", smote_ratio=1.0, smote_neighbours=2)
    n_source, n_target = (domains == "source").sum(), (domains == "target").sum()
    assert len(bank.refs) == len(train) + n_source - n_target  # target grown to 1.0 x source
    synthetic = bank.refs[len(train):]
    assert (bank.domains[len(train):] == "target").all()
    target = l2_normalise(train[domains == "target"])
    # every synthetic point lies (after normalisation) in the span of its two parents
    for point, owner in zip(synthetic, bank.owners[len(train):]):
        parents = l2_normalise(train[sorted(owner)])
        assert len(owner) in (1, 2) and all(domains[i] == "target" for i in owner)
        residual = point - parents.T @ np.linalg.lstsq(parents.T, point, rcond=None)[0]
        assert np.linalg.norm(residual) < 1e-4
    assert target.shape[0] == n_target


def test_kmeans_keeps_centres_of_source_and_every_target_clip(embeddings):
    train, domains, _ = embeddings
    bank = build_bank(train, domains, "kmeans", kmeans_centres=3)
    assert list(bank.domains).count("source") == 3
    np.testing.assert_allclose(bank.refs[3:], l2_normalise(train[domains == "target"]), rtol=1e-6)


def test_rescale_divides_by_each_references_local_density(embeddings):
    train, domains, test = embeddings
    bank = build_bank(train, domains, "knn_rescale", rescale_k=2)
    d = _cosine_distance(train, train)
    np.fill_diagonal(d, np.inf)
    np.testing.assert_allclose(bank.divisors, np.sort(d, axis=1)[:, :2].mean(axis=1), rtol=1e-4)
    np.testing.assert_allclose(bank.scores(test), (_cosine_distance(test, train) / bank.divisors).min(axis=1), rtol=1e-4)


@pytest.mark.parametrize("backend", BACKENDS)
def test_leave_one_out_never_matches_a_clip_with_itself(embeddings, backend):
    train, domains, _ = embeddings
    bank = build_bank(train, domains, backend, smote_ratio=1.0, kmeans_centres=3)
    served = bank.scores(train)
    loo = bank.scores(train, leave_out=np.arange(len(train)))
    assert (loo >= served - 1e-7).all()
    if backend != "kmeans":  # a clip is its own nearest reference until it is left out
        assert np.allclose(served, 0.0, atol=1e-4) and (loo > 1e-3).all()


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="unknown scoring backend 'lof'"):
        build_bank(np.ones((3, 2)), np.array(["source"] * 3), "lof")

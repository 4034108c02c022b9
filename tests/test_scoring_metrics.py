"""Scores, gamma threshold and DCASE metrics, checked against scipy and scikit-learn."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from asd.data import ClipInfo
from asd.metrics import evaluate_scores
from asd.scoring import choose_margin, clip_score, fit_gamma_threshold, verdict


def test_clip_score_is_the_mean_patch_error():
    assert clip_score(np.array([0.5, 1.0, 1.5])) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        clip_score(np.array([1.0, np.nan]))


def test_gamma_threshold_is_the_fitted_quantile():
    scores = stats.gamma.rvs(3.0, scale=0.2, size=400, random_state=1)
    threshold = fit_gamma_threshold(scores, 0.9)
    shape, loc, scale = stats.gamma.fit(scores, floc=0)
    assert threshold.value == pytest.approx(stats.gamma.ppf(0.9, shape, loc=loc, scale=scale))
    assert threshold.loc == 0.0 and threshold.shape == pytest.approx(3.0, rel=0.15)
    assert 0.85 < np.mean(scores <= threshold.value) < 0.95
    assert fit_gamma_threshold(scores, 0.99).value > threshold.value
    assert verdict(threshold.value + 1e-9, threshold.value) == "anomalous"
    assert verdict(threshold.value, threshold.value) == "normal"
    with pytest.raises(ValueError, match="quantile"):
        fit_gamma_threshold(scores, 1.0)


def test_gamma_threshold_follows_tight_scores_far_from_zero():
    """Autoencoder scores like the ToyCar training clips' (about 0.21 +- 0.012): the
    baselines' free-location fit degenerates here; the threshold must stay near the
    empirical 0.9 quantile."""
    scores = np.random.default_rng(3).normal(0.21, 0.012, size=409)
    threshold = fit_gamma_threshold(scores, 0.9)
    assert threshold.value == pytest.approx(np.quantile(scores, 0.9), rel=0.02)
    assert scores.min() < threshold.value < scores.max()


def _clips(domains, labels, section=0):
    from pathlib import Path

    return [
        ClipInfo(Path(f"c{i}.wav"), "ToyCar", section, d, "test", l, i)
        for i, (d, l) in enumerate(zip(domains, labels))
    ]


def test_metrics_follow_the_dcase_definitions():
    rng = np.random.default_rng(7)
    domains = ["source"] * 50 + ["target"] * 50
    labels = (["normal"] * 25 + ["anomaly"] * 25) * 2
    scores = rng.normal(size=100) + np.array([l == "anomaly" for l in labels]) * 0.8
    scores[50:75] += 0.6  # target normals look anomalous: domain shift
    y = np.array([l == "anomaly" for l in labels])
    d = np.array(domains)
    metrics = evaluate_scores(_clips(domains, labels), scores, threshold=0.5)
    src = (d == "source") & ~y | y
    tgt = (d == "target") & ~y | y
    assert metrics["auc_source"] == pytest.approx(roc_auc_score(y[src], scores[src]))
    assert metrics["auc_target"] == pytest.approx(roc_auc_score(y[tgt], scores[tgt]))
    assert metrics["pauc"] == pytest.approx(roc_auc_score(y, scores, max_fpr=0.1))
    assert metrics["official_score"] == pytest.approx(
        stats.hmean([metrics["auc_source"], metrics["auc_target"], metrics["pauc"]]))
    assert metrics["auc_target"] < metrics["auc_source"]  # the shift shows where it should
    flagged = scores > 0.5
    tp = np.sum(flagged & y)
    assert metrics["precision"] == pytest.approx(tp / flagged.sum())
    assert metrics["recall"] == pytest.approx(tp / y.sum())
    assert metrics["sections"]["00"]["per_domain"]["target"]["n_normal"] == 25
    for domain in ("source", "target"):
        per = metrics["sections"]["00"]["per_domain"][domain]
        normal = (d == domain) & ~y
        assert per["false_alarm_rate"] == pytest.approx(flagged[normal].sum() / normal.sum())
        assert per["n_normal_flagged"] == flagged[normal].sum()
        assert per["n_anomaly_flagged"] == flagged[(d == domain) & y].sum()
    # the shifted target normals are flagged more often than the source ones
    per_domain = metrics["sections"]["00"]["per_domain"]
    assert per_domain["target"]["false_alarm_rate"] > per_domain["source"]["false_alarm_rate"]


def test_margin_is_the_smallest_that_keeps_each_domains_false_alarms_in_bounds():
    rng = np.random.default_rng(11)
    domains = np.array(["source"] * 40 + ["target"] * 40)
    labels = np.tile(np.array([False] * 20 + [True] * 20), 2)
    scores = rng.gamma(3.0, 0.2, 80) + labels * 0.3 + (domains == "target") * 0.4
    base = 0.5
    limits = {"source": 0.10, "target": 0.25}
    margin = choose_margin(base, scores, labels, domains, limits)
    flagged = scores > base * margin

    def false_alarms(domain, flagged):
        normal = (domains == domain) & ~labels
        return flagged[normal].mean()

    for domain, limit in limits.items():
        assert false_alarms(domain, flagged) <= limit
    # any smaller margin breaks a limit: the choice keeps the most anomalies flagged
    smaller = scores > base * margin * (1 - 1e-9)
    assert any(false_alarms(domain, smaller) > limit for domain, limit in limits.items())
    assert choose_margin(100.0, scores, labels, domains, limits) == 1.0  # never below the baselines' rule
    assert fit_gamma_threshold(scores, 0.9, margin=2.0).value == pytest.approx(2 * fit_gamma_threshold(scores, 0.9).value)
    with pytest.raises(ValueError, match="margin"):
        fit_gamma_threshold(scores, 0.9, margin=0.0)


def test_official_score_is_harmonic_mean_over_sections():
    labels = ["normal", "anomaly"] * 4
    domains = ["source", "source", "target", "target"] * 2
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.4, 0.6, 0.5])
    clips = _clips(domains[:4], labels[:4], section=0) + _clips(domains[4:], labels[4:], section=1)
    metrics = evaluate_scores(clips, scores, threshold=0.5)
    terms = [metrics["sections"][s][k] for s in ("00", "01") for k in ("auc_source", "auc_target", "pauc")]
    assert metrics["official_score"] == pytest.approx(stats.hmean(terms))


def test_every_domain_has_recall_and_false_alarm_rate_over_all_sections():
    """Top-level ``per_domain``: each domain's rates at the threshold over every section's
    clips (the acceptance of issue 30: recall and false_alarm_rate for every domain)."""
    labels = ["normal", "anomaly", "normal", "anomaly"] * 2
    domains = ["source", "source", "target", "target"] * 2
    # flagged (> 0.5): section 0 source anomaly, target normal; section 1 source normal, both anomalies
    scores = np.array([0.1, 0.9, 0.7, 0.2, 0.6, 0.8, 0.3, 0.9])
    clips = _clips(domains[:4], labels[:4], section=0) + _clips(domains[4:], labels[4:], section=1)
    metrics = evaluate_scores(clips, scores, threshold=0.5)
    per_domain = metrics["per_domain"]
    assert set(per_domain) == {"source", "target"}
    assert per_domain["source"]["false_alarm_rate"] == 0.5 and per_domain["source"]["recall"] == 1.0
    assert per_domain["target"]["false_alarm_rate"] == 0.5 and per_domain["target"]["recall"] == 0.5
    assert (per_domain["source"]["n_normal_flagged"], per_domain["source"]["n_normal"]) == (1, 2)
    assert (per_domain["target"]["n_anomaly_flagged"], per_domain["target"]["n_anomaly"]) == (1, 2)
    for domain in ("source", "target"):  # the sections' counts add up to it
        for key in ("n_normal", "n_anomaly", "n_normal_flagged", "n_anomaly_flagged"):
            assert per_domain[domain][key] == sum(metrics["sections"][s]["per_domain"][domain][key] for s in ("00", "01"))


def test_metrics_need_labels_and_both_classes():
    with pytest.raises(ValueError, match="both normal and anomalous"):
        evaluate_scores(_clips(["source"] * 2, ["normal"] * 2), [0.1, 0.2], 0.5)

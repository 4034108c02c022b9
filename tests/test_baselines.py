"""A healthy baseline per machine (issue 29): the pure functions of asd.monitoring.baselines
on real embeddings and served scores of real clips, and `asd baseline-curve`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from asd.monitoring.baselines import (DEFAULT_RULE, RULE_LEVELS, RULES, clip_scores, fit_threshold,
                                      leave_one_out_scores, window_scores)

from .conftest import REPO, SHIPPED_MODELS, SUBSET, full_data_or_skip

COMMITTED = REPO / "benchmarks" / "baselines" / "baselines.json"
ROW_KEYS = {"k", "window", "domain", "auc", "false_alarm_rate", "recall", "draws"}


@pytest.fixture(scope="module")
def subset_clips():
    """The subset's 18 real clips: served scores of the shipped v4 (Detector) and its
    embeddings (EmbeddingModel), as asd baseline-curve gets them."""
    from asd.measure.baseline_curve import embed_and_score

    paths = sorted((SUBSET / "train").glob("*.flac")) + sorted((SUBSET / "test").glob("*.flac"))
    got = embed_and_score(SHIPPED_MODELS, "toycar", 4, paths, log=lambda *_: None)
    return paths, got["served"], got["embeddings"]


def test_clip_scores_are_the_bank_and_the_baseline_together(subset_clips):
    paths, served, embeddings = subset_clips
    assert embeddings.shape == (len(paths), 512) and len(paths) == 18
    assert np.abs(served[:10]).max() < 1e-5 < 0.01 < served[10:].min()  # training clips are in the bank
    base = np.array([i for i, p in enumerate(paths) if "_test_normal_" in p.name])  # 4 test normals
    rest = np.array([i for i, p in enumerate(paths) if "_test_anomaly_" in p.name])
    scores = clip_scores(served[rest], embeddings[rest], embeddings[base])
    assert (scores <= served[rest] + 1e-12).all() and (scores >= 0).all()
    nearest = (1 - embeddings[rest] @ embeddings[base].T).min(axis=1)
    np.testing.assert_allclose(scores, np.minimum(served[rest], nearest), atol=1e-5)
    np.testing.assert_array_equal(clip_scores(served[rest], embeddings[rest], embeddings[:0]), served[rest])
    # a clip in its own baseline is at distance 0
    assert clip_scores(served[base[:3]], embeddings[base[:3]], embeddings[base]).max() < 1e-5
    assert clip_scores(served[base], embeddings[base], embeddings[rest]).shape == (4,)


def test_leave_one_out_scores_leave_each_clip_out(subset_clips):
    _, served, embeddings = subset_clips
    base = np.arange(10, 18)
    loo = leave_one_out_scores(served[base], embeddings[base])
    assert loo.shape == (8,) and (loo > 1e-4).all() and (loo <= served[base] + 1e-12).all()
    for i in range(8):
        others = np.delete(base, i)
        assert loo[i] == pytest.approx(clip_scores(served[base[i:i + 1]], embeddings[base[i:i + 1]],
                                                   embeddings[others])[0], abs=1e-6)
    assert np.isinf(leave_one_out_scores(np.array([np.inf]), embeddings[:1])).all()


def test_window_scores_are_running_means():
    s = np.array([0.1, 0.3, 0.2, 0.6, 0.4])
    np.testing.assert_allclose(window_scores(s, 2), [0.1, 0.2, 0.25, 0.4, 0.5])
    np.testing.assert_allclose(window_scores(s, 1), s)
    assert window_scores(s, 5)[-1] == pytest.approx(s.mean())
    with pytest.raises(ValueError):
        window_scores(s, 0)


def test_every_rule_fits_a_threshold_from_real_baseline_scores(subset_clips):
    _, served, embeddings = subset_clips
    loo = leave_one_out_scores(served[10:18], embeddings[10:18])
    other = leave_one_out_scores(served[[10, 12, 14]], embeddings[[10, 12, 14]])
    assert DEFAULT_RULE in RULES and set(RULES) == set(RULE_LEVELS)
    for rule in RULES:
        t = fit_threshold(loo, 5, rule)
        assert np.isfinite(t) and loo.min() < t, rule
        assert t == fit_threshold(loo, 5, rule, level=RULE_LEVELS[rule])
        higher = {"gamma": 0.999, "pooled_gamma": 0.999}.get(rule, RULE_LEVELS[rule] * 1.5)
        assert fit_threshold(loo, 5, rule, level=higher) > t, rule  # a larger constant, a higher threshold
        if rule in ("max_spread", "gamma", "pooled_gamma"):  # a longer window's mean strays less
            assert fit_threshold(loo, 10, rule) < fit_threshold(loo, 5, rule) < fit_threshold(loo, 1, rule)
    assert fit_threshold(loo, 5, "max_loo", level=1.0) == pytest.approx(loo.max())
    assert fit_threshold(loo, 5) == fit_threshold(loo, 5, DEFAULT_RULE)
    # the pooled rule takes its shape from the pool, its level from the machine itself
    pooled = fit_threshold(loo, 5, "pooled_gamma", pool=[loo, other])
    assert pooled != fit_threshold(loo, 5, "pooled_gamma") and loo.mean() < pooled
    assert fit_threshold(loo, 5, "pooled_gamma", pool=[loo]) == pytest.approx(fit_threshold(loo, 5, "gamma"))
    assert fit_threshold(2 * loo, 5, "pooled_gamma", pool=[loo, other]) == pytest.approx(2 * pooled)
    with pytest.raises(ValueError, match="unknown threshold rule"):
        fit_threshold(loo, 5, "median")
    with pytest.raises(ValueError, match="at least 2"):
        fit_threshold(loo[:1], 5)
    with pytest.raises(ValueError, match="quantile"):
        fit_threshold(loo, 5, "gamma", level=2.0)


def test_baseline_curve_command_on_a_handful_of_clips(tmp_path):
    """Two machines of the full set (source C2, target A1), 5 normal and 3 anomalous clips each."""
    data = full_data_or_skip()
    test = tmp_path / "ToyCar" / "test"
    test.mkdir(parents=True)
    (tmp_path / "ToyCar" / "train").mkdir()
    for pattern in ("*source_test_normal_*_car_C2_*", "*source_test_anomaly_*_car_C2_*",
                    "*target_test_normal_*_car_A1_*", "*target_test_anomaly_*_car_A1_*"):
        for path in sorted((data / "test").glob(pattern))[:5 if "normal" in pattern else 3]:
            (test / path.name).symlink_to(path)
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "asd.cli", "baseline-curve", "--model", str(SHIPPED_MODELS), "--name", "toycar",
         "--model-version", "4", "--data", str(tmp_path / "ToyCar"), "--out", str(out), "--ks", "0,2",
         "--windows", "1,2", "--draws", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((out / "baselines.json").read_text())
    rows = report["rows"]
    assert {(r["k"], r["window"], r["domain"]) for r in rows} == {
        (k, w, d) for k in (0, 2) for w in (1, 2) for d in ("source", "target")} and len(rows) == 8
    for r in rows:
        assert ROW_KEYS <= set(r), r
        assert 0 <= r["auc"] <= 1 and 0 <= r["false_alarm_rate"] <= 1 and 0 <= r["recall"] <= 1, r
        assert r["draws"] == (1 if r["k"] == 0 else 2)
        # normal clips left: 5 at k = 0, 3 at k = 2; windows of w: n - w + 1 per draw
        assert r["n_normal_windows"] == r["draws"] * ((5 if r["k"] == 0 else 3) - r["window"] + 1)
        assert r["n_anomalous_windows"] == r["draws"] * (3 - r["window"] + 1)
    by = {(r["k"], r["window"], r["domain"]): r for r in rows}
    assert by[(0, 1, "source")]["auc"] < by[(2, 1, "source")]["auc"]  # C2's baseline separates its faults
    assert report["default_rule"].startswith(DEFAULT_RULE + ":") and set(report["targets_met"]) == set(report["rules"])
    assert (out / "baselines.png").stat().st_size > 10_000 and "| k | window |" in (out / "baselines.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "asd.cli", "baseline-curve", "--model", str(SHIPPED_MODELS),
                          "--name", "toycar", "--data", str(tmp_path / "ToyCar"), "--out", str(out),
                          "--rules", "median"], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and "unknown threshold rule" in bad.stderr and "Traceback" not in bad.stderr


def test_committed_report_is_the_full_measurement_with_the_shipped_rule():
    report = json.loads(COMMITTED.read_text())
    assert report["model"]["version"] == 5 and report["n_test"] == 200  # v5: v4 with its embedding served
    assert report["ks"] == [0, 3, 5, 8] and report["windows"] == [1, 5] and report["draws"] == 10
    assert report["default_rule"] == f"{DEFAULT_RULE}:{RULE_LEVELS[DEFAULT_RULE]:g}"
    assert len(report["rows"]) == 16 and all(ROW_KEYS <= set(r) for r in report["rows"])
    assert {r["rule"] for r in report["rule_rows"]} == {f"{r}:{RULE_LEVELS[r]:g}" for r in RULES}
    by = {(r["k"], r["window"], r["domain"]): r for r in report["rows"]}
    for domain in ("source", "target"):  # a baseline and a window each help
        assert by[(8, 5, domain)]["auc"] > by[(8, 1, domain)]["auc"] > by[(0, 1, domain)]["auc"]

"""Enrolment (issue 15): the embedding read out of a shipped reference-bank SavedModel, the
bank and threshold it rebuilds, and the enrolment curve (`asd enroll-curve`)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from .conftest import REPO, SHIPPED_MODELS, SUBSET, full_data_or_skip

COMMITTED = REPO / "benchmarks" / "enrolment" / "enrolment.json"


@pytest.fixture(scope="module")
def model():
    from asd.enrolment import EmbeddingModel

    return EmbeddingModel(SHIPPED_MODELS, "toycar", 4)


def test_models_without_a_bank_are_refused():
    from asd.enrolment import EmbeddingModel, EnrolmentError

    with pytest.raises(EnrolmentError, match="conv_ae model .* has no reference bank"):
        EmbeddingModel(SHIPPED_MODELS, "toycar", 1)


def test_the_embedding_is_the_served_one(model):
    """Unit-length embeddings, the same for a clip alone or in a batch, and different clips
    apart; the bank of the full training set scores as serving_default (below)."""
    from asd.measure.enrolment_curve import _model_inputs

    clips = sorted((SUBSET / "test").glob("*.flac"))[:4]
    inputs = _model_inputs(model, clips)
    embeddings = model(inputs)
    assert embeddings.shape == (4, 512) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(model(inputs[1:2])[0], embeddings[1], atol=1e-5)
    assert np.abs(embeddings[0] - embeddings[2]).max() > 1e-3


def test_the_full_training_bank_reproduces_the_served_scores_and_threshold(model):
    """k = 0 of the enrolment curve is the shipped model itself: its 805 training clips
    embedded and banked score test clips as serving_default does, and the threshold
    refitted on them (leave-one-out, margin x gamma quantile) is the stored one."""
    from asd.data import list_clips
    from asd.enrolment import bank_threshold, enrolled_bank
    from asd.measure.enrolment_curve import _model_inputs

    data = full_data_or_skip()
    train = list_clips(data / "train")
    bank = enrolled_bank(model(_model_inputs(model, [c.path for c in train])),
                         np.array([c.domain for c in train], dtype=object), np.zeros((0, 512), np.float32), "target")
    test = sorted((data / "test").glob("*.flac"))[::25]
    inputs = _model_inputs(model, test)
    np.testing.assert_allclose(bank.scores(model(inputs)), model.serve(inputs)["patch_error"], atol=2e-6)
    stored = model.metadata.threshold["value"]
    assert bank_threshold(bank, model.metadata, len(train), "refit_all") == pytest.approx(stored, rel=1e-5)
    assert bank_threshold(bank, model.metadata, len(train), "refit_training") == pytest.approx(stored, rel=1e-5)


def test_enrolled_clips_join_the_bank_and_lower_their_own_domains_scores(model):
    from asd.enrolment import bank_threshold, enrolled_bank
    from asd.measure.enrolment_curve import _model_inputs

    train = sorted((SUBSET / "train").glob("*.flac"))
    e_train = model(_model_inputs(model, train))
    domains = np.array(["target" if "_target_" in p.name else "source" for p in train], dtype=object)
    target_normals = sorted((SUBSET / "test").glob("*target_test_normal*.flac"))
    e_new = model(_model_inputs(model, target_normals))
    base = enrolled_bank(e_train, domains, e_new[:0], "target")
    enrolled = enrolled_bank(e_train, domains, e_new[:1], "target")
    assert len(enrolled.refs) == len(base.refs) + 1 and enrolled.domains[-1] == "target"
    assert enrolled.scores(e_new[:1])[0] < 1e-5 < base.scores(e_new[:1])[0]  # an enrolled clip is normal to it
    assert enrolled.scores(e_new[1:])[0] <= base.scores(e_new[1:])[0]  # a bank that grows never scores higher
    np.testing.assert_array_equal(enrolled.scores(e_train[:3]) <= base.scores(e_train[:3]), True)
    assert bank_threshold(enrolled, model.metadata, len(train)) == model.metadata.threshold["value"]  # "base"
    assert bank_threshold(enrolled, model.metadata, len(train), "refit_all") != bank_threshold(
        enrolled, model.metadata, len(train), "refit_training")  # the enrolled clip's own score counts in one only
    with pytest.raises(ValueError, match="unknown threshold rule"):
        bank_threshold(enrolled, model.metadata, len(train), "median")


def test_enroll_curve_command_on_the_subset(tmp_path):
    out = tmp_path / "curve"
    run = subprocess.run(
        [sys.executable, "-m", "asd.cli", "enroll-curve", "--model", str(SHIPPED_MODELS), "--name", "toycar",
         "--data", str(SUBSET), "--out", str(out), "--ks", "0,1", "--draws", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**__import__("os").environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((out / "enrolment.json").read_text())
    assert [s["k"] for s in report["summary"]] == [0, 1] and [s["draws"] for s in report["summary"]] == [1, 2]
    assert report["summary"][0]["n_target_normals_scored"] == 2 and report["summary"][1]["n_target_normals_scored"] == 1
    for run_ in report["runs"]:  # an enrolled clip is never scored
        assert len(run_["enrolled"]) == run_["k"]
    assert (out / "enrolment.png").stat().st_size > 10_000 and "| k |" in (out / "enrolment.md").read_text()
    bad = subprocess.run([sys.executable, "-m", "asd.cli", "enroll-curve", "--model", str(SHIPPED_MODELS), "--name",
                          "toycar", "--model-version", "1", "--data", str(SUBSET), "--out", str(out)],
                         cwd=REPO, capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2 and bad.stderr.strip().splitlines()[-1].startswith("asd: error: ")
    assert "no reference bank" in bad.stderr and "Traceback" not in bad.stderr


def test_committed_curve_is_the_shipped_versions_and_readme_quotes_it():
    from asd.layout import versions

    report = json.loads(COMMITTED.read_text())
    assert report["model"]["version"] == max(versions(SHIPPED_MODELS / "toycar"))
    assert report["ks"] == [0, 3, 5, 10, 20, 40] and report["draws"] == 10 and report["n_test"] == 200
    assert report["check"]["max_abs_score_difference_vs_served"] < 1e-5
    assert report["check"]["threshold_refitted"] == pytest.approx(report["check"]["threshold_stored"], rel=1e-5)
    assert report["threshold_rule"] == "base" and all(report["targets"]["met"][k] for k in (
        "auc_target", "false_alarm_target", "source_no_worse"))
    readme = (REPO / "README.md").read_text()
    by_k = {s["k"]: s for s in report["summary"]}
    for k in (10, 40):
        s = by_k[k]
        assert (f"| {k} | {s['auc_target']['mean']:.3f} ± {s['auc_target']['sd']:.3f} | "
                f"{s['false_alarm_target']['mean']:.3f} ± {s['false_alarm_target']['sd']:.3f} |") in readme

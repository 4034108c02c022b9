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

    with pytest.raises(EnrolmentError, match="conv_ae model has no reference bank"):
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

    from asd.metadata import ModelMetadata

    report = json.loads(COMMITTED.read_text())
    latest = ModelMetadata.read(SHIPPED_MODELS / "toycar" / str(max(versions(SHIPPED_MODELS / "toycar"))))
    # the latest, or the version it re-exports unchanged (v5: v4 with the embedding output)
    assert report["model"]["version"] in (latest.version, (latest.reexport or {}).get("base_version"))
    assert report["ks"] == [0, 3, 5, 10, 20, 40] and report["draws"] == 10 and report["n_test"] == 200
    assert report["check"]["max_abs_score_difference_vs_served"] < 1e-5
    assert report["check"]["threshold_refitted"] == pytest.approx(report["check"]["threshold_stored"], rel=1e-5)
    assert report["threshold_rule"] == "base" and all(report["targets"]["met"][k] for k in (
        "auc_target", "false_alarm_target", "source_no_worse"))
    readme = (REPO / "docs" / "benchmarks" / "enrolment.md").read_text()  # the docs page "Enrolment"
    by_k = {s["k"]: s for s in report["summary"]}
    for k in (10, 40):
        s = by_k[k]
        assert (f"| {k} | {s['auc_target']['mean']:.3f} ± {s['auc_target']['sd']:.3f} | "
                f"{s['false_alarm_target']['mean']:.3f} ± {s['false_alarm_target']['sd']:.3f} |") in readme


# -- asd enroll: new versions ---------------------------------------------------------------

TARGET_NORMALS = sorted((SUBSET / "test").glob("*target_test_normal*.flac"))


@pytest.fixture()
def models_copy(tmp_path):
    """A models directory holding a copy of shipped v4 only (enrolments write beside it)."""
    import shutil

    root = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "toycar" / "4", root / "toycar" / "4")
    return root


def _scores(models, version, clips):
    from asd.inference import Detector
    from asd.serving import make_backend

    detector = Detector(make_backend(model_dir=str(models), name="toycar", version=version))
    return np.array([detector.score_file(c, display=False).score for c in clips]), detector


def test_enroll_writes_a_new_version_that_differs_only_in_bank_and_metadata(models_copy):
    """Served like any version: a stand-in already running picks it up at its next poll."""
    import time

    import requests

    from asd.audio import load_audio
    from asd.enrolment import enroll, pcm_sha256
    from asd.metadata import ModelMetadata
    from asd.standins.repository import ModelRepository
    from asd.standins.rest import StandInServer

    repository = ModelRepository(models_copy, poll_s=0.3)
    try:
        with StandInServer(repository) as server:
            new = enroll(models_copy, "toycar", TARGET_NORMALS[:1], "target", log=lambda *_: None)
            assert new == models_copy / "toycar" / "5"
            deadline = time.monotonic() + 30
            while repository.versions("toycar") != [4, 5] and time.monotonic() < deadline:
                time.sleep(0.1)
            status = requests.get(f"{server.url}/v1/models/toycar", timeout=5).json()["model_version_status"]
            assert sorted(int(s["version"]) for s in status) == [4, 5]
    finally:
        repository.stop_polling()
    base, enrolled = ModelMetadata.read(models_copy / "toycar" / "4"), ModelMetadata.read(new)
    assert enrolled.version == 5 and enrolled.enrolment["base_version"] == 4 and enrolled.enrolment["domain"] == "target"
    clip = load_audio(TARGET_NORMALS[0], 16000, max_seconds=60)
    assert enrolled.enrolment["clips"] == [{**enrolled.enrolment["clips"][0], "name": TARGET_NORMALS[0].name,
                                           "pcm_sha256": pcm_sha256(clip.samples)}]
    # only the bank, its unfamiliar references and the metadata's enrolment differ
    assert enrolled.threshold == base.threshold and enrolled.features == base.features
    assert enrolled.unfamiliar["threshold"] == base.unfamiliar["threshold"]
    assert enrolled.unfamiliar["n_references"] == base.unfamiliar["n_references"] + 1
    assert enrolled.training == base.training
    assert enrolled.evaluation == {**base.evaluation, "measured_on": "base version 4, before enrolment"}
    others = sorted((SUBSET / "test").glob("*.flac"))
    before, _ = _scores(models_copy, 4, others)
    after, detector = _scores(models_copy, 5, others)
    index = others.index(TARGET_NORMALS[0])
    assert after[index] < 1e-5 < before[index]  # the enrolled recording is normal to it
    assert np.all(after <= before + 1e-6)  # a larger bank never scores higher
    source = [i for i, c in enumerate(others) if "_source_" in c.name]
    np.testing.assert_allclose(after[source], before[source], atol=1e-5)  # the source bank's scores unchanged
    assert detector.metadata.version == 5


def test_bad_clips_are_refused_and_nothing_is_written(models_copy, tmp_path):
    import soundfile as sf

    from asd.enrolment import EnrolmentError, enroll

    silent = tmp_path / "silent.wav"
    sf.write(silent, np.zeros(16000 * 5, np.float32), 16000)
    short = tmp_path / "short.wav"
    sf.write(short, np.random.default_rng(0).normal(0, 0.1, 8000).astype(np.float32), 16000)
    with pytest.raises(EnrolmentError) as refused:
        enroll(models_copy, "toycar", [REPO / "README.md", silent, short, TARGET_NORMALS[0]], "target")
    for name in ("README.md", "silent.wav", "short.wav"):
        assert name in str(refused.value)
    assert sorted(p.name for p in (models_copy / "toycar").iterdir()) == ["4"]  # no version, no temporary folder


def test_clips_the_base_version_flags_need_force(models_copy):
    from asd.enrolment import EnrolmentError, enroll

    from .conftest import SAMPLE_FLAGGED

    with pytest.raises(EnrolmentError, match=r"anomalous under v4.*--force"):
        enroll(models_copy, "toycar", [SAMPLE_FLAGGED, TARGET_NORMALS[0]], "target")
    assert sorted(p.name for p in (models_copy / "toycar").iterdir()) == ["4"]
    new = enroll(models_copy, "toycar", [SAMPLE_FLAGGED], "target", force=True, log=lambda *_: None)
    from asd.metadata import ModelMetadata

    assert ModelMetadata.read(new).enrolment["clips"][0]["base_verdict"] == "anomalous"


def test_two_enrolments_at_once_get_two_whole_versions(models_copy):
    import os

    from asd.metadata import ModelMetadata

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = [subprocess.Popen([sys.executable, "-m", "asd.cli", "enroll", "--model", str(models_copy), "--name", "toycar",
                              "--domain", domain, str(clip)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for domain, clip in (("target", TARGET_NORMALS[0]), ("line-3", TARGET_NORMALS[1]))]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-1500:] for _, err in outputs]
    assert sorted(out.strip() for out, _ in outputs) == [str(models_copy / "toycar" / "5"), str(models_copy / "toycar" / "6")]
    assert sorted(p.name for p in (models_copy / "toycar").iterdir()) == ["4", "5", "6"]
    domains = {ModelMetadata.read(models_copy / "toycar" / v).enrolment["domain"] for v in ("5", "6")}
    assert domains == {"target", "line-3"}
    for version in (5, 6):  # each one whole: it loads and scores
        scores, _ = _scores(models_copy, version, TARGET_NORMALS)
        assert np.isfinite(scores).all()


def test_enroll_command_refuses_a_model_without_a_bank_in_one_line():
    run = subprocess.run([sys.executable, "-m", "asd.cli", "enroll", "--model", str(SHIPPED_MODELS), "--name", "toycar",
                          "--model-version", "1", "--domain", "target", str(TARGET_NORMALS[0])],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("asd: error: ")
    assert "no reference bank" in run.stderr and "Traceback" not in run.stderr


@pytest.fixture(scope="module")
def smote_models(tmp_path_factory):
    """A small multispec_scac with the knn_smote backend (synthetic target references
    beside the training clips), trained for one epoch on the subset and exported."""
    from asd.config import load_train_config
    from asd.train import train

    from .conftest import CONFIG

    root = tmp_path_factory.mktemp("smote")
    config = load_train_config(CONFIG, [
        f"data_dir={SUBSET}", f"models_dir={root / 'models'}", f"runs_dir={root / 'runs'}", "evaluate=false",
        "model={n_ffts: [256], fft_branch: false, crop_seconds: 4.0, backend: knn_smote, smote_ratio: 1.0, "
        "gain_normalise: true, fmax: 7000.0}", "training.epochs=1", "threshold.margin=1.0",
    ])
    train(config, log=lambda *_: None)
    return root / "models"


def test_trained_and_enrolled_versions_serve_the_embedding(smote_models):
    """A new multispec_scac export serves its clip embedding as the output ``embedding``
    (the one the bank is searched with), and so does a version enrolled into it."""
    import shutil

    import tensorflow as tf

    from asd.enrolment import EmbeddingModel, enroll
    from asd.measure.enrolment_curve import _model_inputs
    from asd.metadata import ModelMetadata

    model = EmbeddingModel(smote_models, "toycar", 1)
    assert model.metadata.outputs == ["patch_error", "frame_error", "embedding", "unfamiliarity"]
    assert "embedding" in model._output_names
    inputs = _model_inputs(model, sorted((SUBSET / "test").glob("*.flac"))[:3])
    served = model.serve(inputs)
    assert served["embedding"].shape == (3, model(inputs[:1]).shape[1]) and served["embedding"].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(served["embedding"], axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(served["embedding"], model(inputs))
    new = enroll(smote_models, "toycar", TARGET_NORMALS[:1], "target", force=True, log=lambda *_: None)
    assert ModelMetadata.read(new).outputs[-1] == "embedding"
    enrolled = tf.saved_model.load(str(new)).signatures["serving_default"](waveform=tf.constant(inputs))
    np.testing.assert_allclose(enrolled["embedding"].numpy(), served["embedding"], atol=1e-6)
    shutil.rmtree(new)  # the next test enrols into the latest: version 1 again


def test_a_knn_smote_version_takes_enrolled_clips_as_more_references(smote_models):
    from asd.enrolment import enroll

    new = enroll(smote_models, "toycar", TARGET_NORMALS[:1], "target", force=True, log=lambda *_: None)
    clips = sorted((SUBSET / "test").glob("*.flac"))
    before, _ = _scores(smote_models, 1, clips)
    after, _ = _scores(smote_models, int(new.name), clips)
    index = clips.index(TARGET_NORMALS[0])
    assert after[index] < 1e-5 < before[index]
    assert np.all(after <= before + 1e-6)


def test_backends_that_weigh_references_and_ensembles_are_refused_clearly(tmp_path):
    import shutil

    from asd.enrolment import EmbeddingModel, EnrolmentError
    from asd.metadata import ModelMetadata

    for change, message in (({"backend": "knn_rescale"}, "neighbours' density"), ({"n_models": 3}, "ensemble of 3")):
        copy = tmp_path / str(len(change)) / change.get("backend", "ensemble") / "toycar" / "4"
        shutil.copytree(SHIPPED_MODELS / "toycar" / "4", copy, ignore=shutil.ignore_patterns("variables", "*.pb"))
        meta = ModelMetadata.read(copy)
        meta.training = {**meta.training, "config": {**meta.training["config"],
                                                     "model": {**meta.training["config"]["model"], **change}}}
        meta.write(copy)
        (copy / "saved_model.pb").write_bytes(b"")  # listed as a version; refused before it is loaded
        with pytest.raises(EnrolmentError, match=message):
            EmbeddingModel(copy)


def test_a_version_enrolled_before_takes_more_clips_and_keeps_its_own(models_copy):
    """v4 -> v5 (one clip) -> v6 (another, another domain): v6 is v4's network with both
    clips in its bank; the picker says what each added."""
    from asd.enrolment import enroll
    from asd.metadata import ModelMetadata
    from asd.serving.catalog import ModelChoice

    v5 = enroll(models_copy, "toycar", TARGET_NORMALS[:1], "target", log=lambda *_: None)
    v6 = enroll(models_copy, "toycar", TARGET_NORMALS[1:2], "line-3", base_version=5, log=lambda *_: None)
    meta = ModelMetadata.read(v6)
    assert meta.enrolment["base_version"] == 5 and meta.enrolment["root_version"] == 4
    assert meta.enrolment["n_clips"] == 1 and meta.enrolment["n_clips_in_bank"] == 2
    assert meta.enrolment["base_enrolment"]["domain"] == "target"
    scores, _ = _scores(models_copy, 6, TARGET_NORMALS)
    assert (scores < 1e-5).all()  # both enrolled recordings are normal to v6
    label = ModelChoice.from_metadata("toycar", 6, True, meta).label
    assert label.endswith("; 1 clip of 'line-3' enrolled into v5"), label
    assert v5.name == "5" and v6.name == "6"


def test_the_refit_rules_write_the_threshold_the_curve_measures(models_copy):
    """--threshold-rule refit_all: the version's rule on the training clips (the knn bank)
    and the enrolled ones, each left out of its own score: the same value as the curve's
    bank_threshold gives from embeddings of the 805 training clips (benchmarks/enrolment)."""
    from asd.enrolment import EmbeddingModel, bank_threshold, enroll, enrolled_bank
    from asd.measure.enrolment_curve import _model_inputs
    from asd.metadata import ModelMetadata

    new = enroll(models_copy, "toycar", TARGET_NORMALS, "target", threshold_rule="refit_all", log=lambda *_: None)
    meta = ModelMetadata.read(new)
    assert meta.threshold["refitted"] == "refit_all" and meta.enrolment["threshold_rule"].startswith("refit_all")
    data = full_data_or_skip()
    from asd.data import list_clips

    model = EmbeddingModel(models_copy, "toycar", 4)
    train = list_clips(data / "train")
    bank = enrolled_bank(model(_model_inputs(model, [c.path for c in train])),
                         np.array([c.domain for c in train], dtype=object),
                         model(_model_inputs(model, TARGET_NORMALS)), "target")
    assert meta.threshold["value"] == pytest.approx(bank_threshold(bank, model.metadata, len(train), "refit_all"), rel=1e-4)
    assert meta.threshold["value"] != model.metadata.threshold["value"]

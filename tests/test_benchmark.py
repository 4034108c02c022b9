"""The detectors and `asd benchmark`, in a reduced run on the real subset (CI's version
of the full benchmark: fewer clips, one or two epochs, two seeds)."""

import csv
import json

import numpy as np
import pytest

from asd.measure.benchmark import held_apart_halves
from asd.cli import main
from asd.config import load_train_config
from asd.data import list_clips
from asd.detectors import DETECTORS, detector_class

from .conftest import CONFIG, REPO, SUBSET

QUICK = [
    "detectors.conv_ae.training.epochs=1",
    "detectors.dense_ae_mahalanobis.training.epochs=1",
    "detectors.knn_latent.training.epochs=1",
    "detectors.arcface.training.epochs=1",
]
REDUCED = "conv_ae,dense_ae_mahalanobis,knn_stats,gmm_stats,knn_latent,arcface"


@pytest.fixture(scope="module")
def reduced_benchmark(tmp_path_factory):
    out = tmp_path_factory.mktemp("benchmark")
    args = ["benchmark", "--data", str(SUBSET), "--detectors", REDUCED, "--out", str(out), "--seeds", "2"]
    for override in QUICK:
        args += ["--set", override]
    assert main(args) == 0
    return out, json.loads((out / "results.json").read_text())


def test_reduced_benchmark_reports_every_detector_with_honest_figures(reduced_benchmark):
    out, report = reduced_benchmark
    assert list(report["detectors"]) == REDUCED.split(",")
    for name, result in report["detectors"].items():
        runs = result["runs"]
        # neural detectors (and latent-space ones, which depend on a network) run every seed
        assert len(runs) == (2 if result["neural"] else 1), name
        for run in runs:
            for key in ("auc_source", "auc_target", "pauc", "official_score"):
                assert 0.0 <= run[key] <= 1.0
            assert run["fit_s"] >= 0 and run["score_ms_per_clip"] > 0 and run["size_bytes"] > 0
        values = [r["official_score"] for r in runs]
        assert result["official_score"]["mean"] == pytest.approx(np.mean(values))
    assert report["detectors"]["knn_latent"]["runs"][0]["info"]["autoencoder_reused"] is True
    table = (out / "results.md").read_text()
    for name in report["detectors"]:
        assert f"| `{name}` |" in table
    assert report["selection"]["best_servable"] in {"conv_ae", "dense_ae_mahalanobis", "arcface"}
    assert "Held-apart check" in table


def test_benchmark_writes_per_clip_scores_and_png_plots(reduced_benchmark):
    out, report = reduced_benchmark
    with open(out / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8 and set(rows[0]) >= {"file", "domain", "label", "half", *report["detectors"]}
    for name in report["detectors"]:
        for kind in ("roc", "scores"):
            assert (out / "plots" / f"{name}_{kind}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_held_apart_halves_split_every_domain_and_label_group():
    clips = list_clips(SUBSET, "test")
    labels = np.array([c.is_anomaly for c in clips])
    domains = np.array([c.domain for c in clips])
    half_a = held_apart_halves(labels, domains, seed=0)
    for domain in ("source", "target"):
        for label in (False, True):
            group = (domains == domain) & (labels == label)
            assert half_a[group].sum() == group.sum() // 2


def test_every_registered_detector_has_settings_and_a_description():
    for kind in DETECTORS:
        cls = detector_class(kind)
        assert cls.kind == kind and cls.description
        cls.Model()  # defaults validate


@pytest.mark.parametrize("kind, model", [
    ("dense_ae_mahalanobis", "{}"), ("arcface", "{}"), ("spectrum_adacos", "{}"),
    # trained on 4 s crops, served on whole clips, with the SMOTE backend's synthetic references
    ("multispec_scac", "{n_ffts: [256, 1024], fft_branch: false, crop_seconds: 4.0, backend: knn_smote, smote_ratio: 1.0}"),
])
def test_servable_detectors_export_what_they_score(kind, model, tmp_path):
    """Training exports every servable detector through the same path: the loaded
    SavedModel scores the test clips exactly as the detector did before export."""
    from asd.inference import Detector
    from asd.serving.inprocess import InProcessBackend
    from asd.train import train

    config = load_train_config(
        CONFIG,
        [f"data_dir={SUBSET}", f"models_dir={tmp_path / 'models'}", f"runs_dir={tmp_path / 'runs'}",
         f"detector={kind}", f"model={model}", "training.epochs=1", "training.batch_size=8"],
    )
    result = train(config, log=lambda *_: None)
    assert result.metadata.threshold["n_scores"] == 10
    detector = Detector(InProcessBackend(tmp_path / "models"))
    assert detector.metadata.detector == kind
    with open(result.run_dir / "anomaly_scores.csv") as handle:
        before_export = {row["file"]: float(row["anomaly_score"]) for row in csv.DictReader(handle)}
    served = {c.path.name: detector.score_file(c.path).score for c in list_clips(SUBSET, "test")}
    assert served.keys() == before_export.keys() and len(set(np.round(list(served.values()), 6))) > 1
    for name, score in served.items():
        assert score == pytest.approx(before_export[name], rel=1e-4, abs=1e-6)


def test_benchmark_prints_a_line_per_epoch_while_a_row_trains(tmp_path):
    """As asd train does: each epoch's line, prefixed by the row and seed, before the row's figures."""
    from asd.measure.benchmark import load_benchmark_config, run_benchmark

    config = load_benchmark_config(REPO / "development" / "configs" / "benchmark.yaml",
                                   ["detectors.conv_ae.training.epochs=2", "seeds=[7]"])
    lines = []
    run_benchmark(SUBSET, config, ["conv_ae"], tmp_path, log=lines.append)
    epochs = [line for line in lines if line.startswith("[conv_ae] seed 7: epoch ")]
    assert [line.split(":")[1].strip() for line in epochs] == ["epoch 1/2", "epoch 2/2"], lines
    assert all("loss " in line and line.endswith(" s") for line in epochs)
    figures = next(i for i, line in enumerate(lines) if line.startswith("[conv_ae] seed 7: official "))
    assert lines.index(epochs[-1]) < figures


def test_benchmark_reads_plain_names_and_mimii_test_folders(tmp_path):
    """The subset renamed: train/rec_NNN.flac (no DCASE name, no attributes; target clips
    in train/target/) and test/<domain>/normal|abnormal/NNNNNNNN.flac (MIMII): knn_stats
    gives the same figures as on the DCASE names."""
    import shutil

    plain = tmp_path / "plain"
    for i, clip in enumerate(sorted((SUBSET / "train").glob("*.flac"))):
        where = plain / "train" / ("target" if "_target_" in clip.name else "")
        where.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, where / f"rec_{i:03d}.flac")
    for i, clip in enumerate(sorted((SUBSET / "test").glob("*.flac"))):
        where = plain / "test" / ("target" if "_target_" in clip.name else "source") / (
            "abnormal" if "_anomaly_" in clip.name else "normal")
        where.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, where / f"{i:08d}.flac")
    figures = []
    for data in (SUBSET, plain):
        out = tmp_path / f"out_{data.name}"
        assert main(["benchmark", "--data", str(data), "--detectors", "knn_stats", "--out", str(out), "--seeds", "1"]) == 0
        results = json.loads((out / "results.json").read_text())
        run = results["detectors"]["knn_stats"]["runs"][0]
        figures.append([results["n_train_clips"], results["n_test_clips"],
                        *(run[k] for k in ("auc_source", "auc_target", "pauc", "official_score"))])
    assert figures[0] == figures[1] and figures[0][:2] == [10, 8]

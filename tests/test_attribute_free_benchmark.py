"""Issue 30, item 2: the attribute-free benchmark rows. A training set renamed as a user's
folder holds it, the classes a recipe learns without attributes (sub-folders,
pseudo-attributes), and `asd benchmark --update`, which runs long rows one at a time."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest

from asd.data import list_clips
from asd.detectors import load_clipset, make_detector
from asd.features import FeatureConfig
from asd.measure.renamed_view import renamed_training_set

from .conftest import REPO, SUBSET

CONFIG = REPO / "development" / "configs" / "attribute_free_benchmark.yaml"
# the multispec rows made tiny: one STFT branch of few channels, one epoch, few clips
TINY = {"n_ffts": [256], "base_channels": 4, "embedding_dim": 16, "n_subclusters": 2}


@pytest.fixture(scope="module")
def train():
    return load_clipset(list_clips(SUBSET, "train"), FeatureConfig())


def asd(*args):
    return subprocess.run([sys.executable, "-m", "asd", *map(str, args)], capture_output=True, text=True, timeout=900)


def test_the_renamed_copy_keeps_clips_and_domains_and_drops_the_attributes(train, tmp_path):
    view = renamed_training_set(train, tmp_path / "kept", keep_domains=True)
    assert len(view) == len(train) == 10
    original = {c.path.resolve(): c for c in train.clips}
    for clip, logmel in zip(view.clips, view.logmels):
        assert clip.path.name.startswith("rec_") and clip.scheme == "folders" and clip.attributes == {}
        source = original[clip.path.resolve()]
        assert clip.domain == source.domain and clip.label == "normal"
        assert logmel is train.logmels[train.clips.index(source)]
    assert sorted(view.domains) == sorted(train.domains) and "target" in view.domains

    plain = renamed_training_set(train, tmp_path / "plain", keep_domains=False)
    assert set(plain.domains) == {"source"} and all(c.attributes == {} for c in plain.clips)


def test_attribute_folders_become_the_folder_attribute(train, tmp_path):
    view = renamed_training_set(train, tmp_path, keep_domains=True, attribute_folders=("car",))
    original = {c.path.resolve(): c for c in train.clips}
    for clip in view.clips:
        source = original[clip.path.resolve()]
        assert clip.path.parent.name == f"car_{source.attributes['car']}"
        assert clip.attributes == {"folder": f"car_{source.attributes['car']}"}
    with pytest.raises(KeyError):
        renamed_training_set(train, tmp_path / "x", attribute_folders=("colour",))


def test_folder_and_pseudo_classes_carry_the_domain(train, tmp_path):
    view = renamed_training_set(train, tmp_path, keep_domains=True, attribute_folders=("car",))
    folders = make_detector("multispec_scac", train.features, {**TINY, "labels": "folders"}, {}, 13711)
    names = folders.class_names(view)
    assert names == [f"{c.domain}:{c.attributes['folder']}" for c in view.clips]
    assert len(set(names)) == len({(c.domain, c.attributes["folder"]) for c in view.clips}) >= 4

    pseudo = make_detector("multispec_scac", train.features, {**TINY, "labels": "pseudo", "pseudo_classes": 3}, {}, 13711)
    classes = pseudo.class_names(view)
    assert classes == pseudo.class_names(view)  # seeded k-means
    assert all(n.split(":")[0] == d for n, d in zip(classes, view.domains))
    assert 2 <= len({n.split(":")[1] for n in classes}) <= 3
    # the clusters follow the log-mel statistics: clips of one car sound alike
    from asd.detectors.pseudo_attributes import logmel_statistics

    stats = logmel_statistics(view.logmels)
    assert stats.shape == (10, 2 * train.features.n_mels) and np.isfinite(stats).all()


def test_benchmark_rows_run_one_at_a_time_with_update(tmp_path):
    out = tmp_path / "attribute_free"
    quick = [f"detectors.attribute_free_folders.model.{k}={json.dumps(v)}" for k, v in TINY.items()]
    quick += ["detectors.attribute_free_folders.training.epochs=1", "detectors.attribute_free_conv_ae.training.epochs=1"]
    sets = [a for q in quick for a in ("--set", q)]
    # the shipped config runs three seeds of this row; one is enough to test --update
    first = asd("benchmark", "--data", SUBSET, "--config", CONFIG, "--out", out, "--detectors", "attribute_free_folders",
                "--set", "detectors.attribute_free_folders.seeds=[13711]", *sets)
    assert first.returncode == 0, first.stderr
    assert "trains on a renamed copy: rec_XXXX names, no attributes, source/ and target/ folders, car_<value>/ folders" in first.stdout
    assert "[attribute_free_folders] seed 13711: network 1/1, epoch 1/1: loss" in first.stdout
    report = json.loads((out / "results.json").read_text())
    assert "Total run time" in (out / "results.md").read_text() and not report["updated"]
    row = report["detectors"]["attribute_free_folders"]
    assert [r["seed"] for r in row["runs"]] == [13711] and row["settings"]["renamed"]["attribute_folders"] == ["car"]

    second = asd("benchmark", "--data", SUBSET, "--config", CONFIG, "--out", out, "--detectors", "attribute_free_conv_ae",
                 "--update", *sets)
    assert second.returncode == 0, second.stderr
    report = json.loads((out / "results.json").read_text())
    assert set(report["detectors"]) == {"attribute_free_folders", "attribute_free_conv_ae"}
    assert report["detectors"]["attribute_free_folders"] == row  # kept as it was
    with open(out / "scores.csv") as handle:
        scores = list(csv.DictReader(handle))
    assert len(scores) == len(list_clips(SUBSET, "test"))
    assert all(float(s["attribute_free_folders"]) >= -1 and float(s["attribute_free_conv_ae"]) > 0 for s in scores)
    table = (out / "results.md").read_text()
    assert "| `attribute_free_folders` | yes | 13711 |" in table and "| `attribute_free_conv_ae` |" in table
    assert "scoring (clips/s)" in table
    # the run time is this run's, which trained one row only: the table says so
    assert report["updated"] and "The last run (which added rows with --update) took" in table
    assert "Total run time" not in table

    other_seeds = asd("benchmark", "--data", SUBSET, "--config", CONFIG, "--out", out, "--detectors",
                      "attribute_free_conv_ae", "--update", "--set", "seeds=[1]", *sets)
    assert other_seeds.returncode != 0
    assert other_seeds.stderr.strip().count("\n") == 0 and "other data, test clips or seeds" in other_seeds.stderr
    assert set(json.loads((out / "results.json").read_text())["detectors"]) == {"attribute_free_folders",
                                                                               "attribute_free_conv_ae"}

    # a second seed for a row already run: seed 13711's run is kept, only seed 5 trains
    more = asd("benchmark", "--data", SUBSET, "--config", CONFIG, "--out", out, "--detectors", "attribute_free_folders",
               "--update", "--set", "detectors.attribute_free_folders.seeds=[13711,5]", *sets)
    assert more.returncode == 0, more.stderr
    assert "[attribute_free_folders] seed 13711: kept from the earlier report (same settings)" in more.stdout
    assert "seed 13711: network 1/1" not in more.stdout and "[attribute_free_folders] seed 5: network 1/1" in more.stdout
    grown = json.loads((out / "results.json").read_text())["detectors"]["attribute_free_folders"]
    assert [r["seed"] for r in grown["runs"]] == [13711, 5] and grown["runs"][0] == row["runs"][0]
    with open(out / "scores.csv") as handle:
        assert [r["attribute_free_folders"] for r in csv.DictReader(handle)] == [s["attribute_free_folders"] for s in scores]
    assert "| `attribute_free_folders` | yes | 13711, 5 |" in (out / "results.md").read_text()
    # --retrain: after a change to the training code, every seed trains again
    again = asd("benchmark", "--data", SUBSET, "--config", CONFIG, "--out", out, "--detectors", "attribute_free_folders",
                "--update", "--retrain", "--set", "detectors.attribute_free_folders.seeds=[13711]", *sets)
    assert again.returncode == 0, again.stderr
    assert "kept from the earlier report" not in again.stdout and "seed 13711: network 1/1" in again.stdout
    lone = asd("benchmark", "--data", SUBSET, "--config", CONFIG, "--out", out, "--retrain", *sets)
    assert lone.returncode == 2 and lone.stderr.strip() == "asd: error: --retrain goes with --update (without it every row trains anyway)"


def test_benchmark_reads_a_users_folder_with_any_names_and_a_mimii_style_test_folder(tmp_path):
    import shutil

    from asd.data import parse_clip_name

    folder = tmp_path / "press07"
    for i, clip in enumerate(sorted((SUBSET / "train").glob("*.flac")), 1):
        domain = parse_clip_name(clip).domain
        (folder / domain).mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, folder / domain / f"2026-11-{i:02d}T10-00-00.flac")
    test = list_clips(SUBSET, "test")
    for i, clip in enumerate(test, 1):
        (folder / "test" / clip.domain / clip.label).mkdir(parents=True, exist_ok=True)
        shutil.copy(clip.path, folder / "test" / clip.domain / clip.label / f"{i:08d}.flac")

    done = asd("benchmark", "--data", folder, "--detectors", "knn_stats", "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    report = json.loads((tmp_path / "out" / "results.json").read_text())
    assert report["n_train_clips"] == 10 and report["n_test_clips"] == len(test)
    # the same clips as DCASE-named: the same figures
    dcase = asd("benchmark", "--data", SUBSET, "--detectors", "knn_stats", "--out", tmp_path / "dcase")
    assert dcase.returncode == 0, dcase.stderr
    reference = json.loads((tmp_path / "dcase" / "results.json").read_text())
    for key in ("auc_source", "auc_target", "pauc"):
        assert report["detectors"]["knn_stats"][key]["mean"] == pytest.approx(reference["detectors"]["knn_stats"][key]["mean"])

    shutil.rmtree(folder / "test")
    missing = asd("benchmark", "--data", folder, "--detectors", "knn_stats", "--out", tmp_path / "none")
    assert missing.returncode != 0 and missing.stderr.strip().count("\n") == 0
    assert "needs a labelled test/ folder" in missing.stderr and not (tmp_path / "none").exists()


def test_the_docs_show_the_attribute_free_table_as_the_benchmark_wrote_it():
    written = (REPO / "benchmarks" / "attribute_free" / "results.md").read_text()
    docs = (REPO / "docs" / "train-your-own.md").read_text()
    for line in written.splitlines():
        if line.startswith("| `") or line.startswith("Held-apart check"):
            assert line in docs, f"docs/train-your-own.md lacks the benchmark line: {line[:60]}..."


def test_asd_train_data_runs_the_best_attribute_free_row_with_domains_kept():
    """The default recipe (attribute_free.yaml, what `asd train --data` runs on any folder)
    is the best row measured with the domains kept among those that need no sub-folders
    (attribute_folders: a user may have none), its model settings unchanged."""
    import yaml

    from asd.measure.benchmark import load_benchmark_config

    report = json.loads((REPO / "benchmarks" / "attribute_free" / "results.json").read_text())
    rows = {n: r for n, r in report["detectors"].items()
            if r["settings"]["renamed"]["keep_domains"] and not r["settings"]["renamed"]["attribute_folders"]}
    best = max(rows, key=lambda n: rows[n]["official_score"]["mean"])
    recipe = yaml.safe_load((REPO / "development" / "configs" / "attribute_free.yaml").read_text())
    entry = load_benchmark_config(CONFIG).detectors[best]
    assert recipe["detector"] == entry.kind
    assert {k: recipe["model"].get(k) for k in entry.model} == entry.model
    assert recipe["training"] == entry.training.model_dump(include=set(recipe["training"]))

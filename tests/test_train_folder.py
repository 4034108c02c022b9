"""Training on a folder of one's own recordings (issue 30): `asd train --data FOLDER`
with any names, labelled test folders in MIMII's layout, bad input in one line with no
version folder left behind, and deterministic training, all on real ToyCar clips."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from .conftest import SUBSET

# The attribute-free recipe made tiny: one STFT branch of few channels, one epoch
TINY = ["training.epochs=1", "model.n_ffts=[256]", "model.base_channels=4", "model.embedding_dim=16",
        "model.n_subclusters=2"]
TRAIN_CLIPS = sorted((SUBSET / "train").glob("*.flac"))
TEST_CLIPS = sorted((SUBSET / "test").glob("*.flac"))


def asd(*args, cwd=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "asd.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


def train_args(data: Path, root: Path, *extra, sets=TINY) -> list:
    return ["train", "--data", data, "--models-dir", root / "models", "--set", f"runs_dir={root / 'runs'}",
            *[a for s in sets for a in ("--set", s)], *extra]


def one_line_error(run) -> str:
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    lines = run.stderr.strip().splitlines()
    assert lines[-1].startswith("asd: error: ") and "Traceback" not in run.stderr
    return lines[-1]


def no_version_written(root: Path) -> bool:
    models = root / "models"
    return not models.exists() or not any(p.name.isdigit() or "partial" in p.name for p in models.rglob("*") if p.is_dir())


def plain_folder(folder: Path, clips=TRAIN_CLIPS) -> Path:
    """Real clips under plain names (``rec_001.flac``...): no DCASE name, no attributes."""
    folder.mkdir(parents=True)
    for i, clip in enumerate(clips, 1):
        shutil.copy(clip, folder / f"rec_{i:03d}.flac")
    return folder


def mimii_folder(folder: Path, with_domains: bool) -> Path:
    """The subset's labelled test clips in MIMII's layout, ``[source|target/]normal|abnormal/<n>.flac``."""
    for i, clip in enumerate(TEST_CLIPS):
        domain = "target" if "_target_" in clip.name else "source"
        label = "abnormal" if "_anomaly_" in clip.name else "normal"
        where = folder / (domain if with_domains else "") / label
        where.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, where / f"{i:08d}.flac")
    return folder


def test_a_folder_of_plain_names_trains_a_served_model_with_a_training_only_threshold(tmp_path):
    """Clips named rec_001.flac... in sub-folders, no attributes, no YAML: the attribute-free
    recipe trains; the threshold comes from the training clips alone, said in the output and
    in the metadata; the version serves."""
    from asd.inference import Detector
    from asd.metadata import ModelMetadata
    from asd.serving.inprocess import InProcessBackend

    data = tmp_path / "press-07"
    plain_folder(data / "2026-11-03", TRAIN_CLIPS[:5])
    plain_folder(data / "2026-11-04", TRAIN_CLIPS[5:])
    run = asd(*train_args(data, tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "attribute_free.yaml" in run.stdout and "10 normal training clips" in run.stdout
    assert "every clip is source" in run.stdout
    assert "threshold comes from the training clips alone" in run.stdout
    version = tmp_path / "models" / "press-07" / "1"
    meta = ModelMetadata.read(version)
    assert meta.machine_type == "press-07" and meta.evaluation is None
    assert meta.threshold["labelled_test_set"] is None and "training clips alone" in meta.threshold["note"]
    assert meta.threshold["margin"] == 1.0 and meta.training["classes"] == ["source"]
    assert meta.training["config"]["model"]["labels"] == "domains" and meta.training["config"]["model"]["featex"]
    result = Detector(InProcessBackend(version)).score_file(TEST_CLIPS[0])
    assert np.isfinite(result.score)


def asset_folder(folder: Path) -> Path:
    """The subset's training clips as a plant records per asset: ``<domain>/car_<id>/rec_<n>.flac``."""
    for i, clip in enumerate(TRAIN_CLIPS, 1):
        domain, car = clip.name.split("_")[2], clip.name.split("_car_")[1].split("_")[0]
        where = folder / domain / f"car_{car}"
        where.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, where / f"rec_{i:03d}.flac")
    return folder


def test_sub_folders_named_like_attributes_are_the_classes(tmp_path):
    """car_B1/, car_A1/... under source/ and target/: the classes are domain x sub-folder
    (row attribute_free_folders), said in the output and kept in the metadata; a --set wins."""
    from asd.config import folder_train_config
    from asd.metadata import ModelMetadata

    data = asset_folder(tmp_path / "toycars")
    run = asd(*train_args(data, tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "the classes domain x sub-folder (car_A1, car_A2, car_B1, car_B2, ...;" in run.stdout
    meta = ModelMetadata.read(tmp_path / "models" / "toycars" / "1")
    cars = {(c.name.split("_")[2], "car_" + c.name.split("_car_")[1].split("_")[0]) for c in TRAIN_CLIPS}
    assert meta.training["classes"] == sorted(f"{d}:{car}" for d, car in cars)
    assert meta.training["config"]["model"]["labels"] == "folders" and not meta.training["config"]["model"]["featex"]

    config, recipe = folder_train_config(data, None, None, ["model.labels=domains", "model.featex=true"])
    assert config.model["labels"] == "domains" and config.model["featex"] is True
    # a folder of one asset's clips has no sub-folder to take: the domains (and FeatEx)
    config, recipe = folder_train_config(data / "target" / "car_A1", None)
    assert config.model["labels"] == "domains" and recipe.endswith("attribute_free.yaml")


def test_a_mimii_style_test_folder_evaluates_as_the_dcase_names_do(trained_model, tmp_path):
    """normal/ and abnormal/ folders (with source/ and target/ above them) give the same
    figures as the same clips under their DCASE names; without domain folders every clip
    is source; asd evaluate reads both layouts."""
    from asd.evaluation import evaluate_directory
    from asd.inference import Detector
    from asd.serving.inprocess import InProcessBackend

    models_dir, _ = trained_model
    detector = Detector(InProcessBackend(models_dir))
    dcase, _ = evaluate_directory(detector, SUBSET)
    with_domains, rows = evaluate_directory(detector, mimii_folder(tmp_path / "fan_domains", with_domains=True))
    assert {c.scheme for c, *_ in rows} == {"folders"} and len(rows) == 8
    for key in ("auc_source", "auc_target", "pauc", "official_score", "precision", "recall", "n_clips"):
        assert with_domains[key] == dcase[key], key
    plain = mimii_folder(tmp_path / "fan" / "id_00", with_domains=False).parent
    run = asd("evaluate", "--model", models_dir, "--data", plain, "--json", tmp_path / "m.json")
    assert run.returncode == 0, run.stderr[-2000:]
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert metrics["n_clips"] == 8 and metrics["auc_target"] is None and 0 <= metrics["auc_source"] <= 1
    assert set(metrics["sections"]) == {"00"}  # id_00: MIMII's machine id as the section


def test_an_empty_folder_is_one_line(tmp_path):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "notes.txt").write_text("no audio here")
    line = one_line_error(asd(*train_args(tmp_path / "empty", tmp_path)))
    assert "no .wav or .flac clips" in line and no_version_written(tmp_path)
    line = one_line_error(asd(*train_args(tmp_path / "missing", tmp_path)))
    assert "no such folder" in line


def test_too_few_usable_clips_says_how_many(tmp_path):
    data = plain_folder(tmp_path / "few", TRAIN_CLIPS[:2])
    (data / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    line = one_line_error(asd(*train_args(data, tmp_path)))
    assert "2 usable normal training clips (1 of 3 could not be used)" in line and "needs at least 3" in line
    assert no_version_written(tmp_path)


def test_unreadable_short_resampled_and_shorter_clips(tmp_path):
    """Unusable clips are listed and skipped with a count (refused with --strict, one line,
    nothing written); a clip at 44.1 kHz is resampled with a note; clips of other lengths
    get the rule stated."""
    data = plain_folder(tmp_path / "mixed", TRAIN_CLIPS[:6])
    (data / "broken.wav").write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    (data / "empty.flac").write_bytes(b"")
    samples, rate = sf.read(TRAIN_CLIPS[6], dtype="float32")
    sf.write(data / "blip.flac", samples[: rate // 2], rate)  # 0.5 s: shorter than one patch
    sf.write(data / "half.flac", samples[: 6 * rate], rate)  # 6 s
    import librosa

    sf.write(data / "at_44k.wav", librosa.resample(samples, orig_sr=rate, target_sr=44100), 44100)

    line = one_line_error(asd(*train_args(data, tmp_path, "--strict")))
    assert "3 of 11 training clips cannot be used (--strict refuses them)" in line
    assert all(name in line for name in ("broken.wav", "empty.flac", "blip.flac"))
    assert no_version_written(tmp_path)

    run = asd(*train_args(data, tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    out = run.stdout
    assert "note: skipped 3 of 11 training clips that cannot be used" in out and "blip.flac" in out
    assert "16000 Hz (7 clips), 44100 Hz (1 clip): every clip is resampled to 16000 Hz" in out
    assert "clips are 6.00 to 12.00 s long; the model takes 12 s of each" in out
    assert "a shorter one zero-padded (1 here)" in out
    assert (tmp_path / "models" / "mixed" / "1" / "saved_model.pb").is_file()


class TrainResultStandIn:
    def __init__(self, version_dir: Path):
        from asd.metadata import ModelMetadata

        self.version_dir, self.metadata = version_dir, ModelMetadata.read(version_dir)


def test_training_is_deterministic_on_cpu(tmp_path):
    """The same tiny config and seed, trained twice on the subset (one epoch), in this
    process and in a new one: the same weights, to the bit, the same threshold and scores.
    (Measured on this machine: with op determinism off the full recipe was already
    reproducible; it stays on while training as TensorFlow's guarantee.)"""
    import tensorflow as tf

    from asd.audio import load_audio
    from asd.config import folder_train_config
    from asd.features import fit_waveform
    from asd.train import train

    sets = [*TINY, "evaluate=false", "model.clip_seconds=4"]
    config, _ = folder_train_config(SUBSET, "toycar", None, [*sets, f"models_dir={tmp_path / 'a'}",
                                    f"runs_dir={tmp_path / 'runs'}"])
    results = [train(config, log=lambda *_: None)]
    # the rerun in a process of its own, as asd train reruns it
    run = asd(*train_args(SUBSET, tmp_path / "b", "--name", "toycar", sets=sets))
    assert run.returncode == 0, run.stderr[-2000:]
    results.append(TrainResultStandIn(tmp_path / "b" / "models" / "toycar" / "1"))
    # the variables, each as its values' bytes (their checkpoint keys follow layer names,
    # which count on within a process), and the served outputs on real clips
    def variables(version_dir):
        reader = tf.train.load_checkpoint(str(version_dir / "variables" / "variables"))
        return sorted(reader.get_tensor(k).tobytes() for k in reader.get_variable_to_shape_map()
                      if k.startswith("_all_variables/"))

    first, second = (variables(r.version_dir) for r in results)
    assert len(first) > 10 and first == second
    waveforms = tf.constant(np.stack([fit_waveform(load_audio(c, 16000).samples, 4 * 16000, 16000)[0] for c in TEST_CLIPS]))
    outputs = [tf.saved_model.load(str(r.version_dir)).signatures["serving_default"](waveform=waveforms) for r in results]
    for key in ("patch_error", "embedding"):
        np.testing.assert_array_equal(outputs[0][key].numpy(), outputs[1][key].numpy())
    assert results[0].metadata.threshold["value"] == results[1].metadata.threshold["value"]
    assert len(results[1].metadata.training["classes"]) > 2  # the DCASE folder kept its attribute classes


def test_train_needs_data_or_config():
    line = one_line_error(asd("train"))
    assert "--data FOLDER" in line and "--config YAML" in line

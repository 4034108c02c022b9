"""Training progress in words: one line per epoch of every neural detector, a line before
and after the fit of a classical one, on the real clips of tests/data."""

import re

import numpy as np
import subprocess
import sys

import pytest

from asd.config import TrainingSettings
from asd.data import list_clips
from asd.detectors import load_clipset, make_detector
from asd.features import FeatureConfig

from .conftest import CONFIG, SUBSET

SECONDS = r"\d+\.\d s"
LOSS = r"-?\d+\.\d{4}"


@pytest.fixture(scope="module")
def train_set():
    return load_clipset(list_clips(SUBSET, split="train"), FeatureConfig())


def test_asd_train_prints_one_line_per_epoch_of_conv_ae(tmp_path):
    overrides = [f"data_dir={SUBSET}", "detector=conv_ae", "model={filters: [8, 16, 16], latent_dim: 8}",
                 "training.epochs=2", "training.early_stopping_patience=2", "evaluate=false"]
    run = subprocess.run([sys.executable, "-m", "asd.cli", "train", "--config", str(CONFIG),
                          *[a for o in overrides for a in ("--set", o)]],
                         capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    epochs = [line for line in lines if line.startswith("epoch ")]
    assert len(epochs) == 2, run.stdout
    for i, line in enumerate(epochs, 1):  # the autoencoders hold clips out: val_loss too
        assert re.fullmatch(rf"epoch {i}/2: loss {LOSS}, val_loss {LOSS}, {SECONDS}", line), line
    # in order: after "training conv_ae", before the threshold; Keras's own lines are gone
    training = next(i for i, line in enumerate(lines) if line.startswith("training conv_ae"))
    threshold = next(i for i, line in enumerate(lines) if line.startswith("decision threshold"))
    assert training < lines.index(epochs[0]) < lines.index(epochs[1]) < threshold
    assert "Epoch 1/2" not in run.stdout


def test_arcface_logs_each_epoch_without_a_validation_loss(train_set):
    lines = []
    detector = make_detector("arcface", FeatureConfig(), {"filters": [8, 8, 8], "embedding_dim": 16},
                             TrainingSettings(epochs=2, batch_size=64), seed=1)
    detector.fit(train_set, log=lines.append)
    assert len(lines) == 2, lines
    for i, line in enumerate(lines, 1):  # no clips held out: no val_loss
        assert re.fullmatch(rf"epoch {i}/2: loss {LOSS}, {SECONDS}", line), line


def test_spectrum_adacos_logs_each_epoch_of_each_network(train_set):
    lines = []
    detector = make_detector("spectrum_adacos", FeatureConfig(), {"n_models": 2, "filters": [8, 8, 16], "pool": 4},
                             TrainingSettings(epochs=2, batch_size=8), seed=1)
    detector.fit(train_set, log=lines.append)
    assert [line.split(":")[0] for line in lines] == [
        "network 1/2, epoch 1/2", "network 1/2, epoch 2/2", "network 2/2, epoch 1/2", "network 2/2, epoch 2/2"]
    assert all(re.fullmatch(rf"network \d/2, epoch \d/2: loss {LOSS}, {SECONDS}", line) for line in lines), lines


def test_a_classical_detector_logs_the_start_and_the_duration_of_its_fit(train_set, capsys):
    lines = []
    make_detector("lof", FeatureConfig(), {"space": "stats"}, TrainingSettings(), seed=1).fit(train_set, log=lines.append)
    assert lines[0] == f"fitting lof on {len(train_set)} clips' stats vectors (256 dimensions) ..."
    assert re.fullmatch(rf"fitted lof in {SECONDS}", lines[1]) and len(lines) == 2, lines
    make_detector("gmm", FeatureConfig(), {"space": "stats"}, TrainingSettings(), seed=1).fit(train_set, log=None)
    assert capsys.readouterr().out == ""  # asd benchmark's quiet fits


def test_fewer_examples_than_batch_size_still_train(train_set):
    """A batch larger than the training set (oversampled) is cut to it: the network
    trains (finite loss), instead of running no batch at all and staying untrained."""
    lines = []
    detector = make_detector("spectrum_adacos", FeatureConfig(), {"n_models": 1, "filters": [8, 8, 16], "pool": 4},
                             TrainingSettings(epochs=1, batch_size=4096), seed=1)
    detector.fit(train_set, log=lines.append)
    loss = float(re.search(r"loss (\S+),", lines[0]).group(1))
    assert np.isfinite(loss), lines

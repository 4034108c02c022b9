"""Shared fixtures: the real data subset shipped in tests/data, the full ToyCar set in
../shared/data when present, and one small model trained on the subset per test run."""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import pytest

from asd.processes import free_port  # noqa: F401  (tests import it from here)

REPO = Path(__file__).resolve().parents[1]
SUBSET = REPO / "tests" / "data" / "ToyCar"
SAMPLES = REPO / "production" / "samples" / "ToyCar"
SHIPPED_MODELS = REPO / "production" / "models"
CONFIG = REPO / "development" / "configs" / "toycar.yaml"
FULL_DATA_ROOT = Path(os.environ.get("ASD_DATA_DIR") or REPO.parent / "shared" / "data")
FULL_TOYCAR = FULL_DATA_ROOT / "dcase2023t2" / "dev_data" / "ToyCar"

SAMPLE_NORMAL = SAMPLES / "section_00_source_test_normal_0001_car_B2_spd_31V_mic_1.wav"
SAMPLE_ANOMALY = SAMPLES / "section_00_source_test_anomaly_0001_car_B1_spd_31V_mic_1.wav"
# An anomaly the shipped default version flags (SAMPLE_ANOMALY is one it misses).
SAMPLE_FLAGGED = SAMPLES / "section_00_target_test_anomaly_0050_car_E2_spd_37V_mic_2.wav"
# The same recording as SAMPLE_ANOMALY, as the dataset's FLAC (bit-identical samples).
SUBSET_FLAC_OF_SAMPLE = SUBSET / "test" / "section_00_source_test_anomaly_0001_car_B1_spd_31V_mic_1.flac"
# Real clips of machines a ToyCar model never heard (tests/data/README.md)
OTHER_MACHINE_CLIPS = sorted((REPO / "tests" / "data" / "other_machine_types").glob("*/*.flac"))


@pytest.fixture
def silent_port():
    """A port whose server accepts connections and never says a word (a hung server)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    accepted = []  # held, so each connection stays open and silent
    threading.Thread(target=lambda: accepted.append(listener.accept()), daemon=True).start()
    yield listener.getsockname()[1]
    for connection, _ in accepted:
        connection.close()
    listener.close()


def full_data_or_skip() -> Path:
    if not (FULL_TOYCAR / "test").is_dir():
        pytest.skip(f"needs the full ToyCar set at {FULL_TOYCAR} (../shared/data); absent on this machine")
    return FULL_TOYCAR


@pytest.fixture(scope="session")
def trained_model(tmp_path_factory):
    """A convolutional autoencoder trained for 2 epochs on the 10 real training clips of the subset,
    evaluated on its 8 test clips and exported: ``(models_dir, TrainResult)``."""
    from asd.config import load_train_config
    from asd.train import train

    root = tmp_path_factory.mktemp("trained")
    config = load_train_config(
        CONFIG,
        [
            f"data_dir={SUBSET}",
            f"models_dir={root / 'models'}",
            f"runs_dir={root / 'runs'}",
            "detector=conv_ae",
            "model={filters: [16, 32, 64], latent_dim: 32}",
            "training.epochs=2",
            "training.batch_size=64",
        ],
    )
    result = train(config, log=lambda *_: None)
    return root / "models", result


@pytest.fixture(scope="session")
def waveform_model(tmp_path_factory) -> Path:
    """A small whole-clip spectrum detector (signature input ``waveform``) trained for one
    epoch on the subset and exported: its models directory."""
    from asd.config import load_train_config
    from asd.train import train

    root = tmp_path_factory.mktemp("waveform")
    config = load_train_config(CONFIG, [
        f"data_dir={SUBSET}", f"models_dir={root / 'models'}", f"runs_dir={root / 'runs'}", "evaluate=false",
        "detector=spectrum_adacos", "model={n_models: 2, filters: [16, 16, 32], pool: 4}", "training.epochs=1",
    ])
    train(config, log=lambda *_: None)
    return root / "models"


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server for the session (:mod:`tests.postgres`); skips without
    one unless ``ASD_REQUIRE_POSTGRES=1`` (CI), where it fails."""
    from .postgres import PostgresServer, postgres_bin

    if postgres_bin() is None:
        if os.environ.get("ASD_REQUIRE_POSTGRES") == "1":
            pytest.fail("ASD_REQUIRE_POSTGRES=1 but PostgreSQL is not installed (apt-get install -y postgresql)")
        pytest.skip("PostgreSQL is not installed (apt-get install -y postgresql)")
    server = PostgresServer()
    yield server
    server.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """An empty monitoring database: a new SQLite file, or a new database on the real
    PostgreSQL server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'monitoring.db'}"
    return request.getfixturevalue("postgres").new_database()

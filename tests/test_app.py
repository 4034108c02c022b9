"""The Streamlit app driven with Streamlit's AppTest: real uploads, real model."""

import subprocess
import sys

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from .conftest import REPO, SAMPLE_ANOMALY, SAMPLE_NORMAL, SHIPPED_MODELS

APP = str(REPO / "production" / "app" / "streamlit_app.py")
TIMEOUT = 180  # the first librosa call compiles with numba


@pytest.fixture
def app(monkeypatch):
    def start(**env):
        for key in ("ASD_SERVING_URL", "ASD_MODEL_DIR", "ASD_MODEL_NAME"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        st.cache_resource.clear()  # one detector per process: start each test afresh
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.run()
        return at

    yield start
    st.cache_resource.clear()


def _texts(elements):
    return " ".join(e.value for e in elements)


def test_uploading_a_real_anomaly_clip_shows_score_plot_and_verdict(app):
    at = app(ASD_MODEL_DIR=SHIPPED_MODELS)
    assert not at.exception and not at.error
    assert "toycar" in _texts(at.sidebar.markdown)
    at.file_uploader[0].upload(SAMPLE_ANOMALY.name, SAMPLE_ANOMALY.read_bytes(), "audio/wav").run()
    assert not at.exception
    verdicts = [e.value for e in [*at.error, *at.success] if "Verdict" in e.value]
    assert len(verdicts) == 1 and ("**anomalous**" in verdicts[0] or "**normal**" in verdicts[0])
    labels = {m.label: m.value for m in at.metric}
    assert set(labels) == {"Anomaly score", "Decision threshold", "Margin"}
    assert float(labels["Anomaly score"]) > 0
    assert len(at.get("plotly_chart")) == 2
    assert len(at.get("audio")) == 1


def test_sample_clip_can_be_picked_without_uploading(app):
    at = app(ASD_MODEL_DIR=SHIPPED_MODELS)
    at.selectbox[0].select(SAMPLE_NORMAL.name).run()
    assert not at.exception
    assert any("Verdict" in e.value for e in [*at.error, *at.success])


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty"),
        (b"this is a text file, renamed .wav\n" * 30, "not a readable WAV or FLAC"),
        (SAMPLE_NORMAL.read_bytes()[:60000], "truncated"),
    ],
    ids=["empty", "text renamed .wav", "truncated wav"],
)
def test_bad_uploads_get_a_clear_message_and_the_app_keeps_working(app, data, message):
    at = app(ASD_MODEL_DIR=SHIPPED_MODELS)
    at.file_uploader[0].upload("bad.wav", data, "audio/wav").run()
    assert not at.exception
    assert message in _texts(at.error) and "cannot be checked" in _texts(at.error)
    at.file_uploader[0].clear().upload(SAMPLE_NORMAL.name, SAMPLE_NORMAL.read_bytes(), "audio/wav").run()
    assert not at.exception and any("Verdict" in e.value for e in [*at.error, *at.success])


def test_app_through_rest_against_the_stand_in_server(app, trained_model):
    from asd.serving.standin import StandInServer

    models_dir, _ = trained_model
    with StandInServer(models_dir) as server:
        at = app(ASD_SERVING_URL=server.url, ASD_MODEL_NAME="toycar")
        assert "TF Serving REST" in _texts(at.sidebar.caption)
        at.file_uploader[0].upload(SAMPLE_ANOMALY.name, SAMPLE_ANOMALY.read_bytes(), "audio/wav").run()
        assert any("Verdict" in e.value for e in [*at.error, *at.success])
    # the server is gone: the next clip gets a message, not a crash
    at.file_uploader[0].clear().upload(SAMPLE_NORMAL.name, SAMPLE_NORMAL.read_bytes(), "audio/wav").run()
    assert not at.exception and "model server failed" in _texts(at.error)


def test_missing_backend_configuration_is_explained(app):
    at = app()
    assert not at.exception
    assert "set ASD_SERVING_URL" in _texts(at.error)


def test_app_path_imports_without_tensorflow():
    code = (
        "import sys, asd.audio, asd.features, asd.inference, asd.serving, asd.serving.rest, asd.metadata, asd.scoring;"
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0

"""The Streamlit app driven with Streamlit's AppTest: real uploads, real models."""

import io
import json
import shutil
import socket
import threading
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import streamlit as st
from streamlit.testing.v1 import AppTest

from asd.inference import Detector
from asd.serving.inprocess import InProcessBackend

from .conftest import REPO, SAMPLE_ANOMALY, SAMPLE_NORMAL, SHIPPED_MODELS, SUBSET

APP = str(REPO / "production" / "app" / "streamlit_app.py")
TIMEOUT = 180  # the first librosa call compiles with numba


@pytest.fixture
def app(monkeypatch):
    def start(**env):
        for key in ("ASD_SERVING_URL", "ASD_MODEL_DIR", "ASD_MODEL_NAME", "ASD_MODELS_CONFIG", "ASD_MODEL_VERSION"):
            monkeypatch.delenv(key, raising=False)
        for key, value in env.items():
            monkeypatch.setenv(key, str(value))
        st.cache_resource.clear()  # detectors are per process: start each test afresh
        st.cache_data.clear()
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.run()
        return at

    yield start
    st.cache_resource.clear()
    st.cache_data.clear()


@pytest.fixture(scope="module")
def two_versions(trained_model, tmp_path_factory):
    """toycar v1: the conv autoencoder trained on the subset; v2: a copy of the shipped default (a waveform model)."""
    models_dir, result = trained_model
    root = tmp_path_factory.mktemp("two_versions") / "models"
    shutil.copytree(result.version_dir, root / "toycar" / "1")
    shipped = max((SHIPPED_MODELS / "toycar").iterdir(), key=lambda p: int(p.name))
    shutil.copytree(shipped, root / "toycar" / "2")
    return root


def _texts(elements):
    return " ".join(e.value for e in elements)


def _verdicts(at):
    return [e.value for e in [*at.error, *at.warning, *at.success] if e.value.startswith("Verdict")]


def _upload(at, *paths):
    uploader = at.file_uploader[0].clear()
    for path in paths:
        uploader.upload(path.name, path.read_bytes(), "audio/wav")
    return uploader.run()


def test_uploading_one_clip_shows_verdict_gauge_plots_and_status(app):
    at = app(ASD_MODEL_DIR=SHIPPED_MODELS)
    assert not at.exception and not at.error
    assert "toycar" in _texts(at.sidebar.markdown)
    _upload(at, SAMPLE_ANOMALY)
    assert not at.exception
    verdicts = _verdicts(at)
    assert len(verdicts) == 1 and SAMPLE_ANOMALY.name in verdicts[0]
    assert "above the decision threshold" in verdicts[0] or "below the decision threshold" in verdicts[0]
    assert " x threshold**" in verdicts[0]  # the score as a multiple of the threshold, its unit in words
    # the verdict at a glance: one word in large type and its colour, the sentence's verdict
    word = "anomalous" if "sounds **anomalous**" in verdicts[0] else "normal"
    assert f"## :{'red' if word == 'anomalous' else 'green'}[{word.upper()}]" in [m.value for m in at.markdown]
    # the shipped model's quality in words, from its evaluation (asd evaluate: 22 of 100
    # anomalies flagged, 10 of 100 normal clips)
    assert ("On its 200 test recordings it caught **22 of 100** faulty machines and raised **10 false alarms per "
            "100** healthy ones.") in _texts(at.sidebar.markdown)
    labels = {m.label: m.value for m in at.metric}
    assert set(labels) == {"Anomaly score", "Raw anomaly score", "Decision threshold (raw)"}
    relative, unit = labels["Anomaly score"].split(" ", 1)
    assert unit == "x threshold"
    raw, threshold = float(labels["Raw anomaly score"]), float(labels["Decision threshold (raw)"])
    assert float(relative) == pytest.approx(raw / threshold, abs=0.006)  # shown with 2 decimals
    assert (float(relative) > 1) == (word == "anomalous")
    # gauge, error over time, log-mel heatmap (the shipped whole-clip model reconstructs nothing)
    assert len(at.get("plotly_chart")) == 3
    assert len(at.get("audio")) == 1
    status = _texts(at.sidebar.markdown)
    assert "in-process" in status and "last request:" in status and "ms" in status


def test_many_clips_give_a_table_with_csv_and_details_for_the_chosen_clip(app):
    at = app(ASD_MODEL_DIR=SHIPPED_MODELS)
    _upload(at, SAMPLE_NORMAL, SAMPLE_ANOMALY)
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == ["file", "anomaly score (x threshold)", "verdict"]
    assert set(table["file"]) == {SAMPLE_NORMAL.name, SAMPLE_ANOMALY.name}
    assert set(table["verdict"]) <= {"normal", "anomalous"}
    # each row's verdict is its score against the threshold, 1.0
    assert all((row["anomaly score (x threshold)"] > 1) == (row["verdict"] == "anomalous") for _, row in table.iterrows())
    assert len(at.get("download_button")) == 1  # its raw columns: tests/test_browser.py downloads it
    # the details selector lists the clips most anomalous first and shows the chosen one
    details = at.selectbox(key="details")
    ranked = table.sort_values("anomaly score (x threshold)", ascending=False)["file"].tolist()
    assert details.options == ranked
    details.select(ranked[-1]).run()
    assert ranked[-1] in _verdicts(at)[0]


def _best_evaluated(models_dir, name="toycar"):
    """The version a user should be offered: the best stored official score, latest on ties."""
    scored = [(json.loads((v / "assets.extra" / "asd_metadata.json").read_text()).get("evaluation") or {}, int(v.name))
              for v in (models_dir / name).iterdir()]
    return max((e["official_score"], v) for e, v in scored if "official_score" in e)[1]


def test_model_picker_lists_every_served_version_and_v1_explains_with_heatmaps(app, two_versions):
    at = app(ASD_MODEL_DIR=two_versions)
    picker = at.selectbox(key="model_choice")
    best = _best_evaluated(two_versions)
    assert [o.split(":")[0] for o in picker.options] == [
        "toycar v2 (latest" + (", recommended)" if best == 2 else ")"), "toycar v1" + (" (recommended)" if best == 1 else "")]
    # each version with its detector kind in words
    assert picker.options[0].endswith(": whole-clip spectrum embeddings + nearest neighbours")
    assert picker.options[1].endswith(": convolutional autoencoder, scores frame by frame")
    assert picker.value.version == best  # the picker starts on the recommended version
    assert f"toycar v{best} is recommended: the best official DCASE score" in _texts(at.sidebar.caption)
    picker.select_index(0).run()
    assert "multispec_scac" in _texts(at.sidebar.markdown)  # the shipped default's detector
    picker.select_index(1).run()
    assert "conv_ae" in _texts(at.sidebar.markdown) and "version 1" in _texts(at.sidebar.markdown)
    _upload(at, SAMPLE_ANOMALY)
    assert not at.exception and len(_verdicts(at)) == 1
    # gauge, error over time, log-mel, reconstruction, error map
    assert len(at.get("plotly_chart")) == 5
    assert "model: toycar version 1" in _texts(at.sidebar.markdown)


def test_sample_clips_can_be_picked_without_uploading(app):
    at = app(ASD_MODEL_DIR=SHIPPED_MODELS)
    at.radio(key="source").set_value("Sample clips").run()
    at.multiselect(key="samples").select(SAMPLE_NORMAL.name).run()
    assert not at.exception
    assert len(_verdicts(at)) == 1


def test_samples_follow_the_stated_rule_and_the_sidebar_says_what_the_threshold_did(app):
    """Samples: the lowest file number per domain and label (the target anomaly 0050 in
    production/samples is not offered), the rule on the page; the sidebar's sentence per
    domain from the served version's stored evaluation (v5 carries v4's: said so)."""
    from asd.data import parse_clip_name
    from asd.metadata import ModelMetadata

    at = app(ASD_MODEL_DIR=SHIPPED_MODELS)
    at.radio(key="source").set_value("Sample clips").run()
    options = at.multiselect(key="samples").options
    keys = [(c.section, c.domain, c.label) for c in map(parse_clip_name, options) if "car_" in c.path.name]
    assert len(keys) == len(set(keys)) == 4 and all(name.split("_")[5] == "0001" for name in options if "car_" in name)
    assert "lowest-numbered clip of each domain and label" in _texts(at.caption)
    meta = ModelMetadata.read(max((SHIPPED_MODELS / "toycar").iterdir(), key=lambda p: int(p.name)))
    sidebar = _texts(at.sidebar.markdown)
    assert "What the threshold means on known data" in sidebar
    for domain, d in meta.evaluation["sections"]["00"]["per_domain"].items():
        sentence = (f"{domain} domain: on the ToyCar test set it caught {d['n_anomaly_flagged']} of {d['n_anomaly']} "
                    f"faults and flagged {d['n_normal_flagged']} of {d['n_normal']} healthy clips")
        assert sentence in sidebar
    if meta.reexport:
        assert f"(measured on v{meta.reexport['base_version']})" in sidebar


def test_a_version_without_a_stored_evaluation_says_so(app, tmp_path):
    from asd.metadata import METADATA_FILE

    models = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "toycar" / "4", models / "toycar" / "4")
    meta_path = models / "toycar" / "4" / METADATA_FILE
    values = json.loads(meta_path.read_text())
    values["evaluation"] = None
    meta_path.write_text(json.dumps(values))
    at = app(ASD_MODEL_DIR=models)
    assert not at.exception
    assert "No evaluation on labelled clips is stored with this version" in _texts(at.sidebar.markdown)


def test_a_multichannel_file_gets_a_channel_selector(app):
    """An 8-channel WAVE_FORMAT_EXTENSIBLE file of 8 real clips: averaged by default (noted);
    picking channel 3 scores that clip alone."""
    clips = sorted((SUBSET / "test").glob("*.flac"))
    channels = np.stack([sf.read(p, dtype="float32")[0] for p in clips], axis=1)
    wavex = io.BytesIO()
    sf.write(wavex, channels, 16000, format="WAVEX", subtype="PCM_16")
    at = app(ASD_MODEL_DIR=SHIPPED_MODELS)
    at.file_uploader[0].clear().upload("recorder.wav", wavex.getvalue(), "audio/wav").run()
    assert not at.exception
    assert any("downmixed 8 channels to mono" in i.value for i in at.info)
    averaged = _verdicts(at)
    at.selectbox(key="channel").set_value(3).run()
    assert not at.exception
    assert any("used channel 3 of 8" in i.value for i in at.info)
    picked = _verdicts(at)
    alone = Detector(InProcessBackend(SHIPPED_MODELS, "toycar")).score_file(clips[2])
    assert f"{alone.score:.4f}" in picked[0] and picked != averaged


def test_a_microphone_recording_is_checked(app):
    at = app(ASD_MODEL_DIR=SHIPPED_MODELS)
    at.radio(key="source").set_value("Record with the microphone").run()
    samples, rate = sf.read(SAMPLE_NORMAL, dtype="float32")
    wav = io.BytesIO()
    sf.write(wav, samples, rate, format="WAV")  # st.audio_input returns a 16 kHz WAV
    recorder = at.get("audio_input")[0]
    assert recorder.sample_rate == 16000  # the rate the models take: no resampling
    recorder.set_value(("recording.wav", wav.getvalue(), "audio/wav")).run()
    assert not at.exception
    verdicts = _verdicts(at)
    assert len(verdicts) == 1 and "microphone recording" in verdicts[0]


def test_app_through_rest_against_the_stand_in_server(app, two_versions):
    from asd.standins.rest import StandInServer

    config = REPO / "production" / "serving" / "models.config"
    with StandInServer(two_versions) as server:
        env = {"ASD_SERVING_URL": server.url}
        env.update({"ASD_MODELS_CONFIG": config} if config.is_file() else {"ASD_MODEL_NAME": "toycar"})
        at = app(**env)
        assert [o.split(" (")[0].split(":")[0] for o in at.selectbox(key="model_choice").options] == [
            "toycar v2", "toycar v1"]
        assert "TF Serving (REST)" in _texts(at.sidebar.markdown) and "reachable" in _texts(at.sidebar.markdown)
        _upload(at, SAMPLE_ANOMALY)
        assert len(_verdicts(at)) == 1
    # the server is gone: the next clip gets a message, not a crash, and the status says so
    # (the request fails, or, when the last status answer is over STATUS_TTL_S old, the probe)
    _upload(at, SAMPLE_NORMAL)
    assert not at.exception
    assert "model server failed" in _texts(at.error) or "The models are not available" in _texts(at.error)
    assert "not reachable" in _texts(at.sidebar.markdown)


def test_app_starts_while_the_server_is_down_and_offers_to_try_again(app):
    at = app(ASD_SERVING_URL="http://127.0.0.1:9", ASD_MODEL_NAME="toycar")
    assert not at.exception
    assert "not reachable" in _texts(at.error) and "not reachable" in _texts(at.sidebar.markdown)
    assert at.button[0].label == "Try again"


def test_missing_backend_configuration_is_explained(app):
    at = app()
    assert not at.exception
    assert "set ASD_SERVING_URL" in _texts(at.error)


def test_app_path_imports_without_tensorflow():
    code = (
        "import sys, asd.audio, asd.features, asd.inference, asd.serving, asd.serving.rest, asd.serving.catalog,"
        " asd.metadata, asd.scoring, asd.app_figures;"
        "sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0



def test_app_through_grpc_against_the_grpc_stand_in(app, two_versions):
    from asd.standins.grpc import GrpcStandInServer

    with GrpcStandInServer(two_versions) as server:
        at = app(ASD_SERVING_URL=f"grpc://{server.target}", ASD_MODEL_NAME="toycar")
        picker = at.selectbox(key="model_choice")
        assert [o.split(" (")[0].split(":")[0] for o in picker.options] == ["toycar v2", "toycar v1"]
        assert "TF Serving (gRPC)" in _texts(at.sidebar.markdown) and "reachable" in _texts(at.sidebar.markdown)
        picker.select_index(1).run()
        _upload(at, SAMPLE_ANOMALY)
        assert not at.exception and len(_verdicts(at)) == 1
        assert len(at.get("plotly_chart")) == 5


def test_two_uploads_with_the_same_name_are_both_checked_and_told_apart(app):
    at = app(ASD_MODEL_DIR=SHIPPED_MODELS)
    uploader = at.file_uploader[0]
    uploader.upload("pump.wav", SAMPLE_NORMAL.read_bytes(), "audio/wav")
    uploader.upload("pump.wav", SAMPLE_ANOMALY.read_bytes(), "audio/wav").run()
    assert not at.exception
    table = at.dataframe[0].value
    assert table["file"].tolist() == ["pump.wav", "pump.wav (2)"]
    assert table["anomaly score (x threshold)"].nunique() == 2  # each file its own score


@pytest.fixture
def hung_server():
    """A TCP server that accepts connections and never answers (a hung TF Serving);
    yields its URL and the list of connections it accepted."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted = []

    def accept():
        while True:
            try:
                accepted.append(listener.accept()[0])
            except OSError:  # closed at the end of the test
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"http://127.0.0.1:{listener.getsockname()[1]}", accepted
    listener.close()
    for connection in accepted:
        connection.close()


def test_a_hung_server_costs_one_short_status_probe_not_a_timeout_per_update(app, hung_server):
    from asd.serving.probe import PROBE_TIMEOUT_S

    url, accepted = hung_server
    # ten seconds per request (the default), which a page must not wait on every update
    at = app(ASD_SERVING_URL=url, ASD_MODEL_NAME="toycar", ASD_SERVING_TIMEOUT_S=10)
    assert not at.exception
    assert f"did not answer within {PROBE_TIMEOUT_S:g} s" in _texts(at.error)
    assert "not reachable" in _texts(at.sidebar.markdown)
    assert len(accepted) == 1  # one status probe, nothing else
    at.run()  # a page update within the status' lifetime asks nothing
    assert len(accepted) == 1 and f"did not answer within {PROBE_TIMEOUT_S:g} s" in _texts(at.error)
    at.button[0].click().run()  # "Try again" asks at once
    assert at.button[0].label == "Try again" and len(accepted) == 2


def test_the_gauge_has_one_range_for_every_clip_with_the_threshold_at_1():
    import dataclasses

    from asd.app_figures import GAUGE_TOP, score_gauge

    detector = Detector(InProcessBackend(SHIPPED_MODELS, "toycar"))
    for path in (SAMPLE_NORMAL, SAMPLE_ANOMALY):
        result = detector.score_file(path)
        gauge = score_gauge(result).data[0]
        assert tuple(gauge.gauge.axis.range) == (0, GAUGE_TOP) and gauge.gauge.threshold.value == 1.0
        assert gauge.value == pytest.approx(result.score / result.threshold)
        assert gauge.number.suffix == " x threshold"
    # a score beyond the range: the same range, the real value in the number, marked
    beyond = dataclasses.replace(result, score=result.threshold * (GAUGE_TOP + 1.5))
    gauge = score_gauge(beyond).data[0]
    assert tuple(gauge.gauge.axis.range) == (0, GAUGE_TOP)
    assert gauge.value == pytest.approx(GAUGE_TOP + 1.5)
    assert [a.text for a in score_gauge(beyond).layout.annotations] == [f"off the scale: beyond {GAUGE_TOP:g} x threshold"]
    assert not score_gauge(result).layout.annotations  # on the scale: no mark

"""The REST client against a stand-in that follows TF Serving's documented REST API,
serving the real SavedModel trained on the subset."""


import os

import numpy as np
import pytest
import requests

from asd.inference import Detector
from asd.serving import ServingError, backend_from_env
from asd.serving.rest import RestBackend

from .conftest import OTHER_MACHINE_CLIPS, SAMPLE_ANOMALY, SAMPLE_NORMAL, free_port


@pytest.fixture(scope="module")
def server(trained_model):
    from asd.standins.rest import StandInServer

    models_dir, _ = trained_model
    with StandInServer(models_dir) as running:
        yield running


def test_stand_in_answers_as_tf_serving_documents(server):
    status = requests.get(f"{server.url}/v1/models/toycar", timeout=5).json()
    assert status == {"model_version_status": [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]}
    meta = requests.get(f"{server.url}/v1/models/toycar/versions/1/metadata", timeout=5).json()
    assert meta["model_spec"] == {"name": "toycar", "signature_name": "", "version": "1"}
    sig = meta["metadata"]["signature_def"]["signature_def"]["serving_default"]
    assert sig["method_name"] == "tensorflow/serving/predict"
    assert sig["inputs"]["logmel_patches"]["dtype"] == "DT_FLOAT"
    assert [d["size"] for d in sig["inputs"]["logmel_patches"]["tensor_shape"]["dim"]] == ["-1", "128", "32"]
    assert set(sig["outputs"]) == {"reconstruction", "patch_error", "frame_error"}
    missing = requests.get(f"{server.url}/v1/models/fan/metadata", timeout=5)
    assert missing.status_code == 404 and missing.json() == {"error": "Servable not found for request: Latest(fan)"}


def test_row_and_columnar_requests_agree(server):
    patches = np.random.default_rng(1).normal(-40, 10, size=(3, 128, 32)).round(2).tolist()
    url = f"{server.url}/v1/models/toycar:predict"
    rows = requests.post(url, json={"instances": [{"logmel_patches": p} for p in patches]}, timeout=30).json()
    cols = requests.post(url, json={"inputs": {"logmel_patches": patches}}, timeout=30).json()
    assert [r["patch_error"] for r in rows["predictions"]] == pytest.approx(cols["outputs"]["patch_error"])
    both = requests.post(url, json={"instances": patches, "inputs": patches}, timeout=30)
    assert both.status_code == 400 and "error" in both.json()
    wrong = requests.post(url, json={"inputs": {"logmel_patches": [[1.0, 2.0]]}}, timeout=30)
    assert wrong.status_code == 400 and "shape" in wrong.json()["error"]


def test_rest_client_scores_like_the_in_process_backend(server, trained_model):
    from asd.serving.inprocess import InProcessBackend

    models_dir, _ = trained_model
    rest = Detector(RestBackend(server.url, "toycar"))
    local = Detector(InProcessBackend(models_dir))
    assert rest.metadata.to_dict() == local.metadata.to_dict()
    for clip in (SAMPLE_NORMAL, SAMPLE_ANOMALY):
        a, b = rest.score_file(clip), local.score_file(clip)
        # the client rounds dB values to 1/1000 dB for a smaller payload
        assert a.score == pytest.approx(b.score, rel=1e-4)
        assert a.verdict == b.verdict
        np.testing.assert_allclose(a.frame_error, b.frame_error, rtol=1e-3, atol=1e-5)


def test_backend_chosen_by_environment(server, trained_model):
    models_dir, _ = trained_model
    rest = backend_from_env({"ASD_SERVING_URL": server.url, "ASD_MODEL_NAME": "toycar"})
    assert isinstance(rest, RestBackend) and rest.metadata.version == 1
    local = backend_from_env({"ASD_MODEL_DIR": str(models_dir)})
    assert "in-process" in local.describe()
    with pytest.raises(ValueError, match="set ASD_SERVING_URL .* or ASD_MODEL_DIR"):
        backend_from_env({})
    with pytest.raises(ValueError, match="set ASD_MODELS_CONFIG .* or ASD_MODEL_NAME"):
        backend_from_env({"ASD_SERVING_URL": server.url})


def test_unknown_model_and_version_give_clear_errors(server):
    with pytest.raises(ServingError, match="HTTP 404 .*Could not find any versions of model fan"):
        RestBackend(server.url, "fan")
    with pytest.raises(ServingError, match="HTTP 404"):
        RestBackend(server.url, "toycar", version=7)



def test_server_down_gives_a_clear_message():
    with pytest.raises(ServingError, match=r"is not reachable .*is the server running"):
        RestBackend(f"http://127.0.0.1:{free_port()}", "toycar", timeout_s=2)


def test_silent_server_times_out(silent_port):
    with pytest.raises(ServingError, match="did not answer within 0.5 s"):
        RestBackend(f"http://127.0.0.1:{silent_port}", "toycar", timeout_s=0.5)


def test_waveform_input_models_are_served_through_rest_like_in_process(waveform_model):
    """A whole-clip spectrum detector takes the clip's samples (signature input
    `waveform`); the client sends them with 7 decimals and gets the same score."""
    from asd.serving.inprocess import InProcessBackend
    from asd.standins.rest import StandInServer

    local = Detector(InProcessBackend(waveform_model))
    assert local.metadata.input == "waveform" and local.metadata.input_samples == 192000
    with StandInServer(waveform_model) as running:
        rest = Detector(RestBackend(running.url, "toycar"))
        assert rest.metadata.to_dict() == local.metadata.to_dict()
        for clip in (SAMPLE_NORMAL, SAMPLE_ANOMALY, *OTHER_MACHINE_CLIPS):
            a, b = rest.score_file(clip), local.score_file(clip)
            # samples rounded to 7 decimals move a quiet clip's figures by up to ~3e-5
            assert a.score == pytest.approx(b.score, rel=1e-4) and a.verdict == b.verdict
            assert a.unfamiliarity == pytest.approx(b.unfamiliarity, rel=1e-4)
            assert a.reconstruction is None and a.frame_error.shape == b.logmel.shape[1:]
            # the unfamiliar threshold travels in the metadata: a fan or a valve is not a toy car
            assert (a.verdict == "unfamiliar") == (clip in OTHER_MACHINE_CLIPS), (clip.name, a.unfamiliarity)


def test_nan_and_infinity_in_an_answer_are_read_and_never_become_a_verdict(waveform_model):
    """TF Serving writes non-finite floats as bare NaN / Infinity tokens: the client reads
    them (strict JSON parsers refuse them), and a non-finite score is an error, not a
    silent "normal" (NaN > threshold is False)."""
    from asd.serving import Prediction
    from asd.serving.inprocess import InProcessBackend
    from asd.serving.rest import decode_predict_response, parse_json

    body = b'{"outputs": {"patch_error": [NaN, Infinity, -Infinity], "frame_error": [[NaN], [1.0], [2.0]]}}'
    prediction = decode_predict_response(parse_json(body)["outputs"], 3)
    assert np.isnan(prediction.patch_error[0]) and prediction.patch_error[1] == np.inf
    assert prediction.patch_error[2] == -np.inf
    assert parse_json(b"<html>502 Bad Gateway</html>") is None

    class NaNBackend:  # answers as a broken model would, through the real Detector
        def __init__(self, backend):
            self.metadata = backend.metadata

        def predict(self, inputs):
            return Prediction(patch_error=np.full(len(inputs), np.nan, np.float32),
                              frame_error=np.full((len(inputs), 1), np.nan, np.float32))

    detector = Detector(NaNBackend(InProcessBackend(waveform_model)))
    with pytest.raises(ServingError, match="non-finite anomaly score"):
        detector.score_file(SAMPLE_NORMAL)


def test_requests_never_exceed_the_servers_max_batch_size(trained_model, tmp_path, monkeypatch):
    """TF Serving refuses a request above batching.config's max_batch_size ("Task size N is
    larger than maximum input batch size M"); the stand-in does the same. The client reads
    the limit from the batching config and sends a long clip's patches in requests that
    fit: a 200 s recording (cut to its first 60 s: 232 patches), against a server allowing
    100 rows, is scored as in-process."""
    import subprocess
    import sys

    import soundfile as sf

    from asd.serving.inprocess import InProcessBackend
    from asd.standins.repository import ModelRepository
    from asd.standins.rest import StandInServer

    models_dir, _ = trained_model
    samples, rate = sf.read(SAMPLE_NORMAL, dtype="float32")
    long_clip = tmp_path / "long.wav"
    sf.write(long_clip, np.tile(samples, 17)[: 200 * rate], rate)
    config = tmp_path / "batching.config"
    config.write_text("max_batch_size { value: 100 }\nenable_large_batch_splitting { value: true }\n")
    local = Detector(InProcessBackend(models_dir), max_request_rows=10_000).score_file(long_clip)
    assert len(local.patch_error) == 232 and any("checked the first 60 s of 200.0 s" in n for n in local.notes)
    with StandInServer(ModelRepository(models_dir, max_batch_size=100)) as server:
        backend = RestBackend(server.url, "toycar")
        with pytest.raises(ServingError, match="HTTP 400 .*Task size 101 is larger than maximum input batch size 100"):
            backend.predict(np.zeros((101, 128, 32), np.float32))
        run = subprocess.run(
            [sys.executable, "-m", "asd.cli", "score", str(long_clip), "--server", server.url, "--name", "toycar"],
            capture_output=True, text=True, timeout=300, env={**os.environ, "ASD_BATCHING_CONFIG": str(config)},
        )
    assert run.returncode == 0, run.stderr
    row = run.stdout.rstrip("\n").split("\n")[2].split("\t")
    assert float(row[1]) == pytest.approx(local.score, rel=1e-4) and "checked the first 60 s" in row[4]


def test_the_batching_limit_is_read_from_the_deployments_config(tmp_path):
    from asd.serving.batching import REPOSITORY_BATCHING_CONFIG, max_batch_size, max_request_rows

    assert max_request_rows({}) == max_batch_size(REPOSITORY_BATCHING_CONFIG) == 512  # the shipped file
    (tmp_path / "models.config").write_text("")
    (tmp_path / "batching.config").write_text("# a comment: max_batch_size { value: 9 }\nmax_batch_size { value: 64 }\n")
    assert max_request_rows({"ASD_MODELS_CONFIG": str(tmp_path / "models.config")}) == 64  # compose's /config
    (tmp_path / "none.config").write_text("num_batch_threads { value: 4 }\n")
    with pytest.raises(ValueError, match="no max_batch_size"):
        max_request_rows({"ASD_BATCHING_CONFIG": str(tmp_path / "none.config")})

"""The REST stand-in answers as TF Serving 2.20 does, over the shipped models
(production/models/toycar versions 1, 4 and 5): version labels from a models.config,
paths matched as TF Serving's regular expressions match them, inconsistent inputs
refused with 400 and TF Serving's messages, and no timing header of its own (the speed
bench splits a request's time on the client's side)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import requests

from asd.audio import load_audio
from asd.features import FeatureConfig
from asd.inference import model_input

from .conftest import REPO, SAMPLE_NORMAL, SHIPPED_MODELS, free_port

# TF Serving 2.20's models.config for the shipped models, with labels (server_core.cc
# reads version_labels from each model's config)
LABELLED_CONFIG = (REPO / "production" / "serving" / "models.config").read_text().replace(
    'model_platform: "tensorflow"',
    'model_platform: "tensorflow"\n    version_labels { key: "stable" value: 1 }\n'
    '    version_labels { key: "canary" value: 4 }\n    version_labels { key: "gone" value: 7 }',
)


@pytest.fixture(scope="module")
def labels_config(tmp_path_factory):
    path = tmp_path_factory.mktemp("config") / "models.config"
    path.write_text(LABELLED_CONFIG)
    return path


@pytest.fixture(scope="module")
def server(labels_config):
    from asd.serving.catalog import configured_version_labels
    from asd.standins.repository import ModelRepository
    from asd.standins.rest import StandInServer

    labels = configured_version_labels(labels_config)
    assert labels == {"toycar": {"stable": 1, "canary": 4, "gone": 7}}
    repository = ModelRepository(SHIPPED_MODELS, version_labels=labels, allow_version_labels_for_unavailable_models=True)
    with StandInServer(repository) as running:
        yield running


@pytest.fixture(scope="module")
def patches():
    """The log-mel patches of a real 12 s clip, as version 1 takes them: (44, 128, 32) dB."""
    from asd.serving.inprocess import InProcessBackend

    metadata = InProcessBackend(SHIPPED_MODELS, name="toycar", version=1).metadata
    _, inputs, _ = model_input(load_audio(SAMPLE_NORMAL, FeatureConfig().sample_rate).samples, metadata, FeatureConfig())
    return np.round(inputs, 3)


def _get(server, path):
    return requests.get(server.url + path, timeout=60)


def _post(server, path, body=None, data=None):
    return requests.post(server.url + path, json=body, data=data, timeout=60)


def _metadata_version(answer) -> int:
    return json.loads(answer.json()["outputs"][0])["version"]


# -- 1. version labels ---------------------------------------------------------------


def test_version_labels_name_versions_for_status_metadata_and_predict(server, patches):
    for label, version in (("stable", 1), ("canary", 4)):
        meta = _get(server, f"/v1/models/toycar/labels/{label}/metadata")
        assert meta.status_code == 200
        # TF Serving's answer names the version served, not the label (get_model_metadata_impl.cc)
        assert meta.json()["model_spec"] == {"name": "toycar", "signature_name": "", "version": str(version)}
        answer = _post(server, f"/v1/models/toycar/labels/{label}:predict",
                       {"signature_name": "metadata", "inputs": [0.0]})
        assert answer.status_code == 200 and _metadata_version(answer) == version
    inputs = {"inputs": {"logmel_patches": patches[:3].tolist()}}
    by_label = _post(server, "/v1/models/toycar/labels/stable:predict", inputs).json()["outputs"]
    by_number = _post(server, "/v1/models/toycar/versions/1:predict", inputs).json()["outputs"]
    assert by_label["patch_error"] == by_number["patch_error"] and len(by_label["patch_error"]) == 3
    # the status route does not look at a label: every version, as get_model_status_impl.cc answers
    assert _get(server, "/v1/models/toycar/labels/stable").json() == _get(server, "/v1/models/toycar").json()
    assert [s["version"] for s in _get(server, "/v1/models/toycar/labels/nope").json()["model_version_status"]] == ["1", "4", "5"]


def test_an_unknown_label_is_refused_as_tf_serving_refuses_it(server):
    for answer in (_get(server, "/v1/models/toycar/labels/nope/metadata"),
                   _post(server, "/v1/models/toycar/labels/nope:predict", {"signature_name": "metadata", "inputs": [0.0]}),
                   _post(server, "/v1/models/fan/labels/stable:predict", {"signature_name": "metadata", "inputs": [0.0]})):
        assert answer.status_code == 400, answer.text
        assert answer.json()["error"].startswith("Unrecognized servable version label: ")
    # a label may name a version not loaded (with the flag): the request then finds no servable
    gone = _post(server, "/v1/models/toycar/labels/gone:predict", {"signature_name": "metadata", "inputs": [0.0]})
    assert gone.status_code == 404 and gone.json() == {"error": "Servable not found for request: Specific(toycar, 7)"}


def test_labels_need_the_flag_to_start_as_tf_serving_needs_it(labels_config, tmp_path):
    """TF Serving checks a config's labels before any version has loaded, so without
    --allow_version_labels_for_unavailable_models it refuses to start; the stand-in too,
    with one line and a non-zero exit."""
    command = [sys.executable, "-m", "asd.standins", "--models", str(SHIPPED_MODELS), "--port", str(free_port())]
    refused = subprocess.run([*command, "--model_config_file", str(labels_config)],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines()[-1] == (
        "Failed to start server. Error: FAILED_PRECONDITION: Request to assign label to version 4 of model toycar, "
        "which is not currently available for inference")
    (tmp_path / "broken.config").write_text("model_config_list { config { name: 'toycar' version_labels: 3 } }\n")
    broken = subprocess.run([*command, "--model_config_file", str(tmp_path / "broken.config")],
                            capture_output=True, text=True, timeout=120)
    assert broken.returncode != 0 and "Traceback" not in broken.stderr
    assert "is not a valid TF Serving model config" in broken.stderr.strip().splitlines()[-1]


# -- 2. paths ------------------------------------------------------------------------


def test_paths_are_matched_case_insensitively_as_tf_servings_regex(server):
    lower = _get(server, "/v1/models/toycar/versions/1/metadata")
    upper = _get(server, "/V1/MODELS/toycar/VERSIONS/1/metadata")
    assert upper.status_code == 200 and upper.json() == lower.json()
    mixed = _post(server, "/v1/Models/toycar/Labels/canary:predict", {"signature_name": "metadata", "inputs": [0.0]})
    assert mixed.status_code == 200 and _metadata_version(mixed) == 4
    # the captured method and subresource are compared in lower case after the (?i) match
    shouted = _post(server, "/v1/models/toycar:PREDICT", {"signature_name": "metadata", "inputs": [0.0]})
    assert shouted.status_code == 400 and shouted.json() == {"error": "Malformed request: POST /v1/models/toycar:PREDICT"}
    assert _get(server, "/v1/models/toycar/METADATA").json() == _get(server, "/v1/models/toycar").json()
    # model names are not paths: their case counts; they are percent-decoded
    other = _get(server, "/v1/models/TOYCAR")
    assert other.status_code == 404 and other.json() == {"error": "Could not find any versions of model TOYCAR"}
    assert _get(server, "/v1/models/toy%63ar/versions/4/metadata").json()["model_spec"]["version"] == "4"


def test_malformed_paths_get_400_and_paths_outside_the_api_404(server):
    for method, path in (("GET", "/v1/foo"), ("POST", "/v1/models/toycar/metadata"), ("GET", "/v1/models/toycar:predict"),
                         ("POST", "/v1/models/toycar/versions/one:predict"), ("PUT", "/v1/models/toycar"),
                         ("POST", "/v1/models/toycar/versions/1/labels/stable:predict")):
        answer = requests.request(method, server.url + path, data=b'{"inputs": [0.0]}', timeout=60)
        assert answer.status_code == 400 and answer.json() == {"error": f"Malformed request: {method} {path}"}, path
    assert _get(server, "/v1/models").json() == {"error": "Missing model name in request."}
    huge = _post(server, "/v1/models/toycar/versions/99999999999999999999:predict", {"inputs": [0.0]})
    assert huge.status_code == 400
    assert huge.json() == {"error": "Failed to convert version: 99999999999999999999 to numeric."}
    outside = _get(server, "/models/toycar")
    assert outside.status_code == 404 and outside.headers["Content-Type"] == "text/html"
    assert "<TITLE>404 Not Found</TITLE>" in outside.text
    assert _get(server, "/v1/models/toycar?verbose=1").status_code == 200  # the query is not part of the path


def test_a_refused_request_leaves_a_keep_alive_connection_usable(server):
    with requests.Session() as session:
        refused = session.post(server.url + "/v1/models/toycar/metadata", data=b'{"inputs": [0.0]}' * 1000, timeout=60)
        assert refused.status_code == 400
        again = session.post(server.url + "/v1/models/toycar:predict",
                             json={"signature_name": "metadata", "inputs": [0.0]}, timeout=60)
        assert again.status_code == 200 and _metadata_version(again) == 5  # the latest


# -- 2. inputs -----------------------------------------------------------------------


def test_inconsistent_inputs_get_400_with_tf_servings_messages(server, patches):
    url = "/v1/models/toycar/versions/1:predict"
    two = patches[:2].tolist()
    short = [two[0], [row[:31] for row in two[1]]]  # the second instance one frame short: 128 x 31
    cases = {
        "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor size: 4096 but "
        "got: 3968": {"instances": short},
        "Encountered list at unexpected size: 31 at level: 2 expected size: 32": {"inputs": {"logmel_patches": short}},
        'JSON Value: "-40.5" Type: String is not of expected type: float':
            {"signature_name": "metadata", "inputs": ["-40.5"]},
        "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: true Type: True is "
        "not of expected type: float": {"signature_name": "metadata", "instances": [True, 1.0]},
        "Cannot convert JSON value: 1e+39 to float without loss of precision.":
            {"signature_name": "metadata", "inputs": [1e39]},
        "Failed to process element: 1 key: fan of 'instances' list. Error: INVALID_ARGUMENT: JSON object: does not "
        "have named input: fan": {"signature_name": "metadata", "instances": [{"unused": 0.0}, {"fan": 0.0}]},
        "Missing named input: logmel_patches in 'inputs' object.": {"inputs": {"waveform": [0.0]}},
        "Missing 'inputs' or 'instances' key": {"signature_name": "metadata"},
        'Serving signature name: "classify" not found in signature def': {"signature_name": "classify", "inputs": [0.0]},
        "Expecting value/list but got object at item 1 of input list":
            {"signature_name": "metadata", "instances": [0.0, {"unused": 0.0}]},
    }
    for message, body in cases.items():
        answer = _post(server, url, body)
        assert answer.status_code == 400 and answer.json() == {"error": message}, (message, answer.text[:300])
    both = _post(server, url, {"inputs": [0.0], "instances": [0.0]})
    assert both.status_code == 400
    assert "Not formatted correctly expecting only one of 'inputs' or 'instances' keys to exist" in both.json()["error"]
    assert _post(server, url, data=b"").json() == {"error": "JSON Parse error: The document is empty"}
    assert _post(server, url, data=b"[0.0]").json() == {"error": "JSON Value: [\n    0.0\n] Is not object"}
    assert _post(server, url, data=b"{inputs").json()["error"].startswith("JSON Parse error: ")
    # a patch of the wrong size is read (a dense list of floats) and refused by the model's signature
    wrong_shape = _post(server, url, {"inputs": {"logmel_patches": [[[0.0] * 31] * 128]}})
    assert wrong_shape.status_code == 400 and "shape" in wrong_shape.json()["error"]


def test_consistent_inputs_are_read_as_tf_serving_reads_them(server, patches):
    url = "/v1/models/toycar/versions/1:predict"
    columnar = _post(server, url, {"inputs": {"logmel_patches": patches[:2].tolist(), "ignored": "x"}})
    rows = _post(server, url, {"instances": [{"logmel_patches": p} for p in patches[:2].tolist()]})
    assert columnar.status_code == rows.status_code == 200  # keys the signature lacks are ignored in "inputs"
    assert [r["patch_error"] for r in rows.json()["predictions"]] == columnar.json()["outputs"]["patch_error"]
    # NaN and Infinity tokens are JSON to TF Serving (rapidjson's kParseNanAndInfFlag); integers are numbers
    tokens = _post(server, url, data=b'{"signature_name": "metadata", "inputs": [NaN, Infinity, 3]}')
    assert tokens.status_code == 200 and len(tokens.json()["outputs"]) == 3


# -- 3. no invented header; the bench's client-side split ---------------------------------


def test_answers_carry_no_timing_header(server, patches):
    answer = _post(server, "/v1/models/toycar/versions/1:predict", {"inputs": {"logmel_patches": patches[:1].tolist()}})
    assert answer.status_code == 200 and "Server-Timing" not in answer.headers
    assert answer.headers["Content-Type"] == "application/json"


def test_the_bench_splits_a_request_on_the_client_side(server, patches):
    from asd.measure.speed import rest_request_parts, split_request_time
    from asd.serving.inprocess import InProcessBackend
    from asd.serving.rest import RestBackend

    # the arithmetic: the median request minus the median of each part
    split = split_request_time([0.010, 0.013, 0.011], [0.001] * 3, [0.0005] * 3, [0.004, 0.006, 0.005],
                               [0.002, 0.001, 0.003])
    assert split["model_ms"]["p50"] == 5.0 and split["round_trip_ms"]["p50"] == 2.0
    assert split["payload_ms"] == pytest.approx(11 - 1 - 0.5 - 5 - 2)

    backend = RestBackend(server.url, "toycar", version=1)
    parts, body, answer = rest_request_parts(backend, InProcessBackend(SHIPPED_MODELS, name="toycar", version=1),
                                             patches[:2], n_requests=3)
    assert set(parts) == {"client_encode_ms", "client_decode_ms", "model_ms", "round_trip_ms", "payload_ms"}
    assert all(parts[k]["p50"] > 0 for k in ("client_encode_ms", "client_decode_ms", "model_ms", "round_trip_ms"))
    np.testing.assert_allclose(json.loads(body)["inputs"]["logmel_patches"], patches[:2], atol=1e-3)  # what was sent
    assert len(json.loads(answer)["outputs"]["patch_error"]) == 2
    # another model's time is not the server's: refused
    with pytest.raises(ValueError, match="is not the served one"):
        rest_request_parts(backend, InProcessBackend(SHIPPED_MODELS, name="toycar", version=4), patches[:2], 3)


def test_new_versions_are_served_after_the_poll_interval_without_a_restart(tmp_path):
    """As TF Serving with --file_system_poll_wait_seconds: a version folder renamed into
    the model's base path is loaded and becomes the latest; a removed one is unloaded."""
    import shutil
    import time

    from asd.standins.repository import ModelRepository
    from asd.standins.rest import StandInServer

    models = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "toycar" / "1", models / "toycar" / "1")
    repository = ModelRepository(models, poll_s=0.3)

    def versions(url):
        status = requests.get(f"{url}/v1/models/toycar", timeout=5).json()["model_version_status"]
        return sorted(int(s["version"]) for s in status)

    def wait_for(url, expected):
        deadline = time.monotonic() + 30
        while versions(url) != expected and time.monotonic() < deadline:
            time.sleep(0.1)
        return versions(url)

    try:
        with StandInServer(repository) as server:
            assert versions(server.url) == [1]
            # written elsewhere, then renamed into place: never half a version in the base path
            shutil.copytree(SHIPPED_MODELS / "toycar" / "1", tmp_path / "incoming")
            (tmp_path / "incoming").rename(models / "toycar" / "7")
            assert wait_for(server.url, [1, 7]) == [1, 7]
            latest = requests.get(f"{server.url}/v1/models/toycar/metadata", timeout=5).json()
            assert latest["model_spec"]["version"] == "7"
            shutil.rmtree(models / "toycar" / "1")
            assert wait_for(server.url, [7]) == [7]
    finally:
        repository.stop_polling()


def test_the_stand_in_command_polls_like_tf_serving():
    out = subprocess.run([sys.executable, "-m", "asd.standins", "--help"], capture_output=True, text=True, timeout=120)
    assert "--file_system_poll_wait_seconds" in out.stdout and "default 1" in out.stdout

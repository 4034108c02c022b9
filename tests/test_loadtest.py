"""``asd loadtest``: a reduced run (64 requests from 16 threads per backend) must lose no
request and answer each as the same clip scored alone; a perturbed or failed answer must
fail the run. Latency figures are reported, never asserted."""

import json
import threading

import numpy as np
import pytest

from asd.measure import loadtest
from asd.cli import main
from asd.serving import Prediction, ServingError

from .conftest import REPO, SAMPLES, SHIPPED_MODELS


@pytest.fixture
def in_repo(monkeypatch):
    monkeypatch.chdir(REPO)  # the default clips are production/samples/*/*.wav


@pytest.mark.parametrize("model", ["shipped", "trained"])
def test_reduced_load_test_loses_nothing_and_answers_right(model, request, in_repo, tmp_path, capsys):
    """Shipped: the waveform-input spectrum model; trained: a log-mel-patch conv
    autoencoder (REST rounds its dB input to 3 decimals)."""
    models_dir = SHIPPED_MODELS if model == "shipped" else request.getfixturevalue("trained_model")[0]
    backends = loadtest.available_backends()
    assert {"inprocess", "rest"} <= set(backends)
    code = main(["loadtest", "--model", str(models_dir), "--requests", "64", "--threads", "16", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((tmp_path / "load_test.json").read_text())
    assert report["ok"] and list(report["backends"]) == backends
    assert len(report["settings"]["clips"]) == len(list(SAMPLES.parent.glob("*/*.wav")))  # every sample clip, the fan too
    for name, row in report["backends"].items():
        assert (row["requests"], row["threads"], row["answered"], row["lost"], row["wrong"]) == (64, 16, 64, 0, 0), name
        assert row["max_deviation_in_tolerances"] <= 1 and row["mixups_detectable"] and not row["problems"]
        assert all(row[k] > 0 for k in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "throughput_rps"))
    # REST rounds its input, so its references differ slightly from in-process ones
    assert report["backends"]["rest"]["reference_vs_inprocess_rel"] < 1e-3
    if "grpc" in report["backends"]:  # exact float32 bytes
        assert report["backends"]["grpc"]["reference_vs_inprocess_rel"] < 1e-6
    assert report["model"]["name"] == "toycar" and report["versions"]["tensorflow"]
    markdown = (tmp_path / "load_test.md").read_text()
    assert "Result: **passed**" in markdown
    for name in backends:
        assert f"| `{name}` | 64 | 16 | 0 | 0 |" in markdown
    assert markdown in out


class _Faulty:
    """Wraps a backend: perturbs the answer of one call and fails another."""

    def __init__(self, backend, perturb_call: int, fail_call: int):
        self.backend, self.metadata = backend, backend.metadata
        self.perturb_call, self.fail_call = perturb_call, fail_call
        self.calls = 0
        self.lock = threading.Lock()

    def describe(self) -> str:
        return "faulty " + self.backend.describe()

    def predict(self, inputs: np.ndarray) -> Prediction:
        with self.lock:
            call, self.calls = self.calls, self.calls + 1
        if call == self.fail_call:
            raise ServingError("injected failure")
        prediction = self.backend.predict(inputs)
        if call == self.perturb_call:  # 10 times the tolerance
            prediction.patch_error = prediction.patch_error * np.float32(1 + 1e-5)
        return prediction


def test_a_wrong_or_lost_answer_fails_the_run(monkeypatch, in_repo, tmp_path, capsys):
    real = loadtest.BACKENDS["inprocess"]

    def faulty(model, timeout_s):
        from contextlib import contextmanager

        @contextmanager
        def opened():
            with real(model, timeout_s) as (backend, server):
                # calls 0-7: warm-up and references (4 clips each); the load's requests follow
                yield _Faulty(backend, perturb_call=20, fail_call=30), server

        return opened()

    monkeypatch.setitem(loadtest.BACKENDS, "inprocess", faulty)
    code = main(["loadtest", "--model", str(SHIPPED_MODELS), "--backends", "inprocess", "--requests", "64",
                 "--threads", "16", "--clips", str(SAMPLES), "--out", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert "asd: load test failed: inprocess: 1 lost, 1 wrong (of 64 requests per backend)" in captured.err
    report = json.loads((tmp_path / "load_test.json").read_text())
    row = report["backends"]["inprocess"]
    assert not report["ok"] and (row["answered"], row["lost"], row["wrong"]) == (63, 1, 1)
    # --clips SAMPLES repeats the default clips: counted once
    assert len(report["settings"]["clips"]) == len(list(SAMPLES.parent.glob("*/*.wav")))  # every sample clip, the fan too
    assert any("ServingError: injected failure" in p for p in row["problems"])
    assert any(" score " in p and "alone" in p for p in row["problems"])
    assert "Result: **FAILED**" in (tmp_path / "load_test.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--backends", "inprocess,soap"], "unknown backend(s) soap; known: inprocess, rest, grpc"),
        (["--requests", "0"], "--requests and --threads must be at least 1"),
        (["--clips", "no/such.wav"], "no/such.wav: no such file or directory"),
        (["--model-version", "99"], "no version 99"),
    ],
)
def test_bad_input_gives_one_error_line(args, message, in_repo, tmp_path, capsys):
    code = main(["loadtest", "--model", str(SHIPPED_MODELS), "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("asd: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "load_test.json").exists()


def test_without_grpc_modules_grpc_is_left_out_with_a_clear_error(monkeypatch, in_repo, tmp_path, capsys):
    monkeypatch.setattr(loadtest, "_grpc_available", lambda: False)
    assert loadtest.available_backends() == ["inprocess", "rest"]
    code = main(["loadtest", "--model", str(SHIPPED_MODELS), "--backends", "grpc", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("asd: error: the gRPC load test needs grpcio") and err.count("\n") == 1

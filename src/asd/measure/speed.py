"""``asd bench``: how fast the product is, measured on real clips, against its targets.

What is measured (every figure as the median and range of repeated runs):

- **Scoring in-process**, per model version: ``asd score`` over the test clips, warm
  (in this process, after a warm-up pass) and cold (a fresh ``asd score`` process: Python
  start, TensorFlow import, model load and librosa's first calls included), its peak RSS,
  and where a clip's time goes (decode, log-mel, model) when clips go one at a time.
- **Serving**: one 12 s clip's request through the REST client and the gRPC client
  against the stand-in server (:mod:`asd.standins.rest`, its own process, backed by
  the real SavedModel): p50/p95, and for REST where a request's time goes, measured
  from the client's side (TF Serving sends no timing header): encoding and decoding in
  the client, the model (the same SavedModel run in the bench process on the same
  input), an empty round trip (a status request), and the rest (the server's JSON and
  the bytes on the wire); the payload sizes.
- **Training**: ``asd train`` of the convolutional autoencoder (the shipped v1 recipe):
  each epoch's seconds, the total to the exported model, peak RSS.
- **Memory of the app**: peak RSS of the Streamlit process after it has checked a clip,
  served in-process and through the REST stand-in (then without TensorFlow), driven by
  Playwright in Debian's Chromium (skipped with a note where Chromium is missing).
- **Ingest**: ``asd monitor --once`` (score every clip once into the monitoring
  database) against ``asd score`` on the same clips with the same model version, both
  as new processes: the test clips copied into machine folders (1,000 clips: the 200
  ToyCar test clips in 50 folders, each clip 5 times under other paths), into SQLite and
  into PostgreSQL (a throw-away server, :mod:`asd.measure.postgres_server`; skipped with
  the reason where PostgreSQL is not installed). Start-up (Python, TensorFlow, model
  load, the database's schema) is taken out by also running each command on the first
  machine folder only: clips/s = extra clips / extra seconds.
- **The naive way**, side by side: clips one at a time with no look-ahead or batching;
  features recomputed every epoch; one REST request per patch; full-precision JSON with
  the standard library.

Timing assertions live nowhere else: the unit tests run this in ``--quick`` mode, which
checks that every part still works and never fails on a missed target.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..data import list_clips
from ..layout import resolve_version_dir, versions
from ..metadata import ModelMetadata
from ..processes import STARTUP_S, free_port, start_process, stop_process
from ..provenance import git, package_version

REPO = Path(__file__).resolve().parents[3]  # src/asd/measure/speed.py -> the repository
DEFAULT_TRAIN_CONFIG = "development/configs/toycar_conv_ae.yaml"
# The targets, on a 2-core machine, one process.
TARGETS = {
    "score_clips_per_s": 100.0,  # asd score, in-process, warm: at least
    "rest_p50_ms": 20.0,  # one 12 s clip through the REST client: at most
    "rest_p95_ms": 40.0,
    "epoch_s": 30.0,  # one conv AE epoch over the ToyCar training clips: at most
    "ingest_vs_score": 0.8,  # asd monitor --once's clips/s over asd score's, same clips and model: at least
    "baseline_overhead": 0.10,  # a machine baseline of 50 clips adds to asd monitor's time per clip: at most
}
#: What ``asd bench --sections`` may choose (default: all); each names report keys
SECTIONS = {"scoring": ("scoring",), "serving": ("rest", "grpc", "app"), "training": ("training", "feature_caching"),
            "ingest": ("ingest",)}


@dataclass
class BenchSettings:
    """What ``asd bench`` measures on.

    Attributes
    ----------
    data : Path
        A machine-type folder with ``train/`` and ``test/`` (e.g. dev_data/ToyCar).
    out : Path
        The Markdown report; the JSON goes next to it (same name, ``.json``).
    models : Path
        Models directory in TF Serving's layout (the shipped ``production/models``).
    name : str
        Model name in it.
    repeats : int
        Repeated runs of each throughput figure (cold runs: ``max(1, repeats // 2)``).
    requests : int
        Requests per serving figure.
    max_clips : int or None
        Score only the first N test clips.
    train_config : Path
        ``asd train`` config of the measured training (the shipped v1 recipe).
    epochs : int or None
        Override the config's epochs.
    max_train_clips : int or None
        Train on the first N training clips only.
    quick : bool
        Reduced mode (CI): small numbers, naive training on one epoch.
    sections : tuple of str
        What to measure (keys of :data:`SECTIONS`). With fewer than all, an existing
        report at ``out`` keeps its other sections and gets these replaced.
    ingest_clips, ingest_machines : int
        The ingest measurement's clips (test clips copied round, each copy under another
        path) and the machine folders they are spread over.
    """

    data: Path
    out: Path
    models: Path = REPO / "production" / "models"
    name: str = "toycar"
    repeats: int = 5
    requests: int = 200
    max_clips: int | None = None
    train_config: Path = REPO / DEFAULT_TRAIN_CONFIG
    epochs: int | None = None
    max_train_clips: int | None = None
    quick: bool = False
    sections: tuple = tuple(SECTIONS)
    ingest_clips: int = 1000
    ingest_machines: int = 50


def spread(values: list[float], digits: int = 2) -> dict:
    """``{"median", "min", "max", "n", "values"}`` of repeated measurements."""
    values = [float(v) for v in values]
    return {
        "median": round(statistics.median(values), digits),
        "min": round(min(values), digits),
        "max": round(max(values), digits),
        "n": len(values),
        "values": [round(v, digits + 2) for v in values],
    }


def percentiles_ms(seconds: list[float]) -> dict:
    """p50/p95/max in milliseconds of request times given in seconds."""
    ms = np.asarray(seconds) * 1e3
    return {
        "p50": round(float(np.percentile(ms, 50)), 2),
        "p95": round(float(np.percentile(ms, 95)), 2),
        "max": round(float(ms.max()), 2),
        "n": len(ms),
    }


def _mb(n_bytes: int) -> float:
    return round(n_bytes / 1e6, 3)


def _env() -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(REPO / "src")}
    for key in ("ASD_MODEL_DIR", "ASD_MODEL_NAME", "ASD_MODEL_VERSION", "ASD_SERVING_URL", "ASD_MODELS_CONFIG"):
        env.pop(key, None)
    return env


def run_measured(args: list[str], env: dict | None = None, cwd: Path = REPO) -> dict:
    """Run a command to its end: wall seconds, exit code, peak RSS (MB), output.

    The peak RSS is the child's own (``os.wait4``'s ``ru_maxrss``), not this process's.
    """
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        started = time.perf_counter()
        process = subprocess.Popen(args, cwd=cwd, env=env or _env(), stdout=out, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        return {
            "seconds": wall,
            "returncode": process.returncode,
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),  # Linux: KiB
            "stdout": out.read().decode(errors="replace"),
            "stderr": err.read().decode(errors="replace"),
        }


# -- scoring -------------------------------------------------------------------------


def _detector(models: Path, name: str, version: int):
    from ..inference import Detector
    from ..serving.inprocess import InProcessBackend

    return Detector(InProcessBackend(models, name=name, version=version))


def measure_scoring(settings: BenchSettings, version: int, clips: list[Path], log=print) -> dict:
    """``asd score``'s work over ``clips`` with one model version, in-process.

    Returns
    -------
    dict
        ``warm_clips_per_s`` (the pipelined ``Detector.score_files``, as ``asd score``
        runs it, after a warm-up pass), ``sequential_clips_per_s`` (the naive way: one
        clip at a time, no look-ahead, one request a clip), ``stage_ms`` (median per clip
        of decode, log-mel (none for waveform models, which ``asd score`` spares it) and
        the model request in that sequential run), ``cold`` (fresh
        ``asd score`` processes: clips/s with start-up, start-up seconds, peak RSS).
    """
    from ..audio import load_audio

    detector = _detector(settings.models, settings.name, version)
    sample_rate = detector.features.sample_rate
    # as asd score runs it: no log-mel a waveform model does not take (display=False)
    list(detector.score_files(clips[: min(len(clips), 16)], display=False))  # warm-up: graph traces, first calls

    warm = []
    for _ in range(settings.repeats):
        started = time.perf_counter()
        n_scored = sum(1 for _, outcome in detector.score_files(clips, display=False) if not isinstance(outcome, Exception))
        warm.append(n_scored / (time.perf_counter() - started))
    log(f"  v{version} warm: {statistics.median(warm):.1f} clips/s")

    stages = {"decode": [], "logmel": [], "model": [], "total": []}
    sequential = []
    for _ in range(max(1, settings.repeats // 2)):
        started = time.perf_counter()
        for path in clips:
            t0 = time.perf_counter()
            clip = load_audio(path, sample_rate, name=str(path))
            t1 = time.perf_counter()
            prepared = detector.prepare(clip, display=False)
            t2 = time.perf_counter()
            detector.score_features(prepared)
            t3 = time.perf_counter()
            for key, value in zip(stages, (t1 - t0, t2 - t1, t3 - t2, t3 - t0)):
                stages[key].append(value)
        sequential.append(len(clips) / (time.perf_counter() - started))
    stage_ms = {key: round(statistics.median(values) * 1e3, 2) for key, values in stages.items()}
    log(f"  v{version} one clip at a time: {statistics.median(sequential):.1f} clips/s; per clip {stage_ms} ms")

    cold_runs = []
    for _ in range(max(1, settings.repeats // 2)):
        run = run_measured([
            sys.executable, "-m", "asd.cli", "score", *map(str, clips), "--model", str(settings.models),
            "--name", settings.name, "--model-version", str(version),
        ])
        if run["returncode"] != 0:
            raise RuntimeError(f"asd score failed ({run['returncode']}): {run['stderr'][-2000:]}")
        n_lines = len(run["stdout"].splitlines()) - 2  # after the "# model" line and the column header
        if n_lines != len(clips):
            raise RuntimeError(f"asd score printed {n_lines} lines for {len(clips)} clips")
        cold_runs.append(run)
    cold_rates = [len(clips) / r["seconds"] for r in cold_runs]
    warm_seconds = len(clips) / statistics.median(warm)
    log(f"  v{version} cold (new process): {statistics.median(cold_rates):.1f} clips/s")
    return {
        "version": version,
        "detector": detector.metadata.detector,
        "model_input": detector.metadata.input,
        "n_clips": len(clips),
        "warm_clips_per_s": spread(warm, 1),
        "warm_ms_per_clip": round(1e3 / statistics.median(warm), 2),
        "sequential_clips_per_s": spread(sequential, 1),
        "stage_ms": stage_ms,
        "cold": {
            "clips_per_s": spread(cold_rates, 1),
            "seconds": spread([r["seconds"] for r in cold_runs], 2),
            "startup_s": round(statistics.median([r["seconds"] for r in cold_runs]) - warm_seconds, 2),
            "peak_rss_mb": spread([r["peak_rss_mb"] for r in cold_runs], 1),
        },
    }


# -- serving -------------------------------------------------------------------------


def time_requests(backend, inputs: np.ndarray, n_requests: int, warm_up: int = 5) -> list[float]:
    """Seconds of each of ``n_requests`` sequential ``backend.predict(inputs)`` calls,
    after ``warm_up`` untimed ones."""
    for _ in range(warm_up):
        backend.predict(inputs)
    seconds = []
    for _ in range(n_requests):
        started = time.perf_counter()
        backend.predict(inputs)
        seconds.append(time.perf_counter() - started)
    return seconds


def _clip_input(backend, clip_path: Path):
    from ..audio import load_audio
    from ..features import FeatureConfig
    from ..inference import model_input

    features = FeatureConfig()
    _, inputs, _ = model_input(load_audio(clip_path, features.sample_rate).samples, backend.metadata, features)
    return inputs


def split_request_time(request_s: list[float], encode_s: list[float], decode_s: list[float], model_s: list[float],
                       round_trip_s: list[float]) -> dict:
    """Where a REST ``:predict`` request's time goes, from the client's side.

    TF Serving's answer says nothing of its own time (no timing header), so the parts
    are measured apart and the median of each subtracted from the median request:

    Parameters
    ----------
    request_s : list of float
        Seconds of whole requests: encode, POST, wait, decode.
    encode_s, decode_s : list of float
        Seconds the client spent writing the JSON body and reading the answer.
    model_s : list of float
        Seconds of the same SavedModel version run on the same input in this process
        (what the server spends in the model, on the same machine).
    round_trip_s : list of float
        Seconds of an empty exchange with the server (a status request: no body, no
        model): HTTP's fixed cost a request.

    Returns
    -------
    dict
        ``client_encode_ms``, ``client_decode_ms``, ``model_ms``, ``round_trip_ms``
        (each p50/p95/max) and ``payload_ms``: median request minus the medians of the
        four, i.e. the server reading and writing the JSON and the bytes crossing the
        connection (slightly negative when the payload is small and noise wins).
    """
    parts = {"client_encode_ms": encode_s, "client_decode_ms": decode_s, "model_ms": model_s,
             "round_trip_ms": round_trip_s}
    rest = statistics.median(request_s) - sum(statistics.median(v) for v in parts.values())
    return {**{key: percentiles_ms(v) for key, v in parts.items()}, "payload_ms": round(rest * 1e3, 2)}


def rest_request_parts(backend, local, inputs: np.ndarray, n_requests: int) -> tuple[dict, bytes, bytes]:
    """Time ``n_requests`` REST requests of ``inputs`` in parts, and split them
    (:func:`split_request_time`).

    Parameters
    ----------
    backend : asd.serving.rest.RestBackend
    local : asd.serving.inprocess.InProcessBackend
        The same model version, in this process.
    inputs : np.ndarray [dtype=float32]
        The model's input, e.g. log-mel patches ``(n_patches, n_mels, patch_frames)``.

    Returns
    -------
    (split, request_body, response_body)

    Raises
    ------
    ValueError
        ``local`` is not the served model (other metadata, or other outputs on
        ``inputs``): its time would not be the server's.
    """
    import orjson

    from ..serving.rest import decode_predict_response, encode_predict_request

    if local.metadata.to_dict() != backend.metadata.to_dict():
        raise ValueError(f"the in-process model ({local.describe()}) is not the served one ({backend.describe()})")
    served, here = backend.predict(inputs), local.predict(inputs)
    if not np.allclose(served.patch_error, here.patch_error, rtol=1e-3, atol=1e-6):
        raise ValueError("the in-process model answers otherwise than the served one on the same input")
    encode, decode, total = [], [], []
    for _ in range(n_requests):
        t0 = time.perf_counter()
        body = encode_predict_request(inputs, backend.metadata.input)
        t1 = time.perf_counter()
        response = backend._session.post(f"{backend.model_url}:predict", data=body, timeout=backend.timeout_s)
        t2 = time.perf_counter()
        decode_predict_response(orjson.loads(response.content)["outputs"], len(inputs))
        t3 = time.perf_counter()
        encode.append(t1 - t0)
        decode.append(t3 - t2)
        total.append(t3 - t0)
    round_trip = []
    for _ in range(n_requests):
        started = time.perf_counter()
        backend._session.get(backend.model_url, timeout=backend.timeout_s).content
        round_trip.append(time.perf_counter() - started)
    model = time_requests(local, inputs, n_requests, warm_up=2)
    return split_request_time(total, encode, decode, model, round_trip), body, response.content


def measure_rest(url: str, name: str, version: int, clip_path: Path, n_requests: int, models_dir: Path,
                 log=print) -> dict:
    """One clip's request through :class:`asd.serving.rest.RestBackend`, and its parts.

    Returns
    -------
    dict
        ``request_ms`` (``backend.predict``: encode, POST, server, decode), ``end_to_end_ms``
        (file to verdict: decode, log-mel and the request), the parts of
        :func:`split_request_time` (``client_encode_ms``, ``client_decode_ms``,
        ``model_ms`` from the same version in this process under ``models_dir``,
        ``round_trip_ms``, ``payload_ms``), payload sizes, and the naive ways
        (``naive_full_precision``: the standard library's JSON of float64 lists;
        ``naive_per_patch``: one request a patch).
    """
    from ..inference import Detector
    from ..serving.inprocess import InProcessBackend
    from ..serving.rest import RestBackend, decode_predict_response

    backend = RestBackend(url, name, version=version, timeout_s=60)
    inputs = _clip_input(backend, clip_path)
    request = time_requests(backend, inputs, n_requests)
    parts, body, answer = rest_request_parts(backend, InProcessBackend(models_dir, name=name, version=version), inputs,
                                             max(5, n_requests // 2))
    request_bytes, response_bytes = len(body), len(answer)

    detector = Detector(backend)
    end_to_end = []
    for _ in range(max(5, n_requests // 4)):
        started = time.perf_counter()
        detector.score_file(clip_path)
        end_to_end.append(time.perf_counter() - started)

    # the naive way: the standard library's JSON, every float at full (float64) precision
    naive_body = json.dumps({"signature_name": "serving_default",
                             "inputs": {backend.metadata.input: np.asarray(inputs, np.float64).tolist()}}).encode()
    naive = []
    for _ in range(max(3, n_requests // 10)):
        started = time.perf_counter()
        body = json.dumps({"signature_name": "serving_default",
                           "inputs": {backend.metadata.input: np.asarray(inputs, np.float64).tolist()}}).encode()
        answer = backend._session.post(f"{backend.model_url}:predict", data=body, timeout=60)
        outputs = json.loads(answer.content)["outputs"]
        decode_predict_response({k: np.asarray(v) for k, v in outputs.items()}, len(inputs))
        naive.append(time.perf_counter() - started)

    per_patch = None
    if len(inputs) > 1:  # log-mel patches: one request per patch, as a naive client would
        per_patch_times = []
        for _ in range(max(2, n_requests // 40)):
            started = time.perf_counter()
            for row in range(len(inputs)):
                backend.predict(inputs[row : row + 1])
            per_patch_times.append(time.perf_counter() - started)
        per_patch = {"requests_per_clip": len(inputs), "clip_ms": percentiles_ms(per_patch_times)}

    result = {
        "version": version,
        "input": backend.metadata.input,
        "input_shape": list(inputs.shape),
        "request_ms": percentiles_ms(request),
        "end_to_end_ms": percentiles_ms(end_to_end),
        **parts,
        "request_mb": _mb(request_bytes),
        "response_mb": _mb(response_bytes),
        "naive_full_precision": {"request_ms": percentiles_ms(naive), "request_mb": _mb(len(naive_body))},
        "naive_per_patch": per_patch,
    }
    log(f"  REST v{version}: p50 {result['request_ms']['p50']} ms, p95 {result['request_ms']['p95']} ms, "
        f"{result['request_mb']} MB; client {result['client_encode_ms']['p50']} + {result['client_decode_ms']['p50']} ms, "
        f"model {result['model_ms']['p50']} ms, empty round trip {result['round_trip_ms']['p50']} ms, "
        f"payload {result['payload_ms']} ms")
    return result


def measure_grpc(target: str, name: str, version: int, clip_path: Path, n_requests: int, log=print) -> dict:
    """One clip's request through :class:`asd.serving.grpc.GrpcBackend` (tensor bytes).

    Returns
    -------
    dict
        ``request_ms``, ``client_encode_ms`` (the PredictRequest with
        ``make_tensor_proto``), ``client_decode_ms`` (``make_ndarray`` of the outputs),
        ``request_mb``/``response_mb`` (serialized protos).
    """
    from ..metadata import SERVING_SIGNATURE
    from ..serving.grpc import GrpcBackend

    backend = GrpcBackend(target, name, version=version, timeout_s=60)
    try:
        api = backend._api
        inputs = np.ascontiguousarray(_clip_input(backend, clip_path), dtype=np.float32)
        request_times = time_requests(backend, inputs, n_requests)
        encode, decode = [], []
        for _ in range(max(5, n_requests // 2)):
            t0 = time.perf_counter()
            request = api.predict_pb2.PredictRequest()
            backend._model_spec(request.model_spec, SERVING_SIGNATURE)
            request.inputs[backend.metadata.input].CopyFrom(api.tf.make_tensor_proto(inputs))
            t1 = time.perf_counter()
            response = backend._call(backend._predictions.Predict, request)
            t2 = time.perf_counter()
            {key: api.tf.make_ndarray(value) for key, value in response.outputs.items()}
            t3 = time.perf_counter()
            encode.append(t1 - t0)
            decode.append(t3 - t2)
        result = {
            "version": version,
            "request_ms": percentiles_ms(request_times),
            "client_encode_ms": percentiles_ms(encode),
            "client_decode_ms": percentiles_ms(decode),
            "request_mb": _mb(request.ByteSize()),
            "response_mb": _mb(response.ByteSize()),
        }
    finally:
        backend.close()
    log(f"  gRPC v{version}: p50 {result['request_ms']['p50']} ms, p95 {result['request_ms']['p95']} ms, "
        f"{result['request_mb']} MB")
    return result


# -- the app's memory ----------------------------------------------------------------


def _proc_status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)  # kB
    raise RuntimeError(f"/proc/{pid}/status has no {field}")


def measure_app(env_extra: dict, clip_path: Path, log_dir: Path, label: str, log=print) -> dict:
    """Peak RSS of the Streamlit app's process after it has checked one clip.

    Starts ``streamlit run production/app/streamlit_app.py`` with ``env_extra`` (the
    backend's variables), uploads ``clip_path`` in headless Chromium (Playwright, Debian's
    ``chromium``) and waits for the verdict; then reads the process's ``VmHWM`` and whether
    TensorFlow's library is mapped into it.

    Returns
    -------
    dict
        ``peak_rss_mb``, ``rss_mb`` (after the check), ``tensorflow_loaded`` (bool),
        ``verdict_s`` (upload to verdict, seconds); or ``{"skipped": reason}`` without
        Chromium or Playwright.
    """
    import re

    chromium = shutil.which("chromium")
    if not chromium:
        return {"skipped": "Debian's chromium is not installed (apt-get install -y chromium)"}
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return {"skipped": "playwright is not installed (the test extra)"}
    port = free_port()
    app = start_process(
        [str(Path(sys.executable).parent / "streamlit"), "run", "production/app/streamlit_app.py",
         "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--browser.gatherUsageStats", "false"],
        {**_env(), **env_extra}, log_dir / f"app_{label}.log", f"http://127.0.0.1:{port}/_stcore/health", cwd=REPO,
    )
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path=chromium, args=["--disable-gpu", "--no-first-run", "--disable-background-networking"]
            )
            page = browser.new_page()
            page.set_default_timeout(STARTUP_S * 1000)
            page.goto(f"http://127.0.0.1:{port}")
            uploader = page.locator('[data-testid="stFileUploader"] input[type="file"]')
            uploader.wait_for(state="attached")
            started = time.perf_counter()
            uploader.set_input_files(str(clip_path))
            page.get_by_text(re.compile(r"sounds (normal|anomalous)")).first.wait_for()
            verdict_s = time.perf_counter() - started
            browser.close()
        maps = Path(f"/proc/{app.pid}/maps").read_text()
        result = {
            "peak_rss_mb": _proc_status_mb(app.pid, "VmHWM"),
            "rss_mb": _proc_status_mb(app.pid, "VmRSS"),
            "tensorflow_loaded": "libtensorflow" in maps or "_pywrap_tensorflow" in maps,
            "verdict_s": round(verdict_s, 2),
        }
    finally:
        stop_process(app)
    log(f"  app ({label}): peak RSS {result['peak_rss_mb']} MB, TensorFlow loaded: {result['tensorflow_loaded']}")
    return result


# -- training ------------------------------------------------------------------------


def _train_overrides(settings: BenchSettings, workdir: Path) -> list[str]:
    overrides = [f"data_dir={settings.data}", f"models_dir={workdir / 'models'}", f"runs_dir={workdir / 'runs'}",
                 "version=1"]
    if settings.epochs:
        overrides.append(f"training.epochs={settings.epochs}")
    if settings.max_train_clips:
        overrides.append(f"training.max_train_clips={settings.max_train_clips}")
    return overrides


def measure_training(settings: BenchSettings, workdir: Path, log=print) -> dict:
    """``asd train`` with the measured config, in its own process, to the exported model.

    Returns
    -------
    dict
        ``epoch_s`` (spread of every epoch after the first: training, validation and the
        per-epoch evaluation callbacks), ``first_epoch_s`` (with graph tracing),
        ``total_s`` (process start to exported model, evaluation included),
        ``peak_rss_mb``, ``epochs_run``, ``n_train_clips``, ``patches``.
    """
    overrides = _train_overrides(settings, workdir)
    run = run_measured([sys.executable, "-m", "asd.cli", "train", "--config", str(settings.train_config),
                        *(arg for o in overrides for arg in ("--set", o))])
    if run["returncode"] != 0:
        raise RuntimeError(f"asd train failed ({run['returncode']}): {run['stderr'][-2000:]}")
    metadata = ModelMetadata.read(resolve_version_dir(workdir / "models", version=1))
    training = metadata.training
    epochs = training["epoch_seconds"]
    later = epochs[1:] or epochs
    result = {
        "config": str(Path(settings.train_config).relative_to(REPO)) if Path(settings.train_config).is_relative_to(REPO)
        else str(settings.train_config),
        "detector": metadata.detector,
        "epochs_run": training["epochs_run"],
        "n_train_clips": training["n_train_clips"] + training.get("n_validation_clips", 0),
        "n_validation_clips": training.get("n_validation_clips", 0),
        "batch_size": training["config"]["training"]["batch_size"],
        "first_epoch_s": round(epochs[0], 2),
        "epoch_s": spread(later, 2),
        "total_s": round(run["seconds"], 1),
        "train_function_s": training["duration_s"],
        "peak_rss_mb": run["peak_rss_mb"],
    }
    log(f"  training: epoch {result['epoch_s']['median']} s (first {result['first_epoch_s']} s), "
        f"{result['epochs_run']} epochs, total {result['total_s']} s, peak RSS {result['peak_rss_mb']} MB")
    return result


def measure_feature_caching(settings: BenchSettings, epochs: int, log=print) -> dict:
    """One epoch of the conv autoencoder two ways, in this process: on log-mel patches
    computed once and cached (as ``asd train`` does), and recomputing them from the
    audio files every epoch (the naive tf.data pipeline).

    Returns
    -------
    dict
        ``cached_epoch_s`` and ``recomputed_epoch_s`` (spreads over ``epochs`` epochs),
        ``features_once_s`` (decode + log-mel of every training clip, once).
    """
    import keras
    import tensorflow as tf

    from ..audio import load_audio
    from ..config import load_train_config
    from ..detectors.autoencoders import EpochTimer, per_mel_standardisation
    from ..detectors.base import load_clipset
    from ..features import clip_patches
    from ..model import build_conv_autoencoder

    config = load_train_config(settings.train_config, _train_overrides(settings, Path(tempfile.gettempdir())))
    features = config.feature_config()
    clips = [c for c in list_clips(settings.data, split="train") if c.label != "anomaly"]
    if settings.max_train_clips:
        clips = clips[: settings.max_train_clips]
    started = time.perf_counter()
    clipset = load_clipset(clips, features)
    features_once_s = time.perf_counter() - started
    mean, std = per_mel_standardisation(clipset)
    patches, _ = clipset.patches()
    def standardised(patches: np.ndarray) -> np.ndarray:  # the model's input: (n, n_mels, frames, 1)
        return ((patches - mean[None, :, None]) / std[None, :, None])[..., None].astype(np.float32)

    cached = standardised(patches)

    def standardised_patches(path) -> np.ndarray:
        return standardised(clip_patches(load_audio(path.decode(), features.sample_rate).samples, features)[1])

    patch_shape = [features.n_mels, features.patch_frames, 1]
    batch = config.training.batch_size
    steps = -(-len(cached) // batch)  # both pipelines repeat; an epoch is this many batches
    datasets = {
        "cached": tf.data.Dataset.from_tensor_slices((cached, cached))
        .shuffle(len(cached), seed=0).repeat().batch(batch).prefetch(tf.data.AUTOTUNE),
        "recomputed": tf.data.Dataset.from_tensor_slices([str(c.path) for c in clips])
        .map(lambda p: tf.ensure_shape(tf.numpy_function(standardised_patches, [p], tf.float32), [None, *patch_shape]))
        .repeat().unbatch().map(lambda x: (x, x)).shuffle(4096, seed=0).batch(batch).prefetch(tf.data.AUTOTUNE),
    }
    result = {"n_clips": len(clips), "n_patches": int(len(cached)), "features_once_s": round(features_once_s, 2)}
    for name, dataset in datasets.items():
        keras.utils.set_random_seed(config.seed)
        model = build_conv_autoencoder(features.n_mels, features.patch_frames, **config.model)
        model.compile(optimizer=keras.optimizers.Adam(config.training.learning_rate), loss="mse")
        timer = EpochTimer()
        # the first epoch traces the graph: left out
        model.fit(dataset, epochs=epochs + 1, steps_per_epoch=steps, callbacks=[timer], verbose=0, shuffle=False)
        result[f"{name}_epoch_s"] = spread(timer.seconds[1:], 2)
        log(f"  epoch with features {name}: {result[f'{name}_epoch_s']['median']} s")
    return result


# -- ingest: asd monitor --once against asd score ------------------------------------


def machine_folders(clips: list[Path], root: Path, n_clips: int, n_machines: int) -> list[list[Path]]:
    """Copy ``clips`` round into ``n_machines`` folders ``root/machine-NN/`` until there
    are ``n_clips`` files: file ``j`` is clip ``j % len(clips)`` in folder ``j // per
    folder``, so each clip's copies sit in different folders (other paths: other clips
    to the monitor). Returns each folder's files.

    Raises
    ------
    ValueError
        A folder would hold one clip twice (more clips a folder than test clips).
    """
    per_folder = -(-n_clips // n_machines)
    if per_folder > len(clips):
        raise ValueError(f"{n_clips} ingest clips in {n_machines} machine folders is {per_folder} a folder, more than "
                         f"the {len(clips)} test clips: use more machine folders")
    folders: list[list[Path]] = [[] for _ in range(n_machines)]
    for j in range(n_clips):
        source = Path(clips[j % len(clips)])
        folder = root / f"machine-{j // per_folder:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / source.name
        shutil.copyfile(source, target)
        folders[j // per_folder].append(target)
    return [f for f in folders if f]


def _monitor_env(root: Path) -> dict:
    """The environment of a measured ``asd monitor``: its data home under ``root``, and no
    database or clip store of the caller's."""
    env = {**_env(), "ASD_HOME": str(root / "home")}
    for key in ("ASD_DB_URL", "ASD_CLIP_STORE"):
        env.pop(key, None)
    return env


def _monitor_run(settings: BenchSettings, version: int, folder: Path, db_url: str, clip_store: Path, env: dict,
                 n_clips: int, extra: tuple = ()) -> dict:
    """``asd monitor --once`` over ``folder`` into ``db_url`` (empty, or holding ``n_clips``
    fewer clips than it will), checked: every clip stored."""
    from ..monitoring.store import open_store

    before = 0
    if db_url.startswith("sqlite:///") and Path(db_url[len("sqlite:///"):]).exists():
        store = open_store(db_url)
        before = store.counts()["clips"]
        store.close()
    run = run_measured([
        sys.executable, "-m", "asd.cli", "monitor", "--once", str(folder), "--db", db_url, "--clip-store",
        str(clip_store), "--model", str(settings.models), "--name", settings.name, "--model-version", str(version),
        *extra,
    ], env=env)
    if run["returncode"] != 0:
        raise RuntimeError(f"asd monitor failed ({run['returncode']}): {run['stderr'][-2000:]}")
    store = open_store(db_url)
    try:
        counts = store.counts()
    finally:
        store.close()
    if counts["clips"] - before != n_clips:
        raise RuntimeError(f"asd monitor stored {counts['clips'] - before} clips of {n_clips}: {run['stderr'][-2000:]}")
    run["stored"], run["scored"], run["alerts"] = counts["clips"], counts["scores"], counts["alerts"]
    return run


def _score_run(settings: BenchSettings, version: int, folder: Path, env: dict, n_clips: int) -> dict:
    """``asd score`` over ``folder`` (its machine folders), checked: a line a clip."""
    run = run_measured([
        sys.executable, "-m", "asd.cli", "score", str(folder), "--model", str(settings.models), "--name",
        settings.name, "--model-version", str(version),
    ], env=env)
    if run["returncode"] != 0:
        raise RuntimeError(f"asd score failed ({run['returncode']}): {run['stderr'][-2000:]}")
    n_lines = len(run["stdout"].splitlines()) - 2  # after the "# model" line and the column header
    if n_lines != n_clips:
        raise RuntimeError(f"asd score printed {n_lines} lines for {n_clips} clips")
    run["stored"] = n_lines
    return run


def ingest_rates(small: list[dict], full: list[dict], n_small: int, n_full: int) -> dict:
    """Clips/s from paired runs of one command on ``n_small`` and ``n_full`` clips.

    Returns
    -------
    dict
        ``clips_per_s``: start-up taken out, ``(n_full - n_small) / (full - small
        seconds)`` of each pair (None where noise made the difference not positive);
        ``with_startup_clips_per_s``: ``n_full / full seconds`` (the whole command);
        ``startup_s``: the small run's seconds less its clips at the first rate;
        ``seconds``, ``peak_rss_mb`` of the full runs; ``clips``: clips counted in the
        full runs (stored rows or printed lines).
    """
    rates = [(n_full - n_small) / (f["seconds"] - s["seconds"]) for s, f in zip(small, full)
             if f["seconds"] > s["seconds"]]
    rate = statistics.median(rates) if rates else None
    return {
        "clips_per_s": spread(rates, 1) if rates else None,
        "with_startup_clips_per_s": spread([n_full / f["seconds"] for f in full], 1),
        "startup_s": round(statistics.median([s["seconds"] for s in small]) - n_small / rate, 2) if rate else None,
        "seconds": spread([f["seconds"] for f in full], 2),
        "small_seconds": spread([s["seconds"] for s in small], 2),
        "peak_rss_mb": spread([f["peak_rss_mb"] for f in full], 1),
        "clips": [f["stored"] for f in full],
    }


def measure_ingest(settings: BenchSettings, clips: list[Path], workdir: Path, log=print) -> dict:
    """``asd monitor --once`` into SQLite and PostgreSQL against ``asd score``, on the same
    clips (:func:`machine_folders`) with the same model version (the newest), each a new
    process; every command runs on all folders (``n_clips``) and on the first folder only
    (``n_small``), ``max(1, (repeats + 1) // 2)`` times, in turn.

    Returns
    -------
    dict
        ``version``, ``n_clips``, ``n_machines``, ``n_small``, ``repeats``; ``score``,
        ``sqlite`` and ``postgresql`` (:func:`ingest_rates`, the monitor's with
        ``scored`` and ``alerts`` of its last run; ``postgresql`` is ``{"skipped":
        reason}`` without PostgreSQL), and ``ratio`` of each database's clips/s to
        ``asd score``'s (start-up taken out; None where not measured).
    """
    from .postgres_server import PostgresServer, postgres_bin

    version = max(versions(settings.models / settings.name))
    root = workdir / "ingest"
    folders = machine_folders(clips, root / "clips", settings.ingest_clips, settings.ingest_machines)
    n_full, n_small = sum(map(len, folders)), len(folders[0])
    small_root = root / "small"  # a copy of the first folder (the monitor follows no symlinks)
    shutil.copytree(folders[0][0].parent, small_root / folders[0][0].parent.name)
    full_root = root / "clips"
    env = _monitor_env(root)
    repeats = max(1, (settings.repeats + 1) // 2)
    log(f"ingest: {n_full} clips in {len(folders)} machine folders (and {n_small} in one), v{version}, "
        f"{repeats} run(s) each ...")

    server, skipped = None, None
    if postgres_bin() is None:
        skipped = "PostgreSQL is not installed (apt-get install -y postgresql)"
    else:
        try:
            server = PostgresServer()
        except (RuntimeError, OSError, KeyError) as exc:  # KeyError: no postgres user
            skipped = f"the PostgreSQL server did not start: {exc}"
    runs: dict[str, dict[str, list]] = {k: {"small": [], "full": []} for k in ("score", "sqlite", "postgresql")}
    last: dict[str, dict] = {}
    try:
        for r in range(repeats):
            for size, folder, n in (("small", small_root, n_small), ("full", full_root, n_full)):
                runs["score"][size].append(_score_run(settings, version, folder, env, n))
                sqlite_url = f"sqlite:///{root / f'monitor-{r}-{size}.db'}"
                last["sqlite"] = _monitor_run(settings, version, folder, sqlite_url, root / f"store-{r}-{size}", env, n)
                runs["sqlite"][size].append(last["sqlite"])
                if server is not None:
                    last["postgresql"] = _monitor_run(settings, version, folder, server.new_database(),
                                                      root / f"pg-store-{r}-{size}", env, n)
                    runs["postgresql"][size].append(last["postgresql"])
    finally:
        if server is not None:
            server.close()

    result = {"version": version, "n_clips": n_full, "n_machines": len(folders), "n_small": n_small,
              "n_source_clips": len(clips), "repeats": repeats}
    for key, label in (("score", "asd score"), ("sqlite", "asd monitor --once, SQLite"),
                       ("postgresql", "asd monitor --once, PostgreSQL")):
        if key == "postgresql" and server is None:
            result[key] = {"skipped": skipped}
            log(f"  {label}: skipped ({skipped})")
            continue
        result[key] = ingest_rates(runs[key]["small"], runs[key]["full"], n_small, n_full)
        if key in last:
            result[key]["scored"], result[key]["alerts"] = last[key]["scored"], last[key]["alerts"]
        rate = result[key]["clips_per_s"]
        log(f"  {label}: {rate['median'] if rate else 'n/a'} clips/s without start-up, "
            f"{result[key]['with_startup_clips_per_s']['median']} with")
    base = result["score"]["clips_per_s"]
    result["ratio"] = {}
    for key in ("sqlite", "postgresql"):
        rate = result[key].get("clips_per_s")
        result["ratio"][key] = round(rate["median"] / base["median"], 3) if rate and base else None
    return result


def measure_baseline_cost(settings: BenchSettings, clips: list[Path], workdir: Path, baseline_clips: int = 50,
                          n_machines: int = 10, run_clips: int = 20, log=print) -> dict:
    """What a machine baseline of ``baseline_clips`` clips adds to ``asd monitor --once``'s
    time per clip (issue 29): ``n_machines`` machines are commissioned on
    ``baseline_clips`` clips each (a first run, not timed), then the same
    ``n_machines x run_clips`` new clips are monitored (a) into that database, each judged
    against its machine's baseline (clip score, window, threshold), and (b) into an empty
    database with ``--baseline-clips 0`` (the model's verdict); both are new processes
    with the same start-up, so ``(a - b) / clips`` is the cost a clip, and its share of (b)'s
    time per clip the overhead. ``max(1, (repeats + 1) // 2)`` pairs, in turn.

    Returns
    -------
    dict
        ``version``, ``baseline_clips``, ``n_machines``, ``n_clips`` (timed clips),
        ``with_s``/``without_s`` (wall seconds), ``cost_ms_per_clip`` and ``overhead``
        (spreads over pairs); ``{"skipped": reason}`` for a model without an embedding
        output (no baselines).
    """
    from ..metadata import ModelMetadata

    version = max(versions(settings.models / settings.name))
    root = workdir / "baseline_cost"
    machine_folders(clips, root / "commission", n_machines * baseline_clips, n_machines)
    run = machine_folders(list(reversed(clips)), root / "run", n_machines * run_clips, n_machines)
    n_run = sum(map(len, run))
    meta = ModelMetadata.read(settings.models / settings.name / str(version))
    if meta.detector != "multispec_scac":
        return {"skipped": f"v{version} ({meta.detector}) has no embedding output: no baselines"}
    env = _monitor_env(root)
    repeats = max(1, (settings.repeats + 1) // 2)
    log(f"baseline cost: {n_machines} machines commissioned on {baseline_clips} clips each, then {n_run} clips "
        f"with and without their baselines, v{version}, {repeats} pair(s) ...")
    with_s, without_s = [], []
    for r in range(repeats):
        seeded = f"sqlite:///{root / f'with-{r}.db'}"
        _monitor_run(settings, version, root / "commission", seeded, root / f"store-{r}", env,
                     n_machines * baseline_clips, ("--baseline-clips", str(baseline_clips)))
        timed = _monitor_run(settings, version, root / "run", seeded, root / f"store-{r}", env, n_run,
                             ("--baseline-clips", str(baseline_clips)))
        plain = _monitor_run(settings, version, root / "run", f"sqlite:///{root / f'without-{r}.db'}",
                             root / f"plain-store-{r}", env, n_run, ("--baseline-clips", "0"))
        with_s.append(timed["seconds"])
        without_s.append(plain["seconds"])
    costs = [(w - o) / n_run * 1000 for w, o in zip(with_s, without_s)]
    overheads = [(w - o) / o for w, o in zip(with_s, without_s)]
    result = {"version": version, "baseline_clips": baseline_clips, "n_machines": n_machines, "n_clips": n_run,
              "repeats": repeats, "with_s": spread(with_s, 2), "without_s": spread(without_s, 2),
              "cost_ms_per_clip": spread(costs, 2), "overhead": spread(overheads, 3)}
    log(f"  a baseline of {baseline_clips} clips: {result['cost_ms_per_clip']['median']:g} ms a clip, "
        f"{result['overhead']['median'] * 100:.1f} % of the monitor's time")
    return result


# -- the whole benchmark -------------------------------------------------------------


def machine() -> dict:
    """CPU model, cores, memory and OS of this machine."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    memory_kb = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                     if line.startswith("MemTotal"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gb": round(memory_kb / 1024**2, 1),
            "os": platform.platform(), "python": platform.python_version()}


PACKAGES = ("numpy", "scipy", "librosa", "soundfile", "tensorflow-cpu", "keras", "orjson", "requests", "grpcio",
            "streamlit", "playwright")


def run_bench(settings: BenchSettings, log=print) -> dict:
    """Measure everything (see the module's docstring), or the chosen ``settings.sections``,
    write the Markdown report to ``settings.out`` and the JSON next to it; return the
    report. With fewer sections than all and a report already at ``settings.out``, that
    report's other sections are kept and these replaced (``updates`` says which were
    measured when, and at which commit).

    Raises
    ------
    FileNotFoundError
        No test clips under ``settings.data`` or no model versions under ``settings.models``.
    RuntimeError
        A measured command failed (its error output included).
    ValueError
        An unknown section.
    """
    started = time.perf_counter()
    unknown = set(settings.sections) - set(SECTIONS)
    if unknown or not settings.sections:
        raise ValueError(f"sections {', '.join(sorted(unknown)) or '(none)'}: choose from {', '.join(SECTIONS)}")
    sections = [s for s in SECTIONS if s in settings.sections]
    clips = [c.path for c in list_clips(settings.data, split="test")]
    if settings.max_clips:
        clips = clips[: settings.max_clips]
    if not clips:
        raise FileNotFoundError(f"{settings.data}: no test clips (needs test/ with WAV or FLAC files)")
    model_versions = versions(settings.models / settings.name)
    if not model_versions:
        raise FileNotFoundError(f"{settings.models / settings.name}: no model versions")
    serving_clip = clips[0]
    command = "asd bench " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["bench"] else "asd bench"
    report = {
        "command": command,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "git_commit": git("rev-parse", "--short", "HEAD"),
        "machine": machine(),
        "versions": {p: package_version(p) for p in PACKAGES},
        "settings": {"data": str(settings.data), "models": str(settings.models), "name": settings.name,
                     "repeats": settings.repeats, "requests": settings.requests, "n_test_clips": len(clips),
                     "serving_clip": Path(serving_clip).name, "quick": settings.quick},
        "targets": TARGETS,
    }
    out = Path(settings.out)
    if len(sections) < len(SECTIONS) and out.with_suffix(".json").is_file():
        earlier = json.loads(out.with_suffix(".json").read_text(encoding="utf-8"))
        kept = {key: earlier[key] for s in SECTIONS if s not in sections for key in SECTIONS[s] if key in earlier}
        update = {"sections": sections, "command": command, "date": report["date"],
                  "git_commit": report["git_commit"], "settings": report["settings"]}
        report = {**earlier, **kept, "targets": TARGETS, "updates": [*earlier.get("updates", []), update]}
        for key in (k for s in sections for k in SECTIONS[s]):
            report.pop(key, None)

    if "scoring" in sections:
        log(f"scoring {len(clips)} clips in-process, versions {model_versions} ...")
        report["scoring"] = [measure_scoring(settings, v, clips, log) for v in model_versions]

    with tempfile.TemporaryDirectory(prefix="asd-bench-") as tmp:
        workdir = Path(tmp)
        if "serving" in sections:
            rest_port, grpc_port = free_port(), free_port()
            log("serving: the stand-in (REST and gRPC) in its own process ...")
            server = start_process(
                [sys.executable, "-m", "asd.standins", "--models", str(settings.models), "--port", str(rest_port),
                 "--grpc-port", str(grpc_port)],
                _env(), workdir / "standin.log", f"http://127.0.0.1:{rest_port}/v1/models/{settings.name}", cwd=REPO,
            )
            url = f"http://127.0.0.1:{rest_port}"
            try:
                report["rest"] = [measure_rest(url, settings.name, v, serving_clip, settings.requests, settings.models,
                                               log) for v in model_versions]
                try:
                    report["grpc"] = [measure_grpc(f"127.0.0.1:{grpc_port}", settings.name, v, serving_clip,
                                                   settings.requests, log) for v in model_versions]
                except Exception as exc:  # no grpcio / tensorflow-serving-api here: say so, measure the rest
                    from ..serving import ServingError

                    if not isinstance(exc, ServingError):
                        raise
                    report["grpc"] = {"skipped": str(exc)}
                log("the app's memory (Streamlit, driven in Chromium) ...")
                report["app"] = {
                    "rest": measure_app({"ASD_SERVING_URL": url, "ASD_MODEL_NAME": settings.name}, serving_clip,
                                        workdir, "rest", log),
                }
            finally:
                stop_process(server)
            report["app"]["in_process"] = measure_app({"ASD_MODEL_DIR": str(settings.models)}, serving_clip, workdir,
                                                      "in_process", log)

        if "training" in sections:
            log("training (asd train, its own process) ...")
            report["training"] = measure_training(settings, workdir, log)
        if "ingest" in sections:
            report["ingest"] = measure_ingest(settings, clips, workdir, log)
            small = settings.quick  # the quick run: 2 machines, a baseline of 4, 4 clips each
            report["ingest"]["baseline"] = measure_baseline_cost(
                settings, clips, workdir, baseline_clips=4 if small else 50, n_machines=2 if small else 10,
                run_clips=4 if small else 20, log=log)
    if "training" in sections:
        log("training epochs with cached vs recomputed features ...")
        report["feature_caching"] = measure_feature_caching(settings, 1 if settings.quick else 2, log)
    report["headline"] = headline(report)
    if "updates" in report:
        report["updates"][-1]["seconds"] = round(time.perf_counter() - started, 1)
    else:
        report["bench_seconds"] = round(time.perf_counter() - started, 1)

    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    out.write_text(markdown(report), encoding="utf-8")
    return report


def headline(report: dict) -> list[dict]:
    """The targets against what was measured: ``{"what", "target", "measured", "met"}``
    (``met`` None: not measured, ``measured`` says why)."""
    rows = []
    for s in report.get("scoring", []):
        value = s["warm_clips_per_s"]["median"]
        rows.append({"what": f"`asd score`, in-process, warm: v{s['version']} ({s['detector']})",
                     "target": f">= {TARGETS['score_clips_per_s']:g} clips/s", "measured": f"{value:g} clips/s",
                     "met": value >= TARGETS["score_clips_per_s"]})
    for r in report.get("rest", []):
        p50, p95 = r["request_ms"]["p50"], r["request_ms"]["p95"]
        rows.append({"what": f"one 12 s clip, REST client vs stand-in: v{r['version']}",
                     "target": f"p50 <= {TARGETS['rest_p50_ms']:g} ms, p95 <= {TARGETS['rest_p95_ms']:g} ms",
                     "measured": f"p50 {p50:g} ms, p95 {p95:g} ms",
                     "met": p50 <= TARGETS["rest_p50_ms"] and p95 <= TARGETS["rest_p95_ms"]})
    if "training" in report:
        t = report["training"]
        rows.append({"what": f"one training epoch, {t['detector']} ({t['n_train_clips']} clips)",
                     "target": f"<= {TARGETS['epoch_s']:g} s", "measured": f"{t['epoch_s']['median']:g} s",
                     "met": t["epoch_s"]["median"] <= TARGETS["epoch_s"]})
    if "ingest" in report:
        i = report["ingest"]
        score = i["score"]["clips_per_s"]
        for key, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
            row = {"what": f"`asd monitor --once` ingest into {label}: v{i['version']}, {i['n_clips']} clips in "
                           f"{i['n_machines']} machine folders",
                   "target": f">= {TARGETS['ingest_vs_score'] * 100:g} % of `asd score`'s clips/s"
                             + (f" ({score['median']:g})" if score else "")}
            rate, ratio = i[key].get("clips_per_s"), i["ratio"].get(key)
            if "skipped" in i[key]:
                row.update(measured=f"skipped: {i[key]['skipped']}", met=None)
            elif ratio is None:
                row.update(measured="not measured: start-up noise outweighed the clips (too few clips)", met=None)
            else:
                row.update(measured=f"{rate['median']:g} clips/s ({ratio * 100:.0f} %)",
                           met=ratio >= TARGETS["ingest_vs_score"])
            rows.append(row)
        b = i.get("baseline")
        if b:
            row = {"what": f"a machine baseline of {b.get('baseline_clips', 50)} clips in `asd monitor` (v{b.get('version', '?')})",
                   "target": f"<= {TARGETS['baseline_overhead'] * 100:g} % more time a clip"}
            if "skipped" in b:
                row.update(measured=f"skipped: {b['skipped']}", met=None)
            else:
                row.update(measured=f"{b['cost_ms_per_clip']['median']:g} ms a clip ({b['overhead']['median'] * 100:.1f} %)",
                           met=b["overhead"]["median"] <= TARGETS["baseline_overhead"])
            rows.append(row)
    return rows


def _range(s: dict, unit: str = "") -> str:
    return f"**{s['median']:g}**{unit} ({s['min']:g}-{s['max']:g}, n={s['n']})"


def markdown(report: dict) -> str:
    """The report as Markdown: targets, each measurement's table, the naive way."""
    m, v, st = report["machine"], report["versions"], report["settings"]
    lines = [
        "# Speed benchmark",
        "",
        f"`{report['command']}` on {report['date']} (commit {report['git_commit']}), {report['bench_seconds']:g} s"
        + (" — **quick mode** (CI: small numbers, no targets judged)" if st["quick"] else "") + ".",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gb']:g} GB, {m['os']}, Python {m['python']}.",
        "Versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val) + ".",
        f"Data: {st['n_test_clips']} test clips of `{st['data']}`; models `{st['models']}` (`{st['name']}`); "
        f"serving clip `{st['serving_clip']}`. Figures: median (min-max, n runs) of {st['repeats']} repeats, "
        f"or percentiles of {st['requests']} requests.",
    ]
    for u in report.get("updates", []):
        lines.append(f"Re-measured since: {', '.join(u['sections'])} with `{u['command']}` on {u['date']} "
                     f"(commit {u['git_commit']}), {u['seconds']:g} s"
                     + (" — **quick mode**" if u["settings"]["quick"] else "") + ".")
    lines += [
        "",
        "## Targets",
        "",
        "| what | target | measured | met |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['what']} | {r['target']} | {r['measured']} | "
              f"{'yes' if r['met'] else 'skipped' if r['met'] is None else '**no**'} |" for r in report["headline"]]
    if "scoring" in report:
        lines += _scoring_markdown(report)
    if "rest" in report:
        lines += _serving_markdown(report)
    if "training" in report:
        lines += _training_markdown(report["training"])
    if lines[-1]:
        lines.append("")
    lines += _memory_markdown(report)
    if "ingest" in report:
        lines += ["", *_ingest_markdown(report["ingest"])]
    lines += _naive_markdown(report)
    return "\n".join(lines) + "\n"


def _scoring_markdown(report: dict) -> list[str]:
    lines = [
        "",
        "## Scoring: `asd score`, in-process backend",
        "",
        "*Warm*: `Detector.score_files` as `asd score` runs it (2 threads decode and compute log-mel ahead of the "
        "model; up to 8 ready clips per model request), after a warm-up pass; decode, log-mel, model and verdict "
        "included. *Cold*: a new `asd score` process over the same clips (Python start, TensorFlow import, model "
        "load, librosa's first calls). *One at a time*: the naive loop, each clip decoded, featured and scored "
        "before the next; its per-clip medians show where the time goes.",
        "",
        "| version | detector (input) | warm, clips/s | ms a clip | one at a time, clips/s | one clip: decode / log-mel / model, ms | cold incl. start-up, clips/s | start-up, s | peak RSS, MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in report["scoring"]:
        sm, c = s["stage_ms"], s["cold"]
        lines.append(
            f"| v{s['version']} | {s['detector']} ({s['model_input']}) | {_range(s['warm_clips_per_s'])} | "
            f"{s['warm_ms_per_clip']:g} | {_range(s['sequential_clips_per_s'])} | "
            f"{sm['decode']:g} / {sm['logmel']:g} / {sm['model']:g} (total {sm['total']:g}) | "
            f"{_range(c['clips_per_s'])} | {c['startup_s']:g} | {c['peak_rss_mb']['median']:g} |"
        )
    return lines


def _serving_markdown(report: dict) -> list[str]:
    lines = [
        "",
        "## One 12 s clip through a server",
        "",
        "The stand-in server (`python -m asd.standins`, its own process, the real SavedModel behind TF "
        "Serving's REST and gRPC APIs) answers. *Request*: the client's `predict` (encode, send, server, decode). "
        "*End to end*: file to verdict (decode, log-mel, request). The request's parts are measured from the "
        "client's side, as TF Serving tells a client nothing of its own time: *encode / decode*, the client's JSON; "
        "*model*, the same SavedModel version run in the bench process on the same input; *empty round trip*, a "
        "status request (HTTP on loopback, no body, no model); *payload*, the rest of the median request: the "
        "server reading and writing the JSON (in Python here, in C++ in TF Serving) and the bytes on the wire.",
        "",
        "| REST | input | request p50 / p95, ms | end to end p50, ms | client: encode / decode p50, ms | model p50, ms | empty round trip p50, ms | payload, ms | request / response, MB |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rest"]:
        lines.append(
            f"| v{r['version']} | `{r['input']}` {tuple(r['input_shape'])} | **{r['request_ms']['p50']:g}** / "
            f"{r['request_ms']['p95']:g} | {r['end_to_end_ms']['p50']:g} | {r['client_encode_ms']['p50']:g} / "
            f"{r['client_decode_ms']['p50']:g} | {r['model_ms']['p50']:g} | {r['round_trip_ms']['p50']:g} | "
            f"{r['payload_ms']:g} | "
            f"{r['request_mb']:g} / {r['response_mb']:g} |"
        )
    lines += [
        "",
        "What keeps the REST payload small: orjson writes the float32 arrays straight to JSON (no Python lists); "
        "dB values go with 3 decimals (1/1000 dB) and samples with 7 (1/600 of a 16-bit step), not the 17 "
        "significant digits of a float64; one request carries a clip's whole input (all its patches, or its "
        "waveform), not one request per patch. What it still carries: log-mel patches overlap 4x (32 frames every "
        "8), and an autoencoder's answer holds its reconstruction (TF Serving's REST API has no output filter).",
        "",
    ]
    if isinstance(report["grpc"], dict):
        lines += [f"gRPC: not measured ({report['grpc']['skipped']}).", ""]
    else:
        lines += [
            "| gRPC | request p50 / p95, ms | client: encode / decode p50, ms | request / response, MB |",
            "|---|---|---|---|",
        ]
        lines += [
            f"| v{g['version']} | **{g['request_ms']['p50']:g}** / {g['request_ms']['p95']:g} | "
            f"{g['client_encode_ms']['p50']:g} / {g['client_decode_ms']['p50']:g} | {g['request_mb']:g} / "
            f"{g['response_mb']:g} |"
            for g in report["grpc"]
        ]
        lines += ["", "gRPC sends float32 tensors as their bytes (`tensor_content`): no text, no rounding.", ""]
    return lines


def _training_markdown(t: dict) -> list[str]:
    return [
        "## Training",
        "",
        f"`asd train --config {t['config']}` in its own process: {t['n_train_clips']} normal clips "
        f"({t['n_validation_clips']} of them held out for early stopping), batch "
        f"{t['batch_size']}, {t['epochs_run']} epochs. Log-mel features are computed once (2 threads) and fed "
        "to Keras by a tf.data pipeline from the cached arrays; an epoch's time includes validation and the "
        "per-epoch evaluation of the labelled test clips for TensorBoard.",
        "",
        "| epoch, s | first epoch (graph tracing), s | total to the exported model, s | peak RSS, MB |",
        "|---|---|---|---|",
        f"| {_range(t['epoch_s'])} | {t['first_epoch_s']:g} | {t['total_s']:g} | {t['peak_rss_mb']:g} |",
        "",
    ]


def _memory_markdown(report: dict) -> list[str]:
    lines = [
        "## Memory (peak RSS)",
        "",
        "| process | peak RSS, MB | TensorFlow loaded |",
        "|---|---|---|",
    ]
    for s in report.get("scoring", []):
        lines.append(f"| `asd score` over {s['n_clips']} clips, v{s['version']}, in-process | "
                     f"{s['cold']['peak_rss_mb']['median']:g} | yes |")
    if "training" in report:
        t = report["training"]
        lines.append(f"| `asd train` ({t['detector']}) | {t['peak_rss_mb']:g} | yes |")
    for key, label in (("in_process", "in-process model"), ("rest", "REST to the server")):
        if "app" not in report:
            break
        a = report["app"].get(key, {})
        if "skipped" in a:
            lines.append(f"| Streamlit app, {label} | not measured: {a['skipped']} | |")
        else:
            lines.append(f"| Streamlit app, {label}, after checking a clip | {a['peak_rss_mb']:g} | "
                         f"{'yes' if a['tensorflow_loaded'] else 'no'} |")
    i = report.get("ingest", {})
    for key in ("score", "sqlite", "postgresql"):
        if i.get(key, {}).get("peak_rss_mb"):
            what = "`asd score`" if key == "score" else f"`asd monitor --once` into {_DB_LABEL[key]}"
            lines.append(f"| {what} over {i['n_clips']} clips, v{i['version']}, in-process | "
                         f"{i[key]['peak_rss_mb']['median']:g} | yes |")
    return lines


def _naive_markdown(report: dict) -> list[str]:
    if not any(key in report for key in ("scoring", "feature_caching", "rest")):
        return []
    lines = ["", "## The naive way, side by side", "",
             "| work | naive | this design | design is |", "|---|---|---|---|"]
    for s in report.get("scoring", []):
        naive, design = s["sequential_clips_per_s"]["median"], s["warm_clips_per_s"]["median"]
        lines.append(f"| scoring {s['n_clips']} clips, v{s['version']}: one at a time vs look-ahead threads and "
                     f"batched requests | {naive:g} clips/s | {design:g} clips/s | {design / naive:.1f}x faster |")
    if "feature_caching" in report:
        f = report["feature_caching"]
        naive, design = f["recomputed_epoch_s"]["median"], f["cached_epoch_s"]["median"]
        lines.append(f"| a training epoch ({f['n_clips']} clips, {f['n_patches']} patches): log-mel recomputed every "
                     f"epoch vs computed once ({f['features_once_s']:g} s) and cached | {naive:g} s | {design:g} s | "
                     f"{naive / design:.2f}x faster |")
    for r in report.get("rest", []):
        n = r["naive_full_precision"]
        lines.append(f"| one REST request, v{r['version']}: standard-library JSON at full precision vs orjson, "
                     f"rounded | {n['request_ms']['p50']:g} ms ({n['request_mb']:g} MB) | "
                     f"{r['request_ms']['p50']:g} ms ({r['request_mb']:g} MB) | "
                     f"{n['request_ms']['p50'] / r['request_ms']['p50']:.1f}x faster |")
        if r["naive_per_patch"]:
            pp = r["naive_per_patch"]
            lines.append(f"| one clip over REST, v{r['version']}: one request per patch ({pp['requests_per_clip']}) "
                         f"vs one per clip | {pp['clip_ms']['p50']:g} ms | {r['request_ms']['p50']:g} ms | "
                         f"{pp['clip_ms']['p50'] / r['request_ms']['p50']:.1f}x faster |")
    return lines


_DB_LABEL = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}


def _ingest_markdown(i: dict) -> list[str]:
    score = i["score"]
    lines = [
        "## Ingest: `asd monitor --once` against `asd score`",
        "",
        f"{i['n_source_clips']} test clips copied round into {i['n_machines']} machine folders: {i['n_clips']} clips, "
        "each copy under another path (another clip to the monitor). Each command is a new process with the same "
        f"model (v{i['version']}): `asd score FOLDER` prints a line a clip; `asd monitor --once FOLDER` decodes, "
        "hashes the PCM, scores and stores each clip in its own transaction with the alert rule (anomalous clips "
        "behind an alert copied to the clip store) into an empty database: a SQLite file, or a database on a local "
        "PostgreSQL server (`fsync=off`, a throw-away cluster). *Clips/s*: start-up (Python, TensorFlow, model "
        f"load, the schema) taken out by running each command also on the first folder only ({i['n_small']} "
        f"clips): (extra clips) / (extra seconds), median of {i['repeats']} pair(s); *with start-up*: the whole "
        "command's wall time.",
        "",
        "| command | clips/s | of `asd score` | with start-up, clips/s | start-up, s | clips counted | peak RSS, MB |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, label in (("score", "`asd score`"), ("sqlite", "`asd monitor --once`, SQLite"),
                       ("postgresql", "`asd monitor --once`, PostgreSQL")):
        r = i[key]
        if "skipped" in r:
            lines.append(f"| {label} | skipped: {r['skipped']} | | | | | |")
            continue
        rate = _range(r["clips_per_s"]) if r["clips_per_s"] else "n/a (start-up noise)"
        ratio = "" if key == "score" else ("n/a" if i["ratio"][key] is None else f"{i['ratio'][key] * 100:.0f} %")
        startup = "n/a" if r["startup_s"] is None else f"{r['startup_s']:g}"
        counted = "/".join(map(str, sorted(set(r["clips"]))))
        lines.append(f"| {label} | {rate} | {ratio} | {_range(r['with_startup_clips_per_s'])} | {startup} | "
                     f"{counted} | {r['peak_rss_mb']['median']:g} |")
    if score["clips_per_s"] is None:
        lines += ["", "`asd score`'s start-up outweighed its extra clips here: no ratio."]
    b = i.get("baseline")
    if b and "skipped" in b:
        lines += ["", f"Baseline cost: skipped ({b['skipped']})."]
    elif b:
        lines += ["", f"**A machine baseline of {b['baseline_clips']} clips** (issue 29): {b['n_machines']} machines "
                  f"commissioned on {b['baseline_clips']} clips each, then the same {b['n_clips']} new clips monitored "
                  "into that database (each judged against its machine's baseline: clip score, window, threshold) and "
                  "into an empty one with `--baseline-clips 0`, new processes with the same start-up, SQLite, "
                  f"v{b['version']}: {_range(b['with_s'], ' s')} against {_range(b['without_s'], ' s')}, "
                  f"{_range(b['cost_ms_per_clip'], ' ms')} a clip, {b['overhead']['median'] * 100:.1f} % of the "
                  f"monitor's time per clip (target <= {TARGETS['baseline_overhead'] * 100:g} %)."]
    return lines

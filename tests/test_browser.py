"""The real app in a real browser: Streamlit served over HTTP, driven by Playwright in
headless Chromium (Debian's package), the model behind TF Serving's REST API (the stand-in
server over production/models, configured by production/serving/models.config as in
docker-compose.prod.yaml).

Screenshots go to test-artifacts/screenshots/. Chromium comes from `apt-get install -y
chromium` (.ci/run installs it); without it the test is skipped, unless
ASD_REQUIRE_BROWSER=1 (set by .ci/run), where it fails.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from playwright.sync_api import expect, sync_playwright

from asd.processes import STARTUP_S, start_process, stop_process
from asd.serving.probe import PROBE_TIMEOUT_S

from .conftest import REPO, SAMPLE_FLAGGED, SAMPLE_NORMAL, SHIPPED_MODELS, free_port

SCREENSHOTS = REPO / "test-artifacts" / "screenshots"
CHROMIUM_ARGS = [  # this machine's network is closed: keep Chromium from calling out
    "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
    "--disable-component-update", "--disable-sync",
]



def _start(args: list[str], env: dict, log: Path, health_url: str) -> subprocess.Popen:
    return start_process(args, env, log, health_url, cwd=REPO, startup_s=STARTUP_S)


def _base_env() -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for key in ("ASD_SERVING_URL", "ASD_MODELS_CONFIG", "ASD_MODEL_DIR", "ASD_MODEL_NAME", "ASD_MODEL_VERSION",
                "ASD_MODEL_FILES_DIR"):
        env.pop(key, None)
    return env


def _start_app(env: dict, log: Path) -> tuple[subprocess.Popen, str]:
    """The Streamlit app in its own process; its URL."""
    port = free_port()
    app = _start(
        [str(Path(sys.executable).parent / "streamlit"), "run", "production/app/streamlit_app.py",
         "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
         "--browser.gatherUsageStats", "false"],
        env, log, f"http://127.0.0.1:{port}/_stcore/health",
    )
    return app, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """TF Serving's REST API (stand-in) and the Streamlit app, as two processes."""
    logs = tmp_path_factory.mktemp("browser_logs")
    env = _base_env()
    serving_port = free_port()
    server = _start(
        [sys.executable, "-m", "asd.standins", "--models", str(SHIPPED_MODELS), "--port", str(serving_port)],
        env, logs / "serving.log", f"http://127.0.0.1:{serving_port}/v1/models/toycar",
    )
    app_env = {**env, "ASD_SERVING_URL": f"http://127.0.0.1:{serving_port}",
               "ASD_MODELS_CONFIG": str(REPO / "production" / "serving" / "models.config"),
               "ASD_MODEL_FILES_DIR": str(SHIPPED_MODELS)}  # as compose mounts them
    try:
        app, url = _start_app(app_env, logs / "app.log")
    except Exception:
        server.kill()
        raise
    yield url
    for process in (app, server):
        stop_process(process)


@pytest.fixture(scope="module")
def browser():
    chromium = shutil.which("chromium")
    if not chromium:
        if os.environ.get("ASD_REQUIRE_BROWSER") == "1":
            pytest.fail("chromium is not installed (apt-get install -y chromium)")
        pytest.skip("needs Debian's chromium (apt-get install -y chromium); .ci/run installs it")
    expect.set_options(timeout=STARTUP_S * 1000)

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


@pytest.fixture
def page(browser, app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(STARTUP_S * 1000)
    page.goto(app_url)
    page.get_by_text("Machine sound anomaly detector").first.wait_for()
    _wait_ready(page)
    yield page
    context.close()


def _wait_ready(page) -> None:
    """The status panel has asked the server (so the model picker is filled)."""
    page.get_by_text("server: reachable").wait_for()


def _upload(page, *files: Path) -> None:
    page.locator('[data-testid="stFileUploader"] input[type="file"]').set_input_files([str(f) for f in files])


def _shot(page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _expect_verdict(page, word: str) -> float:
    """The headline verdict (``NORMAL``, ``ANOMALOUS``) in large type, and the score as a
    multiple of the threshold in the sentence, the metric and the gauge; that multiple."""
    expect(page.get_by_role("heading", name=word, exact=True)).to_be_visible()
    sentence = page.locator('[data-testid="stAlert"]').filter(has_text="Verdict:")
    expect(sentence).to_contain_text(
        re.compile(r"anomaly score is \d+\.\d\d x threshold, \d+ % (above|below) the decision threshold"))
    metric = page.locator('[data-testid="stMetricValue"]').first
    expect(metric).to_have_text(re.compile(r"^\d+\.\d\d x threshold$"))
    expect(page.locator(".js-plotly-plot").first).to_contain_text("x threshold")  # the gauge
    relative = float(metric.inner_text().split()[0])
    assert (relative > 1) == (word == "ANOMALOUS")
    return relative


def _expect_plots(page, n: int) -> None:
    """``n`` Plotly figures on the page, each drawn (its SVG layer exists)."""
    figures = page.locator(".js-plotly-plot")
    expect(figures).to_have_count(n)
    expect(page.locator(".js-plotly-plot .main-svg").first).to_be_visible()
    for i in range(n):
        expect(figures.nth(i).locator(".main-svg").first).to_be_attached()


def test_normal_and_anomalous_clips_get_their_verdicts_and_plots(page):
    _upload(page, SAMPLE_NORMAL)
    page.get_by_text("sounds normal").wait_for()
    # gauge, band profile (the model's files read from ASD_MODEL_FILES_DIR, as compose
    # mounts them beside the server) and log-mel
    _expect_plots(page, 3)
    _expect_verdict(page, "NORMAL")
    expect(page.get_by_text("last request:")).to_have_count(1)
    _shot(page, "1_normal_clip")

    page.reload()
    _wait_ready(page)
    _upload(page, SAMPLE_FLAGGED)
    page.get_by_text("sounds anomalous").wait_for()
    _expect_plots(page, 3)  # gauge, band profile against the nearest training clip, log-mel
    expect(page.get_by_text("Spectrum against the nearest normal training clip")).to_be_visible()
    relative_v4 = _expect_verdict(page, "ANOMALOUS")
    # the picker marks the recommended version and names each version's detector
    expect(page.get_by_role("combobox", name="Model served")).to_have_value(re.compile(r"\(latest, recommended\)"))
    expect(page.get_by_text("is recommended: the best official DCASE score")).to_be_visible()
    _shot(page, "2_anomalous_clip")

    # version 1, the autoencoder, explains where: reconstruction and error map too
    picker = page.locator('[data-testid="stSelectbox"]').first
    picker.click()
    expect(page.get_by_role("option", name="convolutional autoencoder")).to_have_count(1)
    page.get_by_role("option", name="toycar v1").click()
    page.get_by_text("Error map").first.wait_for()
    _expect_plots(page, 5)
    # the same clip on another version, in the same unit: the two compare
    word = "ANOMALOUS" if page.get_by_text("sounds anomalous").count() else "NORMAL"
    assert _expect_verdict(page, word) != relative_v4
    _shot(page, "3_anomalous_clip_v1")
    page.locator(".js-plotly-plot").nth(4).scroll_into_view_if_needed()
    _shot(page, "3b_anomalous_clip_v1_reconstruction_and_error_map")


def test_many_clips_give_a_results_table(page):
    _upload(page, SAMPLE_NORMAL, SAMPLE_FLAGGED)
    page.get_by_text("Results: 1 of 2 clips anomalous").wait_for()
    expect(page.locator('[data-testid="stDataFrame"]')).to_have_count(1)
    expect(page.get_by_text("Download as CSV")).to_have_count(1)
    _shot(page, "4_results_table")
    # the CSV keeps the raw score and threshold beside the multiple of the threshold
    with page.expect_download() as download:
        page.get_by_text("Download as CSV").click()
    table = pd.read_csv(download.value.path())
    assert list(table.columns) == ["file", "anomaly score (x threshold)", "anomaly score (raw)",
                                   "decision threshold (raw)", "score unit", "model", "verdict"]
    assert set(table["file"]) == {SAMPLE_NORMAL.name, SAMPLE_FLAGGED.name}
    ratio = table["anomaly score (raw)"] / table["decision threshold (raw)"]
    assert (abs(ratio - table["anomaly score (x threshold)"]) < 1e-3).all()
    assert ((table["anomaly score (x threshold)"] > 1) == (table["verdict"] == "anomalous")).all()


def test_a_text_file_renamed_wav_gets_a_clear_message(page, tmp_path):
    fake = tmp_path / "pump_log.wav"
    fake.write_text("maintenance log, pump 3: bearing noise since Monday\n" * 20)
    _upload(page, fake)
    page.get_by_text("This file cannot be checked: pump_log.wav: not a readable WAV or FLAC file").wait_for()
    assert page.get_by_text("Traceback").count() == 0
    _shot(page, "5_text_file_renamed_wav")
    # and the page keeps working for the next clip
    _upload(page, SAMPLE_NORMAL)
    page.get_by_text("sounds normal").wait_for()


def test_the_sidebar_says_what_the_threshold_did_on_the_test_set(page):
    """Per domain, with the counts the served version's metadata stores (v5 carries v4's
    evaluation: "measured on v4"); and the sample clips' rule, stated on the page."""
    from asd.metadata import ModelMetadata

    sidebar = page.locator('[data-testid="stSidebar"]')
    expect(sidebar).to_contain_text("What the threshold means on known data")
    version = int(re.search(r"model: toycar version (\d+)", sidebar.inner_text())[1])
    meta = ModelMetadata.read(SHIPPED_MODELS / "toycar" / str(version))
    measured = meta.evaluation["model"]["version"]
    assert list(meta.evaluation["sections"]) == ["00"]  # ToyCar's one section: its per-domain counts are the domain's
    for domain, d in meta.evaluation["sections"]["00"]["per_domain"].items():
        sentence = (f"{domain} domain: on the ToyCar test set it caught {d['n_anomaly_flagged']} of {d['n_anomaly']} "
                    f"faults and flagged {d['n_normal_flagged']} of {d['n_normal']} healthy clips"
                    + (f" (measured on v{measured})" if measured != version else "") + ".")
        expect(sidebar).to_contain_text(sentence)
    page.get_by_text("Sample clips", exact=True).click()
    expect(page.get_by_text("the lowest-numbered clip of each domain and label")).to_be_visible()
    _shot(page, "6_threshold_on_known_data")


@pytest.fixture(scope="module")
def in_process_app_url(tmp_path_factory):
    """The app with the model loaded in its own process (seconds of TensorFlow start-up)."""
    env = {**_base_env(), "ASD_MODEL_DIR": str(SHIPPED_MODELS)}
    app, url = _start_app(env, tmp_path_factory.mktemp("browser_logs_inprocess") / "app.log")
    yield url
    stop_process(app)


def test_a_file_can_be_picked_while_the_model_loads(browser, in_process_app_url):
    """The first page of a fresh app: the uploader is there while the model still loads,
    and a file given then is checked once the model is ready."""
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(STARTUP_S * 1000)
    page.goto(in_process_app_url)
    page.locator('[data-testid="stFileUploader"] input[type="file"]').wait_for(state="attached")
    expect(page.get_by_text("Loading the model")).to_be_visible()  # still loading: nothing else hides the uploader
    _shot(page, "0_uploader_while_the_model_loads")
    _upload(page, SAMPLE_NORMAL)
    page.get_by_text("sounds normal").wait_for()
    _expect_verdict(page, "NORMAL")
    context.close()


@pytest.fixture(scope="module")
def hung_server_app_url(tmp_path_factory):
    """The app pointed at a server that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as hung:  # the kernel accepts; nobody answers
        env = {**_base_env(), "ASD_SERVING_URL": f"http://127.0.0.1:{hung.getsockname()[1]}",
               "ASD_MODEL_NAME": "toycar"}
        app, url = _start_app(env, tmp_path_factory.mktemp("browser_logs_hung") / "app.log")
        yield url
        stop_process(app)


def test_a_hung_server_is_reported_within_seconds(browser, hung_server_app_url):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(STARTUP_S * 1000)
    page.goto(hung_server_app_url)
    page.get_by_text("Machine sound anomaly detector").first.wait_for()  # the script runs (its imports done)
    # then the status probe's deadline, not the 10 s request timeout, and a few seconds for the page
    message = page.get_by_text(f"did not answer within {PROBE_TIMEOUT_S:g} s").first
    message.wait_for(timeout=(PROBE_TIMEOUT_S + 5) * 1000)
    expect(page.get_by_role("button", name="Try again")).to_be_visible()
    _shot(page, "6_hung_server")
    context.close()


@pytest.fixture(scope="module")
def calibrate_app(tmp_path_factory):
    """The in-process app over a writable copy of shipped v4 (the Calibrate page publishes there)."""
    models = tmp_path_factory.mktemp("calibrate_models")
    shutil.copytree(SHIPPED_MODELS / "toycar" / "4", models / "toycar" / "4")
    env = {**_base_env(), "ASD_MODEL_DIR": str(models)}
    app, url = _start_app(env, tmp_path_factory.mktemp("browser_logs_calibrate") / "app.log")
    yield url, models
    stop_process(app)


def test_the_calibrate_page_publishes_a_version_the_picker_shows(browser, calibrate_app):
    """Three normal recordings uploaded, scored under v4, published as v5 (issue 15); the
    Check page's picker then offers v5 with its base and clip count."""
    from .conftest import SUBSET

    url, models = calibrate_app
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(STARTUP_S * 1000)
    page.goto(f"{url}/Calibrate")
    page.get_by_text("Normal recordings of the machine as it runs now").wait_for()
    target_normals = sorted((SUBSET / "test").glob("*target_test_normal*.flac"))
    _upload(page, SAMPLE_NORMAL, *target_normals)
    page.get_by_text("How toycar v4 scores them").wait_for()
    _shot(page, "7_calibrate_scored")
    page.get_by_role("button", name=re.compile(r"Publish a new version with 3 recording")).click()
    page.get_by_text("Published toycar v5").wait_for()
    _shot(page, "8_calibrate_published")
    assert (models / "toycar" / "5" / "saved_model.pb").is_file()
    page.goto(url)
    page.get_by_role("combobox", name="Model served").wait_for()  # in-process: no server status to wait for
    page.locator('[data-testid="stSelectbox"]').first.click()
    expect(page.get_by_role("option", name=re.compile(r"toycar v5 .*3 clips of 'target' enrolled into v4"))).to_have_count(1)
    _shot(page, "9_picker_with_the_enrolled_version")
    context.close()


@pytest.fixture(scope="module")
def machines_app(tmp_path_factory):
    """The app over a monitoring database seeded by ``asd monitor --once`` on real clips:
    press-07 fed three copies of a clip the shipped model flags (an open alert), fan-02
    the subset's normal test clips. Returns ``(app URL, database URL)``."""
    from .conftest import SUBSET
    from .test_cli import asd

    root = tmp_path_factory.mktemp("machines")
    db_url = f"sqlite:///{root / 'monitoring.db'}"
    (root / "incoming" / "press-07").mkdir(parents=True)
    (root / "incoming" / "fan-02").mkdir()
    for i in range(3):
        shutil.copy(SAMPLE_FLAGGED, root / "incoming" / "press-07" / f"2026-11-03T10-0{i}-00.wav")
    for i, clip in enumerate(sorted((SUBSET / "test").glob("*target_test_normal*.flac"))):
        shutil.copy(clip, root / "incoming" / "fan-02" / f"2026-11-03T10-0{i}-00.flac")
    seeded = asd("monitor", "--model", SHIPPED_MODELS, "--name", "toycar", "--db", db_url, "--once",
                 "--baseline-clips", "0", root / "incoming")
    assert seeded.returncode == 0 and "press-07: scored 3 (3 anomalous)" in seeded.stderr, seeded.stderr
    app, url = _start_app({**_base_env(), "ASD_DB_URL": db_url}, root / "app.log")
    yield url, db_url
    stop_process(app)


def test_the_machines_page_shows_the_trend_and_the_open_alert_and_acknowledges_it(browser, machines_app):
    from asd.monitoring.store import open_store

    url, db_url = machines_app
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(STARTUP_S * 1000)
    page.goto(f"{url}/Machines")
    table = page.locator('[data-testid="stDataFrame"]').first
    expect(table).to_be_visible()
    expect(page.get_by_text(re.compile(r"Alert #\d+ on press-07 \(raised\): raised 20"))).to_be_visible()  # open alerts first
    trend = page.locator(".js-plotly-plot").first
    expect(trend).to_contain_text("press-07: anomaly score per clip")
    expect(trend).to_contain_text("decision threshold")
    expect(trend.locator(".scatterlayer .point")).to_have_count(3)
    expect(page.locator("audio")).to_have_count(1)  # the newest clip, played from where it arrived
    expect(page.locator(".js-plotly-plot")).to_have_count(2)  # trend and the clip's spectrogram
    _shot(page, "10_machines_open_alert")
    page.get_by_label("Your name", exact=True).fill("J. Doe")
    page.get_by_label("Note (what you checked or did)").fill("bearing checked")
    page.get_by_role("button", name="Acknowledge").click()
    expect(page.get_by_text("Acknowledged by J. Doe")).to_be_visible()
    _shot(page, "11_machines_acknowledged")
    store = open_store(db_url)
    [alert] = store.alerts(machine="press-07")
    assert (alert.state, alert.acknowledged_by, alert.note) == ("acknowledged", "J. Doe", "bearing checked")
    store.close()
    page.get_by_role("combobox", name="Machine").click()
    page.get_by_role("option", name="fan-02").click()
    expect(page.get_by_text("No open alert on fan-02.")).to_be_visible()
    context.close()

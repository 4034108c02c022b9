"""Sign-in and roles (issue 31) in a real browser against a real OpenID Connect provider:
``oidc-provider-mock`` (a Flask OIDC server, started by the test), the app's Streamlit
``st.login`` configured by a secrets file, Playwright driving Debian's chromium. Users and
their ``groups`` claims are set on the provider; each signs in on its authorization form.

Also: without sign-in, bound to a non-local address, the app scores but does not publish,
and says how to turn sign-in on; and the guarded code paths refuse a viewer directly."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import pytest
import requests
from playwright.sync_api import expect

from asd.access import AccessDenied, Identity
from asd.processes import STARTUP_S, start_process, stop_process

from .conftest import REPO, SAMPLE_NORMAL, SHIPPED_MODELS, SUBSET, free_port
from .test_browser import _base_env, _shot, _upload, browser  # noqa: F401  (the browser fixture)

VIEWER, ADMIN = "vera.viewer@plant.example", "adam.admin@plant.example"
TARGET_NORMALS = sorted((SUBSET / "test").glob("*target_test_normal*.flac"))


@pytest.fixture(scope="module")
def provider():
    """The OIDC provider on a free port, with a viewer and an admin (``groups`` claims)."""
    from oidc_provider_mock import run_server_in_thread

    with run_server_in_thread() as server:
        issuer = f"http://127.0.0.1:{server.server_port}"
        for email, groups in ((VIEWER, ["viewer"]), (ADMIN, ["admin"])):
            answer = requests.put(f"{issuer}/users/{email}", json={"email": email, "groups": groups}, timeout=10)
            assert answer.status_code == 204, answer.text
        yield issuer


def _auth_secrets(tmp: Path, port: int, provider: str) -> Path:
    """A secrets file with the ``[auth]`` section for an app on ``port`` signing in at the
    mock ``provider`` (throwaway test values: the mock accepts any client secret)."""
    secrets = tmp / "secrets.toml"
    secrets.write_text(
        "[auth]\n"
        f'redirect_uri = "http://127.0.0.1:{port}/oauth2callback"\n'
        'cookie_secret = "test-only-cookie-secret"\n'
        'client_id = "asd-app"\n'
        'client_secret = "test-only-client-secret"\n'
        f'server_metadata_url = "{provider}/.well-known/openid-configuration"\n'
        'client_kwargs = { scope = "openid email profile" }\n')
    return secrets


def _start_app(tmp: Path, env: dict, address: str = "127.0.0.1", secrets: Path | None = None):
    port = free_port()
    args = [str(Path(sys.executable).parent / "streamlit"), "run", "production/app/streamlit_app.py",
            "--server.headless", "true", "--server.address", address, "--server.port", str(port),
            "--browser.gatherUsageStats", "false"]
    if secrets:
        args += ["--secrets.files", str(secrets)]
    app = start_process(args, env, tmp / "app.log", f"http://127.0.0.1:{port}/_stcore/health", cwd=REPO,
                        startup_s=STARTUP_S)
    return app, f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def signin_app(provider, tmp_path_factory):
    """The in-process app over a writable copy of the shipped default version, sign-in on
    (an ``[auth]`` secrets file pointing at the provider). Returns ``(url, models dir)``."""
    tmp = tmp_path_factory.mktemp("signin")
    models = tmp / "models"
    latest = max(int(p.name) for p in (SHIPPED_MODELS / "toycar").iterdir() if p.name.isdigit())
    shutil.copytree(SHIPPED_MODELS / "toycar" / str(latest), models / "toycar" / str(latest))
    port = free_port()
    secrets = _auth_secrets(tmp, port, provider)
    args = [str(Path(sys.executable).parent / "streamlit"), "run", "production/app/streamlit_app.py",
            "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
            "--browser.gatherUsageStats", "false", "--secrets.files", str(secrets)]
    app = start_process(args, {**_base_env(), "ASD_MODEL_DIR": str(models)}, tmp / "app.log",
                        f"http://127.0.0.1:{port}/_stcore/health", cwd=REPO, startup_s=STARTUP_S)
    yield f"http://127.0.0.1:{port}", models, latest
    stop_process(app)


def _page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    page.set_default_timeout(STARTUP_S * 1000)
    return context, page


def _sign_in(page, url: str, who: str) -> None:
    page.goto(url)
    page.get_by_role("button", name="Sign in").click()
    page.locator('input[name="sub"]').fill(who)  # the provider's authorization form
    page.get_by_role("button", name="Authorize").click()
    page.get_by_text(f"Signed in as {who}").wait_for()


def _publish_as_admin(page, url: str, latest: int) -> None:
    """Sign in as the admin, upload the subset's target normals on Calibrate, publish."""
    _sign_in(page, url, ADMIN)
    page.goto(f"{url}/Calibrate")
    page.get_by_text("Normal recordings of the machine as it runs now").wait_for()
    _upload(page, *TARGET_NORMALS)
    page.get_by_role("button", name=re.compile(r"Publish a new version with \d+ recording")).click()
    page.get_by_text(re.compile(rf"Published toycar v{latest + 1}")).wait_for()


def test_an_anonymous_visitor_sees_only_the_sign_in_button(browser, signin_app):
    url, _, _ = signin_app
    context, page = _page(browser)
    for path in ("", "/Calibrate", "/Machines"):
        page.goto(url + path)
        expect(page.get_by_role("button", name="Sign in")).to_be_visible()
        expect(page.locator('[data-testid="stFileUploader"]')).to_have_count(0)
    _shot(page, "20_signin_required")
    context.close()


def test_a_viewer_scores_but_has_no_publish_step(browser, signin_app):
    url, models, latest = signin_app
    context, page = _page(browser)
    _sign_in(page, url, VIEWER)
    expect(page.get_by_text(f"Signed in as {VIEWER} (viewer)")).to_be_visible()
    _upload(page, SAMPLE_NORMAL)
    expect(page.get_by_role("heading", name=re.compile("^(NORMAL|ANOMALOUS)$"))).to_be_visible()
    page.goto(f"{url}/Calibrate")
    expect(page.get_by_text(re.compile("publishing needs the admin role"))).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("Publish"))).to_have_count(0)
    _shot(page, "21_viewer_no_publish")
    assert sorted(p.name for p in (models / "toycar").iterdir() if p.name.isdigit()) == [str(latest)]
    context.close()


def test_an_admin_publishes_and_the_version_records_who(browser, signin_app):
    url, models, latest = signin_app
    context, page = _page(browser)
    _publish_as_admin(page, url, latest)
    _shot(page, "22_admin_published")
    meta = json.loads((models / "toycar" / str(latest + 1) / "assets.extra" / "asd_metadata.json").read_text())
    by = meta["enrolment"]["published_by"]
    assert (by["email"], by["role"], by["via"]) == (ADMIN, "admin", "sign-in") and by["at"]
    context.close()


def test_the_publish_code_path_refuses_a_viewer(tmp_path):
    """A crafted call of the publish path as a viewer (no button needed) is refused before
    anything is written; so are acknowledging as a viewer and changing a rule as an operator."""
    from asd.access.guarded import acknowledge_alert, publish_version, set_rule
    from asd.monitoring.store import open_store

    models = tmp_path / "models"
    shutil.copytree(SHIPPED_MODELS / "toycar" / "5", models / "toycar" / "5")
    viewer = Identity(VIEWER, "viewer", "sign-in", VIEWER)
    with pytest.raises(AccessDenied, match="may not publish: it needs the admin role"):
        publish_version(viewer, models, "toycar", TARGET_NORMALS, "target", 5)
    assert [p.name for p in (models / "toycar").iterdir()] == ["5"]  # nothing written, not even a temp folder
    store = open_store(f"sqlite:///{tmp_path / 'm.db'}")
    with pytest.raises(AccessDenied, match="needs the operator role"):
        acknowledge_alert(viewer, store, 1, "crafted")
    with pytest.raises(AccessDenied, match="needs the admin role"):
        set_rule(Identity("op", "operator", "sign-in"), store, "press-07", 1, 1, 1)
    open_app = Identity("anonymous", "viewer", "open")
    with pytest.raises(AccessDenied, match="reachable from other machines without sign-in"):
        publish_version(open_app, models, "toycar", TARGET_NORMALS, "target", 5)
    store.close()


@pytest.fixture(scope="module")
def open_app(tmp_path_factory):
    """The in-process app bound to all addresses (0.0.0.0) with no sign-in configured."""
    tmp = tmp_path_factory.mktemp("open_app")
    models = tmp / "models"
    shutil.copytree(SHIPPED_MODELS / "toycar" / "5", models / "toycar" / "5")
    app, url = _start_app(tmp, {**_base_env(), "ASD_MODEL_DIR": str(models)}, address="0.0.0.0")
    yield url, models
    stop_process(app)


def test_without_sign_in_on_a_network_address_it_scores_but_does_not_publish(browser, open_app):
    url, models = open_app
    context, page = _page(browser)
    page.goto(url)
    expect(page.get_by_text(re.compile("Sign-in is off and this app is reachable from other machines"))).to_be_visible()
    _upload(page, SAMPLE_NORMAL)
    expect(page.get_by_role("heading", name=re.compile("^(NORMAL|ANOMALOUS)$"))).to_be_visible()
    page.goto(f"{url}/Calibrate")
    expect(page.get_by_text(re.compile("Publishing from this page is off: this app is reachable"))).to_be_visible()
    expect(page.get_by_role("button", name=re.compile("Publish"))).to_have_count(0)
    _shot(page, "23_open_app_banner")
    assert [p.name for p in (models / "toycar").iterdir()] == ["5"]
    context.close()


@pytest.fixture(scope="module")
def server_mode_app(provider, tmp_path_factory):
    """Production's shape: a TF Serving stand-in over a models folder it polls, and the app
    talking to it over REST, given the same folder writable (``ASD_PUBLISH_MODELS_DIR``),
    sign-in on. Returns ``(app URL, serving URL, models dir, latest version)``."""
    tmp = tmp_path_factory.mktemp("server_mode")
    models = tmp / "models"
    latest = 5
    shutil.copytree(SHIPPED_MODELS / "toycar" / str(latest), models / "toycar" / str(latest))
    serving_port, port = free_port(), free_port()
    server = start_process([sys.executable, "-m", "asd.standins", "--models", str(models), "--port", str(serving_port)],
                           _base_env(), tmp / "serving.log", f"http://127.0.0.1:{serving_port}/v1/models/toycar",
                           cwd=REPO, startup_s=STARTUP_S)
    secrets = _auth_secrets(tmp, port, provider)
    env = {**_base_env(), "ASD_SERVING_URL": f"http://127.0.0.1:{serving_port}", "ASD_MODEL_NAME": "toycar",
           "ASD_PUBLISH_MODELS_DIR": str(models)}
    try:
        app = start_process(
            [str(Path(sys.executable).parent / "streamlit"), "run", "production/app/streamlit_app.py",
             "--server.headless", "true", "--server.address", "127.0.0.1", "--server.port", str(port),
             "--browser.gatherUsageStats", "false", "--secrets.files", str(secrets)],
            env, tmp / "app.log", f"http://127.0.0.1:{port}/_stcore/health", cwd=REPO, startup_s=STARTUP_S)
    except Exception:
        stop_process(server)
        raise
    yield f"http://127.0.0.1:{port}", f"http://127.0.0.1:{serving_port}", models, latest
    stop_process(app)
    stop_process(server)


def test_behind_serving_an_admin_publishes_into_the_shared_folder_and_serving_loads_it(browser, server_mode_app):
    import time

    url, serving, models, latest = server_mode_app
    context, page = _page(browser)
    _publish_as_admin(page, url, latest)
    context.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the stand-in polls the folder as TF Serving does
        status = requests.get(f"{serving}/v1/models/toycar/versions/{latest + 1}", timeout=5)
        if status.status_code == 200 and status.json()["model_version_status"][0]["state"] == "AVAILABLE":
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"the stand-in did not load v{latest + 1}: {status.status_code} {status.text[:300]}")
    meta = json.loads((models / "toycar" / str(latest + 1) / "assets.extra" / "asd_metadata.json").read_text())
    assert meta["enrolment"]["published_by"]["email"] == ADMIN

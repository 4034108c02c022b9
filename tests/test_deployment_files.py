"""Compose files against the official Compose spec; images install what CI installs."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import REPO


@pytest.mark.parametrize("name", ["docker-compose.dev.yaml", "docker-compose.prod.yaml"])
def test_compose_file_validates_against_the_compose_spec(name):
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    assert tool, "check-jsonschema is a test dependency (pip install .[test])"
    run = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(REPO / name)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_prod_compose_serves_the_shipped_models_to_the_app():
    compose = yaml.safe_load((REPO / "docker-compose.prod.yaml").read_text())
    serving, app = compose["services"]["serving"], compose["services"]["app"]
    assert serving["image"].startswith("tensorflow/serving:")
    assert any(v.startswith("./production/models:/models") for v in serving["volumes"])
    assert serving["environment"]["MODEL_NAME"] == "toycar"
    assert app["environment"]["ASD_SERVING_URL"] == "http://serving:8501"
    assert (REPO / app["build"]["context"] / app["build"]["dockerfile"]).is_file()


@pytest.mark.parametrize("dockerfile, extras", [("production/Dockerfile", ".[app]"), ("development/Dockerfile", ".[app,train,notebook]")])
def test_images_install_the_project_extras_that_ci_installs(dockerfile, extras):
    text = (REPO / dockerfile).read_text()
    assert f'"{extras}"' in text or f" {extras}" in text
    assert "constraints.txt" in text
    ci = (REPO / ".ci" / "run").read_text() + (REPO / "scripts" / "setup-env").read_text()
    assert "constraints.txt" in ci

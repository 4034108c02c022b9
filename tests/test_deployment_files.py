"""Deployment files: compose files against the official Compose spec, TF Serving's config
files parsed with TF Serving's own protos, the structure of the production stack, and its
healthcheck commands run against stand-in servers. (No Docker engine or TF Serving binary
runs where these tests run; see the README's "With Docker".)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path, PurePosixPath

import pytest
import yaml

from .conftest import REPO, SHIPPED_MODELS, free_port

COMPOSE_FILES = ["compose.yaml", "docker-compose.dev.yaml", "docker-compose.prod.yaml", "docker-compose.gpu.yaml",
                 "docker-compose.signin.yaml"]
SERVING_CONFIG = REPO / "production" / "serving"
METRICS_PATH = "/monitoring/prometheus/metrics"


def _compose(name: str = "docker-compose.prod.yaml") -> dict:
    return yaml.safe_load((REPO / name).read_text())


def _services(name: str = "docker-compose.prod.yaml") -> dict:
    return _compose(name)["services"]


def _flags(service: dict) -> dict[str, str]:
    """``--name=value`` arguments of a service's command."""
    return dict(arg[2:].split("=", 1) for arg in service["command"] if arg.startswith("--") and "=" in arg)


def _mounts(service: dict) -> list[tuple[Path, PurePosixPath, bool]]:
    """Bind mounts of a service: ``(host path in the repository, container path, read-only)``."""
    mounts = []
    for volume in service.get("volumes", []):
        parts = volume.split(":")
        if parts[0].startswith("."):
            mounts.append((REPO / parts[0], PurePosixPath(parts[1]), parts[2:] == ["ro"]))
    return mounts


def _host_path(service: dict, container_path: str) -> Path:
    """The repository file a container path of a service comes from (through its bind mounts)."""
    target = PurePosixPath(container_path)
    for host, inside, _ in _mounts(service):
        if target == inside or inside in target.parents:
            return host / target.relative_to(inside)
    raise AssertionError(f"{container_path} is not in a bind mount of the service")


# -- TF Serving's config protos ----------------------------------------------------------
# The tensorflow-serving-api wheel ships ModelServerConfig (tensorflow_serving.config) but
# not session_bundle_config.proto's BatchingParameters nor monitoring_config.proto. These
# are built from those .proto files (tensorflow/serving; field names and types, which is
# all the text format uses, as read by bundle_factory_util.h: max_batch_size,
# batch_timeout_micros, max_enqueued_batches, num_batch_threads, max_execution_batch_size
# Int64Value; thread_pool_name StringValue; enable_large_batch_splitting BoolValue).


def _proto_classes():
    try:  # the real modules, should a future wheel ship them
        from tensorflow_serving.config.monitoring_config_pb2 import MonitoringConfig
        from tensorflow_serving.servables.tensorflow.session_bundle_config_pb2 import BatchingParameters

        return BatchingParameters, MonitoringConfig
    except ImportError:
        pass
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, wrappers_pb2

    F = descriptor_pb2.FieldDescriptorProto
    pool = descriptor_pool.DescriptorPool()
    wrappers = descriptor_pb2.FileDescriptorProto()
    wrappers_pb2.DESCRIPTOR.CopyToProto(wrappers)
    pool.Add(wrappers)
    proto = descriptor_pb2.FileDescriptorProto(
        name="asd_tests/tf_serving_config.proto", package="tensorflow.serving", syntax="proto3",
        dependency=["google/protobuf/wrappers.proto"],
    )

    def message(name, *fields):
        m = proto.message_type.add(name=name)
        for number, (field, kind, type_name, label) in enumerate(fields, 1):
            m.field.add(name=field, number=number, type=kind, type_name=type_name, label=label)

    single, repeated = F.LABEL_OPTIONAL, F.LABEL_REPEATED
    msg, i64, b = F.TYPE_MESSAGE, ".google.protobuf.Int64Value", ".google.protobuf.BoolValue"
    message(
        "BatchingParameters",
        ("max_batch_size", msg, i64, single),
        ("batch_timeout_micros", msg, i64, single),
        ("max_enqueued_batches", msg, i64, single),
        ("num_batch_threads", msg, i64, single),
        ("thread_pool_name", msg, ".google.protobuf.StringValue", single),
        ("allowed_batch_sizes", F.TYPE_INT64, None, repeated),
        ("pad_variable_length_inputs", F.TYPE_BOOL, None, single),
        ("enable_large_batch_splitting", msg, b, single),
        ("max_execution_batch_size", msg, i64, single),
    )
    message("PrometheusConfig", ("enable", F.TYPE_BOOL, None, single), ("path", F.TYPE_STRING, None, single))
    message("MonitoringConfig", ("prometheus_config", msg, ".tensorflow.serving.PrometheusConfig", single))
    pool.Add(proto)
    return tuple(
        message_factory.GetMessageClass(pool.FindMessageTypeByName(f"tensorflow.serving.{n}"))
        for n in ("BatchingParameters", "MonitoringConfig")
    )


def _parse(path: Path, message_class):
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(), message_class())


def _models_config():
    from tensorflow_serving.config.model_server_config_pb2 import ModelServerConfig

    return _parse(SERVING_CONFIG / "models.config", ModelServerConfig)


# -- compose files -----------------------------------------------------------------------


@pytest.mark.parametrize("name", COMPOSE_FILES)
def test_compose_file_validates_against_the_compose_spec(name):
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    assert tool, "check-jsonschema is a test dependency (pip install .[test])"
    run = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(REPO / name)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_prod_compose_serves_the_shipped_models_to_the_app():
    serving, app = _services()["serving"], _services()["app"]
    assert serving["image"].startswith("tensorflow/serving:")
    assert (REPO / "production" / "models", PurePosixPath("/models"), True) in _mounts(serving)
    assert app["environment"]["ASD_SERVING_URL"] == "http://serving:8501"
    assert app["environment"]["ASD_MODEL_NAME"] in {c.name for c in _models_config().model_config_list.config}
    assert (REPO / app["build"]["context"] / app["build"]["dockerfile"]).is_file()


def test_serving_starts_from_the_config_files_in_the_repository():
    serving = _services()["serving"]
    flags = _flags(serving)
    assert flags["model_config_file_poll_wait_seconds"] == "60"
    assert flags["enable_batching"] == "true" and flags["enable_model_warmup"] == "true"
    for flag in ("model_config_file", "monitoring_config_file", "batching_parameters_file"):
        path = _host_path(serving, flags[flag])
        assert path.is_file() and path.parent == SERVING_CONFIG, (flag, path)
    # configuration and models are mounted read-only
    assert all(read_only for _, _, read_only in _mounts(serving))


def test_models_config_serves_every_exported_model_and_only_those():
    config = _models_config()
    entries = {c.name: c for c in config.model_config_list.config}
    exported = sorted(p.name for p in SHIPPED_MODELS.iterdir() if p.is_dir())
    assert sorted(entries) == exported, "every model directory in production/models needs an entry in models.config"
    serving = _services()["serving"]
    for name, entry in entries.items():
        host = _host_path(serving, entry.base_path)
        assert host.is_dir() and host == SHIPPED_MODELS / name, (name, entry.base_path)
        assert entry.model_platform == "tensorflow"
    # the newest version and the one before it, ready for a rollback
    policy = entries["toycar"].model_version_policy
    assert policy.WhichOneof("policy_choice") == "latest" and policy.latest.num_versions == 2


def test_batching_config_takes_a_long_clip_in_one_request():
    from asd.features import FeatureConfig, patch_starts

    batching_class, _ = _proto_classes()
    params = _parse(SERVING_CONFIG / "batching.config", batching_class)
    features = FeatureConfig()
    per_clip = {s: len(patch_starts(1 + s * features.sample_rate // features.hop_length, features)) for s in (12, 60)}
    assert per_clip == {12: 44, 60: 232}
    for field in ("max_batch_size", "batch_timeout_micros", "num_batch_threads", "max_enqueued_batches", "max_execution_batch_size"):
        assert params.HasField(field), field
    assert params.max_batch_size.value >= 2 * per_clip[60]  # a request above it is refused
    assert params.enable_large_batch_splitting.value
    assert per_clip[12] <= params.max_execution_batch_size.value <= params.max_batch_size.value
    assert 0 <= params.batch_timeout_micros.value <= 10_000
    assert params.num_batch_threads.value >= 1
    # the queue holds at least one largest request once it is split
    assert params.max_enqueued_batches.value * params.max_execution_batch_size.value >= params.max_batch_size.value
    assert not params.allowed_batch_sizes  # no padding of batches


def test_monitoring_config_exposes_prometheus_metrics_that_prometheus_scrapes():
    _, monitoring_class = _proto_classes()
    config = _parse(SERVING_CONFIG / "monitoring.config", monitoring_class)
    assert config.prometheus_config.enable and config.prometheus_config.path == METRICS_PATH

    prometheus = _services()["prometheus"]
    assert prometheus["profiles"] == ["monitoring"]
    assert prometheus["depends_on"]["serving"]["condition"] == "service_healthy"
    scrape_file = _host_path(prometheus, "/etc/prometheus/prometheus.yml")
    assert scrape_file == SERVING_CONFIG / "prometheus.yml"
    (job,) = yaml.safe_load(scrape_file.read_text())["scrape_configs"]
    assert job["metrics_path"] == METRICS_PATH
    assert job["static_configs"] == [{"targets": ["serving:8501"]}]
    assert all(p.startswith("127.0.0.1:") for p in prometheus["ports"])  # the UI stays on the host


def test_only_the_app_is_published_and_it_waits_for_a_healthy_server():
    services = _services()
    serving, app = services["serving"], services["app"]
    assert "ports" not in serving and set(serving["expose"]) == {"8500", "8501"}
    assert app["ports"] == ["8501:8501"]
    assert app["depends_on"] == {"serving": {"condition": "service_healthy"}}
    for name in ("serving", "app", "prometheus"):
        check = services[name]["healthcheck"]
        assert check["test"][0] == "CMD" and check["interval"] and check["timeout"], name
    assert "/_stcore/health" in " ".join(app["healthcheck"]["test"])


def test_app_reads_the_served_models_config():
    app = _services()["app"]
    env = app["environment"]
    assert env["ASD_MODELS_CONFIG"] == "/config/models.config"
    assert _host_path(app, env["ASD_MODELS_CONFIG"]) == SERVING_CONFIG / "models.config"
    assert all(read_only for _, _, read_only in _mounts(app))


def test_app_runs_as_a_non_root_user():
    user = str(_services()["app"]["user"])
    assert user.split(":")[0] not in ("", "0", "root")
    dockerfile = (REPO / "production" / "Dockerfile").read_text()
    final_user = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)[-1]
    assert final_user.split(":")[0] not in ("0", "root")
    assert final_user == user  # the same uid:gid, which the image creates
    assert re.search(rf"useradd .*--uid {user.split(':')[0]}\b", dockerfile)


# Images whose patch releases have two numbers (PostgreSQL 17.6), optionally with their
# Debian release; every other image's tag has three.
TWO_NUMBER_RELEASES = {"postgres": r"\d+\.\d+(-(bookworm|trixie))?"}


@pytest.mark.parametrize("name", [n for n in COMPOSE_FILES if n != "compose.yaml"])  # it only includes
def test_compose_images_are_pinned_to_versions(name):
    for service_name, service in _services(name).items():
        if "image" not in service or "build" in service:
            continue  # built here from pinned sources
        repository, _, tag = service["image"].rpartition(":")
        if repository in TWO_NUMBER_RELEASES:
            assert re.fullmatch(TWO_NUMBER_RELEASES[repository], tag), (service_name, service["image"])
            continue
        assert repository and re.match(r"v?\d+\.\d+\.\d+", tag) and "latest" not in tag, (service_name, service["image"])


def test_app_base_image_is_pinned_to_a_patch_version_and_debian_release():
    dockerfile = (REPO / "production" / "Dockerfile").read_text()
    (base,) = re.findall(r"^FROM\s+(\S+)", dockerfile, re.M)
    assert re.fullmatch(r"python:3\.11\.\d+-slim-(bookworm|trixie)", base), base


def test_gpu_override_runs_the_same_server_version_on_one_nvidia_gpu():
    cpu, gpu = _services()["serving"], _services("docker-compose.gpu.yaml")["serving"]
    assert gpu["image"] == cpu["image"] + "-gpu"
    assert gpu["deploy"]["resources"]["reservations"]["devices"] == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert set(_services("docker-compose.gpu.yaml")) == {"serving"}  # everything else comes from prod


def test_app_image_installs_the_config_protos_and_streamlit_settings():
    dockerfile = (REPO / "production" / "Dockerfile").read_text()
    main, nodeps = dockerfile.find('pip install -c constraints.txt ".[${ASD_EXTRAS}]"'), dockerfile.find("pip install --no-deps -r requirements-nodeps.txt")
    assert 0 < main < nodeps
    copies = [line.split()[1:] for line in dockerfile.splitlines() if line.startswith("COPY ")]
    sources = [s for c in copies for s in c[:-1] if not s.startswith("--")]
    # Streamlit's config (the upload limit) lands where `streamlit run` reads it: the working directory
    assert [".streamlit/config.toml", "./.streamlit/config.toml"] in copies
    assert "WORKDIR /opt/asd" in dockerfile and (REPO / ".streamlit" / "config.toml").is_file()
    for source in sources:
        if not any(ch in source for ch in "*?["):
            assert (REPO / source).exists(), f"COPY {source}: missing from the repository"


def _build_args(dockerfile: str) -> dict[str, str]:
    """``ARG name=default`` lines of a Dockerfile."""
    text = (REPO / dockerfile).read_text()
    return dict(m.groups() for m in re.finditer(r"^ARG\s+(\w+)=(\S*)\s*$", text, re.M))


def _expand_build_args(text: str, args: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], text)


@pytest.mark.parametrize("dockerfile, extras", [("production/Dockerfile", ".[app]"), ("development/Dockerfile", ".[app,train,notebook]")])
def test_images_install_the_project_extras_that_ci_installs(dockerfile, extras):
    text = _expand_build_args((REPO / dockerfile).read_text(), _build_args(dockerfile))  # the default build
    assert f'"{extras}"' in text or f" {extras}" in text
    assert "constraints.txt" in text
    ci = (REPO / ".ci" / "run").read_text() + (REPO / "scripts" / "setup-env").read_text()
    assert "constraints.txt" in ci


# -- the development stack (docker-compose.dev.yaml) ------------------------------------------


def _volumes(service: dict) -> dict[str, tuple[str, bool]]:
    """Container path -> (host path as written, read-only); host paths may hold ``${VAR:-default}``."""
    volumes = {}
    for volume in service.get("volumes", []):
        match = re.fullmatch(r"(\$\{[^}]*\}|[^:]+):([^:]+)(?::(ro|rw))?", volume)
        assert match, volume
        volumes[match[2]] = (match[1], match[3] == "ro")
    return volumes


def _env_example() -> dict[str, str]:
    lines = (REPO / ".env.example").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line.strip() and not line.startswith("#"))


def test_dev_compose_shares_code_data_and_runs_between_jupyter_and_tensorboard():
    services = _services("docker-compose.dev.yaml")
    assert set(services) == {"jupyter", "tensorboard"}
    jupyter, tensorboard = services["jupyter"], services["tensorboard"]
    volumes, env = _volumes(jupyter), jupyter["environment"]
    assert volumes["/workspace"] == (".", False)  # the code, editable; notebooks saved back to the host
    # the data: ASD_DATA_DIR from .env, else ./data (git-ignored), read-only where the notebooks look
    assert volumes[env["ASD_DATA_DIR"]] == ("${ASD_DATA_DIR:-./data}", True)
    assert _env_example()["ASD_DATA_DIR"] == "./data"
    # runs and models: the repository's runs/, which TensorBoard reads
    runs = "/workspace/runs"
    assert env["ASD_RUNS_DIR"] == runs and PurePosixPath(env["ASD_MODELS_DIR"]).is_relative_to(runs)
    assert "production" not in env["ASD_MODELS_DIR"]  # notebooks never write the shipped models
    assert volumes[runs] == ("./runs", False) and _volumes(tensorboard)[runs] == ("./runs", True)
    command = tensorboard["command"]
    assert command[0] == "tensorboard" and command[command.index("--logdir") + 1] == runs
    # both built from the development image, which installs the package editable from /workspace
    assert jupyter["build"] == tensorboard["build"] == {"context": ".", "dockerfile": "development/Dockerfile"}
    assert jupyter["command"][:2] == ["jupyter", "lab"] and "--ServerApp.root_dir=/workspace" in jupyter["command"]


def test_dev_compose_publishes_only_on_localhost():
    services = _services("docker-compose.dev.yaml")
    assert services["jupyter"]["ports"] == ["127.0.0.1:8888:8888"]
    assert services["tensorboard"]["ports"] == ["127.0.0.1:6006:6006"]
    # an empty token makes JupyterLab generate one (never no token)
    assert services["jupyter"]["environment"]["JUPYTER_TOKEN"] == "${JUPYTER_TOKEN:-}"
    assert "JUPYTER_TOKEN" in _env_example()


def test_dev_image_imports_the_mounted_code():
    dockerfile = (REPO / "development" / "Dockerfile").read_text()
    assert re.search(r"^WORKDIR /workspace$", dockerfile, re.M)
    assert "pip install --no-deps -e /workspace" in dockerfile  # a path entry to /workspace/src, the mount
    assert "is_relative_to('/workspace/src')" in dockerfile  # checked at build time
    assert re.search(r'pip install -c constraints.txt "\.\[app,train,notebook\]"', dockerfile)


def test_user_files_stay_out_of_git_and_the_example_is_in():
    ignored = (REPO / ".gitignore").read_text().splitlines()
    assert ".env" in ignored and "data/" in ignored and "runs/" in ignored
    run = subprocess.run(["git", "check-ignore", "-q", ".env.example"], cwd=REPO)
    assert run.returncode == 1, ".env.example must be committed"


# -- machine monitoring: PostgreSQL and asd monitor ------------------------------------------


def _seconds(duration: str) -> float:
    """A compose duration such as ``30s``, ``1m30s``."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[u] for n, u in parts)


def _git_ignored(path: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO).returncode == 0


def _secret_file(name: str) -> tuple[str, Path]:
    """The container path and the repository file of a compose secret."""
    secret = _compose()["secrets"][name]
    return f"/run/secrets/{name}", REPO / secret["file"]


def test_postgres_keeps_its_data_in_a_named_volume_and_its_password_in_a_git_ignored_secret():
    compose = _compose()
    postgres = compose["services"]["postgres"]
    repository, _, tag = postgres["image"].rpartition(":")
    assert repository == "postgres" and tag.split(".")[0] in {"16", "17"}  # the official image
    # data: a named volume declared at the top level (not a bind mount, not the container's layer)
    volumes = _volumes(postgres)
    data_volume, read_only = volumes["/var/lib/postgresql/data"]
    assert data_volume in compose["volumes"] and not read_only
    # the password: only as a file of a secret, never a value in the environment
    env = postgres["environment"]
    assert "POSTGRES_PASSWORD" not in env
    (secret,) = postgres["secrets"]
    inside, host = _secret_file(secret)
    assert env["POSTGRES_PASSWORD_FILE"] == inside
    relative = host.relative_to(REPO).as_posix()
    assert _git_ignored(relative), f"{relative} must be git-ignored"
    tracked = subprocess.run(["git", "ls-files", "--", host.parent.relative_to(REPO).as_posix()],
                             cwd=REPO, capture_output=True, text=True).stdout
    assert tracked == "", f"committed secrets: {tracked}"
    # how to make the file is written where the file is named
    assert re.search(rf"> *{re.escape(relative)}", (REPO / "docker-compose.prod.yaml").read_text())
    # ready when it answers on TCP as the monitor's user and database; reachable only inside compose
    check = postgres["healthcheck"]["test"]
    assert check[:2] == ["CMD", "pg_isready"] and check[check.index("-h") + 1] == "127.0.0.1"
    assert check[check.index("-U") + 1] == env["POSTGRES_USER"] and check[check.index("-d") + 1] == env["POSTGRES_DB"]
    assert "ports" not in postgres and postgres["expose"] == ["5432"]
    assert postgres["restart"] == "unless-stopped"


def test_postgres_healthcheck_passes_on_a_running_server_and_fails_without_one(postgres):
    """The healthcheck's pg_isready arguments against the tests' real server (its port)."""
    from .postgres import postgres_bin

    pg_isready = str(postgres_bin() / "pg_isready")
    check = _services()["postgres"]["healthcheck"]["test"]
    command = [pg_isready, *check[2:]]
    at = command.index("-p") + 1
    assert command[at] == "5432"
    command[at] = str(postgres.port)
    assert subprocess.run(command, capture_output=True, timeout=20).returncode == 0
    command[at] = str(free_port())
    assert subprocess.run(command, capture_output=True, timeout=20).returncode != 0


def _run_with_db_url(service: dict, tmp_path: Path, password: str) -> dict:
    """Run a service's entrypoint and command as the container's sh would, with the secret
    at a temporary path and the program replaced by one that reports ASD_DB_URL and its argv."""
    entrypoint = service["entrypoint"]
    assert entrypoint[:2] == ["sh", "-c"] and len(entrypoint) == 4
    script = entrypoint[2]
    assert "$" not in script.replace("$$", ""), "a lone $ would be interpolated by compose on the host"
    script = script.replace("$$", "$")
    (secret,) = service["secrets"]
    inside, _ = _secret_file(secret)
    assert inside in script
    secret_file = tmp_path / "secret"
    secret_file.write_text(password + "\n")  # as openssl rand writes it
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    program = service["command"][0]
    (bin_dir / program).write_text(
        f"#!{sys.executable}\nimport json, os, sys\n"
        "print(json.dumps({'url': os.environ.get('ASD_DB_URL'), 'argv': [os.path.basename(sys.argv[0])] + sys.argv[1:]}))\n")
    (bin_dir / program).chmod(0o755)
    run = subprocess.run(["sh", "-c", script.replace(inside, str(secret_file)), entrypoint[3], *service["command"]],
                         env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
                         capture_output=True, text=True, timeout=20)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


@pytest.mark.parametrize("name", ["monitor", "app"])
def test_monitor_and_app_build_the_database_url_from_the_secret(name, tmp_path):
    from secrets import token_hex

    from sqlalchemy.engine import make_url

    services = _services()
    service, postgres = services[name], services["postgres"]
    # no URL, and so no password, in the file or the container's configuration
    assert not any("ASD_DB_URL" in key or "PASSWORD" in key for key in service.get("environment", {}))
    assert "postgresql" not in yaml.safe_dump(service.get("environment", {}))
    assert service["secrets"] == postgres["secrets"]
    password = token_hex(24)
    seen = _run_with_db_url(service, tmp_path, password)
    assert seen["argv"] == service["command"]  # the command runs unchanged, with the variable set
    url = make_url(seen["url"])
    assert url.drivername == "postgresql+psycopg" and url.password == password
    assert url.username == postgres["environment"]["POSTGRES_USER"]
    assert url.database == postgres["environment"]["POSTGRES_DB"]
    assert url.host == "postgres" and str(url.port) in postgres["expose"]


def test_app_entrypoint_keeps_the_images_command():
    dockerfile = (REPO / "production" / "Dockerfile").read_text().replace("\\\n", " ")
    (cmd,) = re.findall(r"^CMD (\[.*\])\s*$", dockerfile, re.M)
    assert _services()["app"]["command"] == json.loads(cmd)


def test_monitor_scores_the_incoming_folder_through_serving_into_postgres():
    from asd.cli import build_parser
    from asd.monitoring.cli import cmd_monitor

    services = _services()
    monitor, app = services["monitor"], services["app"]
    # the app's image and user, started once PostgreSQL and the model are ready
    assert monitor["image"] == app["image"] and "build" not in monitor and monitor["user"] == app["user"]
    assert monitor["depends_on"] == {"postgres": {"condition": "service_healthy"},
                                     "serving": {"condition": "service_healthy"}}
    assert monitor["restart"] == "unless-stopped"
    assert _seconds(monitor["stop_grace_period"]) >= 30  # SIGTERM: the clip in hand is finished
    assert monitor["healthcheck"] == {"disable": True}  # the image's HEALTHCHECK is Streamlit's
    # the command asd parses: REST to the server and model the app uses
    command = monitor["command"]
    assert command[:2] == ["asd", "monitor"]
    args = build_parser().parse_args(command[1:])
    assert args.func is cmd_monitor and not args.once and args.model is None
    assert args.server == app["environment"]["ASD_SERVING_URL"]
    assert args.name == app["environment"]["ASD_MODEL_NAME"]
    assert args.name in {c.name for c in _models_config().model_config_list.config}
    # the folder: the host's incoming recordings, read only; the default folder is git-ignored
    volumes = _volumes(monitor)
    (folder,) = args.folders
    host, read_only = volumes[folder]
    assert read_only and host == "${ASD_INCOMING_DIR:-./incoming}"
    assert _git_ignored("incoming/press-07/clip.wav")
    # the clip store: on a named volume, mounted where the image's user owns the directory
    # (Docker copies it, owner included, into a new named volume)
    clip_store = PurePosixPath(monitor["environment"]["ASD_CLIP_STORE"])
    (mount,) = [m for m in volumes if clip_store.is_relative_to(m)]
    assert volumes[mount][0] in _compose()["volumes"] and not volumes[mount][1]
    dockerfile = (REPO / "production" / "Dockerfile").read_text()
    user = re.search(rf"useradd --uid {monitor['user'].split(':')[0]} .*--create-home (\w+)", dockerfile)
    assert user and mount == f"/home/{user.group(1)}"


# -- healthchecks, executed ----------------------------------------------------------------



def _serving_healthcheck(port: int) -> str:
    """The serving healthcheck as the container's bash runs it, aimed at ``port``."""
    test = _services()["serving"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "bash", "-c"] and len(test) == 4
    script = test[3]
    assert "$" not in script.replace("$$", ""), "a lone $ would be interpolated by compose on the host"
    script = script.replace("$$", "$")
    assert "/dev/tcp/127.0.0.1/8501" in script
    return script.replace("/dev/tcp/127.0.0.1/8501", f"/dev/tcp/127.0.0.1/{port}")


def _run_bash(script: str, **env) -> int:
    return subprocess.run(["bash", "-c", script], env={**os.environ, **env}, capture_output=True, timeout=20).returncode


@pytest.fixture(scope="module")
def standin():
    from asd.standins.rest import StandInServer

    with StandInServer(SHIPPED_MODELS) as server:
        yield server


def test_serving_healthcheck_passes_once_the_model_is_available(standin):
    port = standin.httpd.server_address[1]
    model = _services()["serving"]["environment"]["MODEL_NAME"]
    assert model in {c.name for c in _models_config().model_config_list.config}
    assert _run_bash(_serving_healthcheck(port), MODEL_NAME=model) == 0


def test_serving_healthcheck_fails_for_an_unknown_model(standin):
    port = standin.httpd.server_address[1]
    assert _run_bash(_serving_healthcheck(port), MODEL_NAME="no_such_model") != 0


def test_serving_healthcheck_fails_when_the_server_is_down():
    assert _run_bash(_serving_healthcheck(free_port()), MODEL_NAME="toycar") != 0


class _Health(BaseHTTPRequestHandler):
    def do_GET(self):
        ok = self.path == "/_stcore/health"
        self.send_response(200 if ok else 404)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


def test_app_healthcheck_passes_on_streamlits_health_endpoint_and_fails_without_it():
    test = _services()["app"]["healthcheck"]["test"]
    assert test[:3] == ["CMD", "python", "-c"] and "127.0.0.1:8501/" in test[3]
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        code = test[3].replace("127.0.0.1:8501/", f"127.0.0.1:{server.server_address[1]}/")
        assert subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=20).returncode == 0
        wrong = code.replace("/_stcore/health", "/elsewhere")
        assert subprocess.run([sys.executable, "-c", wrong], capture_output=True, timeout=20).returncode != 0
    finally:
        server.shutdown()
        server.server_close()
    down = test[3].replace("127.0.0.1:8501/", f"127.0.0.1:{free_port()}/")
    assert subprocess.run([sys.executable, "-c", down], capture_output=True, timeout=20).returncode != 0


def test_docker_context_keeps_out_the_virtualenv_but_not_what_the_images_copy():
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    assert ".venv" in ignored and ".git" in ignored and "runs" in ignored
    for dockerfile in ("production/Dockerfile", "development/Dockerfile"):
        for line in (REPO / dockerfile).read_text().splitlines():
            if line.startswith("COPY "):
                for source in line.split()[1:-1]:
                    top = source.split("/")[0]
                    assert top not in ignored and source not in ignored, f"{dockerfile}: COPY {source} is in .dockerignore"


def test_plain_docker_compose_up_in_the_root_starts_the_production_stack():
    """`docker compose up` looks for compose.yaml in the working directory: it includes
    the production file (Compose's `include`), so both start the same services."""
    root = yaml.safe_load((REPO / "compose.yaml").read_text())
    assert root == {"include": ["docker-compose.prod.yaml"]}


def test_the_project_is_licensed_apache_2_0():
    import tomllib

    text = (REPO / "LICENSE").read_text()
    assert text.lstrip().startswith("Apache License") and "Version 2.0, January 2004" in text
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0" and project["license-files"] == ["LICENSE"]


# -- sign-in (docker-compose.signin.yaml, the app image with TensorFlow) ---------------------

SIGNIN = "docker-compose.signin.yaml"
AUTH_KEYS = {"redirect_uri", "cookie_secret", "client_id", "client_secret", "server_metadata_url"}


def _target(kind: str, entry) -> str:
    """The unique key by which compose merges a service's volumes, secrets and configs."""
    if kind == "volumes":
        return entry["target"] if isinstance(entry, dict) else entry.split(":")[1]
    if isinstance(entry, str):
        return f"/run/secrets/{entry}" if kind == "secrets" else f"/{entry}"
    target = entry.get("target", entry["source"])
    return target if target.startswith("/") else (f"/run/secrets/{target}" if kind == "secrets" else f"/{target}")


def _merge(base, override, key: str = ""):
    """Compose's merge of an override file into a base (compose-spec, merge.md): mappings
    recursively; volumes, secrets and configs of a service by target; command, entrypoint
    and healthcheck test replaced; other sequences appended."""
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for k, v in override.items():
            merged[k] = _merge(base[k], v, k) if k in base else v
        return merged
    if isinstance(base, list) and isinstance(override, list):
        if key in ("volumes", "secrets", "configs"):
            entries = {_target(key, e): e for e in base}
            entries.update({_target(key, e): e for e in override})
            return list(entries.values())
        if key in ("command", "entrypoint", "test"):
            return override
        return base + [e for e in override if e not in base]
    return override


def _signin() -> dict:
    """docker-compose.prod.yaml with docker-compose.signin.yaml over it."""
    return _merge(_compose(), _compose(SIGNIN))


def streamlit_secrets(path: Path) -> dict:
    """What Streamlit's secrets loader (secrets.files, STREAMLIT_SECRETS_FILES) reads from ``path``."""
    from streamlit.runtime.secrets import Secrets

    secrets, found = Secrets()._parse_file_path(str(path))
    assert found, path
    return dict(secrets)


def test_the_default_app_image_is_tensorflow_free_and_the_variant_has_it():
    import tomllib

    dockerfile = (REPO / "production" / "Dockerfile").read_text()
    assert _build_args("production/Dockerfile") == {"ASD_EXTRAS": "app"}
    # declared after FROM (else RUN would not see it) and before the install that uses it
    arg, install = dockerfile.index("ARG ASD_EXTRAS="), dockerfile.index('pip install -c constraints.txt ".[${ASD_EXTRAS}]"')
    assert dockerfile.index("FROM ") < arg < install
    assert "worker" in dockerfile[:arg].rsplit("\nRUN", 1)[-1]  # why a variant, next to the ARG
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    tensorflow = lambda names: [r for n in names.split(",") for r in extras[n] if r.startswith("tensorflow")]  # noqa: E731
    assert tensorflow("app") == []
    variant = _compose(SIGNIN)["services"]["app"]["build"]["args"]["ASD_EXTRAS"]
    assert variant == "app,train" and tensorflow(variant)  # enrolment reads the model's graph


def test_signin_override_validates_over_the_production_file(tmp_path):
    merged = tmp_path / "merged.yaml"
    merged.write_text(yaml.safe_dump(_signin()))
    tool = shutil.which("check-jsonschema", path=str(Path(sys.executable).parent)) or shutil.which("check-jsonschema")
    run = subprocess.run([tool, "--builtin-schema", "vendor.compose-spec", str(merged)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert set(_compose(SIGNIN)["services"]) == {"app", "monitor"}  # serving, postgres as in prod
    # the app's image with TensorFlow under its own tag (the TF-free one stays as it is),
    # and the monitor on the image the app service builds
    app, monitor = _signin()["services"]["app"], _signin()["services"]["monitor"]
    assert app["image"] != _services()["app"]["image"] and app["image"].startswith("asd-app:")
    assert monitor["image"] == app["image"] and "build" not in monitor
    assert app["build"]["dockerfile"] == "production/Dockerfile"


def test_signin_settings_are_a_compose_secret_that_streamlit_reads(tmp_path):
    compose = _signin()
    app = compose["services"]["app"]
    assert "postgres_password" in app["secrets"]  # still there, for ASD_DB_URL
    (auth,) = [s for s in app["secrets"] if isinstance(s, dict)]
    assert auth["source"] == "asd_auth"
    inside = _target("secrets", auth)
    assert app["environment"]["STREAMLIT_SECRETS_FILES"] == inside
    assert PurePosixPath(inside).suffix == ".toml"  # Streamlit reads no other file names
    # the file: git-ignored, never tracked, made from the example as the comment says
    host = REPO / compose["secrets"]["asd_auth"]["file"]
    relative = host.relative_to(REPO).as_posix()
    assert _git_ignored(relative)
    assert subprocess.run(["git", "ls-files", "--", relative], cwd=REPO, capture_output=True, text=True).stdout == ""
    example = REPO / "deploy" / "examples" / "asd_auth.example.toml"
    assert f"cp {example.relative_to(REPO).as_posix()} {relative}" in (REPO / SIGNIN).read_text()
    # the example, where the container has the file, as Streamlit's secrets loader reads it
    where = tmp_path / PurePosixPath(inside).relative_to("/")
    where.parent.mkdir(parents=True)
    shutil.copyfile(example, where)
    settings = streamlit_secrets(where)["auth"]
    assert AUTH_KEYS <= set(settings) and settings["redirect_uri"].startswith("https://")
    assert settings["redirect_uri"].endswith("/oauth2callback")
    # the name the secret would have without a target: refused by Streamlit
    from streamlit.errors import StreamlitSecretNotFoundError

    bare = tmp_path / "asd_auth"
    shutil.copyfile(example, bare)
    with pytest.raises(StreamlitSecretNotFoundError):
        streamlit_secrets(bare)


def test_signin_access_file_is_a_compose_config_the_app_reads(tmp_path):
    from asd.access.roles import load_policy

    compose = _signin()
    app = compose["services"]["app"]
    (config,) = app["configs"]
    assert app["environment"]["ASD_ACCESS_FILE"] == _target("configs", config)
    relative = compose["configs"][config["source"]]["file"].removeprefix("./")
    assert _git_ignored(relative)  # it names the plant's people
    example = REPO / "deploy" / "examples" / "access.example.yaml"
    assert f"cp {example.relative_to(REPO).as_posix()} {relative}" in (REPO / SIGNIN).read_text()
    policy = load_policy(example)
    assert set(policy.groups.values()) == {"viewer", "operator", "admin"} and policy.default is None


def test_signin_app_publishes_into_the_folder_serving_reads_read_only():
    compose = _signin()
    app, serving = compose["services"]["app"], compose["services"]["serving"]
    publish = app["environment"]["ASD_PUBLISH_MODELS_DIR"]
    mounts = {inside.as_posix(): (host, read_only) for host, inside, read_only in _mounts(app)}
    assert mounts[publish] == (REPO / "production" / "models", False)  # writable, replacing prod's :ro
    assert (REPO / "production" / "models", PurePosixPath("/models"), True) in _mounts(serving)
    assert all(read_only for _, _, read_only in _mounts(serving))
    assert app["environment"]["ASD_MODEL_FILES_DIR"] == publish  # one view of the models
    assert mounts["/config"][1]  # the serving config stays read-only
    # the Calibrate page reads the variable
    assert '"ASD_PUBLISH_MODELS_DIR"' in (REPO / "production" / "app" / "pages" / "1_Calibrate.py").read_text()

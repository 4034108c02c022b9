"""deploy/kubernetes: each overlay renders with `kubectl kustomize`, every object is valid
for a named Kubernetes version (kubernetes-validate, offline schemas), and what the
manifests name (probe paths and ports, environment variables, config file names, images,
upload limit) matches what the app, the image and TF Serving's configs use.

No cluster runs here: this is what can be checked without one (README, "Kubernetes").
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path

import pytest
import yaml

from asd.serving.catalog import configured_model_names

REPO = Path(__file__).resolve().parents[1]
KUBERNETES = REPO / "deploy" / "kubernetes"
OVERLAYS = ["cpu", "gpu", "signin"]
EXAMPLES = REPO / "deploy" / "examples"
# The files the signin overlay's generators read: made by the user from deploy/examples/
# and git-ignored, so the tests render a copy of deploy/kubernetes with the examples there.
SIGNIN_FILES = {"auth.toml": EXAMPLES / "asd_auth.example.toml", "access.yaml": EXAMPLES / "access.example.yaml"}
KUBERNETES_VERSION = "1.32.0"  # the kubectl client on these machines; a current cluster version


def _kubectl() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        if os.environ.get("CI"):
            pytest.fail("kubectl is needed to render deploy/kubernetes (CI machines have it)")
        pytest.skip("kubectl is not installed")
    return kubectl


def _kustomize(folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_kubectl(), "kustomize", str(folder)], capture_output=True, text=True, timeout=60)


def render(overlay: str) -> list[dict]:
    """The objects `kubectl kustomize deploy/kubernetes/overlays/<overlay>` renders. The
    signin overlay is rendered from a temporary copy of deploy/kubernetes holding the
    example files in place of the user's (never the user's own, should they exist here)."""
    if overlay != "signin":
        result = _kustomize(KUBERNETES / "overlays" / overlay)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            copy = Path(tmp) / "kubernetes"
            shutil.copytree(KUBERNETES, copy, ignore=lambda folder, names: [n for n in names if n in SIGNIN_FILES])
            for name, example in SIGNIN_FILES.items():
                shutil.copyfile(example, copy / "overlays" / "signin" / name)
            result = _kustomize(copy / "overlays" / "signin")
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} objects"
    return matches[0]


def container(deployment: dict, name: str) -> dict:
    return next(c for c in deployment["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def env(c: dict) -> dict[str, str]:
    """A container's variables with a value (not those from a Secret: :func:`secret_refs`)."""
    return {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}


def secret_refs(c: dict) -> dict[str, dict]:
    """A container's variables read from a Secret: name -> its secretKeyRef."""
    return {e["name"]: e["valueFrom"]["secretKeyRef"] for e in c.get("env", [])
            if "secretKeyRef" in e.get("valueFrom", {})}


def expand(arg: str, variables: dict[str, str]) -> str:
    """``$(VAR)`` in a command or args, as the kubelet expands it from the container's env."""
    return re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: variables.get(m[1], m[0]), arg)


def claims(deployment: dict) -> dict[str, dict]:
    """Volume name -> its persistentVolumeClaim source."""
    return {v["name"]: v["persistentVolumeClaim"] for v in deployment["spec"]["template"]["spec"]["volumes"]
            if "persistentVolumeClaim" in v}


def port(c: dict, name: str) -> int:
    return next(p["containerPort"] for p in c["ports"] if p["name"] == name)


def compose(name: str) -> dict:
    return yaml.safe_load((REPO / name).read_text())


def compose_app_env(overlay: str) -> dict:
    """The app's environment in the compose setup an overlay corresponds to."""
    variables = dict(compose("docker-compose.prod.yaml")["services"]["app"]["environment"])
    if overlay == "signin":
        variables.update(compose("docker-compose.signin.yaml")["services"]["app"]["environment"])
    return variables


@pytest.fixture(scope="module", params=OVERLAYS)
def rendered(request) -> tuple[str, list[dict]]:
    return request.param, render(request.param)


def test_every_object_is_valid_for_the_named_kubernetes_version(rendered):
    import kubernetes_validate

    overlay, objects = rendered
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service", "ConfigMap", "HorizontalPodAutoscaler", "PodDisruptionBudget",
            "NetworkPolicy", "Ingress", "PersistentVolumeClaim"} <= kinds
    for obj in objects:
        kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)  # raises on any error


def test_the_validator_rejects_a_misspelt_field():
    import kubernetes_validate

    deployment = find(render("cpu"), "Deployment", "asd-serving")
    container(deployment, "serving")["readinessProbe"]["periodSecond"] = 10
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_config_map_holds_the_serving_configs_of_docker_compose():
    # kustomize reads files only below its folder: the copies must equal production/serving's
    for name in ("models.config", "batching.config", "monitoring.config"):
        assert (KUBERNETES / "base" / name).read_text() == (REPO / "production" / "serving" / name).read_text(), name


def test_serving_runs_as_in_compose_with_probes_on_the_model_status_endpoint(rendered):
    overlay, objects = rendered
    deployment = find(objects, "Deployment", "asd-serving")
    serving = container(deployment, "serving")
    prod = compose("docker-compose.prod.yaml")["services"]["serving"]

    # the same server flags, and the image of the same TF Serving version
    assert serving["args"] == prod["command"]
    image = compose("docker-compose.gpu.yaml")["services"]["serving"]["image"] if overlay == "gpu" else prod["image"]
    assert serving["image"] == image
    if overlay == "gpu":
        assert serving["resources"]["limits"]["nvidia.com/gpu"] == 1

    # ports: TF Serving's --port (gRPC) and --rest_api_port, as the image sets them
    assert port(serving, "grpc") == 8500 and port(serving, "http") == 8501

    # config files: the flags name files of the ConfigMap mounted at /config
    config_map = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("serving-config"))
    mount = next(m for m in serving["volumeMounts"] if m["name"] == "config")["mountPath"]
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == "config")
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    for flag in ("--model_config_file", "--monitoring_config_file", "--batching_parameters_file"):
        path = next(a.split("=", 1)[1] for a in serving["args"] if a.startswith(flag + "="))
        assert Path(path).parent.as_posix() == mount and Path(path).name in config_map["data"], flag

    # models: the volume holds the base_paths models.config names
    models_mount = next(m for m in serving["volumeMounts"] if m["name"] == "models")
    assert models_mount["readOnly"] is True
    base_paths = re.findall(r'base_path:\s*"([^"]+)"', config_map["data"]["models.config"])
    assert base_paths and all(p.startswith(models_mount["mountPath"] + "/") for p in base_paths)

    # probes: the REST model-status endpoint of a model models.config serves
    assert config_map["data"]["models.config"] == (KUBERNETES / "base" / "models.config").read_text()
    names = configured_model_names(KUBERNETES / "base" / "models.config")
    model = env(serving)["MODEL_NAME"]
    assert model in names
    for probe in ("startupProbe", "livenessProbe"):
        assert serving[probe]["httpGet"] == {"path": f"/v1/models/{model}", "port": "http"}, probe
    readiness = serving["readinessProbe"]["exec"]["command"]
    compose_check = prod["healthcheck"]["test"]  # ["CMD", "bash", "-c", script]; $$ is compose's literal $
    assert readiness == [compose_check[1], compose_check[2], compose_check[3].replace("$$", "$")]
    assert "/dev/tcp/127.0.0.1/8501" in readiness[2] and '"AVAILABLE"' in readiness[2]

    # Prometheus: the path monitoring.config exposes, on the REST port
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    monitoring_path = re.search(r'path:\s*"([^"]+)"', config_map["data"]["monitoring.config"]).group(1)
    assert annotations["prometheus.io/path"] == monitoring_path
    assert int(annotations["prometheus.io/port"]) == port(serving, "http")

    # non-root, nothing to escalate
    pod_security = deployment["spec"]["template"]["spec"]["securityContext"]
    assert pod_security["runAsNonRoot"] is True and pod_security["runAsUser"] != 0
    assert serving["securityContext"]["allowPrivilegeEscalation"] is False


def test_services_autoscaler_and_budget_select_the_serving_pods(rendered):
    _, objects = rendered
    deployment = find(objects, "Deployment", "asd-serving")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    serving = container(deployment, "serving")
    for name in ("asd-serving", "asd-serving-headless"):
        service = find(objects, "Service", name)
        assert service["spec"]["selector"].items() <= labels.items()
        for p in service["spec"]["ports"]:
            assert p["targetPort"] in {q["name"] for q in serving["ports"]}
    assert find(objects, "Service", "asd-serving-headless")["spec"]["clusterIP"] == "None"
    hpa = find(objects, "HorizontalPodAutoscaler", "asd-serving")
    assert hpa["spec"]["scaleTargetRef"]["name"] == "asd-serving"
    assert hpa["spec"]["minReplicas"] >= 2 and hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"
    assert serving["resources"]["requests"]["cpu"]  # utilisation is a share of the request
    pdb = find(objects, "PodDisruptionBudget", "asd-serving")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["minAvailable"] < hpa["spec"]["minReplicas"]  # a drain can proceed


def test_only_the_app_and_the_monitor_reach_serving(rendered):
    _, objects = rendered
    policy = find(objects, "NetworkPolicy", "asd-serving")
    serving_labels = find(objects, "Deployment", "asd-serving")["spec"]["template"]["metadata"]["labels"]
    app_labels = find(objects, "Deployment", "asd-app")["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= serving_labels.items()
    app_rule = policy["spec"]["ingress"][0]
    assert app_rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": app_labels["app.kubernetes.io/name"]}}}]
    assert {p["port"] for p in app_rule["ports"]} == {8500, 8501}
    for rule in policy["spec"]["ingress"][1:]:  # the others: REST (the monitor, metrics) only
        assert {p["port"] for p in rule["ports"]} == {8501}
    # the monitor's pods are let through to the port of its --server URL
    monitor = find(objects, "Deployment", "asd-monitor")
    labels = monitor["spec"]["template"]["metadata"]["labels"]
    c = container(monitor, "monitor")
    command = [expand(a, env(c)) for a in c["command"]]
    server_port = int(command[command.index("--server") + 1].rsplit(":", 1)[1])
    assert any(p["port"] == server_port for rule in policy["spec"]["ingress"] for p in rule["ports"]
               if any("namespaceSelector" not in f and f["podSelector"]["matchLabels"].items() <= labels.items()
                      for f in rule["from"]))


def test_app_finds_serving_and_its_config_and_is_probed_where_its_image_says(rendered):
    overlay, objects = rendered
    app = find(objects, "Deployment", "asd-app")
    c = container(app, "app")
    variables = env(c)
    serving_service = find(objects, "Service", "asd-serving")
    http_port = next(p["port"] for p in serving_service["spec"]["ports"] if p["name"] == "http")
    assert variables["ASD_SERVING_URL"] == f"http://asd-serving:{http_port}"
    # the variables the app reads (asd.serving.catalog.Deployment.from_env, the app itself),
    # and the same as compose gives it
    # (the access file and the Calibrate page's publishing folder with sign-in; the secrets
    # files are Streamlit's own option, secrets.files)
    readers = "".join(path.read_text() for path in (
        REPO / "src" / "asd" / "serving" / "catalog.py", REPO / "production" / "app" / "streamlit_app.py",
        REPO / "src" / "asd" / "access" / "roles.py", *sorted((REPO / "production" / "app" / "pages").glob("*.py"))))
    for name in variables:
        assert f'"{name}"' in readers or name == "STREAMLIT_SECRETS_FILES", name
    assert set(variables) == set(compose_app_env(overlay))
    # the models' files where ASD_MODEL_FILES_DIR says: the claim TF Serving reads; read only,
    # but for the app with sign-in, which publishes there
    models_mount = next(m for m in c["volumeMounts"] if m["name"] == "models")
    assert models_mount["mountPath"] == variables["ASD_MODEL_FILES_DIR"]
    assert models_mount["readOnly"] is (overlay != "signin")
    claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in app["spec"]["template"]["spec"]["volumes"]
              if "persistentVolumeClaim" in v}
    serving_claims = {v["persistentVolumeClaim"]["claimName"] for v in
                      find(objects, "Deployment", "asd-serving")["spec"]["template"]["spec"]["volumes"]
                      if "persistentVolumeClaim" in v}
    assert claims["models"] in serving_claims
    config_mount = next(m for m in c["volumeMounts"] if m["name"] == "config")["mountPath"]
    models_config = Path(variables["ASD_MODELS_CONFIG"])
    assert models_config.parent.as_posix() == config_mount
    config_map = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("serving-config"))
    assert models_config.name in config_map["data"]
    assert variables["ASD_MODEL_NAME"] in configured_model_names(KUBERNETES / "base" / "models.config")

    dockerfile = (REPO / "production" / "Dockerfile").read_text()
    health_path = re.search(r"127\.0\.0\.1:(\d+)(/_stcore/health)", dockerfile)
    assert port(c, "http") == int(health_path.group(1)) == int(re.search(r"^EXPOSE (\d+)", dockerfile, re.M).group(1))
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"] == {"path": health_path.group(2), "port": "http"}
    uid = re.search(r"useradd --uid (\d+)", dockerfile).group(1)
    assert str(app["spec"]["template"]["spec"]["securityContext"]["runAsUser"]) == uid


def test_ingress_lets_the_apps_largest_upload_through(rendered):
    _, objects = rendered
    ingress = find(objects, "Ingress", "asd-app")
    body = ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    limit_mb = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())["server"]["maxUploadSize"]
    assert body.endswith("m") and int(body[:-1]) > limit_mb  # the app, not the proxy, says "too large"
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    app_service = find(objects, "Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in app_service["spec"]["ports"]}


def test_monitor_runs_the_apps_image_with_the_database_url_from_the_secret(rendered):
    from asd.cli import build_parser
    from asd.monitoring.cli import cmd_monitor

    overlay, objects = rendered
    monitor, app = find(objects, "Deployment", "asd-monitor"), find(objects, "Deployment", "asd-app")
    c, a = container(monitor, "monitor"), container(app, "app")
    pod = monitor["spec"]["template"]["spec"]
    assert c["image"] == a["image"]  # the app's image (kustomize edit set image changes both)
    # one pod; the old one is gone, its clip finished, before the new one starts
    assert monitor["spec"]["replicas"] == 1 and monitor["spec"]["strategy"] == {"type": "Recreate"}
    assert pod.get("terminationGracePeriodSeconds", 30) >= 30

    # the database URL: from the Secret the user creates, never a value in the manifests
    db = secret_refs(c)["ASD_DB_URL"]
    assert db["name"] == "asd-monitoring-db" and db["key"] == "url" and not db.get("optional", False)
    assert secret_refs(a)["ASD_DB_URL"] == {**db, "optional": True}  # the app starts without monitoring
    assert "ASD_DB_URL" not in env(c) and "ASD_DB_URL" not in env(a)
    # the only Secret rendered: the signin overlay's, generated from the user's auth.toml
    assert [o["metadata"]["name"].rsplit("-", 1)[0] for o in objects if o["kind"] == "Secret"] == (
        ["asd-auth"] if overlay == "signin" else [])
    for obj in objects:
        assert "postgresql+psycopg://" not in yaml.safe_dump(obj), obj["metadata"]["name"]
    # the command asd parses: the server and model the app uses (as the kubelet expands them)
    variables = env(c)
    command = [expand(arg, variables) for arg in c["command"]]
    assert command[:2] == ["asd", "monitor"] and "$(" not in " ".join(command)
    args = build_parser().parse_args(command[1:])
    assert args.func is cmd_monitor and not args.once and args.model is None
    assert args.server == env(a)["ASD_SERVING_URL"] and args.name == env(a)["ASD_MODEL_NAME"]
    assert args.name in configured_model_names(KUBERNETES / "base" / "models.config")
    assert args.poll and args.poll > 0  # file events do not cross a network file system

    # volumes: the incoming claim shared with the recorders, read only here; the clip store its own
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    (folder,) = args.folders
    incoming = mounts[folder]
    assert incoming["readOnly"] is True
    pvcs = {o["metadata"]["name"]: o for o in objects if o["kind"] == "PersistentVolumeClaim"}
    volume_claims = claims(monitor)
    incoming_claim = pvcs[volume_claims[incoming["name"]]["claimName"]]
    assert volume_claims[incoming["name"]]["readOnly"] is True
    assert set(incoming_claim["spec"]["accessModes"]) & {"ReadWriteMany", "ReadOnlyMany"}
    store = mounts[variables["ASD_CLIP_STORE"]]
    assert not store.get("readOnly", False)
    store_claim = pvcs[volume_claims[store["name"]]["claimName"]]
    assert store_claim is not incoming_claim and store_claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert {v["claimName"] for v in claims(monitor).values()}.isdisjoint(
        {v["claimName"] for v in claims(find(objects, "Deployment", "asd-serving")).values()})

    # the app's user, who owns the clip store's files (fsGroup), nothing to escalate
    dockerfile = (REPO / "production" / "Dockerfile").read_text()
    uid = int(re.search(r"useradd --uid (\d+)", dockerfile).group(1))
    security = pod["securityContext"]
    assert security["runAsNonRoot"] is True and security["runAsUser"] == uid and security["fsGroup"] == security["runAsGroup"]
    assert {k: v for k, v in security.items() if k != "fsGroup"} == app["spec"]["template"]["spec"]["securityContext"]
    assert c["securityContext"] == a["securityContext"]
    for kind in ("requests", "limits"):
        assert set(c["resources"][kind]) == {"cpu", "memory"}, kind


def test_ingress_serves_the_app_over_tls_as_sign_in_requires(rendered):
    _, objects = rendered
    ingress = find(objects, "Ingress", "asd-app")
    (tls,) = ingress["spec"]["tls"]
    assert tls["secretName"] == "asd-tls"  # made by the user or cert-manager, never rendered here
    assert tls["hosts"] == [rule["host"] for rule in ingress["spec"]["rules"]]
    assert not any(o["kind"] == "Secret" and o["metadata"]["name"].startswith("asd-tls") for o in objects)
    note = (KUBERNETES / "base" / "app-ingress.yaml").read_text()
    assert "TLS: required for sign-in" in note and "cookie" in note and "https" in note


def _mounted_file(deployment: dict, c: dict, path: str, kind: str) -> tuple[dict, str]:
    """The volume source (``secret`` or ``configMap``) and key a container's file comes from."""
    mount = next(m for m in c["volumeMounts"] if Path(path).parent.as_posix() == m["mountPath"])
    assert mount.get("readOnly") is True, mount
    volume = next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"])
    return volume[kind], Path(path).name


def test_signin_overlay_mounts_the_auth_secret_where_streamlit_reads_it(tmp_path):
    import base64

    from streamlit.errors import StreamlitSecretNotFoundError

    from asd.access.roles import load_policy

    from .test_deployment_files import AUTH_KEYS, streamlit_secrets

    objects = render("signin")
    app = find(objects, "Deployment", "asd-app")
    c = container(app, "app")
    variables = env(c)

    # the [auth] settings: the Secret generated from auth.toml, mounted read-only, the file
    # named by STREAMLIT_SECRETS_FILES
    (secret,) = [o for o in objects if o["kind"] == "Secret"]
    assert secret["metadata"]["name"].startswith("asd-auth-")  # a hash suffix: a change rolls the app out
    source, key = _mounted_file(app, c, variables["STREAMLIT_SECRETS_FILES"], "secret")
    assert source["secretName"] == secret["metadata"]["name"] and key in secret["data"]
    text = base64.b64decode(secret["data"][key]).decode()
    assert text == SIGNIN_FILES["auth.toml"].read_text()
    # Streamlit reads it there: a .toml file (a directory would need one folder per secret)
    inside = tmp_path / variables["STREAMLIT_SECRETS_FILES"].lstrip("/")
    inside.parent.mkdir(parents=True)
    inside.write_text(text)
    assert AUTH_KEYS <= set(streamlit_secrets(inside)["auth"])
    with pytest.raises(StreamlitSecretNotFoundError):
        streamlit_secrets(inside.parent)  # as the kubelet mounts it: files, not folders

    # the access file: the ConfigMap generated from access.yaml
    config_map = next(o for o in objects if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("asd-access-"))
    source, key = _mounted_file(app, c, variables["ASD_ACCESS_FILE"], "configMap")
    assert source["name"] == config_map["metadata"]["name"]
    access = tmp_path / "access.yaml"
    access.write_text(config_map["data"][key])
    assert load_policy(access).groups  # an access file asd reads

    # publishing: the models volume writable where ASD_PUBLISH_MODELS_DIR says, the claim
    # serving mounts read-only, and ReadWriteMany
    models = next(m for m in c["volumeMounts"] if m["mountPath"] == variables["ASD_PUBLISH_MODELS_DIR"])
    assert not models.get("readOnly", False)
    claim = claims(app)[models["name"]]
    assert not claim.get("readOnly", False)
    serving = find(objects, "Deployment", "asd-serving")
    serving_models = next(m for m in container(serving, "serving")["volumeMounts"] if m["name"] == "models")
    assert serving_models["readOnly"] is True and claims(serving)["models"] == {"claimName": claim["claimName"], "readOnly": True}
    assert "ReadWriteMany" in find(objects, "PersistentVolumeClaim", claim["claimName"])["spec"]["accessModes"]

    # the app image with TensorFlow, as compose builds it, for the app and the monitor
    signin_compose = compose("docker-compose.signin.yaml")["services"]
    assert c["image"] == signin_compose["app"]["image"] == container(find(objects, "Deployment", "asd-monitor"), "monitor")["image"]
    cpu_app = container(find(render("cpu"), "Deployment", "asd-app"), "app")
    assert cpu_app["image"] != c["image"]
    assert "STREAMLIT_SECRETS_FILES" not in env(cpu_app) and "ASD_PUBLISH_MODELS_DIR" not in env(cpu_app)


def test_signin_overlay_reads_the_users_git_ignored_files_and_says_how_to_make_them(tmp_path):
    overlay = KUBERNETES / "overlays" / "signin"
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    files = [f for g in kustomization["secretGenerator"] + kustomization["configMapGenerator"] for f in g["files"]]
    assert sorted(files) == sorted(SIGNIN_FILES)
    text = (overlay / "kustomization.yaml").read_text()
    for name, example in SIGNIN_FILES.items():
        relative = (overlay / name).relative_to(REPO).as_posix()
        assert subprocess.run(["git", "check-ignore", "-q", relative], cwd=REPO).returncode == 0, relative
        # the comment's cp command, run in the overlay's folder, copies the example
        (command,) = re.findall(rf"^#\s+cp (\S+) {re.escape(name)}\b", text, re.M)
        assert (overlay / command).resolve() == example.resolve()
    # without either of them, rendering fails and names the file
    for missing in SIGNIN_FILES:
        copy = tmp_path / missing / "kubernetes"
        shutil.copytree(KUBERNETES, copy, ignore=lambda folder, names: [n for n in names if n in SIGNIN_FILES])
        for name, example in SIGNIN_FILES.items():
            if name != missing:
                shutil.copyfile(example, copy / "overlays" / "signin" / name)
        result = _kustomize(copy / "overlays" / "signin")
        assert result.returncode != 0 and missing in result.stderr, result.stderr

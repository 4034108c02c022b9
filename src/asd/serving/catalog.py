"""Which models a deployment serves: names from TF Serving's model config, versions from
the server's status endpoint (or from a models directory served in-process).

TF Serving has no "list models" endpoint, so the names come from the same
``models.config`` the server reads (``--model_config_file``; text-format
``ModelServerConfig`` from tensorflow_serving's protos, parsed without TensorFlow), and
each name's available versions from ``GET /v1/models/<name>`` (gRPC: GetModelStatus).

Environment (the app's): ``ASD_SERVING_URL`` (``http://host:8501`` or ``grpc://host:8500``)
or ``ASD_MODEL_DIR`` (in-process); ``ASD_MODELS_CONFIG`` (path to ``models.config``)
or ``ASD_MODEL_NAME`` (one name, or several separated by commas) for the names;
``ASD_SERVING_TIMEOUT_S`` bounds each request.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..layout import ModelNotFoundError, model_names, versions
from .base import Backend
from .factory import make_backend


@dataclass(frozen=True)
class ModelChoice:
    """One servable model version.

    Attributes
    ----------
    name : str
        Model name (one per machine type, e.g. ``toycar``).
    version : int
        Model version (TF Serving's version directory number).
    latest : bool
        The newest available version of this name (what an unpinned request gets).
    """

    name: str
    version: int
    latest: bool

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}" + (" (latest)" if self.latest else "")


@dataclass(frozen=True)
class Deployment:
    """Where the models are: a server address or a models directory, and the names.

    Raises
    ------
    ValueError
        On construction via :meth:`from_env`, if the environment is incomplete or
        contradictory, or the model config cannot be read.
    """

    server_url: str | None
    model_dir: str | None
    names: tuple[str, ...]
    timeout_s: float = 10.0

    @classmethod
    def from_env(cls, environ: dict | None = None) -> "Deployment":
        env = os.environ if environ is None else environ
        url, model_dir = env.get("ASD_SERVING_URL"), env.get("ASD_MODEL_DIR")
        if not url and not model_dir:
            raise ValueError(
                "set ASD_SERVING_URL (TF Serving address) or ASD_MODEL_DIR (a models directory) "
                "to choose the model backend"
            )
        if url and model_dir:
            raise ValueError("set only one of ASD_SERVING_URL and ASD_MODEL_DIR")
        try:
            timeout_s = float(env.get("ASD_SERVING_TIMEOUT_S", "10"))
        except ValueError:
            raise ValueError("ASD_SERVING_TIMEOUT_S must be a number of seconds") from None
        if env.get("ASD_MODELS_CONFIG"):
            names = configured_model_names(env["ASD_MODELS_CONFIG"])
        elif env.get("ASD_MODEL_NAME"):
            names = [n.strip() for n in env["ASD_MODEL_NAME"].split(",") if n.strip()]
        elif model_dir:
            names = model_names(model_dir)
        else:
            raise ValueError("with ASD_SERVING_URL, set ASD_MODELS_CONFIG (TF Serving's models.config) or ASD_MODEL_NAME")
        if not names:
            raise ValueError(f"no models found in {env.get('ASD_MODELS_CONFIG') or model_dir}")
        return cls(server_url=url or None, model_dir=model_dir or None, names=tuple(names), timeout_s=timeout_s)

    def describe(self) -> str:
        """Where the models come from, for status displays."""
        if self.server_url:
            protocol = "gRPC" if self.server_url.startswith("grpc://") else "REST"
            return f"TF Serving ({protocol}) at {self.server_url}"
        return f"in-process (no server), models in {self.model_dir}"

    def open(self, name: str, version: int | None = None) -> Backend:
        """A backend for one model version (latest when ``version`` is None).

        Raises
        ------
        asd.serving.ServingError, asd.layout.ModelNotFoundError, asd.metadata.ModelMismatchError
        """
        return make_backend(
            model_dir=self.model_dir, server_url=self.server_url, name=name, version=version, timeout_s=self.timeout_s
        )

    def available_versions(self, name: str) -> list[int]:
        """Versions of ``name`` that can be served now, oldest first.

        Raises
        ------
        asd.serving.ServingError
            The server is unreachable or does not serve ``name``.
        asd.layout.ModelNotFoundError
            In-process: no such model directory.
        """
        if self.model_dir:
            found = versions(Path(self.model_dir) / name)
            if not found:
                raise ModelNotFoundError(f"{self.model_dir}: no versions of model '{name}'")
            return found
        status = self.open(name).model_status()
        return sorted(int(s["version"]) for s in status if s.get("state") == "AVAILABLE")


def read_model_config(config_path: str | Path):
    """A TF Serving model config file (text ``ModelServerConfig``) as its proto.

    Raises
    ------
    ValueError
        The file is missing, is not a valid ``ModelServerConfig``, or lists no models.
    """
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2  # protos only, no TensorFlow

    path = Path(config_path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read the model config {path}: {exc.strerror}") from None
    config = model_server_config_pb2.ModelServerConfig()
    try:
        text_format.Parse(text, config)
    except text_format.ParseError as exc:
        raise ValueError(f"{path} is not a valid TF Serving model config: {exc}") from None
    if not config.model_config_list.config:
        raise ValueError(f"{path} lists no models (model_config_list is empty)")
    return config


def configured_model_names(config_path: str | Path) -> list[str]:
    """Model names in a TF Serving model config file (text ``ModelServerConfig``).

    Raises
    ------
    ValueError
        The file is missing, is not a valid ``ModelServerConfig``, or lists no models.
    """
    return [entry.name for entry in read_model_config(config_path).model_config_list.config]


def configured_version_labels(config_path: str | Path) -> dict[str, dict[str, int]]:
    """Each model's ``version_labels`` in a TF Serving model config file: name -> label
    -> version (models without labels left out), e.g. ``{"toycar": {"stable": 1}}``
    for ``version_labels { key: "stable" value: 1 }``.

    Raises
    ------
    ValueError
        As :func:`read_model_config`.
    """
    return {entry.name: dict(entry.version_labels)
            for entry in read_model_config(config_path).model_config_list.config if entry.version_labels}


def backend_from_env(environ: dict | None = None) -> Backend:
    """One model's backend from the environment (the variables of
    :class:`asd.serving.catalog.Deployment`, which also lists every served model).

    ``ASD_SERVING_URL`` (TF Serving's REST base URL, e.g. ``http://serving:8501``, or
    its gRPC address, e.g. ``grpc://serving:8500``; see :func:`make_backend`) or
    ``ASD_MODEL_DIR`` (a models directory in TF Serving's layout, served in-process);
    ``ASD_MODEL_NAME`` names the model (with a URL, it or ``ASD_MODELS_CONFIG`` is needed;
    optional with a directory holding one model); ``ASD_MODEL_VERSION`` pins a version (default: latest);
    ``ASD_SERVING_TIMEOUT_S`` bounds each request (default 10 s).

    Raises
    ------
    ValueError
        If neither or both variables are set, or a value is malformed.
    """
    env = os.environ if environ is None else environ
    deployment = Deployment.from_env(env)
    version = env.get("ASD_MODEL_VERSION")
    try:
        version_number = int(version) if version else None
    except ValueError:
        raise ValueError(f"ASD_MODEL_VERSION must be an integer, got {version!r}") from None
    names = deployment.names
    return deployment.open(env.get("ASD_MODEL_NAME") or (names[0] if len(names) == 1 else None), version_number)

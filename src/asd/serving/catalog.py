"""Which models a deployment serves: names from TF Serving's model config, versions from
the server's status endpoint (or from a models directory served in-process).

TF Serving has no "list models" endpoint, so the names come from the same
``models.config`` the server reads (``--model_config_file``; text-format
``ModelServerConfig`` from tensorflow_serving's protos, parsed without TensorFlow), and
each name's available versions from ``GET /v1/models/<name>`` (gRPC: GetModelStatus).

Environment (the app's): ``ASD_SERVING_URL`` (``http://host:8501`` or ``grpc://host:8500``)
or ``ASD_MODEL_DIR`` (in-process); ``ASD_MODELS_CONFIG`` (path to ``models.config``)
or ``ASD_MODEL_NAME`` (one name, or several separated by commas) for the names;
``ASD_SERVING_TIMEOUT_S`` bounds each request (the status probe has its own short
deadline, :data:`asd.serving.probe.PROBE_TIMEOUT_S`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path

from ..layout import ModelNotFoundError, model_names, versions
from ..metadata import ModelMetadata
from .base import Backend
from .factory import make_backend
from .probe import PROBE_TIMEOUT_S, probe_status

# Each detector kind (asd.detectors.DETECTORS) in words, for pickers and status lines.
DETECTOR_IN_WORDS = {
    "conv_ae": "convolutional autoencoder, scores frame by frame",
    "dense_ae_mse": "dense autoencoder, scores frame by frame",
    "dense_ae_mahalanobis": "dense autoencoder with Mahalanobis score",
    "lstm_ae": "LSTM autoencoder, scores frame by frame",
    "vae": "variational autoencoder",
    "lof": "local outlier factor",
    "iforest": "isolation forest",
    "ocsvm": "one-class SVM",
    "gmm": "Gaussian mixture",
    "knn": "nearest neighbours on log-mel",
    "arcface": "ArcFace embeddings",
    "spectrum_adacos": "spectrum embeddings (AdaCos)",
    "multispec_scac": "whole-clip spectrum embeddings + nearest neighbours",
}


def detector_in_words(kind: str) -> str:
    """A detector kind (``conv_ae``) in words; an unknown kind as it is."""
    return DETECTOR_IN_WORDS.get(kind, kind)


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
    detector : str
        Detector kind from the model's metadata (``conv_ae``); empty if unknown.
    official_score : float or None
        The DCASE official score stored in the metadata's ``evaluation`` (harmonic mean
        of AUC-source, AUC-target and pAUC, :mod:`asd.metrics`); None if not evaluated.
    recommended : bool
        Set by :func:`recommend`.
    enrolled : str
        For a version made by ``asd enroll``: what it adds to its base, e.g. ``3 clips of
        'target' enrolled into v4``; empty otherwise.
    reexport_of : int or None
        For a version re-exported from another without training (``asd resave
        --add-embedding``: the same scores, its evaluation the base's): the base version.
    """

    name: str
    version: int
    latest: bool
    detector: str = ""
    official_score: float | None = None
    recommended: bool = False
    enrolled: str = ""
    reexport_of: int | None = None

    @property
    def label(self) -> str:
        """``toycar v4 (latest, recommended): whole-clip spectrum embeddings + ...``."""
        marks = [m for m, on in (("latest", self.latest), ("recommended", self.recommended)) if on]
        kind = f": {detector_in_words(self.detector)}" if self.detector else ""
        extra = f"; {self.enrolled}" if self.enrolled else ""
        return f"{self.name} v{self.version}" + (f" ({', '.join(marks)})" if marks else "") + kind + extra

    @classmethod
    def from_metadata(cls, name: str, version: int, latest: bool, metadata: ModelMetadata | None) -> "ModelChoice":
        """A choice described by its model's metadata (None: undescribed)."""
        if metadata is None:
            return cls(name, version, latest)
        score = (metadata.evaluation or {}).get("official_score")
        enrolment = metadata.enrolment or {}
        n = enrolment.get("n_clips")
        enrolled = (f"{n} clip{'' if n == 1 else 's'} of '{enrolment.get('domain')}' enrolled into "
                    f"v{enrolment.get('base_version')}") if enrolment else ""
        base = (metadata.reexport or {}).get("base_version")
        return cls(name, version, latest, metadata.detector, float(score) if score is not None else None,
                   enrolled=enrolled, reexport_of=int(base) if base is not None else None)


def recommend(choices: list[ModelChoice]) -> tuple[list[ModelChoice], str | None]:
    """Mark, per model name, the version to use: the best stored official score (its
    metadata's ``evaluation``), the latest of those on a tie.

    A re-exported version (``asd resave --add-embedding``) carries its base's evaluation
    and scores as it does, so it ties with its base and, being newer, is the one marked
    (shipped: v5, v4 with the embedding output, where v4 was).

    Versions without an evaluation are never recommended; a name none of whose versions
    has one gets no mark (comparing unmeasured models would be a guess). The scores are
    compared as stored: they mean the same only when the versions were evaluated on the
    same test set (``asd evaluate`` records its ``data_dir``).

    Returns
    -------
    choices : list of ModelChoice
        The same choices in the same order, the recommended ones marked.
    reason : str or None
        One line per recommended version saying why (None when nothing is marked).
    """
    best: dict[str, ModelChoice] = {}
    for choice in choices:
        if choice.official_score is None:
            continue
        held = best.get(choice.name)
        if held is None or (choice.official_score, choice.version) > (held.official_score, held.version):
            best[choice.name] = choice
    reasons = []
    for choice in best.values():
        others = [c for c in choices if c.name == choice.name and c is not choice]
        scored = [c for c in others if c.official_score is not None]
        compared = (
            " (" + ", ".join(f"v{c.version}: {c.official_score:.3f}" for c in scored) + ")" if scored else ""
        )
        unscored = " among the evaluated versions" if len(scored) < len(others) else ""
        tied = [c for c in scored if c.official_score == choice.official_score]
        tie = ""
        if tied:
            names = ", ".join(f"v{c.version}" for c in tied)
            same = (f" (v{choice.version} is v{choice.reexport_of} re-exported: the same scores)"
                    if choice.reexport_of in {c.version for c in tied} else "")
            tie = f"; tied with {names}{same}, the latest is taken"
        reasons.append(
            f"{choice.name} v{choice.version} is recommended: the best official DCASE score{unscored}, "
            f"{choice.official_score:.3f} on its test set{compared}{tie}."
        )
    marked = [replace(c, recommended=True) if best.get(c.name) is c else c for c in choices]
    return marked, " ".join(reasons) or None


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

    def available_versions(self, name: str, timeout_s: float = PROBE_TIMEOUT_S) -> list[int]:
        """Versions of ``name`` that can be served now, oldest first; from a server, one
        status request with a short deadline (:func:`asd.serving.probe.probe_status`).

        Raises
        ------
        asd.serving.ServingError
            The server is unreachable, does not answer within ``timeout_s`` seconds, or
            does not serve ``name``.
        asd.layout.ModelNotFoundError
            In-process: no such model directory.
        """
        if self.model_dir:
            found = versions(Path(self.model_dir) / name)
            if not found:
                raise ModelNotFoundError(f"{self.model_dir}: no versions of model '{name}'")
            return found
        status = probe_status(self.server_url, name, timeout_s)
        return sorted(int(s["version"]) for s in status if s.get("state") == "AVAILABLE")

    def metadata(self, name: str, version: int) -> ModelMetadata:
        """One version's metadata: read from its directory in-process (no TensorFlow, no
        model load); from a server, through the model's ``metadata`` signature (a backend
        is opened for it).

        Raises
        ------
        asd.serving.ServingError, asd.layout.ModelNotFoundError, asd.metadata.ModelMismatchError
        """
        if self.model_dir:
            version_dir = Path(self.model_dir) / name / str(version)
            if not version_dir.is_dir():
                raise ModelNotFoundError(f"{self.model_dir}: no version {version} of model '{name}'")
            return ModelMetadata.read(version_dir)
        backend = self.open(name, version)
        try:
            return backend.metadata
        finally:
            if hasattr(backend, "close"):  # a gRPC channel
                backend.close()


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

"""The models a stand-in serves, with TF Serving's errors: shared by its REST and gRPC
front-ends (:mod:`asd.standins.rest`, :mod:`asd.standins.grpc`).

A :class:`ModelRepository` loads every version of every model in a models directory in
TF Serving's layout, finds the servable a request names (with TF Serving's error
messages) and runs a signature. Importing this module imports TensorFlow.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from ..layout import model_names, versions

# TF Serving's REST front-end turns its canonical error codes into these HTTP statuses
# (tensorflow_serving/model_servers/http_server.cc ToHTTPStatusCode; UNKNOWN, INTERNAL
# and DATA_LOSS are 500, the default below).
_HTTP_STATUS = {
    "CANCELLED": 499,
    "INVALID_ARGUMENT": 400,
    "FAILED_PRECONDITION": 400,
    "OUT_OF_RANGE": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 403,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "ABORTED": 409,
    "RESOURCE_EXHAUSTED": 429,
    "UNIMPLEMENTED": 501,
    "UNAVAILABLE": 503,
    "DEADLINE_EXCEEDED": 504,
}


class RequestError(Exception):
    """A request the server refuses, as TF Serving refuses it.

    Attributes
    ----------
    code : str
        Canonical error code, named as in ``grpc.StatusCode`` (``"NOT_FOUND"``,
        ``"INVALID_ARGUMENT"``, ``"FAILED_PRECONDITION"``, ...).
    message : str
        TF Serving's message where known, e.g. ``Servable not found for request:
        Latest(fan)``.
    """

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code, self.message = code, message

    @property
    def http_status(self) -> int:
        """The HTTP status TF Serving's REST API answers with for this code (500 if unlisted)."""
        return _HTTP_STATUS.get(self.code, 500)


class Servable:
    """One loaded model version: its signatures and its SignatureDefs.

    Attributes
    ----------
    loaded : tf.Module
        ``tf.saved_model.load`` of the version directory.
    signature_def_protos : dict of str -> SignatureDef
        The SignatureDefs of ``saved_model.pb`` (``__saved_model_init_op`` left out).
    signature_defs : dict
        The same as JSON (``json_format.MessageToDict``, proto field names), as TF
        Serving's REST API gives them.
    """

    def __init__(self, path: Path):
        self.loaded = tf.saved_model.load(str(path))
        proto = saved_model_pb2.SavedModel()
        proto.ParseFromString((path / "saved_model.pb").read_bytes())
        meta_graph = proto.meta_graphs[0]
        self.signature_def_protos = {
            key: value for key, value in meta_graph.signature_def.items() if key != "__saved_model_init_op"
        }
        self.signature_defs = {
            key: json_format.MessageToDict(
                value, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
            )
            for key, value in self.signature_def_protos.items()
        }

    def input_dtypes(self, signature_name: str) -> dict[str, np.dtype | None]:
        """Input name -> numpy dtype of a signature (None for a string input): what a
        REST request's JSON is read as (:mod:`asd.standins.json_tensor`).

        Raises
        ------
        RequestError
            FAILED_PRECONDITION if the model has no such signature.
        """
        return {name: None if spec.dtype == tf.string else np.dtype(spec.dtype.as_numpy_dtype)
                for name, spec in self.input_specs(signature_name).items()}

    def input_specs(self, signature_name: str) -> dict:
        """Input name -> ``tf.TensorSpec`` of a signature.

        Raises
        ------
        RequestError
            FAILED_PRECONDITION if the model has no such signature (TF Serving's
            ``Serving signature key "<name>" not found.``).
        """
        if signature_name not in self.loaded.signatures:
            raise RequestError("FAILED_PRECONDITION", f'Serving signature key "{signature_name}" not found.')
        return self.loaded.signatures[signature_name].structured_input_signature[1]

    def run(self, signature_name: str, inputs: dict, max_batch_size: int | None = None) -> dict[str, np.ndarray]:
        """Run a signature.

        Parameters
        ----------
        signature_name : str
        inputs : dict of str -> array-like
            One value per signature input (numpy arrays or nested lists), converted
            to the input's dtype.
        max_batch_size : int, optional
            Refuse a request with more rows, as TF Serving's request batching does
            (``batching.config``'s ``max_batch_size``); None: no limit (no batching).

        Returns
        -------
        dict of str -> np.ndarray
            Every output of the signature, by name (sorted); strings as bytes objects.

        Raises
        ------
        RequestError
            FAILED_PRECONDITION for an unknown signature; INVALID_ARGUMENT when the
            inputs do not match the signature (names, shape, values) or the model
            refuses them.
        """
        specs = self.input_specs(signature_name)
        if set(inputs) != set(specs):
            sent, expected = sorted(inputs), sorted(specs)
            raise RequestError(
                "INVALID_ARGUMENT",
                f"input size does not match signature: {len(sent)}!={len(expected)} len({{{','.join(sent)}}}) != "
                f"len({{{','.join(expected)}}}). Sent extra: {{{','.join(sorted(set(sent) - set(expected)))}}}. "
                f"Missing but required: {{{','.join(sorted(set(expected) - set(sent)))}}}.",
            )
        try:
            tensors = {k: _tensor(inputs[k], spec) for k, spec in specs.items()}
            for key, spec in specs.items():
                if not spec.shape.is_compatible_with(tensors[key].shape):
                    raise RequestError(
                        "INVALID_ARGUMENT", f"input '{key}' has shape {tensors[key].shape}, the signature takes {spec.shape}"
                    )
            rows = next(iter(tensors.values())).shape[0] if tensors else None
            if max_batch_size is not None and rows is not None and rows > max_batch_size:
                # TF Serving's batch scheduler, word for word (shared_batch_scheduler.h)
                raise RequestError("INVALID_ARGUMENT",
                                   f"Task size {rows} is larger than maximum input batch size {max_batch_size}")
            outputs = self.loaded.signatures[signature_name](**tensors)
        except (ValueError, TypeError, tf.errors.InvalidArgumentError) as exc:
            raise RequestError("INVALID_ARGUMENT", str(exc).splitlines()[0]) from None
        return {k: np.asarray(v.numpy()) for k, v in sorted(outputs.items())}


class ModelRepository:
    """Every model version under a models directory in TF Serving's layout, loaded once.

    Shared by the REST and the gRPC front-ends (one copy of the models in memory when
    both serve). Thread-safe: servables are read-only once loaded, and a poll replaces the
    mapping of them in one assignment.

    Parameters
    ----------
    models_dir : str or Path
        ``<models>/<name>/<version>/saved_model.pb``.

    max_batch_size : int, optional
        Requests with more rows are refused as TF Serving's batching refuses them (its
        ``--batching_parameters_file``); None: no limit.
    version_labels : dict of str -> dict of str -> int, optional
        Model name -> label -> version, a model config's ``version_labels``
        (:func:`asd.serving.catalog.configured_version_labels`).
    allow_version_labels_for_unavailable_models : bool
        TF Serving's flag of that name. TF Serving checks a config's labels before it
        loads any version, so without the flag every label refuses to start the server
        (server_core.cc ``UpdateModelVersionLabelMap``); with it, a label may name any
        version, and a request by a label whose version is not loaded finds no servable.
    poll_s : float
        Look for new and removed version folders every ``poll_s`` seconds, as TF Serving
        does with ``--file_system_poll_wait_seconds`` (its default 1): a new version is
        served (and becomes the latest) without a restart, a removed one is no longer
        served. 0: load once. A folder that cannot be loaded yet (still being written) is
        tried again at the next poll; write versions elsewhere and rename them into place.

    Attributes
    ----------
    servables : dict of (str, int) -> Servable
        By model name and version.

    Raises
    ------
    RequestError
        FAILED_PRECONDITION on construction, with labels and without
        ``allow_version_labels_for_unavailable_models`` (``Request to assign label to
        version <v> of model <name>, which is not currently available for inference``).
    """

    def __init__(self, models_dir: str | Path, max_batch_size: int | None = None,
                 version_labels: dict[str, dict[str, int]] | None = None,
                 allow_version_labels_for_unavailable_models: bool = False, poll_s: float = 0.0):
        self.version_labels = {name: dict(labels) for name, labels in (version_labels or {}).items() if labels}
        if self.version_labels and not allow_version_labels_for_unavailable_models:
            name, labels = min(self.version_labels.items())
            version = labels[min(labels)]
            raise RequestError("FAILED_PRECONDITION", f"Request to assign label to version {version} of model {name}, "
                                                      "which is not currently available for inference")
        self.models_dir = Path(models_dir)
        self.max_batch_size = max_batch_size
        self.servables = self._scan({}, strict=True)
        self._stop = threading.Event()
        if poll_s > 0:
            threading.Thread(target=self._poll, args=(poll_s,), daemon=True, name="standin-poll").start()

    def _scan(self, loaded: dict, strict: bool = False) -> dict:
        """``(name, version) -> Servable`` of the version folders there now: those already
        loaded kept, new ones loaded. With ``strict`` a folder that fails to load raises;
        otherwise it is left out until a later scan (a version still being copied)."""
        found = {}
        for name in model_names(self.models_dir):
            for version in versions(self.models_dir / name):
                key = (name, version)
                if key in loaded:
                    found[key] = loaded[key]
                    continue
                try:
                    found[key] = Servable(self.models_dir / name / str(version))
                except Exception as exc:  # noqa: BLE001 - TF's load errors have many types
                    if strict:
                        raise
                    print(f"stand-in: {name} version {version} not loaded yet: {str(exc).splitlines()[0]}",
                          file=sys.stderr, flush=True)
        return found

    def reload(self) -> None:
        """Scan the models directory once (what each poll does). The servables mapping is
        replaced in one assignment, so requests in flight see the old or the new one."""
        self.servables = self._scan(self.servables)

    def _poll(self, poll_s: float) -> None:
        while not self._stop.wait(poll_s):
            self.reload()

    def stop_polling(self) -> None:
        self._stop.set()

    def labelled_version(self, name: str, label: str) -> int:
        """The version a label names (server_core.cc ``GetModelVersionForLabel``).

        Raises
        ------
        RequestError
            INVALID_ARGUMENT ``Unrecognized servable version label: <label>`` (HTTP 400)
            for a label the config does not give this model.
        """
        version = self.version_labels.get(name, {}).get(label)
        if version is None:
            raise RequestError("INVALID_ARGUMENT", f"Unrecognized servable version label: {label}")
        return int(version)

    def versions(self, name: str) -> list[int]:
        """The versions of a model, ascending (empty for an unknown model)."""
        return sorted(v for n, v in self.servables if n == name)

    def find(self, name: str, version: int | None = None, label: str | None = None) -> tuple[int, Servable]:
        """The servable a request names: the latest version, the given one, or the one
        a version label names (at most one of ``version`` and ``label``).

        Raises
        ------
        RequestError
            NOT_FOUND: ``Servable not found for request: Latest(<name>)`` or
            ``... Specific(<name>, <version>)``, as TF Serving's ServerCore says;
            INVALID_ARGUMENT for an unknown label (:meth:`labelled_version`).
        """
        available = self.versions(name)
        if label is not None:
            version = self.labelled_version(name, label)
        if version is None:
            if not available:
                raise RequestError("NOT_FOUND", f"Servable not found for request: Latest({name})")
            chosen = available[-1]
        else:
            chosen = int(version)
            if chosen not in available:
                raise RequestError("NOT_FOUND", f"Servable not found for request: Specific({name}, {chosen})")
        return chosen, self.servables[(name, chosen)]

    def status(self, name: str, version: int | None = None) -> list[int]:
        """The versions GetModelStatus reports (all AVAILABLE here).

        A request by version label comes here without a version: TF Serving's
        get_model_status_impl.cc looks at ``model_spec.version`` only, so it reports
        every version and does not check the label.

        Raises
        ------
        RequestError
            NOT_FOUND: ``Could not find any versions of model <name>`` or ``Could not
            find version <v> of model <name>`` (TF Serving's get_model_status_impl).
        """
        found = self.versions(name)
        if version is None:
            if not found:
                raise RequestError("NOT_FOUND", f"Could not find any versions of model {name}")
            return found
        if int(version) not in found:
            raise RequestError("NOT_FOUND", f"Could not find version {int(version)} of model {name}")
        return [int(version)]



def _tensor(value, spec: tf.TensorSpec) -> tf.Tensor:
    """A request's JSON value as the input's tensor (numbers through numpy, which reads
    nested lists several times faster than ``tf.constant``)."""
    if spec.dtype == tf.string:
        return tf.constant(value, dtype=tf.string)
    return tf.constant(np.asarray(value, dtype=spec.dtype.as_numpy_dtype))

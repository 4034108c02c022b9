"""Stand-ins for TensorFlow Serving, backed by real SavedModels.

No TF Serving binary can run where this project is tested, so the clients are tested
against these servers. A :class:`ModelRepository` loads every version of every model in
a models directory in TF Serving's layout, finds the servable a request names (with TF
Serving's error messages) and runs a signature; two front-ends serve it:

- :class:`StandInServer` (here): TF Serving's documented REST API ("RESTful API",
  tensorflow/serving docs at 2.20.0);
- :class:`asd.serving.grpc_standin.GrpcStandInServer`: TF Serving's gRPC API
  (``PredictionService``, ``ModelService``) on the official protos of
  ``tensorflow_serving.apis``.

REST endpoints:

- ``GET  /v1/models/<name>[/versions/<v>]`` -> ``{"model_version_status": [...]}``
  (GetModelStatusResponse as JSON);
- ``GET  /v1/models/<name>[/versions/<v>]/metadata`` -> ``{"model_spec": ...,
  "metadata": {"signature_def": {"signature_def": {...}}}}`` (GetModelMetadataResponse,
  the SignatureDefs read from ``saved_model.pb``);
- ``POST /v1/models/<name>[/versions/<v>]:predict`` with ``"instances"`` (row format)
  or ``"inputs"`` (columnar format), never both; answers ``{"predictions": ...}`` or
  ``{"outputs": ...}``; a lone output is given without its name, as TF Serving does;
- errors as an HTTP error status with ``{"error": "<message>"}``, e.g. 404
  ``Servable not found for request: Latest(<name>)``.

They are not production servers: one Python process, no batching, no model reloading.
Run them with ``python -m asd.serving.standin --models production/models --port 8501
--grpc-port 8500`` (``--grpc-port 0``, the default, serves REST only).
"""

from __future__ import annotations

import argparse
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import orjson
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2

from ..layout import model_names, versions

_ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<rest>/metadata|:predict)?$")

# TF Serving's REST front-end turns its canonical error codes into these HTTP statuses
# (tensorflow_serving/model_servers/http_rest_api_util ToHTTPStatusCode).
_HTTP_STATUS = {
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
    both serve). Thread-safe: servables are read-only after loading.

    Parameters
    ----------
    models_dir : str or Path
        ``<models>/<name>/<version>/saved_model.pb``.

    max_batch_size : int, optional
        Requests with more rows are refused as TF Serving's batching refuses them (its
        ``--batching_parameters_file``); None: no limit.

    Attributes
    ----------
    servables : dict of (str, int) -> Servable
        By model name and version.
    """

    def __init__(self, models_dir: str | Path, max_batch_size: int | None = None):
        self.models_dir = Path(models_dir)
        self.max_batch_size = max_batch_size
        self.servables = {
            (name, version): Servable(self.models_dir / name / str(version))
            for name in model_names(self.models_dir)
            for version in versions(self.models_dir / name)
        }

    def versions(self, name: str) -> list[int]:
        """The versions of a model, ascending (empty for an unknown model)."""
        return sorted(v for n, v in self.servables if n == name)

    def find(self, name: str, version: int | None = None) -> tuple[int, Servable]:
        """The servable a request names: the latest version, or the given one.

        Raises
        ------
        RequestError
            NOT_FOUND: ``Servable not found for request: Latest(<name>)`` or
            ``... Specific(<name>, <version>)``, as TF Serving's ServerCore says.
        """
        available = self.versions(name)
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


class StandInServer:
    """Serves every model version under ``models_dir`` (latest by default) over TF
    Serving's REST API.

    Parameters
    ----------
    models_dir : str, Path or ModelRepository
        A models directory in TF Serving's layout, or models already loaded (to share
        them with a :class:`~asd.serving.grpc_standin.GrpcStandInServer`).
    host : str
    port : int
        0 picks a free port (see :attr:`url`).
    """

    def __init__(self, models_dir: str | Path | ModelRepository, host: str = "127.0.0.1", port: int = 0):
        self.repository = models_dir if isinstance(models_dir, ModelRepository) else ModelRepository(models_dir)
        self.models_dir = self.repository.models_dir
        self.httpd = _ClosingHTTPServer((host, port), self._handler())
        self._thread: threading.Thread | None = None

    @property
    def servables(self) -> dict:
        """``(name, version) -> Servable`` of the shared :class:`ModelRepository`."""
        return self.repository.servables

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "StandInServer":
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> "StandInServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- request handling (JSON in, JSON out) -------------------------------------

    def status(self, name: str, version: str | None) -> dict:
        found = self.repository.status(name, None if version is None else int(version))
        return {
            "model_version_status": [
                {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                for v in found
            ]
        }

    def metadata(self, name: str, version: str | None) -> dict:
        chosen, servable = self.repository.find(name, None if version is None else int(version))
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(chosen)},
            "metadata": {"signature_def": {"signature_def": servable.signature_defs}},
        }

    def predict(self, name: str, version: str | None, body: dict) -> dict:
        _, servable = self.repository.find(name, None if version is None else int(version))
        signature_name = body.get("signature_name", "serving_default")
        if signature_name not in servable.loaded.signatures:
            # the REST API's own check, before TF Serving's predictor sees the request
            raise RequestError("INVALID_ARGUMENT", f"Serving signature name: \"{signature_name}\" not found in signature def")
        specs = servable.input_specs(signature_name)
        if ("instances" in body) == ("inputs" in body):
            raise RequestError("INVALID_ARGUMENT", "Missing 'inputs' or 'instances' key" if "instances" not in body else
                               "Not both 'inputs' and 'instances' can be specified")
        row_format = "instances" in body
        if row_format:
            instances = body["instances"]
            if not isinstance(instances, list) or not instances:
                raise RequestError("INVALID_ARGUMENT", "'instances' must be a non-empty list")
            if isinstance(instances[0], dict):
                inputs = {k: [row[k] for row in instances] for k in instances[0]}
            elif len(specs) == 1:
                inputs = {next(iter(specs)): instances}
            else:
                raise RequestError("INVALID_ARGUMENT", "instances must be objects naming each input for a multi-input signature")
        else:
            inputs = body["inputs"]
            if not isinstance(inputs, dict):
                if len(specs) != 1:
                    raise RequestError("INVALID_ARGUMENT", "'inputs' must name each input for a multi-input signature")
                inputs = {next(iter(specs)): inputs}
        values = {k: _to_json(v) for k, v in servable.run(signature_name, inputs, self.repository.max_batch_size).items()}
        if row_format:
            if len(values) == 1:
                return {"predictions": next(iter(values.values()))}
            n = len(next(iter(values.values())))
            return {"predictions": [{k: v[i] for k, v in values.items()} for i in range(n)]}
        return {"outputs": next(iter(values.values())) if len(values) == 1 else values}

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY (whether TF Serving's HTTP server sets it was not checked): otherwise a small answer's body waits
            # for the ACK of its headers (Nagle + delayed ACK: ~40 ms a request on loopback).
            disable_nagle_algorithm = True

            def log_message(self, *args):  # quiet: tests read results, not access logs
                pass

            def _send(self, status: int, body: dict, started: float | None = None) -> None:
                data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                if started is not None:  # the W3C Server-Timing header: this server's own share
                    self.send_header("Server-Timing", f"predict;dur={(time.perf_counter() - started) * 1e3:.3f}")
                self.end_headers()
                self.wfile.write(data)

            def _route(self, method: str) -> None:
                match = _ROUTE.match(self.path)
                try:
                    if not match:
                        raise RequestError("NOT_FOUND", "Malformed request: " + method + " " + self.path)
                    name, version, rest = match["name"], match["version"], match["rest"]
                    if method == "GET" and rest is None:
                        self._send(200, server.status(name, version))
                    elif method == "GET" and rest == "/metadata":
                        self._send(200, server.metadata(name, version))
                    elif method == "POST" and rest == ":predict":
                        length = int(self.headers.get("Content-Length", 0))
                        data = self.rfile.read(length) or b"{}"
                        started = time.perf_counter()  # after receiving: parse, run, write JSON
                        try:
                            body = orjson.loads(data)
                        except orjson.JSONDecodeError as exc:
                            raise RequestError("INVALID_ARGUMENT", f"JSON Parse error: {exc}") from None
                        self._send(200, server.predict(name, version, body), started)
                    else:
                        raise RequestError("NOT_FOUND", "Malformed request: " + method + " " + self.path)
                except RequestError as exc:
                    self._send(exc.http_status, {"error": exc.message})
                except Exception as exc:  # a stand-in bug must still answer like a server
                    self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

        return Handler


class _ClosingHTTPServer(ThreadingHTTPServer):
    """Closes its open keep-alive connections when it stops, as a stopped server's
    would be: otherwise a client's pooled connection goes on being served."""

    daemon_threads = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()

    def process_request(self, request, client_address):
        with self._open_lock:
            self._open.add(request)
        super().process_request(request, client_address)

    def shutdown_request(self, request):
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_close(self):
        super().server_close()
        with self._open_lock:
            for request in self._open:
                try:
                    request.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self._open.clear()


def _tensor(value, spec: tf.TensorSpec) -> tf.Tensor:
    """A request's JSON value as the input's tensor (numbers through numpy, which reads
    nested lists several times faster than ``tf.constant``)."""
    if spec.dtype == tf.string:
        return tf.constant(value, dtype=tf.string)
    return tf.constant(np.asarray(value, dtype=spec.dtype.as_numpy_dtype))


def _to_json(value: np.ndarray):
    """Tensor value -> JSON value (strings decoded as UTF-8, as TF Serving does for
    outputs whose name does not end in ``_bytes``; numbers stay arrays, which orjson
    writes directly)."""
    if value.dtype.kind in ("S", "O"):
        if value.ndim == 0:
            return value.item().decode("utf-8")
        return [_to_json(np.asarray(v, dtype=object)) for v in value]
    return np.ascontiguousarray(value)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description="Stand-in for TF Serving's REST API (and, with --grpc-port, its gRPC API) over a models directory."
    )
    parser.add_argument("--models", required=True, help="models directory in TF Serving's layout")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8501, help="REST port (TF Serving's --rest_api_port; default 8501)")
    parser.add_argument(
        "--grpc-port", type=int, default=0, help="also serve gRPC on this port (TF Serving's --port, 8500); 0 = off (default)"
    )
    parser.add_argument("--batching_parameters_file", metavar="FILE",
                        help="refuse requests above its max_batch_size, as TF Serving with --enable_batching does "
                             "(e.g. production/serving/batching.config); default: no limit")
    args = parser.parse_args(argv)
    limit = None
    if args.batching_parameters_file:
        from .batching import max_batch_size

        limit = max_batch_size(args.batching_parameters_file)
    repository = ModelRepository(args.models, max_batch_size=limit)
    server = StandInServer(repository, args.host, args.port)
    grpc_server = None
    if args.grpc_port:
        from .grpc_standin import GrpcStandInServer

        grpc_server = GrpcStandInServer(repository, args.host, args.grpc_port).start()
        print(f"stand-in TF Serving gRPC API on {grpc_server.target} serving {sorted(repository.servables)}", flush=True)
    print(f"stand-in TF Serving REST API on {server.url} serving {sorted(repository.servables)}", flush=True)
    try:
        server.httpd.serve_forever()
    except KeyboardInterrupt:
        server.stop()
        if grpc_server is not None:
            grpc_server.stop()


if __name__ == "__main__":
    # Run the package's copy of this module (`python -m` runs it as __main__): its
    # classes are the ones asd.serving.grpc_standin imports.
    from .standin import main as package_main

    package_main()

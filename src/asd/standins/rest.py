"""Stand-ins for TensorFlow Serving, backed by real SavedModels.

No TF Serving binary can run where this project is tested, so the clients are tested
against these servers. A :class:`ModelRepository` loads every version of every model in
a models directory in TF Serving's layout, finds the servable a request names (with TF
Serving's error messages) and runs a signature; two front-ends serve it:

- :class:`StandInServer` (here): TF Serving's documented REST API ("RESTful API",
  tensorflow/serving docs at 2.20.0);
- :class:`asd.standins.grpc.GrpcStandInServer`: TF Serving's gRPC API
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
Run them with ``python -m asd.standins --models production/models --port 8501
--grpc-port 8500`` (``--grpc-port 0``, the default, serves REST only).
"""

from __future__ import annotations

import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import orjson

from .repository import ModelRepository, RequestError

_ROUTE = re.compile(r"^/v1/models/(?P<name>[^/:]+)(?:/versions/(?P<version>\d+))?(?P<rest>/metadata|:predict)?$")



class StandInServer:
    """Serves every model version under ``models_dir`` (latest by default) over TF
    Serving's REST API.

    Parameters
    ----------
    models_dir : str, Path or ModelRepository
        A models directory in TF Serving's layout, or models already loaded (to share
        them with a :class:`~asd.standins.grpc.GrpcStandInServer`).
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


def _to_json(value: np.ndarray):
    """Tensor value -> JSON value (strings decoded as UTF-8, as TF Serving does for
    outputs whose name does not end in ``_bytes``; numbers stay arrays, which orjson
    writes directly)."""
    if value.dtype.kind in ("S", "O"):
        if value.ndim == 0:
            return value.item().decode("utf-8")
        return [_to_json(np.asarray(v, dtype=object)) for v in value]
    return np.ascontiguousarray(value)

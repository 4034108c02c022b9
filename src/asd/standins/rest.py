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

REST endpoints (``<v>`` a version number, ``<label>`` a version label from the model
config's ``version_labels``):

- ``GET  /v1/models/<name>[/versions/<v>|/labels/<label>]`` -> ``{"model_version_status":
  [...]}`` (GetModelStatusResponse as JSON; by label: every version, as TF Serving
  answers);
- ``GET  /v1/models/<name>[/versions/<v>|/labels/<label>]/metadata`` -> ``{"model_spec":
  ..., "metadata": {"signature_def": {"signature_def": {...}}}}`` (GetModelMetadataResponse,
  the SignatureDefs read from ``saved_model.pb``);
- ``POST /v1/models/<name>[/versions/<v>|/labels/<label>]:predict`` with ``"instances"``
  (row format) or ``"inputs"`` (columnar format), never both; answers ``{"predictions":
  ...}`` or ``{"outputs": ...}``; a lone output is given without its name, as TF Serving
  does;
- errors as an HTTP error status with ``{"error": "<message>"}``, e.g. 404
  ``Servable not found for request: Latest(<name>)``, 400 ``Unrecognized servable
  version label: <label>``, 400 ``Malformed request: <method> <path>`` for a path under
  ``/v1/`` that names no endpoint; a path outside ``/v1/`` gets the HTTP server's own
  404 page.

Paths are matched as TF Serving matches them (tensorflow_serving/model_servers/
http_rest_api_util.cc, ``kPredictionApiGegex`` and ``kModelStatusApiRegex``, both
``(?i)``: case-insensitive; the model name and label percent-decoded), and the JSON
read as its util/json_tensor.cc reads it (:mod:`asd.standins.json_tensor`).

They are not production servers: one Python process, no batching, no model reloading,
no ``:classify``/``:regress``. Run them with ``python -m asd.standins --models
production/models --port 8501 --grpc-port 8500`` (``--grpc-port 0``, the default, serves
REST only; ``--model_config_file`` for version labels).
"""

from __future__ import annotations

import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import numpy as np
import orjson

from . import json_tensor
from .repository import ModelRepository, RequestError

# tensorflow_serving/model_servers/http_rest_api_util.cc, RE2::FullMatch'ed: "(?i)" makes
# the whole path case-insensitive, but the captured method and subresource are then
# compared in lower case (http_rest_api_handler.cc), so ":PREDICT" is a malformed request
# and ".../METADATA" asks for the model's status.
_PREDICTION_API = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)", re.IGNORECASE)
_MODEL_STATUS_API = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?", re.IGNORECASE)
# http_rest_api_handler's kPathRegex: the HTTP server hands only these paths to the
# REST API (http_server.cc RestApiRequestDispatcher); others get its 404 page.
_REST_API_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
# libevent's evhttp_send_error(req, HTTP_NOTFOUND, NULL) body (libevent http.c ERR_FORMAT)
_NOT_FOUND_PAGE = b"<HTML><HEAD>\n<TITLE>404 Not Found</TITLE>\n</HEAD><BODY>\n<H1>Not Found</H1>\n</BODY></HTML>\n"
_INT64_MAX = 2**63 - 1


def parse_path(method: str, path: str) -> tuple[str, str, int | None, str | None]:
    """What a REST request asks for, read as TF Serving's ``ParseModelInfo``
    (http_rest_api_util.cc) and ``ProcessRequest`` (http_rest_api_handler.cc) read it.

    Parameters
    ----------
    method : str
        ``GET`` or ``POST`` (others are malformed requests).
    path : str
        The URL path, without its query string.

    Returns
    -------
    (endpoint, name, version, label)
        ``endpoint`` is ``"status"``, ``"metadata"``, ``"predict"``, ``"classify"`` or
        ``"regress"``; ``name`` and ``label`` percent-decoded; at most one of
        ``version`` and ``label`` set.

    Raises
    ------
    RequestError
        INVALID_ARGUMENT (HTTP 400): ``Malformed request: <method> <path>``, ``Missing
        model name in request.``, ``Failed to convert version: <v> to numeric.``
    """
    malformed = RequestError("INVALID_ARGUMENT", f"Malformed request: {method} {path}")
    pattern = {"POST": _PREDICTION_API, "GET": _MODEL_STATUS_API}.get(method)
    match = pattern.fullmatch(path) if pattern else None
    if not match:
        raise malformed
    name, version_text, label, last = match.groups()
    if version_text is not None:
        version = int(version_text)
        if version > _INT64_MAX:  # absl::SimpleAtoi into an int64
            raise RequestError("INVALID_ARGUMENT", f"Failed to convert version: {version_text} to numeric.")
    else:
        version = None
    name = unquote(name) if name else ""
    label = unquote(label) if label else None
    if method == "POST":
        if last not in ("classify", "regress", "predict"):
            raise malformed
        return last, name, version, label
    if not name:
        raise RequestError("INVALID_ARGUMENT", "Missing model name in request.")
    return ("metadata" if last == "metadata" else "status"), name, version, label


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

    def status(self, name: str, version: int | None, label: str | None = None) -> dict:
        """GetModelStatusResponse as JSON; a label is not looked at (every version is
        reported, as get_model_status_impl.cc does for a ModelSpec without a version)."""
        found = self.repository.status(name, version)
        return {
            "model_version_status": [
                {"version": str(v), "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
                for v in found
            ]
        }

    def metadata(self, name: str, version: int | None, label: str | None = None) -> dict:
        """GetModelMetadataResponse as JSON: the model spec names the version served
        (never the label, as get_model_metadata_impl.cc writes it) and the SignatureDefs."""
        chosen, servable = self.repository.find(name, version, label)
        return {
            "model_spec": {"name": name, "signature_name": "", "version": str(chosen)},
            "metadata": {"signature_def": {"signature_def": servable.signature_defs}},
        }

    def predict(self, name: str, version: int | None, data: bytes, label: str | None = None) -> dict:
        """A ``:predict`` request's raw body -> the answer, in the order TF Serving's
        ``ProcessPredictRequest`` (http_rest_api_handler.cc) checks it: the JSON, the
        servable (``GetInfoMap``), the signature, the inputs, then the model.

        Raises
        ------
        RequestError
            As TF Serving refuses the request (see :mod:`asd.standins.json_tensor`).
        """
        doc = json_tensor.parse_body(data)
        signature_name = json_tensor.signature_name(doc) or "serving_default"
        _, servable = self.repository.find(name, version, label)
        if signature_name not in servable.loaded.signatures:
            raise RequestError("INVALID_ARGUMENT", f"Serving signature name: \"{signature_name}\" not found in signature def")
        # numpy would read a boolean among numbers as 1.0: only bodies that may hold one take the exact path
        may_hold_booleans = b"true" in data or b"false" in data
        inputs, row_format = json_tensor.predict_inputs(doc, servable.input_dtypes(signature_name), may_hold_booleans)
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

            def _send(self, status: int, body: dict) -> None:
                data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _send_not_found_page(self) -> None:
                # as libevent's evhttp_send_error: its HTML page, and the connection closed
                self.send_response(404)
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(_NOT_FOUND_PAGE)))
                self.send_header("Connection", "close")
                self.end_headers()
                self.wfile.write(_NOT_FOUND_PAGE)
                self.close_connection = True

            def _route(self, method: str) -> None:
                # read the whole body first, whatever the path: a keep-alive connection must not keep its bytes
                data = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = urlsplit(self.path).path  # TF Serving matches the URI path, without the query
                if not _REST_API_PATH.fullmatch(path):
                    self._send_not_found_page()
                    return
                try:
                    endpoint, name, version, label = parse_path(method, path)
                    if endpoint == "status":
                        self._send(200, server.status(name, version, label))
                    elif endpoint == "metadata":
                        self._send(200, server.metadata(name, version, label))
                    elif endpoint == "predict":
                        self._send(200, server.predict(name, version, data, label))
                    else:
                        raise RequestError("UNIMPLEMENTED", f"the stand-in has no :{endpoint} (TF Serving's Classify "
                                                            "and Regress APIs); use :predict")
                except RequestError as exc:
                    self._send(exc.http_status, {"error": exc.message})
                except Exception as exc:  # a stand-in bug must still answer like a server
                    self._send(500, {"error": f"{type(exc).__name__}: {exc}"})

            def do_GET(self):
                self._route("GET")

            def do_POST(self):
                self._route("POST")

            def do_PUT(self):  # TF Serving's REST API serves GET and POST; others are malformed requests
                self._route("PUT")

            def do_DELETE(self):
                self._route("DELETE")

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

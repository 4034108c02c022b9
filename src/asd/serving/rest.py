"""Client for TensorFlow Serving's REST API.

Endpoints (TF Serving docs, "RESTful API"):

- ``GET  /v1/models/<name>[/versions/<v>]`` -> ``{"model_version_status": [...]}``
- ``GET  /v1/models/<name>[/versions/<v>]/metadata`` -> signature defs
- ``POST /v1/models/<name>[/versions/<v>]:predict`` with
  ``{"signature_name": ..., "inputs": {...}}`` (columnar) -> ``{"outputs": ...}``

Errors come as an HTTP error status with ``{"error": "<message>"}``.
The columnar format is used because outputs need not share the batch dimension
(the ``metadata`` signature returns one string).
"""

from __future__ import annotations

import json
import threading

import numpy as np
import orjson
import requests

from ..metadata import (
    METADATA_INPUT_NAME,
    METADATA_OUTPUT_NAME,
    METADATA_SIGNATURE,
    SERVING_SIGNATURE,
    WAVEFORM_INPUT_NAME,
    ModelMetadata,
)
from .base import Prediction, ServingError

# dB values are sent with 3 decimals (1/1000 dB, far below any audible or model-relevant
# difference) to keep the JSON payload short.
DECIMALS = 3
# Samples in [-1, 1] with 7 decimals: within 1/600 of a 16-bit step (2**-15), so the
# whole-clip spectrum, whose quiet bins are sensitive, comes out as in-process (rel. 1e-5),
# in 10 characters a sample where float32's shortest exact form takes 12.5 (2.0 vs 2.4 MB
# for a 12 s clip).
WAVEFORM_DECIMALS = 7


def encode_predict_request(inputs: np.ndarray, input_name: str, signature: str = SERVING_SIGNATURE) -> bytes:
    """The JSON body of a ``:predict`` request (columnar ``inputs`` format).

    Parameters
    ----------
    inputs : np.ndarray [dtype=float32]
        Log-mel patches ``(n_patches, n_mels, patch_frames)`` in dB, sent with
        :data:`DECIMALS` decimals; or waveforms ``(n_clips, input_samples)`` in [-1, 1],
        sent with :data:`WAVEFORM_DECIMALS`.
    input_name : str
        The signature's input (``metadata.input``).

    Returns
    -------
    bytes
        UTF-8 JSON, written by orjson straight from the rounded numpy array (float32
        for dB, float64 for samples, whose shortest form is then their 7 decimals):
        about 1.4 MB for a 12 s clip's 44 patches, 2.0 MB for its 192,000 samples.
    """
    if input_name == WAVEFORM_INPUT_NAME:
        # float64: the rounded value's shortest form is then its 7 decimals
        values = np.round(np.asarray(inputs, dtype=np.float64), WAVEFORM_DECIMALS)
    else:
        values = np.round(np.asarray(inputs, dtype=np.float32), DECIMALS)
    payload = {"signature_name": signature, "inputs": {input_name: np.ascontiguousarray(values)}}
    return orjson.dumps(payload, option=orjson.OPT_SERIALIZE_NUMPY)


def parse_json(content: bytes) -> dict | list | None:
    """A TF Serving answer's JSON; None if it is not JSON.

    TF Serving writes non-finite floats as the bare tokens ``NaN``, ``Infinity`` and
    ``-Infinity`` (its REST API documentation), which strict JSON parsers such as orjson
    refuse: such an answer is parsed again by the standard library, which reads them as
    ``float('nan')`` and ``float('inf')``. (Only the rare answer pays for the slower parser.)
    """
    try:
        return orjson.loads(content)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(content)
    except ValueError:  # json.JSONDecodeError and undecodable bytes
        return None


def decode_predict_response(outputs: dict | list, n_rows: int) -> Prediction:
    """The ``outputs`` of a ``:predict`` answer (already parsed JSON) as a Prediction.

    Raises
    ------
    ServingError
        Outputs unnamed, missing, or with another number of rows than ``n_rows``.
    """
    if not isinstance(outputs, dict):
        raise ServingError("TF Serving's answer lacks named outputs; is it an asd model?")
    return Prediction.from_outputs(outputs, n_rows)


class RestBackend:
    """A model served by TF Serving, reached over its REST API.

    Parameters
    ----------
    base_url : str
        Server root, e.g. ``"http://localhost:8501"``.
    name : str
        Model name (``/v1/models/<name>``).
    version : int, optional
        Pin a model version; the server's latest when omitted.
    timeout_s : float
        Seconds to wait for connection and for each answer.

    Raises
    ------
    ServingError
        On construction if the server is unreachable, the model is not available, or
        it is not an asd model (checked once: status, then metadata).

    Notes
    -----
    Safe to share between threads: each thread gets its own ``requests.Session``
    (sessions are not documented as thread-safe, psf/requests#2766), so concurrent
    requests never share a pooled connection.
    """

    def __init__(self, base_url: str, name: str, version: int | None = None, timeout_s: float = 10.0):
        self.base_url = base_url.rstrip("/")
        self.name = name
        self.version = version
        self.timeout_s = timeout_s
        self._local = threading.local()
        self.model_status()
        self.metadata = ModelMetadata.from_json(self._metadata_json())

    @property
    def model_url(self) -> str:
        suffix = f"/versions/{self.version}" if self.version else ""
        return f"{self.base_url}/v1/models/{self.name}{suffix}"

    def describe(self) -> str:
        return f"TF Serving REST at {self.base_url}, model '{self.name}' version {self.metadata.version}"

    @property
    def _session(self) -> requests.Session:
        """This thread's session (keep-alive connections are reused within a thread)."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def _request(self, method: str, url: str, **kwargs) -> dict:
        try:
            response = self._session.request(method, url, timeout=self.timeout_s, **kwargs)
        except requests.Timeout:
            raise ServingError(f"TF Serving at {self.base_url} did not answer within {self.timeout_s:g} s",
                               retryable=True) from None
        except requests.ConnectionError:
            raise ServingError(
                f"TF Serving at {self.base_url} is not reachable (connection failed): is the server running "
                "and the URL right?", retryable=True
            ) from None
        body = parse_json(response.content)
        if body is None:
            body = {"error": response.text[:200]}
        if not response.ok:
            message = body.get("error", response.reason) if isinstance(body, dict) else response.reason
            # 503: TF Serving's UNAVAILABLE (e.g. a full batching queue); 504: DEADLINE_EXCEEDED
            raise ServingError(f"TF Serving answered HTTP {response.status_code} for model '{self.name}': {message}",
                               retryable=response.status_code in (503, 504))
        return body

    def model_status(self) -> list[dict]:
        """``model_version_status`` entries; raises ServingError unless one is AVAILABLE."""
        status = self._request("GET", self.model_url).get("model_version_status", [])
        if not any(s.get("state") == "AVAILABLE" for s in status):
            states = ", ".join(f"v{s.get('version')}: {s.get('state')}" for s in status) or "no versions"
            raise ServingError(f"model '{self.name}' is not available on {self.base_url} ({states})")
        return status

    def signature_defs(self) -> dict:
        """The ``signature_def`` map of ``GET .../metadata``."""
        body = self._request("GET", f"{self.model_url}/metadata")
        return body["metadata"]["signature_def"]["signature_def"]

    def _predict(self, body: bytes) -> dict | list:
        """POST a ``:predict`` body; the answer's ``outputs``."""
        answer = self._request("POST", f"{self.model_url}:predict", data=body)
        if "outputs" not in answer:
            raise ServingError(f"TF Serving's answer has no 'outputs' (keys: {sorted(answer)})")
        return answer["outputs"]

    def _metadata_json(self) -> str:
        outputs = self._predict(
            orjson.dumps({"signature_name": METADATA_SIGNATURE, "inputs": {METADATA_INPUT_NAME: [0.0]}})
        )
        # TF Serving returns a lone output's value without its name; one JSON per input
        # row (models exported before batching support return a scalar string).
        value = outputs.get(METADATA_OUTPUT_NAME) if isinstance(outputs, dict) else outputs
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str):
            raise ServingError(f"model '{self.name}' has no usable '{METADATA_SIGNATURE}' signature; not an asd model")
        return value

    def predict(self, inputs: np.ndarray) -> Prediction:
        """Run ``serving_default`` on the model's input (log-mel patches
        ``(n_patches, n_mels, patch_frames)`` in dB, or waveforms ``(n_clips, input_samples)``).

        Raises
        ------
        ServingError
            Server unreachable, slow, or answering with an error or a malformed body.
        """
        outputs = self._predict(encode_predict_request(inputs, self.metadata.input))
        return decode_predict_response(outputs, len(inputs))

"""Client for TensorFlow Serving's gRPC API.

RPCs (tensorflow_serving/apis: ``prediction_service.proto``, ``model_service.proto``,
``predict.proto``, ``get_model_status.proto``; Python modules of tensorflow-serving-api):

- ``ModelService/GetModelStatus(GetModelStatusRequest{model_spec})`` ->
  ``model_version_status`` (version, state, status);
- ``PredictionService/GetModelMetadata(GetModelMetadataRequest{model_spec,
  metadata_field=["signature_def"]})`` -> SignatureDefMap packed in ``Any``;
- ``PredictionService/Predict(PredictRequest{model_spec{name, version, signature_name},
  inputs})`` -> ``outputs``, a map of ``tensorflow.TensorProto``.

Tensors travel as TensorProto: float32 arrays as raw little-endian bytes
(``tensor_content``), so the model sees exactly the client's values (no JSON, no rounding,
unlike the REST client). Errors come as a gRPC status code and message.

The protos import TensorFlow (``tensorflow_serving.apis`` is generated against
``tensorflow.core.framework``), so they are imported when a :class:`GrpcBackend` is made,
not when this module is: the app's REST path stays free of TensorFlow.
"""

from __future__ import annotations

import functools
import json
from types import SimpleNamespace

import numpy as np

from ..metadata import (
    METADATA_INPUT_NAME,
    METADATA_OUTPUT_NAME,
    METADATA_SIGNATURE,
    SERVING_SIGNATURE,
    ModelMetadata,
)
from .base import Prediction, ServingError

SCHEME = "grpc://"
# gRPC refuses messages over 4 MiB by default; a 60 s clip is ~230 log-mel patches of
# 128 x 32 float32 = 3.8 MB, and an autoencoder sends as much back as its reconstruction.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Client-side load balancing (grpc.io, "Load balancing"; gRPC's service config): the
# channel connects to every address its target resolves to and sends calls to them in
# turn. With one address (a ClusterIP Service, a host) nothing changes; with a headless
# Kubernetes Service (``dns:///asd-serving-headless:8500``), whose DNS name resolves to
# every ready TF Serving pod, calls spread over the replicas instead of sticking to the
# one pod a single connection reaches.
SERVICE_CONFIG = {"loadBalancingConfig": [{"round_robin": {}}]}
CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.service_config", json.dumps(SERVICE_CONFIG)),
]


@functools.cache
def _apis() -> SimpleNamespace:
    """grpcio, TensorFlow and TF Serving's protos, imported on first use.

    Raises
    ------
    ServingError
        If one of them is not installed, saying how to install them.
    """
    try:
        import grpc
        import tensorflow as tf
        from google.protobuf import json_format
        from tensorflow_serving.apis import (
            get_model_metadata_pb2,
            get_model_status_pb2,
            model_service_pb2_grpc,
            predict_pb2,
            prediction_service_pb2_grpc,
        )
    except ImportError as exc:
        raise ServingError(
            f"the gRPC client needs grpcio, TensorFlow and tensorflow-serving-api ({exc}): "
            "pip install -c constraints.txt -e '.[grpc]' && pip install --no-deps -r requirements-nodeps.txt, "
            "or use TF Serving's REST API (http://host:8501)"
        ) from None
    return SimpleNamespace(
        grpc=grpc,
        tf=tf,
        json_format=json_format,
        get_model_metadata_pb2=get_model_metadata_pb2,
        get_model_status_pb2=get_model_status_pb2,
        model_service_pb2_grpc=model_service_pb2_grpc,
        predict_pb2=predict_pb2,
        prediction_service_pb2_grpc=prediction_service_pb2_grpc,
    )


class GrpcBackend:
    """A model served by TF Serving, reached over its gRPC API.

    One channel and its stubs are shared by every call; gRPC channels are thread-safe,
    so ``predict`` may be called from many threads at once.

    Parameters
    ----------
    target : str
        Server address ``host:port``, e.g. ``"localhost:8500"`` (TF Serving's ``--port``),
        or any gRPC target naming several servers, e.g. ``"dns:///asd-serving-headless:8500"``
        (every address the name resolves to) or ``"ipv4:10.0.0.5:8500,10.0.0.6:8500"``;
        calls go to them in turn (round_robin). A ``grpc://`` prefix is accepted and dropped.
    name : str
        Model name (``ModelSpec.name``).
    version : int, optional
        Pin a model version (``ModelSpec.version``); the server's latest when omitted.
    timeout_s : float
        Deadline of each call in seconds, connecting included.

    Attributes
    ----------
    metadata : ModelMetadata
        Read from the model's ``metadata`` signature on construction.

    Raises
    ------
    ServingError
        On construction if the gRPC modules are missing, the server is unreachable or
        slow, the model is not available, or it is not an asd model (checked once:
        status, then metadata).
    asd.metadata.ModelMismatchError
        If the model's metadata is of another format.
    """

    def __init__(self, target: str, name: str, version: int | None = None, timeout_s: float = 10.0):
        self.target = target[len(SCHEME):] if target.startswith(SCHEME) else target
        if not self.target:
            raise ServingError("no TF Serving gRPC address given (expected host:port, e.g. localhost:8500)")
        self.name = name
        self.version = version
        self.timeout_s = timeout_s
        self._api = _apis()
        self._channel = self._api.grpc.insecure_channel(self.target, options=CHANNEL_OPTIONS)
        self._predictions = self._api.prediction_service_pb2_grpc.PredictionServiceStub(self._channel)
        self._models = self._api.model_service_pb2_grpc.ModelServiceStub(self._channel)
        try:
            self.model_status()
            self.metadata = ModelMetadata.from_json(self._metadata_json())
        except BaseException:
            self.close()
            raise

    def describe(self) -> str:
        return f"TF Serving gRPC at {self.target}, model '{self.name}' version {self.metadata.version}"

    def close(self) -> None:
        """Close the channel; later calls fail with ServingError."""
        self._channel.close()

    # -- calls --------------------------------------------------------------------

    def _model_spec(self, spec, signature: str | None = None) -> None:
        spec.name = self.name
        if self.version:
            spec.version.value = int(self.version)
        if signature:
            spec.signature_name = signature

    def _call(self, rpc, request):
        """Run one unary RPC with the deadline; grpc.RpcError -> ServingError."""
        try:
            return rpc(request, timeout=self.timeout_s)
        except self._api.grpc.RpcError as exc:
            raise self._error(exc) from None
        except ValueError as exc:  # grpcio: "Cannot invoke RPC on closed channel!"
            raise ServingError(f"gRPC channel to {self.target} unusable: {exc}") from None

    def _error(self, exc) -> ServingError:
        code = exc.code() if callable(getattr(exc, "code", None)) else None
        details = (exc.details() if callable(getattr(exc, "details", None)) else None) or str(exc)
        codes = self._api.grpc.StatusCode
        if code == codes.UNAVAILABLE:
            return ServingError(
                f"TF Serving at {self.target} is not reachable over gRPC ({details}): is the server running "
                "and the address right?", retryable=True
            )
        if code == codes.DEADLINE_EXCEEDED:
            return ServingError(f"TF Serving at {self.target} did not answer within {self.timeout_s:g} s", retryable=True)
        status = code.name if code is not None else "an error"
        return ServingError(f"TF Serving answered {status} for model '{self.name}': {details}")

    def model_status(self) -> list[dict]:
        """``model_version_status`` entries as TF Serving's REST API gives them:
        ``{"version": "2", "state": "AVAILABLE", "status": {"error_code": "OK",
        "error_message": ""}}``.

        Raises
        ------
        ServingError
            Unless one version is AVAILABLE; or as :meth:`predict`.
        """
        api = self._api
        request = api.get_model_status_pb2.GetModelStatusRequest()
        self._model_spec(request.model_spec)
        response = self._call(self._models.GetModelStatus, request)
        status = [
            api.json_format.MessageToDict(s, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
            for s in response.model_version_status
        ]
        if not any(s.get("state") == "AVAILABLE" for s in status):
            states = ", ".join(f"v{s.get('version')}: {s.get('state')}" for s in status) or "no versions"
            raise ServingError(f"model '{self.name}' is not available on {self.target} ({states})")
        return status

    def signature_defs(self) -> dict:
        """The model's SignatureDefs as JSON (``GetModelMetadata``), like the REST client's."""
        api = self._api
        request = api.get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        self._model_spec(request.model_spec)
        response = self._call(self._predictions.GetModelMetadata, request)
        signature_map = api.get_model_metadata_pb2.SignatureDefMap()
        if "signature_def" not in response.metadata or not response.metadata["signature_def"].Unpack(signature_map):
            raise ServingError(f"TF Serving's metadata of model '{self.name}' has no SignatureDefMap")
        as_dict = api.json_format.MessageToDict(
            signature_map, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
        )
        return as_dict.get("signature_def", {})

    def _predict(self, signature: str, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        api = self._api
        request = api.predict_pb2.PredictRequest()
        self._model_spec(request.model_spec, signature)
        for key, value in inputs.items():
            request.inputs[key].CopyFrom(api.tf.make_tensor_proto(value))
        response = self._call(self._predictions.Predict, request)
        try:
            return {key: api.tf.make_ndarray(value) for key, value in response.outputs.items()}
        except (ValueError, TypeError) as exc:
            raise ServingError(f"TF Serving's answer holds a tensor this client cannot read: {exc}") from None

    def _metadata_json(self) -> str:
        outputs = self._predict(METADATA_SIGNATURE, {METADATA_INPUT_NAME: np.zeros(1, dtype=np.float32)})
        # one JSON per input row; models exported before batching support return a scalar
        value = np.asarray(outputs.get(METADATA_OUTPUT_NAME, np.array([], dtype=object))).reshape(-1)
        if value.size != 1 or not isinstance(value[0], bytes):
            raise ServingError(f"model '{self.name}' has no usable '{METADATA_SIGNATURE}' signature; not an asd model")
        try:
            return value[0].decode("utf-8")
        except UnicodeDecodeError:
            raise ServingError(f"model '{self.name}' answered metadata that is not UTF-8 text; not an asd model") from None

    def predict(self, inputs: np.ndarray) -> Prediction:
        """Run ``serving_default`` on the model's input (``metadata.input``).

        Parameters
        ----------
        inputs : np.ndarray
            Log-mel patches ``(n_patches, n_mels, patch_frames)`` in dB, or waveforms
            ``(n_clips, input_samples)`` in [-1, 1]; sent as float32 (exact bytes).

        Returns
        -------
        Prediction
            ``patch_error (n,)``, ``frame_error (n, frames)``, ``reconstruction`` or None;
            float32.

        Raises
        ------
        ServingError
            Server unreachable (UNAVAILABLE), slower than ``timeout_s``
            (DEADLINE_EXCEEDED), refusing the request (e.g. INVALID_ARGUMENT for a
            wrong shape, with TF Serving's message), or answering without the outputs.
        """
        array = np.ascontiguousarray(inputs, dtype=np.float32)
        outputs = self._predict(SERVING_SIGNATURE, {self.metadata.input: array})
        return Prediction.from_outputs(outputs, len(array))

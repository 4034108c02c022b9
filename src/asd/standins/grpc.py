"""A stand-in for TensorFlow Serving's gRPC API, backed by real SavedModels.

Implements, on the official protos of ``tensorflow_serving.apis`` (tensorflow-serving-api
2.21.0), the services the gRPC client uses:

- ``tensorflow.serving.PredictionService/Predict``: ``PredictRequest`` (``model_spec``,
  ``inputs`` map of TensorProto, ``output_filter``) -> ``PredictResponse`` (``model_spec``
  with the version served, ``outputs`` map of TensorProto); float outputs as raw
  ``tensor_content``, strings in ``string_val``;
- ``tensorflow.serving.PredictionService/GetModelMetadata``: ``metadata_field`` must be
  ``["signature_def"]``; answers a ``SignatureDefMap`` packed in ``Any``;
- ``tensorflow.serving.ModelService/GetModelStatus``: one ``ModelVersionStatus`` per
  version (state AVAILABLE, status OK).

Errors are gRPC statuses with TF Serving's codes and messages (see
:class:`asd.standins.repository.ModelRepository`): NOT_FOUND ``Servable not found for request:
Latest(<name>)``, FAILED_PRECONDITION ``Serving signature key "<s>" not found.``,
INVALID_ARGUMENT for inputs the signature does not take. Classify, Regress,
MultiInference and HandleReloadConfigRequest answer UNIMPLEMENTED.

Like TF Serving (its server sets the maximum message size to INT_MAX), the server takes
and sends messages of any size a client allows. Importing this module imports
TensorFlow. Run it with ``python -m asd.standins --models DIR --grpc-port 8500``.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import tensorflow as tf
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from .repository import ModelRepository, RequestError

# TF Serving's model server: builder.SetMaxMessageSize(tensorflow::kint32max).
MAX_MESSAGE_BYTES = 2**31 - 1
SERVER_OPTIONS = [
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
]
DEFAULT_SIGNATURE = "serving_default"


def _requested(model_spec) -> tuple[int | None, str | None]:
    """``(version, label)`` a ModelSpec asks for (both None: the latest); the label is
    resolved by :meth:`ModelRepository.find` from the model config's ``version_labels``."""
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return int(model_spec.version.value), None
    if choice == "version_label":
        return None, model_spec.version_label
    return None, None


def _abort_on_error(method):
    """Run a servicer method, turning RequestError into its gRPC status (and a stand-in
    bug into INTERNAL), as TF Serving answers."""

    def wrapped(self, request, context):
        try:
            return method(self, request, context)
        except RequestError as exc:
            error = (getattr(grpc.StatusCode, exc.code, grpc.StatusCode.UNKNOWN), exc.message)
        except Exception as exc:  # a stand-in bug must still answer like a server
            error = (grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
        context.abort(*error)

    wrapped.__name__, wrapped.__doc__ = method.__name__, method.__doc__
    return wrapped


class PredictionServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """``tensorflow.serving.PredictionService`` over a :class:`ModelRepository`."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    @_abort_on_error
    def Predict(self, request: predict_pb2.PredictRequest, context) -> predict_pb2.PredictResponse:
        """Run a signature (``serving_default`` when ``model_spec.signature_name`` is empty)."""
        if not request.HasField("model_spec"):
            raise RequestError("INVALID_ARGUMENT", "Missing ModelSpec")
        spec = request.model_spec
        chosen, servable = self.repository.find(spec.name, *_requested(spec))
        signature_name = spec.signature_name or DEFAULT_SIGNATURE
        input_specs = servable.input_specs(signature_name)
        inputs = {}
        for key, proto in request.inputs.items():
            expected = input_specs.get(key)
            sent = tf.dtypes.as_dtype(proto.dtype) if proto.dtype else None
            if expected is not None and sent != expected.dtype:
                raise RequestError(
                    "INVALID_ARGUMENT",
                    f"input '{key}' expects {expected.dtype.name} but {sent.name if sent else 'no dtype'} is provided",
                )
            try:
                inputs[key] = tf.make_ndarray(proto)
            except (ValueError, TypeError) as exc:
                raise RequestError("INVALID_ARGUMENT", f"input '{key}' is not a valid TensorProto: {exc}") from None
        outputs = servable.run(signature_name, inputs, self.repository.max_batch_size)
        names = list(request.output_filter) or list(outputs)
        for name in names:
            if name not in outputs:
                raise RequestError(
                    "INVALID_ARGUMENT",
                    f"output tensor alias not found in signature: {name} Outputs expected to be in the set "
                    f"{{{','.join(sorted(outputs))}}}.",
                )
        if len(set(names)) != len(names):
            raise RequestError("INVALID_ARGUMENT", f"duplicate output tensor alias in output_filter: {names}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = spec.name
        response.model_spec.version.value = chosen
        response.model_spec.signature_name = signature_name
        for name in names:
            response.outputs[name].CopyFrom(tf.make_tensor_proto(np.asarray(outputs[name])))
        return response

    @_abort_on_error
    def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        """The model's SignatureDefs (``metadata["signature_def"]``, a packed SignatureDefMap)."""
        if not request.HasField("model_spec"):
            raise RequestError("INVALID_ARGUMENT", "Missing ModelSpec")
        if not request.metadata_field:
            raise RequestError("INVALID_ARGUMENT", "GetModelMetadataRequest must specify at least one metadata_field")
        for field in request.metadata_field:
            if field != "signature_def":
                raise RequestError("INVALID_ARGUMENT", f"Metadata field {field} is not supported")
        chosen, servable = self.repository.find(request.model_spec.name, *_requested(request.model_spec))
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, value in servable.signature_def_protos.items():
            signature_map.signature_def[key].CopyFrom(value)
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = request.model_spec.name
        response.model_spec.version.value = chosen
        response.metadata["signature_def"].Pack(signature_map)
        return response


class ModelServicer(model_service_pb2_grpc.ModelServiceServicer):
    """``tensorflow.serving.ModelService`` (GetModelStatus) over a :class:`ModelRepository`."""

    def __init__(self, repository: ModelRepository):
        self.repository = repository

    @_abort_on_error
    def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context
    ) -> get_model_status_pb2.GetModelStatusResponse:
        """Every version of the model (or the one pinned), each AVAILABLE with status OK."""
        if not request.HasField("model_spec"):
            raise RequestError("INVALID_ARGUMENT", "Missing ModelSpec")
        # a label is not looked at: every version (get_model_status_impl.cc checks has_version() only)
        found = self.repository.status(request.model_spec.name, _requested(request.model_spec)[0])
        response = get_model_status_pb2.GetModelStatusResponse()
        for version in found:
            entry = response.model_version_status.add()
            entry.version = version
            entry.state = get_model_status_pb2.ModelVersionStatus.AVAILABLE
            entry.status.SetInParent()  # error_code OK, as TF Serving sets it for every version
        return response


class GrpcStandInServer:
    """Serves every model version under ``models_dir`` (latest by default) over TF
    Serving's gRPC API.

    Parameters
    ----------
    models_dir : str, Path or ModelRepository
        A models directory in TF Serving's layout, or models already loaded (shared
        with a REST :class:`~asd.standins.rest.StandInServer`).
    host : str
    port : int
        0 picks a free port (see :attr:`target`).
    max_workers : int
        Threads answering requests at once.

    Raises
    ------
    RuntimeError
        If the port cannot be bound (grpcio's error).
    """

    def __init__(
        self, models_dir: str | Path | ModelRepository, host: str = "127.0.0.1", port: int = 0, max_workers: int = 16
    ):
        self.repository = models_dir if isinstance(models_dir, ModelRepository) else ModelRepository(models_dir)
        self.host = host
        self.server = grpc.server(ThreadPoolExecutor(max_workers=max_workers), options=SERVER_OPTIONS)
        prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionServicer(self.repository), self.server)
        model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServicer(self.repository), self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")

    @property
    def servables(self) -> dict:
        """``(name, version) -> Servable`` of the shared repository."""
        return self.repository.servables

    @property
    def target(self) -> str:
        """``host:port`` for ``grpc.insecure_channel`` (``grpc://`` + this for asd's clients)."""
        return f"{self.host}:{self.port}"

    def start(self) -> "GrpcStandInServer":
        self.server.start()
        return self

    def stop(self, grace_s: float | None = None) -> None:
        """Stop serving; calls in flight are cancelled after ``grace_s`` seconds (at once by default)."""
        self.server.stop(grace_s).wait()

    def __enter__(self) -> "GrpcStandInServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

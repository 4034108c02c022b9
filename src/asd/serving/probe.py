"""A short status probe of a TF Serving model: is the server answering, and which
versions are AVAILABLE, asked with a deadline of a second or two.

The model clients (:mod:`asd.serving.rest`, :mod:`asd.serving.grpc`) wait up to their
request timeout (10 s by default, long enough for a big clip under load); a page that
asks a hung server on every update with that timeout is unusable. The probe asks only the
model-status endpoint, which TF Serving answers without running the model (REST
``GET /v1/models/<name>``, gRPC ``ModelService/GetModelStatus``; TF Serving docs,
"RESTful API" and ``model_service.proto``), so a short deadline is fair even while the
server is busy predicting.
"""

from __future__ import annotations

import requests

from .base import ServingError

# A status answer takes milliseconds on a healthy server (a few ms on this machine with
# the stand-in); 1.5 s leaves room for a loaded host and still keeps a page responsive.
PROBE_TIMEOUT_S = 1.5


def probe_status(server_url: str, name: str, timeout_s: float = PROBE_TIMEOUT_S) -> list[dict]:
    """The ``model_version_status`` entries of model ``name`` on a TF Serving server.

    Parameters
    ----------
    server_url : str
        ``http://host:8501`` (REST) or ``grpc://host:8500`` (gRPC, which imports
        TensorFlow for TF Serving's protos, as :class:`asd.serving.grpc.GrpcBackend` does).
    name : str
        Model name.
    timeout_s : float
        Deadline for connecting and for the answer, in seconds.

    Returns
    -------
    list of dict
        ``{"version": "4", "state": "AVAILABLE", ...}`` as TF Serving's REST API gives them.

    Raises
    ------
    ServingError
        Unreachable, no answer within ``timeout_s``, an error answer, or no version AVAILABLE.
    """
    if server_url.startswith("grpc://"):
        status = _grpc_status(server_url[len("grpc://"):], name, timeout_s)
    else:
        status = _rest_status(server_url.rstrip("/"), name, timeout_s)
    if not any(s.get("state") == "AVAILABLE" for s in status):
        states = ", ".join(f"v{s.get('version')}: {s.get('state')}" for s in status) or "no versions"
        raise ServingError(f"model '{name}' is not available on {server_url} ({states})")
    return status


def _rest_status(base_url: str, name: str, timeout_s: float) -> list[dict]:
    from .rest import parse_json

    try:
        response = requests.get(f"{base_url}/v1/models/{name}", timeout=timeout_s)
    except requests.Timeout:
        raise ServingError(f"TF Serving at {base_url} did not answer within {timeout_s:g} s") from None
    except requests.ConnectionError:
        raise ServingError(
            f"TF Serving at {base_url} is not reachable (connection failed): is the server running and the URL right?"
        ) from None
    body = parse_json(response.content)
    if not response.ok:
        message = body.get("error", response.reason) if isinstance(body, dict) else response.reason
        raise ServingError(f"TF Serving answered HTTP {response.status_code} for model '{name}': {message}")
    if not isinstance(body, dict):
        raise ServingError(f"{base_url} answered the status request with no JSON; is it TF Serving?")
    return body.get("model_version_status", [])


def _grpc_status(target: str, name: str, timeout_s: float) -> list[dict]:
    from .grpc import _apis

    api = _apis()
    request = api.get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    with api.grpc.insecure_channel(target) as channel:
        stub = api.model_service_pb2_grpc.ModelServiceStub(channel)
        try:
            response = stub.GetModelStatus(request, timeout=timeout_s)
        except api.grpc.RpcError as exc:
            code, details = exc.code(), exc.details()
            if code == api.grpc.StatusCode.DEADLINE_EXCEEDED:
                raise ServingError(f"TF Serving at {target} did not answer within {timeout_s:g} s") from None
            if code == api.grpc.StatusCode.UNAVAILABLE:
                raise ServingError(
                    f"TF Serving at {target} is not reachable over gRPC ({details}): is the server running "
                    "and the address right?"
                ) from None
            raise ServingError(f"TF Serving answered {code.name} for model '{name}': {details}") from None
    return [
        api.json_format.MessageToDict(s, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
        for s in response.model_version_status
    ]

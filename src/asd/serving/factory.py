"""Opening a model client: a TF Serving address, or a models directory served in-process."""

from __future__ import annotations

from .base import Backend


def make_backend(
    model_dir: str | None = None,
    server_url: str | None = None,
    name: str | None = None,
    version: int | None = None,
    timeout_s: float = 10.0,
) -> Backend:
    """Open a backend: a TF Serving address, or a model directory served in-process.

    The server address's scheme chooses the API: ``grpc://host:port`` (TF Serving's
    gRPC port, 8500: :class:`asd.serving.grpc.GrpcBackend`, which imports TensorFlow for
    its protos) or ``http://host:port`` / ``https://...`` (TF Serving's REST port, 8501:
    :class:`asd.serving.rest.RestBackend`).

    Raises
    ------
    ValueError
        If neither or both of ``model_dir`` and ``server_url`` are given, a server
        URL comes without a model name, or its scheme is none of grpc, http, https.
    ServingError, asd.layout.ModelNotFoundError, asd.metadata.ModelMismatchError
        From the backend.
    """
    if bool(model_dir) == bool(server_url):
        raise ValueError("give either a model directory or a TF Serving URL (not both)")
    if server_url:
        if not name:
            raise ValueError("a TF Serving URL needs the model name (e.g. --name toycar)")
        scheme = server_url.split("://", 1)[0].lower() if "://" in server_url else ""
        if scheme == "grpc":
            from .grpc import GrpcBackend  # imports TensorFlow when opened

            return GrpcBackend(server_url[len("grpc://"):], name, version=version, timeout_s=timeout_s)
        if scheme not in ("http", "https"):
            raise ValueError(
                f"TF Serving URL {server_url!r} must start with grpc:// (gRPC, e.g. grpc://localhost:8500) "
                "or http:// (REST, e.g. http://localhost:8501)"
            )
        from .rest import RestBackend

        return RestBackend(server_url, name, version=version, timeout_s=timeout_s)
    from .inprocess import InProcessBackend  # imports TensorFlow

    return InProcessBackend(model_dir, name=name, version=version)

"""``python -m asd.standins --models DIR [--port 8501] [--grpc-port 8500]
[--model_config_file FILE [--allow_version_labels_for_unavailable_models]]``: the stand-ins
for TF Serving's REST API (and, with ``--grpc-port``, its gRPC API) over a models
directory, in one process sharing one :class:`~asd.standins.repository.ModelRepository`.
"""

from __future__ import annotations

import argparse
import sys

from .repository import ModelRepository, RequestError
from .rest import StandInServer


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m asd.standins",
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
    parser.add_argument("--model_config_file", metavar="FILE",
                        help="TF Serving's models.config (text ModelServerConfig): its version_labels name versions "
                             "for /v1/models/<name>/labels/<label> (the models still come from --models)")
    parser.add_argument("--allow_version_labels_for_unavailable_models", action="store_true",
                        help="as TF Serving's flag: without it, a config with version_labels refuses to start, since "
                             "labels are checked before any version has loaded")
    parser.add_argument("--file_system_poll_wait_seconds", type=float, default=1.0, metavar="S",
                        help="as TF Serving's flag (default 1): look for new and removed version folders every S "
                             "seconds and serve them without a restart; 0: load once")
    args = parser.parse_args(argv)
    limit, labels = None, None
    try:
        if args.batching_parameters_file:
            from ..serving.batching import max_batch_size

            limit = max_batch_size(args.batching_parameters_file)
        if args.model_config_file:
            from ..serving.catalog import configured_version_labels

            labels = configured_version_labels(args.model_config_file)
        repository = ModelRepository(args.models, max_batch_size=limit, version_labels=labels,
                                     allow_version_labels_for_unavailable_models=args.allow_version_labels_for_unavailable_models,
                                     poll_s=args.file_system_poll_wait_seconds)
    except RequestError as exc:  # TF Serving's own words when it will not start (main.cc)
        sys.exit(f"Failed to start server. Error: {exc.code}: {exc.message}")
    except ValueError as exc:
        sys.exit(f"python -m asd.standins: {exc}")
    server = StandInServer(repository, args.host, args.port)
    grpc_server = None
    if args.grpc_port:
        from .grpc import GrpcStandInServer

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
    main()

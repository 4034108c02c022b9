"""Stand-ins for TensorFlow Serving, backed by real SavedModels: for tests and benchmarks.

No TF Serving binary can run where this project is tested, so the clients
(:mod:`asd.serving`) are tested against these servers, which follow TF Serving's
documented APIs (tensorflow/serving docs and protos at 2.20.0):

- :mod:`asd.standins.repository`: the models and TF Serving's errors, shared by both;
- :mod:`asd.standins.rest`: the REST API (:class:`~asd.standins.rest.StandInServer`),
  its paths matched as TF Serving's http_rest_api_util.cc matches them;
- :mod:`asd.standins.json_tensor`: a ``:predict`` body read into tensors with TF
  Serving's checks and messages (util/json_tensor.cc);
- :mod:`asd.standins.grpc`: the gRPC API on the official protos
  (:class:`~asd.standins.grpc.GrpcStandInServer`).

Run them with ``python -m asd.standins --models production/models --port 8501
--grpc-port 8500`` (add ``--model_config_file models.config
--allow_version_labels_for_unavailable_models`` for its ``version_labels``). They are
not production servers: one Python process, no batching.
"""

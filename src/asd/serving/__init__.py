"""Backends that run an exported model: one interface, one implementation per runtime.

- :class:`asd.serving.rest.RestBackend`: TensorFlow Serving's REST API (no TensorFlow
  needed in the client's process);
- :class:`asd.serving.inprocess.InProcessBackend`: the SavedModel loaded with
  ``tf.saved_model.load``, for use without Docker.

Each gives the model's :class:`~asd.metadata.ModelMetadata` and ``predict(patches)``.
"""

from __future__ import annotations

from .base import Backend, Prediction, ServingError
from .catalog import Deployment, backend_from_env
from .factory import make_backend

__all__ = ["Backend", "Deployment", "Prediction", "ServingError", "backend_from_env", "make_backend"]

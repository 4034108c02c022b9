"""Enrolment: teach a served embedding model a new normal from a handful of recordings,
without retraining (issue 15).

A detector that scores by cosine distance to a bank of normal reference clips (the
shipped ``multispec_scac`` versions, k-NN backend) absorbs new normal recordings by adding
their embeddings to the bank; the network's weights stay as they are. This module gives
what that needs from an exported version:

- :class:`EmbeddingModel`: the clip embedding the version's ``serving_default`` computes
  internally (its graph's ``l2_normalize`` output, the input of the bank distance), read
  out of the SavedModel itself, so that enrolment embeds clips exactly as the served model
  does;
- :func:`bank_threshold`: the decision threshold of the enlarged bank: the version's own
  by default, or refitted with its rule (measured to cost false alarms elsewhere).

Imports TensorFlow.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context, wrap_function
from tensorflow.python.framework import function_def_to_graph

from .detectors.backends import ReferenceBank, build_bank
from .layout import resolve_version_dir
from .metadata import SERVING_SIGNATURE, WAVEFORM_INPUT_NAME, ModelMetadata
from .scoring import fit_gamma_threshold

#: The op of the served graph whose output is the clip embedding the bank is searched with
#: (``tf.nn.l2_normalize`` in :meth:`asd.detectors.multispec.MultiSpecAdaCosDetector.build_serving_function`).
EMBEDDING_OP = "l2_normalize"


class EnrolmentError(ValueError):
    """The model cannot take enrolled clips (no reference bank), or its graph is not the
    kind this module reads."""


class EmbeddingModel:
    """The embedding inside an exported reference-bank version, as a function.

    Parameters
    ----------
    version_dir : str or Path
        A version directory (``<models>/<name>/<version>``), or a models directory with
        ``name`` (and ``version``; default the latest).

    Attributes
    ----------
    metadata : ModelMetadata
    version_dir : Path

    Raises
    ------
    EnrolmentError
        The version takes log-mel patches, scores with another backend than ``knn``, or
        its ``serving_default`` has no ``l2_normalize`` embedding.
    asd.layout.ModelNotFoundError
        No such version.
    """

    def __init__(self, version_dir: str | Path, name: str | None = None, version: int | None = None):
        self.version_dir = Path(resolve_version_dir(version_dir, name, version))
        self.metadata = ModelMetadata.read(self.version_dir)
        backend = ((self.metadata.training.get("config") or {}).get("model") or {}).get("backend")
        if self.metadata.input != WAVEFORM_INPUT_NAME or self.metadata.detector != "multispec_scac" or backend != "knn":
            raise EnrolmentError(
                f"{self.version_dir}: a {self.metadata.detector} model (backend {backend}) has no reference bank of "
                "clips to enrol into; enrolment needs a multispec_scac version with the knn backend")
        self._loaded = tf.saved_model.load(str(self.version_dir))
        self._embed, self._handles = _embedding_function(self._loaded, int(self.metadata.input_samples))

    def __call__(self, waveforms: np.ndarray, batch: int = 16) -> np.ndarray:
        """Embeddings ``(n, dim)`` float32, unit length, of model inputs ``(n,
        input_samples)`` float32 (:func:`asd.inference.model_input`'s waveforms)."""
        out = [self._embed(tf.constant(waveforms[i: i + batch]), *self._handles)[0].numpy()
               for i in range(0, len(waveforms), batch)]
        return np.concatenate(out) if out else np.zeros((0, 0), np.float32)

    def serve(self, waveforms: np.ndarray) -> dict[str, np.ndarray]:
        """The version's own ``serving_default`` outputs, for checks against the bank."""
        outputs = self._loaded.signatures[SERVING_SIGNATURE](**{WAVEFORM_INPUT_NAME: tf.constant(waveforms)})
        return {k: v.numpy() for k, v in outputs.items()}


def _embedding_function(loaded, input_samples: int):
    """``(function, resource handles)``: the exported serving function pruned to its
    ``l2_normalize`` output, to be called with a batch of waveforms and the version's
    variable handles.

    The SavedModel keeps the exported serving function as the ``serving_default``
    attribute (``keras.export.ExportArchive.add_endpoint``); its graph is one
    ``StatefulPartitionedCall`` of the traced function with the waveform and the captured
    variables. That function's graph is rebuilt from its FunctionDef and pruned from its
    inputs to the embedding, so the result runs the same ops on the same variables as the
    served score (a test checks the bank's scores against ``serving_default``'s).
    """
    endpoint = getattr(loaded, SERVING_SIGNATURE, None)
    if endpoint is None:
        raise EnrolmentError(f"the SavedModel has no '{SERVING_SIGNATURE}' endpoint function")
    concrete = endpoint.get_concrete_function(tf.TensorSpec([None, input_samples], tf.float32))
    calls = [op for op in concrete.graph.get_operations() if op.type == "StatefulPartitionedCall"]
    if len(calls) != 1:
        raise EnrolmentError(f"the serving function calls {len(calls)} functions; expected one")
    inner = function_def_to_graph.function_def_to_graph(context.context().get_function_def(calls[0].get_attr("f").name))
    if EMBEDDING_OP not in {op.name for op in inner.get_operations()}:
        raise EnrolmentError(f"the served graph has no '{EMBEDDING_OP}' embedding: not a reference-bank model")
    captured = {id(internal): external for external, internal in concrete.graph.captures}
    try:
        handles = [captured[id(t)] for t in list(calls[0].inputs)[1:]]
    except KeyError:
        raise EnrolmentError("the served graph's call takes computed inputs besides the waveform") from None
    embedding = inner.get_operation_by_name(EMBEDDING_OP).outputs[0]
    wrapped = wrap_function.WrappedFunction(inner, variable_holder=wrap_function.VariableHolder(share_variables=True))
    return wrapped.prune(feeds=list(inner.inputs), fetches=[embedding]), handles


def enrolled_bank(train_embeddings: np.ndarray, train_domains: np.ndarray, enrolled: np.ndarray,
                  domain: str) -> ReferenceBank:
    """The k-NN bank of the training clips plus enrolled clips of ``domain``: every clip is
    a reference, left out of its own score (:class:`asd.detectors.backends.ReferenceBank`).

    Parameters
    ----------
    train_embeddings : np.ndarray [shape=(n_train, dim), dtype=float32]
    train_domains : np.ndarray [shape=(n_train,), dtype=str]
    enrolled : np.ndarray [shape=(k, dim), dtype=float32]
    domain : str
        The enrolled clips' domain label (an existing one, or a new one).
    """
    embeddings = np.concatenate([train_embeddings, enrolled]) if len(enrolled) else train_embeddings
    domains = np.concatenate([np.asarray(train_domains, dtype=object), np.array([domain] * len(enrolled), dtype=object)])
    return build_bank(embeddings, domains, "knn")


THRESHOLD_RULES = ("base", "refit_all", "refit_training")


def bank_threshold(bank: ReferenceBank, metadata: ModelMetadata, n_train: int, rule: str = "base") -> float:
    """The decision threshold of an enlarged bank (its first ``n_train`` references are the
    training clips, the rest enrolled).

    Rules (``rule``):

    - ``"base"``: the version's own threshold, unchanged. Adding references only lowers
      scores, so no clip the base version called normal becomes anomalous; the enrolled
      domain's normals fall under it because they now have near neighbours.
    - ``"refit_all"``: the version's rule (``margin`` x the gamma ``quantile`` of
      leave-one-out scores, :func:`asd.scoring.fit_gamma_threshold`) refitted on every
      reference clip, training and enrolled, each left out of its own score.
    - ``"refit_training"``: the same, fitted on the training clips' scores against the
      enlarged bank.

    Both refits lower the threshold, and so raise false alarms in the domains nobody
    enrolled: enrolled clips are a few recordings of one condition, close to each other,
    and their neighbours' leave-one-out scores drop, which the margin (3.35 for v4)
    amplifies. Measured on ToyCar v4 with 40 enrolled target clips
    (benchmarks/enrolment): threshold 0.355 -> 0.338 (refit_all) or 0.323
    (refit_training), source false alarms 0.04 -> 0.12 or 0.16; with ``"base"`` they stay
    0.04. Never fitted on test clips.

    Raises
    ------
    ValueError
        Unknown rule.
    """
    if rule == "base":
        return float(metadata.threshold["value"])
    if rule not in THRESHOLD_RULES:
        raise ValueError(f"unknown threshold rule {rule!r}; known: {', '.join(THRESHOLD_RULES)}")
    n_fit = len(bank.refs) if rule == "refit_all" else n_train
    distance = 1.0 - bank.refs[:n_fit] @ bank.refs.T  # every clip its own reference (k-NN bank)
    distance[np.arange(n_fit), np.arange(n_fit)] = np.inf
    settings = metadata.threshold
    return fit_gamma_threshold(distance.min(axis=1).astype(np.float64), quantile=float(settings["quantile"]),
                               margin=float(settings.get("margin", 1.0))).value


def leave_one_out_scores(bank: ReferenceBank, rows: np.ndarray) -> np.ndarray:
    """Scores ``(len(rows),)`` of the bank's references ``rows``, each left out of its own
    (for enrolled clips: how far each lies from the bank without it)."""
    rows = np.asarray(rows, dtype=int)
    distance = 1.0 - bank.refs[rows] @ bank.refs.T
    distance[np.arange(len(rows)), rows] = np.inf
    return distance.min(axis=1).astype(np.float64)

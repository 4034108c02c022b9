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

import os
import shutil
import tempfile
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.python.eager import context, wrap_function
from tensorflow.python.framework import function_def_to_graph

from .audio import pcm_sha256  # noqa: F401  (enrolment records it; tests import it from here)
from .detectors.backends import ReferenceBank, build_bank
from .familiarity import OUTPUT_NAME as FAMILIARITY_OUTPUT
from .familiarity import familiarity_features, nearest_distance
from .layout import resolve_version_dir
from .metadata import (
    EMBEDDING_OUTPUT_NAME,
    METADATA_SIGNATURE,
    SERVING_SIGNATURE,
    WAVEFORM_INPUT_NAME,
    ModelMetadata,
)
from .scoring import fit_gamma_threshold

#: Backends whose score is the plain nearest cosine distance over all references (divisors
#: 1: asd.detectors.backends), so an enrolled clip is one more reference.
ENROLLABLE_BACKENDS = ("knn", "knn_smote", "kmeans")
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
        The version takes log-mel patches, scores with a backend other than those of
        :data:`ENROLLABLE_BACKENDS`, is an ensemble, or its ``serving_default`` has no
        ``l2_normalize`` embedding.
    asd.layout.ModelNotFoundError
        No such version.
    """

    def __init__(self, version_dir: str | Path, name: str | None = None, version: int | None = None):
        self.version_dir = Path(resolve_version_dir(version_dir, name, version))
        self.metadata = ModelMetadata.read(self.version_dir)
        settings = (self.metadata.training.get("config") or {}).get("model") or {}
        self.backend = settings.get("backend")
        if self.metadata.detector in ("spectrum_adacos", "arcface"):
            raise EnrolmentError(
                f"{self.version_dir}: a {self.metadata.detector} model's reference banks (one per domain and "
                "network) are not read by this enrolment, which reads multispec_scac graphs; train a multispec_scac "
                "version to enrol into")
        if self.metadata.input != WAVEFORM_INPUT_NAME or self.metadata.detector != "multispec_scac":
            raise EnrolmentError(
                f"{self.version_dir}: a {self.metadata.detector} model has no reference bank of clips to enrol into; "
                "enrolment needs a multispec_scac version (backend knn, knn_smote or kmeans)")
        if self.backend not in ENROLLABLE_BACKENDS:
            raise EnrolmentError(
                f"{self.version_dir}: the {self.backend} backend weighs each reference by its neighbours' density, "
                "which an enrolled clip would change; enrolment needs backend knn, knn_smote or kmeans")
        if int(settings.get("n_models", 1)) != 1:
            raise EnrolmentError(
                f"{self.version_dir}: an ensemble of {settings.get('n_models')} networks averages their nearest "
                "distances, which the served graph does not give apart; enrolment needs n_models: 1")
        self._loaded = tf.saved_model.load(str(self.version_dir))
        (self._embed, self._serve_with_embedding, self._output_names, self._handles,
         self._concrete) = _embedding_function(self._loaded, int(self.metadata.input_samples))

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
    """``(embed, serve_with_embedding, output names, handles, concrete function)``.

    ``embed`` is the exported serving function pruned to its embedding: its ``embedding``
    output where it has one (:data:`asd.metadata.EMBEDDING_OUTPUT_NAME`: versions exported
    since, re-exported with :func:`add_embedding_output`, or enrolled), else its
    ``l2_normalize`` op's output (the same tensor);
    ``serve_with_embedding`` the same function giving that embedding first, then its own
    outputs (``output names``, in that order), each op run once. Both are called with a
    batch of waveforms and ``handles``, the captured inputs of the serving function
    (variable handles and constants) of ``concrete``, whose variables those are.

    The SavedModel keeps the exported serving function as the ``serving_default``
    attribute (``keras.export.ExportArchive.add_endpoint``); its graph is one
    ``StatefulPartitionedCall`` of the traced function with the waveform and the captured
    variables. That function's graph is rebuilt from its FunctionDef and pruned from its
    inputs, so the result runs the same ops on the same variables as the served score (a
    test checks the bank's scores against ``serving_default``'s).
    """
    endpoint = getattr(loaded, SERVING_SIGNATURE, None)
    if endpoint is None:
        raise EnrolmentError(f"the SavedModel has no '{SERVING_SIGNATURE}' endpoint function")
    concrete = endpoint.get_concrete_function(tf.TensorSpec([None, input_samples], tf.float32))
    calls = [op for op in concrete.graph.get_operations() if op.type == "StatefulPartitionedCall"]
    if len(calls) != 1:
        raise EnrolmentError(f"the serving function calls {len(calls)} functions; expected one")
    call = calls[0]
    # with the functions it calls (a re-exported version's graph calls the one it was made from), so
    # that a version saved from it holds them too
    inner = function_def_to_graph.function_def_to_graph(context.context().get_function_def(call.get_attr("f").name),
                                                        include_library_functions=True)
    if (EMBEDDING_OUTPUT_NAME not in concrete.structured_outputs
            and EMBEDDING_OP not in {op.name for op in inner.get_operations()}):
        raise EnrolmentError(f"the served graph has no '{EMBEDDING_OP}' embedding: not a reference-bank model")
    captured = {id(internal): external for external, internal in concrete.graph.captures}
    try:
        handles = [captured[id(t)] for t in list(call.inputs)[1:]]
    except KeyError:
        raise EnrolmentError("the served graph's call takes computed inputs besides the waveform") from None
    # each named output of the serving function: an Identity of one of the call's outputs,
    # which is the inner graph's output of the same index
    call_outputs = {id(t): i for i, t in enumerate(call.outputs)}
    names, fetches = [], []
    for name, tensor in concrete.structured_outputs.items():
        while id(tensor) not in call_outputs and tensor.op.type == "Identity":
            tensor = tensor.op.inputs[0]
        if id(tensor) not in call_outputs:
            raise EnrolmentError(f"the serving function's output '{name}' is not its call's")
        names.append(name)
        fetches.append(inner.outputs[call_outputs[id(tensor)]])
    if EMBEDDING_OUTPUT_NAME in names:
        embedding = fetches[names.index(EMBEDDING_OUTPUT_NAME)]
    else:
        embedding = inner.get_operation_by_name(EMBEDDING_OP).outputs[0]
    wrapped = wrap_function.WrappedFunction(inner, variable_holder=wrap_function.VariableHolder(share_variables=True))
    embed = wrapped.prune(feeds=list(inner.inputs), fetches=[embedding])
    serve_with_embedding = wrapped.prune(feeds=list(inner.inputs), fetches=[embedding, *fetches])
    return embed, serve_with_embedding, names, handles, concrete


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


# -- asd enroll: a new version with enrolled clips ----------------------------------------


class _ServedGraphModule(tf.Module):
    """A version's served graph (the same ops, its variables, its captured constants) in a
    new module, whose ``serving_default`` is :meth:`_serve` over it: the base for versions
    written from another without training (:class:`_EnrolledModule`,
    :class:`_EmbeddingOutputModule`)."""

    def __init__(self, model: EmbeddingModel, metadata: ModelMetadata):
        super().__init__()
        by_handle = {id(v.handle): v for v in model._concrete.variables}
        self._args = [by_handle.get(id(h)) for h in model._handles]  # a variable, or None for a captured constant
        self.tracked_variables = [v for v in self._args if v is not None]
        self.captured_constants = [tf.constant(h.numpy()) for h, v in zip(model._handles, self._args) if v is None]
        self._serve_with_embedding = model._serve_with_embedding
        self._output_names = model._output_names
        spec = tf.TensorSpec([None, int(metadata.input_samples)], tf.float32, name=WAVEFORM_INPUT_NAME)
        # named as an exported version's endpoint, so that EmbeddingModel reads the written version too
        self.serving_default = tf.function(self._serve, input_signature=[spec])

    def _base(self, waveform):
        """The base version's graph once: its embedding and its own outputs by name."""
        constants = iter(self.captured_constants)
        args = [v.handle if v is not None else next(constants) for v in self._args]
        embedding, *outputs = self._serve_with_embedding(waveform, *args)
        return embedding, dict(zip(self._output_names, outputs))

    def _serve(self, waveform):
        raise NotImplementedError


class _EmbeddingOutputModule(_ServedGraphModule):
    """The base version's ``serving_default`` unchanged, plus its clip embedding as the
    output ``embedding`` (:func:`add_embedding_output`)."""

    def _serve(self, waveform):
        embedding, outputs = self._base(waveform)
        return {**outputs, EMBEDDING_OUTPUT_NAME: embedding}


class _EnrolledModule(_ServedGraphModule):
    """The base version's graph plus the enrolled clips: ``serving_default`` runs the
    base's serving graph once (its embedding and outputs), with each score the minimum of the base score and the cosine distance to the
    nearest enrolled clip (the k-NN bank's rule: the nearest of all references), the
    unfamiliarity the minimum of the base's and the distance to the nearest enrolled
    clip's familiarity summary (:mod:`asd.familiarity`), and the clip embedding as the
    output ``embedding`` (enrolment changes the bank, not the embedding)."""

    def __init__(self, model: EmbeddingModel, enrolled: np.ndarray, summaries: np.ndarray, metadata: ModelMetadata):
        super().__init__(model, metadata)  # serving_default is traced on first call, after these are set
        self.enrolled = tf.constant(np.ascontiguousarray(enrolled.T, dtype=np.float32))  # (dim, k)
        self.summaries = tf.constant(np.asarray(summaries, dtype=np.float32))  # (k, 2 * n_mels)
        self._sample_rate = metadata.features.sample_rate

    def _serve(self, waveform):
        embedding, base = self._base(waveform)
        score = tf.minimum(base["patch_error"], tf.reduce_min(1.0 - tf.matmul(embedding, self.enrolled), axis=1))
        unfamiliarity = tf.minimum(base[FAMILIARITY_OUTPUT],
                                   nearest_distance(familiarity_features(waveform, self._sample_rate), self.summaries))
        return {"patch_error": score, "frame_error": score[:, None], FAMILIARITY_OUTPUT: unfamiliarity,
                EMBEDDING_OUTPUT_NAME: embedding}


def enroll(models_dir: str | Path, name: str, clips: list[str | Path], domain: str, base_version: int | None = None,
           out_dir: str | Path | None = None, force: bool = False, threshold_rule: str = "base", log=print,
           published_by: dict | None = None) -> Path:
    """Write a new version of model ``name``: the base version with ``clips`` enrolled as
    normal recordings of ``domain`` (issue 15). Seconds, not a training run.

    - Same network, same weights (the base graph itself, with its variables); the enrolled
      clips' embeddings join the reference bank, their familiarity summaries the
      unfamiliar references. Scores of clips nearer to a training clip than to every
      enrolled clip are exactly the base version's.
    - The decision threshold stays the base version's unless ``threshold_rule`` says
      otherwise (see :func:`bank_threshold` for why a refit is worse); the unfamiliar
      threshold stays the base's.
    - The metadata records who published it (``published_by``: the app's signed-in user,
      :mod:`asd.access.guarded`), the base version, the domain, and each clip's name and
      :func:`asd.audio.pcm_sha256`; warm-up requests are written as for any export.
    - Never overwrites a version: written to a hidden temporary folder beside the
      versions (TF Serving ignores names that are not numbers), then renamed to the next
      free version number; if another enrolment took that number first, the next one.

    Parameters
    ----------
    models_dir : str or Path
        Models directory (``<models>/<name>/<version>``) holding the base version.
    clips : list of paths
        WAV/FLAC recordings of the machine as it runs now, normal.
    domain : str
        Their domain label: ``target``, or a new label (e.g. ``line-3-mic-b``).
    base_version : int, optional
        Default: the latest.
    out_dir : str or Path, optional
        Models directory the new version goes to (default ``models_dir``).
    force : bool
        Enrol clips the base version calls anomalous or unfamiliar (refused otherwise).
    threshold_rule : str
        ``"base"`` (default: the base version's decision threshold), ``"refit_all"`` or
        ``"refit_training"`` (:func:`bank_threshold`; the knn backend only, whose
        references are the training clips). The unfamiliar threshold is the base's.

    Returns
    -------
    Path
        The new version's directory.

    Raises
    ------
    EnrolmentError
        No clips, clips that cannot be used (unreadable, silent, too short: all listed),
        or flagged clips without ``force``; a base version without a reference bank.
    """
    from .audio import AudioError, clip_problem, load_audio
    from .features import ClipTooShortError
    from .inference import MAX_CLIP_SECONDS, model_input
    from .scoring import ANOMALOUS, UNFAMILIAR, verdict
    from .warmup import write_warmup_requests

    if not clips:
        raise EnrolmentError("no clips to enrol: give the recordings of the machine as it runs now")
    if not domain or not domain.replace("-", "").replace("_", "").isalnum():
        raise EnrolmentError(f"domain label {domain!r}: use letters, digits, '-' or '_' (e.g. target, line-3-mic-b)")
    base_dir = Path(resolve_version_dir(models_dir, name, base_version))
    meta = ModelMetadata.read(base_dir)
    # a version enrolled before: its network is its root version's, its enrolled clips are in
    # its assets.extra (the new version keeps them and adds the new ones)
    root_version = int((meta.enrolment or {}).get("root_version", meta.version))
    previous = _read_enrolled(base_dir) if meta.enrolment else None
    root_dir = base_dir.parent / str(root_version)
    if not root_dir.is_dir():
        raise EnrolmentError(f"{name} v{meta.version} was enrolled into v{root_version}, which is gone from "
                             f"{base_dir.parent}; enrol into another version")
    model = EmbeddingModel(root_dir)
    inputs, records, problems = [], [], []
    for path in map(Path, clips):
        try:
            clip = load_audio(path, meta.features.sample_rate, name=path.name, max_seconds=MAX_CLIP_SECONDS)
            inputs.append(model_input(clip.samples, meta, meta.features, display=False)[1][0])
            records.append({"name": path.name, "pcm_sha256": pcm_sha256(clip.samples), "notes": list(clip.notes)})
        except (AudioError, ClipTooShortError, OSError) as exc:
            problems.append(clip_problem(path.name, exc))
    if problems:
        raise EnrolmentError("cannot enrol: " + "; ".join(problems))
    waveforms = np.stack(inputs).astype(np.float32)
    base_out = model.serve(waveforms)
    embeddings = model(waveforms)
    summaries = familiarity_features(tf.constant(waveforms), meta.features.sample_rate).numpy()
    if previous is not None:  # the base version's own answers: its root's, with its enrolled clips beside them
        base_out["patch_error"] = np.minimum(base_out["patch_error"], (1.0 - embeddings @ previous["embeddings"].T).min(axis=1))
        base_out[FAMILIARITY_OUTPUT] = np.minimum(base_out[FAMILIARITY_OUTPUT], nearest_distance(
            tf.constant(summaries), tf.constant(previous["summaries"])).numpy())
    flagged = []
    for record, score, unfamiliarity in zip(records, base_out["patch_error"], base_out[FAMILIARITY_OUTPUT]):
        said = verdict(float(score), meta.threshold_value, float(unfamiliarity), meta.unfamiliar_threshold)
        record.update(base_score=float(score), base_verdict=said)
        if said in (ANOMALOUS, UNFAMILIAR):
            flagged.append(f"{record['name']} ({said} under v{meta.version})")
    if flagged and not force:
        raise EnrolmentError(f"{len(flagged)} clip(s) already score as faulty or foreign: {', '.join(flagged)}; "
                             "remove them, or add --force if you are sure the machine is healthy")
    enrolled = {"embeddings": embeddings, "summaries": summaries, "names": np.array([r["name"] for r in records]),
                "domains": np.array([domain] * len(records))}
    if previous is not None:
        enrolled = {key: np.concatenate([previous[key], value]) for key, value in enrolled.items()}
    module = _EnrolledModule(model, enrolled["embeddings"], enrolled["summaries"], meta)
    threshold = dict(meta.threshold)
    if threshold_rule != "base":
        if model.backend != "knn":
            raise EnrolmentError(f"--threshold-rule {threshold_rule} refits on the training clips, which only a knn "
                                 f"bank holds as they are; this version's backend is {model.backend}")
        training = next(c.numpy().T for c in module.captured_constants if c.shape.rank == 2)  # the bank, (n_train, dim)
        bank = enrolled_bank(training, np.array(["source"] * len(training), dtype=object), enrolled["embeddings"], domain)
        threshold.update(value=bank_threshold(bank, meta, len(training), threshold_rule), refitted=threshold_rule,
                         fitted_on=f"the training clips and {len(enrolled['names'])} enrolled clip(s), leave-one-out "
                                   f"({threshold_rule}; asd.enrolment.bank_threshold)")

    target_root = Path(out_dir or model.version_dir.parent.parent) / name
    target_root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".enrolling-", dir=target_root))
    try:
        new_meta = ModelMetadata.from_dict({**meta.to_dict(), "version": 0, "threshold": threshold})
        new_meta.outputs = [*(o for o in new_meta.outputs if o != EMBEDDING_OUTPUT_NAME), EMBEDDING_OUTPUT_NAME]
        new_meta.enrolment = {
            "base_version": meta.version, "root_version": root_version, "domain": domain, "clips": records,
            "n_clips": len(records), "n_clips_in_bank": int(len(enrolled["names"])),
            "threshold_rule": threshold_rule + " (asd.enrolment.bank_threshold; the unfamiliar threshold is the base's)",
            "base_enrolment": meta.enrolment, "enrolled_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "published_by": published_by,
        }
        if new_meta.evaluation:  # not measured again: the base version's figures, said so
            new_meta.evaluation = {**new_meta.evaluation, "measured_on": new_meta.evaluation.get(
                "measured_on", f"base version {meta.version}, before enrolment")}
        if new_meta.unfamiliar:
            new_meta.unfamiliar = {**new_meta.unfamiliar,
                                   "n_references": int(new_meta.unfamiliar.get("n_references", 0)) + len(records)}
        version_dir = _publish(module, new_meta, tmp, target_root, model.version_dir, write_warmup_requests, enrolled)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"enrolled {len(records)} clip(s) of domain '{domain}' into {name} v{meta.version}: new version "
        f"{version_dir.name} at {version_dir}" + (f" (forced: {', '.join(flagged)})" if flagged else ""))
    return version_dir


ENROLLED_FILE = "assets.extra/enrolled.npz"


def _read_enrolled(version_dir: Path) -> dict[str, np.ndarray]:
    """An enrolled version's clips: embeddings ``(k, dim)``, familiarity summaries ``(k,
    2 * n_mels)``, names and domains ``(k,)``.

    Raises
    ------
    EnrolmentError
        The file is missing or unreadable.
    """
    try:
        with np.load(version_dir / ENROLLED_FILE, allow_pickle=False) as stored:
            return {key: stored[key] for key in ("embeddings", "summaries", "names", "domains")}
    except (OSError, KeyError, ValueError) as exc:
        raise EnrolmentError(f"{version_dir}: its enrolled clips ({ENROLLED_FILE}) cannot be read: {exc}") from None


def _publish(module: _ServedGraphModule, metadata: ModelMetadata, tmp: Path, root: Path, base_dir: Path,
             write_warmup_requests, enrolled: dict[str, np.ndarray] | None, check=None) -> Path:
    """Save into ``tmp``, then rename it to the next free version number under ``root``
    (retrying with the next number while another writer takes it). ``enrolled``: the
    enrolled clips to keep beside it (None: none); ``check``: called with the written
    folder before it is renamed into place (raising stops the publication)."""
    from .export import _metadata_function
    from .layout import next_version

    for _ in range(100):
        version = next_version(root)
        metadata.version = version
        staged = tmp / "version"
        shutil.rmtree(staged, ignore_errors=True)
        tf.saved_model.save(module, str(staged), signatures={
            SERVING_SIGNATURE: module.serving_default, METADATA_SIGNATURE: _metadata_function(metadata)})
        if (staged / "assets").is_dir() and not any((staged / "assets").iterdir()):
            (staged / "assets").rmdir()  # empty: TF Serving needs none
        metadata.write(staged)
        band_profiles = base_dir / "assets.extra" / "band_profiles.npz"
        if band_profiles.is_file():  # the explanation plot's training clips (the enrolled ones are not in it)
            shutil.copy2(band_profiles, staged / "assets.extra" / band_profiles.name)
        write_warmup_requests(staged, metadata)
        if enrolled is not None:
            np.savez(staged / ENROLLED_FILE, **enrolled)  # what a later enrolment into this version builds on
        if check is not None:
            check(staged)
        final = root / str(version)
        try:
            os.rename(staged, final)  # atomic; fails if another enrolment created this version first
            return final
        except OSError:
            if not final.exists():
                raise
    raise EnrolmentError(f"could not find a free version number under {root}")


# -- asd resave --add-embedding: a version re-exported with its embedding as an output -----

#: What :func:`add_embedding_output` records in the new version's metadata (``reexport``).
EMBEDDING_REEXPORT = ("serving_default re-exported with the clip embedding as the output 'embedding' "
                      "((batch, dim) float32, L2-normalised); the other outputs are the base version's graph, "
                      "unchanged (asd.enrolment.add_embedding_output)")


class EmbeddingOutputMismatchError(EnrolmentError):
    """A version written by :func:`add_embedding_output` does not answer as its base."""


def compare_with_embedding(base_dir: "str | Path | EmbeddingModel", new_dir: str | Path, waveforms: np.ndarray,
                           batch: int = 8) -> dict[str, float]:
    """Max absolute difference of each ``serving_default`` output of ``new_dir`` from
    ``base_dir``'s on ``waveforms`` ``(n, input_samples)``, and of its ``embedding`` from
    the base's embedding (:class:`EmbeddingModel` of the base) under ``"embedding"``.

    Raises
    ------
    EmbeddingOutputMismatchError
        The new version lacks one of the base's outputs or the embedding, or an output's
        shape or dtype differs.
    """
    base = base_dir if isinstance(base_dir, EmbeddingModel) else EmbeddingModel(base_dir)
    new = tf.saved_model.load(str(new_dir))
    differences: dict[str, float] = {}
    for i in range(0, len(waveforms), batch):
        chunk = np.asarray(waveforms[i: i + batch], dtype=np.float32)
        before = base.serve(chunk)
        before[EMBEDDING_OUTPUT_NAME] = base(chunk)
        after = {k: v.numpy() for k, v in new.signatures[SERVING_SIGNATURE](
            **{WAVEFORM_INPUT_NAME: tf.constant(chunk)}).items()}
        if set(after) != set(before):
            raise EmbeddingOutputMismatchError(f"{new_dir}: outputs {sorted(after)}, expected {sorted(before)}")
        for key, value in before.items():
            if after[key].shape != value.shape or after[key].dtype != value.dtype:
                raise EmbeddingOutputMismatchError(f"{new_dir}: output {key} is {after[key].dtype} "
                                                   f"{after[key].shape}, expected {value.dtype} {value.shape}")
            gap = float(np.max(np.abs(after[key].astype(np.float64) - value))) if value.size else 0.0
            differences[key] = max(differences.get(key, 0.0), gap)
    return differences


def add_embedding_output(models_dir: str | Path, name: str | None = None, base_version: int | None = None,
                         tolerance: float = 1e-6, log=print) -> Path:
    """Write a new version of a reference-bank model: the base version's ``serving_default``
    with the clip embedding as the output ``embedding`` (issue 29), nothing trained.

    - Same graph, same variables (:class:`EmbeddingModel`'s ``serve_with_embedding``: the
      base's served function once, giving its embedding and its own outputs), so the
      existing outputs keep their names, shapes and values.
    - Metadata: the base's (thresholds, evaluation, training record, unfamiliar
      reference) with ``embedding`` among the outputs, the new version number and a
      ``reexport`` record naming the base version; warm-up requests written as for any
      export; ``assets.extra/band_profiles.npz`` copied.
    - Checked before it is published: on the warm-up clip, every output of the base
      within ``tolerance`` of the base's, the embedding within it of
      :class:`EmbeddingModel`'s; written to a hidden folder and renamed to the next free
      version number (TF Serving then serves it as the latest).

    Parameters
    ----------
    models_dir : str or Path
        A models directory (with ``name``), a model directory or a version directory.
    base_version : int, optional
        Default: the latest.

    Returns
    -------
    Path
        The new version's directory, ``<models>/<name>/<next version>``.

    Raises
    ------
    EnrolmentError
        The base version is not a single-network reference-bank model
        (:class:`EmbeddingModel`), or it already has the ``embedding`` output.
    EmbeddingOutputMismatchError
        The written version answers otherwise (nothing is published).
    """
    from .export import _metadata_function  # noqa: F401  (imported by _publish; fails early without keras)
    from .warmup import warmup_input, write_warmup_requests

    model = EmbeddingModel(models_dir, name, base_version)
    meta = model.metadata
    if EMBEDDING_OUTPUT_NAME in model._output_names:
        raise EnrolmentError(f"{model.version_dir}: serving_default already has the '{EMBEDDING_OUTPUT_NAME}' output")
    module = _EmbeddingOutputModule(model, meta)
    new_meta = ModelMetadata.from_dict({**meta.to_dict(), "version": 0})
    new_meta.outputs = [*meta.outputs, EMBEDDING_OUTPUT_NAME]
    new_meta.reexport = {"base_version": meta.version, "change": EMBEDDING_REEXPORT,
                         "checked": f"every output within {tolerance:g} of v{meta.version}'s on the warm-up clip",
                         "tensorflow": tf.__version__,
                         "written_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def check(staged: Path) -> None:
        differences = compare_with_embedding(model, staged, warmup_input(meta))
        worst = max(differences, key=differences.get)
        if differences[worst] > tolerance:
            raise EmbeddingOutputMismatchError(f"output {worst} differs from v{meta.version}'s by "
                                               f"{differences[worst]:.3g} on the warm-up clip (tolerance {tolerance:g})")
        log("checked on the warm-up clip, max abs difference from v"
            f"{meta.version}: " + ", ".join(f"{k} {v:.3g}" for k, v in sorted(differences.items())))

    root = model.version_dir.parent
    tmp = Path(tempfile.mkdtemp(prefix=".reexporting-", dir=root))
    try:
        version_dir = _publish(module, new_meta, tmp, root, model.version_dir, write_warmup_requests, None, check)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log(f"{meta.name} v{meta.version} re-exported with the '{EMBEDDING_OUTPUT_NAME}' output as version "
        f"{version_dir.name} at {version_dir}")
    return version_dir

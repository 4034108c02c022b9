"""What travels with an exported model, and the check that the app agrees with it.

A model directory in TF Serving's layout (``<models>/<name>/<version>/``) holds the
SavedModel and ``assets.extra/asd_metadata.json``: feature settings, normalisation,
decision threshold, training provenance and evaluation figures. TF Serving ignores
``assets.extra`` but copies it with the model; the same JSON is also served by the
SavedModel's ``metadata`` signature so that a client that sees only the server's REST
API gets it too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from .features import FeatureConfig

FORMAT = "asd-model/1"
METADATA_FILE = "assets.extra/asd_metadata.json"
SERVING_SIGNATURE = "serving_default"
METADATA_SIGNATURE = "metadata"
INPUT_NAME = "logmel_patches"
# The other input a served detector may take: the clip's samples, (batch, input_samples)
# float32 in [-1, 1] at the feature sample rate (whole-clip spectrum detectors).
WAVEFORM_INPUT_NAME = "waveform"
# serving_default outputs: every model gives patch_error and frame_error; autoencoders also
# reconstruction, waveform models also unfamiliarity (asd.familiarity), reference-bank
# models (multispec_scac) also embedding.
OUTPUT_NAMES = ("reconstruction", "patch_error", "frame_error", "unfamiliarity", "embedding")
# The clip embedding a reference-bank model scores with: (batch, dim) float32, L2-normalised
# (its score is the cosine distance 1 - e.r to the nearest reference clip r).
EMBEDDING_OUTPUT_NAME = "embedding"
# What a model exported without a signature record gives (asd's first models).
DEFAULT_OUTPUT_NAMES = ("reconstruction", "patch_error", "frame_error")
REQUIRED_OUTPUT_NAMES = ("patch_error", "frame_error")
METADATA_INPUT_NAME = "unused"
METADATA_OUTPUT_NAME = "metadata_json"


class ModelMismatchError(ValueError):
    """A model that this code must not use: other feature settings or an unknown format."""


@dataclass
class ModelMetadata:
    """Metadata of one exported model version.

    Attributes
    ----------
    name : str
        Model name as served (``/v1/models/<name>``), e.g. ``"toycar"``.
    version : int
        TF Serving model version (positive integer, the folder name).
    machine_type : str
        Machine type it was trained on, e.g. ``"ToyCar"``.
    detector : str
        Detector family, e.g. ``"conv_autoencoder"``.
    features : FeatureConfig
        Feature settings the model was trained with.
    threshold : dict
        Decision threshold: ``value`` plus how it was fitted (see
        :class:`asd.scoring.GammaThreshold`).
    normalisation : dict
        Per-mel standardisation baked into the SavedModel (``mean``, ``std`` in dB,
        length n_mels), recorded for inspection.
    training : dict
        Provenance: config, seed, data, clip counts, epochs, losses, versions, time.
    evaluation : dict or None
        Figures of :func:`asd.metrics.evaluate_scores` on a labelled test set.
    outputs : list of str
        The ``serving_default`` outputs this model gives (see :data:`OUTPUT_NAMES`).
    score_unit : str
        What the anomaly score measures, for axis labels.
    input : str
        The ``serving_default`` input: :data:`INPUT_NAME` (log-mel patches) or
        :data:`WAVEFORM_INPUT_NAME` (the clip's samples, ``input_samples`` of them).
    input_samples : int or None
        Samples per clip of a waveform-input model (clips are cut or zero-padded to it).
    unfamiliar : dict or None
        The unfamiliar threshold (``threshold``) on the ``unfamiliarity`` output and how it
        was fitted (:mod:`asd.familiarity`); None for models without that output.
    frame_threshold : dict or None
        Frame-level models: the per-frame error (``value``) above which the app marks a
        frame, and how it was fitted (:func:`asd.explanations.fit_frame_threshold`); None
        for whole-clip models and models exported before it (the app marks no frames).
    enrolment : dict or None
        A version made by ``asd enroll`` from another (:func:`asd.enrolment.enroll`): the
        base version, the enrolled clips' domain, and each clip's name and PCM hash;
        None for a trained version.
    reexport : dict or None
        A version written from another without training (e.g. ``asd resave
        --add-embedding``, :func:`asd.enrolment.add_embedding_output`): the base version
        and what changed; its threshold, evaluation and training record are the base's.
        None otherwise.
    """

    name: str
    version: int
    machine_type: str
    detector: str
    features: FeatureConfig
    threshold: dict
    normalisation: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    evaluation: dict | None = None
    outputs: list[str] = field(default_factory=lambda: list(DEFAULT_OUTPUT_NAMES))
    score_unit: str = "reconstruction error (MSE, standardised log-mel)"
    input: str = INPUT_NAME
    input_samples: int | None = None
    unfamiliar: dict | None = None
    frame_threshold: dict | None = None
    enrolment: dict | None = None
    reexport: dict | None = None
    format: str = FORMAT

    @property
    def threshold_value(self) -> float:
        return float(self.threshold["value"])

    @property
    def unfamiliar_threshold(self) -> float | None:
        """The ``unfamiliarity`` above which a clip is ``unfamiliar``; None if the model has none."""
        return float(self.unfamiliar["threshold"]) if self.unfamiliar else None

    @property
    def frame_threshold_value(self) -> float | None:
        """The per-frame error above which a frame is marked; None if the model has none."""
        return float(self.frame_threshold["value"]) if self.frame_threshold else None

    def to_dict(self) -> dict:
        return {
            "format": self.format,
            "name": self.name,
            "version": self.version,
            "machine_type": self.machine_type,
            "detector": self.detector,
            "features": self.features.to_dict(),
            "threshold": self.threshold,
            **({"unfamiliar": self.unfamiliar} if self.unfamiliar else {}),
            **({"frame_threshold": self.frame_threshold} if self.frame_threshold else {}),
            **({"enrolment": self.enrolment} if self.enrolment else {}),
            **({"reexport": self.reexport} if self.reexport else {}),
            "score_unit": self.score_unit,
            "signature": {
                "name": SERVING_SIGNATURE,
                "input": self.input,
                "input_shape": [None, self.input_samples]
                if self.input == WAVEFORM_INPUT_NAME
                else [None, self.features.n_mels, self.features.patch_frames],
                "outputs": list(self.outputs),
            },
            "normalisation": self.normalisation,
            "training": self.training,
            "evaluation": self.evaluation,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, values: dict) -> "ModelMetadata":
        """Parse metadata; raises ModelMismatchError for an unknown format."""
        if values.get("format") != FORMAT:
            raise ModelMismatchError(
                f"model metadata format {values.get('format')!r} is not {FORMAT!r}: "
                "this model was exported by another version of asd; re-export it"
            )
        signature = values.get("signature", {})
        if signature.get("input", INPUT_NAME) not in (INPUT_NAME, WAVEFORM_INPUT_NAME):
            raise ModelMismatchError(
                f"model input {signature.get('input')!r} is neither {INPUT_NAME!r} nor {WAVEFORM_INPUT_NAME!r}; "
                "this asd version cannot feed it"
            )
        try:
            if values.get("frame_threshold") is not None:
                float(values["frame_threshold"]["value"])  # checked here, not when the app first draws
            return cls(
                name=values["name"],
                version=int(values["version"]),
                machine_type=values["machine_type"],
                detector=values["detector"],
                features=FeatureConfig.from_dict(values["features"]),
                threshold=values["threshold"],
                normalisation=values.get("normalisation", {}),
                training=values.get("training", {}),
                evaluation=values.get("evaluation"),
                outputs=list(signature.get("outputs", DEFAULT_OUTPUT_NAMES)),
                score_unit=values.get("score_unit", cls.score_unit),
                input=signature.get("input", INPUT_NAME),
                input_samples=int(signature["input_shape"][1]) if signature.get("input") == WAVEFORM_INPUT_NAME else None,
                unfamiliar=values.get("unfamiliar"),
                frame_threshold=values.get("frame_threshold"),
                enrolment=values.get("enrolment"),
                reexport=values.get("reexport"),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelMismatchError(f"model metadata is incomplete or invalid: {exc}") from None

    @classmethod
    def from_json(cls, text: str | bytes) -> "ModelMetadata":
        return cls.from_dict(json.loads(text))

    @classmethod
    def read(cls, version_dir: str | Path) -> "ModelMetadata":
        """Read ``<version_dir>/assets.extra/asd_metadata.json``.

        Raises
        ------
        ModelMismatchError
            If the file is missing (not an asd model) or invalid.
        """
        path = Path(version_dir) / METADATA_FILE
        if not path.is_file():
            raise ModelMismatchError(f"{version_dir}: no {METADATA_FILE}; not a model exported by asd")
        return cls.from_json(path.read_text(encoding="utf-8"))

    def write(self, version_dir: str | Path) -> Path:
        path = Path(version_dir) / METADATA_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    def check_features(self, expected: FeatureConfig) -> None:
        """Refuse a model trained on other features than the caller computes.

        Raises
        ------
        ModelMismatchError
            Listing every differing setting (model's value != caller's value).
        """
        diffs = self.features.differences(expected)
        if diffs:
            raise ModelMismatchError(
                f"model '{self.name}' version {self.version} was trained with other feature "
                f"settings than this app computes ({'; '.join(diffs)}; model != app). "
                "Retrain the model with the app's feature settings, or run the app version "
                "the model was made for."
            )

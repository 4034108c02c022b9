"""Training configuration: one YAML file, overridable from the command line.

Every setting of a training run lives in one YAML file (as in the DCASE baselines'
``baseline.yaml``); ``--set key=value`` overrides any of them, with dotted keys for
nested ones (``--set training.epochs=3``). Values are parsed as YAML scalars.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .features import FeatureConfig
from .validation import validation_problems

CONFIGS_DIR = Path("development") / "configs"
REPO = Path(__file__).resolve().parents[2]  # an editable install's repository


def configs_dir() -> Path | None:
    """``development/configs`` of the working directory (where ``asd`` runs, the
    repository root), else of the repository this package is installed from; ``None``
    when neither exists (a wheel installed elsewhere)."""
    for candidate in (CONFIGS_DIR, REPO / CONFIGS_DIR):
        if candidate.is_dir():
            return candidate
    return None


class ConfigError(ValueError):
    """A configuration file or override that cannot be used."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TrainingSettings(_Strict):
    epochs: int = Field(default=40, gt=0, description="passes over the training clips (early stopping may end sooner)")
    batch_size: int = Field(default=128, gt=0, description="examples per gradient step: log-mel patches, or whole clips "
                            "for the waveform detectors (spectrum_adacos, multispec_scac)")
    learning_rate: float = Field(default=1e-3, gt=0, description="optimiser step size (Adam; AdamW for multispec_scac)")
    validation_fraction: float = Field(default=0.1, gt=0, lt=1, description="share of each domain's normal clips held "
                                       "out for early stopping (autoencoders)")
    early_stopping_patience: int = Field(default=5, ge=0, description="epochs without a lower validation loss before "
                                         "training stops (autoencoders)")
    max_train_clips: int | None = Field(default=None, gt=0, description="use at most this many clips (quick runs)")


class ThresholdSettings(_Strict):
    """Decision threshold: ``margin * gamma.ppf(quantile)`` of the training clips' scores
    (:func:`asd.scoring.fit_gamma_threshold`)."""

    quantile: float = Field(default=0.9, gt=0, lt=1, description="quantile of a gamma fit of the training clips' anomaly "
                            "scores (0.9 as in the DCASE 2021+ baselines)")
    margin: float = Field(default=1.0, gt=0, description="factor on that quantile (1: the baselines' rule)")
    margin_chosen_on: str | None = Field(default=None, description="where the margin comes from, for the model's metadata")


class TrainConfig(_Strict):
    """A training run. Relative paths are taken from the working directory;
    ``$VARS`` and ``~`` are expanded."""

    name: str = Field(default="toycar", pattern=r"^[A-Za-z0-9_.-]+$",
                      description="model name: the folder under models_dir, as TF Serving names the model")
    machine_type: str | None = Field(default=None, description="machine type in the model's metadata "
                                     "(null: from the clips' folder, e.g. ToyCar)")
    data_dir: Path = Field(description="machine-type folder: train/ (normal clips) and, for evaluation, labelled test/")
    # a casual run never becomes the app's newest model: shipping is explicit
    # (asd train --models-dir production/models)
    models_dir: Path = Field(default=Path("runs/models"), description="models directory in TF Serving's layout, "
                             "<models_dir>/<name>/<version>/ (asd train --models-dir overrides it)")
    runs_dir: Path = Field(default=Path("runs"), description="TensorBoard runs, <runs_dir>/<name>/<date-time>-v<version>/")
    version: int | None = Field(default=None, gt=0, description="model version to write (null: the next free number; "
                                "an existing version is never overwritten)")
    seed: int = Field(default=13711, description="seed of the validation split, the initial weights and the shuffling")
    features: dict[str, Any] = Field(default_factory=dict, description="log-mel settings (asd.features.FeatureConfig; "
                                     "the app computes exactly these)")
    detector: str = Field(default="conv_ae", description="a servable kind of asd.detectors.DETECTORS")
    model: dict[str, Any] = Field(default_factory=dict, description="the detector's settings (its Model class)")
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    threshold: ThresholdSettings = Field(default_factory=ThresholdSettings,
                                         description="decision threshold: margin * gamma.ppf(quantile)")
    evaluate: bool = Field(default=True, description="score data_dir/test (labelled) after training; AUC, pAUC and "
                           "official score go into the model's metadata")

    @field_validator("data_dir", "models_dir", "runs_dir", mode="before")
    @classmethod
    def _expand(cls, value):
        return Path(os.path.expanduser(os.path.expandvars(str(value))))

    def check_data_dir(self) -> None:
        """Refuse a ``data_dir`` that still holds an unset variable (``expandvars`` leaves
        ``${ASD_DATA_DIR}`` as it is), naming the variable to set.

        Raises
        ------
        ConfigError
        """
        unset = re.findall(r"\$\{?(\w+)\}?", str(self.data_dir))
        if unset:
            raise ConfigError(f"data_dir {self.data_dir} uses ${unset[0]}, which is not set: set it, e.g. "
                              f"{unset[0]}=../shared/data (a folder laid out like ../shared/data), "
                              "or give the folder with --set data_dir=...")

    @field_validator("features")
    @classmethod
    def _features(cls, value):
        FeatureConfig.from_dict(value)  # raises on unknown or invalid settings
        return value

    @model_validator(mode="after")
    def _detector_settings(self):
        from .detectors import detector_class  # imports the detector's libraries

        cls = detector_class(self.detector)
        self.model = cls.Model.model_validate(self.model).model_dump()  # raises on unknown or invalid settings
        return self

    def feature_config(self) -> FeatureConfig:
        return FeatureConfig.from_dict(self.features)


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides (dotted keys for nesting) to a config mapping.

    Raises
    ------
    ConfigError
        If an override has no ``=`` or walks into a non-mapping.
    """
    values = dict(values)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. training.epochs=3)")
        node = values
        parts = key.split(".")
        for part in parts[:-1]:
            child = node.get(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {item!r}: {part} is not a section")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = yaml.safe_load(raw) if raw else ""
    return values


def load_yaml_settings(path: str | Path, model: type[BaseModel], overrides: list[str] | None = None, what: str = "config file",
                       values_set: dict | None = None):
    """Read a YAML file of settings, set ``values_set`` (top-level keys, as they are), apply
    ``key=value`` overrides and validate it as ``model``.

    Raises
    ------
    ConfigError
        Missing or unparsable file, unknown keys, or invalid values (all named).
    """
    try:
        values = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from None
    if not isinstance(values, dict):
        raise ConfigError(f"{what} {path} must hold a mapping of settings")
    values = apply_overrides({**values, **(values_set or {})}, overrides or [])
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ConfigError(f"{what} {path}: {validation_problems(exc)}") from None


def load_train_config(path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML training config and apply overrides.

    Raises
    ------
    ConfigError
        Missing or unparsable file, unknown keys, or invalid values (all named).
    """
    return load_yaml_settings(path, TrainConfig, overrides)


# What asd train --data runs without --config (development/configs/, found as
# asd.train_help.configs_dir finds it): DCASE folders train as they always did, with their
# attributes; any other folder with the attribute-free classes.
DCASE_RECIPE = "toycar.yaml"
ATTRIBUTE_FREE_RECIPE = "attribute_free.yaml"
# Sub-folders named as DCASE names attributes, <name>_<value> (car_A1/, speed_28V/, press_07/),
# are classes of the auxiliary task: row attribute_free_folders of benchmarks/attribute_free.
# Folders named otherwise (dates, 2026-11-03/) are not taken for attributes.
ATTRIBUTE_FOLDER = re.compile(r"[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9.+-]+")
FOLDER_CLASSES = ["model.labels=folders", "model.featex=false"]


def machine_name(folder: str | Path) -> str:
    """The machine type a folder names: its own name, or its parent's for a ``train/``
    folder (``press-07/train`` -> ``press-07``)."""
    folder = Path(os.path.abspath(os.path.expanduser(str(folder))))
    return folder.parent.name if folder.name == "train" else folder.name


def folder_train_config(data: str | Path, name: str | None = None, config: str | Path | None = None,
                        overrides: list[str] | None = None) -> tuple[TrainConfig, str]:
    """The training run of ``asd train --data FOLDER [--name NAME] [--config YAML]``.

    ``data_dir`` is FOLDER; the machine type is NAME or FOLDER's name
    (:func:`machine_name`), the model name the same with characters TF Serving's model
    names avoid replaced by ``_``. Without ``config``, the recipe is
    ``development/configs/toycar.yaml`` when FOLDER's training clips all carry DCASE names
    (attributes included, as ``asd train --config`` trains them) and
    ``attribute_free.yaml`` otherwise (:data:`ATTRIBUTE_FREE_RECIPE`). With the latter,
    when the training clips sit in sub-folders named like attributes, at least two of them
    (:func:`attribute_folders`), those are the classes (:data:`FOLDER_CLASSES`, before
    ``overrides``, which win).

    Returns
    -------
    config : TrainConfig
    recipe : str
        The YAML file the run starts from, and the classes when sub-folders give them.

    Raises
    ------
    ConfigError, FileNotFoundError
        No such folder or no clip in it (:func:`asd.data.training_clips`), no recipe found.
    """
    from .data import training_clips

    data = Path(os.path.expanduser(str(data)))
    clips = training_clips(data)  # refuses a missing or empty folder at once
    recipe = None
    if config is None:
        folder = configs_dir()
        if folder is None:
            raise ConfigError("no development/configs folder here or in the installed repository: give --config")
        dcase = all(c.scheme != "folders" for c in clips)
        config = folder / (DCASE_RECIPE if dcase else ATTRIBUTE_FREE_RECIPE)
        classes = [] if dcase else attribute_folders(clips)
        if classes:
            overrides = FOLDER_CLASSES + list(overrides or [])
            recipe = (f"{config}, the classes domain x sub-folder ({', '.join(classes[:4])}"
                      f"{', ...' if len(classes) > 4 else ''}; {' '.join('--set ' + o for o in FOLDER_CLASSES)})")
    machine_type = name or machine_name(data)
    model_name = re.sub(r"[^A-Za-z0-9_.-]+", "_", machine_type).strip("_.") or "model"
    values = {"data_dir": str(data), "name": model_name, "machine_type": machine_type}
    return load_yaml_settings(config, TrainConfig, overrides, values_set=values), recipe or str(config)


def attribute_folders(clips) -> list[str]:
    """The sub-folders of a user's training clips that name attributes, sorted: those of
    ``clip.attributes["folder"]`` (:func:`asd.data.folder_clip`) when every clip has one,
    every folder in it is named ``<name>_<value>`` (:data:`ATTRIBUTE_FOLDER`) and they
    split some domain in two or more classes; else none.

    Examples
    --------
    >>> from asd.data import folder_clip
    >>> clips = [folder_clip(f"m/{f}/r.wav", "m", "train", "m") for f in ("car_A1", "car_A2", "target/car_A2")]
    >>> attribute_folders(clips)
    ['car_A1', 'car_A2']
    >>> attribute_folders([folder_clip(f"m/{f}/r.wav", "m", "train", "m") for f in ("2026-11-03", "2026-11-04")])
    []
    >>> attribute_folders([folder_clip(f"m/{f}/r.wav", "m", "train", "m") for f in ("car_A1", "target/car_A2")])
    []
    """
    names = [c.attributes.get("folder") for c in clips]
    if not all(names) or not all(ATTRIBUTE_FOLDER.fullmatch(part) for n in names for part in n.split("/")):
        return []
    classes = {(c.domain, n) for c, n in zip(clips, names)}
    return sorted(set(names)) if len(classes) > len({c.domain for c in clips}) else []

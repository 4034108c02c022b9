"""The text under ``asd train --help``: the shipped configs, every config key, the
environment, where the output goes, and examples.

Built at run time from what it describes, so it never goes stale: each config's own
opening comment, the field descriptions of the pydantic models in :mod:`asd.config`, the
``Attributes`` of :class:`asd.features.FeatureConfig` and the registry
:data:`asd.detectors.DETECTORS`. Imports no TensorFlow (``--help`` stays fast).
"""

from __future__ import annotations

import re
import shutil
import textwrap
from dataclasses import MISSING, fields
from pathlib import Path

import yaml
from pydantic import BaseModel

from .config import CONFIGS_DIR, TrainConfig, configs_dir
from .detectors import DETECTORS
from .features import FeatureConfig

# The registry's module of the scikit-learn detectors: asd train refuses them (TF Serving
# cannot serve them); tests/test_train_help.py checks this against the classes.
SCIKIT_LEARN_MODULE = "classical"


def config_summary(path: Path) -> str:
    """The first sentence of a YAML file's opening comment (``#`` lines before the first
    setting), on one line; ``""`` when it opens with no comment. A sentence ends with a
    full stop at the end of a line or before a capital ("e.g. the" goes on)."""
    comment = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    text = "\n".join(comment)
    sentence = re.match(r".*?\.(?=[ \t]+[A-Z]|\n|$)", text, re.DOTALL)
    return " ".join((sentence.group(0) if sentence else text).split())


def is_training_config(path: Path) -> bool:
    """Whether a YAML file's top-level keys are all keys of :class:`asd.config.TrainConfig`
    (``benchmark.yaml`` is a config of ``asd benchmark``). An unparsable file is not one."""
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return False
    return isinstance(values, dict) and set(values) <= set(TrainConfig.model_fields)


def _yaml_value(value) -> str:
    """A default as YAML writes it (``null``, ``true``, ``runs/models``)."""
    return yaml.safe_dump(str(value) if isinstance(value, Path) else value, default_flow_style=True).strip().removesuffix("...").strip()


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return ""
    return "default " + _yaml_value(field.default)


def settings_keys(model: type[BaseModel], prefix: str = "") -> list[tuple[str, str]]:
    """``(dotted key, "description (default ...)")`` of every field of a pydantic settings
    model, nested settings models expanded (``training.epochs``)."""
    rows = []
    for name, field in model.model_fields.items():
        nested = field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        if nested:
            if field.description:
                rows.append((f"{prefix}{name}.*", field.description))
            rows += settings_keys(nested, f"{prefix}{name}.")
            continue
        default = _default(field)
        rows.append((prefix + name, (field.description or "") + (f" ({default})" if default else "")))
    return rows


def feature_keys() -> list[tuple[str, str]]:
    """``("features.<name>", "description (default ...)")`` of every field of
    :class:`asd.features.FeatureConfig`, described by its docstring's ``Attributes``;
    fields described together there (``fmin, fmax``) share a row."""
    groups: list[tuple[list[str], str]] = []  # (names, description) in the docstring's order
    for line in (FeatureConfig.__doc__ or "").split("Attributes")[-1].splitlines():
        heading = re.fullmatch(r"\s{4}([\w, ]+) : .+", line)
        if heading:
            groups.append(([n.strip() for n in heading.group(1).split(",")], ""))
        elif groups and line.strip() and not set(line.strip()) <= {"-"}:
            names, text = groups[-1]
            groups[-1] = (names, f"{text} {line.strip().replace('``', '')}".strip())
    defaults = {f.name: f.default for f in fields(FeatureConfig) if f.default is not MISSING}
    undescribed = [([name], "") for name in defaults if not any(name in names for names, _ in groups)]
    rows = []
    for names, text in groups + undescribed:
        values = ", ".join(_yaml_value(defaults[n]) for n in names if n in defaults)
        rows.append((", ".join(f"features.{n}" for n in names),
                     text + (f" (default{'s' if len(names) > 1 else ''} {values})" if values else "")))
    return rows


def _table(rows: list[tuple[str, str]], width: int, indent: int = 2) -> str:
    """Two columns, the second wrapped to ``width``; a long key gets its own line."""
    key_width = min(max(len(k) for k, _ in rows), 24)
    lines = []
    for key, text in rows:
        pad = " " * (indent + key_width + 2)
        body = textwrap.wrap(text, max(width - len(pad), 30), break_on_hyphens=False) or [""]
        if len(key) > key_width:
            lines.append(" " * indent + key)
            lines += [pad + b for b in body]
        else:
            lines.append(" " * indent + key.ljust(key_width + 2) + body[0])
            lines += [pad + b for b in body[1:]]
    return "\n".join(lines)


def _section(title: str, body: str) -> str:
    return f"{title}:\n{body}"


def train_epilog(width: int | None = None) -> str:
    """The epilog of ``asd train --help`` (for ``argparse.RawDescriptionHelpFormatter``),
    wrapped to ``width`` columns (default: the terminal's, as argparse wraps the options)."""
    width = width or max(min(shutil.get_terminal_size().columns - 2, 110), 60)
    parts = []

    where = configs_dir()
    if where is None:
        parts.append(_section("shipped configs", f"  ({CONFIGS_DIR}/ not found: run asd from the repository root)"))
    else:
        yamls = sorted(where.glob("*.yaml"))  # shown as found: relative in the repository root, else absolute
        rows = [(str(p), config_summary(p)) for p in yamls if is_training_config(p)]
        others = [(str(p), config_summary(p) + " Not a training config.")
                  for p in yamls if not is_training_config(p)]
        parts.append(_section("shipped configs (start from one; the first sentence of each)", _table(rows + others, width)))

    kinds_servable = [k for k, (module, _) in DETECTORS.items() if module != SCIKIT_LEARN_MODULE]
    kinds_sklearn = [k for k, (module, _) in DETECTORS.items() if module == SCIKIT_LEARN_MODULE]
    rows = []
    for key, text in settings_keys(TrainConfig):
        if key == "features":
            rows.append(("features.*", text))
            rows += feature_keys()
        elif key == "detector":
            rows.append((key, f"detector kind (default {TrainConfig.model_fields['detector'].default}): "
                              f"{', '.join(kinds_servable)} (TensorFlow graphs that asd train exports); "
                              f"{', '.join(kinds_sklearn)} run in scikit-learn and are compared by asd benchmark "
                              "only (asd.detectors.DETECTORS)"))
        elif key == "model":
            by_module: dict[str, list[str]] = {}
            for kind, (module, _) in DETECTORS.items():
                by_module.setdefault(module, []).append(kind)
            rows.append(("model.*", "the detector's settings: each kind has its own keys (an unknown one is "
                                    "refused), the fields of its detector's Model class: " + "; ".join(f"{', '.join(k)} in src/asd/detectors/{m}.py"
                                                                          for m, k in by_module.items())))
        else:
            rows.append((key, text))
    parts.append(_section("config keys (override any with --set KEY=VALUE,\n  dotted for nested keys, the value read as YAML)",
                          _table(rows, width)))

    parts.append(_section("environment", _table([
        ("ASD_DATA_DIR", "the shipped configs read data_dir from ${ASD_DATA_DIR}/dcase2023t2/dev_data/ToyCar: set it "
                         "to a folder laid out like ../shared/data, or give the folder with --set data_dir=DIR "
                         "($VARS and ~ are expanded in every path)"),
    ], width)))

    parts.append(_section("output", _table([
        ("model", "<models_dir>/<name>/<version>/ in TF Serving's layout, by default runs/models/<name>/<next "
                  "version>/ (never the app's models: ship with --models-dir production/models): saved_model.pb, "
                  "variables/, assets.extra/asd_metadata.json (features, decision threshold, test figures)"),
        ("TensorBoard", "<runs_dir>/<name>/<date-time>-v<version>/, by default under runs/ "
                        "(tensorboard --logdir runs); with evaluate, also evaluation.json and anomaly_scores.csv"),
        ("progress", "one line per epoch (loss, val_loss where clips are held out, seconds), the decision threshold, "
                     "the test figures, then the model's folder"),
    ], width)))

    parts.append(_section("examples", "\n".join([
        "  # your own recordings: a folder of one machine's normal clips, any names (source/ and target/",
        "  # sub-folders name domains; a test/ folder with normal/ and anomaly/ is evaluated); no YAML",
        "  asd train --data ~/recordings/press-07 --name press07",
        "  # the shipped default model's settings (multispec_scac), ~10 min on 2 CPU cores",
        "  ASD_DATA_DIR=../shared/data asd train --config development/configs/toycar.yaml",
        "  # a quick conv_ae on the clips in tests/data, no evaluation",
        "  asd train --config development/configs/toycar_conv_ae.yaml --set data_dir=tests/data/ToyCar \\",
        "      --set training.epochs=2 --set evaluate=false",
    ])))
    return "\n\n".join(parts)
